import json

import pytest
import torch

from irepa.errors import IrepaError
from irepa.metrics.probe import ProbeProtocol, linear_probe, stratified_split

FAST = ProbeProtocol(epochs=15, batch_size=64, learning_rates=(1e-3, 1e-2), weight_decays=(0.0,))


def blobs(n_per_class=40, classes=4, dim=16, spread=0.5, seed=0):
    g = torch.Generator().manual_seed(seed)
    centers = torch.randn(classes, dim, generator=g) * 3
    labels = torch.arange(classes).repeat_interleave(n_per_class)
    features = centers[labels] + spread * torch.randn(len(labels), dim, generator=g)
    return features * 10 + 5, labels  # off-centre, badly scaled: standardization must cope


def test_separable_classes_are_probed_perfectly():
    x, y = blobs(n_per_class=50)
    keep, val = stratified_split(y, 0.2, seed=5)
    x, y, xv, yv = x[keep], y[keep], x[val], y[val]
    result = linear_probe(x, y, xv, yv, FAST)
    assert result.top1 == 1.0 and result.train_top1 == 1.0
    assert result.top5 is None  # fewer than 5 classes
    assert result.num_classes == 4 and result.dim == 16 and result.num_train == 160 and result.num_val == 40
    json.dumps(result.to_dict())


def test_random_labels_stay_near_chance():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(400, 8, generator=g)
    y = torch.randint(0, 5, (400,), generator=g)
    xv = torch.randn(400, 8, generator=g)
    yv = torch.randint(0, 5, (400,), generator=g)
    result = linear_probe(x, y, xv, yv, FAST)
    assert abs(result.top1 - 0.2) < 0.08
    assert result.top5 == 1.0  # five classes: every label is in the top 5


def test_probe_is_deterministic_and_selects_the_best_holdout_pair():
    x, y = blobs(spread=4.0)
    protocol = ProbeProtocol(epochs=5, batch_size=32, learning_rates=(1e-4, 1e-1), weight_decays=(0.0, 1e-2))
    a = linear_probe(x, y, x, y, protocol)
    b = linear_probe(x, y, x, y, protocol)
    assert a.top1 == b.top1 and a.grid == b.grid
    best = max(a.grid, key=lambda row: row["holdout_top1"])
    first_best = next(row for row in a.grid if row["holdout_top1"] == best["holdout_top1"])
    assert (a.learning_rate, a.weight_decay) == (first_best["learning_rate"], first_best["weight_decay"])
    assert len(a.grid) == 4
    assert a.protocol["epochs"] == 5 and "AdamW" in a.protocol["optimizer"]


def test_stratified_split():
    y = torch.tensor([0] * 10 + [1] * 5 + [2])
    keep, hold = stratified_split(y, 0.2, seed=0)
    assert torch.equal(torch.sort(torch.cat([keep, hold])).values, torch.arange(16))
    assert torch.bincount(y[hold], minlength=3).tolist() == [2, 1, 0]  # 20 % per class, singletons kept
    assert torch.equal(stratified_split(y, 0.2, seed=0)[1], hold)
    assert not torch.equal(stratified_split(y, 0.5, seed=1)[1], stratified_split(y, 0.5, seed=2)[1])


def test_probe_input_errors():
    x, y = blobs()
    with pytest.raises(IrepaError, match="two classes"):
        linear_probe(x, torch.zeros_like(y), x, torch.zeros_like(y), FAST)
    with pytest.raises(IrepaError, match="NaN"):
        linear_probe(x.clone().fill_(float("nan")), y, x, y, FAST)
    with pytest.raises(IrepaError, match="feature dims differ"):
        linear_probe(x, y, x[:, :3], y, FAST)
    with pytest.raises(IrepaError, match="training has 4 classes"):
        linear_probe(x, y, x, y + 10, FAST)
    with pytest.raises(IrepaError, match=r"\(N, D\)"):
        linear_probe(x[:, :, None], y, x, y, FAST)
    with pytest.raises(IrepaError, match="learning rates"):
        ProbeProtocol(learning_rates=(-1.0,))
    with pytest.raises(IrepaError, match="holdout"):
        ProbeProtocol(holdout_fraction=1.0)
