"""Inception Score, precision/recall and CMMD on inputs with known answers and against brute-force references."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from irepa.errors import IrepaError
from irepa.metrics.generative.scores import cmmd, inception_score, manifold_radii, precision_recall


def test_inception_score_known_logits():
    assert inception_score(torch.zeros(100, 10)) == pytest.approx(1.0)
    for k in (2, 5, 10):
        logits = torch.full((10 * k, 1008), -1e4)
        logits[torch.arange(10 * k), torch.arange(10 * k) % k] = 0.0  # one-hot, balanced over k classes
        assert inception_score(logits) == pytest.approx(k, rel=1e-9)


def test_inception_score_split_rule():
    # ADM: consecutive splits of 5000. Split 1 all class 0, split 2 all class 1 -> each split scores 1, mean 1;
    # one split over all 10000 would score 2.
    logits = torch.full((10_000, 4), -1e4)
    logits[:5000, 0] = 0
    logits[5000:, 1] = 0
    assert inception_score(logits) == pytest.approx(1.0)
    assert inception_score(logits, split_size=10_000) == pytest.approx(2.0)


def brute_force_pr(ref, smp, k):
    """Independent float64 reference: explicit distance matrices, sorted rows, Python-level loops."""
    ref, smp = np.asarray(ref, np.float64), np.asarray(smp, np.float64)

    def sqd(a, b):
        return ((a[:, None, :] - b[None, :, :]) ** 2).sum(-1)

    r_ref = np.sort(sqd(ref, ref), axis=1)[:, k]
    r_smp = np.sort(sqd(smp, smp), axis=1)[:, k]
    d = sqd(ref, smp)
    precision = np.mean([np.any(d[:, j] <= r_ref) for j in range(len(smp))])
    recall = np.mean([np.any(d[i, :] <= r_smp) for i in range(len(ref))])
    return precision, recall, r_ref


def test_precision_recall_synthetic_clouds():
    rng = np.random.default_rng(0)
    a = rng.standard_normal((200, 8)).astype(np.float32)
    assert precision_recall(a, a) == (1.0, 1.0)
    far = a + 100.0
    assert precision_recall(a, far) == (0.0, 0.0)
    subset = a[:50]  # samples cover only part of the reference manifold
    precision, recall = precision_recall(a, subset)
    assert precision == 1.0
    assert recall < 1.0


def test_precision_recall_matches_brute_force_with_small_blocks():
    rng = np.random.default_rng(1)
    ref = rng.standard_normal((150, 6)).astype(np.float32)
    smp = (rng.standard_normal((170, 6)) * 1.3 + 0.4).astype(np.float32)
    want_p, want_r, want_radii = brute_force_pr(ref, smp, 3)
    for rows, cols in [(10_000, 10_000), (16, 23), (1, 7)]:
        got = precision_recall(ref, smp, 3, row_batch=rows, col_batch=cols)
        assert got == pytest.approx((want_p, want_r), abs=1e-12)
        radii = manifold_radii(torch.from_numpy(ref).double(), 3, row_batch=rows, col_batch=cols)
        np.testing.assert_allclose(radii.numpy(), want_radii, rtol=1e-9)
    assert precision_recall(ref, smp, 3, distance_dtype=torch.float64) == pytest.approx((want_p, want_r))
    p16, r16 = precision_recall(ref, smp, 3, distance_dtype=torch.float16)
    assert abs(p16 - want_p) < 0.05 and abs(r16 - want_r) < 0.05


def test_precision_recall_errors():
    with pytest.raises(IrepaError, match="more than 3"):
        precision_recall(np.zeros((3, 2)), np.zeros((10, 2)))
    with pytest.raises(IrepaError, match="-d"):
        precision_recall(np.zeros((10, 2)), np.zeros((10, 3)))


def brute_force_cmmd(x, y, sigma=10.0, scale=1000.0):
    def k(a, b):
        d = ((a[:, None, :] - b[None, :, :]) ** 2).sum(-1)
        return np.exp(-d / (2 * sigma**2)).mean()

    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    return scale * (k(x, x) + k(y, y) - 2 * k(x, y))


def test_cmmd_reference_and_identity():
    rng = np.random.default_rng(2)
    x = rng.standard_normal((60, 16))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    y = rng.standard_normal((40, 16)) + 0.5
    y /= np.linalg.norm(y, axis=1, keepdims=True)
    assert cmmd(x, x) == pytest.approx(0.0, abs=1e-9)
    assert cmmd(x, y) == pytest.approx(brute_force_cmmd(x, y), rel=1e-9)
    assert cmmd(x, y) > 0
