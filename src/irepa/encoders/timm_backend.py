"""timm backend: ViT / Eva / HieraDet models from timm, and irepa's packaged tiny ViTs.

Models are created at the encoder input size (``img_size`` = grid × patch), so timm's own checkpoint filter
resamples absolute position embeddings to the target grid once, at load (bicubic with antialiasing, the
``resample_abs_pos_embed`` call REPA applies to DINOv2 / MoCo v3 / MAE; RADIO's filter uses its own bilinear
setting). Weights go through timm's loader (``pretrained_cfg_overlay=dict(file=...)``), which applies the
architecture's checkpoint filter: timm-format files as well as several official layouts (DINOv2, DINOv3 ``.pth``,
PE ``.pt``, DINO, MAE). Checkpoints that need a remapping first (MoCo v3, I-JEPA) are remapped
(:mod:`irepa.encoders.remap`) into a temporary safetensors file.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from irepa.encoders.base import VisionEncoder
from irepa.encoders.remap import REMAPS
from irepa.encoders.spec import EncoderSpec
from irepa.encoders.weights import ResolvedWeights, read_state_dict, temporary_safetensors
from irepa.errors import IrepaError
from irepa.utils.io import describe_load_error
from irepa.utils.state_dict import state_dict_mismatch

__all__ = ["TimmEncoder", "build_packaged_vit", "build_timm_model", "check_state_dict", "summarize_load_error"]


class TimmEncoder(VisionEncoder):
    """A :class:`VisionEncoder` around a timm model (``forward_features`` / ``forward_intermediates`` API)."""

    def _forward_backbone(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        model = self.backbone
        num_prefix = int(getattr(model, "num_prefix_tokens", 0))
        if self.spec.final_norm:
            out = model.forward_features(x)
        else:
            # The official code reads the last block's output before the final norm (MAE, PE, CLIP's ln_post).
            out = model.forward_intermediates(
                x, indices=1, norm=False, output_fmt="NLC", intermediates_only=True, return_prefix_tokens=num_prefix > 0
            )[-1]
            if isinstance(out, tuple):
                patches, prefix = out
                out = torch.cat([prefix, patches], dim=1) if prefix is not None and num_prefix else patches
        if out.ndim == 4:  # HieraDet: NHWC feature map of the last stage
            return out.flatten(1, 2), None
        cls = out[:, 0] if self.spec.has_cls else None
        return out[:, num_prefix:], cls


# ----------------------------------------------------------------------------------------------------------------------
# Building


def build_timm_model(
    spec: EncoderSpec,
    *,
    input_size: tuple[int, int],
    weights: ResolvedWeights | None,
    arch_overrides: Mapping[str, Any] | None = None,
) -> nn.Module:
    """Create ``spec``'s timm model at ``input_size``, with pretrained weights or randomly initialised.

    Random models are built on the current default device (use ``with torch.device("meta")`` for shape checks
    of billion-parameter entries).

    Raises:
        IrepaError: Weights that do not fit the architecture (missing/unexpected keys, shape mismatches),
            unreadable or unsafe files.
    """
    import timm
    from safetensors import SafetensorError

    kwargs: dict[str, Any] = dict(spec.arch_kwargs)
    kwargs.update(arch_overrides or {})
    if spec.accepts_img_size:
        kwargs["img_size"] = input_size
    if weights is None:
        return timm.create_model(spec.arch, pretrained=False, **kwargs)
    remap = REMAPS.get(spec.remap) if spec.remap else None
    with contextlib.ExitStack() as stack:
        if remap is not None:
            state_dict = remap(read_state_dict(weights.path))
            path: Path = stack.enter_context(temporary_safetensors(state_dict))
            del state_dict
        else:
            path = weights.path
        overlay: dict[str, Any] = {"file": str(path)}
        if "num_classes" in kwargs:
            # Keeps timm's strict load: it relaxes strictness when the head size differs from the pretrained cfg.
            overlay["num_classes"] = kwargs["num_classes"]
        try:
            return timm.create_model(spec.arch, pretrained=True, pretrained_cfg_overlay=overlay, **kwargs)
        except RuntimeError as exc:
            if "Error(s) in loading state_dict" in str(exc):
                raise IrepaError(
                    f"weights {str(weights.path)!r} do not fit encoder {spec.id!r} (timm {spec.arch}): "
                    f"{summarize_load_error(str(exc))}; is this the checkpoint of {spec.id!r}?"
                ) from exc
            # timm re-raises weights_only refusals (pickled objects) as RuntimeError: a file problem, not a bug.
            raise IrepaError(
                f"cannot load weights {str(weights.path)!r} for encoder {spec.id!r}: {describe_load_error(exc)}"
            ) from exc
        except (
            OSError,
            ValueError,
            KeyError,
            AssertionError,
            SafetensorError,
        ) as exc:  # unpickling, truncated, foreign
            raise IrepaError(
                f"cannot load weights {str(weights.path)!r} for encoder {spec.id!r}: {describe_load_error(exc)}"
            ) from exc


def build_packaged_vit(
    spec: EncoderSpec,
    *,
    input_size: tuple[int, int],
    weights: ResolvedWeights | None,
    arch_overrides: Mapping[str, Any] | None = None,
) -> nn.Module:
    """Build one of irepa's own tiny ViTs (a timm ``VisionTransformer`` from the spec's kwargs) and load its asset.

    The position embedding is resampled by timm's ViT checkpoint filter when ``input_size`` differs from the size
    the asset was trained at.
    """
    from timm.models.vision_transformer import VisionTransformer, checkpoint_filter_fn

    kwargs: dict[str, Any] = {"num_classes": 0, **spec.arch_kwargs, **(arch_overrides or {})}
    model = VisionTransformer(img_size=input_size, **kwargs)
    if weights is not None:
        state_dict = read_state_dict(weights.path)
        state_dict = checkpoint_filter_fn(state_dict, model)
        check_state_dict(model, state_dict, what=f"weights {str(weights.path)!r} of encoder {spec.id!r}")
        model.load_state_dict(state_dict, strict=True)
    return model


# ----------------------------------------------------------------------------------------------------------------------
# Load-error reporting


def _preview(keys: list[str], limit: int = 3) -> str:
    shown = ", ".join(keys[:limit])
    return shown + (f", … (+{len(keys) - limit})" if len(keys) > limit else "")


def check_state_dict(model: nn.Module, state_dict: Mapping[str, Any], *, what: str) -> None:
    """Compare a state dict with ``model`` before loading; one-line :class:`IrepaError` on any mismatch."""
    problem = state_dict_mismatch(model.state_dict(), state_dict, limit=3)
    if problem:
        raise IrepaError(f"{what} do not fit the architecture: {problem}")


_KEYS = re.compile(r'"([^"]+)"')
_SIZE = re.compile(
    r"size mismatch for ([^:]+): copying a param with shape torch\.Size\(\[([^\]]*)\]\) from checkpoint, "
    r"the shape in current model is torch\.Size\(\[([^\]]*)\]\)"
)


def summarize_load_error(message: str) -> str:
    """Condense PyTorch's multi-line ``load_state_dict`` error into one line of counts and examples."""
    parts = []
    for line in message.splitlines():
        line = line.strip()
        if line.startswith("Missing key(s)"):
            keys = _KEYS.findall(line)
            parts.append(f"{len(keys)} missing keys ({_preview(keys)})")
        elif line.startswith("Unexpected key(s)"):
            keys = _KEYS.findall(line)
            parts.append(f"{len(keys)} unexpected keys ({_preview(keys)})")
    sizes = [f"{k}: checkpoint ({a}) vs model ({b})" for k, a, b in _SIZE.findall(message)]
    if sizes:
        parts.append(f"{len(sizes)} shape mismatches ({_preview(sizes, 2)})")
    return "; ".join(parts) or message.strip().splitlines()[0]
