"""Diffusion transformers (SiT family), inference snapshots and official-checkpoint loading.

``build_model("SiT-XL/2", **overrides)`` builds a registered model; ``model(x, t, y, return_hidden=N)`` returns
``ModelOutput(out, hidden)``. Snapshots: :mod:`irepa.models.io`; official REPA / iREPA / REPA-E files:
:mod:`irepa.models.official`.
"""

from __future__ import annotations

from irepa.models.sit import MODELS, SIT_SIZES, ModelOutput, SiT, build_model, count_parameters

__all__ = ["MODELS", "SIT_SIZES", "ModelOutput", "SiT", "build_model", "count_parameters"]
