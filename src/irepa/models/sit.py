"""SiT: the scalable interpolant transformer used by REPA, iREPA and REPA-E, in the official key layout.

``SiT(x, t, y)`` predicts the velocity ``v(x_t, t)`` of an interpolation path in SiT time (``t = 0`` data, ``t = 1``
noise; see :mod:`irepa.diffusion.paths`). ``return_hidden=N`` also returns the token sequence after block ``N``
(1-based: REPA's "encoder depth"), which :class:`irepa.align.RepresentationAligner` projects and aligns; the forward
always runs to the end.

Differences from the official code, all deliberate:

- SiT-S works (the official S configs build the final layer with width 768 and crash at the first forward).
- No label dropout inside the model: the training step drops labels explicitly at the configured rate
  (:func:`irepa.diffusion.losses.drop_labels`); the official SiT always drops 10 % and ignores ``--cfg-prob``.
- ``pos_embed`` is a persistent buffer, not a frozen parameter: it has the same state-dict key and values as the
  official checkpoints, but ``model.parameters()`` (and hence optimizers, EMA and the parameter counts) exclude it.
- No projectors: they live in the aligner (``irepa.models.official`` maps official projector keys onto it).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any, NamedTuple

import torch
from torch import nn

from irepa.errors import IrepaError
from irepa.models.layers import FinalLayer, LabelEmbedder, PatchEmbed, SiTBlock, TimestepEmbedder, sincos_pos_embed_2d
from irepa.registry import Registry

__all__ = ["MODELS", "SIT_SIZES", "ModelOutput", "SiT", "build_model", "count_parameters"]


class ModelOutput(NamedTuple):
    """What a diffusion transformer returns (a NamedTuple, so ``torch.func`` and ``torch.compile`` handle it).

    Attributes:
        out: Predicted velocity (B, C, H, W), same shape as the input.
        hidden: Tokens (B, T, D) after block ``return_hidden``, or None when not requested.
    """

    out: torch.Tensor
    hidden: torch.Tensor | None = None


# ----------------------------------------------------------------------------------------------------------------------
# Model


class SiT(nn.Module):
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
        self.blocks = nn.ModuleList(SiTBlock(hidden_size, num_heads, mlp_ratio, qk_norm=qk_norm) for _ in range(depth))
        self.final_layer = FinalLayer(hidden_size, patch_size, self.out_channels)
        self.initialize_weights()

    # -- properties ----------------------------------------------------------------------------------------------------

    @property
    def config(self) -> dict[str, Any]:
        """Constructor keyword arguments that rebuild this architecture (JSON-safe; what snapshots store)."""
        return dict(self._config)

    @property
    def hidden_size(self) -> int:
        """Token width ``D``."""
        return self._config["hidden_size"]

    @property
    def depth(self) -> int:
        """Number of transformer blocks."""
        return self._config["depth"]

    @property
    def grid(self) -> tuple[int, int]:
        """Token grid ``(H / p, W / p)``."""
        return (self.input_size[0] // self.patch_size, self.input_size[1] // self.patch_size)

    @property
    def num_classes(self) -> int:
        """Number of real classes."""
        return self._config["num_classes"]

    @property
    def null_label(self) -> int:
        """The null (unconditional) label, ``num_classes``; only embeddable when ``null_class`` is set."""
        return self._config["num_classes"]

    @property
    def has_null_class(self) -> bool:
        """Whether the label table has a row for :attr:`null_label`."""
        return self._config["null_class"]

    # -- init ----------------------------------------------------------------------------------------------------------

    def initialize_weights(self) -> None:
        """Official DiT/SiT init: xavier linears, zeroed adaLN and output layers, N(0, 0.02) embedders."""

        def basic_init(module: nn.Module) -> None:
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)

        self.apply(basic_init)
        # Patch embedding initialised like a linear layer over the flattened (C, p, p) patch.
        weight = self.x_embedder.proj.weight
        nn.init.xavier_uniform_(weight.view(weight.shape[0], -1))
        nn.init.zeros_(self.x_embedder.proj.bias)
        nn.init.normal_(self.y_embedder.embedding_table.weight, std=0.02)
        for embedder in (self.t_embedder, self.h_embedder):
            if embedder is not None:
                nn.init.normal_(embedder.mlp[0].weight, std=0.02)
                nn.init.normal_(embedder.mlp[2].weight, std=0.02)
        for block in self.blocks:
            nn.init.zeros_(block.adaLN_modulation[-1].weight)
            nn.init.zeros_(block.adaLN_modulation[-1].bias)
        nn.init.zeros_(self.final_layer.adaLN_modulation[-1].weight)
        nn.init.zeros_(self.final_layer.adaLN_modulation[-1].bias)
        nn.init.zeros_(self.final_layer.linear.weight)
        nn.init.zeros_(self.final_layer.linear.bias)

    # -- forward -------------------------------------------------------------------------------------------------------

    def unpatchify(self, x: torch.Tensor) -> torch.Tensor:
        """Tokens (B, T, p·p·C) → images (B, C, H, W); per-token channels are ordered (p_row, p_col, C) as upstream."""
        (gh, gw), p, c = self.grid, self.patch_size, self.out_channels
        x = x.reshape(x.shape[0], gh, gw, p, p, c)
        return torch.einsum("nhwpqc->nchpwq", x).reshape(x.shape[0], c, gh * p, gw * p)

    def embed_condition(self, t: torch.Tensor, y: torch.Tensor, h: torch.Tensor | None = None) -> torch.Tensor:
        """Conditioning vector ``c = t_emb(t) + y_emb(y) [+ h_emb(h)]`` (B, D)."""
        c = self.t_embedder(t) + self.y_embedder(y)
        if self.h_embedder is not None:
            if h is None:
                raise IrepaError("this SiT was built with time_interval=True: pass the interval h = t - r as h=")
            c = c + self.h_embedder(_as_batch(h, c.shape[0], "h", c.device))
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
        if x.ndim != 4 or x.shape[1] != self.in_channels or tuple(x.shape[2:]) != self.input_size:
            raise IrepaError(
                f"SiT input has shape {tuple(x.shape)}; this model takes (B, {self.in_channels}, "
                f"{self.input_size[0]}, {self.input_size[1]})"
            )
        if return_hidden is not None and not 1 <= return_hidden <= self.depth:
            raise IrepaError(f"return_hidden={return_hidden} is outside the model's blocks 1..{self.depth}")
        t = _as_batch(t, x.shape[0], "t", x.device)
        tokens = self.x_embedder(x) + self.pos_embed.to(x.dtype)  # (B, T, D)
        c = self.embed_condition(t, y, h)  # (B, D)
        hidden = None
        for index, block in enumerate(self.blocks, start=1):
            tokens = block(tokens, c)
            if index == return_hidden:
                hidden = tokens
        out = self.unpatchify(self.final_layer(tokens, c))  # (B, C, H, W)
        return ModelOutput(out, hidden)


def _as_batch(t: torch.Tensor | float, batch: int, name: str, device: torch.device) -> torch.Tensor:
    """Broadcast a scalar time to (B,), or check a (B,) time tensor."""
    t = torch.as_tensor(t, device=device)
    if t.ndim == 0:
        return t.expand(batch)
    if t.shape != (batch,):
        raise IrepaError(f"{name} has shape {tuple(t.shape)}; expected ({batch},) or a scalar")
    return t


def count_parameters(model: nn.Module, *, trainable_only: bool = False) -> int:
    """Number of parameters of ``model`` (the fixed ``pos_embed`` buffer is never counted)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


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

#: Model factories by name ("SiT-XL/2", ...); each accepts :class:`SiT` keyword overrides and exposes its
#: architecture defaults as ``factory.defaults`` (depth, hidden_size, num_heads, patch_size) and
#: ``factory.arguments(**overrides)``: every constructor argument, checked, without building the model.
MODELS: Registry[Callable[..., nn.Module]] = Registry("model")

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


#: SiT's constructor defaults (the registry's sizes and patch override depth, width, heads and patch).
_SIT_DEFAULTS: dict[str, Any] = {
    k: p.default for k, p in inspect.signature(SiT.__init__).parameters.items() if p.default is not p.empty
}


def _sit_factory(name: str, size: dict[str, int], patch_size: int) -> Callable[..., SiT]:
    def arguments(**overrides: Any) -> dict[str, Any]:
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


def build_model(name: str, **overrides: Any) -> nn.Module:
    """Build the registered model ``name`` (e.g. ``"SiT-XL/2"``) with keyword ``overrides`` of its defaults.

    Defaults are ImageNet 256 px with SD-VAE latents: ``input_size=32``, ``in_channels=4``, ``num_classes=1000``
    with a null class. Build on the ``meta`` device (``with torch.device("meta"):``) to inspect shapes for free.

    Raises:
        UnknownNameError: For an unregistered name (with close matches).
        IrepaError: For an unknown or invalid override.
    """
    return MODELS.get(name)(**overrides)
