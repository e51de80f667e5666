"""The denoising objective of SiT/REPA: velocity regression, explicit label dropout, and the per-step composition.

The training step calls :func:`denoising_loss` once per batch; it draws, in this order, the times ``t`` (from the
time sampler), the noise ``eps`` (standard normal, shape of ``x0``) and the label-dropout mask, each from the given
generator (numbers are drawn on the generator's device and moved to the data's device). It builds
``x_t = alpha_t x0 + sigma_t eps`` and the target velocity on the path, runs the model, and returns named terms.
The alignment term is added by the trainer from ``result.hidden`` (see :mod:`irepa.align`).

Label dropout for classifier-free guidance is explicit here, at the rate the config sets (the official REPA/iREPA
code ignores ``--cfg-prob`` and always drops 10 % inside the model).
"""

from __future__ import annotations

import dataclasses

import torch
from torch import nn

from irepa.diffusion.paths import InterpolationPath
from irepa.diffusion.time_sampling import TimeSampler
from irepa.errors import IrepaError

__all__ = ["DenoisingResult", "denoising_loss", "drop_labels", "velocity_loss"]


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


def drop_labels(
    y: torch.Tensor, prob: float, null_label: int, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Replace each label by ``null_label`` independently with probability ``prob`` (CFG label dropout).

    Args:
        y: Labels (B,) int64.
        prob: Dropout probability in [0, 1]; at 0 the labels are returned unchanged and no random number is drawn.
        null_label: The null class (``model.null_label``, i.e. ``num_classes``).
        generator: Optional generator; the Bernoulli draws happen on its device.

    Returns:
        New labels (B,), same dtype and device as ``y``.
    """
    if not 0.0 <= prob <= 1.0:
        raise IrepaError(f"label dropout probability must be in [0, 1], got {prob}")
    if prob == 0.0:
        return y
    source = generator.device if generator is not None else y.device
    drop = torch.rand(y.shape, generator=generator, device=source) < prob
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
    time_sampler: TimeSampler,
    generator: torch.Generator | None = None,
    label_dropout: float = 0.0,
    null_label: int | None = None,
    return_hidden: int | None = None,
    t: torch.Tensor | None = None,
    noise: torch.Tensor | None = None,
) -> DenoisingResult:
    """One evaluation of the SiT denoising objective.

    Args:
        model: Velocity model ``model(x_t, t, y, return_hidden=...) -> ModelOutput`` (may be DDP- or compile-wrapped).
        path: Interpolation path (``irepa.diffusion.paths.get_path("linear")``).
        x0: Clean data (B, C, H, W) (normalized latents or pixels).
        y: Labels (B,) int64.
        time_sampler: Bound time sampler (``get_time_sampler("uniform")``).
        generator: Generator for times, noise and label dropout (in that order).
        label_dropout: CFG label-dropout probability (the config's value; 0.1 in REPA/iREPA).
        null_label: The model's null class; required when ``label_dropout > 0``.
        return_hidden: Block (1-based) whose tokens the aligner needs.
        t: Use these times (B,) instead of sampling them (e.g. to reuse them across two passes, as REPA-E does).
        noise: Use this noise (B, C, H, W) instead of sampling it.

    Returns:
        :class:`DenoisingResult`.
    """
    batch = x0.shape[0]
    if label_dropout > 0 and null_label is None:
        raise IrepaError("label_dropout > 0 needs the model's null_label (build the model with null_class=True)")
    if t is None:
        t = time_sampler(batch, generator=generator, device=x0.device)
    if noise is None:
        source = generator.device if generator is not None else x0.device
        noise = torch.randn(x0.shape, generator=generator, device=source, dtype=torch.float32).to(x0)
    y = drop_labels(y, label_dropout, null_label if null_label is not None else -1, generator)
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
