"""Diffusion transformers (SiT and JiT families), inference snapshots and official-checkpoint loading.

``build_model("SiT-XL/2" | "JiT-B/16", **overrides)`` builds a registered model; ``model(x, t, y, return_hidden=N)``
returns ``ModelOutput(out, hidden)``. Snapshots: :mod:`irepa.models.io`; official REPA / iREPA / REPA-E / JiT files:
:mod:`irepa.models.official`.
"""

from __future__ import annotations

from irepa.models.base import MODELS, DiffusionTransformer, ModelOutput, build_model, count_parameters
from irepa.models.jit import JIT_SIZES, JiT
from irepa.models.sit import SIT_SIZES, SiT

__all__ = [
    "JIT_SIZES",
    "MODELS",
    "SIT_SIZES",
    "DiffusionTransformer",
    "JiT",
    "ModelOutput",
    "SiT",
    "build_model",
    "count_parameters",
]
