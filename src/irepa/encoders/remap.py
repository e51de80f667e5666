"""State-dict remappings from official checkpoint layouts to the timm layouts irepa builds.

Each remapping is a pure function ``dict -> dict[str, Tensor]`` registered in :data:`REMAPS` and named by the spec
(``EncoderSpec.remap``). Remappings are idempotent: a state dict already in the target layout passes through, so
the same entry loads the official file, a re-saved file, or a timm-format file.

Only layouts timm's own checkpoint filters do not understand need an entry here: timm already converts the official
DINOv2, DINOv3, DINO, MAE, I-JEPA (``encoder`` dict), OpenAI CLIP, PE and RADIO files.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch

from irepa.errors import IrepaError
from irepa.registry import Registry

__all__ = ["REMAPS", "mocov3_to_timm", "unwrap_state_dict"]

REMAPS: Registry[Callable[[Mapping[str, Any]], dict[str, torch.Tensor]]] = Registry("state-dict remap")


def unwrap_state_dict(checkpoint: Mapping[str, Any], keys: tuple[str, ...] = ("state_dict", "model")) -> dict:
    """Return the tensor dict inside a training checkpoint (``{"state_dict": {...}, "epoch": ...}``)."""
    for key in keys:
        inner = checkpoint.get(key)
        if isinstance(inner, Mapping):
            return dict(inner)
    return dict(checkpoint)


def _tensors_only(state_dict: Mapping[str, Any], what: str) -> dict[str, torch.Tensor]:
    out = {k: v for k, v in state_dict.items() if isinstance(v, torch.Tensor)}
    if not out:
        raise IrepaError(f"{what} checkpoint holds no tensors after remapping; is it the right file?")
    return out


# Naming bug in some MoCo v3 ViT checkpoints (handled the same way by REPA's loader): two blocks carry their index
# in a sub-module name.
_MOCOV3_RENAMES = {
    "blocks.13.norm13.": "blocks.13.norm1.",
    "blocks.13.mlp.fc13.": "blocks.13.mlp.fc1.",
    "blocks.14.norm14.": "blocks.14.norm2.",
    "blocks.14.mlp.fc14.": "blocks.14.mlp.fc2.",
}


@REMAPS.register("mocov3")
def mocov3_to_timm(checkpoint: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """MoCo v3 ViT checkpoint → timm ``VisionTransformer`` keys.

    Accepts the official training checkpoint (``{"state_dict": {"module.base_encoder.*", "module.momentum_encoder.*",
    "module.predictor.*"}, ...}``), REPA's "fixed" state dicts (``base_encoder`` prefix already stripped) and timm
    layouts. Keeps the base (online) encoder, drops the momentum encoder, the predictor and the projection head
    (``head.*``; MoCo v3's ViT head is the projector MLP), strips ``module.``/``base_encoder.`` prefixes.
    """
    state = unwrap_state_dict(checkpoint)
    has_base = any("base_encoder." in k for k in state)
    out: dict[str, Any] = {}
    for key, value in state.items():
        if has_base:
            if "base_encoder." not in key:
                continue  # momentum encoder, predictor
            key = key.split("base_encoder.", 1)[1]
        elif key.startswith("module."):
            key = key[len("module.") :]
        if key.startswith(("head.", "fc.")):
            continue
        for old, new in _MOCOV3_RENAMES.items():
            key = key.replace(old, new)
        out[key] = value
    return _tensors_only(out, "MoCo v3")
