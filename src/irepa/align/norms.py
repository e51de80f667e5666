"""Target normalizations applied to the encoder's patch tokens before the alignment loss.

``spatial`` is iREPA's spatial normalization: per image and per channel, statistics over the token (spatial) axis,

    y = (x − γ · mean_T(x)) / (std_T(x) + eps)

It removes (a fraction γ of) the component shared by all tokens of an image, the "global" part, and rescales each
channel, so the alignment target is dominated by how tokens differ across space.

Paper vs code (paper-notes §6.1, §9 item 3):

* **Code (the default here, ``variant="official"``):** ``std`` is the *unbiased* standard deviation over the T
  tokens (``torch.std``), and ``eps = 1e-6`` is added to the std, outside the square root.
* **Paper (``variant="paper"``):** ``(x − γ·E[x]) / sqrt(Var[x] + eps)`` with ``eps = 1e-6``, written like instance
  norm; we read ``Var`` as the biased (population) variance, as instance norm uses. The two differ by the factor
  ``sqrt(T / (T − 1))`` (0.2 % at T = 256) and in where eps enters.
* **γ:** the paper gives γ ∈ [0.6, 0.8]; the official defaults are 0.6 for SiT/LDM and 0.8 for JiT. γ = 1 is full
  z-scoring, the formula shown on the project page. γ = 0 only rescales channels.

Numerics: the statistics and the output are float32 whatever the input dtype, with autocast disabled inside (the
official code ran this under fp16/bf16 autocast, prior-implementations §13 item 19). float64 inputs stay float64.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import torch
import torch.nn.functional as F

from irepa.errors import IrepaError
from irepa.registry import Registry

__all__ = ["TARGET_NORMS", "TargetNorm", "spatial_norm"]

#: ``norm(tokens (B, T, D), *, gamma, eps) -> (B, T, D)`` in float32 (or float64 for float64 input).
TargetNorm = Callable[..., torch.Tensor]

TARGET_NORMS: Registry[TargetNorm] = Registry("target normalization")


def _float32_or_better(tokens: torch.Tensor) -> torch.Tensor:
    return tokens if tokens.dtype == torch.float64 else tokens.float()


def spatial_norm(
    tokens: torch.Tensor,
    gamma: float = 1.0,
    eps: float = 1e-6,
    *,
    variant: Literal["official", "paper"] = "official",
) -> torch.Tensor:
    """Spatial normalization of patch tokens over the token axis (iREPA).

    Args:
        tokens: Patch tokens ``(B, T, D)`` (no CLS/register tokens), any floating dtype.
        gamma: Fraction of the spatial mean to subtract (paper range 0.6–0.8; official 0.6 SiT, 0.8 JiT; 1 = full
            z-scoring).
        eps: Stabilizer (official 1e-6), added to the std (``"official"``) or to the variance (``"paper"``).
        variant: ``"official"``: ``(x − γμ) / (std_unbiased + eps)`` as the released code; ``"paper"``:
            ``(x − γμ) / sqrt(Var_biased + eps)`` as the paper's formula.

    Returns:
        Normalized tokens ``(B, T, D)``, float32 (float64 for float64 input), never reduced precision.

    Raises:
        IrepaError: Not a 3-D tensor, fewer than 2 tokens, or an unknown variant.
    """
    if tokens.ndim != 3:
        raise IrepaError(f"spatial_norm expects tokens (B, T, D), got shape {tuple(tokens.shape)}")
    if tokens.shape[1] < 2:
        raise IrepaError(f"spatial_norm needs at least 2 tokens per image, got {tokens.shape[1]}")
    with torch.autocast(device_type=tokens.device.type, enabled=False):
        x = _float32_or_better(tokens)
        mean = x.mean(dim=1, keepdim=True)
        if variant == "official":
            scale = x.std(dim=1, keepdim=True, unbiased=True) + eps
        elif variant == "paper":
            scale = torch.sqrt(x.var(dim=1, keepdim=True, unbiased=False) + eps)
        else:
            raise IrepaError(f"spatial_norm variant must be 'official' or 'paper', got {variant!r}")
        return (x - gamma * mean) / scale


@TARGET_NORMS.register("none")
def _no_norm(tokens: torch.Tensor, *, gamma: float = 1.0, eps: float = 1e-6) -> torch.Tensor:
    """REPA: the encoder tokens as they are (only cast to float32)."""
    return _float32_or_better(tokens)


@TARGET_NORMS.register("spatial", aliases=("zscore",))
def _spatial(tokens: torch.Tensor, *, gamma: float = 1.0, eps: float = 1e-6) -> torch.Tensor:
    """iREPA: :func:`spatial_norm` with the official variant."""
    return spatial_norm(tokens, gamma=gamma, eps=eps)


@TARGET_NORMS.register("layernorm")
def _layer_norm(tokens: torch.Tensor, *, gamma: float = 1.0, eps: float = 1e-6) -> torch.Tensor:
    """Per-token LayerNorm over channels without affine parameters (a channel-wise baseline, not iREPA)."""
    with torch.autocast(device_type=tokens.device.type, enabled=False):
        x = _float32_or_better(tokens)
        return F.layer_norm(x, x.shape[-1:], eps=eps)
