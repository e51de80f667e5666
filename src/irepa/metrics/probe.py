"""Linear probing: the paper's "global information" measure (top-1 of a linear classifier on frozen features).

The paper reports ImageNet-1K linear-probe accuracy on mean-pooled patch tokens but gives no protocol (paper notes
§4). irepa fixes one, standard and fully reproducible:

1. **Features.** One vector per image: mean-pooled patch tokens (default), the CLS token, or both concatenated.
2. **Standardization.** Per-dimension mean and std of the training features (float64 statistics, std floored at
   1e-6), applied to every split — the affine-free BatchNorm of MAE's linear probe, computed once.
3. **Classifier.** One ``nn.Linear(D, C)`` (zero-initialised, so runs differ only through the data order), trained with
   AdamW (β = 0.9, 0.999), cross-entropy, a cosine learning-rate schedule to 0 over ``epochs`` full passes, batches
   of ``batch_size`` shuffled with a seeded generator. No augmentation (features are fixed).
4. **Model selection.** A stratified ``holdout_fraction`` of the training split (seeded) is held out; every
   (learning rate, weight decay) pair of the grid is trained on the rest and scored by held-out top-1 (ties: the
   earlier pair in grid order). The winner is retrained on the whole training split (statistics recomputed).
5. **Report.** Top-1 (and top-5 with ≥ 5 classes) on the validation split, the grid scores, the chosen pair and the
   full protocol, so a result can be reproduced from its JSON alone.

All maths runs in float32 with autocast disabled. This module is pure: tensors in, a :class:`ProbeResult` out.
"""

from __future__ import annotations

import dataclasses
import math
import time
from typing import Any

import torch
import torch.nn.functional as F

from irepa.errors import IrepaError

__all__ = ["ProbeProtocol", "ProbeResult", "linear_probe", "stratified_split"]


@dataclasses.dataclass(frozen=True)
class ProbeProtocol:
    """Settings of :func:`linear_probe` (defaults are irepa's documented protocol).

    Attributes:
        epochs: Full passes over the training features per run.
        batch_size: Features per optimizer step.
        learning_rates: AdamW learning-rate grid.
        weight_decays: AdamW weight-decay grid.
        holdout_fraction: Share of each class held out of the training split for model selection.
        seed: Seed of the holdout split and of the batch order.
        standardize: Standardize features with training statistics.
    """

    epochs: int = 50
    batch_size: int = 1024
    learning_rates: tuple[float, ...] = (3e-4, 1e-3, 3e-3, 1e-2)
    weight_decays: tuple[float, ...] = (0.0, 1e-3)
    holdout_fraction: float = 0.2
    seed: int = 0
    standardize: bool = True

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.batch_size < 1:
            raise IrepaError("probe epochs and batch size must be >= 1")
        if not self.learning_rates or any(lr <= 0 or not math.isfinite(lr) for lr in self.learning_rates):
            raise IrepaError(f"probe learning rates must be positive, got {self.learning_rates}")
        if not self.weight_decays or any(wd < 0 or not math.isfinite(wd) for wd in self.weight_decays):
            raise IrepaError(f"probe weight decays must be >= 0, got {self.weight_decays}")
        if not 0 < self.holdout_fraction < 1:
            raise IrepaError(f"holdout fraction must be in (0, 1), got {self.holdout_fraction}")

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe protocol description."""
        return {
            **dataclasses.asdict(self),
            "learning_rates": list(self.learning_rates),
            "weight_decays": list(self.weight_decays),
            "optimizer": "AdamW(betas=(0.9, 0.999), eps=1e-8)",
            "schedule": "cosine to 0 over all steps, no warmup",
            "init": "zeros",
            "loss": "cross-entropy",
            "selection": "stratified holdout of the training split, held-out top-1, then retrain on all training data",
        }


@dataclasses.dataclass
class ProbeResult:
    """Outcome of :func:`linear_probe`.

    Attributes:
        top1: Validation top-1 accuracy in [0, 1].
        top5: Validation top-5 accuracy (None with fewer than 5 classes).
        train_top1: Accuracy of the final classifier on the training split.
        learning_rate: Selected learning rate.
        weight_decay: Selected weight decay.
        grid: Held-out top-1 of every (learning rate, weight decay) pair.
        num_train: Training features.
        num_val: Validation features.
        num_classes: Classes C.
        dim: Feature dimension D.
        protocol: The protocol used.
        seconds: Wall-clock time.
    """

    top1: float
    top5: float | None
    train_top1: float
    learning_rate: float
    weight_decay: float
    grid: list[dict[str, float]]
    num_train: int
    num_val: int
    num_classes: int
    dim: int
    protocol: dict[str, Any]
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe result."""
        return dataclasses.asdict(self)


def stratified_split(labels: torch.Tensor, fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Split indices into (kept, held out), holding out ``fraction`` of every class.

    At least one sample of each class with two or more samples is held out; classes with one sample stay kept.

    Returns:
        Two sorted int64 index tensors.
    """
    generator = torch.Generator().manual_seed(seed)
    keep, hold = [], []
    for cls in torch.unique(labels).tolist():
        idx = torch.nonzero(labels == cls).flatten()
        idx = idx[torch.randperm(len(idx), generator=generator)]
        n_hold = min(len(idx) - 1, max(1, round(fraction * len(idx)))) if len(idx) > 1 else 0
        hold.append(idx[:n_hold])
        keep.append(idx[n_hold:])
    return torch.sort(torch.cat(keep)).values, torch.sort(torch.cat(hold)).values


def _check(features: torch.Tensor, labels: torch.Tensor, name: str) -> None:
    if features.ndim != 2:
        raise IrepaError(f"{name} features must be (N, D), got {tuple(features.shape)}")
    if labels.ndim != 1 or labels.shape[0] != features.shape[0]:
        raise IrepaError(f"{name} labels must be (N,) with N = {features.shape[0]}, got {tuple(labels.shape)}")
    if features.shape[0] == 0:
        raise IrepaError(f"{name} split is empty")
    if not torch.isfinite(features).all():
        raise IrepaError(f"{name} features contain NaN or inf")
    if labels.dtype.is_floating_point or (labels < 0).any():
        raise IrepaError(f"{name} labels must be non-negative integers")


def _standardizer(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    x64 = x.double()
    mean = x64.mean(0)
    std = x64.std(0, unbiased=False).clamp_min(1e-6)
    return mean.float(), std.float()


def _train(
    x: torch.Tensor, y: torch.Tensor, num_classes: int, lr: float, wd: float, protocol: ProbeProtocol
) -> torch.nn.Linear:
    generator = torch.Generator().manual_seed(protocol.seed)
    layer = torch.nn.Linear(x.shape[1], num_classes, device=x.device)
    torch.nn.init.zeros_(layer.weight)
    torch.nn.init.zeros_(layer.bias)
    optimizer = torch.optim.AdamW(layer.parameters(), lr=lr, weight_decay=wd, betas=(0.9, 0.999), eps=1e-8)
    n = x.shape[0]
    steps_per_epoch = math.ceil(n / protocol.batch_size)
    total = protocol.epochs * steps_per_epoch
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 0.5 * (1 + math.cos(math.pi * step / total)))
    for _ in range(protocol.epochs):
        order = torch.randperm(n, generator=generator).to(x.device)
        for i in range(0, n, protocol.batch_size):
            batch = order[i : i + protocol.batch_size]
            loss = F.cross_entropy(layer(x[batch]), y[batch])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
    return layer


@torch.no_grad()
def _topk(layer: torch.nn.Linear, x: torch.Tensor, y: torch.Tensor, k: int) -> float:
    logits = layer(x)
    k = min(k, logits.shape[1])
    hits = (logits.topk(k, dim=1).indices == y[:, None]).any(dim=1)
    return hits.float().mean().item()


def linear_probe(
    train_features: torch.Tensor,
    train_labels: torch.Tensor,
    val_features: torch.Tensor,
    val_labels: torch.Tensor,
    protocol: ProbeProtocol | None = None,
    *,
    device: str | torch.device = "cpu",
) -> ProbeResult:
    """Train the protocol's linear probe on ``train_*`` and report accuracy on ``val_*``.

    Args:
        train_features: Training vectors (N, D).
        train_labels: Training labels (N,) in ``[0, C)``.
        val_features: Validation vectors (M, D).
        val_labels: Validation labels (M,) in ``[0, C)`` (C from the training labels).
        protocol: Settings; default :class:`ProbeProtocol`.
        device: Where to train.

    Raises:
        IrepaError: Shape mismatches, non-finite features, fewer than two classes, or validation labels unseen in
            training.
    """
    protocol = protocol or ProbeProtocol()
    _check(train_features, train_labels, "training")
    _check(val_features, val_labels, "validation")
    if val_features.shape[1] != train_features.shape[1]:
        raise IrepaError(f"feature dims differ: training {train_features.shape[1]}, validation {val_features.shape[1]}")
    num_classes = int(train_labels.max()) + 1
    if len(torch.unique(train_labels)) < 2:
        raise IrepaError("linear probing needs at least two classes in the training split")
    if int(val_labels.max()) >= num_classes:
        raise IrepaError(f"validation labels go up to {int(val_labels.max())} but training has {num_classes} classes")
    start = time.perf_counter()
    device = torch.device(device)
    with torch.autocast(device_type=device.type, enabled=False), torch.enable_grad():
        x_train = train_features.float().to(device)
        y_train = train_labels.long().to(device)
        keep, hold = stratified_split(train_labels.cpu(), protocol.holdout_fraction, protocol.seed)
        keep, hold = keep.to(device), hold.to(device)
        if len(hold) == 0:
            raise IrepaError("no class has two training samples, so no holdout for model selection is possible")

        def prepare(fit: torch.Tensor, *others: torch.Tensor) -> list[torch.Tensor]:
            if not protocol.standardize:
                return [fit, *others]
            mean, std = _standardizer(fit)
            return [(t - mean) / std for t in (fit, *others)]

        x_keep, x_hold = prepare(x_train[keep], x_train[hold])
        grid = []
        best: tuple[float, float, float] | None = None
        for lr in protocol.learning_rates:
            for wd in protocol.weight_decays:
                layer = _train(x_keep, y_train[keep], num_classes, lr, wd, protocol)
                score = _topk(layer, x_hold, y_train[hold], 1)
                grid.append({"learning_rate": lr, "weight_decay": wd, "holdout_top1": score})
                if best is None or score > best[0]:
                    best = (score, lr, wd)
        assert best is not None
        _, lr, wd = best
        x_all, x_val = prepare(x_train, val_features.float().to(device))
        y_val = val_labels.long().to(device)
        layer = _train(x_all, y_train, num_classes, lr, wd, protocol)
        top1 = _topk(layer, x_val, y_val, 1)
        top5 = _topk(layer, x_val, y_val, 5) if num_classes >= 5 else None
        train_top1 = _topk(layer, x_all, y_train, 1)
    return ProbeResult(
        top1=top1,
        top5=top5,
        train_top1=train_top1,
        learning_rate=lr,
        weight_decay=wd,
        grid=grid,
        num_train=int(x_train.shape[0]),
        num_val=int(val_features.shape[0]),
        num_classes=num_classes,
        dim=int(x_train.shape[1]),
        protocol=protocol.to_dict(),
        seconds=time.perf_counter() - start,
    )
