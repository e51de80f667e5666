"""Typed configuration: frozen dataclasses built from layered dicts with strict key and type checking.

Every run configuration in irepa is a tree of frozen dataclasses. A resolved config is built from layers merged in
this order (later wins)::

    dataclass defaults  <  preset YAML  <  config file  <  dotted CLI overrides (``model.depth=4``)

:func:`build` does the merge and the checking: an unknown key or a value of the wrong type raises
:class:`~irepa.errors.ConfigError` naming the dotted key (with close matches for typos). Validation of value
ranges and combinations lives in each dataclass's ``__post_init__`` and raises :class:`ConfigError` too.

A section whose valid keys depend on one of its values (``objective: {name: ..., <that objective's settings>}``)
defines ``from_config_dict(data, prefix)`` (a classmethod building it, with the same checks) and
``to_config_dict()`` (its plain form); :func:`from_dict` and :func:`to_dict` use them.

YAML note: PyYAML reads ``1e-4`` (no dot) as a *string*. Numeric fields therefore accept strings that parse as the
declared number type, so ``lr: 1e-4`` works in files and ``optim.lr=1e-4`` on the command line.

Example:
    >>> from dataclasses import dataclass, field
    >>> @dataclass(frozen=True)
    ... class Optim:
    ...     lr: float = 1e-4
    ...     betas: tuple[float, float] = (0.9, 0.999)
    >>> @dataclass(frozen=True)
    ... class Run:
    ...     steps: int = 10
    ...     optim: Optim = field(default_factory=Optim)
    >>> build(Run, {"optim": {"lr": "3e-4"}}, parse_overrides(["steps=5"]))
    Run(steps=5, optim=Optim(lr=0.0003, betas=(0.9, 0.999)))
"""

from __future__ import annotations

import ast
import dataclasses
import difflib
import inspect
import itertools
import math
import textwrap
import types
import typing
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, TypeVar, Union

import yaml

from irepa.errors import ConfigError, first_line

C = TypeVar("C")

__all__ = [
    "ConfigError",
    "FieldDoc",
    "build",
    "describe",
    "dump_yaml",
    "from_dict",
    "merge",
    "parse_overrides",
    "read_yaml",
    "replace",
    "to_dict",
]


# ----------------------------------------------------------------------------------------------------------------------
# Dict layers


def merge(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    """Deep-merge two nested dicts; values of ``override`` win, nested mappings merge key by key."""
    out: dict[str, Any] = dict(base)
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


def parse_overrides(items: Sequence[str]) -> dict[str, Any]:
    """Turn ``["model.depth=4", "align.encoders=[a,b]"]`` into a nested dict.

    Values are parsed as YAML scalars/flow collections (``4`` → int, ``true`` → bool, ``[a, b]`` → list,
    ``null`` → None); anything else stays a string.

    Raises:
        ConfigError: For an item without ``=`` or with an empty key.
    """
    out: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not key or any(not part for part in key.split(".")):
            raise ConfigError(f"override {item!r} is not of the form key=value (e.g. optim.lr=1e-4)")
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError:
            value = raw
        node = out
        parts = key.split(".")
        for part in parts[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"override {item!r} conflicts with an earlier override of {part!r}")
            node = child
        node[parts[-1]] = value
    return out


def read_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping from ``path``.

    Raises:
        ConfigError: If the file is missing, unreadable, not valid YAML, or not a mapping at the top level.
    """
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"cannot read config file {str(path)!r}: {exc.strerror or exc}") from exc
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {str(path)!r} is not valid YAML: {first_line(exc)}") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {str(path)!r} must hold a mapping at the top level, got {type(data).__name__}")
    return data


# ----------------------------------------------------------------------------------------------------------------------
# Dataclass <-> dict


def build(cls: type[C], *layers: Mapping[str, Any] | None) -> C:
    """Merge ``layers`` (lowest precedence first) over the dataclass defaults and build ``cls``."""
    data: dict[str, Any] = {}
    for layer in layers:
        if layer:
            data = merge(data, layer)
    return from_dict(cls, data)


def from_dict(cls: type[C], data: Mapping[str, Any], *, prefix: str = "") -> C:
    """Build dataclass ``cls`` from a (partial) nested mapping, checking keys and types.

    Missing keys take the dataclass defaults. ``prefix`` is the dotted path of ``cls`` inside the full config and
    is only used in error messages.

    Raises:
        ConfigError: Unknown key, wrong type, or a ``__post_init__`` validation failure.
    """
    if not dataclasses.is_dataclass(cls):
        raise TypeError(f"{cls!r} is not a dataclass")
    if not isinstance(data, Mapping):
        raise ConfigError(f"{prefix.rstrip('.') or 'config'} must be a mapping, got {type(data).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    hints = typing.get_type_hints(cls)
    for key in data:
        if key not in fields:
            close = difflib.get_close_matches(str(key), list(fields), n=2, cutoff=0.6)
            hint = f"; did you mean {' or '.join(prefix + c for c in close)}?" if close else ""
            raise ConfigError(
                f"unknown config key {prefix + str(key)!r}{hint} (valid keys here: {', '.join(sorted(fields))})"
            )
    kwargs = {name: _coerce(hints[name], data[name], prefix + name) for name in fields if name in data}
    try:
        return cls(**kwargs)
    except ConfigError:
        raise
    except (TypeError, ValueError) as exc:
        where = f" in {prefix.rstrip('.')}" if prefix else ""
        raise ConfigError(f"invalid config{where}: {exc}") from exc


def to_dict(obj: Any) -> Any:
    """Convert a config dataclass (recursively) to plain YAML/JSON-safe Python values."""
    if hasattr(obj, "to_config_dict") and not isinstance(obj, type):
        return to_dict(obj.to_config_dict())
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    if isinstance(obj, Mapping):
        return {str(k): to_dict(v) for k, v in obj.items()}
    if isinstance(obj, Path):
        return str(obj)
    return obj


def dump_yaml(obj: Any) -> str:
    """Serialize a config dataclass to YAML (keys in declaration order)."""
    return yaml.safe_dump(to_dict(obj), sort_keys=False, default_flow_style=None, width=120)


def replace(obj: C, overrides: Sequence[str] | Mapping[str, Any]) -> C:
    """Return a copy of config ``obj`` with dotted overrides applied (same checks as :func:`build`)."""
    layer = parse_overrides(overrides) if not isinstance(overrides, Mapping) else overrides
    return build(type(obj), to_dict(obj), layer)


# ----------------------------------------------------------------------------------------------------------------------
# Self-description (``irepa train --help-config``)


@dataclasses.dataclass(frozen=True)
class FieldDoc:
    """One leaf key of a config tree.

    Attributes:
        key: Dotted name (``optim.lr``), as written in config files and ``key=value`` overrides.
        type: The annotation, written like the config errors write it (``float | null``, ``list[str]``).
        default: The default as a plain YAML/JSON-safe value.
        doc: The field's attribute docstring on one line (empty when it has none).
        section_doc: The first line of the docstring of the dataclass holding the field.
    """

    key: str
    type: str
    default: Any
    doc: str
    section_doc: str


def describe(cls: type, prefix: str = "") -> list[FieldDoc]:
    """Every leaf key of config dataclass ``cls`` in declaration order, nested dataclasses expanded.

    The descriptions are the attribute docstrings (a string literal right below a field), read from the source.
    """
    hints = typing.get_type_hints(cls)
    docs = _attribute_docs(cls)
    section_doc = (inspect.getdoc(cls) or "").split("\n", 1)[0]
    out: list[FieldDoc] = []
    for field in dataclasses.fields(cls):
        if not field.init:
            continue
        tp = hints[field.name]
        if dataclasses.is_dataclass(tp):
            out += describe(tp, f"{prefix}{field.name}.")
            continue
        if field.default is not dataclasses.MISSING:
            default = field.default
        elif field.default_factory is not dataclasses.MISSING:
            default = field.default_factory()
        else:
            default = None
        out.append(
            FieldDoc(prefix + field.name, _type_name(tp), to_dict(default), docs.get(field.name, ""), section_doc)
        )
    return out


def _attribute_docs(cls: type) -> dict[str, str]:
    """Field name → the string literal that follows the field in the class body, whitespace collapsed."""
    tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
    body = next(node for node in tree.body if isinstance(node, ast.ClassDef)).body
    docs = {}
    for node, after in itertools.pairwise(body):
        if (
            isinstance(node, ast.AnnAssign)
            and isinstance(node.target, ast.Name)
            and isinstance(after, ast.Expr)
            and isinstance(after.value, ast.Constant)
            and isinstance(after.value.value, str)
        ):
            docs[node.target.id] = " ".join(inspect.cleandoc(after.value.value).split())
    return docs


# ----------------------------------------------------------------------------------------------------------------------
# Type coercion


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin is Literal:
        return " | ".join(repr(a) for a in args)
    if origin in (Union, types.UnionType):
        return " | ".join(_type_name(a) for a in args)
    if tp is type(None):
        return "null"
    if tp is Any:
        return "Any"
    if origin is not None and args:  # list[str], tuple[float, float], dict[str, Any]
        return f"{origin.__name__}[{', '.join('...' if a is Ellipsis else _type_name(a) for a in args)}]"
    return getattr(tp, "__name__", str(tp))


class _NonFiniteError(ConfigError):
    """A float setting given as inf or nan."""


def _coerce(tp: Any, value: Any, key: str) -> Any:
    """Check ``value`` against annotation ``tp`` and convert it (strings → numbers, dicts → dataclasses)."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)

    def fail() -> typing.NoReturn:
        raise ConfigError(f"config key {key!r} expects {_type_name(tp)}, got {value!r} ({type(value).__name__})")

    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(arg, value, key)
            except _NonFiniteError:
                raise  # the value has the right type; say what is wrong with it
            except ConfigError as exc:
                errors.append(exc)
        fail()
    if origin is Literal:
        if value in args:
            return value
        raise ConfigError(f"config key {key!r} must be one of {', '.join(repr(a) for a in args)}, got {value!r}")
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, Mapping):
            fail()
        if hasattr(tp, "from_config_dict"):  # a section whose keys depend on a value (e.g. objective.name)
            return tp.from_config_dict(value, prefix=key + ".")
        return from_dict(tp, value, prefix=key + ".")
    if tp is bool:
        if isinstance(value, bool):
            return value
        fail()
    if tp is int:
        if isinstance(value, bool):
            fail()
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                return int(value.replace("_", ""))
            except ValueError:
                fail()
        fail()
    if tp is float:
        if isinstance(value, bool):
            fail()
        number: float | None = None
        if isinstance(value, (int, float)):
            number = float(value)
        elif isinstance(value, str):
            try:
                number = float(value)
            except ValueError:
                fail()
        if number is None:
            fail()
        if not math.isfinite(number):
            # inf/nan pass every `<`/`>` range check of __post_init__ (nan compares false) and poison a run.
            raise _NonFiniteError(f"config key {key!r} must be a finite number, got {value!r}")
        return number
    if tp is str:
        if isinstance(value, str):
            return value
        fail()
    if tp is Path:
        if isinstance(value, (str, Path)):
            return Path(value)
        fail()
    if origin in (list, tuple, Sequence) or tp in (list, tuple):
        if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple)):
            # A scalar where a list is expected: accept it as a one-element list (``encoders=dinov2-vit-b``).
            value = [value]
        if origin is tuple and args and not (len(args) == 2 and args[1] is Ellipsis):
            if len(value) != len(args):
                raise ConfigError(f"config key {key!r} expects {len(args)} values, got {len(value)}: {value!r}")
            return tuple(_coerce(a, v, f"{key}[{i}]") for i, (a, v) in enumerate(zip(args, value)))
        item_type = args[0] if args else Any
        items = [_coerce(item_type, v, f"{key}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple or tp is tuple else items
    if origin in (dict, Mapping) or tp is dict:
        if not isinstance(value, Mapping):
            fail()
        val_type = args[1] if len(args) == 2 else Any
        return {str(k): _coerce(val_type, v, f"{key}.{k}") for k, v in value.items()}
    if isinstance(tp, type):
        if isinstance(value, tp):
            return value
        fail()
    return value
