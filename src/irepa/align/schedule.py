"""The alignment weight λ as a pure function of the optimizer step.

``λ(step) = weight · warmup(step) · decay(step) · [step < stop_after]`` with, for a 0-based ``step`` (the number of
optimizer steps already taken):

* warmup: ``min(1, (step + 1) / warmup_steps)``, so full weight is reached after ``warmup_steps`` steps
  (1 when ``warmup_steps = 0``);
* decay from the end of the warmup to ``decay_end``: ``"none"`` (1), ``"linear"`` (1 → 0) or ``"cosine"``
  (½(1 + cos πu), 1 → 0), then 0 from ``decay_end`` on;
* ``stop_after``: a hard stop, λ = 0 from that step on — HASTE-style early termination of the alignment
  (kaist-cvml/PixelREPA#1 reports REPA hurting long runs). A trainer can skip the teacher forward pass entirely when
  :meth:`WeightSchedule.active` is False.

REPA uses a constant 0.5; the iREPA SiT config uses 1.0 and its JiT config 0.5 (paper-notes §6.3).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Literal

from irepa.errors import ConfigError

__all__ = ["WeightSchedule"]


@dataclasses.dataclass(frozen=True)
class WeightSchedule:
    """Alignment weight λ over training steps (see the module docstring for the formula).

    Attributes:
        weight: Peak weight λ (REPA 0.5, iREPA SiT 1.0).
        warmup_steps: Linear warmup length in optimizer steps (0 = none).
        decay: ``"none"``, ``"linear"`` or ``"cosine"`` decay to 0 at ``decay_end``.
        decay_end: Step at which a decaying weight reaches 0 (required when ``decay != "none"``).
        stop_after: Step from which λ = 0 (None = never); HASTE-style termination.
    """

    weight: float = 0.5
    warmup_steps: int = 0
    decay: Literal["none", "linear", "cosine"] = "none"
    decay_end: int | None = None
    stop_after: int | None = None

    def __post_init__(self) -> None:
        if not math.isfinite(self.weight) or self.weight < 0:
            raise ConfigError(f"alignment weight must be a finite number >= 0, got {self.weight!r}")
        if self.warmup_steps < 0:
            raise ConfigError(f"warmup_steps must be >= 0, got {self.warmup_steps}")
        if self.decay not in ("none", "linear", "cosine"):
            raise ConfigError(f"decay must be 'none', 'linear' or 'cosine', got {self.decay!r}")
        if self.decay != "none":
            if self.decay_end is None:
                raise ConfigError(f"decay={self.decay!r} needs decay_end (the step where the weight reaches 0)")
            if self.decay_end <= self.warmup_steps:
                raise ConfigError(f"decay_end ({self.decay_end}) must be after the warmup ({self.warmup_steps} steps)")
        elif self.decay_end is not None:
            raise ConfigError("decay_end is set but decay is 'none'; set decay to 'linear' or 'cosine'")
        if self.stop_after is not None and self.stop_after < 0:
            raise ConfigError(f"stop_after must be >= 0 (or null for never), got {self.stop_after}")

    def __call__(self, step: int) -> float:
        """λ at optimizer step ``step`` (0-based)."""
        if step < 0:
            raise ValueError(f"step must be >= 0, got {step}")
        if self.stop_after is not None and step >= self.stop_after:
            return 0.0
        factor = 1.0 if self.warmup_steps == 0 else min(1.0, (step + 1) / self.warmup_steps)
        if self.decay != "none":
            assert self.decay_end is not None
            if step >= self.decay_end:
                return 0.0
            progress = max(0.0, (step - self.warmup_steps) / (self.decay_end - self.warmup_steps))
            factor *= 1.0 - progress if self.decay == "linear" else 0.5 * (1.0 + math.cos(math.pi * progress))
        return self.weight * factor

    def active(self, step: int) -> bool:
        """True if the alignment term can be non-zero at ``step`` (False once stopped or decayed to 0)."""
        return self(step) > 0.0
