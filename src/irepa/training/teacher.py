"""The frozen teacher: the vision encoders whose patch tokens are the alignment targets.

Encoders come from the zoo (:func:`irepa.encoders.load_encoder`) and are always frozen (eval mode, no gradients:
the zoo asserts it). Their forward runs under ``torch.no_grad()`` and the autocast the caller gives
(:class:`~irepa.training.alignment.AlignmentTerm` gives ``teacher.precision``'s: bf16 on CUDA, fp32 on the CPU by
default); the tokens come back as float32 and the alignment maths stays float32.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from irepa.errors import IrepaError

if TYPE_CHECKING:
    from irepa.encoders import WeightLocations

__all__ = ["Teacher", "teacher_locations"]


def teacher_locations(
    locations: WeightLocations | None, *, cache_dir: str | Path | None = None, offline: bool = False
) -> WeightLocations:
    """Where the teacher's encoder weights are looked for: the CLI's locations with the ``teacher:`` overrides.

    Args:
        locations: As resolved at the CLI boundary (``$IREPA_CACHE``, the hub caches, the offline switch); ``None``
            = no cache locations.
        cache_dir: ``teacher.cache_dir``: replaces ``locations.cache_dir``.
        offline: ``teacher.offline``: never download (also when ``locations.offline``).
    """
    from irepa.encoders import WeightLocations

    locations = locations or WeightLocations()
    if cache_dir is not None:
        locations = dataclasses.replace(locations, cache_dir=Path(cache_dir))
    if offline:
        locations = dataclasses.replace(locations, offline=True)
    return locations


class Teacher(nn.Module):
    """One or more frozen encoders producing target tokens on the diffusion model's token grid.

    Args:
        encoders: Encoder id → loaded ``VisionEncoder`` (in ``align.encoders`` order).
        resolution: Image size the encoders were loaded for; other image sizes are resized to it first (bicubic,
            kept in uint8), e.g. to give 32 px training images an 8×8 target grid at 128 px (encoders produce one
            token per 16 px).
    """

    def __init__(self, encoders: Mapping[str, nn.Module], resolution: int | None = None) -> None:
        super().__init__()
        if not encoders:
            raise IrepaError("the teacher needs at least one encoder (align.encoders)")
        self.resolution = resolution
        self.names: tuple[str, ...] = tuple(encoders)
        self.encoders = nn.ModuleDict({_key(n): e for n, e in encoders.items()})

    @classmethod
    def load(
        cls,
        names: Sequence[str],
        *,
        resolution: int,
        weights: Mapping[str, str] | None = None,
        locations: WeightLocations | None = None,
        cache_dir: str | None = None,
        offline: bool = False,
        pretrained: bool = True,
        arch_overrides: Mapping[str, Mapping[str, object]] | None = None,
        device: torch.device | str = "cpu",
    ) -> Teacher:
        """Load the encoders ``names`` from the zoo, set up for ``resolution`` px images.

        Args:
            names: Encoder ids (``align.encoders``).
            resolution: Image size in px the encoders are set up for.
            weights: Explicit weights file or folder per encoder id.
            locations: Where to look for weights, as resolved at the CLI boundary (``$IREPA_CACHE``, the Hugging
                Face and torch hub caches, the offline switch); ``None`` = no cache locations.
            cache_dir: The irepa cache root, replacing ``locations.cache_dir`` (``teacher.cache_dir``).
            offline: Never download (also when ``locations.offline``).
            pretrained: ``False`` builds random encoders (tests only).
            arch_overrides: Architecture kwargs per encoder id (random encoders only).
            device: Device of the encoders.

        Raises:
            IrepaError: Unknown encoder id, missing weights (naming what was looked for), or a weights entry for an
                encoder that is not in ``names``.
        """
        from irepa.encoders import load_encoder

        locations = teacher_locations(locations, cache_dir=cache_dir, offline=offline)
        weights = dict(weights or {})
        arch_overrides = dict(arch_overrides or {})
        for key, given in (("weights", weights), ("arch_overrides", arch_overrides)):
            unknown = sorted(set(given) - set(names))
            if unknown:
                raise IrepaError(
                    f"teacher.{key} names {', '.join(unknown)}, which is not in align.encoders={list(names)}"
                )
        encoders = {
            name: load_encoder(
                name,
                resolution=resolution,
                weights=weights.get(name),
                cache_dir=locations.cache_dir,
                hf_cache_dir=locations.hf_cache_dir,
                torch_hub_dir=locations.torch_hub_dir,
                offline=locations.offline,
                pretrained=pretrained,
                arch_overrides=arch_overrides.get(name),
                device=device,
            )
            for name in names
        }
        return cls(encoders, resolution=resolution)

    def train(self, mode: bool = True) -> Teacher:
        """Encoders never enter train mode (dropout / stochastic depth would change the targets)."""
        return super().train(False)

    @property
    def embed_dims(self) -> dict[str, int]:
        """Encoder id → token width ``D_k`` (ordered)."""
        return {name: int(self.encoders[_key(name)].embed_dim) for name in self.names}

    @property
    def grids(self) -> dict[str, tuple[int, int]]:
        """Encoder id → token grid ``(h, w)`` at the configured resolution."""
        return {name: tuple(self.encoders[_key(name)].grid) for name in self.names}

    def check_grid(self, grid: Sequence[int], what: str) -> None:
        """Raise a one-line error if any encoder's grid differs from the diffusion model's token grid."""
        bad = {n: g for n, g in self.grids.items() if tuple(g) != tuple(grid)}
        if bad:
            found = ", ".join(f"{n} {g[0]}x{g[1]}" for n, g in bad.items())
            raise IrepaError(
                f"teacher token grid ({found}) differs from {what}'s {grid[0]}x{grid[1]} token grid; "
                "use teacher.resolution (or images) matching the model's input, or another patch size"
            )

    @torch.no_grad()
    def forward(self, images: torch.Tensor, autocast: AbstractContextManager | None = None) -> dict[str, torch.Tensor]:
        """Patch tokens of uint8 images.

        Args:
            images: uint8 (B, 3, H, W) in [0, 255].
            autocast: The training autocast context (default: none).

        Returns:
            Encoder id → float32 patch tokens (B, T, D_k), no CLS/register tokens.
        """
        size = self.resolution
        if size is not None and tuple(images.shape[-2:]) != (size, size):
            resized = F.interpolate(images.float(), size=(size, size), mode="bicubic", align_corners=False)
            images = resized.round().clamp(0, 255).to(torch.uint8)
        out = {}
        with autocast if autocast is not None else nullcontext():
            for name in self.names:
                out[name] = self.encoders[_key(name)].encode(images).patch_tokens.float()
        return out


def _key(name: str) -> str:
    # ModuleDict keys cannot contain "."; encoder ids may (e.g. "webssl-vit-dino1b_full2b_224" does not, but be safe).
    return name.replace(".", "_")
