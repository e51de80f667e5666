"""``AlignConfig``: the ``align:`` section of training configs.

Defaults are REPA's (MLP projector, raw targets, λ = 0.5). iREPA is ``projector: conv``, ``kernel_size: 3``,
``target_norm: spatial`` and ``gamma: 0.6`` (SiT) or ``0.8`` (JiT); the official iREPA SiT config also uses
``weight: 1.0`` (paper-notes §6). Example::

    align:
      encoders: [dinov2-vit-b]
      depth: 8
      projector: conv
      target_norm: spatial
      gamma: 0.6
      weight: 1.0
"""

from __future__ import annotations

import dataclasses
import math

from irepa.align.losses import ALIGN_LOSSES
from irepa.align.norms import TARGET_NORMS
from irepa.align.projectors import PROJECTORS
from irepa.align.schedule import WeightSchedule
from irepa.errors import ConfigError, UnknownNameError

__all__ = ["AlignConfig"]


@dataclasses.dataclass(frozen=True)
class AlignConfig:
    """Representation-alignment settings (validated on construction; errors are :class:`ConfigError`)."""

    encoders: list[str] = dataclasses.field(default_factory=list)
    """Encoder zoo ids whose patch tokens are the targets (e.g. ``["dinov2-vit-b"]``); several are averaged.
    Empty disables alignment."""

    depth: int = 8
    """1-based block whose output tokens are aligned (REPA's "encoder depth"): REPA uses 4 for SiT-B and 8 for
    SiT-L/XL; the iREPA README uses 4 for SiT-B/2 and JiT-B/16; the correlation runs use 8 at every scale."""

    projector: str = "mlp"
    """Projector kind: ``mlp`` (REPA), ``linear`` or ``conv`` (iREPA)."""

    projector_dim: int = 2048
    """Hidden width of the ``mlp`` projector (REPA and iREPA: 2048)."""

    kernel_size: int = 3
    """Kernel of the ``conv`` projector (paper and iREPA README: 3; the official LDM CLI default is 1,
    prior-implementations §6.2). Must be odd."""

    target_norm: str = "none"
    """Normalization of the encoder tokens: ``none`` (REPA), ``spatial`` (iREPA), ``layernorm``."""

    gamma: float = 0.6
    """Fraction γ of the spatial mean removed by ``spatial`` (paper 0.6–0.8; official 0.6 SiT, 0.8 JiT)."""

    eps: float = 1e-6
    """Stabilizer of the target normalization (official 1e-6, added to the std)."""

    loss: str = "cosine"
    """Alignment loss: ``cosine`` (``1 − cos``, averaged over tokens, images and encoders)."""

    weight: float = 0.5
    """Peak loss weight λ (REPA 0.5; official iREPA SiT 1.0, JiT 0.5)."""

    warmup_steps: int = 0
    """Linear warmup of λ over this many optimizer steps (0 = none)."""

    decay: str = "none"
    """Decay of λ after the warmup: ``none``, ``linear`` or ``cosine`` (reaches 0 at ``decay_end``)."""

    decay_end: int | None = None
    """Step at which a decaying λ reaches 0."""

    stop_after: int | None = None
    """Hard stop: λ = 0 from this step on (HASTE-style early termination); null = never."""

    def __post_init__(self) -> None:
        if len(set(self.encoders)) != len(self.encoders):
            raise ConfigError(f"align.encoders lists an encoder twice: {list(self.encoders)}")
        if any(not isinstance(name, str) or not name for name in self.encoders):
            raise ConfigError(f"align.encoders must be non-empty names, got {list(self.encoders)}")
        if self.depth < 1:
            raise ConfigError(f"align.depth must be >= 1 (1-based block index), got {self.depth}")
        if self.projector_dim < 1:
            raise ConfigError(f"align.projector_dim must be >= 1, got {self.projector_dim}")
        if self.kernel_size < 1 or self.kernel_size % 2 == 0:
            raise ConfigError(f"align.kernel_size must be a positive odd integer, got {self.kernel_size}")
        if not 0.0 <= self.gamma <= 1.0:
            raise ConfigError(f"align.gamma must be in [0, 1] (paper 0.6-0.8), got {self.gamma}")
        if not (math.isfinite(self.eps) and self.eps > 0):
            raise ConfigError(f"align.eps must be > 0, got {self.eps}")
        for key, registry in (("projector", PROJECTORS), ("target_norm", TARGET_NORMS), ("loss", ALIGN_LOSSES)):
            try:
                registry.canonical(getattr(self, key))
            except UnknownNameError as exc:
                raise ConfigError(f"align.{key}: {exc}") from None
        try:
            self.schedule()
        except ConfigError as exc:
            raise ConfigError(f"align: {exc}") from None

    @property
    def enabled(self) -> bool:
        """True if at least one encoder is configured."""
        return bool(self.encoders)

    def schedule(self) -> WeightSchedule:
        """The :class:`WeightSchedule` of ``weight``, ``warmup_steps``, ``decay``, ``decay_end``, ``stop_after``."""
        return WeightSchedule(
            weight=self.weight,
            warmup_steps=self.warmup_steps,
            decay=self.decay,  # type: ignore[arg-type]  # validated by WeightSchedule
            decay_end=self.decay_end,
            stop_after=self.stop_after,
        )
