"""``load_encoder``: registry id → frozen, grid-matched :class:`~irepa.encoders.base.VisionEncoder`."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch

from irepa.encoders.base import ClsMixing, VisionEncoder
from irepa.encoders.spec import ENCODERS, EncoderSpec
from irepa.encoders.weights import ResolvedWeights, WeightLocations, resolve_weights
from irepa.errors import IrepaError
from irepa.registry import Registry

__all__ = ["BACKENDS", "load_encoder"]


def load_encoder(
    name: str,
    *,
    resolution: int | tuple[int, int] = 256,
    weights: str | Path | None = None,
    cache_dir: str | Path | None = None,
    hf_cache_dir: str | Path | None = None,
    torch_hub_dir: str | Path | None = None,
    offline: bool = False,
    revision: str | None = None,
    pretrained: bool = True,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    preprocessing: str | None = None,
    cls_mixing: ClsMixing = "none",
    cls_alpha: float = 0.0,
    arch_overrides: Mapping[str, Any] | None = None,
) -> VisionEncoder:
    """Build a zoo encoder for images of ``resolution`` pixels, frozen, on ``device``.

    Args:
        name: Registry id (``irepa encoders list``); unknown ids raise with close matches.
        resolution: Image size the encoder will receive (int = square, or ``(height, width)``). The token grid
            is ``resolution / 16`` (16×16 at 256 px, 32×32 at 512 px).
        weights: Explicit weights file or folder (skips the caches).
        cache_dir: irepa's cache root (``<cache_dir>/encoders/<id>/``).
        hf_cache_dir: Hugging Face hub cache; ``None`` = huggingface_hub's default.
        torch_hub_dir: torch hub directory (official files in ``checkpoints/``).
        offline: Never download; missing weights raise :class:`~irepa.errors.WeightsNotFoundError`.
        revision: Hub revision overriding the spec's.
        pretrained: ``False`` builds a randomly initialised model (smoke tests only: its features are
            meaningless). Required for ``device="meta"``.
        device: Device of the encoder (``"meta"`` for shape checks without memory).
        dtype: Backbone dtype (preprocessing and outputs stay float32).
        preprocessing: Preprocessing variant of the spec (e.g. ``"irepa"`` for SigLIP's iREPA-compatible ImageNet
            statistics); default: the spec's first.
        cls_mixing: ``"additive"`` (paper: p + α·c) or ``"convex"`` (official code: (1−α)·p + α·c); ``"none"``.
        cls_alpha: Mixing weight α.
        arch_overrides: Architecture kwargs overriding the spec (e.g. ``{"depth": 1}`` for tiny random test
            models); only with ``pretrained=False``.

    Raises:
        UnknownNameError: Unknown id (with suggestions).
        IrepaError: Bad resolution, option or weights; :class:`~irepa.errors.WeightsNotFoundError` when weights are
            missing.
    """
    spec = ENCODERS.get(name)
    device = torch.device(device)
    if not dtype.is_floating_point:
        raise IrepaError(f"encoder dtype must be a floating type, got {dtype}")
    input_size = spec.input_size(resolution)  # validates the resolution first: cheap errors before weights
    spec.get_preprocessing(preprocessing)
    has_weights = spec.weights is not None
    if arch_overrides and pretrained and has_weights:
        raise IrepaError("arch_overrides change the architecture and need pretrained=False (random init)")
    if weights is not None and not (pretrained and has_weights):
        raise IrepaError(f"weights were given for {spec.id!r} but it is built without pretrained weights")
    if device.type == "meta" and pretrained and has_weights:
        raise IrepaError("the meta device holds no data: use pretrained=False with device='meta'")

    resolved: ResolvedWeights | None = None
    if pretrained and has_weights:
        locations = WeightLocations(
            cache_dir=Path(cache_dir) if cache_dir is not None else None,
            hf_cache_dir=Path(hf_cache_dir) if hf_cache_dir is not None else None,
            torch_hub_dir=Path(torch_hub_dir) if torch_hub_dir is not None else None,
            offline=offline,
        )
        resolved = resolve_weights(spec, weights=weights, locations=locations, revision=revision)
        weights_info: dict[str, Any] = {**resolved.to_dict(), "pretrained": True}
    elif has_weights:
        weights_info = {"origin": "random-init", "pretrained": False}
    else:
        weights_info = {"origin": "none (weight-free)", "pretrained": False}

    overrides = dict(arch_overrides or {})
    with torch.device("meta") if device.type == "meta" else contextlib.nullcontext():
        backbone, encoder_cls, embed_dim = BACKENDS.get(spec.backend)(spec, input_size, resolved, overrides)
        encoder = encoder_cls(
            spec,
            backbone,
            resolution=resolution,
            embed_dim=embed_dim,
            preprocessing=preprocessing,
            cls_mixing=cls_mixing,
            cls_alpha=cls_alpha,
            weights_info=weights_info,
        )
    backbone.to(dtype=dtype)  # the preprocessing buffers stay float32
    if device.type != "meta":
        encoder.to(device)
    return encoder.freeze()


#: What a backend builds: ``(backbone, encoder class, embedding width)``.
Built = tuple[torch.nn.Module, type[VisionEncoder], int]
#: A backend's builder: ``(spec, input_size (h, w), resolved weights or None, arch_overrides) -> Built``.
Builder = Callable[[EncoderSpec, tuple[int, int], "ResolvedWeights | None", dict[str, Any]], Built]

#: Encoder backends by :attr:`EncoderSpec.backend`. Each builder imports its third-party library only when called,
#: so ``import irepa.encoders`` stays light.
BACKENDS: Registry[Builder] = Registry("encoder backend")


@BACKENDS.register("timm")
def _timm(spec: EncoderSpec, input_size: tuple[int, int], weights: Any, overrides: dict[str, Any]) -> Built:
    from irepa.encoders.timm_backend import TimmEncoder, build_timm_model

    model = build_timm_model(spec, input_size=input_size, weights=weights, arch_overrides=overrides)
    return model, TimmEncoder, int(model.num_features)


@BACKENDS.register("packaged")
def _packaged(spec: EncoderSpec, input_size: tuple[int, int], weights: Any, overrides: dict[str, Any]) -> Built:
    from irepa.encoders.timm_backend import TimmEncoder, build_packaged_vit

    model = build_packaged_vit(spec, input_size=input_size, weights=weights, arch_overrides=overrides)
    return model, TimmEncoder, int(model.num_features)


@BACKENDS.register("transformers")
def _transformers(spec: EncoderSpec, input_size: tuple[int, int], weights: Any, overrides: dict[str, Any]) -> Built:
    from irepa.encoders.hf_backend import TransformersEncoder, build_transformers_model

    model = build_transformers_model(spec, weights=weights, arch_overrides=overrides)
    return model, TransformersEncoder, int(model.config.hidden_size)


@BACKENDS.register("classic")
def _classic(spec: EncoderSpec, input_size: tuple[int, int], weights: Any, overrides: dict[str, Any]) -> Built:
    from irepa.encoders.classic import ClassicEncoder, build_classic

    module = build_classic(spec.arch, **{**spec.arch_kwargs, **overrides})
    return module, ClassicEncoder, int(module.out_dim)
