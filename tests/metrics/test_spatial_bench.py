"""Keeps benchmarks/bench_spatial.py working (quick sizes) and checks that its two implementations agree."""

import importlib.util
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_spatial.py"


def test_bench_spatial_quick():
    spec = importlib.util.spec_from_file_location("bench_spatial", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    result = module.main(quick=True)
    assert result["shape"] == [16, 64, 64]
    for kind in ("structured", "near_uniform"):
        case = result[kind]
        assert case["max_abs_diff"] < 1e-5 and case["nan_pattern_agrees"], kind
        assert set(case["seconds"]) == {"irepa", "straightforward", "floor", "bmm_unit"}
        assert case["irepa_over_bmm_unit"] > 0 and case["speedup_vs_straightforward"] > 0
    # The two kinds take the two RMSC paths (similarity-matrix form above RMSC 0.01, direct form below).
    assert result["structured"]["rmsc_mean"] > 0.5 > 0.01 > result["near_uniform"]["rmsc_mean"]
