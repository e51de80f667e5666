"""What every irepa diffusion transformer shares: the output type, the model registry and ``build_model``.

A registered model (SiT, JiT) is called as ``model(x, t, y, *, return_hidden=N)`` with SiT times ``t`` (``t = 0``
data, ``t = 1`` noise; see :mod:`irepa.diffusion.paths`) and returns :class:`ModelOutput`; it exposes ``config``,
``hidden_size``, ``depth``, ``grid``, ``num_classes``, ``null_label`` and ``has_null_class``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import torch
from torch import nn

from irepa.errors import IrepaError
from irepa.registry import Registry

__all__ = ["MODELS", "DiffusionTransformer", "ModelOutput", "as_batch", "build_model", "count_parameters"]


class ModelOutput(NamedTuple):
    """What a diffusion transformer returns (a NamedTuple, so ``torch.func`` and ``torch.compile`` handle it).

    Attributes:
        out: The prediction (B, C, H, W), same shape as the input: the velocity for SiT, the clean image
            (x-prediction) for JiT.
        hidden: Tokens (B, T, D) on the model's token grid after block ``return_hidden``, or None when not requested.
    """

    out: torch.Tensor
    hidden: torch.Tensor | None = None


class DiffusionTransformer(nn.Module):
    """Properties and helpers common to patch-token diffusion transformers (SiT, JiT).

    Subclasses set ``self._config`` (their JSON-safe constructor kwargs, with ``hidden_size``, ``depth``,
    ``num_classes``, ``null_class``), ``self.input_size`` ``(H, W)``, ``self.patch_size``, ``self.in_channels`` and
    ``self.out_channels``.
    """

    _config: dict[str, Any]
    input_size: tuple[int, int]
    patch_size: int
    in_channels: int
    out_channels: int

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

    def check_input(self, x: torch.Tensor, return_hidden: int | None) -> None:
        """Raise an :class:`IrepaError` for an input of the wrong shape or a block index outside ``1..depth``."""
        if x.ndim != 4 or x.shape[1] != self.in_channels or tuple(x.shape[2:]) != self.input_size:
            raise IrepaError(
                f"{type(self).__name__} input has shape {tuple(x.shape)}; this model takes (B, {self.in_channels}, "
                f"{self.input_size[0]}, {self.input_size[1]})"
            )
        if return_hidden is not None and not 1 <= return_hidden <= self.depth:
            raise IrepaError(f"return_hidden={return_hidden} is outside the model's blocks 1..{self.depth}")

    def unpatchify(self, x: torch.Tensor) -> torch.Tensor:
        """Tokens (B, T, p·p·C) → images (B, C, H, W); per-token channels are ordered (p_row, p_col, C) as upstream."""
        (gh, gw), p, c = self.grid, self.patch_size, self.out_channels
        x = x.reshape(x.shape[0], gh, gw, p, p, c)
        return torch.einsum("nhwpqc->nchpwq", x).reshape(x.shape[0], c, gh * p, gw * p)


#: Model factories by name ("SiT-XL/2", "JiT-B/16", ...); each accepts its model's keyword overrides and exposes its
#: architecture defaults as ``factory.defaults``.
MODELS: Registry[Callable[..., nn.Module]] = Registry("model")


def build_model(name: str, **overrides: Any) -> nn.Module:
    """Build the registered model ``name`` (e.g. ``"SiT-XL/2"``, ``"JiT-B/16"``) with keyword ``overrides``.

    SiT defaults are ImageNet 256 px with SD-VAE latents (``input_size=32``, ``in_channels=4``); JiT defaults are
    256 px RGB pixels. Both default to ``num_classes=1000`` with a null class. Build on the ``meta`` device
    (``with torch.device("meta"):``) to inspect shapes for free.

    Raises:
        UnknownNameError: For an unregistered name (with close matches).
        IrepaError: For an unknown or invalid override.
    """
    return MODELS.get(name)(**overrides)


def count_parameters(model: nn.Module, *, trainable_only: bool = False) -> int:
    """Number of parameters of ``model`` (fixed tables such as ``pos_embed`` are buffers and never counted)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def as_batch(t: torch.Tensor | float, batch: int, name: str, device: torch.device) -> torch.Tensor:
    """Broadcast a scalar time to (B,), or check a (B,) time tensor."""
    t = torch.as_tensor(t, device=device)
    if t.ndim == 0:
        return t.expand(batch)
    if t.shape != (batch,):
        raise IrepaError(f"{name} has shape {tuple(t.shape)}; expected ({batch},) or a scalar")
    return t
