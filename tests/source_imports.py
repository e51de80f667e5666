"""The imports written in ``src/irepa`` (module level and inside functions), read with ``ast`` without importing.

Shared by the architecture test (layering, cycles) and the packaging test (extras against imports).
"""

from __future__ import annotations

import ast
import dataclasses
from functools import cache
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"


@dataclasses.dataclass(frozen=True)
class Import:
    """One imported name.

    Attributes:
        module: The importing module (``irepa.cli.metrics``; a package's ``__init__`` is the package's name).
        target: The imported module: for ``from pkg import name`` the submodule ``pkg.name`` when it is one.
        lazy: Not run when the module is imported: inside a function or method (imported when it runs), or under
            ``if TYPE_CHECKING:`` (never run).
        line: Line number in the importing file.
    """

    module: str
    target: str
    lazy: bool
    line: int


def _module_name(path: Path) -> str:
    parts = path.relative_to(SRC).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


@cache
def irepa_modules() -> dict[str, Path]:
    """Every module and package of ``irepa`` by dotted name."""
    return {_module_name(path): path for path in sorted((SRC / "irepa").rglob("*.py"))}


def _deferred(node: ast.AST) -> bool:
    if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
        return True
    return isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)


def _walk(node: ast.AST, lazy: bool):
    for child in ast.iter_child_nodes(node):
        if isinstance(child, (ast.Import, ast.ImportFrom)):
            yield child, lazy
        yield from _walk(child, lazy or _deferred(child))


@cache
def imports() -> tuple[Import, ...]:
    """All imports in ``src/irepa``, as written (absolute: the house style has no relative imports)."""
    modules = irepa_modules()
    found = []
    for module, path in modules.items():
        for node, lazy in _walk(ast.parse(path.read_text(), filename=str(path)), lazy=False):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif node.level == 0 and node.module:
                targets = [
                    f"{node.module}.{alias.name}" if f"{node.module}.{alias.name}" in modules else node.module
                    for alias in node.names
                ]
            else:
                raise AssertionError(f"{path}:{node.lineno}: relative import (the house style uses absolute ones)")
            found += [Import(module, target, lazy, node.lineno) for target in targets]
    return tuple(found)
