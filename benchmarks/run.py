"""Run every benchmark (``benchmarks/bench_*.py``) and collect their results.

Each benchmark module exposes ``main(quick: bool) -> dict`` returning JSON-safe results; this runner writes
``benchmarks/results/<name>.json`` (with the machine description) and prints a summary. ``--quick`` runs reduced
sizes (used by the tests to keep the scripts working); ``--only NAME`` runs one benchmark.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def machine() -> dict:
    import torch

    info = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cpu": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }
    return info


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="reduced sizes (smoke run)")
    parser.add_argument("--only", action="append", default=[], help="run only this benchmark (repeatable)")
    parser.add_argument("--out", type=Path, default=HERE / "results", help="results directory")
    args = parser.parse_args(argv)
    files = sorted(HERE.glob("bench_*.py"))
    if args.only:
        files = [f for f in files if f.stem.removeprefix("bench_") in args.only or f.stem in args.only]
    args.out.mkdir(parents=True, exist_ok=True)
    for file in files:
        spec = importlib.util.spec_from_file_location(file.stem, file)
        module = importlib.util.module_from_spec(spec)
        sys.modules[file.stem] = module
        spec.loader.exec_module(module)
        print(f"== {file.stem} ==", flush=True)
        start = time.perf_counter()
        result = module.main(quick=args.quick)
        payload = {
            "benchmark": file.stem,
            "quick": args.quick,
            "machine": machine(),
            "seconds": round(time.perf_counter() - start, 2),
            "results": result,
        }
        (args.out / f"{file.stem.removeprefix('bench_')}{'-quick' if args.quick else ''}.json").write_text(
            json.dumps(payload, indent=2) + "\n"
        )
        print(json.dumps(result, indent=2), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
