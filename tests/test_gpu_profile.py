"""Keeps benchmarks/gpu_profile.py (``benchmarks/run.py --gpu``) working: toy sizes on the CPU, no compilation."""

import importlib.util
import json
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


def _load(name):
    spec = importlib.util.spec_from_file_location(name, BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_flop_count_reproduces_the_issue_mfu():
    profile = _load("gpu_profile")
    flops = profile.sit_forward_flops(depth=28, hidden=1152, tokens=256, patch=2, in_channels=4)
    assert flops / 1e9 == pytest.approx(237.3, abs=0.1)
    # The issue's table: 378 images/s of SiT-XL/2 is 27.2 % MFU (3x forward FLOPs / 989 TFLOP/s).
    assert 100 * 378 * 3 * flops / profile.PEAK_BF16_FLOPS == pytest.approx(27.2, abs=0.05)


def test_gpu_profile_tiny_runs_every_case_and_writes_tables(tmp_path):
    run = _load("run")
    assert run.main(["--gpu", "--tiny", "--no-compile", "--out", str(tmp_path)]) == 0
    (json_file,) = tmp_path.glob("*-tiny.json")
    result = json.loads(json_file.read_text())
    cases = {(r["method"], r["compiled"], r["adamw"]) for r in result["train"]}
    assert cases == {
        ("none", False, "default (foreach)"),
        ("repa", False, "default (foreach)"),
        ("irepa", False, "default (foreach)"),
        ("irepa", False, "fused"),
        ("irepa Trainer.train_step", False, "default (foreach)"),
        ("irepa Trainer.train_step", False, "fused"),
    }
    assert all(r["images_per_s"] > 0 and r["forward_gflops_per_image"] > 0 for r in result["train"])
    assert set(result["alignment_overhead"]) == {"repa_over_none_eager", "irepa_over_none_eager"}
    assert result["spatial"]["structured"]["metrics_ms"] > 0 and len(result["sampling"]) == 2
    table = json_file.with_suffix(".md").read_text()
    assert "| irepa, eager, AdamW fused |" in table and "images × NFE / s" in table
