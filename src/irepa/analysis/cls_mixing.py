"""The paper's global-information experiment: mix the CLS token into the patch tokens and watch probe and metrics.

The paper (§2, Fig. 3c; paper-notes §5.2) adds the CLS token to every patch token of DINOv2, ``p_i + α·c`` with
α from 0 to 0.5: linear-probe accuracy rises (70.7 → 78.5 %), spatial structure (LDS) falls, and REPA's gFID gets
worse (19.2 → 25.4). The released code mixes convexly instead, ``(1 − α)·p_i + α·c``. :func:`cls_mixing_sweep`
measures both formulas, by name, at every α: the encoder runs once, the mixing is applied to its tokens with
:func:`irepa.encoders.base.mix_cls` (the function the encoders use for ``cls_mixing=``), and every mixed variant
goes through :func:`irepa.analysis.measure.measure_encoders` (spatial metrics and, with labels, the probe).
"""

from __future__ import annotations

import csv
import dataclasses
import io
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from irepa.errors import IrepaError

__all__ = ["MIXING_MODES", "ClsMixingSweep", "cls_mixing_sweep"]

#: The two formulas: the paper's and the released code's.
MIXING_MODES: tuple[str, ...] = ("additive", "convex")


@dataclasses.dataclass
class ClsMixingSweep:
    """Probe accuracy and spatial metrics per (formula, α).

    Attributes:
        encoder: Encoder id.
        alphas: The α values.
        modes: The formulas measured.
        rows: One dict per (mode, α): ``mode``, ``alpha``, ``lp`` (top-1 or None) and the metric means.
        metrics: Metric names.
        report: The underlying :class:`~irepa.analysis.measure.EncoderReport`.
    """

    encoder: str
    alphas: list[float]
    modes: list[str]
    rows: list[dict[str, Any]]
    metrics: list[str]
    report: Any

    def series(self) -> dict[str, list[float]]:
        """``"<measure> (<mode>)"`` → values over α, for :func:`irepa.analysis.plots.sweep_figure`."""
        out: dict[str, list[float]] = {}
        measures = (["lp"] if any(r["lp"] is not None for r in self.rows) else []) + self.metrics
        for measure in measures:
            for mode in self.modes:
                rows = [r for r in self.rows if r["mode"] == mode]
                out[f"{measure} ({mode})"] = [math.nan if r[measure] is None else r[measure] for r in rows]
        return out

    def to_markdown(self) -> str:
        """A markdown table: one row per (formula, α)."""
        header = ["formula", "α", "probe top-1", *self.metrics]
        lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        for r in self.rows:
            lp = "—" if r["lp"] is None else f"{100 * r['lp']:.1f} %"
            cells = [r["mode"], f"{r['alpha']:g}", lp, *(_fmt(r[m]) for m in self.metrics)]
            lines.append("| " + " | ".join(cells) + " |")
        return "\n".join(lines)

    def to_csv(self) -> str:
        """CSV with columns ``mode,alpha,lp,<metrics>``."""
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(["mode", "alpha", "lp", *self.metrics])
        for r in self.rows:
            writer.writerow([r["mode"], r["alpha"], "" if r["lp"] is None else r["lp"], *(r[m] for m in self.metrics)])
        return buffer.getvalue()

    def to_json(self) -> dict[str, Any]:
        """JSON-safe dict (NaN → None)."""
        clean = [{k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in r.items()} for r in self.rows]
        return {
            "format": "irepa-cls-mixing/1",
            "encoder": self.encoder,
            "alphas": self.alphas,
            "modes": self.modes,
            "formulas": {"additive": "p_i + alpha * c (paper)", "convex": "(1 - alpha) * p_i + alpha * c (code)"},
            "rows": clean,
            "inputs": self.report.inputs,
            "notes": self.report.notes,
        }


def _fmt(value: float) -> str:
    return "nan" if value is None or math.isnan(value) else f"{value:.4f}"


def cls_mixing_sweep(
    name: str,
    encoder: Any,
    images: Any,
    alphas: Sequence[float],
    *,
    modes: Sequence[str] = MIXING_MODES,
    masks: torch.Tensor | None = None,
    labels: torch.Tensor | None = None,
    options: Any = None,
    probe: Any = None,
    batch_size: int = 32,
    device: str | torch.device = "cpu",
) -> ClsMixingSweep:
    """Measure the encoder's tokens with the CLS token mixed in at every α, with both formulas.

    Args:
        name: Encoder id (for the report).
        encoder: A loaded encoder with a CLS token, built with ``cls_mixing="none"``.
        images: uint8 ``(N, 3, H, W)`` images or an :class:`~irepa.analysis.measure.ImageFolder`.
        alphas: Mixing weights (``convex`` needs ``0 ≤ α ≤ 1``).
        modes: ``additive`` (paper) and/or ``convex`` (released code).
        masks: Pixel masks for SRSS (tensor images).
        labels: Labels for the probe (tensor images; folders use their class folders).
        options: :class:`~irepa.analysis.measure.SpatialOptions`.
        probe: :class:`~irepa.analysis.measure.ProbeOptions`, or None for no probe.
        batch_size: Images per forward pass.
        device: Where metrics and probe run.

    Raises:
        IrepaError: An encoder without a CLS token or already mixing, unknown formulas, bad α, too few labels.
    """
    from irepa.analysis.measure import measure_encoders
    from irepa.encoders.base import mix_cls

    if not encoder.spec.has_cls:
        raise IrepaError(f"encoder {name!r} has no CLS token, so there is nothing to mix; pick one with a CLS token")
    if encoder.cls_mixing != "none":
        raise IrepaError("load the encoder without CLS mixing; the sweep applies the mixing itself")
    modes = list(dict.fromkeys(modes))
    unknown = [m for m in modes if m not in MIXING_MODES]
    if unknown or not modes:
        raise IrepaError(f"unknown mixing formula(s) {unknown}; choose among {', '.join(MIXING_MODES)}")
    alphas = [float(a) for a in alphas]
    if not alphas:
        raise IrepaError("give at least one alpha")
    for alpha in alphas:
        if not math.isfinite(alpha) or alpha < 0 or ("convex" in modes and alpha > 1):
            raise IrepaError(f"alpha {alpha:g} must be >= 0 (and <= 1 for the convex formula)")

    def variant(mode: str, alpha: float):
        return lambda tokens, cls: mix_cls(tokens, cls, mode, alpha)

    variants = {f"{mode} α={alpha:g}": variant(mode, alpha) for mode in modes for alpha in alphas}
    report = measure_encoders(
        {name: encoder},
        images,
        masks=masks,
        labels=labels,
        options=options,
        variants=variants,
        probe=probe,
        probe_variants=True,
        batch_size=batch_size,
        device=device,
    )
    metrics = report.raw.metrics
    rows = []
    for mode in modes:
        for alpha in alphas:
            key = f"{mode} α={alpha:g}"
            probe_result = report.probes.get(key, {}).get(name)
            rows.append(
                {
                    "mode": mode,
                    "alpha": alpha,
                    "lp": None if probe_result is None else probe_result.top1,
                    **report.spatial[key].means(name),
                }
            )
    return ClsMixingSweep(name, alphas, modes, rows, metrics, report)


def write_sweep(sweep: ClsMixingSweep, out_dir: str | Path, *, figure: bool = True) -> list[Path]:
    """Write ``cls_mixing.{md,csv,json}`` and, with ``figure``, ``cls_mixing.png``."""
    from irepa.utils.io import write_json, write_text

    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise IrepaError(f"--out {str(out)!r} exists and is not a directory")
    payload, table, markdown = sweep.to_json(), sweep.to_csv(), sweep.to_markdown()
    write_json(out / "cls_mixing.json", payload)
    write_text(out / "cls_mixing.csv", table)
    write_text(out / "cls_mixing.md", markdown + "\n")
    written = [out / "cls_mixing.md", out / "cls_mixing.csv", out / "cls_mixing.json"]
    if figure:
        from irepa.analysis.plots import sweep_figure

        series = sweep.series()
        groups = {key: key.split(" (")[0] for key in series}
        written.append(
            sweep_figure(
                out / "cls_mixing.png",
                sweep.alphas,
                series,
                x_label="α (CLS mixing weight)",
                title=f"{sweep.encoder}: CLS token mixed into the patch tokens",
                groups=groups,
            )
        )
    return written
