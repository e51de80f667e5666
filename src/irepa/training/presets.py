"""Named training presets: the YAML recipes shipped in ``irepa/configs/`` (also at ``configs/`` in the repository).

A preset is an ordinary config file. It may start from another preset with a top-level ``preset: NAME`` key (the
named preset is the lower layer, the file's own keys override it); cycles are errors.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Any

from irepa.config import merge, read_yaml
from irepa.errors import ConfigError

__all__ = ["list_presets", "load_preset", "preset_path"]


def _configs_dir() -> Path:
    return Path(str(resources.files("irepa") / "configs"))


def list_presets() -> list[str]:
    """Names of the shipped presets, sorted."""
    folder = _configs_dir()
    return sorted(p.stem for p in folder.glob("*.yaml")) if folder.is_dir() else []


def preset_path(name: str) -> Path:
    """The YAML file of preset ``name``.

    Raises:
        ConfigError: Unknown preset (with close matches and the list of presets).
    """
    path = _configs_dir() / f"{name}.yaml"
    if not path.is_file():
        import difflib

        known = list_presets()
        close = difflib.get_close_matches(name, known, n=2, cutoff=0.5)
        hint = f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
        raise ConfigError(f"unknown preset {name!r}{hint} (presets: {', '.join(known)})")
    return path


def load_preset(name: str, _seen: tuple[str, ...] = ()) -> dict[str, Any]:
    """The config layer of preset ``name`` as a nested dict, with ``preset:`` inheritance resolved."""
    if name in _seen:
        raise ConfigError(f"preset inheritance cycle: {' -> '.join((*_seen, name))}")
    data = dict(read_yaml(preset_path(name)))
    parent = data.pop("preset", None)
    if parent is None:
        return data
    if not isinstance(parent, str):
        raise ConfigError(f"preset {name!r}: 'preset' must name another preset, got {parent!r}")
    return merge(load_preset(parent, (*_seen, name)), data)
