"""The package layering of docs/architecture.md, checked on every import written in src/irepa (lazy ones too)."""

from __future__ import annotations

import re
from pathlib import Path

from source_imports import imports, irepa_modules

DOC = Path(__file__).resolve().parents[1] / "docs" / "architecture.md"


def _layers() -> list[list[str]]:
    """The layers of the package map in docs/architecture.md, lowest first (the names on each line)."""
    block = DOC.read_text().split("## Package map and dependency direction", 1)[1].split("```")[1]
    lines = block.strip().splitlines()
    layers = [re.findall(r"irepa(?:\.[a-z_]+)*", lines[0].split("  ")[0])]
    for line in lines[1:]:
        if line.lstrip().startswith("←"):  # a layer; other lines continue the previous line's description
            layers.append(re.findall(r"irepa(?:\.[a-z_]+)*", line.split("  ", 2)[1]))
    return layers


def _layer_of(module: str, layers: list[list[str]]) -> int:
    if module in ("irepa", "irepa.metrics", "irepa.__main__"):  # docstring-only packages; the `python -m` shim
        return 0 if module != "irepa.__main__" else len(layers) - 1
    matches = [
        (len(name), i) for i, names in enumerate(layers) for name in names if f"{module}.".startswith(f"{name}.")
    ]
    assert matches, f"{module} is in no layer of docs/architecture.md"
    return max(matches)[1]


def test_the_documented_layers_cover_every_module():
    layers = _layers()
    assert layers[0] == ["irepa.errors"] and layers[-1] == ["irepa.cli"], layers
    for module in irepa_modules():
        _layer_of(module, layers)


def test_no_module_imports_from_a_layer_above_its_own():
    layers = _layers()
    upward = [
        f"{imp.module}:{imp.line} imports {imp.target}"
        for imp in imports()
        if imp.target.startswith("irepa") and _layer_of(imp.target, layers) > _layer_of(imp.module, layers)
    ]
    assert not upward, upward


def test_no_two_library_modules_import_each_other():
    # Package __init__ files re-export their submodules, which import siblings through the package: not a cycle.
    modules = irepa_modules()
    edges = {
        (imp.module, imp.target)
        for imp in imports()
        if imp.target in modules
        and modules[imp.module].name != "__init__.py"
        and modules[imp.target].name != "__init__.py"
    }
    assert not sorted(f"{a} <-> {b}" for a, b in edges if (b, a) in edges and a < b)
