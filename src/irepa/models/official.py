"""Read official REPA / iREPA (ldm) / REPA-E SiT and JiT / iREPA-JiT checkpoints safely and map them onto irepa.

The official ``.pt`` files are ``torch.save`` pickles. They are read with ``torch.load(weights_only=True)`` inside
``torch.serialization.safe_globals`` with an explicit allow-list, :data:`ALLOWED_GLOBALS`:

- ``argparse.Namespace`` — the ``args`` entry of REPA / iREPA / REPA-E / JiT training dicts (its values are plain
  strings, numbers, booleans, lists and dicts, which ``weights_only`` accepts without help).

Optimizer states, step counters and state dicts need nothing else. A file that pickles anything more is refused
with an error naming the global; it is never retried with ``weights_only=False``.

What is read (prior-implementations §1.6–1.7):

- training dicts ``{"model", "ema", "opt", "args", "steps"}`` (REPA, iREPA-ldm; REPA-E adds ``vae``,
  ``discriminator`` and their optimizers): ``ema`` by default (what the official evaluation uses), ``model`` on
  request;
- bare state dicts, e.g. REPA's released SiT-XL/2 ``last.pt`` (EMA weights plus one MLP projector);
- JiT / iREPA-JiT training dicts ``{"model", "model_ema1", "model_ema2", "optimizer", "epoch", "args"}``:
  ``model_ema1`` (decay 0.9999, what JiT samples with) by default, ``model_ema2`` (0.9996) or ``model`` on request;
- ``module.`` / ``_orig_mod.`` / ``net.`` prefixes (DDP, ``torch.compile``, JiT's ``Denoiser`` wrapper) are
  stripped; very old REPA checkpoints whose upper half is ``decoder_blocks.M`` are renamed to
  ``blocks.(M + number of encoder blocks)`` (REPA ``--legacy``).

The JiT architecture is detected from tensor shapes too (``x_embedder.proj1`` marks a JiT): width, bottleneck,
patch, depth, grid, heads (from the QK-norm width), in-context length; the in-context start block, which no shape
reveals, comes from the model name (given or ``args.model``) or the standard size table. The RoPE tables are not in
JiT state dicts (irepa computes them too). The SiT architecture is detected from tensor shapes (depth, width, patch,
channels, classes, QK-norm, grid); the head count, which no shape reveals, comes from an explicit model name, the
checkpoint's ``args.model``, the width of QK-norm weights, or the standard width → heads table. What the weights
are is labelled from these shapes alone (:func:`architecture_label`: a registered name or "custom SiT config (...)"),
and an ``args.model`` that names another size gets a warning. Projectors (REPA
``projectors.K.{0,2,4}.*`` and iREPA ``projectors.K.projection_layer.*``) are renamed to
:class:`irepa.align.RepresentationAligner`'s layout (``projectors.K.net.*``); their kind and conv kernel size are
read from the weight shapes (the kernel the released iREPA-ldm runs used is whatever the weights say: the ldm CLI
default was 1, prior-implementations §6.2). REPA-E's ``bn.*`` running statistics give the latent normalization.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import math
import pickle
import re
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from irepa.errors import IrepaError, first_line
from irepa.models.base import MODELS
from irepa.models.io import load_state_dict_checked, state_dict_mismatch
from irepa.models.jit import JIT_SIZES
from irepa.models.sit import PATCH_SIZES, SIT_SIZES
from irepa.utils.io import describe_load_error, refused_global

__all__ = [
    "ALLOWED_GLOBALS",
    "OfficialCheckpoint",
    "ProjectorInfo",
    "architecture_label",
    "detect_architecture",
    "detect_jit_architecture",
    "is_jit_state",
    "load_latent_stats",
    "load_official_checkpoint",
    "official_space",
    "read_checkpoint_file",
    "registered_architecture",
]

#: Everything the official checkpoints pickle beyond tensors and builtins (see the module docstring).
ALLOWED_GLOBALS: tuple[type, ...] = (argparse.Namespace,)

#: SD-VAE scale of REPA's latents (``z · 0.18215``).
SD_VAE_SCALE = 0.18215

_WRAPPER_PREFIXES = ("module.", "_orig_mod.", "net.")
#: Weights a JiT training dict offers, by ``which``.
_JIT_ENTRIES = {"ema": "model_ema1", "ema2": "model_ema2", "model": "model"}
_KWARG_ORDER = ("input_size", "patch_size", "in_channels", "hidden_size", "depth", "num_heads", "mlp_ratio",
                "num_classes", "null_class", "qk_norm", "time_interval")  # fmt: skip


# ----------------------------------------------------------------------------------------------------------------------
# Reading the file


def read_checkpoint_file(path: str | Path) -> Any:
    """``torch.load`` an official checkpoint with ``weights_only=True`` and :data:`ALLOWED_GLOBALS` (memory-mapped).

    Raises:
        IrepaError: Missing, empty, truncated or corrupt file, or a pickled global outside the allow-list.
    """
    path = Path(path)
    if not path.is_file():
        raise IrepaError(f"checkpoint {str(path)!r} does not exist")
    if path.stat().st_size == 0:
        raise IrepaError(f"checkpoint {str(path)!r} is empty")
    # mmap avoids reading multi-GB optimizer states we never touch; it needs the zip format of torch >= 1.6.
    mmap = zipfile.is_zipfile(path)
    try:
        with torch.serialization.safe_globals(list(ALLOWED_GLOBALS)):
            return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as exc:
        name = refused_global(exc)
        if name is not None:
            raise IrepaError(
                f"checkpoint {str(path)!r} pickles {name!r}, which is not on irepa's allow-list "
                f"({', '.join(f'{g.__module__}.{g.__qualname__}' for g in ALLOWED_GLOBALS)}); it is not an official "
                "REPA/iREPA/REPA-E checkpoint or was re-saved with extra objects (re-save its state dict)"
            ) from exc
        raise IrepaError(
            f"checkpoint {str(path)!r} is corrupt or not a torch checkpoint: {describe_load_error(exc)}"
        ) from exc
    except Exception as exc:  # truncated zips, bad magic numbers, ...: many exception types
        raise IrepaError(f"checkpoint {str(path)!r} is truncated or corrupt: {first_line(exc, max_chars=200)}") from exc


def _is_state_dict(obj: Any) -> bool:
    return isinstance(obj, Mapping) and bool(obj) and all(isinstance(v, torch.Tensor) for v in obj.values())


def _strip_prefixes(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    state = dict(state)
    changed = True
    while changed:
        changed = False
        for prefix in _WRAPPER_PREFIXES:
            if state and all(k.startswith(prefix) for k in state):
                state = {k[len(prefix) :]: v for k, v in state.items()}
                changed = True
    return state


def _rename_legacy_decoder_blocks(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """REPA ``--legacy``: ``decoder_blocks.M.*`` → ``blocks.(M + number of encoder blocks).*``."""
    if not any(k.startswith("decoder_blocks.") for k in state):
        return state
    offset = len({int(m.group(1)) for k in state if (m := re.match(r"blocks\.(\d+)\.", k))})
    out = {}
    for key, value in state.items():
        m = re.match(r"decoder_blocks\.(\d+)\.(.*)", key)
        out[f"blocks.{int(m.group(1)) + offset}.{m.group(2)}" if m else key] = value
    return out


# ----------------------------------------------------------------------------------------------------------------------
# Architecture detection


def _head_count(width: int, state: Mapping[str, torch.Tensor], names: list[str]) -> int:
    """Heads for a SiT of this width: from a model name, QK-norm weights, or the standard configs."""
    for name in names:
        if name in MODELS:
            defaults = MODELS.get(name).defaults
            if defaults["hidden_size"] == width:
                return defaults["num_heads"]
    q_norm = state.get("blocks.0.attn.q_norm.weight")
    if q_norm is not None and width % q_norm.shape[0] == 0:
        return width // q_norm.shape[0]
    for size in SIT_SIZES.values():
        if size["hidden_size"] == width:
            return size["num_heads"]
    raise IrepaError(
        f"cannot tell the number of attention heads of a SiT of width {width} from its weights; "
        "name the architecture (irepa convert --model SiT-XL/2, or model_name=...)"
    )


def detect_architecture(
    state: Mapping[str, torch.Tensor], *, model_name: str | None = None, args: Mapping[str, Any] | None = None
) -> tuple[str, dict[str, Any]]:
    """Infer ``(registry name, SiT kwargs)`` from a SiT state dict in the official layout.

    Args:
        state: SiT keys only (no projectors, no ``bn.*``).
        model_name: Force this registry name: its depth / width / heads / patch win over the detected ones, so a
            checkpoint of another size fails the strict load with the mismatched keys named.
        args: The checkpoint's ``args`` (``model``, ``num_classes`` are used when present).

    Raises:
        IrepaError: Not a SiT state dict, or an architecture that cannot be determined.
    """
    args = dict(args or {})
    weight = state.get("x_embedder.proj.weight")
    if weight is None or weight.ndim != 4 or weight.shape[2] != weight.shape[3]:
        keys = ", ".join(sorted(state)[:5]) or "none"
        raise IrepaError(f"not a SiT state dict: no square-patch 'x_embedder.proj.weight' (first keys: {keys})")
    width, in_channels, patch = int(weight.shape[0]), int(weight.shape[1]), int(weight.shape[2])
    block_ids = sorted({int(m.group(1)) for k in state if (m := re.match(r"blocks\.(\d+)\.", k))})
    if not block_ids or block_ids != list(range(len(block_ids))):
        raise IrepaError(f"SiT state dict has no contiguous blocks.0..N (found block indices {block_ids[:8]})")
    pos = state.get("pos_embed")
    if pos is None or pos.ndim != 3:
        raise IrepaError("SiT state dict has no 'pos_embed' (1, T, D): cannot tell the input size")
    side = math.isqrt(int(pos.shape[1]))
    if side * side != pos.shape[1]:
        raise IrepaError(f"official SiT checkpoints have a square token grid; pos_embed has {pos.shape[1]} tokens")
    table = state.get("y_embedder.embedding_table.weight")
    if table is None:
        raise IrepaError("SiT state dict has no 'y_embedder.embedding_table.weight'")
    rows = int(table.shape[0])
    num_classes = args.get("num_classes")
    if isinstance(num_classes, int) and rows in (num_classes, num_classes + 1):
        null_class = rows == num_classes + 1
    else:  # official SiTs are always built with a dropout row: the last row is the null class
        num_classes, null_class = rows - 1, True
    fc1 = state.get("blocks.0.mlp.fc1.weight")
    mlp_ratio = float(fc1.shape[0]) / width if fc1 is not None else 4.0

    if model_name is not None:
        # A named architecture wins over the detected one: a checkpoint of another size then fails the strict
        # key/shape check with the mismatched keys named. Data-dependent fields stay as detected.
        defaults = MODELS.get(model_name).defaults  # unknown names fail here, with suggestions
        if not MODELS.canonical(model_name).startswith("SiT-"):
            raise IrepaError(f"{model_name} is not a SiT architecture, but the checkpoint holds SiT weights")
        patch_size = defaults["patch_size"]
        kwargs = {
            "input_size": side * patch if (side * patch) % patch_size == 0 else side * patch_size,
            "in_channels": in_channels,
            "mlp_ratio": mlp_ratio,
            "num_classes": num_classes,
            "null_class": null_class,
            "qk_norm": "blocks.0.attn.q_norm.weight" in state,
            "time_interval": "h_embedder.mlp.0.weight" in state,
            **defaults,
        }
        return MODELS.canonical(model_name), {key: kwargs[key] for key in _KWARG_ORDER}
    arg_model = args.get("model")
    num_heads = _head_count(width, state, [arg_model] if isinstance(arg_model, str) else [])
    kwargs: dict[str, Any] = {
        "input_size": side * patch,
        "patch_size": patch,
        "in_channels": in_channels,
        "hidden_size": width,
        "depth": len(block_ids),
        "num_heads": num_heads,
        "mlp_ratio": mlp_ratio,
        "num_classes": num_classes,
        "null_class": null_class,
        "qk_norm": "blocks.0.attn.q_norm.weight" in state,
        "time_interval": "h_embedder.mlp.0.weight" in state,
    }
    if patch not in PATCH_SIZES:
        raise IrepaError(f"SiT patch size {patch} is not one of the registered {PATCH_SIZES}")
    name = next(
        (
            f"SiT-{size_name}/{patch}"
            for size_name, size in SIT_SIZES.items()
            if (size["depth"], size["hidden_size"], size["num_heads"]) == (len(block_ids), width, num_heads)
        ),
        None,
    )
    if name is None:
        # A non-standard size: built by a registered factory of the same patch with every field given explicitly.
        # The factory is only a builder, never a label (architecture_label says "custom"), and args.model is not
        # used for it: a run's args can name a size its weights are not (issue 10, item 13).
        name = f"SiT-S/{patch}"
    return name, kwargs


def is_jit_state(state: Mapping[str, torch.Tensor]) -> bool:
    """Whether ``state`` (prefixes stripped) is a JiT state dict: it has the bottleneck patch embedding."""
    return "x_embedder.proj1.weight" in state


def detect_jit_architecture(
    state: Mapping[str, torch.Tensor], *, model_name: str | None = None, args: Mapping[str, Any] | None = None
) -> tuple[str, dict[str, Any]]:
    """Infer ``(registry name, JiT kwargs)`` from a JiT state dict in the official layout.

    Args:
        state: JiT keys only (no projectors).
        model_name: Force this registry name (``"JiT-B/16"``): its depth / width / heads / patch / bottleneck /
            in-context start win, so a checkpoint of another size fails the strict load naming the keys.
        args: The checkpoint's ``args`` (``model``, ``class_num``, ``attn_dropout``, ``proj_dropout`` are used).

    Raises:
        IrepaError: An architecture that cannot be determined.
    """
    args = dict(args or {})
    proj1, proj2 = state["x_embedder.proj1.weight"], state.get("x_embedder.proj2.weight")
    if proj1.ndim != 4 or proj1.shape[2] != proj1.shape[3] or proj2 is None or proj2.ndim != 4:
        raise IrepaError("JiT state dict has no square-patch x_embedder.proj1 / 1x1 x_embedder.proj2 weights")
    width, bottleneck = int(proj2.shape[0]), int(proj1.shape[0])
    in_channels, patch = int(proj1.shape[1]), int(proj1.shape[2])
    block_ids = sorted({int(m.group(1)) for k in state if (m := re.match(r"blocks\.(\d+)\.", k))})
    if not block_ids or block_ids != list(range(len(block_ids))):
        raise IrepaError(f"JiT state dict has no contiguous blocks.0..N (found block indices {block_ids[:8]})")
    pos = state.get("pos_embed")
    if pos is None or pos.ndim != 3 or math.isqrt(int(pos.shape[1])) ** 2 != pos.shape[1]:
        raise IrepaError("JiT state dict has no 'pos_embed' (1, T, D) of a square grid: cannot tell the input size")
    side = math.isqrt(int(pos.shape[1]))
    table = state.get("y_embedder.embedding_table.weight")
    if table is None:
        raise IrepaError("JiT state dict has no 'y_embedder.embedding_table.weight'")
    rows, num_classes = int(table.shape[0]), args.get("class_num")
    if isinstance(num_classes, int) and rows in (num_classes, num_classes + 1):
        null_class = rows == num_classes + 1
    else:  # upstream always builds the table with the null row
        num_classes, null_class = rows - 1, True
    q_norm = state.get("blocks.0.attn.q_norm.weight")
    posemb = state.get("in_context_posemb")
    w12 = state.get("blocks.0.mlp.w12.weight")
    mlp_ratio = 4.0
    if w12 is not None and int(w12.shape[0]) // 2 != int(int(width * mlp_ratio) * 2 / 3):
        raise IrepaError(f"JiT SwiGLU width {int(w12.shape[0]) // 2} is not the standard mlp_ratio 4 of width {width}")
    detected: dict[str, Any] = {
        "input_size": side * patch,
        "patch_size": patch,
        "in_channels": in_channels,
        "hidden_size": width,
        "depth": len(block_ids),
        "num_heads": width // int(q_norm.shape[0]) if q_norm is not None else None,
        "mlp_ratio": mlp_ratio,
        "bottleneck_dim": bottleneck,
        "in_context_len": int(posemb.shape[1]) if posemb is not None else 0,
        "in_context_start": None,
        "num_classes": num_classes,
        "null_class": null_class,
        "qk_norm": q_norm is not None,
        "attn_drop": float(args.get("attn_dropout", 0.0) or 0.0),
        "proj_drop": float(args.get("proj_dropout", 0.0) or 0.0),
    }
    arg_model = args.get("model")
    name = model_name or (arg_model if isinstance(arg_model, str) and arg_model in MODELS else None)
    if name is not None:
        # A named architecture wins over the detected one: a checkpoint of another size then fails the strict
        # key/shape check with the mismatched keys named. Data-dependent fields stay as detected.
        factory = MODELS.get(name)  # unknown names fail here, with suggestions
        if not MODELS.canonical(name).startswith("JiT-"):
            raise IrepaError(f"{name} is not a JiT architecture, but the checkpoint holds JiT weights")
        defaults = factory.defaults
        if (side * patch) % defaults["patch_size"]:
            detected["input_size"] = side * defaults["patch_size"]
        return MODELS.canonical(name), {**detected, **defaults}
    for size_name, size in JIT_SIZES.items():
        if (size["depth"], size["hidden_size"], size["bottleneck_dim"]) == (len(block_ids), width, bottleneck):
            detected.update(size)
            name = f"JiT-{size_name}/{patch}"
            break
    if detected["num_heads"] is None or (detected["in_context_len"] and detected["in_context_start"] is None):
        raise IrepaError(
            f"cannot tell the attention heads / in-context start block of a JiT of depth {len(block_ids)} and width "
            f"{width} from its weights; name the architecture (irepa convert --model JiT-B/16, or model_name=...)"
        )
    # A non-standard size or patch: the closest registered name, every field given explicitly.
    return (name if name in MODELS else f"JiT-B/{16 if patch not in (16, 32) else patch}"), detected


def registered_architecture(kwargs: Mapping[str, Any]) -> str | None:
    """The registered SiT / JiT name whose size equals these constructor arguments (MLP ratio 4), or ``None``."""
    if float(kwargs.get("mlp_ratio", 4.0)) != 4.0:
        return None
    for name in MODELS.list("JiT-*" if "bottleneck_dim" in kwargs else "SiT-*"):
        if all(kwargs.get(key) == value for key, value in MODELS.get(name).defaults.items()):
            return name
    return None


def architecture_label(kwargs: Mapping[str, Any]) -> str:
    """What a SiT / JiT with these constructor arguments is: a registered name, or a custom config with its sizes.

    The registered name is the one whose size (depth, width, heads, patch; for JiT also the bottleneck and the
    in-context start block) equals ``kwargs`` and whose MLP ratio is the standard 4, whatever name the model was
    built or labelled with elsewhere.

    Example:
        ``architecture_label(sit_kwargs)`` is ``"SiT-XL/2"`` for depth 28, width 1152, 16 heads, patch 2, and
        ``"custom SiT config (depth 2, width 64, 4 heads, patch 2)"`` for a tiny test model.
    """
    name = registered_architecture(kwargs)
    if name is not None:
        return name
    jit = "bottleneck_dim" in kwargs
    sizes = f"depth {kwargs['depth']}, width {kwargs['hidden_size']}, {kwargs['num_heads']} heads, "
    sizes += f"patch {kwargs['patch_size']}"
    if jit:
        sizes += f", bottleneck {kwargs['bottleneck_dim']}"
    if float(kwargs.get("mlp_ratio", 4.0)) != 4.0:
        sizes += f", mlp ratio {float(kwargs['mlp_ratio']):g}"
    return f"custom {'JiT' if jit else 'SiT'} config ({sizes})"


# ----------------------------------------------------------------------------------------------------------------------
# Projectors and latent statistics


@dataclasses.dataclass
class ProjectorInfo:
    """What the official projectors are (one per encoder), read from their weights.

    Attributes:
        kind: ``"mlp"``, ``"linear"`` or ``"conv"`` (irepa projector kinds).
        layout: ``"repa"`` (``projectors.K.{0,2,4}``) or ``"irepa"`` (``projectors.K.projection_layer.*``).
        in_dim: Diffusion token width.
        out_dims: Encoder width per projector.
        hidden_dim: MLP hidden width (2048 officially), None for other kinds.
        kernel_size: Conv kernel size, None for other kinds.
    """

    kind: str
    layout: str
    in_dim: int
    out_dims: list[int]
    hidden_dim: int | None
    kernel_size: int | None


def _convert_projectors(
    entries: Mapping[str, torch.Tensor],
) -> tuple[dict[str, torch.Tensor], ProjectorInfo]:
    """Official ``projectors.*`` keys → aligner keys ``projectors.K.net.*`` plus what they are."""
    by_index: dict[int, dict[str, torch.Tensor]] = {}
    layouts = set()
    for key, value in entries.items():
        m = re.match(r"projectors\.(\d+)\.(projection_layer\.)?(.+)$", key)
        if not m:
            raise IrepaError(
                f"unrecognized projector key {key!r} (expected projectors.K.* or projectors.K.projection_layer.*)"
            )
        layouts.add("irepa" if m.group(2) else "repa")
        by_index.setdefault(int(m.group(1)), {})[m.group(3)] = value
    if len(layouts) > 1:
        raise IrepaError("checkpoint mixes the REPA and iREPA projector key layouts")
    layout = layouts.pop()
    if sorted(by_index) != list(range(len(by_index))):
        raise IrepaError(f"projector indices are not contiguous from 0: {sorted(by_index)}")
    converted: dict[str, torch.Tensor] = {}
    kinds, in_dims, out_dims, hidden_dims, kernels = set(), set(), [], set(), set()
    for index, params in sorted(by_index.items()):
        if set(params) == {f"{i}.{p}" for i in (0, 2, 4) for p in ("weight", "bias")}:
            kind = "mlp"
            in_dims.add(int(params["0.weight"].shape[1]))
            hidden_dims.add(int(params["0.weight"].shape[0]))
            out_dims.append(int(params["4.weight"].shape[0]))
        elif set(params) == {"weight", "bias"} and params["weight"].ndim in (2, 4):
            w = params["weight"]
            kind = "conv" if w.ndim == 4 else "linear"
            in_dims.add(int(w.shape[1]))
            out_dims.append(int(w.shape[0]))
            if w.ndim == 4:
                if w.shape[2] != w.shape[3]:
                    raise IrepaError(f"projector {index} has a non-square conv kernel {tuple(w.shape[2:])}")
                kernels.add(int(w.shape[2]))
        else:
            raise IrepaError(f"projector {index} has an unrecognized parameter set: {', '.join(sorted(params))}")
        kinds.add(kind)
        for name, value in params.items():
            converted[f"projectors.{index}.net.{name}"] = value
    if len(kinds) > 1 or len(in_dims) > 1 or len(hidden_dims) > 1 or len(kernels) > 1:
        raise IrepaError("the checkpoint's projectors differ in kind or shape; irepa's aligner uses one kind for all")
    kind = kinds.pop()
    info = ProjectorInfo(
        kind=kind,
        layout=layout,
        in_dim=in_dims.pop(),
        out_dims=out_dims,
        hidden_dim=hidden_dims.pop() if hidden_dims else None,
        kernel_size=kernels.pop() if kernels else None,
    )
    return converted, info


def _bn_normalization(bn: Mapping[str, torch.Tensor]) -> dict[str, Any]:
    """REPA-E's latent BatchNorm (affine=False) → per-channel mean/std, as REPA-E's sampler decodes (no eps)."""
    if "running_mean" not in bn or "running_var" not in bn:
        raise IrepaError(f"REPA-E 'bn' entries are incomplete: {', '.join(sorted(bn))}")
    return {
        "kind": "per-channel",
        "mean": bn["running_mean"].double().flatten().tolist(),
        "std": bn["running_var"].double().sqrt().flatten().tolist(),
    }


def load_latent_stats(path: str | Path) -> dict[str, Any]:
    """Read an iREPA / REPA-E latent statistics file (``latents_scale`` = 1/std, ``latents_bias`` = mean).

    Returns:
        ``{"kind": "per-channel", "mean": [...], "std": [...]}``.
    """
    obj = read_checkpoint_file(path)
    if not isinstance(obj, Mapping) or "latents_scale" not in obj or "latents_bias" not in obj:
        found = ", ".join(sorted(obj)) if isinstance(obj, Mapping) else type(obj).__name__
        raise IrepaError(f"latent stats file {str(path)!r} must hold latents_scale and latents_bias (found {found})")
    scale = torch.as_tensor(obj["latents_scale"]).double().flatten()
    bias = torch.as_tensor(obj["latents_bias"]).double().flatten()
    if scale.shape != bias.shape or bool((scale <= 0).any()):
        raise IrepaError(f"latent stats file {str(path)!r} has mismatched or non-positive scales")
    return {"kind": "per-channel", "mean": bias.tolist(), "std": (1.0 / scale).tolist()}


# ----------------------------------------------------------------------------------------------------------------------
# The whole checkpoint


@dataclasses.dataclass
class OfficialCheckpoint:
    """An official checkpoint, split into irepa's pieces.

    Attributes:
        path: The file read.
        origin: ``"repa"``, ``"irepa"``, ``"repa-e"`` (SiT), ``"jit"`` or ``"irepa-jit"`` (JiT with REPA/iREPA).
        container: ``"training-dict"`` (``model``/``ema``/``args``/... or JiT's ``model_ema1``/...) or
            ``"state-dict"`` (bare weights).
        which: ``"ema"``, ``"ema2"`` (JiT's second EMA) or ``"model"``: which weights were taken.
        model_name: Registry name of the factory that builds it (``"SiT-XL/2"``, ``"JiT-B/16"``); for a size that
            no registered name has, a factory of the same family and patch (every field is in ``model_kwargs``).
        model_kwargs: Full model kwargs; ``build_model(model_name, **model_kwargs)``.
        state_dict: Model weights in irepa's (= the official) key layout.
        projectors: Projector weights in the aligner layout (``projectors.K.net.*``); empty if none.
        projector_info: What the projectors are, or None.
        latent_normalization: From REPA-E's ``bn`` buffers, or None.
        args: The pickled ``args`` as a plain dict (None for bare state dicts).
        steps: Training steps recorded in the file (JiT records epochs: None), or None.
        architecture: What the weights are, from their shapes (:func:`architecture_label`): a registered name or
            ``"custom SiT config (depth …, width …, … heads, patch …)"``.
        warnings: One line each, e.g. the checkpoint's ``args.model`` naming another architecture than its weights.
    """

    path: Path
    origin: str
    container: str
    which: str
    model_name: str
    model_kwargs: dict[str, Any]
    state_dict: dict[str, torch.Tensor]
    projectors: dict[str, torch.Tensor]
    projector_info: ProjectorInfo | None
    latent_normalization: dict[str, Any] | None
    args: dict[str, Any] | None
    steps: int | None
    architecture: str = ""
    warnings: list[str] = dataclasses.field(default_factory=list)

    def build_model(self, device: torch.device | str = "cpu") -> nn.Module:
        """The model with these weights, in eval mode (built on ``meta``, weights assigned, then moved)."""
        from irepa.models.base import build_model

        with torch.device("meta"):
            model = build_model(self.model_name, **self.model_kwargs)
        load_state_dict_checked(model, self.state_dict, what=f"checkpoint {str(self.path)!r}")
        return model.to(device).eval()

    def align_settings(self) -> dict[str, Any]:
        """The alignment recipe of the run (``align:`` section fields), from ``args`` and the projector weights."""
        args = self.args or {}
        out: dict[str, Any] = {}
        if args.get("enable_repa") is False and self.projector_info is None:  # JiT: enc_type is set but unused
            return out
        enc = args.get("enc_type")
        if isinstance(enc, str) and enc and enc != "None":
            out["encoders"] = [e.strip() for e in enc.split(",") if e.strip()]
        if isinstance(args.get("encoder_depth"), int):
            out["depth"] = args["encoder_depth"]
        if self.projector_info is not None:
            out["projector"] = self.projector_info.kind
            if self.projector_info.hidden_dim is not None:
                out["projector_dim"] = self.projector_info.hidden_dim
            if self.projector_info.kernel_size is not None:
                out["kernel_size"] = self.projector_info.kernel_size
        spnorm = args.get("spnorm_method")
        if isinstance(spnorm, str):
            out["target_norm"] = "spatial" if spnorm == "zscore" else "none"
            if spnorm == "zscore" and args.get("zscore_alpha") is not None:
                out["gamma"] = float(args["zscore_alpha"])
        coeff = args.get("proj_coeff")
        if coeff is not None:
            with contextlib.suppress(ValueError):  # e.g. a non-numeric string: leave the weight unset
                out["weight"] = float(str(coeff).split(",")[0])
        return out


def _plain(value: Any) -> Any:
    """Convert ``args`` values to YAML/JSON-safe Python values."""
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, argparse.Namespace):
        return _plain(vars(value))
    return str(value)


def load_official_checkpoint(
    path: str | Path, *, which: str = "auto", model_name: str | None = None
) -> OfficialCheckpoint:
    """Read an official REPA / iREPA / REPA-E / JiT checkpoint and split it into model weights, projectors and stats.

    Args:
        path: The ``.pt`` file (training dict or bare state dict).
        which: ``"auto"`` (the EMA used for sampling — ``ema``, JiT's ``model_ema1`` — if present, else the bare state
            dict), ``"ema"``, ``"ema2"`` (JiT's ``model_ema2``) or ``"model"``.
        model_name: Force the architecture name (e.g. ``"SiT-XL/2"``, ``"JiT-B/16"``); by default it is detected.

    Raises:
        IrepaError: Unreadable file, unexpected content, or weights that do not fit the (detected or named)
            architecture — the message names the mismatched keys.
    """
    if which not in ("auto", "ema", "ema2", "model"):
        raise IrepaError(f"which must be 'auto', 'ema', 'ema2' or 'model', got {which!r}")
    path = Path(path)
    obj = read_checkpoint_file(path)
    args: dict[str, Any] | None = None
    steps: int | None = None
    if _is_state_dict(obj):
        if which == "model":
            raise IrepaError(
                f"checkpoint {str(path)!r} is a bare state dict (REPA's released last.pt holds EMA weights); "
                "use --which auto"
            )
        container, chosen, raw = "state-dict", "ema", obj
    elif isinstance(obj, Mapping) and ("model_ema1" in obj or "model_ema2" in obj):  # JiT: EMAs of the Denoiser
        container = "training-dict"
        chosen = "ema" if which == "auto" else which
        key = _JIT_ENTRIES[chosen]
        if key not in obj:
            raise IrepaError(f"checkpoint {str(path)!r} has no {key!r} entry (it has: {', '.join(sorted(obj))})")
        raw = obj[key]
        if not _is_state_dict(raw):
            raise IrepaError(f"checkpoint {str(path)!r}: entry {key!r} is not a state dict of tensors")
        if obj.get("args") is not None:
            args = _plain(obj["args"])
            if not isinstance(args, dict):
                raise IrepaError(f"checkpoint {str(path)!r}: 'args' is a {type(obj['args']).__name__}, not a Namespace")
    elif isinstance(obj, Mapping) and ("ema" in obj or "model" in obj):
        container = "training-dict"
        chosen = "ema" if which == "auto" else which
        if chosen == "ema2":
            raise IrepaError(f"checkpoint {str(path)!r} has one EMA ('ema'); 'ema2' exists only in JiT checkpoints")
        if chosen not in obj:
            raise IrepaError(f"checkpoint {str(path)!r} has no {chosen!r} entry (it has: {', '.join(sorted(obj))})")
        raw = obj[chosen]
        if not _is_state_dict(raw):
            raise IrepaError(f"checkpoint {str(path)!r}: entry {chosen!r} is not a state dict of tensors")
        if obj.get("args") is not None:
            args = _plain(obj["args"])
            if not isinstance(args, dict):
                raise IrepaError(f"checkpoint {str(path)!r}: 'args' is a {type(obj['args']).__name__}, not a Namespace")
        steps = obj.get("steps") if isinstance(obj.get("steps"), int) else None
    else:
        found = ", ".join(sorted(map(str, obj))[:8]) if isinstance(obj, Mapping) else type(obj).__name__
        raise IrepaError(
            f"checkpoint {str(path)!r} is neither a SiT state dict nor a training dict with 'ema'/'model' "
            f"(found {found})"
        )

    state = _rename_legacy_decoder_blocks(_strip_prefixes(raw))
    projector_entries = {k: v for k, v in state.items() if k.startswith("projectors.")}
    bn = {k[3:]: v for k, v in state.items() if k.startswith("bn.")}
    sit_state = {k: v for k, v in state.items() if not k.startswith(("projectors.", "bn."))}

    projectors, info = _convert_projectors(projector_entries) if projector_entries else ({}, None)
    jit = is_jit_state(sit_state)
    if jit:
        name, kwargs = detect_jit_architecture(sit_state, model_name=model_name, args=args)
    else:
        name, kwargs = detect_architecture(sit_state, model_name=model_name, args=args)
    with torch.device("meta"):
        expected = MODELS.get(name)(**kwargs).state_dict()
    problem = state_dict_mismatch(expected, sit_state)
    if problem:
        hint = ""
        arg_model = (args or {}).get("model")
        if (
            model_name is None
            and isinstance(arg_model, str)
            and arg_model in MODELS
            and MODELS.canonical(arg_model) == name
        ):
            # JiT: a registered args.model supplies the in-context start block, which no shape shows.
            hint = " (the checkpoint's args.model names it; pass --model with the architecture of the weights)"
        raise IrepaError(f"checkpoint {str(path)!r} does not match {name} {_arch_summary(kwargs)}{hint}: {problem}")
    if info is not None and info.in_dim != kwargs["hidden_size"]:
        raise IrepaError(f"projectors take width {info.in_dim} but the blocks output {kwargs['hidden_size']}")

    architecture = architecture_label(kwargs)
    warnings = []
    arg_model = (args or {}).get("model")
    if model_name is None and isinstance(arg_model, str) and arg_model in MODELS:
        named = MODELS.canonical(arg_model)
        if named != architecture:
            # The weights were built by the run, the args merely describe it: the weights win (the detection above
            # never takes a size from args.model that the shapes contradict).
            defaults = MODELS.get(named).defaults
            sizes = f"depth {defaults['depth']}, width {defaults['hidden_size']}, {defaults['num_heads']} heads"
            warnings.append(
                f"the checkpoint's args name the model {named} ({sizes}) but its weights are {architecture}; "
                "converting what the weights are"
            )

    args_keys = set(args or {})
    if jit:
        origin = "irepa-jit" if info is not None or (args or {}).get("enable_repa") is True else "jit"
    elif bn or {"bn_momentum", "vae_align_proj_coeff"} & args_keys:
        origin = "repa-e"
    elif (info is not None and info.layout == "irepa") or {"projection_layer_type", "spnorm_method"} & args_keys:
        origin = "irepa"
    else:
        origin = "repa"
    return OfficialCheckpoint(
        path=path,
        origin=origin,
        container=container,
        which=chosen,
        model_name=name,
        model_kwargs=kwargs,
        state_dict=sit_state,
        projectors=projectors,
        projector_info=info,
        latent_normalization=_bn_normalization(bn) if bn else None,
        args=args,
        steps=steps,
        architecture=architecture,
        warnings=warnings,
    )


def _arch_summary(kwargs: Mapping[str, Any]) -> str:
    return (
        f"(depth {kwargs['depth']}, width {kwargs['hidden_size']}, patch {kwargs['patch_size']}, "
        f"{kwargs['in_channels']} channels)"
    )


def official_space(
    ckpt: OfficialCheckpoint, *, vae: str | None = None, latent_normalization: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """The data ``space`` of an official checkpoint's snapshot (latent space, VAE id, normalization, sizes).

    JiT checkpoints are pixel space (``{"kind": "pixel", ...}``).

    REPA: SD-VAE ft-mse latents scaled by 0.18215. iREPA-ldm: per-channel statistics from a separate file
    (``sdvae-ft-mse-f8d4-latents-stats.pt``, pass it as ``latent_normalization=load_latent_stats(...)``).
    REPA-E: per-channel statistics from the checkpoint's ``bn`` buffers; its end-to-end tuned VAE is stored in the
    training dict's ``vae`` entry and is not converted here, so ``vae`` must name a converted copy.

    Raises:
        IrepaError: When the normalization or the VAE cannot be known and was not given.
    """
    kwargs = ckpt.model_kwargs
    channels, size = kwargs["in_channels"], kwargs["input_size"]
    args = ckpt.args or {}
    if ckpt.origin in ("jit", "irepa-jit"):  # pixel space: images in [-1, 1], nothing to decode
        if vae is not None or latent_normalization is not None:
            raise IrepaError("JiT checkpoints are pixel-space models: --vae and --latent-stats do not apply")
        return {"kind": "pixel", "channels": channels, "size": [size, size], "image_size": [size, size]}
    norm: Mapping[str, Any] | None = latent_normalization or ckpt.latent_normalization
    if norm is None and ckpt.origin == "repa":
        norm = {"kind": "sd-scalar", "scale": SD_VAE_SCALE, "bias": 0.0}
    if norm is None:
        raise IrepaError(
            f"this {ckpt.origin} checkpoint was trained on per-channel normalized latents whose statistics are not "
            "stored in it; pass the statistics file (e.g. --latent-stats sdvae-ft-mse-f8d4-latents-stats.pt)"
        )
    if norm.get("kind") == "per-channel" and len(norm.get("mean", [])) != channels:
        raise IrepaError(f"latent statistics have {len(norm.get('mean', []))} channels but the model takes {channels}")
    if vae is None:
        if ckpt.origin == "repa-e":
            raise IrepaError(
                "REPA-E checkpoints carry their own end-to-end tuned VAE; name the converted VAE to decode with "
                f"(--vae ID_OR_DIR; the run used {args.get('vae', 'an unrecorded VAE')!r})"
            )
        if channels != 4:
            raise IrepaError(f"cannot guess the VAE of a {channels}-channel latent space; pass --vae ID_OR_DIR")
        # The training VAE of REPA and iREPA-ldm (REPA's generate.py decodes with ft-ema by default).
        vae = "stabilityai/sd-vae-ft-mse"
    factor = 8 if channels == 4 else 16
    resolution = args.get("resolution")
    image_size = resolution if isinstance(resolution, int) else size * factor
    return {
        "kind": "latent",
        "vae": vae,
        "normalization": dict(norm),
        "channels": channels,
        "size": [size, size],
        "image_size": [image_size, image_size],
    }
