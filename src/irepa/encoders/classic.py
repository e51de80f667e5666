"""Classic, weight-free baselines: raw pixel patches and HOG, both on the diffusion model's token grid.

The paper also aligns to hand-crafted targets (SIFT / HOG / VGG features improve over no REPA, App. figure
``gfid_sift_hog``). Both baselines here are vectorized in torch (the official code loops over images on the CPU)
and see the image at its own resolution: one token per 16×16 pixel cell.

``pixels``
    The cell's raw RGB values, flattened in (channel, row, column) order — the order of a ViT patch embedding —
    and mapped to [-1, 1]: D = 3 · 16 · 16 = 768.

``hog``
    Histograms of oriented gradients after Dalal & Triggs (2005), one descriptor per token:

    1. Gradients by centred differences ``[-1, 0, 1]`` in each RGB channel (zero at the image border); per pixel,
       the channel with the largest gradient magnitude is used.
    2. Unsigned orientation in [0°, 180°), ``orientations`` bins (default 9); each pixel votes its magnitude
       into the two nearest bin centres with linear weights (hard spatial binning).
    3. The token's 16×16 cell is split into ``cells_per_side``² cells (default 2×2 of 8×8 px), one histogram each.
    4. The token's cells form one block, normalised with L2-Hys (L2, clip at 0.2, L2 again; ε = 1e-6 relative to
       the block's scale). Blocks do not overlap (one block per token), unlike classic HOG's sliding blocks.

    D = cells_per_side² · orientations = 36 by default.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from irepa.encoders.base import VisionEncoder

__all__ = ["HOG", "ClassicEncoder", "PixelPatches", "build_classic"]


class PixelPatches(nn.Module):
    """Flattened pixel cells: (B, 3, H, W) → (B, T, 3·p·p) with T = (H/p)·(W/p)."""

    def __init__(self, cell: int = 16) -> None:
        super().__init__()
        self.cell = cell

    @property
    def out_dim(self) -> int:
        """Token dimension 3·p·p."""
        return 3 * self.cell * self.cell

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Images (B, 3, H, W) → cells (B, T, 3·p·p)."""
        # unfold yields (B, C·p·p, T) with the feature index ordered (channel, row, column).
        return F.unfold(x, kernel_size=self.cell, stride=self.cell).transpose(1, 2)


class HOG(nn.Module):
    """Vectorized HOG descriptor per token cell (see the module docstring for the exact definition).

    Args:
        cell: Token cell size in pixels (16).
        cells_per_side: HOG cells per token side; must divide ``cell``.
        orientations: Unsigned orientation bins over [0°, 180°).
        clip: L2-Hys clipping threshold.
    """

    def __init__(self, cell: int = 16, cells_per_side: int = 2, orientations: int = 9, clip: float = 0.2) -> None:
        super().__init__()
        if cell % cells_per_side:
            raise ValueError(f"cells_per_side={cells_per_side} must divide the token cell size {cell}")
        self.cell = cell
        self.cells_per_side = cells_per_side
        self.orientations = orientations
        self.clip = clip

    @property
    def out_dim(self) -> int:
        """Token dimension cells_per_side² · orientations."""
        return self.cells_per_side**2 * self.orientations

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Images (B, 3, H, W) with values in [0, 1] → descriptors (B, T, D), float32."""
        x = x.float()
        b, _, h, w = x.shape
        # Centred differences, zero at the border (as skimage.feature.hog).
        gx = torch.zeros_like(x)
        gy = torch.zeros_like(x)
        gx[..., :, 1:-1] = x[..., :, 2:] - x[..., :, :-2]
        gy[..., 1:-1, :] = x[..., 2:, :] - x[..., :-2, :]
        magnitude = torch.sqrt(gx * gx + gy * gy)
        best = magnitude.argmax(dim=1, keepdim=True)  # the strongest channel per pixel (Dalal & Triggs)
        magnitude = magnitude.gather(1, best)[:, 0]
        angle = torch.atan2(gy.gather(1, best)[:, 0], gx.gather(1, best)[:, 0]) % math.pi  # [0, π)
        # Linear vote between the two nearest bin centres (centres at (k + 0.5)·π/n, cyclic).
        position = angle / (math.pi / self.orientations) - 0.5
        lower = torch.floor(position)
        upper_weight = position - lower
        n = self.orientations
        lower_bin = lower.long() % n
        upper_bin = (lower_bin + 1) % n
        votes = torch.zeros(b, n, h, w, dtype=x.dtype, device=x.device)
        votes.scatter_add_(1, lower_bin[:, None], (magnitude * (1 - upper_weight))[:, None])
        votes.scatter_add_(1, upper_bin[:, None], (magnitude * upper_weight)[:, None])
        size = self.cell // self.cells_per_side
        hist = F.avg_pool2d(votes, size) * (size * size)  # (B, n, H/size, W/size): per-cell sums
        # Group the cells of each token: (B, n, gh, c, gw, c) -> (B, gh, gw, c, c, n) -> (B, T, c·c·n).
        c = self.cells_per_side
        gh, gw = h // self.cell, w // self.cell
        blocks = hist.reshape(b, n, gh, c, gw, c).permute(0, 2, 4, 3, 5, 1).reshape(b, gh * gw, c * c * n)
        return _l2_hys(blocks, self.clip)


def _l2_hys(v: torch.Tensor, clip: float, eps: float = 1e-6) -> torch.Tensor:
    v = v / torch.sqrt((v * v).sum(-1, keepdim=True) + eps * eps)
    v = v.clamp(max=clip)
    return v / torch.sqrt((v * v).sum(-1, keepdim=True) + eps * eps)


class ClassicEncoder(VisionEncoder):
    """A :class:`VisionEncoder` around a weight-free feature module (:class:`HOG`, :class:`PixelPatches`)."""

    def _forward_backbone(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        return self.backbone(x), None


def build_classic(kind: str, **options: int | float) -> nn.Module:
    """Create the feature module of a classic baseline (``pixels`` or ``hog``)."""
    if kind == "pixels":
        return PixelPatches(**options)  # type: ignore[arg-type]
    if kind == "hog":
        return HOG(**options)  # type: ignore[arg-type]
    raise ValueError(f"unknown classic baseline {kind!r}")
