"""``results.json`` (every number) and ``report.md`` (the same numbers, in words, tables and figures).

The report is rendered from the results dictionary alone, so every number it quotes is one of the JSON's, formatted
by :func:`fmt_fd` / :func:`fmt` (the tests check that they agree). The outcome is stated as measured: which run has
the lowest FD at each checkpoint and by how much, and, plainly, whether iREPA beat REPA — with the caveat that it is
one seed at toy scale.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from irepa.demo.settings import DemoSettings

__all__ = [
    "RESULTS_FORMAT",
    "RunRecord",
    "build_results",
    "fmt",
    "fmt_fd",
    "outcome",
    "study_outcome",
    "write_report",
]

#: Format tag of ``results.json``.
RESULTS_FORMAT = "irepa-demo-results/1"
SPATIAL = ("lds", "cds", "srss", "rmsc")


def fmt_fd(value: float) -> str:
    """How FD values are printed in the report (3 decimals)."""
    return f"{value:.3f}"


def fmt(value: float | None, digits: int = 3) -> str:
    """Other numbers of the report (``n/a`` for missing values)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return f"{value:.{digits}f}"


# ----------------------------------------------------------------------------------------------------------------------
# Results


@dataclasses.dataclass(frozen=True)
class RunRecord:
    """What the report needs of one finished training run (plain data; the orchestrator reads it from disk).

    Attributes:
        metrics: The trainer's ``metrics.jsonl`` rows, in step order (``step``, ``denoise``, ``align_cos``, ...).
        evals: The FD evaluations at the settings' ``eval_steps``, in order (``step``, ``fd``, ``seconds``, ...).
        grid: The final step's sample grid image, relative to the demo run directory.
    """

    metrics: list[dict[str, Any]]
    evals: list[dict[str, Any]]
    grid: str


def _model_params(settings: Any) -> int:
    import torch

    from irepa.models import build_model, count_parameters

    with torch.device("meta"):
        model = build_model(
            settings.model,
            input_size=settings.image_size,
            in_channels=3,
            num_classes=settings.num_classes,
            **settings.model_overrides,
        )
    return count_parameters(model)


def _projector_params(settings: Any, spec: Any, target_dim: int) -> int:
    from irepa.align import RepresentationAligner

    hidden = settings.model_overrides.get("hidden_size")
    aligner = RepresentationAligner(
        hidden, {spec.teacher: target_dim}, projector=spec.projector, projector_dim=settings.projector_dim
    )
    return sum(p.numel() for p in aligner.parameters())


def build_results(
    settings: DemoSettings,
    *,
    runs: Mapping[str, RunRecord],
    analysis: dict[str, Any],
    real_fd: float,
    run_dir: str | Path,
    machine: dict[str, Any],
) -> dict[str, Any]:
    """Collect every number of a finished demo (settings, teachers, curves, FDs, outcome) into one dict.

    Args:
        settings: The demo's settings.
        runs: One record per run of ``settings.runs``, by run name.
        analysis: The teacher analysis (:func:`irepa.demo.analysis.teacher_analysis`), by teacher id.
        real_fd: FD of unseen real images against the reference (the floor at this sample size).
        run_dir: The demo run directory (recorded in the results).
        machine: Where the demo ran (recorded in ``demo.json`` when it started).
    """
    from irepa.demo.analysis import encoder_card
    from irepa.demo.evaluation import EVALUATOR_ID

    s = settings
    results_runs: dict[str, Any] = {}
    for spec in s.runs:
        record = runs[spec.name]
        records = record.metrics
        curve = {"step": [int(r["step"]) for r in records], "denoise": [float(r["denoise"]) for r in records]}
        if spec.aligned:
            curve["align_cos"] = [float(r.get("align_cos", math.nan)) for r in records]
        evals = record.evals
        tail = curve["denoise"][-5:]
        entry: dict[str, Any] = {
            "label": spec.label,
            "teacher": spec.teacher,
            "projector": spec.projector if spec.aligned else None,
            "target_norm": spec.target_norm if spec.aligned else None,
            "projector_params": (
                _projector_params(s, spec, analysis[spec.teacher]["card"]["embed_dim"]) if spec.aligned else 0
            ),
            "fd": [{"step": e["step"], "fd": e["fd"]} for e in evals],
            "final_fd": evals[-1]["fd"],
            "final_denoise": float(np.mean(tail)) if tail else None,
            "curve": curve,
            "grid": record.grid,
            "eval_seconds": round(sum(e["seconds"] for e in evals), 2),
        }
        if spec.aligned and curve.get("align_cos"):
            entry["final_align_cos"] = float(np.mean(curve["align_cos"][-5:]))
        results_runs[spec.name] = entry
    evaluator = encoder_card(EVALUATOR_ID)
    results: dict[str, Any] = {
        "format": RESULTS_FORMAT,
        "created": time.strftime("%Y-%m-%d %H:%M:%S"),
        "run_dir": str(run_dir),
        "settings": s.to_dict(),
        "machine": machine,
        "model_params": _model_params(s),
        "real_fd": real_fd,
        "teachers": analysis,
        "evaluator": {
            "id": EVALUATOR_ID,
            "sha256": evaluator["encoder"]["sha256"],
            "objective": evaluator["demo"]["objective"],
            "role": evaluator["demo"]["role"],
            "command": evaluator["demo"]["command"],
            "probe_top1": evaluator["demo"]["metrics"]["probe"]["top1"],
        },
        "runs": results_runs,
    }
    results["outcome"] = outcome(results)
    if s.mode == "study":
        results["study"] = study_outcome(results)
    return results


# ----------------------------------------------------------------------------------------------------------------------
# Outcome


def _pct(a: float, b: float) -> float:
    """Relative difference of ``a`` to ``b`` in percent (negative: ``a`` is lower)."""
    return 100.0 * (a - b) / b if b else math.nan


def outcome(results: dict[str, Any]) -> dict[str, Any]:
    """Which run has the lowest FD at each checkpoint, by how much, and the plain statement of the result."""
    runs = results["runs"]
    names = list(runs)
    steps = [e["step"] for e in runs[names[0]]["fd"]]
    per_step = []
    for i, step in enumerate(steps):
        fds = {name: runs[name]["fd"][i]["fd"] for name in names}
        order = sorted(names, key=lambda n: fds[n])
        best, second = order[0], order[1] if len(order) > 1 else order[0]
        per_step.append(
            {
                "step": step,
                "fd": fds,
                "best": best,
                "runner_up": second,
                "margin": fds[second] - fds[best],
                "margin_pct": -_pct(fds[best], fds[second]),
            }
        )
    final = per_step[-1]
    wins = {name: sum(1 for p in per_step if p["best"] == name) for name in names}
    labels = {name: runs[name]["label"] for name in names}
    lines = [
        f"At the final step ({final['step']}), the lowest FD is {labels[final['best']]}'s "
        f"({fmt_fd(final['fd'][final['best']])}), "
        f"{fmt_fd(final['margin'])} ({fmt(final['margin_pct'], 1)} %) below {labels[final['runner_up']]} "
        f"({fmt_fd(final['fd'][final['runner_up']])}).",
        "Lowest FD per checkpoint: "
        + ", ".join(f"step {p['step']}: {p['best']} (by {fmt_fd(p['margin'])})" for p in per_step)
        + ".",
    ]
    comparisons: dict[str, Any] = {}
    if "repa" in runs and "irepa" in runs:
        a, b = runs["irepa"]["final_fd"], runs["repa"]["final_fd"]
        beats = a < b
        comparisons["irepa_vs_repa"] = {"irepa": a, "repa": b, "delta": a - b, "delta_pct": _pct(a, b), "beats": beats}
        checkpoints = sum(1 for p in per_step if p["fd"]["irepa"] < p["fd"]["repa"])
        comparisons["irepa_vs_repa"]["checkpoints_won"] = checkpoints
        if beats:
            lines.append(
                f"iREPA beats REPA at this scale: final FD {fmt_fd(a)} vs {fmt_fd(b)} ({fmt(_pct(a, b), 1)} %), and "
                f"lower at {checkpoints} of {len(per_step)} checkpoints."
            )
        else:
            lines.append(
                f"iREPA does NOT beat REPA at this scale: final FD {fmt_fd(a)} vs {fmt_fd(b)} "
                f"({fmt(_pct(a, b), 1)} %); iREPA is lower at {checkpoints} of {len(per_step)} checkpoints."
            )
    if "none" in runs:
        base = runs["none"]["final_fd"]
        for name in names:
            if name == "none":
                continue
            value = runs[name]["final_fd"]
            comparisons[f"{name}_vs_none"] = {"delta": value - base, "delta_pct": _pct(value, base)}
        aligned = [n for n in names if n != "none"]
        better = [n for n in aligned if runs[n]["final_fd"] < base]
        lines.append(
            f"Against no alignment (final FD {fmt_fd(base)}): "
            + ", ".join(
                f"{n} {fmt_fd(runs[n]['final_fd'])} ({fmt(comparisons[f'{n}_vs_none']['delta_pct'], 1)} %)"
                for n in aligned
            )
            + f"; {len(better)} of {len(aligned)} aligned runs end lower."
        )
    s = results["settings"]
    lines.append(
        f"Caveat: one seed ({s['seed']}), a {results['model_params'] / 1e6:.2f}M-parameter SiT trained for "
        f"{s['steps']} steps on synthetic {s['image_size']} px images, FD from {s['fd']['num_samples']} samples "
        f"(as many unseen real images score {fmt_fd(results['real_fd'])}, the floor at this sample size). "
        "Differences of this size can change with the seed; the demo does not measure seed-to-seed spread."
    )
    return {"per_checkpoint": per_step, "wins": wins, "comparisons": comparisons, "statement": lines}


def _ranks(values: list[float]) -> list[float]:
    """Ranks from 0, ties sharing their mean rank (as Spearman's rho needs)."""
    return [sum(1.0 for w in values if w < v) + (sum(1.0 for w in values if w == v) - 1) / 2 for v in values]


def _spearman(a: list[float], b: list[float]) -> float:
    ra, rb = np.array(_ranks(a)), np.array(_ranks(b))
    if ra.std() == 0 or rb.std() == 0:
        return math.nan
    return float(np.corrcoef(ra, rb)[0, 1])


def study_outcome(results: dict[str, Any]) -> dict[str, Any]:
    """Per teacher: probe top-1, spatial metrics, REPA's final FD; which of them ranks the teachers like FD does."""
    rows = []
    for name, run in results["runs"].items():
        teacher = run["teacher"]
        if teacher is None:
            continue
        card = results["teachers"][teacher]["card"]["metrics"]
        rows.append(
            {
                "run": name,
                "teacher": teacher,
                "fd": run["final_fd"],
                "probe_top1": card["probe"]["top1"],
                **{m: card["spatial"]["means"][m] for m in SPATIAL},
            }
        )
    fds = [r["fd"] for r in rows]
    predictors = ["probe_top1", *SPATIAL]
    # A higher metric should mean a lower FD, so a perfect predictor has Spearman rho = -1 with FD.
    rho = {p: _spearman([r[p] for r in rows], fds) for p in predictors}
    exact = {p: bool(rho[p] == -1.0) for p in predictors}
    by_fd = [r["teacher"] for r in sorted(rows, key=lambda r: r["fd"])]
    spatial_hits = [m for m in SPATIAL if exact[m]]
    lines = [f"Teachers by REPA's final FD (best first): {', '.join(by_fd)}."]
    lines.append(
        f"Linear-probe accuracy {'ranks them' if exact['probe_top1'] else 'does not rank them'} exactly like FD "
        f"(Spearman rho with FD {fmt(rho['probe_top1'], 2)}; -1 is a perfect predictor)."
    )
    lines.append(
        f"Spatial metrics that rank them exactly like FD: {', '.join(spatial_hits) if spatial_hits else 'none'} "
        f"(rho: {', '.join(f'{m} {fmt(rho[m], 2)}' for m in SPATIAL)})."
    )
    if spatial_hits and not exact["probe_top1"]:
        verdict = "spatial structure predicted the ranking and accuracy did not, as the paper claims"
    elif exact["probe_top1"] and not spatial_hits:
        verdict = "accuracy predicted the ranking and spatial structure did not, against the paper's claim"
    elif exact["probe_top1"] and spatial_hits:
        verdict = "both accuracy and spatial structure predicted the ranking (the study cannot separate them)"
    else:
        verdict = "neither accuracy nor any spatial metric predicted the ranking exactly"
    lines.append(
        f"At this scale {verdict}; with {len(rows)} teachers and one seed this is an illustration, not evidence."
    )
    return {"rows": rows, "spearman_with_fd": rho, "exact": exact, "ranking_by_fd": by_fd, "statement": lines}


# ----------------------------------------------------------------------------------------------------------------------
# Report


def write_report(run_dir: str | Path, results: dict[str, Any]) -> Path:
    """Draw the figures and write ``results.json`` and ``report.md`` into ``run_dir``; returns the report path."""
    from PIL import Image

    from irepa.demo.plots import curves_figure, samples_figure
    from irepa.utils.io import write_json, write_text

    run_dir = Path(run_dir)
    runs = results["runs"]
    s = results["settings"]
    figures = run_dir / "figures"
    curves_figure(
        figures / "curves.png",
        loss={r["label"]: (r["curve"]["step"], r["curve"]["denoise"]) for r in runs.values()},
        align_cos={
            r["label"]: (r["curve"]["step"], r["curve"]["align_cos"])
            for r in runs.values()
            if "align_cos" in r["curve"]
        },
        fd={r["label"]: ([e["step"] for e in r["fd"]], [e["fd"] for e in r["fd"]]) for r in runs.values()},
        real_fd=results["real_fd"],
        smooth=1 if s["mode"] == "quick" else 5,
    )
    grids = {
        f"{r['label']}\nFD {fmt_fd(r['final_fd'])}": np.asarray(Image.open(run_dir / r["grid"])) for r in runs.values()
    }
    samples_figure(
        figures / "samples.png",
        grids,
        title=f"samples at step {s['steps']} ({s['fd']['sampler']}, {s['fd']['steps']} steps, no guidance; "
        "one class per row)",
    )
    results["figures"] = {
        "curves": "figures/curves.png",
        "samples": "figures/samples.png",
        "similarity": [f"figures/{t['figure']}" for t in results["teachers"].values()],
    }
    write_json(run_dir / "results.json", results)
    report = run_dir / "report.md"
    write_text(report, render_markdown(results))
    return report


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    return [
        "| " + " | ".join(header) + " |",
        "|" + "|".join("---" for _ in header) + "|",
        *("| " + " | ".join(row) + " |" for row in rows),
    ]


def render_markdown(results: dict[str, Any]) -> str:
    """The report as Markdown (numbers only from ``results``)."""
    s = results["settings"]
    runs = results["runs"]
    out = results["outcome"]
    fd_cfg = s["fd"]
    title = {
        "full": "REPA vs iREPA at laptop scale",
        "quick": "quick mode (CI smoke run: numbers are meaningless)",
        "study": "which teacher property predicts generation? (study)",
    }[s["mode"]]
    lines = [f"# irepa demo: {title}", ""]
    timing = results.get("timing", {})
    flags = {"full": "", "quick": " --quick", "study": " --study"}[s["mode"]]
    if s["seed"] != 0:
        flags += f" --seed {s['seed']}"
    lines += [
        f"Generated by `irepa demo{flags}` on {results['created']} in `{results['run_dir']}` "
        f"({fmt(timing.get('total_seconds'), 0)} s of wall time over {timing.get('sessions', 1)} session(s), "
        f"{results['machine'].get('threads', '?')} torch threads, torch {results['machine'].get('torch', '?')}).",
        "",
        "## Outcome",
        "",
        *(f"- {line}" for line in out["statement"]),
        "",
    ]
    if "study" in results:
        lines += ["## Study: global vs dense teachers", ""]
        rows = [
            [
                f"`{r['teacher']}`",
                fmt(100 * r["probe_top1"], 1),
                *(fmt(r[m]) for m in SPATIAL),
                fmt_fd(r["fd"]),
            ]
            for r in results["study"]["rows"]
        ]
        lines += _table(["teacher", "probe top-1 (%)", "LDS", "CDS", "SRSS", "RMSC", "REPA final FD"], rows)
        lines += ["", *(f"- {line}" for line in results["study"]["statement"]), ""]
    lines += ["## Setup", ""]
    mo = s["model_overrides"]
    setup = [
        [
            "data",
            f"{s['train_images']} synthetic {s['image_size']} px images, {s['num_classes']} shape classes "
            f"(dataset seed {s['data_seed']}), pixel space, no flips",
        ],
        [
            "model",
            f"{s['model']} with depth {mo.get('depth')}, width {mo.get('hidden_size')}, {mo.get('num_heads')} "
            f"heads: {results['model_params'] / 1e6:.2f}M parameters, 8×8 tokens",
        ],
        [
            "training",
            f"{s['steps']} steps × batch {s['batch_size']}, AdamW lr {s['lr']:g}, fp32, EMA {s['ema_decay']}, "
            f"label dropout {s['label_dropout']}, seed {s['seed']} (same init, data order and noise for every run)",
        ],
        [
            "alignment",
            f"block {s['align_depth']}, λ = {s['align_weight']} for every aligned run; REPA: MLP projector "
            f"(hidden {s['projector_dim']}), raw targets; iREPA: 3×3 conv projector, spatial norm γ = {s['gamma']}",
        ],
        [
            "evaluation",
            f"EMA snapshots at steps {', '.join(str(e['step']) for e in next(iter(runs.values()))['fd'])}; "
            f"{fd_cfg['num_samples']} class-balanced samples ({fd_cfg['sampler']}, {fd_cfg['steps']} steps, CFG "
            f"{fd_cfg['cfg_scale']:g}, seed {fd_cfg['seed']}); FD of `{results['evaluator']['id']}` CLS features "
            f"against {s['reference_images']} training images",
        ],
    ]
    lines += _table(["", ""], setup)
    lines += [""]
    run_rows = [
        [
            name,
            r["label"],
            f"`{r['teacher']}`" if r["teacher"] else "—",
            f"{r['projector_params']:,}",
            fmt(r["final_denoise"], 4),
            fmt(r.get("final_align_cos")),
            fmt_fd(r["final_fd"]),
        ]
        for name, r in runs.items()
    ]
    lines += _table(
        ["run", "what", "teacher", "projector params", "final loss", "final align cos", "final FD"], run_rows
    )
    lines += ["", "## Teachers", ""]
    for teacher, t in results["teachers"].items():
        card = t["card"]
        m = card["metrics"]
        lines += [
            f"`{teacher}` ({card['role']}): a {card['params_m']}M-parameter ViT (width {card['embed_dim']}, "
            f"{card['grid'][0]}×{card['grid'][1]} tokens) shipped in the package, sha256 `{card['sha256'][:16]}…`, "
            f"reproduced by `{card['command']}` ({fmt(card['training_seconds'], 0)} s on the machine that made it). "
            f"Linear-probe top-1 on mean-pooled patch tokens: {fmt(100 * m['probe']['top1'], 1)} % "
            f"({m['probe']['num_train']} / {m['probe']['num_val']} held-out images).",
            "",
        ]
        rows = [
            ["raw tokens (REPA's targets)", *(fmt(t["raw"][k]) for k in SPATIAL)],
            [
                f"spatially normalized, γ = {t['gamma']:g} (iREPA's targets)",
                *(fmt(t["normalized"][k]) for k in SPATIAL),
            ],
        ]
        lines += _table([f"spatial metrics on {t['images']} held-out images", "LDS", "CDS", "SRSS", "RMSC"], rows)
        lines += ["", f"![similarity maps of {teacher}](figures/{t['figure']})", ""]
    lines += [
        f"The evaluator `{results['evaluator']['id']}` ({results['evaluator']['role']}; probe top-1 "
        f"{fmt(100 * results['evaluator']['probe_top1'], 1)} %) is a separate network, so FD is never measured in a "
        "teacher's own feature space.",
        "",
        "## Fréchet distance at each checkpoint",
        "",
    ]
    names = list(runs)
    fd_rows = []
    for p in out["per_checkpoint"]:
        cells = [f"**{fmt_fd(p['fd'][n])}**" if n == p["best"] else fmt_fd(p["fd"][n]) for n in names]
        fd_rows.append([str(p["step"]), *cells, f"{p['best']} by {fmt_fd(p['margin'])} ({fmt(p['margin_pct'], 1)} %)"])
    lines += _table(["step", *names, "lowest"], fd_rows)
    lines += [
        "",
        f"Unseen real images ({s['fd']['num_samples']}, the same count as the samples) score FD "
        f"{fmt_fd(results['real_fd'])} against the reference: no model can be expected below it at this sample size.",
        "",
        "![loss, alignment and FD curves](figures/curves.png)",
        "",
        "## Samples",
        "",
        "![samples of each run](figures/samples.png)",
        "",
        "## Files",
        "",
        "- `results.json`: every number above (and the loss curves); `demo.json`: the settings.",
        "- `runs/<run>/`: trainer run directories (`config.yaml`, `metrics.jsonl`, `snapshots/` with EMA inference "
        "snapshots usable by `irepa sample`, `checkpoints/`).",
        "- `evals/<run>/step-*.json`, `samples/<run>/step-*.png`: each FD evaluation and its samples.",
        "",
    ]
    phases = timing.get("phases", {})
    if phases:
        lines += ["## Time", ""]
        lines += _table(["phase", "seconds"], [[k, fmt(v, 1)] for k, v in phases.items()])
        lines += [""]
    return "\n".join(lines)
