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
