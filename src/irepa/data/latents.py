"""Latent normalizations (``sd-scalar``, ``per-channel``) and sampling latents from stored posterior moments.

Both normalizations are written in one convention, ``x = (z − bias) · scale`` and ``z = x / scale + bias``:

- ``sd-scalar`` (REPA, SiT, DiT): ``scale = 0.18215``, ``bias = 0``; REPA writes it ``z · s + b`` with ``b = 0``,
  which is the same map.
- ``per-channel`` (REPA-E, iREPA-ldm): ``bias = mean_c``, ``scale = 1 / std_c`` per latent channel, from a latent
  store's statistics (``manifest["latent_stats"]``) or from REPA-E's ``latents_stats`` file (``latents_bias``,
  ``latents_scale``). Note REPA-E's convention ``(z − b) · s`` differs from REPA's ``z · s + b`` whenever b ≠ 0.

Latent stores keep the posterior moments ``mean ‖ std`` (2C channels); each training step draws
``z = mean + std · ε`` (:func:`sample_latents`), as REPA does, then normalizes. All maths in float32.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from irepa.errors import IrepaError
from irepa.registry import Registry

__all__ = [
    "LATENT_NORMALIZATIONS",
    "SD_SCALE",
    "LatentNormalization",
    "latent_normalization",
    "sample_latents",
    "split_moments",
]

#: SD-VAE's scalar latent scale (Rombach et al.; REPA's ``latents_scale``).
SD_SCALE = 0.18215


@dataclasses.dataclass(frozen=True)
class LatentNormalization:
    """``x = (z − bias) · scale`` with a scalar or per-channel ``scale`` and ``bias``.

    Attributes:
        kind: ``"sd-scalar"`` or ``"per-channel"``.
        scale: One value, or one per channel.
        bias: One value, or one per channel.
    """

    kind: str
    scale: tuple[float, ...]
    bias: tuple[float, ...]

    def __post_init__(self) -> None:
        if len(self.scale) != len(self.bias) or not self.scale:
            raise IrepaError(
                f"latent normalization {self.kind!r}: scale has {len(self.scale)} values, bias {len(self.bias)}"
            )
        if not all(math.isfinite(s) and s > 0 for s in self.scale) or not all(math.isfinite(b) for b in self.bias):
            raise IrepaError(f"latent normalization {self.kind!r} needs finite positive scales and finite biases")

    @property
    def num_channels(self) -> int | None:
        """Channels it applies to (None for a scalar normalization)."""
        return len(self.scale) if len(self.scale) > 1 else None

    def _params(self, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if like.ndim < 3:
            raise IrepaError(f"latents must be (B, C, h, w) or (C, h, w), got shape {tuple(like.shape)}")
        channels = like.shape[-3]
        if self.num_channels is not None and self.num_channels != channels:
            raise IrepaError(
                f"per-channel latent normalization has {self.num_channels} channels, the latents have {channels}"
            )
        shape = (-1, 1, 1) if self.num_channels is not None else (1, 1, 1)
        scale = torch.tensor(self.scale, dtype=torch.float32, device=like.device).view(shape)
        bias = torch.tensor(self.bias, dtype=torch.float32, device=like.device).view(shape)
        return scale, bias

    def normalize(self, latents: torch.Tensor) -> torch.Tensor:
        """Raw VAE latents ``(..., C, h, w)`` → training-space latents, float32."""
        scale, bias = self._params(latents)
        with torch.autocast(device_type=latents.device.type, enabled=False):
            return (latents.float() - bias) * scale

    def denormalize(self, latents: torch.Tensor) -> torch.Tensor:
        """Training-space latents ``(..., C, h, w)`` → raw VAE latents (for decoding), float32."""
        scale, bias = self._params(latents)
        with torch.autocast(device_type=latents.device.type, enabled=False):
            return latents.float() / scale + bias

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe form, as stored in inference snapshots (:mod:`irepa.models.io`).

        ``{"kind": "sd-scalar", "scale": s, "bias": 0.0}`` or ``{"kind": "per-channel", "mean": [...],
        "std": [...], "scale": [...]}`` (``scale`` = 1/std as used, kept so a round trip is bit-exact).
        """
        if self.kind == "sd-scalar":
            return {"kind": self.kind, "scale": self.scale[0], "bias": self.bias[0]}
        return {
            "kind": self.kind,
            "mean": list(self.bias),
            "std": [1.0 / s for s in self.scale],
            "scale": list(self.scale),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> LatentNormalization:
        """Inverse of :meth:`to_dict`; also accepts ``per-channel`` given by ``mean`` and ``std`` only."""
        kind = data.get("kind")
        try:
            if kind == "sd-scalar":
                scale, bias = data.get("scale", SD_SCALE), data.get("bias", 0.0)
                scale = scale[0] if isinstance(scale, Sequence) else scale
                bias = bias[0] if isinstance(bias, Sequence) else bias
                if float(bias) != 0.0:
                    raise IrepaError(
                        f"an sd-scalar latent normalization has bias 0 (z * scale), got bias {bias}; use per-channel"
                    )
                return cls("sd-scalar", (float(scale),), (0.0,))
            if kind == "per-channel":
                mean = [float(m) for m in data["mean"]]
                if "scale" in data:
                    scale = [float(s) for s in data["scale"]]
                else:
                    scale = [1.0 / float(s) for s in data["std"]]
                return cls("per-channel", tuple(scale), tuple(mean))
        except (KeyError, TypeError, ValueError, ZeroDivisionError) as exc:
            raise IrepaError(f"latent normalization {dict(data)!r} is malformed: {exc}") from exc
        raise IrepaError(f"latent normalization kind {kind!r} is not one of 'sd-scalar', 'per-channel'")

    @classmethod
    def from_stats_file(cls, path: str | Path) -> LatentNormalization:
        """Per-channel normalization from a REPA-E/iREPA ``*-latents-stats.pt`` (``latents_scale``, ``latents_bias``).

        Loaded with ``torch.load(weights_only=True)`` (tensors only, nothing unpickled beyond them).
        """
        from irepa.utils.io import load_tensor_file

        data = load_tensor_file(path)
        if not isinstance(data, dict) or not {"latents_scale", "latents_bias"} <= set(data):
            raise IrepaError(f"latent statistics file {str(path)!r} needs tensors 'latents_scale' and 'latents_bias'")
        scale = data["latents_scale"].double().flatten().tolist()
        bias = data["latents_bias"].double().flatten().tolist()
        return cls("per-channel", tuple(scale), tuple(bias))


LATENT_NORMALIZATIONS: Registry[Any] = Registry("latent normalization")


@LATENT_NORMALIZATIONS.register("sd-scalar")
def _sd_scalar(stats: Mapping[str, Any] | None = None) -> LatentNormalization:
    return LatentNormalization("sd-scalar", (SD_SCALE,), (0.0,))


@LATENT_NORMALIZATIONS.register("per-channel")
def _per_channel(stats: Mapping[str, Any] | None = None) -> LatentNormalization:
    if stats is None:
        raise IrepaError(
            "the per-channel latent normalization needs channel statistics: pass a latent store (its manifest "
            "records them) or a latents-stats file"
        )
    mean, std = stats.get("mean"), stats.get("std")
    if not isinstance(mean, Sequence) or not isinstance(std, Sequence) or len(mean) != len(std):
        raise IrepaError("latent statistics need equal-length 'mean' and 'std' lists (one value per channel)")
    if any(float(s) <= 0 for s in std):
        raise IrepaError(f"latent statistics have a non-positive channel std {list(std)}; re-encode the store")
    return LatentNormalization("per-channel", tuple(1.0 / float(s) for s in std), tuple(float(m) for m in mean))


def latent_normalization(kind: str, stats: Any = None) -> LatentNormalization:
    """Build a named normalization.

    Args:
        kind: ``"sd-scalar"``, ``"per-channel"`` or ``"vae-stats"`` (per-channel with the statistics the VAE came
            with, recorded by ``irepa data encode`` in the manifest's ``vae.latent_stats``: REPA-E stage 2, the
            BatchNorm statistics of the end-to-end run, frozen).
        stats: For ``per-channel``: a latent :class:`~irepa.data.store.Store`, its manifest, or its
            ``latent_stats`` mapping (``mean``, ``std`` per channel); for ``vae-stats`` the store or its manifest.
            Ignored by ``sd-scalar``.

    Raises:
        UnknownNameError: An unknown kind (with close matches).
        IrepaError: ``per-channel`` without usable statistics.
    """
    if kind == "vae-stats":
        manifest = getattr(stats, "manifest", stats)
        vae = manifest.get("vae") if isinstance(manifest, Mapping) else None
        recorded = vae.get("latent_stats") if isinstance(vae, Mapping) else None
        if recorded is None:
            raise IrepaError(
                "data.latent_norm=vae-stats needs a latent store encoded with a VAE that carries its latent statistics "
                "(a folder written by irepa export-vae, or REPA-E's NAME-latents-stats.pt); use per-channel"
            )
        return _per_channel(recorded)
    builder = LATENT_NORMALIZATIONS.get(kind)
    manifest = getattr(stats, "manifest", stats)
    if isinstance(manifest, Mapping) and "latent_stats" in manifest:
        manifest = manifest["latent_stats"]
    return builder(manifest)


def split_moments(moments: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(..., 2C, h, w)`` mean ‖ std → ``(mean, std)``, each ``(..., C, h, w)``."""
    if moments.ndim < 3 or moments.shape[-3] % 2:
        raise IrepaError(f"moments must be (B, 2C, h, w) (mean ‖ std), got shape {tuple(moments.shape)}")
    return moments.chunk(2, dim=-3)


def sample_latents(
    moments: torch.Tensor,
    generator: torch.Generator | None = None,
    *,
    noise: torch.Tensor | None = None,
) -> torch.Tensor:
    """Draw raw latents ``z = mean + std · ε`` from stored moments, in float32.

    Args:
        moments: ``(B, 2C, h, w)`` mean ‖ std (any float dtype).
        generator: Source of ε (on the moments' device); ignored when ``noise`` is given.
        noise: Explicit ε ``(B, C, h, w)``.

    Returns:
        float32 ``(B, C, h, w)``.
    """
    mean, std = split_moments(moments.float())
    if noise is None:
        noise = torch.randn(mean.shape, generator=generator, device=mean.device, dtype=torch.float32)
    elif noise.shape != mean.shape:
        raise IrepaError(f"noise has shape {tuple(noise.shape)}, the latents {tuple(mean.shape)}")
    return mean + std * noise.float()
