"""Training objectives as registered recipes of the one trainer (``objective: {name: ...}``; docs/recipes.md).

- :mod:`~irepa.training.objectives.base`: the API (:class:`Objective`, :class:`Phase`, :class:`OptimizerSpec`,
  :class:`SnapshotSpec`, :class:`ObjectiveContext`) and the :data:`OBJECTIVES` registry.
- :mod:`~irepa.training.objectives.denoising`: ``denoising`` (SiT / REPA / iREPA).
- :mod:`~irepa.training.objectives.jit`: ``jit`` (JiT pixel-space x-prediction, with REPA / iREPA).
- :mod:`~irepa.training.objectives.meanflow`: ``meanflow`` (MeanFlow one- and few-step generation, REPA / iREPA).
- :mod:`~irepa.training.objectives.repae`: ``repa-e`` (end-to-end VAE + SiT + discriminator; REPA-E, iREPA-E).
"""

from irepa.training.objectives.base import (
    OBJECTIVES,
    BackboneObjective,
    NoSettings,
    Objective,
    ObjectiveContext,
    OptimizerSpec,
    Phase,
    PhaseFn,
    SnapshotSpec,
)
from irepa.training.objectives.denoising import DenoisingObjective, DenoisingSettings, build_backbone
from irepa.training.objectives.jit import JiTObjective, JiTSettings
from irepa.training.objectives.meanflow import MeanFlowObjective, MeanFlowSettings
from irepa.training.objectives.repae import RepaEObjective, RepaESettings

__all__ = [
    "OBJECTIVES",
    "BackboneObjective",
    "DenoisingObjective",
    "DenoisingSettings",
    "JiTObjective",
    "JiTSettings",
    "MeanFlowObjective",
    "MeanFlowSettings",
    "NoSettings",
    "Objective",
    "ObjectiveContext",
    "OptimizerSpec",
    "Phase",
    "PhaseFn",
    "RepaEObjective",
    "RepaESettings",
    "SnapshotSpec",
    "build_backbone",
]
