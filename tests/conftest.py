"""Shared test fixtures: CLI runners, temporary run directories, markers.

Markers: ``slow`` (long), ``gpu`` (skipped without CUDA), ``weights`` (skipped unless real weights are present).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

SRC = Path(__file__).resolve().parents[1] / "src"

# Tests are CPU-only and must not race for the two cores; keep torch single-threaded per test process when run
# under pytest-xdist, and never touch the network.
if os.environ.get("PYTEST_XDIST_WORKER"):
    torch.set_num_threads(1)
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def pytest_collection_modifyitems(config, items):
    skip_gpu = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords and not torch.cuda.is_available():
            item.add_marker(skip_gpu)


class CLIResult:
    def __init__(self, code: int, out: str, err: str):
        self.code, self.out, self.err = code, out, err

    def __repr__(self) -> str:
        return f"CLIResult(code={self.code}, out={self.out[-500:]!r}, err={self.err[-500:]!r})"


@pytest.fixture
def run_cli(capsys):
    """Run ``irepa ARGS...`` in-process; returns a CLIResult with exit code, stdout and stderr."""
    from irepa.cli.main import main

    def run(*args: str) -> CLIResult:
        try:
            code = main([str(a) for a in args])
        except SystemExit as exc:  # argparse errors and --help
            code = exc.code if isinstance(exc.code, int) else 1
        captured = capsys.readouterr()
        return CLIResult(code, captured.out, captured.err)

    return run


@pytest.fixture
def run_cli_subprocess(tmp_path):
    """Run ``python -m irepa ARGS...`` in a fresh process (for exit codes, signals and console behaviour)."""

    def run(*args: str, timeout: float = 300, env: dict | None = None, cwd: Path | None = None) -> CLIResult:
        full_env = {**os.environ, "PYTHONPATH": str(SRC), **(env or {})}
        proc = subprocess.run(
            [sys.executable, "-m", "irepa", *map(str, args)],
            capture_output=True,
            text=True,
            timeout=timeout,
            env=full_env,
            cwd=cwd or tmp_path,
        )
        return CLIResult(proc.returncode, proc.stdout, proc.stderr)

    return run


@pytest.fixture
def small_filesystem(tmp_path):
    """``small_filesystem(kib) -> Path``: a real size-limited file system (tmpfs) for out-of-disk tests.

    Needs root (``mount -t tmpfs``); skipped with the reason where mounting is not permitted. Unmounted afterwards.
    """
    mounted: list[Path] = []

    def make(kib: int) -> Path:
        if not sys.platform.startswith("linux") or os.geteuid() != 0:
            pytest.skip("a real size-limited file system needs root on Linux (mount -t tmpfs)")
        target = tmp_path / f"fs{len(mounted)}"
        target.mkdir()
        proc = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={kib}k", "tmpfs", str(target)], capture_output=True, text=True
        )
        if proc.returncode != 0:
            pytest.skip(f"mounting a tmpfs is not permitted here: {proc.stderr.strip() or proc.returncode}")
        mounted.append(target)
        return target

    yield make
    for target in mounted:
        subprocess.run(["umount", "-l", str(target)], capture_output=True)
