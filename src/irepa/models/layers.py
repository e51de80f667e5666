"""Transformer building blocks shared by irepa's diffusion transformers (SiT and JiT).

Module and parameter names follow the DiT/SiT code base (itself built from timm parts) and the JiT code base, so
official REPA / iREPA / REPA-E / JiT state dicts load without renaming: ``PatchEmbed.proj``,
``BottleneckPatchEmbed.{proj1,proj2}``, ``TimestepEmbedder.mlp.{0,2}``, ``LabelEmbedder.embedding_table``,
``Attention.{qkv,q_norm,k_norm,proj}``, ``Mlp.{fc1,fc2}``, ``SwiGLU.{w12,w3}``, ``RMSNorm.weight``,
``*.adaLN_modulation.1``, ``FinalLayer.{linear,adaLN_modulation.1,norm_final}``.

SiT and JiT share one adaLN-Zero block (:class:`AdaLNBlock`) and one final layer; they differ in options only:
LayerNorm (no affine) + GELU MLP + optional LayerNorm QK-norm (SiT) versus RMSNorm + SwiGLU + RMSNorm QK-norm +
2-D RoPE (JiT).

Attention uses :func:`torch.nn.functional.scaled_dot_product_attention`. Forward-mode AD (``torch.func.jvp``, needed
by MeanFlow) is not implemented for the fused flash / memory-efficient kernels; run such passes inside
:func:`math_attention`, which pins SDPA to its differentiable math backend.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "AdaLNBlock",
    "Attention",
    "BottleneckPatchEmbed",
    "FinalLayer",
    "LabelEmbedder",
    "Mlp",
    "PatchEmbed",
    "RMSNorm",
    "SwiGLU",
    "TimestepEmbedder",
    "apply_rope",
    "init_adaln_zero",
    "math_attention",
    "modulate",
    "rope_2d",
    "sincos_pos_embed_2d",
    "timestep_embedding",
]

#: Norm layers of the blocks: ``layernorm`` (no affine, eps 1e-6: DiT/SiT) or ``rmsnorm`` (learned scale: JiT).
NORMS = ("layernorm", "rmsnorm")


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


def rope_2d(
    head_dim: int, grid: tuple[int, int], *, num_prefix: int = 0, theta: float = 10000.0, device=None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Cosine and sine tables of 2-D rotary position embedding (EVA-02 / JiT "lang" frequencies), float32.

    Each token's ``head_dim`` channels are split in two halves: the first rotates with the token's row, the second
    with its column. Within a half of width ``h = head_dim / 2``, channel pairs ``(2i, 2i + 1)`` rotate together by
    ``pos · θ^(-2i / h)``, ``i < h / 2``. ``num_prefix`` leading rows (JiT's in-context class tokens) get the
    identity rotation (cos 1, sin 0).

    Args:
        head_dim: Attention head width; divisible by 4.
        grid: Token grid ``(H, W)``, tokens in row-major order.
        num_prefix: Tokens placed before the grid tokens.
        theta: Frequency base.
        device: Device of the tables.

    Returns:
        ``(cos, sin)``, each ``(num_prefix + H·W, head_dim)`` float32.
    """
    if head_dim % 4:
        raise ValueError(f"2-D RoPE needs a head width divisible by 4, got {head_dim}")
    half = head_dim // 2
    freqs = 1.0 / theta ** (torch.arange(0, half, 2, device=device)[: half // 2].float() / half)  # (h/2,)

    def axis(n: int) -> torch.Tensor:  # (n, half): angles of positions 0..n-1, each frequency twice (pairs)
        pos = torch.arange(n, device=device) / n * n  # = arange(n); written as upstream's pt/ft rescaling
        return (pos[:, None] * freqs[None]).repeat_interleave(2, dim=-1)

    height, width = grid
    rows = axis(height)[:, None, :].expand(height, width, half)
    cols = axis(width)[None, :, :].expand(height, width, half)
    angles = torch.cat([rows, cols], dim=-1).reshape(height * width, head_dim)
    cos, sin = angles.cos(), angles.sin()
    if num_prefix:
        cos = torch.cat([cos.new_ones(num_prefix, head_dim), cos])
        sin = torch.cat([sin.new_zeros(num_prefix, head_dim), sin])
    return cos, sin


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate channel pairs ``(2i, 2i + 1)`` of ``x`` (B, heads, T, hd) by the angles of tables (T, hd), in float32.

    ``x·cos + rotate_half(x)·sin`` with ``rotate_half((a, b)) = (−b, a)`` per pair; the result has ``x``'s dtype.
    """
    pairs = x.float().unflatten(-1, (-1, 2))
    rotated = torch.stack([-pairs[..., 1], pairs[..., 0]], dim=-1).flatten(-2)
    return (x.float() * cos + rotated * sin).to(x.dtype)


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


class BottleneckPatchEmbed(nn.Module):
    """JiT's patch embedding: a strided patch conv into a low-rank bottleneck, then a 1×1 conv to the width.

    ``Conv2d(C, r, k = stride = p, no bias)`` then ``Conv2d(r, D, 1)`` (keys ``proj1``, ``proj2``); the bottleneck
    ``r`` (128 for JiT-B/L, 256 for JiT-H) keeps large pixel patches cheap.

    Args:
        patch_size: Patch side ``p``.
        in_channels: Input channels ``C``.
        bottleneck_dim: Bottleneck width ``r``.
        hidden_size: Token width ``D``.
    """

    def __init__(self, patch_size: int, in_channels: int, bottleneck_dim: int, hidden_size: int) -> None:
        super().__init__()
        self.patch_size = patch_size
        self.proj1 = nn.Conv2d(in_channels, bottleneck_dim, kernel_size=patch_size, stride=patch_size, bias=False)
        self.proj2 = nn.Conv2d(bottleneck_dim, hidden_size, kernel_size=1, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) → (B, H/p · W/p, D), tokens in row-major order."""
        return self.proj2(self.proj1(x)).flatten(2).transpose(1, 2)


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


class RMSNorm(nn.Module):
    """Root-mean-square norm with a learned scale (key ``weight``), computed in float32 (as JiT / LLaMA).

    Args:
        dim: Normalized width.
        eps: Added to the mean square.
    """

    def __init__(self, dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(..., dim) → (..., dim) in ``x``'s dtype."""
        x32 = x.float()
        x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return (self.weight * x32).to(x.dtype)


def _norm(kind: str, dim: int, *, affine_layernorm: bool) -> nn.Module:
    if kind == "rmsnorm":
        return RMSNorm(dim, eps=1e-6)
    if kind == "layernorm":
        # Block norms (DiT/SiT): no affine, eps 1e-6. QK-norm (timm default norm_layer): affine, eps 1e-5.
        return nn.LayerNorm(dim) if affine_layernorm else nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
    raise ValueError(f"unknown norm {kind!r}; valid: {', '.join(NORMS)}")


def _dropout(p: float) -> nn.Module:
    # No module at p = 0, so that a model without dropout runs exactly the ops (and random draws) it always did.
    return nn.Dropout(p) if p > 0 else nn.Identity()


class Attention(nn.Module):
    """Multi-head self-attention through SDPA, with optional QK-norm and RoPE (timm ``Attention`` keys).

    Args:
        dim: Token width ``D``.
        num_heads: Number of heads; ``D`` must be divisible by it.
        qkv_bias: Bias on the fused qkv projection (True in SiT and JiT).
        qk_norm: Normalize queries and keys over ``head_dim`` (keys ``q_norm.*`` / ``k_norm.*``).
        qk_norm_kind: ``layernorm`` (affine, eps 1e-5, timm's default ``norm_layer`` the official SiT relied on) or
            ``rmsnorm`` (JiT).
        attn_drop: Dropout on the attention weights (training only).
        proj_drop: Dropout after the output projection.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        *,
        qkv_bias: bool = True,
        qk_norm: bool = False,
        qk_norm_kind: str = "layernorm",
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
    ) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"attention width {dim} is not divisible by num_heads={num_heads}")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.attn_drop = attn_drop
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        norm = lambda: _norm(qk_norm_kind, self.head_dim, affine_layernorm=True)  # noqa: E731
        self.q_norm = norm() if qk_norm else nn.Identity()
        self.k_norm = norm() if qk_norm else nn.Identity()
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = _dropout(proj_drop)

    def forward(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        """(B, T, D) → (B, T, D); ``rope``: ``(cos, sin)`` tables (T, head_dim) from :func:`rope_2d`, or None."""
        batch, tokens, dim = x.shape
        qkv = self.qkv(x).reshape(batch, tokens, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)  # each (B, heads, T, head_dim)
        q, k = self.q_norm(q), self.k_norm(k)
        if rope is not None:
            q, k = apply_rope(q, *rope), apply_rope(k, *rope)
        dropout = self.attn_drop if self.training else 0.0
        x = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout)
        return self.proj_drop(self.proj(x.transpose(1, 2).reshape(batch, tokens, dim)))


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


class SwiGLU(nn.Module):
    """SwiGLU feed-forward ``w3(drop(SiLU(a) · b))`` with ``(a, b) = w12(x)`` (JiT keys ``w12`` / ``w3``).

    Args:
        dim: Token width ``D``.
        hidden_dim: The nominal MLP width (``mlp_ratio · D``); the gated width is ``int(hidden_dim · 2 / 3)``, which
            keeps the parameter count of a GELU MLP of width ``hidden_dim`` (as upstream).
        drop: Dropout before ``w3``.
    """

    def __init__(self, dim: int, hidden_dim: int, drop: float = 0.0) -> None:
        super().__init__()
        hidden = int(hidden_dim * 2 / 3)
        self.w12 = nn.Linear(dim, 2 * hidden)
        self.w3 = nn.Linear(hidden, dim)
        self.drop = _dropout(drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, T, D) → (B, T, D)."""
        a, b = self.w12(x).chunk(2, dim=-1)
        return self.w3(self.drop(F.silu(a) * b))


class AdaLNBlock(nn.Module):
    """DiT block with adaLN-Zero conditioning (the SiT block; the JiT block with RMSNorm, SwiGLU and RoPE).

    ``x ← x + g_msa · Attn(modulate(N(x), s_msa, c_msa))``, ``x ← x + g_mlp · MLP(modulate(N(x), s_mlp, c_mlp))``,
    the six modulation vectors coming from ``adaLN_modulation = SiLU - Linear(D, 6D)`` of the conditioning vector.
    SiT's LayerNorms have no affine parameters (eps 1e-6) and hence no state-dict keys; JiT's RMSNorms have
    ``norm1.weight`` / ``norm2.weight``.

    Args:
        hidden_size: Token width ``D``.
        num_heads: Attention heads.
        mlp_ratio: MLP hidden width as a multiple of ``D``.
        qk_norm: QK-norm in attention (of the same kind as ``norm``).
        norm: ``layernorm`` (SiT) or ``rmsnorm`` (JiT).
        mlp: ``gelu`` (SiT: ``fc1``/``fc2``, tanh GELU) or ``swiglu`` (JiT: ``w12``/``w3``).
        attn_drop: Attention-weight dropout.
        proj_drop: Dropout after the attention projection and inside the MLP (SwiGLU only).
    """

    def __init__(
        self,
        hidden_size: int,
        num_heads: int,
        mlp_ratio: float = 4.0,
        *,
        qk_norm: bool = False,
        norm: str = "layernorm",
        mlp: str = "gelu",
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
    ) -> None:
        super().__init__()
        if mlp not in ("gelu", "swiglu"):
            raise ValueError(f"unknown mlp {mlp!r}; valid: gelu, swiglu")
        self.norm1 = _norm(norm, hidden_size, affine_layernorm=False)
        self.attn = Attention(hidden_size, num_heads, qkv_bias=True, qk_norm=qk_norm, qk_norm_kind=norm,
                              attn_drop=attn_drop, proj_drop=proj_drop)  # fmt: skip
        self.norm2 = _norm(norm, hidden_size, affine_layernorm=False)
        hidden = int(hidden_size * mlp_ratio)
        self.mlp = Mlp(hidden_size, hidden) if mlp == "gelu" else SwiGLU(hidden_size, hidden, drop=proj_drop)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden_size, 6 * hidden_size, bias=True))

    def forward(
        self, x: torch.Tensor, c: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor] | None = None
    ) -> torch.Tensor:
        """Tokens (B, T, D) conditioned on ``c`` (B, D), optional RoPE tables (T, head_dim) → (B, T, D)."""
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = self.adaLN_modulation(c).chunk(6, dim=-1)
        x = x + gate_msa.unsqueeze(1) * self.attn(modulate(self.norm1(x), shift_msa, scale_msa), rope)
        x = x + gate_mlp.unsqueeze(1) * self.mlp(modulate(self.norm2(x), shift_mlp, scale_mlp))
        return x


class FinalLayer(nn.Module):
    """adaLN-modulated norm then ``Linear(D, p²·C)`` per token.

    Keys ``linear``, ``adaLN_modulation.1``, and ``norm_final.weight`` for RMSNorm.

    Args:
        hidden_size: Token width ``D`` (the official SiT-S configs build this with 768 and crash; irepa uses ``D``).
        patch_size: Patch side ``p``.
        out_channels: Output channels ``C``.
        norm: ``layernorm`` (SiT: no affine, eps 1e-6) or ``rmsnorm`` (JiT).
    """

    def __init__(self, hidden_size: int, patch_size: int, out_channels: int, *, norm: str = "layernorm") -> None:
        super().__init__()
        self.norm_final = _norm(norm, hidden_size, affine_layernorm=False)
        self.linear = nn.Linear(hidden_size, patch_size * patch_size * out_channels, bias=True)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden_size, 2 * hidden_size, bias=True))

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        """Tokens (B, T, D) conditioned on ``c`` (B, D) → (B, T, p²·C)."""
        shift, scale = self.adaLN_modulation(c).chunk(2, dim=-1)
        return self.linear(modulate(self.norm_final(x), shift, scale))


# ----------------------------------------------------------------------------------------------------------------------
# Initialization


def init_adaln_zero(model: nn.Module, patch_convs: Sequence[nn.Conv2d]) -> None:
    """The DiT initialization shared by SiT and JiT (adaLN-Zero).

    In this order: xavier-uniform weights and zero biases on every ``nn.Linear``; each of ``patch_convs``
    xavier-uniform as a linear map over its flattened ``(C_in, k, k)`` input (bias zeroed where present); N(0, 0.02)
    on the label table and on the time embedders' two linear layers; zeros on every ``adaLN_modulation`` output layer
    and on the final linear layer, so that each block starts as the identity and the model outputs 0.

    Args:
        model: A model with ``blocks``, ``final_layer``, ``y_embedder``, ``t_embedder`` (and optionally
            ``h_embedder``) as built from this module's layers.
        patch_convs: The patch-embedding convolutions.
    """

    def basic_init(module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            nn.init.xavier_uniform_(module.weight)
            if module.bias is not None:
                nn.init.zeros_(module.bias)

    model.apply(basic_init)
    for conv in patch_convs:
        nn.init.xavier_uniform_(conv.weight.view(conv.weight.shape[0], -1))
        if conv.bias is not None:
            nn.init.zeros_(conv.bias)
    nn.init.normal_(model.y_embedder.embedding_table.weight, std=0.02)
    for embedder in (model.t_embedder, getattr(model, "h_embedder", None)):
        if embedder is not None:
            nn.init.normal_(embedder.mlp[0].weight, std=0.02)
            nn.init.normal_(embedder.mlp[2].weight, std=0.02)
    for layer in [block.adaLN_modulation[-1] for block in model.blocks] + [model.final_layer.adaLN_modulation[-1]]:
        nn.init.zeros_(layer.weight)
        nn.init.zeros_(layer.bias)
    nn.init.zeros_(model.final_layer.linear.weight)
    nn.init.zeros_(model.final_layer.linear.bias)
