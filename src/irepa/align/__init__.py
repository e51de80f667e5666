"""Representation alignment (REPA / iREPA), model-agnostic.

- :class:`Projector` (``PROJECTORS``: ``mlp`` REPA, ``linear``, ``conv`` iREPA) maps diffusion tokens to an
  encoder's feature space.
- :func:`spatial_norm` (``TARGET_NORMS``: ``none``, ``spatial``, ``layernorm``) is iREPA's spatial normalization of
  the target tokens.
- ``ALIGN_LOSSES`` (``cosine``, reported as ``1 − cos``) and :class:`AlignLossOutput`.
- :class:`WeightSchedule` (constant, warmup, decay, hard stop) and :class:`AlignConfig` (the ``align:`` config
  section).
- :class:`RepresentationAligner` ties them together and taps any model through forward hooks, or takes the tokens
  directly.

See ``docs/align.md``.
"""

from irepa.align.aligner import Layout, RepresentationAligner
from irepa.align.config import AlignConfig
from irepa.align.losses import ALIGN_LOSSES, AlignLossOutput, cosine_alignment_loss, unit_tokens
from irepa.align.norms import TARGET_NORMS, spatial_norm
from irepa.align.projectors import PROJECTORS, Projector, ProjectorKind
from irepa.align.schedule import WeightSchedule
from irepa.align.tokens import Grid, drop_prefix, map_to_tokens, parse_grid, resolve_grid, tokens_to_map

__all__ = [
    "ALIGN_LOSSES",
    "PROJECTORS",
    "TARGET_NORMS",
    "AlignConfig",
    "AlignLossOutput",
    "Grid",
    "Layout",
    "Projector",
    "ProjectorKind",
    "RepresentationAligner",
    "WeightSchedule",
    "cosine_alignment_loss",
    "drop_prefix",
    "map_to_tokens",
    "parse_grid",
    "resolve_grid",
    "spatial_norm",
    "tokens_to_map",
    "unit_tokens",
]
