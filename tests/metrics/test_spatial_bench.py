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
    assert result["max_abs_diff"] < 1e-5 and result["nan_pattern_agrees"]
    assert set(result["seconds"]) == {"irepa", "straightforward", "floor", "bmm_only"}
    assert result["irepa_over_floor"] > 0 and result["speedup_vs_straightforward"] > 0
