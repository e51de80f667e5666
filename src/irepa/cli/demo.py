r"""``irepa demo``: the embedded offline demo (REPA vs iREPA at laptop scale), and ``irepa demo teacher``.

::

    irepa demo                          # make demo: three tiny-SiT runs (none, REPA, iREPA), FD curves, report
    irepa demo --quick                  # every artifact in seconds (CI)
    irepa demo --study                  # REPA with a global-only and a dense-only teacher: which property matters?
    irepa demo --resume runs/demo/20260101-120000      # continue an interrupted demo
    irepa demo teacher --kind default --out DIR        # retrain a shipped encoder (default settings = the asset)

A demo writes ``OUT/<timestamp>/`` (``report.md``, ``results.json``, ``figures/``, the runs). Re-running the same
command continues the newest unfinished demo with the same settings in ``OUT`` (``--fresh`` starts a new one).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

from irepa.errors import IrepaError

#: Exit status of an interrupted demo (as for SIGINT).
INTERRUPTED = 130


def configure(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``irepa demo`` and ``irepa demo teacher``."""
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.description = (
        "Train a tiny diffusion transformer on synthetic images without alignment, with REPA and with iREPA "
        "(same seed, data order and step budget), evaluate FD at several checkpoints in a separate evaluator's "
        "feature space, and write a report with figures. Offline, CPU, 6-11 minutes on two cores."
    )
    parser.epilog = (
        "examples:\n"
        "  irepa demo                       full demo into runs/demo/<timestamp>/\n"
        "  irepa demo --quick               tiny version (CI): every artifact in seconds, numbers meaningless\n"
        "  irepa demo --study               REPA with a global-only vs a dense-only teacher (longer)\n"
        "  irepa demo --resume DIR          continue an interrupted demo\n"
        "  irepa demo teacher --kind all    retrain the shipped encoders (see docs/demo.md)"
    )
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true", help="tiny version for CI (well under a minute)")
    mode.add_argument(
        "--study",
        action="store_true",
        help="REPA with three teachers (default, global-only, dense-only) plus no alignment; not part of make demo",
    )
    parser.add_argument(
        "--out", type=Path, default=Path("runs/demo"), help="parent folder of the demo's run directory (runs/demo)"
    )
    parser.add_argument("--seed", type=int, default=None, help="seed of every run and of the FD samples (default 0)")
    parser.add_argument(
        "--steps",
        type=int,
        default=None,
        help="training steps per run (default: the mode's; FD at as many checkpoints as the mode has)",
    )
    parser.add_argument(
        "--quantize",
        choices=("truncate", "round"),
        default=None,
        help="uint8 quantization of the FD samples: truncate (default, as irepa sample) or round (the published "
        "demo numbers)",
    )
    parser.add_argument("--resume", type=Path, default=None, metavar="DIR", help="continue the demo in DIR")
    parser.add_argument("--fresh", action="store_true", help="start a new demo even if an unfinished one matches")
    parser.add_argument(
        "--device", choices=("cpu", "cuda", "auto"), default="cpu", help="where to train and sample (default cpu)"
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bars (log lines only)")

    sub = parser.add_subparsers(dest="action", metavar="{teacher}")
    teacher = sub.add_parser(
        "teacher",
        help="train a demo encoder (the shipped assets are this command's output with its defaults)",
        description=(
            "Train one of the demo's tiny ViTs on the synthetic dataset and write <asset>.safetensors plus its card "
            "<asset>.json (recipe, checksum, training time, probe accuracy and spatial metrics on held-out images). "
            "With default settings the output is what irepa ships in irepa/assets (same machine and torch build)."
        ),
    )
    teacher.add_argument(
        "--kind",
        choices=("default", "global", "dense", "evaluator", "all"),
        default="default",
        help="which encoder: default (demo teacher), global / dense (study teachers), evaluator (FD space), all",
    )
    teacher.add_argument(
        "--out", type=Path, default=Path("runs/demo/teachers"), help="output folder (default runs/demo/teachers)"
    )
    teacher.add_argument("--steps", type=int, default=None, help="training steps (default: the recipe's, 3000)")
    teacher.add_argument(
        "--train-images", type=int, default=None, help="synthetic training images (default: the recipe's, 30000)"
    )
    teacher.add_argument(
        "--eval-images", type=int, default=None, help="held-out images for probe and metrics (default 6000)"
    )
    teacher.add_argument("--no-progress", action="store_true", help="no progress bar")


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------------------------------------------------
# irepa demo teacher


def _run_teacher(args: argparse.Namespace) -> int:
    from irepa.demo.teachers import RECIPES, TEACHER_KINDS, train_teacher

    kinds = TEACHER_KINDS if args.kind == "all" else (args.kind,)
    overrides = {
        key: value
        for key, value in (
            ("steps", args.steps),
            ("train_images", args.train_images),
            ("eval_images", args.eval_images),
        )
        if value is not None
    }
    for kind in kinds:
        recipe = dataclasses.replace(RECIPES[kind], **overrides)
        card = train_teacher(recipe, args.out, progress=not args.no_progress, log=_log)
        metrics = card["demo"]["metrics"]
        spatial = metrics["spatial"]["means"]
        print(
            f"{card['encoder']['id']}: {args.out / card['demo']['file']['name']} sha256 {card['encoder']['sha256']}\n"
            f"  probe top-1 {100 * metrics['probe']['top1']:.1f} %  LDS {spatial['lds']:.3f}  CDS {spatial['cds']:.4f}"
            f"  SRSS {spatial['srss']:.3f}  RMSC {spatial['rmsc']:.3f}  (trained in "
            f"{card['demo']['training']['seconds']:.0f} s)"
        )
    return 0


# ----------------------------------------------------------------------------------------------------------------------
# irepa demo


def _find_unfinished(out: Path, settings_dict: dict) -> Path | None:
    """The newest run directory under ``out`` with these settings and no report yet."""
    if not out.is_dir():
        return None
    for folder in sorted((p for p in out.iterdir() if p.is_dir()), reverse=True):
        record = folder / "demo.json"
        if not record.is_file() or (folder / "report.md").is_file():
            continue
        try:
            if json.loads(record.read_text()).get("settings") == settings_dict:
                return folder
        except (OSError, json.JSONDecodeError):
            continue
    return None


def _new_run_dir(out: Path) -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    candidate, n = out / stamp, 1
    while candidate.exists():
        n += 1
        candidate = out / f"{stamp}-{n}"
    return candidate


def _settings(args: argparse.Namespace):
    from irepa.demo.settings import DemoSettings, settings_for

    mode = "quick" if args.quick else "study" if args.study else "full"
    if args.resume is None:
        settings = settings_for(mode, seed=args.seed if args.seed is not None else 0, steps=args.steps)
        if args.quantize is not None:
            settings = dataclasses.replace(settings, fd=dataclasses.replace(settings.fd, quantize=args.quantize))
        return settings
    record = args.resume / "demo.json"
    if not record.is_file():
        raise IrepaError(f"--resume {args.resume}: no demo.json there; pass the run directory a demo printed")
    try:
        settings = DemoSettings.from_dict(json.loads(record.read_text())["settings"])
    except (OSError, json.JSONDecodeError, KeyError) as exc:
        raise IrepaError(f"--resume {args.resume}: cannot read demo.json ({exc})") from exc
    given = {"mode": mode if (args.quick or args.study) else None, "seed": args.seed, "steps": args.steps}
    found = {"mode": settings.mode, "seed": settings.seed, "steps": settings.steps, "quantize": settings.fd.quantize}
    given["quantize"] = args.quantize
    for key, value in given.items():
        if value is not None and value != found[key]:
            raise IrepaError(
                f"--resume {args.resume}: the demo there has {key}={found[key]!r}, not {value!r}; drop "
                f"the option or start a new demo"
            )
    return settings


def run(args: argparse.Namespace) -> int:
    """Run ``irepa demo`` (or ``irepa demo teacher``)."""
    if args.action == "teacher":
        return _run_teacher(args)
    settings = _settings(args)
    if args.resume is not None:
        run_dir = args.resume
    else:
        found = None if args.fresh else _find_unfinished(args.out, settings.to_dict())
        run_dir = found or _new_run_dir(args.out)
        if found is not None:
            _log(f"resuming the unfinished demo in {found} (use --fresh to start a new one)")

    from irepa.demo.experiment import Demo, DemoInterrupted

    demo = Demo(settings, run_dir, device=args.device, progress=not args.no_progress, log=_log)
    _log(f"irepa demo ({settings.mode}): writing {run_dir}")
    try:
        report = demo.run()
    except DemoInterrupted as exc:
        _log(f"interrupted: run {exc.run!r} stopped at step {exc.step} (checkpoint written).")
        _log(f"resume with: irepa demo --resume {run_dir}")
        return INTERRUPTED
    except KeyboardInterrupt:
        _log("interrupted: finished runs, checkpoints and evaluations are kept.")
        _log(f"resume with: irepa demo --resume {run_dir}")
        return INTERRUPTED
    results = json.loads((run_dir / "results.json").read_text())
    for line in results["outcome"]["statement"]:
        print(f"  {line}")
    for line in results.get("study", {}).get("statement", []):
        print(f"  {line}")
    print(f"report: {report}")
    return 0
