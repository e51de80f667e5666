"""``irepa analyze``: the paper's encoder study as commands.

* ``irepa analyze correlate --metrics FILE... --fid FILE|NAME=EVAL.json... [--probe FILE...]`` — Pearson and
  Spearman r of each measure against FID with bootstrap intervals, p-values and leave-one-out sensitivity
  (:mod:`irepa.analysis.correlate`); markdown, CSV, JSON and a figure.
* ``irepa analyze paper`` — every statistic the paper's published numbers allow, recomputed beside its claim
  (:mod:`irepa.analysis.paper`).
* ``irepa analyze cls-mixing --encoder NAME --images DIR --alphas ...`` — the paper's global-information
  experiment: probe accuracy and spatial metrics as the CLS token is mixed into the patch tokens
  (:mod:`irepa.analysis.cls_mixing`).

This module parses arguments and prints; the work is in :mod:`irepa.analysis`.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from irepa.errors import IrepaError


def configure(parser: argparse.ArgumentParser) -> None:
    """Add the ``correlate``, ``paper`` and ``cls-mixing`` subcommands."""
    sub = parser.add_subparsers(dest="analyze_command", metavar="SUBCOMMAND", required=True)

    p = sub.add_parser(
        "correlate",
        help="correlate per-encoder measures with FID: r, bootstrap CI, p, leave-one-out; table + figure",
        description=(
            "Which measure predicts generation FID across your encoders? Joins per-encoder measures (spatial "
            "metrics, probe accuracy) with FID by encoder name and reports Pearson and Spearman r with paired "
            "percentile-bootstrap intervals, two-sided p-values, leave-one-out sensitivity and the same without "
            "named outliers. See docs/analysis.md."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument(
        "--metrics",
        nargs="+",
        default=[],
        type=Path,
        metavar="FILE",
        help="spatial_metrics.json/.csv of 'irepa metrics spatial --out' (one source per encoder), metrics.csv of "
        "'irepa encoders report', or a CSV with an encoder column and one column per measure",
    )
    p.add_argument(
        "--fid",
        nargs="+",
        required=True,
        metavar="FILE|NAME=FILE",
        help="FID per encoder: a CSV with encoder and fid (or gfid) columns, or ENCODER=RUN.eval.json "
        "('irepa eval' output) once per encoder",
    )
    p.add_argument(
        "--probe",
        nargs="+",
        default=[],
        metavar="FILE|NAME=FILE",
        help="linear-probe accuracy per encoder: a CSV with encoder and top1 (or accuracy) columns, or "
        "'irepa probe --out' JSON files",
    )
    p.add_argument("--measures", help="comma-separated measures to correlate (default: every measure given)")
    p.add_argument(
        "--exclude",
        nargs="*",
        default=["mocov3-vit-l", "mae-vit-l"],
        metavar="NAME",
        help="encoders left out in the 'without' columns (default: the paper's outliers MoCov3-L and MAE-L)",
    )
    p.add_argument("--outcome", default="gFID", help="name of the outcome in tables and figures")
    p.add_argument("--resamples", type=int, default=9999, help="bootstrap resamples")
    p.add_argument("--confidence", type=float, default=0.95, help="confidence level of the intervals")
    p.add_argument("--seed", type=int, default=0, help="bootstrap seed")
    p.add_argument("--out", type=Path, metavar="DIR", help="write correlations.{md,csv,json,png} here")
    p.add_argument("--no-figure", action="store_true", help="skip the PNG (no matplotlib needed)")
    p.set_defaults(handler=_run_correlate)

    p = sub.add_parser(
        "paper",
        help="recompute every statistic the paper's published numbers allow, beside its claims",
        description=(
            "The paper's numbers ship with irepa (Tables 1-10, the correlation coefficients, values quoted in the "
            "text), each with its table/figure. This recomputes what they allow: per table, on how many rows iREPA "
            "is better and the mean/median change; the claims stated with numbers; intervals and p-values of the "
            "published correlations; values reported twice that disagree; and what is shown only as figures."
        ),
    )
    p.add_argument("--section", help="only checks whose section contains this text (e.g. 'Table 5')")
    p.add_argument("--markdown", action="store_true", help="print markdown tables instead of text")
    p.add_argument("--out", type=Path, metavar="DIR", help="write paper_checks.{md,json} here")
    p.set_defaults(handler=_run_paper)

    p = sub.add_parser(
        "cls-mixing",
        help="probe accuracy and spatial metrics as the CLS token is mixed into the patch tokens (both formulas)",
        description=(
            "The paper's global-information experiment (§2): add the CLS token to every patch token, p + a*c "
            "('additive', the paper's formula) or (1-a)*p + a*c ('convex', the released code's), for every a of "
            "--alphas, and report linear-probe accuracy (with --labels) and the spatial metrics. Writes "
            "cls_mixing.{md,csv,json,png} with --out."
        ),
    )
    from irepa.cli.encoders import add_encoder_arguments
    from irepa.cli.measure_args import add_measure_arguments

    p.add_argument(
        "--alphas", type=float, nargs="+", default=[0.0, 0.1, 0.2, 0.3, 0.4, 0.5], metavar="A", help="mixing weights"
    )
    p.add_argument(
        "--modes",
        nargs="+",
        choices=("additive", "convex"),
        default=["additive", "convex"],
        help="mixing formulas: additive p + a*c (paper), convex (1-a)*p + a*c (released code)",
    )
    p.add_argument("--out", type=Path, metavar="DIR", help="write cls_mixing.{md,csv,json,png} here")
    p.add_argument("--no-figure", action="store_true", help="skip the PNG")
    add_measure_arguments(p)
    add_encoder_arguments(p, required=True, cls_mixing=False)
    p.set_defaults(handler=_run_cls_mixing)


def run(args: argparse.Namespace) -> int:
    """Dispatch to the chosen subcommand."""
    return int(args.handler(args))


def _run_cls_mixing(args: argparse.Namespace) -> int:
    from irepa.analysis.cls_mixing import cls_mixing_sweep, write_sweep
    from irepa.cli.encoders import load_encoder_from_args
    from irepa.cli.measure_args import measure_inputs
    from irepa.utils.device import resolve_device

    folder, options, probe = measure_inputs(args)
    encoder = load_encoder_from_args(args, args.encoder)
    sweep = cls_mixing_sweep(
        args.encoder,
        encoder,
        folder,
        args.alphas,
        modes=args.modes,
        options=options,
        probe=probe,
        batch_size=args.batch_size,
        device=resolve_device(args.device),
    )
    for note in sweep.report.notes:
        print(f"note: {note}")
    print(sweep.to_markdown())
    if args.out is not None:
        written = write_sweep(sweep, args.out, figure=not args.no_figure)
        print("wrote " + ", ".join(str(p) for p in written))
    return 0


def _run_paper(args: argparse.Namespace) -> int:
    from irepa.analysis.paper import paper_checks, render_checks
    from irepa.utils.io import write_json, write_text

    checks = paper_checks()
    if args.section:
        checks = [c for c in checks if args.section.lower() in c.section.lower()]
        if not checks:
            raise IrepaError(f"no check in a section matching {args.section!r} (e.g. 'Table 5', 'Correlations')")
    print(render_checks(checks, markdown=args.markdown))
    if args.out is not None:
        write_text(args.out / "paper_checks.md", render_checks(checks, markdown=True) + "\n")
        write_json(args.out / "paper_checks.json", {"checks": [c.to_dict() for c in checks]})
        print(f"wrote {args.out / 'paper_checks.md'}, {args.out / 'paper_checks.json'}")
    return 0


def _run_correlate(args: argparse.Namespace) -> int:
    from irepa.analysis.correlate import (
        StudyTable,
        correlate_study,
        read_measures,
        read_outcomes,
        read_probes,
        write_outputs,
    )

    if not args.metrics and not args.probe:
        raise IrepaError("nothing to correlate: pass --metrics and/or --probe files")
    table = StudyTable()
    read_measures(args.metrics, table)
    read_probes(args.probe, table)
    read_outcomes(args.fid, table)
    measures = [m.strip().lower() for m in args.measures.split(",") if m.strip()] if args.measures else None
    report = correlate_study(
        table,
        outcome=args.outcome,
        measures=measures,
        exclude=args.exclude,
        n_resamples=args.resamples,
        confidence=args.confidence,
        seed=args.seed,
    )
    for note in table.notes:
        print(f"note: {note}")
    print(report.to_markdown())
    if args.out is not None:
        written = write_outputs(report, args.out, figure=not args.no_figure)
        print("wrote " + ", ".join(str(p) for p in written))
    return 0
