"""Run every benchmark (``benchmarks/bench_*.py``) and collect their results.

Each benchmark module exposes ``main(quick: bool) -> dict`` returning JSON-safe results; this runner writes
``benchmarks/results/<name>.json`` (with the machine description) and prints a summary. ``--quick`` runs reduced
sizes (used by the tests to keep the scripts working); ``--only NAME`` runs one benchmark.

``--gpu`` runs the GPU profile instead (``gpu_profile.py``: the performance issue's SiT-XL/2 training cases eager
and compiled, spatial metrics, sampling; < 8 minutes on one H200) and writes ``<host>-<date>.json`` and
``<host>-<date>.md`` (the markdown table) after every case; ``--gpu --tiny`` runs it at toy sizes on any device.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import socket
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
    if "torch" not in sys.modules:  # as the irepa entry point: idle OpenMP threads sleep at once (docs/demo.md)
        from irepa.cli.main import cpu_thread_policy

        cpu_thread_policy(os.environ)
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="reduced sizes (smoke run)")
    parser.add_argument("--only", action="append", default=[], help="run only this benchmark (repeatable)")
    parser.add_argument("--out", type=Path, default=HERE / "results", help="results directory")
    parser.add_argument("--gpu", action="store_true", help="run the GPU profile (gpu_profile.py) instead")
    parser.add_argument("--tiny", action="store_true", help="with --gpu: toy sizes on any device (a smoke run)")
    parser.add_argument("--no-compile", action="store_true", help="with --gpu: skip the compiled training cases")
    parser.add_argument("--budget", type=float, default=400.0, help="with --gpu: wall-clock budget in seconds")
    args = parser.parse_args(argv)
    if args.gpu:
        return gpu(args)
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


def gpu(args: argparse.Namespace) -> int:
    """``--gpu``: run gpu_profile.main, writing JSON and markdown after every case."""
    spec = importlib.util.spec_from_file_location("gpu_profile", HERE / "gpu_profile.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["gpu_profile"] = module
    spec.loader.exec_module(module)
    args.out.mkdir(parents=True, exist_ok=True)
    stem = f"{socket.gethostname()}-{time.strftime('%Y%m%d-%H%M')}{'-tiny' if args.tiny else ''}"

    def write(result: dict) -> None:
        (args.out / f"{stem}.json").write_text(json.dumps(result, indent=2) + "\n")
        (args.out / f"{stem}.md").write_text(module.markdown(result))

    result = module.main(
        tiny=args.tiny, compile_cases=not args.no_compile, budget_s=args.budget, write=write, machine=machine()
    )
    print(module.markdown(result), flush=True)
    print(f"wrote {args.out / stem}.json and .md", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
