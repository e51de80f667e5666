"""pyproject.toml's dependencies and extras against the imports actually written in src/irepa, tests and benchmarks.

- Every third-party import in ``src/irepa`` comes from a core dependency, or (inside a function) from an extra that
  ``[tool.irepa.extras]`` declares for the importing module.
- Module-level imports use core dependencies only, so the core install can import every module.
- Every core dependency and every package of an extra is imported by a module it is declared for; ``dev``'s by the
  tests or benchmarks, or run as a tool by the Makefile.
"""

from __future__ import annotations

import ast
import importlib.metadata
import re
import sys
from functools import cache
from pathlib import Path

import pytest

from source_imports import imports

tomllib = pytest.importorskip("tomllib")  # Python 3.11+

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
#: Import paths that need a distribution other than the one providing the module.
INDIRECT = {"torch.utils.tensorboard": "tensorboard"}
#: dev packages used as tools rather than imported, with the Makefile text that runs them.
TOOLS = {"ruff": "ruff check", "pytest-xdist": "PYTEST_ARGS ?= -n auto"}


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _names(requirements: list[str]) -> set[str]:
    """Distribution names of requirement strings, without the project's own ``irepa[...]`` references."""
    names = {_norm(re.split(r"[\s<>=!~;\[]", r, maxsplit=1)[0]) for r in requirements}
    return names - {"irepa"}


CORE = _names(PYPROJECT["project"]["dependencies"])
EXTRAS = {name: _names(reqs) for name, reqs in PYPROJECT["project"]["optional-dependencies"].items()}
DECLARED = PYPROJECT["tool"]["irepa"]["extras"]


@cache
def _provided() -> dict[str, list[str]]:
    return importlib.metadata.packages_distributions()  # top-level import name -> distributions (slow: cached)


@cache
def _distribution(target: str) -> str | None:
    """The distribution an import needs (None for the standard library and irepa itself)."""
    for path, dist in INDIRECT.items():
        if target == path or target.startswith(f"{path}."):
            return dist
    top = target.split(".")[0]
    if top == "irepa" or top in sys.stdlib_module_names:
        return None
    dists = _provided().get(top)
    if not dists:  # an optional package not installed here (wandb): only its own name can declare it
        assert _norm(top) in CORE.union(*EXTRAS.values()), f"no distribution provides {top!r} (imported as {target})"
        return _norm(top)
    return _norm(dists[0])


def _covers(prefixes: list[str], module: str) -> bool:
    return any(module == p or module.startswith(f"{p}.") for p in prefixes)


def _third_party_imports():
    return [(imp, dist) for imp in imports() if (dist := _distribution(imp.target)) is not None]


def test_the_extras_table_names_real_extras_and_modules():
    from source_imports import irepa_modules

    assert set(DECLARED) <= set(EXTRAS), set(DECLARED) - set(EXTRAS)
    assert not (CORE & set().union(*EXTRAS.values())), "a package is both core and optional"
    for extra, prefixes in DECLARED.items():
        for prefix in prefixes:
            assert prefix in irepa_modules(), f"[tool.irepa.extras] {extra}: no module {prefix}"


def test_every_third_party_import_is_declared():
    problems = []
    for imp, dist in _third_party_imports():
        where = f"{imp.module}:{imp.line} imports {imp.target} ({dist})"
        if dist in CORE:
            continue
        if not imp.lazy:
            problems.append(f"{where} at module level: only core dependencies may be (move it into the function)")
            continue
        extras = [e for e, prefixes in DECLARED.items() if dist in EXTRAS[e] and _covers(prefixes, imp.module)]
        if not extras:
            problems.append(f"{where}: in no extra that [tool.irepa.extras] declares for {imp.module}")
    assert not problems, "\n".join(problems)


def test_every_declared_package_is_imported_where_declared():
    used = _third_party_imports()
    unused = [dist for dist in CORE if not any(d == dist for _, d in used)]
    for extra, prefixes in DECLARED.items():
        unused += [
            f"{dist} ({extra})"
            for dist in EXTRAS[extra]
            if not any(d == dist and _covers(prefixes, imp.module) for imp, d in used)
        ]
    assert not unused, f"declared but never imported: {sorted(unused)}"
    undeclared = set(EXTRAS) - set(DECLARED) - {"all", "dev"}
    assert not undeclared, f"extras missing from [tool.irepa.extras]: {sorted(undeclared)}"


def test_all_bundles_every_library_extra():
    assert PYPROJECT["project"]["optional-dependencies"]["all"] == [
        f"irepa[{','.join(e for e in EXTRAS if e not in ('all', 'dev', 'wandb'))}]"
    ]


def test_every_dev_package_is_used_by_the_tests_benchmarks_or_makefile():
    tops = set()
    for path in [*(ROOT / "tests").rglob("*.py"), *(ROOT / "benchmarks").rglob("*.py")]:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                tops |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                tops.add(node.module.split(".")[0])
    provided = _provided()
    imported = {_norm(dist) for top in tops for dist in provided.get(top, [])}
    makefile = (ROOT / "Makefile").read_text()
    for dist in EXTRAS["dev"]:
        if dist in TOOLS:
            assert TOOLS[dist] in makefile, f"dev tool {dist} is not run by the Makefile"
        else:
            assert dist in imported, f"dev package {dist} is imported by no test or benchmark"
