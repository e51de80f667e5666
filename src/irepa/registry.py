"""A small name → object registry shared by every zoo (models, encoders, projectors, losses, samplers, metrics).

Example:
    >>> LOSSES = Registry("alignment loss")
    >>> @LOSSES.register("cosine")
    ... def cosine_loss(pred, target): ...
    >>> LOSSES.get("cosine") is cosine_loss
    True
    >>> LOSSES.get("cosin")
    Traceback (most recent call last):
    ...
    irepa.errors.UnknownNameError: unknown alignment loss 'cosin'; did you mean 'cosine'? (known: cosine)
"""

from __future__ import annotations

import difflib
import fnmatch
from collections.abc import Callable, Iterator
from typing import Generic, TypeVar, overload

from irepa.errors import UnknownNameError

T = TypeVar("T")


class Registry(Generic[T]):
    """Maps names to objects (classes, factories, functions or specs).

    Args:
        kind: What the registry holds, used in error messages (e.g. ``"encoder"``).
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, T] = {}
        self._aliases: dict[str, str] = {}

    @overload
    def register(self, name: str, obj: None = None, *, aliases: tuple[str, ...] = ()) -> Callable[[T], T]: ...
    @overload
    def register(self, name: str, obj: T, *, aliases: tuple[str, ...] = ()) -> T: ...

    def register(self, name: str, obj: T | None = None, *, aliases: tuple[str, ...] = ()):
        """Register ``obj`` under ``name`` (directly, or as a decorator when ``obj`` is omitted).

        Raises:
            ValueError: If the name or an alias is already taken (registries never silently overwrite).
        """

        def add(item: T) -> T:
            for key in (name, *aliases):
                if key in self._items or key in self._aliases:
                    raise ValueError(f"{self.kind} {key!r} is already registered")
            self._items[name] = item
            for alias in aliases:
                self._aliases[alias] = name
            return item

        return add if obj is None else add(obj)

    def unregister(self, name: str) -> T:
        """Remove ``name`` (or the entry an alias names) with all its aliases; returns what was registered.

        For plugins and tests that register something for a while (a registry is process-global).

        Raises:
            UnknownNameError: ``name`` is not registered.
        """
        canonical = self.canonical(name)
        self._aliases = {alias: target for alias, target in self._aliases.items() if target != canonical}
        return self._items.pop(canonical)

    def canonical(self, name: str) -> str:
        """Return the registered name for ``name`` or one of its aliases."""
        if name in self._items:
            return name
        if name in self._aliases:
            return self._aliases[name]
        known = sorted(self._items)
        close = difflib.get_close_matches(name, known + sorted(self._aliases), n=3, cutoff=0.5)
        hint = f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
        listing = ", ".join(known) if len(known) <= 12 else f"{len(known)} names, see the list command"
        raise UnknownNameError(f"unknown {self.kind} {name!r}{hint} (known: {listing})")

    def get(self, name: str) -> T:
        """Return the object registered under ``name`` (or an alias).

        Raises:
            UnknownNameError: With close matches ("did you mean ...?") when the name is unknown.
        """
        return self._items[self.canonical(name)]

    def list(self, pattern: str | None = None) -> list[str]:
        """Registered names in registration order, optionally filtered by a shell-style ``pattern``."""
        names = list(self._items)
        return [n for n in names if fnmatch.fnmatchcase(n, pattern)] if pattern else names

    def items(self) -> Iterator[tuple[str, T]]:
        """Iterate over ``(name, object)`` pairs in registration order."""
        return iter(self._items.items())

    def __contains__(self, name: object) -> bool:
        return name in self._items or name in self._aliases

    def __len__(self) -> int:
        return len(self._items)

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, {len(self)} entries)"
