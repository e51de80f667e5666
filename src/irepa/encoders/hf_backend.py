"""Transformers backend: vision models that take ``pixel_values`` (B, 3, H, W) and return ``last_hidden_state``.

Used for the Web-SSL DINO family (``Dinov2Model``, only published in the Transformers format); any model class with
the same calling convention works (``ViTModel``, ``CLIPVisionModel``, ``IJepaModel``, ``DINOv3ViTModel``).

The architecture comes from the checkpoint's own ``config.json`` when the weights folder has one (checked against
the spec: embed dim and patch size), otherwise from the spec's ``arch_kwargs``. Weights load through Transformers'
own ``from_pretrained`` (key renames of newer Transformers versions included). Position embeddings are interpolated
by the model at run time (``interpolate_pos_encoding``).
"""

from __future__ import annotations

import contextlib
import inspect
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from irepa.encoders.base import VisionEncoder
from irepa.encoders.spec import EncoderSpec
from irepa.encoders.timm_backend import _preview
from irepa.encoders.weights import ResolvedWeights
from irepa.errors import IrepaError, first_line

__all__ = ["TransformersEncoder", "build_transformers_model"]


class TransformersEncoder(VisionEncoder):
    """A :class:`VisionEncoder` around a Transformers vision model."""

    def _forward_backbone(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        model = self.backbone
        kwargs: dict[str, Any] = {"pixel_values": x}
        if _accepts(model, "interpolate_pos_encoding"):
            kwargs["interpolate_pos_encoding"] = True
        if not self.spec.final_norm:
            kwargs["output_hidden_states"] = True
        out = model(**kwargs)
        hidden = out.last_hidden_state if self.spec.final_norm else out.hidden_states[-1]
        cls = hidden[:, 0] if self.spec.has_cls else None
        return hidden[:, self.spec.num_prefix_tokens :], cls


def _accepts(model: nn.Module, name: str) -> bool:
    return name in inspect.signature(model.forward).parameters


def _model_class(spec: EncoderSpec) -> type:
    import transformers

    cls = getattr(transformers, spec.arch, None)
    if cls is None:
        raise IrepaError(f"transformers has no model class {spec.arch!r} (needed by {spec.id!r}); upgrade transformers")
    return cls


def _config(spec: EncoderSpec, model_cls: type, folder: Path | None, arch_overrides: Mapping[str, Any]) -> Any:
    config_cls = model_cls.config_class
    if folder is not None and (folder / "config.json").is_file():
        config = config_cls.from_pretrained(str(folder))
        for field, expected in (("hidden_size", spec.embed_dim), ("patch_size", spec.patch_size)):
            found = getattr(config, field, expected)
            if found != expected:
                raise IrepaError(
                    f"weights folder {str(folder)!r} has {field}={found} but encoder {spec.id!r} expects {expected}; "
                    "is this the checkpoint of this encoder?"
                )
        return config
    return config_cls(**{**spec.arch_kwargs, **arch_overrides})


def build_transformers_model(
    spec: EncoderSpec,
    *,
    weights: ResolvedWeights | None,
    arch_overrides: Mapping[str, Any] | None = None,
) -> nn.Module:
    """Create ``spec``'s Transformers model; random init when ``weights`` is None.

    Weights load through ``from_pretrained`` (which also converts legacy key names) from a model folder, or from a
    single ``.safetensors`` file placed in a temporary folder next to a ``config.json`` written from the spec.

    Raises:
        IrepaError: Weights that do not fit (missing/unexpected keys, shape mismatches), a config that
            contradicts the spec, unreadable files.
    """
    model_cls = _model_class(spec)
    overrides = dict(arch_overrides or {})
    if weights is None:
        return model_cls(_config(spec, model_cls, None, overrides))
    with contextlib.ExitStack() as stack:
        if weights.path.is_dir():
            folder = weights.path
        else:
            if weights.path.suffix != ".safetensors":
                raise IrepaError(
                    f"weights {str(weights.path)!r} for {spec.id!r} must be a Transformers model folder or a "
                    ".safetensors file"
                )
            folder = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="irepa-hf-")))
            (folder / "model.safetensors").symlink_to(weights.path.resolve())
        config = _config(spec, model_cls, folder, overrides)
        stack.enter_context(_quiet_transformers())
        try:
            model, info = model_cls.from_pretrained(
                str(folder), config=config, output_loading_info=True, ignore_mismatched_sizes=True
            )
        except (OSError, ValueError) as exc:
            raise IrepaError(
                f"cannot load weights {str(weights.path)!r} for encoder {spec.id!r}: {first_line(exc)}"
            ) from exc
    problems = []
    for label, keys in (("missing keys", info["missing_keys"]), ("unexpected keys", info["unexpected_keys"])):
        if keys:
            problems.append(f"{len(keys)} {label} ({_preview(sorted(keys))})")
    if info["mismatched_keys"]:
        shapes = [f"{k}: checkpoint {tuple(a)} vs model {tuple(b)}" for k, a, b in sorted(info["mismatched_keys"])]
        problems.append(f"{len(shapes)} shape mismatches ({_preview(shapes, 2)})")
    if problems:
        raise IrepaError(
            f"weights {str(weights.path)!r} do not fit encoder {spec.id!r} ({spec.arch}): {'; '.join(problems)}"
        )
    return model.float()


@contextlib.contextmanager
def _quiet_transformers() -> Iterator[None]:
    """Silence Transformers' load report and progress bars (irepa reports problems itself, in one line)."""
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()
