"""Alignment losses between projected diffusion tokens and (normalized) encoder tokens.

``cosine`` is REPA's per-token cosine objective, reported as ``1 − cos`` averaged over tokens and images: it lies in
[0, 2] and is 0 when every prediction points along its target. REPA logs ``−cos`` (in [−1, 1]), which made users
think their loss had gone wrong when it turned negative (sihyun-yu/REPA#13, #49); the gradients are identical.

Numerics: computed in float32 (float64 for float64 input) with autocast disabled, so a bf16/fp16 forward pass cannot
overflow the squared norms — the NaN of sihyun-yu/REPA#46 came from ``F.normalize`` in fp16. Each token is first
divided by its largest absolute entry (cosine is scale-invariant), so even float32 inputs near the top of the
float32 range normalize without overflow.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import torch

from irepa.errors import IrepaError
from irepa.registry import Registry

__all__ = ["ALIGN_LOSSES", "AlignLossOutput", "cosine_alignment_loss", "unit_tokens"]


@dataclasses.dataclass(frozen=True)
class AlignLossOutput:
    """One encoder's alignment loss.

    Attributes:
        loss: Scalar loss to minimize (differentiable with respect to the prediction).
        cos: Scalar mean cosine similarity between prediction and target, detached (for logging), in [−1, 1].
    """

    loss: torch.Tensor
    cos: torch.Tensor


#: ``loss(pred (B, T, D), target (B, T, D)) -> AlignLossOutput``.
AlignLoss = Callable[[torch.Tensor, torch.Tensor], AlignLossOutput]

ALIGN_LOSSES: Registry[AlignLoss] = Registry("alignment loss")


def unit_tokens(tokens: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """L2-normalize the last axis in float32 (float64 kept), overflow-safe; zero vectors stay zero.

    Args:
        tokens: ``(..., D)`` any floating dtype.
        eps: Tokens whose norm (after rescaling by their max-abs entry) is below ``eps`` map to zero.

    Returns:
        ``(..., D)`` unit vectors in float32 (float64 for float64 input).
    """
    x = tokens if tokens.dtype == torch.float64 else tokens.float()
    # Divide by the max-abs entry first: cosine is scale-invariant and the squared norm then cannot overflow.
    peak = x.abs().amax(dim=-1, keepdim=True)
    x = x / torch.where(peak > 0, peak, torch.ones_like(peak))
    return x / torch.linalg.vector_norm(x, dim=-1, keepdim=True).clamp_min(eps)


@ALIGN_LOSSES.register("cosine")
def cosine_alignment_loss(pred: torch.Tensor, target: torch.Tensor) -> AlignLossOutput:
    """REPA's cosine alignment loss, reported as ``1 − cos``.

    Args:
        pred: Projected diffusion tokens ``(B, T, D)``.
        target: Encoder tokens ``(B, T, D)`` (already normalized as configured); treated as a constant.

    Returns:
        ``loss = mean_{b,t}(1 − cos(pred_bt, target_bt))`` in [0, 2] and the detached mean cosine.

    Raises:
        IrepaError: If the shapes differ.
    """
    if pred.shape != target.shape:
        raise IrepaError(
            f"alignment prediction {tuple(pred.shape)} and target {tuple(target.shape)} must have the same shape"
        )
    with torch.autocast(device_type=pred.device.type, enabled=False):
        # Clamp: rounding can push a perfect match to 1 + 1e-7; the loss must stay in [0, 2].
        cos = (unit_tokens(pred) * unit_tokens(target.detach())).sum(dim=-1).clamp(-1.0, 1.0)
        mean_cos = cos.mean()
        return AlignLossOutput(loss=1.0 - mean_cos, cos=mean_cos.detach())
