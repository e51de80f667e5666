"""Test helpers: the official SiT key layout and an independent reference SiT, written from the documentation.

Everything here is derived from prior-implementations.md §1.1–1.6 (the documented module tree, key list, block
math and checkpoint structure) and the MAE position-embedding recipe, *not* from irepa's code, so tests comparing
the two are real cross-checks. The reference model is assembled from timm's own ``PatchEmbed``, ``Attention`` and
``Mlp``, as the official code is. Not a test module (no ``test_`` prefix); other test files import it by path.
"""

from __future__ import annotations

import argparse
import math
from collections import OrderedDict

import numpy as np
import torch
from torch import nn


def mae_pos_embed(dim: int, height: int, width: int) -> np.ndarray:
    """MAE ``get_2d_sincos_pos_embed`` generalized to an (H, W) grid: (H*W, dim) float64."""

    def one_d(d: int, pos: np.ndarray) -> np.ndarray:
        omega = np.arange(d // 2, dtype=np.float64)
        omega /= d / 2.0
        omega = 1.0 / 10000**omega
        out = np.einsum("m,d->md", pos.reshape(-1), omega)
        return np.concatenate([np.sin(out), np.cos(out)], axis=1)

    grid_h = np.arange(height, dtype=np.float32)
    grid_w = np.arange(width, dtype=np.float32)
    grid = np.stack(np.meshgrid(grid_w, grid_h), axis=0)  # w goes first, as in MAE
    return np.concatenate([one_d(dim // 2, grid[0]), one_d(dim // 2, grid[1])], axis=1)


def official_sit_shapes(
    *,
    depth: int,
    width: int,
    patch: int,
    in_channels: int,
    num_classes: int,
    grid: tuple[int, int],
    qk_norm: bool = False,
    heads: int | None = None,
    mlp_ratio: int = 4,
    null_row: bool = True,
) -> OrderedDict[str, tuple[int, ...]]:
    """The documented SiT state-dict keys and shapes (prior-implementations §1.1), without projectors / bn."""
    s: OrderedDict[str, tuple[int, ...]] = OrderedDict()
    s["pos_embed"] = (1, grid[0] * grid[1], width)
    s["x_embedder.proj.weight"] = (width, in_channels, patch, patch)
    s["x_embedder.proj.bias"] = (width,)
    s["t_embedder.mlp.0.weight"] = (width, 256)
    s["t_embedder.mlp.0.bias"] = (width,)
    s["t_embedder.mlp.2.weight"] = (width, width)
    s["t_embedder.mlp.2.bias"] = (width,)
    s["y_embedder.embedding_table.weight"] = (num_classes + int(null_row), width)
    head_dim = width // heads if heads else None
    for n in range(depth):
        b = f"blocks.{n}."
        s[b + "attn.qkv.weight"] = (3 * width, width)
        s[b + "attn.qkv.bias"] = (3 * width,)
        if qk_norm:
            for which in ("q_norm", "k_norm"):
                s[b + f"attn.{which}.weight"] = (head_dim,)
                s[b + f"attn.{which}.bias"] = (head_dim,)
        s[b + "attn.proj.weight"] = (width, width)
        s[b + "attn.proj.bias"] = (width,)
        s[b + "mlp.fc1.weight"] = (mlp_ratio * width, width)
        s[b + "mlp.fc1.bias"] = (mlp_ratio * width,)
        s[b + "mlp.fc2.weight"] = (width, mlp_ratio * width)
        s[b + "mlp.fc2.bias"] = (width,)
        s[b + "adaLN_modulation.1.weight"] = (6 * width, width)
        s[b + "adaLN_modulation.1.bias"] = (6 * width,)
    s["final_layer.linear.weight"] = (patch * patch * in_channels, width)
    s["final_layer.linear.bias"] = (patch * patch * in_channels,)
    s["final_layer.adaLN_modulation.1.weight"] = (2 * width, width)
    s["final_layer.adaLN_modulation.1.bias"] = (2 * width,)
    return s


def random_state(shapes: OrderedDict[str, tuple[int, ...]], seed: int = 0, scale: float = 0.05) -> dict:
    """Random values for every key; pos_embed is the true fixed table, norm weights sit near 1."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for key, shape in shapes.items():
        if key == "pos_embed":
            _, tokens, width = shape
            side = math.isqrt(tokens)
            out[key] = torch.from_numpy(mae_pos_embed(width, side, side)).float().unsqueeze(0)
        elif key.endswith("_norm.weight"):
            out[key] = 1 + scale * torch.randn(shape, generator=g)
        else:
            out[key] = scale * torch.randn(shape, generator=g)
    return out


def mlp_projector(index: int, in_dim: int, hidden: int, out_dim: int, *, irepa: bool, seed: int = 1) -> dict:
    """Official MLP projector tensors: REPA ``projectors.K.{0,2,4}`` or iREPA ``projectors.K.projection_layer.*``."""
    g = torch.Generator().manual_seed(seed)
    prefix = f"projectors.{index}." + ("projection_layer." if irepa else "")
    dims = [(hidden, in_dim), (hidden, hidden), (out_dim, hidden)]
    out = {}
    for layer, (o, i) in zip((0, 2, 4), dims):
        out[f"{prefix}{layer}.weight"] = 0.05 * torch.randn(o, i, generator=g)
        out[f"{prefix}{layer}.bias"] = 0.05 * torch.randn(o, generator=g)
    return out


def conv_projector(index: int, in_dim: int, out_dim: int, kernel: int, seed: int = 2) -> dict:
    """iREPA conv projector tensors ``projectors.K.projection_layer.{weight,bias}``."""
    g = torch.Generator().manual_seed(seed)
    prefix = f"projectors.{index}.projection_layer."
    return {
        prefix + "weight": 0.05 * torch.randn(out_dim, in_dim, kernel, kernel, generator=g),
        prefix + "bias": 0.05 * torch.randn(out_dim, generator=g),
    }


def training_dict(model: dict, ema: dict, args: argparse.Namespace, steps: int = 1234) -> dict:
    """The REPA / iREPA training-checkpoint structure: model, ema, opt (AdamW-like), args, steps."""
    first = next(iter(model.values()))
    opt = {
        "state": {0: {"step": torch.tensor(float(steps)), "exp_avg": torch.zeros_like(first)}},
        "param_groups": [
            {"lr": 1e-4, "betas": (0.9, 0.999), "eps": 1e-8, "weight_decay": 0.0, "amsgrad": False, "params": [0]}
        ],
    }
    return {"model": model, "ema": ema, "opt": opt, "args": args, "steps": steps}


# ----------------------------------------------------------------------------------------------------------------------
# Reference SiT: the documented module tree, from timm parts


def _reference_time_embedding(t: torch.Tensor, dim: int = 256) -> torch.Tensor:
    half = dim // 2
    freqs = torch.exp(-math.log(10000) * torch.arange(half, dtype=torch.float32) / half)
    args = t[:, None].float() * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


class _Block(nn.Module):
    def __init__(self, width: int, heads: int, qk_norm: bool):
        super().__init__()
        from timm.layers import Attention, Mlp

        self.norm1 = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        self.attn = Attention(width, num_heads=heads, qkv_bias=True, qk_norm=qk_norm, norm_layer=nn.LayerNorm)
        self.norm2 = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        self.mlp = Mlp(in_features=width, hidden_features=4 * width, act_layer=lambda: nn.GELU(approximate="tanh"))
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(width, 6 * width))

    def forward(self, x, c):
        sm, cm, gm, sf, cf, gf = self.adaLN_modulation(c).chunk(6, dim=1)
        x = x + gm.unsqueeze(1) * self.attn(self.norm1(x) * (1 + cm.unsqueeze(1)) + sm.unsqueeze(1))
        return x + gf.unsqueeze(1) * self.mlp(self.norm2(x) * (1 + cf.unsqueeze(1)) + sf.unsqueeze(1))


class ReferenceSiT(nn.Module):
    """Official-layout SiT (no projectors) for cross-checking outputs; weights come from ``load_state_dict``."""

    def __init__(self, *, size: int, patch: int, in_channels: int, width: int, depth: int, heads: int,
                 num_classes: int, qk_norm: bool = False):  # fmt: skip
        super().__init__()
        from timm.layers import PatchEmbed

        self.patch, self.channels, self.side = patch, in_channels, size // patch
        self.x_embedder = PatchEmbed(size, patch, in_channels, width, bias=True)
        self.t_embedder = nn.Module()
        self.t_embedder.mlp = nn.Sequential(nn.Linear(256, width), nn.SiLU(), nn.Linear(width, width))
        self.y_embedder = nn.Module()
        self.y_embedder.embedding_table = nn.Embedding(num_classes + 1, width)
        self.pos_embed = nn.Parameter(torch.zeros(1, self.side**2, width), requires_grad=False)
        self.blocks = nn.ModuleList(_Block(width, heads, qk_norm) for _ in range(depth))
        self.final_layer = nn.Module()
        self.final_layer.linear = nn.Linear(width, patch * patch * in_channels)
        self.final_layer.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(width, 2 * width))
        self.final_layer.norm_final = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)

    def forward(self, x, t, y, hidden_at: int | None = None):
        x = self.x_embedder(x) + self.pos_embed
        c = self.t_embedder.mlp(_reference_time_embedding(t)) + self.y_embedder.embedding_table(y)
        hidden = None
        for i, block in enumerate(self.blocks):
            x = block(x, c)
            if hidden_at is not None and i + 1 == hidden_at:
                hidden = x
        shift, scale = self.final_layer.adaLN_modulation(c).chunk(2, dim=1)
        x = self.final_layer.linear(self.final_layer.norm_final(x) * (1 + scale.unsqueeze(1)) + shift.unsqueeze(1))
        n, h, p, c_ = x.shape[0], self.side, self.patch, self.channels
        x = x.reshape(n, h, h, p, p, c_)
        x = torch.einsum("nhwpqc->nchpwq", x).reshape(n, c_, h * p, h * p)
        return x, hidden


# ----------------------------------------------------------------------------------------------------------------------
# JiT: the documented key layout (prior-implementations §9) and an independent reference written from the
# description (RMSNorm, RMSNorm QK-norm, 2-D RoPE, SwiGLU, adaLN-Zero, in-context tokens), in JiT time.


def official_jit_shapes(
    *,
    depth: int,
    width: int,
    heads: int,
    patch: int,
    bottleneck: int,
    grid: int,
    num_classes: int,
    in_context_len: int,
    in_channels: int = 3,
) -> OrderedDict[str, tuple[int, ...]]:
    """The JiT ``net.`` state-dict keys (without the ``net.`` prefix) and shapes: docs/models.md lists them."""
    s: OrderedDict[str, tuple[int, ...]] = OrderedDict()
    s["pos_embed"] = (1, grid * grid, width)
    if in_context_len:
        s["in_context_posemb"] = (1, in_context_len, width)
    s["t_embedder.mlp.0.weight"] = (width, 256)
    s["t_embedder.mlp.0.bias"] = (width,)
    s["t_embedder.mlp.2.weight"] = (width, width)
    s["t_embedder.mlp.2.bias"] = (width,)
    s["y_embedder.embedding_table.weight"] = (num_classes + 1, width)
    s["x_embedder.proj1.weight"] = (bottleneck, in_channels, patch, patch)
    s["x_embedder.proj2.weight"] = (width, bottleneck, 1, 1)
    s["x_embedder.proj2.bias"] = (width,)
    hidden = int(4 * width * 2 / 3)
    for n in range(depth):
        b = f"blocks.{n}."
        s[b + "norm1.weight"] = (width,)
        s[b + "attn.q_norm.weight"] = (width // heads,)
        s[b + "attn.k_norm.weight"] = (width // heads,)
        s[b + "attn.qkv.weight"] = (3 * width, width)
        s[b + "attn.qkv.bias"] = (3 * width,)
        s[b + "attn.proj.weight"] = (width, width)
        s[b + "attn.proj.bias"] = (width,)
        s[b + "norm2.weight"] = (width,)
        s[b + "mlp.w12.weight"] = (2 * hidden, width)
        s[b + "mlp.w12.bias"] = (2 * hidden,)
        s[b + "mlp.w3.weight"] = (width, hidden)
        s[b + "mlp.w3.bias"] = (width,)
        s[b + "adaLN_modulation.1.weight"] = (6 * width, width)
        s[b + "adaLN_modulation.1.bias"] = (6 * width,)
    s["final_layer.norm_final.weight"] = (width,)
    s["final_layer.linear.weight"] = (patch * patch * in_channels, width)
    s["final_layer.linear.bias"] = (patch * patch * in_channels,)
    s["final_layer.adaLN_modulation.1.weight"] = (2 * width, width)
    s["final_layer.adaLN_modulation.1.bias"] = (2 * width,)
    return s


def random_jit_state(shapes: OrderedDict[str, tuple[int, ...]], seed: int = 0, scale: float = 0.05) -> dict:
    """Random values for every JiT key; pos_embed is the true fixed table, norm weights sit near 1."""
    out = random_state(shapes, seed=seed, scale=scale)
    g = torch.Generator().manual_seed(seed + 100)
    for key, shape in shapes.items():
        if key.endswith(("norm1.weight", "norm2.weight", "norm_final.weight")):
            out[key] = 1 + scale * torch.randn(shape, generator=g)
    return out


def _rms(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    return weight * (x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6))


def _rope_complex(x: torch.Tensor, grid: int, prefix: int) -> torch.Tensor:
    """2-D RoPE as complex rotation: pair (2i, 2i+1) of the first half turns by row·f_i, of the second by col·f_i."""
    head_dim = x.shape[-1]
    quarter = head_dim // 4
    freqs = 10000.0 ** (-torch.arange(quarter, dtype=torch.float64) * 2 / (head_dim // 2))
    rows = torch.arange(grid, dtype=torch.float64).repeat_interleave(grid)  # token k = r * grid + c
    cols = torch.arange(grid, dtype=torch.float64).repeat(grid)
    angles = torch.cat([rows[:, None] * freqs, cols[:, None] * freqs], dim=1)  # (T, head_dim / 2)
    angles = torch.cat([torch.zeros(prefix, angles.shape[1], dtype=torch.float64), angles])  # prefix: no turn
    z = torch.view_as_complex(x.double().reshape(*x.shape[:-1], -1, 2).contiguous())
    return torch.view_as_real(z * torch.polar(torch.ones_like(angles), angles)).flatten(-2).to(x.dtype)


class ReferenceJiTBlock(nn.Module):
    """One JiT block from its description; keys as the official ``blocks.N.*``."""

    def __init__(self, width: int, heads: int):
        super().__init__()
        hidden = int(4 * width * 2 / 3)
        self.heads = heads
        self.norm1, self.norm2 = nn.Module(), nn.Module()
        self.norm1.weight = nn.Parameter(torch.ones(width))
        self.norm2.weight = nn.Parameter(torch.ones(width))
        self.attn = nn.Module()
        self.attn.qkv = nn.Linear(width, 3 * width)
        self.attn.proj = nn.Linear(width, width)
        self.attn.q_norm, self.attn.k_norm = nn.Module(), nn.Module()
        self.attn.q_norm.weight = nn.Parameter(torch.ones(width // heads))
        self.attn.k_norm.weight = nn.Parameter(torch.ones(width // heads))
        self.mlp = nn.Module()
        self.mlp.w12 = nn.Linear(width, 2 * hidden)
        self.mlp.w3 = nn.Linear(hidden, width)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(width, 6 * width))

    def forward(self, x: torch.Tensor, c: torch.Tensor, grid: int, prefix: int) -> torch.Tensor:
        n, tokens, width = x.shape
        sm, cm, gm, sf, cf, gf = (m.unsqueeze(1) for m in self.adaLN_modulation(c).chunk(6, dim=1))
        h = _rms(x, self.norm1.weight) * (1 + cm) + sm
        q, k, v = self.attn.qkv(h).reshape(n, tokens, 3, self.heads, -1).permute(2, 0, 3, 1, 4)
        q = _rope_complex(_rms(q, self.attn.q_norm.weight), grid, prefix)
        k = _rope_complex(_rms(k, self.attn.k_norm.weight), grid, prefix)
        weights = torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1]), dim=-1)
        x = x + gm * self.attn.proj((weights @ v).transpose(1, 2).reshape(n, tokens, width))
        a, b = self.mlp.w12(_rms(x, self.norm2.weight) * (1 + cf) + sf).chunk(2, dim=-1)
        return x + gf * self.mlp.w3(torch.nn.functional.silu(a) * b)


class ReferenceJiT(nn.Module):
    """Official-layout JiT for cross-checking outputs; takes JiT time (t = 1 clean, t = 0 noise)."""

    def __init__(self, *, size: int, patch: int, width: int, depth: int, heads: int, bottleneck: int,
                 num_classes: int, in_context_len: int, in_context_start: int):  # fmt: skip
        super().__init__()
        self.patch, self.side = patch, size // patch
        self.in_context_len, self.in_context_start = in_context_len, in_context_start
        self.x_embedder = nn.Module()
        self.x_embedder.proj1 = nn.Conv2d(3, bottleneck, patch, stride=patch, bias=False)
        self.x_embedder.proj2 = nn.Conv2d(bottleneck, width, 1)
        self.t_embedder = nn.Module()
        self.t_embedder.mlp = nn.Sequential(nn.Linear(256, width), nn.SiLU(), nn.Linear(width, width))
        self.y_embedder = nn.Module()
        self.y_embedder.embedding_table = nn.Embedding(num_classes + 1, width)
        self.pos_embed = nn.Parameter(torch.zeros(1, self.side**2, width), requires_grad=False)
        if in_context_len:
            self.in_context_posemb = nn.Parameter(torch.zeros(1, in_context_len, width))
        self.blocks = nn.ModuleList(ReferenceJiTBlock(width, heads) for _ in range(depth))
        self.final_layer = nn.Module()
        self.final_layer.norm_final = nn.Module()
        self.final_layer.norm_final.weight = nn.Parameter(torch.ones(width))
        self.final_layer.linear = nn.Linear(width, patch * patch * 3)
        self.final_layer.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(width, 2 * width))

    def forward(self, x, t_jit, y, hidden_at: int | None = None):
        x = self.x_embedder.proj2(self.x_embedder.proj1(x)).flatten(2).transpose(1, 2) + self.pos_embed
        y_emb = self.y_embedder.embedding_table(y)
        c = self.t_embedder.mlp(_reference_time_embedding(t_jit)) + y_emb
        prefix, hidden = 0, None
        for i, block in enumerate(self.blocks):
            if self.in_context_len and i == self.in_context_start:
                x = torch.cat([y_emb[:, None].expand(-1, self.in_context_len, -1) + self.in_context_posemb, x], 1)
                prefix = self.in_context_len
            x = block(x, c, self.side, prefix)
            if hidden_at is not None and i + 1 == hidden_at:
                hidden = x[:, prefix:]
        x = x[:, prefix:]
        shift, scale = self.final_layer.adaLN_modulation(c).chunk(2, dim=1)
        x = _rms(x, self.final_layer.norm_final.weight) * (1 + scale.unsqueeze(1)) + shift.unsqueeze(1)
        x = self.final_layer.linear(x)
        n, h, p = x.shape[0], self.side, self.patch
        x = torch.einsum("nhwpqc->nchpwq", x.reshape(n, h, h, p, p, 3)).reshape(n, 3, h * p, h * p)
        return x, hidden


def jit_training_dict(model: dict, ema1: dict, ema2: dict, args: argparse.Namespace, epoch: int = 599) -> dict:
    """The JiT training-checkpoint structure (``net.``-prefixed Denoiser state dicts, two EMAs)."""
    prefixed = [{f"net.{k}": v for k, v in state.items()} for state in (model, ema1, ema2)]
    opt = {"state": {}, "param_groups": [{"lr": 5e-5, "betas": (0.9, 0.95), "weight_decay": 0.0, "params": []}]}
    return {"model": prefixed[0], "optimizer": opt, "epoch": epoch, "args": args,
            "model_ema1": prefixed[1], "model_ema2": prefixed[2]}  # fmt: skip
