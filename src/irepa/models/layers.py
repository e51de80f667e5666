"""Transformer building blocks shared by irepa's diffusion transformers.

Module and parameter names follow the DiT/SiT code base (itself built from timm parts), so official REPA / iREPA /
REPA-E state dicts load without renaming: ``PatchEmbed.proj``, ``TimestepEmbedder.mlp.{0,2}``,
``LabelEmbedder.embedding_table``, ``Attention.{qkv,q_norm,k_norm,proj}``, ``Mlp.{fc1,fc2}``,
``*.adaLN_modulation.1``, ``FinalLayer.{linear,adaLN_modulation.1}``.

Attention uses :func:`torch.nn.functional.scaled_dot_product_attention`. Forward-mode AD (``torch.func.jvp``, needed
by MeanFlow) is not implemented for the fused flash / memory-efficient kernels; run such passes inside
:func:`math_attention`, which pins SDPA to its differentiable math backend.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "Attention",
    "FinalLayer",
    "LabelEmbedder",
    "Mlp",
    "PatchEmbed",
    "SiTBlock",
    "TimestepEmbedder",
    "math_attention",
    "modulate",
    "sincos_pos_embed_2d",
    "timestep_embedding",
]


# ----------------------------------------------------------------------------------------------------------------------
# Functional pieces


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Modulate tokens ``x`` (B, T, D) as ``x * (1 + scale) + shift`` with per-sample ``shift``, ``scale`` (B, D)."""
    return x * (1 + scale.unsqueeze(1)) + shift.unsqueeze(1)


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding of (fractional) times, cos-then-sin, as in DiT/SiT.

    Times are embedded as given: SiT feeds raw ``t`` in [0, 1] (no ×1000 rescaling as in DDPM-era DiT).

    Args:
        t: Times (B,), any float dtype; the embedding is computed in float32 (float64 for float64 times).
        dim: Embedding width (256 in SiT). An odd width gets a trailing zero column.
        max_period: Longest period of the sinusoids.

    Returns:
        (B, dim) ``[cos(t f_0), ..., cos(t f_{d/2-1}), sin(t f_0), ...]`` with ``f_i = max_period^(-i / (d/2))``.
    """
    dtype = torch.float64 if t.dtype == torch.float64 else torch.float32
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=dtype, device=t.device) / half)
    args = t.to(dtype)[:, None] * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        emb = torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=-1)
    return emb


def sincos_pos_embed_2d(dim: int, grid: tuple[int, int]) -> torch.Tensor:
    """Fixed 2-D sine-cosine position embedding of an ``(H, W)`` token grid (the MAE recipe DiT/SiT use).

    The first ``dim / 2`` channels encode the column index and the last ``dim / 2`` the row index; each half is
    ``[sin(pos ω_0), ..., sin(pos ω_{k-1}), cos(pos ω_0), ...]`` with ``ω_i = 10000^(-i / k)``, ``k = dim / 4``.
    This is bit-for-bit the table stored in official SiT checkpoints (computed in float64, returned as float32).

    Args:
        dim: Embedding width; must be divisible by 4.
        grid: Token grid ``(H, W)``; tokens are in row-major order.

    Returns:
        (H·W, dim) float32.
    """
    if dim % 4:
        raise ValueError(f"2-D sin-cos position embedding needs a width divisible by 4, got {dim}")
    height, width = grid
    omega = 1.0 / 10000 ** (torch.arange(dim // 4, dtype=torch.float64) / (dim / 4))

    def axis(pos: torch.Tensor) -> torch.Tensor:  # (T,) -> (T, dim/2)
        out = pos[:, None] * omega[None]
        return torch.cat([torch.sin(out), torch.cos(out)], dim=1)

    rows, cols = torch.meshgrid(
        torch.arange(height, dtype=torch.float64), torch.arange(width, dtype=torch.float64), indexing="ij"
    )
    return torch.cat([axis(cols.reshape(-1)), axis(rows.reshape(-1))], dim=1).float()


@contextlib.contextmanager
def math_attention() -> Iterator[None]:
    """Run SDPA on its math backend, which supports forward-mode AD (``torch.func.jvp``) and double backward."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    with sdpa_kernel(SDPBackend.MATH):
        yield


# ----------------------------------------------------------------------------------------------------------------------
# Embedders


class PatchEmbed(nn.Module):
    """Non-overlapping patches to tokens: ``Conv2d(C, D, kernel = stride = p)`` (timm ``PatchEmbed`` keys).

    Args:
        patch_size: Patch side ``p``.
        in_channels: Input channels ``C``.
        hidden_size: Token width ``D``.
    """

    def __init__(self, patch_size: int, in_channels: int, hidden_size: int) -> None:
        super().__init__()
        self.patch_size = patch_size
        self.proj = nn.Conv2d(in_channels, hidden_size, kernel_size=patch_size, stride=patch_size, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) → (B, H/p · W/p, D), tokens in row-major order."""
        return self.proj(x).flatten(2).transpose(1, 2)


class TimestepEmbedder(nn.Module):
    """Scalar time → vector: sinusoidal features, then ``Linear(F, D) - SiLU - Linear(D, D)`` (keys ``mlp.0/2``).

    Args:
        hidden_size: Output width ``D``.
        frequency_embedding_size: Sinusoidal feature width ``F`` (256 in SiT).
    """

    def __init__(self, hidden_size: int, frequency_embedding_size: int = 256) -> None:
        super().__init__()
        self.frequency_embedding_size = frequency_embedding_size
        self.mlp = nn.Sequential(
            nn.Linear(frequency_embedding_size, hidden_size, bias=True),
            nn.SiLU(),
            nn.Linear(hidden_size, hidden_size, bias=True),
        )

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        """(B,) times → (B, D)."""
        freq = timestep_embedding(t, self.frequency_embedding_size)
        return self.mlp(freq.to(self.mlp[0].weight.dtype))


class LabelEmbedder(nn.Module):
    """Class label → vector through a table (key ``embedding_table``), with an optional extra row for the null class.

    Label dropout for classifier-free guidance is *not* done here (the official code hides it in this module and
    ignores the configured rate); the training objective draws the mask (:func:`irepa.diffusion.losses.label_drop_mask`)
    and replaces the labels (:func:`irepa.diffusion.losses.drop_labels`) before the forward.

    Args:
        num_classes: Number of real classes; labels ``0 .. num_classes - 1``.
        hidden_size: Output width ``D``.
        null_class: Add row ``num_classes`` for the null (unconditional) label used by CFG.
    """

    def __init__(self, num_classes: int, hidden_size: int, null_class: bool = True) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.embedding_table = nn.Embedding(num_classes + int(null_class), hidden_size)

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        """(B,) int64 labels → (B, D)."""
        return self.embedding_table(y)


# ----------------------------------------------------------------------------------------------------------------------
# Transformer block


class Attention(nn.Module):
    """Multi-head self-attention through SDPA, with optional QK-norm (timm ``Attention`` keys and semantics).

    Args:
        dim: Token width ``D``.
        num_heads: Number of heads; ``D`` must be divisible by it.
        qkv_bias: Bias on the fused qkv projection (True in SiT).
        qk_norm: LayerNorm (affine, eps 1e-5, as timm's default ``norm_layer`` the official code relied on) over
            ``head_dim`` applied to queries and keys; keys ``q_norm.*`` / ``k_norm.*``.
    """

    def __init__(self, dim: int, num_heads: int, *, qkv_bias: bool = True, qk_norm: bool = False) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"attention width {dim} is not divisible by num_heads={num_heads}")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.q_norm = nn.LayerNorm(self.head_dim) if qk_norm else nn.Identity()
        self.k_norm = nn.LayerNorm(self.head_dim) if qk_norm else nn.Identity()
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, T, D) → (B, T, D)."""
        batch, tokens, dim = x.shape
        qkv = self.qkv(x).reshape(batch, tokens, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)  # each (B, heads, T, head_dim)
        q, k = self.q_norm(q), self.k_norm(k)
        x = F.scaled_dot_product_attention(q, k, v)
        return self.proj(x.transpose(1, 2).reshape(batch, tokens, dim))


class Mlp(nn.Module):
    """``Linear(D, H) - GELU(tanh) - Linear(H, D)`` (timm ``Mlp`` keys ``fc1`` / ``fc2``)."""

    def __init__(self, dim: int, hidden_dim: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden_dim)
        self.act = nn.GELU(approximate="tanh")
        self.fc2 = nn.Linear(hidden_dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, T, D) → (B, T, D)."""
        return self.fc2(self.act(self.fc1(x)))


class SiTBlock(nn.Module):
    """DiT/SiT block with adaLN-Zero conditioning.

    ``x ← x + g_msa · Attn(modulate(LN(x), s_msa, c_msa))``, ``x ← x + g_mlp · MLP(modulate(LN(x), s_mlp, c_mlp))``,
    the six modulation vectors coming from ``adaLN_modulation = SiLU - Linear(D, 6D)`` of the conditioning vector.
    The LayerNorms have no affine parameters (eps 1e-6) and hence no state-dict keys.

    Args:
        hidden_size: Token width ``D``.
        num_heads: Attention heads.
        mlp_ratio: MLP hidden width as a multiple of ``D``.
        qk_norm: QK-norm in attention.
    """

    def __init__(self, hidden_size: int, num_heads: int, mlp_ratio: float = 4.0, *, qk_norm: bool = False) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.attn = Attention(hidden_size, num_heads, qkv_bias=True, qk_norm=qk_norm)
        self.norm2 = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.mlp = Mlp(hidden_size, int(hidden_size * mlp_ratio))
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden_size, 6 * hidden_size, bias=True))

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        """Tokens (B, T, D) conditioned on ``c`` (B, D) → (B, T, D)."""
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = self.adaLN_modulation(c).chunk(6, dim=-1)
        x = x + gate_msa.unsqueeze(1) * self.attn(modulate(self.norm1(x), shift_msa, scale_msa))
        x = x + gate_mlp.unsqueeze(1) * self.mlp(modulate(self.norm2(x), shift_mlp, scale_mlp))
        return x


class FinalLayer(nn.Module):
    """adaLN-modulated LayerNorm then ``Linear(D, p²·C)`` per token (keys ``linear``, ``adaLN_modulation.1``).

    Args:
        hidden_size: Token width ``D`` (the official SiT-S configs build this with 768 and crash; irepa uses ``D``).
        patch_size: Patch side ``p``.
        out_channels: Output channels ``C``.
    """

    def __init__(self, hidden_size: int, patch_size: int, out_channels: int) -> None:
        super().__init__()
        self.norm_final = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.linear = nn.Linear(hidden_size, patch_size * patch_size * out_channels, bias=True)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden_size, 2 * hidden_size, bias=True))

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        """Tokens (B, T, D) conditioned on ``c`` (B, D) → (B, T, p²·C)."""
        shift, scale = self.adaLN_modulation(c).chunk(2, dim=-1)
        return self.linear(modulate(self.norm_final(x), shift, scale))
