"""SiT: the scalable interpolant transformer used by REPA, iREPA and REPA-E, in the official key layout.

``SiT(x, t, y)`` predicts the velocity ``v(x_t, t)`` of an interpolation path in SiT time (``t = 0`` data, ``t = 1``
noise; see :mod:`irepa.diffusion.paths`). ``return_hidden=N`` also returns the token sequence after block ``N``
(1-based: REPA's "encoder depth"), which :class:`irepa.align.RepresentationAligner` projects and aligns; the forward
always runs to the end.

Differences from the official code, all deliberate:

- SiT-S works (the official S configs build the final layer with width 768 and crash at the first forward).
- No label dropout inside the model: the training objective drops labels explicitly at the configured rate
  (:func:`irepa.diffusion.losses.label_drop_mask`, :func:`~irepa.diffusion.losses.drop_labels`); the official SiT
  always drops 10 % and ignores ``--cfg-prob``.
- ``pos_embed`` is a persistent buffer, not a frozen parameter: it has the same state-dict key and values as the
  official checkpoints, but ``model.parameters()`` (and hence optimizers, EMA and the parameter counts) exclude it.
- No projectors: they live in the aligner (``irepa.models.official`` maps official projector keys onto it).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from irepa.errors import IrepaError
from irepa.models.base import MODELS, DiffusionTransformer, ModelOutput, as_batch, build_model, count_parameters
from irepa.models.layers import (
    AdaLNBlock,
    FinalLayer,
    LabelEmbedder,
    PatchEmbed,
    TimestepEmbedder,
    init_adaln_zero,
    sincos_pos_embed_2d,
)

__all__ = ["MODELS", "SIT_SIZES", "ModelOutput", "SiT", "build_model", "count_parameters"]

# ----------------------------------------------------------------------------------------------------------------------
# Model


class SiT(DiffusionTransformer):
    """SiT with adaLN-Zero blocks, in the DiT/SiT module tree (official checkpoints load without renaming).

    Args:
        input_size: Latent/pixel size ``H`` (square) or ``(H, W)``; each side divisible by ``patch_size``.
        patch_size: Patch side ``p``.
        in_channels: Channels ``C`` of the input (4 for SD-VAE latents, 32 for f16d32 VAEs, 3 for pixels); the
            output has the same channels (velocity, no learned variance).
        hidden_size: Token width ``D``.
        depth: Number of blocks.
        num_heads: Attention heads.
        mlp_ratio: MLP hidden width / ``D``.
        num_classes: Real classes; 0 gives an unconditional model (every label is the null label 0).
        null_class: Reserve label ``num_classes`` as the null (unconditional) class for CFG: the label table gets
            ``num_classes + 1`` rows, as in official checkpoints trained with label dropout.
        qk_norm: LayerNorm over ``head_dim`` on queries and keys.
        time_interval: Add ``h_embedder``, a second time embedder for the interval ``h = t - r`` (MeanFlow); its
            embedding is added to the conditioning. Off by default, leaving the SiT key layout unchanged.
    """

    def __init__(
        self,
        *,
        input_size: int | tuple[int, int] = 32,
        patch_size: int = 2,
        in_channels: int = 4,
        hidden_size: int = 1152,
        depth: int = 28,
        num_heads: int = 16,
        mlp_ratio: float = 4.0,
        num_classes: int = 1000,
        null_class: bool = True,
        qk_norm: bool = False,
        time_interval: bool = False,
    ) -> None:
        super().__init__()
        height, width = check_sit_arguments(
            input_size=input_size,
            patch_size=patch_size,
            hidden_size=hidden_size,
            depth=depth,
            num_heads=num_heads,
            num_classes=num_classes,
            null_class=null_class,
        )
        self._config: dict[str, Any] = {
            "input_size": height if height == width else [height, width],
            "patch_size": patch_size,
            "in_channels": in_channels,
            "hidden_size": hidden_size,
            "depth": depth,
            "num_heads": num_heads,
            "mlp_ratio": float(mlp_ratio),
            "num_classes": num_classes,
            "null_class": null_class,
            "qk_norm": qk_norm,
            "time_interval": time_interval,
        }
        self.input_size = (height, width)
        self.patch_size = patch_size
        self.in_channels = in_channels
        self.out_channels = in_channels

        self.x_embedder = PatchEmbed(patch_size, in_channels, hidden_size)
        self.t_embedder = TimestepEmbedder(hidden_size)
        self.h_embedder = TimestepEmbedder(hidden_size) if time_interval else None
        self.y_embedder = LabelEmbedder(num_classes, hidden_size, null_class=null_class)
        grid = (height // patch_size, width // patch_size)
        # Fixed sin-cos table: a buffer (state-dict key "pos_embed" as in official files, never trained or counted).
        self.register_buffer("pos_embed", sincos_pos_embed_2d(hidden_size, grid).unsqueeze(0), persistent=True)
        self.blocks = nn.ModuleList(
            AdaLNBlock(hidden_size, num_heads, mlp_ratio, qk_norm=qk_norm) for _ in range(depth)
        )
        self.final_layer = FinalLayer(hidden_size, patch_size, self.out_channels)
        self.initialize_weights()

    # -- init ----------------------------------------------------------------------------------------------------------

    def initialize_weights(self) -> None:
        """Official DiT/SiT init: xavier linears, zeroed adaLN and output layers, N(0, 0.02) embedders."""
        init_adaln_zero(self, [self.x_embedder.proj])

    # -- forward -------------------------------------------------------------------------------------------------------

    def embed_condition(self, t: torch.Tensor, y: torch.Tensor, h: torch.Tensor | None = None) -> torch.Tensor:
        """Conditioning vector ``c = t_emb(t) + y_emb(y) [+ h_emb(h)]`` (B, D)."""
        c = self.t_embedder(t) + self.y_embedder(y)
        if self.h_embedder is not None:
            if h is None:
                raise IrepaError("this SiT was built with time_interval=True: pass the interval h = t - r as h=")
            c = c + self.h_embedder(as_batch(h, c.shape[0], "h", c.device))
        elif h is not None:
            raise IrepaError("h= was passed but this SiT has no interval embedder; build it with time_interval=True")
        return c

    def forward(
        self,
        x: torch.Tensor,
        t: torch.Tensor,
        y: torch.Tensor,
        *,
        h: torch.Tensor | None = None,
        return_hidden: int | None = None,
    ) -> ModelOutput:
        """Predict the velocity at ``(x, t)`` for classes ``y``.

        Args:
            x: Noisy input (B, C, H, W) at the size the model was built for.
            t: SiT times (B,) in [0, 1] (``t = 0`` data, ``t = 1`` noise); a scalar is broadcast.
            y: Labels (B,) int64 in ``[0, num_classes]`` (``num_classes`` = null label).
            h: Interval ``t - r`` (B,), only for models built with ``time_interval=True`` (MeanFlow).
            return_hidden: 1-based block index whose output tokens are returned as ``hidden``.

        Returns:
            ``ModelOutput(out (B, C, H, W), hidden (B, T, D) | None)``.
        """
        self.check_input(x, return_hidden)
        t = as_batch(t, x.shape[0], "t", x.device)
        tokens = self.x_embedder(x) + self.pos_embed.to(x.dtype)  # (B, T, D)
        c = self.embed_condition(t, y, h)  # (B, D)
        hidden = None
        for index, block in enumerate(self.blocks, start=1):
            tokens = block(tokens, c)
            if index == return_hidden:
                hidden = tokens
        out = self.unpatchify(self.final_layer(tokens, c))  # (B, C, H, W)
        return ModelOutput(out, hidden)


def check_sit_arguments(
    *,
    input_size: int | tuple[int, int],
    patch_size: int,
    hidden_size: int,
    depth: int,
    num_heads: int,
    num_classes: int,
    null_class: bool,
) -> tuple[int, int]:
    """Check :class:`SiT`'s argument rules without building a model (configs validate with it).

    Returns:
        The input size as ``(H, W)``.

    Raises:
        IrepaError: Naming the rule that the arguments break.
    """
    height, width = (input_size, input_size) if isinstance(input_size, int) else tuple(input_size)
    if height % patch_size or width % patch_size:
        raise IrepaError(f"SiT input size {height}x{width} is not divisible by patch size {patch_size}")
    if hidden_size % num_heads or hidden_size % 4:
        raise IrepaError(
            f"SiT hidden_size {hidden_size} must be divisible by num_heads={num_heads} and by 4 (pos-embed)"
        )
    if depth < 1 or num_classes < 0 or (num_classes == 0 and not null_class):
        raise IrepaError(
            f"invalid SiT config depth={depth}, num_classes={num_classes}, null_class={null_class}: depth must be"
            " >= 1 and an unconditional model (num_classes=0) needs null_class=True"
        )
    return height, width


# ----------------------------------------------------------------------------------------------------------------------
# Registry

#: Architecture of each SiT size (mlp_ratio 4 everywhere).
SIT_SIZES: dict[str, dict[str, int]] = {
    "S": {"depth": 12, "hidden_size": 384, "num_heads": 6},
    "B": {"depth": 12, "hidden_size": 768, "num_heads": 12},
    "L": {"depth": 24, "hidden_size": 1024, "num_heads": 16},
    "XL": {"depth": 28, "hidden_size": 1152, "num_heads": 16},
}
PATCH_SIZES = (1, 2, 4, 8)

_SIT_KWARGS = (
    "input_size",
    "patch_size",
    "in_channels",
    "hidden_size",
    "depth",
    "num_heads",
    "mlp_ratio",
    "num_classes",
    "null_class",
    "qk_norm",
    "time_interval",
)


#: SiT's constructor defaults (each registry entry's size and patch override depth, width, heads and patch).
_SIT_DEFAULTS: dict[str, Any] = {
    k: p.default for k, p in inspect.signature(SiT.__init__).parameters.items() if p.default is not p.empty
}


def _sit_factory(name: str, size: dict[str, int], patch_size: int) -> Callable[..., SiT]:
    def arguments(**overrides: Any) -> dict[str, Any]:
        """Every constructor argument of this entry with ``overrides``, checked without building the model."""
        unknown = sorted(set(overrides) - set(_SIT_KWARGS))
        if unknown:
            raise IrepaError(f"unknown {name} argument(s) {', '.join(unknown)}; valid: {', '.join(_SIT_KWARGS)}")
        kwargs: dict[str, Any] = {**_SIT_DEFAULTS, **size, "patch_size": patch_size, **overrides}
        if isinstance(kwargs.get("input_size"), list):  # JSON round trip of a rectangular size
            kwargs["input_size"] = tuple(kwargs["input_size"])
        check_sit_arguments(**{k: kwargs[k] for k in inspect.signature(check_sit_arguments).parameters})
        return kwargs

    def factory(**overrides: Any) -> SiT:
        return SiT(**arguments(**overrides))

    factory.arguments = arguments  # type: ignore[attr-defined]
    factory.defaults = {**size, "patch_size": patch_size}  # type: ignore[attr-defined]
    factory.__name__ = factory.__qualname__ = f"sit_{name.split('-')[1].replace('/', '_').lower()}"
    factory.__doc__ = (
        f"{name}: depth {size['depth']}, width {size['hidden_size']}, {size['num_heads']} heads, patch {patch_size}."
    )
    return factory


for _size_name, _size in SIT_SIZES.items():
    for _patch in PATCH_SIZES:
        _name = f"SiT-{_size_name}/{_patch}"
        MODELS.register(_name, _sit_factory(_name, _size, _patch))
