"""JiT ("Just image Transformer", Li & He 2025): pixel-space x-prediction transformer, in the official key layout.

``JiT(x, t, y)`` predicts the **clean image** ``x̂_0`` (x-prediction) from noisy pixels ``x_t``. Like every irepa
model it takes **SiT time** (``t = 0`` data, ``t = 1`` noise; :mod:`irepa.diffusion.paths`). JiT's own code runs in
the reverse direction (``t_JiT = 1 - t``) and its time embedder was trained on ``t_JiT``; this module is the one
place that conversion happens: :meth:`JiT.embed_condition` embeds ``1 - t``. Official JiT / iREPA-JiT weights
therefore load unchanged, and everything outside this file speaks SiT time.

Architecture (prior-implementations §9; module names and keys as upstream, see docs/models.md): a bottleneck patch
embedding (``x_embedder.proj1/proj2``), the fixed 2-D sin-cos ``pos_embed`` (a buffer, as in SiT) plus 2-D RoPE on
queries and keys in every block (computed on the fly, never stored: it is not in official state dicts either),
adaLN-Zero blocks with RMSNorm, RMSNorm QK-norm and SwiGLU (:class:`irepa.models.layers.AdaLNBlock`), and
``in_context_len`` class tokens (the label embedding plus ``in_context_posemb``) prepended before block
``in_context_start`` (0-based) and removed before the final layer.

Deliberate differences from the official code: attention runs through SDPA on any device (upstream builds a zero
bias with ``.cuda()`` and computes the logits in float32 by hand, so it cannot run on a CPU); no ``torch.compile``
decorators on the blocks; no label dropout (the objective drops labels); no projectors (they live in the aligner).
``return_hidden=N`` returns the grid tokens after block ``N`` (1-based) **without** the in-context tokens, i.e. on the
model's ``grid``, which is what REPA / iREPA align.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from irepa.errors import IrepaError
from irepa.models.base import MODELS, DiffusionTransformer, ModelOutput, as_batch
from irepa.models.layers import (
    AdaLNBlock,
    BottleneckPatchEmbed,
    FinalLayer,
    LabelEmbedder,
    TimestepEmbedder,
    init_adaln_zero,
    rope_2d,
    sincos_pos_embed_2d,
)

__all__ = ["JIT_SIZES", "JiT"]


class JiT(DiffusionTransformer):
    """JiT with adaLN-Zero blocks, RoPE and in-context class tokens, in the JiT module tree.

    Args:
        input_size: Image size ``H`` (square) or ``(H, W)``; each side divisible by ``patch_size``.
        patch_size: Patch side ``p`` (16 at 256 px, 32 at 512 px officially).
        in_channels: Image channels ``C``; the output (the x-prediction) has the same channels.
        hidden_size: Token width ``D``.
        depth: Number of blocks.
        num_heads: Attention heads; ``D / num_heads`` must be divisible by 4 (2-D RoPE).
        mlp_ratio: Nominal MLP width / ``D`` (SwiGLU uses two thirds of it, gated).
        bottleneck_dim: Width of the patch-embedding bottleneck.
        in_context_len: Number of in-context class tokens (0: none).
        in_context_start: 0-based index of the first block that sees the in-context tokens.
        num_classes: Real classes; the label table gets a null row (label ``num_classes``) with ``null_class``.
        null_class: Reserve label ``num_classes`` as the null (unconditional) class for CFG (as upstream).
        qk_norm: RMSNorm on queries and keys (always on upstream).
        attn_drop: Attention-weight dropout in the middle half of the blocks (``depth//4 <= i < 3·depth//4``).
        proj_drop: Projection / SwiGLU dropout in the same blocks (0.2 for JiT-H in the official recipes).
    """

    def __init__(
        self,
        *,
        input_size: int | tuple[int, int] = 256,
        patch_size: int = 16,
        in_channels: int = 3,
        hidden_size: int = 768,
        depth: int = 12,
        num_heads: int = 12,
        mlp_ratio: float = 4.0,
        bottleneck_dim: int = 128,
        in_context_len: int = 32,
        in_context_start: int = 4,
        num_classes: int = 1000,
        null_class: bool = True,
        qk_norm: bool = True,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
    ) -> None:
        super().__init__()
        height, width = check_jit_arguments(
            input_size=input_size,
            patch_size=patch_size,
            hidden_size=hidden_size,
            depth=depth,
            num_heads=num_heads,
            num_classes=num_classes,
            null_class=null_class,
            in_context_len=in_context_len,
            in_context_start=in_context_start,
        )
        self._config: dict[str, Any] = {
            "input_size": height if height == width else [height, width],
            "patch_size": patch_size,
            "in_channels": in_channels,
            "hidden_size": hidden_size,
            "depth": depth,
            "num_heads": num_heads,
            "mlp_ratio": float(mlp_ratio),
            "bottleneck_dim": bottleneck_dim,
            "in_context_len": in_context_len,
            "in_context_start": in_context_start,
            "num_classes": num_classes,
            "null_class": null_class,
            "qk_norm": qk_norm,
            "attn_drop": float(attn_drop),
            "proj_drop": float(proj_drop),
        }
        self.input_size = (height, width)
        self.patch_size = patch_size
        self.in_channels = in_channels
        self.out_channels = in_channels
        self.in_context_len = in_context_len
        self.in_context_start = in_context_start
        self.head_dim = hidden_size // num_heads

        self.t_embedder = TimestepEmbedder(hidden_size)
        self.y_embedder = LabelEmbedder(num_classes, hidden_size, null_class=null_class)
        self.x_embedder = BottleneckPatchEmbed(patch_size, in_channels, bottleneck_dim, hidden_size)
        # Fixed sin-cos table: a buffer (state-dict key "pos_embed" as in official files, never trained or counted).
        self.register_buffer("pos_embed", sincos_pos_embed_2d(hidden_size, self.grid).unsqueeze(0), persistent=True)
        if in_context_len:
            self.in_context_posemb = nn.Parameter(torch.zeros(1, in_context_len, hidden_size))
        middle = range(depth // 4, depth // 4 * 3)  # upstream applies dropout in the middle half of the blocks only
        self.blocks = nn.ModuleList(
            AdaLNBlock(
                hidden_size,
                num_heads,
                mlp_ratio,
                qk_norm=qk_norm,
                norm="rmsnorm",
                mlp="swiglu",
                attn_drop=attn_drop if i in middle else 0.0,
                proj_drop=proj_drop if i in middle else 0.0,
            )
            for i in range(depth)
        )
        self.final_layer = FinalLayer(hidden_size, patch_size, self.out_channels, norm="rmsnorm")
        self.initialize_weights()

    def initialize_weights(self) -> None:
        """Upstream init: the DiT recipe (both patch convs xavier as linears) and N(0, 0.02) in-context embeddings."""
        init_adaln_zero(self, [self.x_embedder.proj1, self.x_embedder.proj2])
        if self.in_context_len:
            nn.init.normal_(self.in_context_posemb, std=0.02)

    # -- forward -------------------------------------------------------------------------------------------------------

    def embed_condition(self, t: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Conditioning ``c = t_emb(1 - t) + y_emb(y)`` (B, D) and the label embedding (B, D).

        ``t`` is SiT time; the embedder sees JiT time ``1 - t`` (the module docstring says why).
        """
        y_emb = self.y_embedder(y)
        return self.t_embedder(1 - t) + y_emb, y_emb

    def forward(
        self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor, *, return_hidden: int | None = None
    ) -> ModelOutput:
        """Predict the clean image from ``x_t`` at SiT time ``t`` for classes ``y``.

        Args:
            x: Noisy images (B, C, H, W) at the size the model was built for.
            t: SiT times (B,) in [0, 1] (``t = 0`` data, ``t = 1`` noise); a scalar is broadcast.
            y: Labels (B,) int64 in ``[0, num_classes]`` (``num_classes`` = null label).
            return_hidden: 1-based block index whose output grid tokens (in-context tokens removed) are returned.

        Returns:
            ``ModelOutput(out (B, C, H, W) = x̂_0, hidden (B, T, D) | None)`` with ``T = H·W / p²``.
        """
        self.check_input(x, return_hidden)
        t = as_batch(t, x.shape[0], "t", x.device)
        c, y_emb = self.embed_condition(t, y)  # (B, D) each
        tokens = self.x_embedder(x) + self.pos_embed.to(x.dtype)  # (B, T, D)
        num_prefix = 0
        cos, sin = rope_2d(self.head_dim, self.grid, num_prefix=self.in_context_len, device=x.device)
        hidden = None
        for index, block in enumerate(self.blocks):
            if self.in_context_len and index == self.in_context_start:
                prefix = y_emb.unsqueeze(1) + self.in_context_posemb.to(y_emb.dtype)  # (B, L, D)
                tokens = torch.cat([prefix.to(tokens.dtype), tokens], dim=1)  # (B, L + T, D)
                num_prefix = self.in_context_len
            # Prefix rows of the tables are the identity rotation; before insertion only the grid rows are used.
            start = self.in_context_len - num_prefix
            tokens = block(tokens, c, (cos[start:], sin[start:]))
            if index + 1 == return_hidden:
                hidden = tokens[:, num_prefix:]
        out = self.unpatchify(self.final_layer(tokens[:, num_prefix:], c))  # (B, C, H, W)
        return ModelOutput(out, hidden)


# ----------------------------------------------------------------------------------------------------------------------
# Registry

#: Architecture of each JiT size (upstream's ``JiT_{B,L,H}_*`` factories; mlp_ratio 4 everywhere).
JIT_SIZES: dict[str, dict[str, int]] = {
    "B": {"depth": 12, "hidden_size": 768, "num_heads": 12, "bottleneck_dim": 128, "in_context_start": 4},
    "L": {"depth": 24, "hidden_size": 1024, "num_heads": 16, "bottleneck_dim": 128, "in_context_start": 8},
    "H": {"depth": 32, "hidden_size": 1280, "num_heads": 16, "bottleneck_dim": 256, "in_context_start": 10},
}
#: Registered patch sizes and the image size each is meant for (the factory default ``input_size``).
JIT_PATCHES = {16: 256, 32: 512}

_JIT_KWARGS = (
    "input_size",
    "patch_size",
    "in_channels",
    "hidden_size",
    "depth",
    "num_heads",
    "mlp_ratio",
    "bottleneck_dim",
    "in_context_len",
    "in_context_start",
    "num_classes",
    "null_class",
    "qk_norm",
    "attn_drop",
    "proj_drop",
)


def check_jit_arguments(
    *,
    input_size: int | tuple[int, int],
    patch_size: int,
    hidden_size: int,
    depth: int,
    num_heads: int,
    num_classes: int,
    null_class: bool,
    in_context_len: int,
    in_context_start: int,
) -> tuple[int, int]:
    """Check :class:`JiT`'s argument rules without building a model (configs validate with it).

    Returns:
        The input size as ``(H, W)``.

    Raises:
        IrepaError: Naming the rule that the arguments break.
    """
    height, width = (input_size, input_size) if isinstance(input_size, int) else tuple(input_size)
    if height % patch_size or width % patch_size:
        raise IrepaError(f"JiT input size {height}x{width} is not divisible by patch size {patch_size}")
    if hidden_size % num_heads or (hidden_size // num_heads) % 4 or hidden_size % 4:
        raise IrepaError(
            f"JiT hidden_size {hidden_size} must be divisible by num_heads={num_heads}, with a head width "
            "divisible by 4 (2-D RoPE) and a width divisible by 4 (pos-embed)"
        )
    if depth < 1 or num_classes < 0 or (num_classes == 0 and not null_class):
        raise IrepaError(
            f"invalid JiT config depth={depth}, num_classes={num_classes}, null_class={null_class}: depth must be"
            " >= 1 and an unconditional model (num_classes=0) needs null_class=True"
        )
    if in_context_len < 0 or (in_context_len and not 0 <= in_context_start < depth):
        raise IrepaError(
            f"JiT in_context_start={in_context_start} must name one of the blocks 0..{depth - 1} "
            f"(in_context_len={in_context_len}); lower it together with depth"
        )
    return height, width


#: JiT's constructor defaults (each registry entry's size, patch and resolution override them).
_JIT_DEFAULTS: dict[str, Any] = {
    k: p.default for k, p in inspect.signature(JiT.__init__).parameters.items() if p.default is not p.empty
}


def _jit_factory(name: str, size: dict[str, int], patch_size: int, resolution: int) -> Callable[..., JiT]:
    def arguments(**overrides: Any) -> dict[str, Any]:
        """Every constructor argument of this entry with ``overrides``, checked without building the model."""
        unknown = sorted(set(overrides) - set(_JIT_KWARGS))
        if unknown:
            raise IrepaError(f"unknown {name} argument(s) {', '.join(unknown)}; valid: {', '.join(_JIT_KWARGS)}")
        kwargs: dict[str, Any] = {
            **_JIT_DEFAULTS,
            "input_size": resolution,
            "in_context_len": 32,
            **factory.defaults,
            **overrides,
        }
        if isinstance(kwargs.get("input_size"), list):  # JSON round trip of a rectangular size
            kwargs["input_size"] = tuple(kwargs["input_size"])
        check_jit_arguments(**{k: kwargs[k] for k in inspect.signature(check_jit_arguments).parameters})
        return kwargs

    def factory(**overrides: Any) -> JiT:
        return JiT(**arguments(**overrides))

    factory.arguments = arguments  # type: ignore[attr-defined]

    factory.defaults = {**size, "patch_size": patch_size}  # type: ignore[attr-defined]
    factory.__name__ = factory.__qualname__ = f"jit_{name.split('-')[1].replace('/', '_').lower()}"
    factory.__doc__ = (
        f"{name}: depth {size['depth']}, width {size['hidden_size']}, {size['num_heads']} heads, patch {patch_size} "
        f"({resolution} px), bottleneck {size['bottleneck_dim']}, 32 in-context tokens from block "
        f"{size['in_context_start']}."
    )
    return factory


for _size_name, _size in JIT_SIZES.items():
    for _patch, _resolution in JIT_PATCHES.items():
        _name = f"JiT-{_size_name}/{_patch}"
        MODELS.register(_name, _jit_factory(_name, _size, _patch, _resolution))
