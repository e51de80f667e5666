"""The denoising loss of SiT/REPA (velocity regression) and classifier-free-guidance label dropout.

:func:`denoising_loss` builds ``x_t = alpha_t x0 + sigma_t eps`` and the target velocity on the path for given times
and noise, runs the model and returns named terms; the alignment term is added by the objective from
``result.hidden`` (:mod:`irepa.training.alignment`). The randomness (times, noise, the label-dropout mask) is drawn by
the training objective for the whole global batch (:meth:`irepa.training.objectives.Objective.draw`), not here.

Label dropout is explicit, at the rate the config sets (the official REPA/iREPA code ignores ``--cfg-prob`` and
always drops 10 % inside the model): :func:`label_drop_mask` draws the mask, :func:`drop_labels` applies it.
"""

from __future__ import annotations

import dataclasses

import torch
from torch import nn

from irepa.diffusion.paths import InterpolationPath
from irepa.errors import IrepaError

__all__ = [
    "DenoisingResult",
    "denoising_loss",
    "drop_labels",
    "jit_noise_scale",
    "label_drop_mask",
    "velocity_loss",
    "x_prediction_loss",
]


def velocity_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-sample mean squared error over all non-batch dimensions, in float32 under any autocast.

    Args:
        pred: Predicted velocity (B, C, H, W) (or any (B, ...)), any float dtype.
        target: Target velocity, same shape.

    Returns:
        (B,) float32 ``mean_{C,H,W} (pred - target)^2``.
    """
    if pred.shape != target.shape:
        raise IrepaError(f"velocity loss: prediction shape {tuple(pred.shape)} != target shape {tuple(target.shape)}")
    with torch.autocast(device_type=pred.device.type, enabled=False):
        return (pred.float() - target.float()).square().flatten(1).mean(dim=1)


def label_drop_mask(
    batch: int, prob: float, *, generator: torch.Generator | None = None, device: torch.device | str | None = None
) -> torch.Tensor:
    """Which labels to replace by the null class: each independently with probability ``prob``.

    Always draws ``batch`` uniform numbers (also at ``prob = 0``), so the generator's stream does not depend on
    the rate.

    Args:
        batch: Number of labels.
        prob: Dropout probability in [0, 1] (``diffusion.label_dropout``; 0.1 in SiT/REPA/iREPA).
        generator: Generator for the draws (on ``device``).
        device: Where to draw.

    Returns:
        (batch,) bool.
    """
    if not 0.0 <= prob <= 1.0:
        raise IrepaError(f"label dropout probability must be in [0, 1], got {prob}")
    return torch.rand(batch, generator=generator, device=device) < prob


def drop_labels(y: torch.Tensor, drop: torch.Tensor, null_label: int) -> torch.Tensor:
    """Replace the labels selected by ``drop`` with ``null_label`` (CFG label dropout).

    Args:
        y: Labels (B,) int64.
        drop: (B,) bool, e.g. from :func:`label_drop_mask`.
        null_label: The null class (``model.null_label``, i.e. ``num_classes``).

    Returns:
        New labels (B,), same dtype and device as ``y``.
    """
    return torch.where(drop.to(y.device), torch.full_like(y, null_label), y)


@dataclasses.dataclass
class DenoisingResult:
    """Named terms of one denoising step.

    Attributes:
        denoise: Batch mean of ``per_sample`` (scalar float32): the loss term the trainer adds.
        per_sample: Per-sample velocity MSE (B,) float32.
        hidden: Tokens (B, T, D) after block ``return_hidden`` (for the aligner), or None.
        t: Times used (B,).
        y: Labels the model saw, after dropout (B,).
        x_t: Noisy inputs (B, C, H, W).
        target: Target velocities (B, C, H, W).
        pred: Model predictions (B, C, H, W).
    """

    denoise: torch.Tensor
    per_sample: torch.Tensor
    hidden: torch.Tensor | None
    t: torch.Tensor
    y: torch.Tensor
    x_t: torch.Tensor
    target: torch.Tensor
    pred: torch.Tensor


def denoising_loss(
    model: nn.Module,
    path: InterpolationPath,
    x0: torch.Tensor,
    y: torch.Tensor,
    *,
    t: torch.Tensor,
    noise: torch.Tensor,
    return_hidden: int | None = None,
) -> DenoisingResult:
    """One evaluation of the SiT denoising objective.

    Args:
        model: Velocity model ``model(x_t, t, y, return_hidden=...) -> ModelOutput`` (may be DDP- or compile-wrapped).
        path: Interpolation path (``irepa.diffusion.paths.get_path("linear")``).
        x0: Clean data (B, C, H, W) (normalized latents or pixels).
        y: Labels (B,) int64, label dropout already applied (:func:`drop_labels`).
        t: SiT times (B,) in [0, 1] (t = 0 data, t = 1 noise).
        noise: Standard normal noise (B, C, H, W).
        return_hidden: Block (1-based) whose tokens the aligner needs.

    Returns:
        :class:`DenoisingResult`.
    """
    if noise.shape != x0.shape or t.shape != x0.shape[:1]:
        raise IrepaError(
            f"denoising loss: noise {tuple(noise.shape)} and times {tuple(t.shape)} must match data {tuple(x0.shape)}"
        )
    sample = path.sample(x0, noise, t.to(x0.dtype))
    output = model(sample.x_t, t, y, return_hidden=return_hidden)
    per_sample = velocity_loss(output.out, sample.velocity)
    return DenoisingResult(
        denoise=per_sample.mean(),
        per_sample=per_sample,
        hidden=output.hidden,
        t=t,
        y=y,
        x_t=sample.x_t,
        target=sample.velocity,
        pred=output.out,
    )


def jit_noise_scale(image_side: int) -> float:
    """JiT's noise standard deviation by resolution, ``max(1, side / 256)``: 1 at 256 px, 2 at 512 px (README)."""
    return max(1.0, image_side / 256)


def x_prediction_loss(
    model: nn.Module,
    x0: torch.Tensor,
    y: torch.Tensor,
    *,
    t: torch.Tensor,
    noise: torch.Tensor,
    noise_scale: float = 1.0,
    t_eps: float = 0.05,
    return_hidden: int | None = None,
) -> DenoisingResult:
    """One evaluation of JiT's objective: an x-prediction model trained with the loss in velocity space.

    On the linear path with noise of standard deviation ``s`` (SiT time; ``irepa.training.objectives.jit`` states
    how this is JiT's recipe in its reversed time)::

        x_t = (1 − t) x0 + t s ε,   x̂0 = model(x_t, t, y),
        v = (x_t − x0) / max(t, t_eps),   v̂ = (x_t − x̂0) / max(t, t_eps),   loss = mean (v − v̂)²

    Args:
        model: Clean-image model ``model(x_t, t, y, return_hidden=...) -> ModelOutput`` (a JiT).
        x0: Clean images (B, C, H, W) in [-1, 1].
        y: Labels (B,) int64, label dropout already applied (:func:`drop_labels`).
        t: SiT times (B,) in [0, 1].
        noise: Standard normal noise (B, C, H, W) (scaled by ``noise_scale`` here).
        noise_scale: Noise standard deviation ``s`` (JiT: 1 at 256 px, 2 at 512 px).
        t_eps: Lower bound of ``t`` in the velocity denominators.
        return_hidden: Block (1-based) whose tokens the aligner needs.

    Returns:
        :class:`DenoisingResult` with ``target`` = ``v`` and ``pred`` = ``v̂`` (float32).
    """
    if noise.shape != x0.shape or t.shape != x0.shape[:1]:
        raise IrepaError(
            f"x-prediction loss: noise {tuple(noise.shape)} and times {tuple(t.shape)} must match data "
            f"{tuple(x0.shape)}"
        )
    tt = t.to(x0.dtype).view(-1, *[1] * (x0.ndim - 1))
    x_t = (1 - tt) * x0 + tt * (noise_scale * noise)
    output = model(x_t, t, y, return_hidden=return_hidden)
    with torch.autocast(device_type=x0.device.type, enabled=False):
        denominator = tt.float().clamp_min(t_eps)
        target = (x_t.float() - x0.float()) / denominator
        pred = (x_t.float() - output.out.float()) / denominator
    per_sample = velocity_loss(pred, target)
    return DenoisingResult(
        denoise=per_sample.mean(),
        per_sample=per_sample,
        hidden=output.hidden,
        t=t,
        y=y,
        x_t=x_t,
        target=target,
        pred=pred,
    )
