"""Inference snapshots: one self-describing safetensors file per model (what ``irepa sample`` loads).

A snapshot holds the (EMA) weights under their state-dict names and, in the safetensors header (string → string),
everything needed to use them:

=================  ==========================================================================================
header key         value
=================  ==========================================================================================
``format``         ``"irepa-inference/1"``
``model``          JSON ``{"name": "SiT-XL/2", "kwargs": {...}}``: ``build_model(name, **kwargs)`` rebuilds it
``diffusion``      JSON ``{"path": "linear" | "cosine", ...}``
``space``          JSON ``{"kind": "latent" | "pixel", "vae": id, "normalization": {...}, "channels": C,
                   "size": [h, w], "image_size": [H, W]}``; ``normalization`` is ``{"kind": "sd-scalar",
                   "scale": s, "bias": b}`` (``z·s + b``, REPA) or ``{"kind": "per-channel", "mean": [...],
                   "std": [...]}`` (``(z − mean)/std``, iREPA / REPA-E)
``step``           JSON int (optimizer steps) or null
``ema``            JSON bool: the weights are an EMA
``config``         the resolved training config as YAML text (empty if unknown)
``source``         JSON provenance, e.g. the official checkpoint a snapshot was converted from (optional)
``extra``          JSON, free-form (optional)
``irepa_version``  the irepa version that wrote the file
=================  ==========================================================================================

Loading builds the model from ``model`` on the ``meta`` device and assigns the stored tensors (no random init),
with a strict key and shape check whose error names the mismatched keys.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import nn

from irepa.errors import IrepaError
from irepa.utils.state_dict import state_dict_mismatch

__all__ = [
    "SNAPSHOT_FORMAT",
    "load_inference",
    "load_state_dict_checked",
    "read_inference_metadata",
    "save_inference",
    "state_dict_mismatch",
]

SNAPSHOT_FORMAT = "irepa-inference/1"
_JSON_KEYS = ("model", "diffusion", "space", "step", "ema", "source", "extra")
_METADATA_KEYS = ("diffusion", "space", "step", "ema", "config", "source", "extra")


# ----------------------------------------------------------------------------------------------------------------------
# State-dict matching


def load_state_dict_checked(model: nn.Module, state_dict: Mapping[str, torch.Tensor], *, what: str) -> None:
    """``model.load_state_dict(state_dict, strict=True)`` with one clear error naming every kind of mismatch.

    If ``model`` lives on the ``meta`` device, the tensors are assigned rather than copied (no allocation twice).

    Raises:
        IrepaError: ``"<what> does not match the model: missing keys ...; unexpected keys ...; shape ..."``.
    """
    problem = state_dict_mismatch(model.state_dict(), state_dict)
    if problem:
        raise IrepaError(f"{what} does not match the model architecture: {problem}")
    on_meta = any(t.is_meta for t in model.state_dict().values())
    model.load_state_dict(dict(state_dict), strict=True, assign=on_meta)


# ----------------------------------------------------------------------------------------------------------------------
# Save


def _check_sampling_metadata(metadata: Mapping[str, Any]) -> None:
    """The header entries sampling relies on: ``diffusion.path`` and a ``space`` it can decode."""
    diffusion = metadata.get("diffusion")
    # The path name is resolved by irepa.diffusion.paths.get_path when sampling (models sit below diffusion).
    if not isinstance(diffusion, Mapping) or not isinstance(diffusion.get("path"), str) or not diffusion["path"]:
        raise IrepaError(f"snapshot metadata 'diffusion' must be a mapping with a 'path' name, got {diffusion!r}")
    space = metadata.get("space")
    if not isinstance(space, Mapping) or space.get("kind") not in ("latent", "pixel"):
        raise IrepaError(f"snapshot metadata 'space' must be a mapping with kind 'latent' or 'pixel', got {space!r}")
    if space["kind"] == "latent":
        norm = space.get("normalization")
        if not space.get("vae") or not isinstance(norm, Mapping) or "kind" not in norm:
            raise IrepaError(
                "a latent-space snapshot needs space.vae (the VAE id) and space.normalization ({'kind': ...}) "
                "so that samples can be decoded"
            )


def _check_metadata(metadata: Mapping[str, Any], model: nn.Module) -> None:
    unknown = sorted(set(metadata) - set(_METADATA_KEYS))
    if unknown:
        raise IrepaError(
            f"unknown snapshot metadata key(s) {', '.join(unknown)}; valid: {', '.join(_METADATA_KEYS)} "
            "(put anything else under 'extra')"
        )
    _check_sampling_metadata(metadata)
    space = metadata["space"]
    channels = getattr(model, "in_channels", None)
    if "channels" in space and channels is not None and space["channels"] != channels:
        raise IrepaError(f"snapshot space.channels={space['channels']} but the model takes {channels} channels")
    size = getattr(model, "input_size", None)
    if "size" in space and size is not None:
        declared = space["size"]
        declared = (declared, declared) if isinstance(declared, int) else tuple(declared)
        if declared != tuple(size):
            raise IrepaError(f"snapshot space.size={space['size']} but the model takes inputs of size {list(size)}")
    step = metadata.get("step")
    if step is not None and (not isinstance(step, int) or isinstance(step, bool) or step < 0):
        raise IrepaError(f"snapshot metadata 'step' must be a non-negative int or None, got {step!r}")
    if not isinstance(metadata.get("ema", False), bool):
        raise IrepaError(f"snapshot metadata 'ema' must be a bool, got {metadata['ema']!r}")


def save_inference(
    path: str | Path,
    model: nn.Module,
    *,
    model_name: str,
    model_kwargs: Mapping[str, Any],
    metadata: Mapping[str, Any],
    dtype: torch.dtype | None = None,
) -> None:
    """Write ``model``'s weights and the metadata that makes them usable as one safetensors file (atomically).

    Args:
        path: Output ``.safetensors`` file.
        model: The (EMA) model, unwrapped (no DDP / compile wrapper).
        model_name: Registry name (``"SiT-XL/2"``).
        model_kwargs: Overrides such that ``build_model(model_name, **model_kwargs)`` rebuilds ``model``
            (``model.config`` for a SiT); checked against ``model`` before writing.
        metadata: ``diffusion`` and ``space`` (required), ``step``, ``ema``, ``config`` (mapping or YAML text),
            ``source``, ``extra`` — see the module docstring.
        dtype: Cast floating-point weights to this dtype (e.g. ``torch.bfloat16`` halves the file); default: as is.

    Raises:
        IrepaError: Invalid metadata, or ``model_kwargs`` that do not rebuild ``model``'s architecture.
    """
    from irepa import __version__
    from irepa.models.base import build_model
    from irepa.utils.io import save_safetensors

    _check_metadata(metadata, model)
    try:
        kwargs_json = json.dumps(dict(model_kwargs))
    except TypeError as exc:
        raise IrepaError(f"snapshot model_kwargs must be JSON-serializable: {exc}") from exc
    with torch.device("meta"):
        rebuilt = build_model(model_name, **json.loads(kwargs_json))
    state = model.state_dict()
    problem = state_dict_mismatch(rebuilt.state_dict(), state)
    if problem:
        raise IrepaError(
            f"model_name={model_name!r} with the given model_kwargs does not rebuild this model: {problem}"
        )
    if dtype is not None:
        state = {k: v.to(dtype) if v.is_floating_point() else v for k, v in state.items()}
    config = metadata.get("config")
    config_text = config if isinstance(config, str) else yaml.safe_dump(config, sort_keys=False) if config else ""
    header: dict[str, str] = {
        "format": SNAPSHOT_FORMAT,
        "irepa_version": __version__,
        "model": json.dumps({"name": model_name, "kwargs": json.loads(kwargs_json)}),
        "config": config_text,
    }
    values = {"step": None, "ema": False, **{k: v for k, v in metadata.items() if k != "config"}}
    for key, value in values.items():
        try:
            header[key] = json.dumps(value)
        except TypeError as exc:
            raise IrepaError(f"snapshot metadata {key!r} must be JSON-serializable: {exc}") from exc
    save_safetensors(state, path, metadata=header)


# ----------------------------------------------------------------------------------------------------------------------
# Load


def read_inference_metadata(path: str | Path) -> dict[str, Any]:
    """Parse the header of snapshot ``path`` without reading the weights.

    Returns:
        ``{"format", "irepa_version", "model": {"name", "kwargs"}, "diffusion", "space", "step", "ema",
        "config" (dict, empty if none), "source", "extra"}``.

    Raises:
        IrepaError: Missing, truncated or corrupt file, not an irepa inference snapshot, or a header whose
            ``diffusion``/``space`` entries sampling cannot use.
    """
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise IrepaError(f"inference snapshot {str(path)!r} does not exist")
    try:
        with safe_open(str(path), framework="pt") as f:
            header = dict(f.metadata() or {})
    except Exception as exc:  # safetensors raises several types for truncated/corrupt headers
        raise IrepaError(f"cannot read inference snapshot {str(path)!r} (truncated or not safetensors): {exc}") from exc
    fmt = header.get("format")
    if fmt != SNAPSHOT_FORMAT:
        if isinstance(fmt, str) and fmt.startswith("irepa-inference/"):
            raise IrepaError(f"inference snapshot {str(path)!r} has format {fmt!r}; this irepa reads {SNAPSHOT_FORMAT}")
        raise IrepaError(
            f"{str(path)!r} is not an irepa inference snapshot (no format={SNAPSHOT_FORMAT!r} in its header); "
            "official .pt checkpoints are converted with 'irepa convert'"
        )
    out: dict[str, Any] = {"format": fmt, "irepa_version": header.get("irepa_version")}
    try:
        for key in _JSON_KEYS:
            out[key] = json.loads(header[key]) if key in header else None
        out["config"] = yaml.safe_load(header.get("config") or "") or {}
    except (json.JSONDecodeError, yaml.YAMLError) as exc:
        raise IrepaError(f"inference snapshot {str(path)!r} has a corrupt metadata header: {exc}") from exc
    model = out["model"]
    if (
        not isinstance(model, dict)
        or not isinstance(model.get("name"), str)
        or not isinstance(model.get("kwargs"), dict)
    ):
        raise IrepaError(f"inference snapshot {str(path)!r} has no valid 'model' entry (name + kwargs) in its header")
    try:
        _check_sampling_metadata(out)
    except IrepaError as exc:
        raise IrepaError(f"inference snapshot {str(path)!r}: {exc} (a hand-edited header?)") from exc
    return out


def load_inference(
    path: str | Path, *, device: torch.device | str = "cpu", dtype: torch.dtype | None = None
) -> tuple[nn.Module, dict[str, Any]]:
    """Load an inference snapshot: the model (eval mode, no grad needed) and its metadata.

    Args:
        path: A file written by :func:`save_inference` (or ``irepa convert``).
        device: Where to put the weights.
        dtype: Cast floating-point weights to this dtype (default: as stored).

    Returns:
        ``(model, metadata)`` with metadata as returned by :func:`read_inference_metadata`.

    Raises:
        IrepaError: Unreadable file, not a snapshot, unknown model name, or weights that do not match the
            architecture named in the header (the message lists the mismatched keys).
    """
    from safetensors.torch import load_file

    from irepa.models.base import build_model

    metadata = read_inference_metadata(path)
    name, kwargs = metadata["model"]["name"], metadata["model"]["kwargs"]
    try:
        state = load_file(str(path), device=str(device))
    except Exception as exc:
        raise IrepaError(f"cannot read the weights of inference snapshot {str(path)!r} (truncated?): {exc}") from exc
    if dtype is not None:
        state = {k: v.to(dtype) if v.is_floating_point() else v for k, v in state.items()}
    with torch.device("meta"):
        model = build_model(name, **kwargs)
    load_state_dict_checked(model, state, what=f"inference snapshot {str(path)!r} ({name})")
    return model.eval(), metadata
