"""The distributed trainer: ``Trainer(config, run_dir).fit()`` on accelerate (see docs/training.md).

Modules: :mod:`~irepa.training.config` (``TrainConfig``, presets, resolution), :mod:`~irepa.training.trainer`,
:mod:`~irepa.training.objectives`, :mod:`~irepa.training.alignment`,
:mod:`~irepa.training.checkpoint`, :mod:`~irepa.training.ema`,
:mod:`~irepa.training.logging`, :mod:`~irepa.training.distributed`, :mod:`~irepa.training.data`,
:mod:`~irepa.training.teacher`, :mod:`~irepa.training.guard`, :mod:`~irepa.training.signals`,
:mod:`~irepa.training.timing`. Names below are imported lazily, so ``import irepa.training`` stays cheap.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "TrainConfig": "irepa.training.config",
    "resolve_config": "irepa.training.config",
    "Trainer": "irepa.training.trainer",
    "FitResult": "irepa.training.trainer",
    "DenoisingObjective": "irepa.training.objectives",
    "OBJECTIVES": "irepa.training.objectives",
    "Objective": "irepa.training.objectives",
    "AlignmentTerm": "irepa.training.alignment",
    "CheckpointManager": "irepa.training.checkpoint",
    "EMA": "irepa.training.ema",
    "TrainLogger": "irepa.training.logging",
    "list_presets": "irepa.training.presets",
    "load_preset": "irepa.training.presets",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'irepa.training' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])
