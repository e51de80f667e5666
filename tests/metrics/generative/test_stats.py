"""Streaming statistics and the Fréchet distance against independent numpy/scipy references."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import linalg

from irepa.errors import IrepaError
from irepa.metrics.generative.stats import FeatureStatistics, RunningMoments, frechet_distance


def reference_frechet(mu1, s1, mu2, s2):
    """Independent formula: tr (S1 S2)^1/2 = sum of sqrt eigenvalues of S1^1/2 S2 S1^1/2 (symmetric, via eigh)."""
    w, v = linalg.eigh(s1)
    root1 = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    inner = linalg.eigvalsh(root1 @ s2 @ root1)
    return float(np.sum((mu1 - mu2) ** 2) + np.trace(s1) + np.trace(s2) - 2 * np.sum(np.sqrt(np.clip(inner, 0, None))))


def random_stats(rng, d, n=None):
    n = n or 4 * d
    a = rng.standard_normal((n, d)) @ rng.standard_normal((d, d)) * 0.3 + rng.standard_normal(d)
    return a.mean(0), np.cov(a, rowvar=False)


@pytest.mark.parametrize("d", [2, 16, 64])
def test_frechet_matches_independent_reference(d):
    rng = np.random.default_rng(d)
    mu1, s1 = random_stats(rng, d)
    mu2, s2 = random_stats(rng, d)
    got = frechet_distance(FeatureStatistics(mu1, s1), FeatureStatistics(mu2, s2))
    assert got == pytest.approx(reference_frechet(mu1, s1, mu2, s2), rel=1e-8, abs=1e-8)


def test_frechet_closed_form_1d_and_identity():
    # 1-D: (m1 - m2)^2 + (s1 - s2)^2.
    got = frechet_distance(FeatureStatistics([1.0], [[4.0]]), FeatureStatistics([3.0], [[9.0]]))
    assert got == pytest.approx(4.0 + 1.0)
    rng = np.random.default_rng(0)
    mu, s = random_stats(rng, 32)
    assert abs(frechet_distance(FeatureStatistics(mu, s), FeatureStatistics(mu, s))) < 1e-8


def test_frechet_singular_fallback_and_errors():
    # Rank-deficient covariances (fewer samples than dimensions) still give a finite, nonnegative value.
    rng = np.random.default_rng(1)
    a = rng.standard_normal((5, 8))
    b = rng.standard_normal((5, 8)) + 1
    value = frechet_distance(FeatureStatistics.from_features(a), FeatureStatistics.from_features(b))
    assert np.isfinite(value) and value > 0
    with pytest.raises(IrepaError, match="dimension"):
        frechet_distance(FeatureStatistics(np.zeros(2), np.eye(2)), FeatureStatistics(np.zeros(3), np.eye(3)))
    with pytest.raises(IrepaError, match="mu"):
        FeatureStatistics(np.zeros(2), np.eye(3))


def test_running_moments_match_numpy_cov_for_any_batching():
    rng = np.random.default_rng(0)
    x = (rng.standard_normal((257, 12)) * 50 + 1000).astype(np.float32)  # large offset: naive formula loses digits
    want_mu = x.astype(np.float64).mean(0)
    want_cov = np.cov(x, rowvar=False)
    for batch in (1, 7, 64, 257):
        m = RunningMoments()
        for start in range(0, len(x), batch):
            m.update(torch.from_numpy(x[start : start + batch]))
        stats = m.statistics()
        assert stats.count == 257
        np.testing.assert_allclose(stats.mu, want_mu, rtol=1e-12)
        np.testing.assert_allclose(stats.sigma, want_cov, rtol=1e-9, atol=1e-9)


def test_running_moments_errors():
    m = RunningMoments()
    m.update(np.zeros((1, 3)))
    with pytest.raises(IrepaError, match="at least 2"):
        m.statistics()
    with pytest.raises(IrepaError, match="dimension"):
        m.update(np.zeros((2, 4)))
    with pytest.raises(IrepaError, match=r"\(B, D\)"):
        m.update(np.zeros(3))


def test_frechet_of_identical_statistics_is_not_negative():
    # Round-off of tr Σ + tr Σ − 2 tr (ΣΣ)^½ is of either sign; a distance is reported as >= 0.
    for seed in range(4):
        stats = FeatureStatistics.from_features(np.random.default_rng(seed).normal(size=(50, 32)))
        assert frechet_distance(stats, stats) == 0.0 or frechet_distance(stats, stats) > 0


def test_non_finite_statistics_are_refused_before_sqrtm():
    good = FeatureStatistics.from_features(np.random.default_rng(0).normal(size=(20, 4)))
    bad = FeatureStatistics(good.mu, np.where(np.eye(4) > 0, np.nan, good.sigma))
    with pytest.raises(IrepaError, match="non-finite"):
        frechet_distance(good, bad)
    with pytest.raises(IrepaError, match="ref: the covariance holds 4 non-finite"):
        bad.check("ref")
    skewed = FeatureStatistics(good.mu, good.sigma + np.triu(np.ones((4, 4)), 1))
    with pytest.raises(IrepaError, match="not symmetric"):
        skewed.check("ref")
    assert good.check("ref") is good
