"""Comparing a state dict with a module before loading it, with one readable line per problem.

Used wherever irepa loads weights it did not just write (encoder weights, inference snapshots, official
checkpoints, training checkpoints), so every "wrong architecture" error names the same three kinds of mismatch.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

__all__ = ["state_dict_mismatch"]


def _natural(key: str) -> list[Any]:
    """Sort key that orders ``blocks.2`` before ``blocks.10``."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", key)]


def _shorten(names: list[str], limit: int) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f" (+{len(names) - limit} more)" if len(names) > limit else "")


def state_dict_mismatch(expected: Mapping[str, Any], found: Mapping[str, Any], *, limit: int = 6) -> str | None:
    """Describe how ``found`` differs from ``expected`` (both name → tensor or shape) in one line; None if they fit.

    Args:
        expected: What the module holds (``module.state_dict()``; ``meta`` tensors and plain shapes work too).
        found: What the file holds.
        limit: How many names to show per kind of mismatch.

    Returns:
        ``"missing keys a, b; unexpected keys c; shape mismatches (found vs expected) d (1, 2) vs (2, 2)"`` or None.
    """

    def shape(value: Any) -> tuple[int, ...]:
        return tuple(value.shape) if hasattr(value, "shape") else tuple(value)

    missing = sorted((k for k in expected if k not in found), key=_natural)
    unexpected = sorted((k for k in found if k not in expected), key=_natural)
    wrong = [
        f"{k} {shape(found[k])} vs {shape(v)}"
        for k, v in expected.items()
        if k in found and hasattr(found[k], "shape") and shape(found[k]) != shape(v)
    ]
    parts = []
    if missing:
        parts.append(f"missing keys {_shorten(missing, limit)}")
    if unexpected:
        parts.append(f"unexpected keys {_shorten(unexpected, limit)}")
    if wrong:
        parts.append(f"shape mismatches (found vs expected) {_shorten(wrong, limit)}")
    return "; ".join(parts) or None
