"""The paper's study for your own encoders: which measure predicts generation FID, and how sure can one be?

Inputs are files irepa writes (or plain CSVs), joined by encoder name:

* **measures** — ``spatial_metrics.json`` / ``spatial_metrics.csv`` of ``irepa metrics spatial --out`` (one source
  per encoder; per-image rows are averaged NaN-aware), ``metrics.csv`` of ``irepa encoders report``, or any CSV
  with an ``encoder`` column and one column per measure;
* **outcomes** (FID) — a CSV with ``encoder`` and ``fid`` (or ``gfid``) columns, or ``NAME=FILE`` pairs naming an
  ``irepa eval`` JSON (``metrics.fid``);
* **probe accuracies** — a CSV with ``encoder`` and ``top1`` (or ``accuracy``, ``lp``) columns, or ``irepa probe``
  JSON files (``NAME=FILE``, or a file whose ``encoder`` field names it).

:func:`correlate_study` returns a :class:`CorrelationReport`: per measure, Pearson and Spearman r against the
outcome with bootstrap intervals and p-values (:mod:`irepa.analysis.stats`), the leave-one-out range, and the same
statistics without a named set of outliers (default: the paper's, MoCov3-L and MAE-L).
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from irepa.errors import IrepaError

__all__ = [
    "MEASURE_ORDER",
    "PAPER_OUTLIERS",
    "CorrelationReport",
    "MeasureCorrelation",
    "StudyTable",
    "correlate_study",
    "read_measures",
    "read_outcomes",
    "read_probes",
]

#: Column order of tables and figures (the paper's Fig. 4: linear probe first, then the spatial metrics).
MEASURE_ORDER: tuple[str, ...] = ("lp", "lds", "lds_paper", "cds", "srss", "rmsc")
#: Display names of the measures.
MEASURE_LABELS = {"lp": "linear probe", "lds": "LDS", "lds_paper": "LDS (paper radii)", "cds": "CDS", "srss": "SRSS"}
MEASURE_LABELS["rmsc"] = "RMSC"
#: The correlation study's outliers named by the paper (App. M.3, Fig. 27), as zoo ids.
PAPER_OUTLIERS: tuple[str, ...] = ("mocov3-vit-l", "mae-vit-l")

_ENCODER_COLUMNS = ("encoder", "source", "name", "id")
_FID_COLUMNS = ("fid", "gfid")
_PROBE_COLUMNS = ("top1", "accuracy", "lp", "probe", "lp_acc")


# ----------------------------------------------------------------------------------------------------------------------
# Reading


@dataclasses.dataclass
class StudyTable:
    """Per encoder, the measures and the outcome.

    Attributes:
        rows: Encoder → {column → value}; columns are measure names and ``outcome``.
        sources: Where each column came from (file paths), for the JSON.
        notes: Remarks (encoders missing a value, files skipped).
    """

    rows: dict[str, dict[str, float]] = dataclasses.field(default_factory=dict)
    sources: dict[str, list[str]] = dataclasses.field(default_factory=dict)
    notes: list[str] = dataclasses.field(default_factory=list)

    def add(self, encoder: str, column: str, value: float, source: str) -> None:
        """Set one value (a second, different value for the same cell is an error)."""
        row = self.rows.setdefault(encoder, {})
        if column in row and not _same(row[column], value):
            raise IrepaError(f"two different {column} values for encoder {encoder!r} ({row[column]} and {value})")
        row[column] = float(value)
        files = self.sources.setdefault(column, [])
        if source not in files:
            files.append(source)

    def measures(self) -> list[str]:
        """Measure columns present, in :data:`MEASURE_ORDER` then alphabetical order."""
        present = {c for row in self.rows.values() for c in row if c != "outcome"}
        return [m for m in MEASURE_ORDER if m in present] + sorted(present - set(MEASURE_ORDER))


def _same(a: float, b: float) -> bool:
    return (math.isnan(a) and math.isnan(b)) or math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12)


def _read_csv(path: Path) -> list[dict[str, str]]:
    try:
        text = path.read_text()
    except OSError as exc:
        raise IrepaError(f"cannot read {str(path)!r}: {exc}") from None
    rows = list(csv.DictReader(io.StringIO(text)))
    if not rows:
        raise IrepaError(f"{str(path)!r} has no data rows")
    return [{(k or "").strip().lower(): (v or "").strip() for k, v in row.items()} for row in rows]


def _encoder_column(rows: list[dict[str, str]], path: Path) -> str:
    for column in _ENCODER_COLUMNS:
        if column in rows[0]:
            return column
    raise IrepaError(f"{str(path)!r} has no encoder column (name one of: {', '.join(_ENCODER_COLUMNS)})")


def _float(text: str, path: Path, what: str) -> float:
    if text.lower() in ("", "nan", "none", "null", "n/a"):
        return math.nan
    try:
        return float(text.rstrip("%"))
    except ValueError:
        raise IrepaError(f"{str(path)!r}: {what} value {text!r} is not a number") from None


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except OSError as exc:
        raise IrepaError(f"cannot read {str(path)!r}: {exc}") from None
    except json.JSONDecodeError as exc:
        raise IrepaError(f"{str(path)!r} is not valid JSON: {exc}") from None


def _split_pair(spec: str | Path) -> tuple[str | None, Path]:
    text = str(spec)
    if "=" in text and not Path(text).exists():
        name, _, file = text.partition("=")
        return name.strip(), Path(file)
    return None, Path(text)


def read_measures(paths: Sequence[str | Path], table: StudyTable | None = None) -> StudyTable:
    """Add the per-encoder measure means of ``paths`` to ``table`` (a new one by default).

    Spatial metrics: ``spatial_metrics.json`` (``sources.<encoder>.means``), per-image ``spatial_metrics.csv``
    (``source,index,<metric>...``, averaged NaN-aware), or a summary CSV (``encoder,<measure>...``). Columns that
    are not numbers (``images``, ``grid``) are skipped.

    Raises:
        IrepaError: Unreadable files, files without an encoder column, conflicting values.
    """
    table = table or StudyTable()
    for spec in paths:
        path = Path(spec)
        if path.suffix.lower() == ".json":
            data = _read_json(path)
            sources = data.get("sources") if isinstance(data, dict) else None
            if not isinstance(sources, dict):
                raise IrepaError(f"{str(path)!r} is not a spatial_metrics.json (no 'sources' mapping)")
            for encoder, entry in sources.items():
                for metric, value in (entry.get("means") or {}).items():
                    table.add(encoder, metric, math.nan if value is None else value, str(path))
            continue
        rows = _read_csv(path)
        key = _encoder_column(rows, path)
        columns = [c for c in rows[0] if c not in (key, "index", "images", "grid", "num_images")]
        if "index" in rows[0]:  # per-image rows: NaN-aware mean per encoder
            sums: dict[str, dict[str, list[float]]] = {}
            for row in rows:
                for column in columns:
                    value = _float(row[column], path, column)
                    if not math.isnan(value):
                        sums.setdefault(row[key], {}).setdefault(column, []).append(value)
            for encoder, values in sums.items():
                for column, numbers in values.items():
                    table.add(encoder, column, sum(numbers) / len(numbers), str(path))
            continue
        for row in rows:
            for column in columns:
                table.add(row[key], column, _float(row[column], path, column), str(path))
    return table


def read_outcomes(specs: Sequence[str | Path], table: StudyTable, *, column: str = "outcome") -> StudyTable:
    """Add FID values: CSVs with an encoder and a ``fid``/``gfid`` column, or ``NAME=FILE`` ``irepa eval`` JSONs.

    Raises:
        IrepaError: Unreadable files, a JSON without a name, a CSV without a FID column.
    """
    for spec in specs:
        name, path = _split_pair(spec)
        if path.suffix.lower() == ".json":
            data = _read_json(path)
            fid = (data.get("metrics") or {}).get("fid") if isinstance(data, dict) else None
            if fid is None:
                raise IrepaError(f"{str(path)!r} has no metrics.fid (is it an 'irepa eval' JSON?)")
            if name is None:
                raise IrepaError(f"name the encoder of {str(path)!r}: pass it as ENCODER={path}")
            table.add(name, column, fid, str(path))
            continue
        rows = _read_csv(path)
        key = _encoder_column(rows, path)
        fid_column = next((c for c in _FID_COLUMNS if c in rows[0]), None)
        if fid_column is None:
            raise IrepaError(f"{str(path)!r} has no FID column (name it one of: {', '.join(_FID_COLUMNS)})")
        for row in rows:
            table.add(row[key], column, _float(row[fid_column], path, fid_column), str(path))
    return table


def read_probes(specs: Sequence[str | Path], table: StudyTable) -> StudyTable:
    """Add linear-probe accuracies (column ``lp``): CSVs, or ``irepa probe --out`` JSONs (``top1``).

    Raises:
        IrepaError: Unreadable files, a JSON naming no encoder, a CSV without an accuracy column.
    """
    for spec in specs:
        name, path = _split_pair(spec)
        if path.suffix.lower() == ".json":
            data = _read_json(path)
            if not isinstance(data, dict) or "top1" not in data:
                raise IrepaError(f"{str(path)!r} has no top1 (is it an 'irepa probe --out' JSON?)")
            encoder = name or data.get("encoder")
            if not encoder:
                raise IrepaError(f"{str(path)!r} names no encoder; pass it as ENCODER={path}")
            table.add(encoder, "lp", data["top1"], str(path))
            continue
        rows = _read_csv(path)
        key = _encoder_column(rows, path)
        acc_column = next((c for c in _PROBE_COLUMNS if c in rows[0]), None)
        if acc_column is None:
            raise IrepaError(f"{str(path)!r} has no accuracy column (name it one of: {', '.join(_PROBE_COLUMNS)})")
        for row in rows:
            table.add(row[key], "lp", _float(row[acc_column], path, acc_column), str(path))
    return table


# ----------------------------------------------------------------------------------------------------------------------
# The study


@dataclasses.dataclass
class MeasureCorrelation:
    """Everything about one measure against the outcome.

    Attributes:
        measure: Column name (``lp``, ``lds``, ...).
        encoders: The encoders with both values, in table order.
        x: Measure values.
        y: Outcome values.
        pearson: Pearson r with p-value and interval.
        spearman: Spearman ρ with p-value and interval.
        leave_one_out: Encoder → Pearson r without it.
        excluded: Encoders of the outlier set that were present (and left out below).
        pearson_without: Pearson r without the outliers (None if none present or fewer than 3 points remain).
        spearman_without: Spearman ρ without them.
    """

    measure: str
    encoders: list[str]
    x: list[float]
    y: list[float]
    pearson: Any
    spearman: Any
    leave_one_out: dict[str, float]
    excluded: list[str]
    pearson_without: Any | None
    spearman_without: Any | None

    @property
    def label(self) -> str:
        """Display name."""
        return MEASURE_LABELS.get(self.measure, self.measure)

    def loo_range(self) -> tuple[float, float, str, float]:
        """``(min r, max r, most influential encoder, r without it)`` over the leave-one-out values."""
        finite = {k: v for k, v in self.leave_one_out.items() if not math.isnan(v)}
        if not finite:
            return math.nan, math.nan, "", math.nan
        worst = max(finite, key=lambda k: abs(finite[k] - self.pearson.r))
        return min(finite.values()), max(finite.values()), worst, finite[worst]

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe dict."""
        low, high, worst, worst_r = self.loo_range()
        return {
            "measure": self.measure,
            "n": len(self.encoders),
            "encoders": self.encoders,
            "x": self.x,
            "y": self.y,
            "pearson": self.pearson.to_dict(),
            "spearman": self.spearman.to_dict(),
            "leave_one_out": {k: _nan_none(v) for k, v in self.leave_one_out.items()},
            "leave_one_out_range": [_nan_none(low), _nan_none(high)],
            "most_influential": {"encoder": worst, "r_without": _nan_none(worst_r)},
            "excluded": self.excluded,
            "pearson_without_excluded": self.pearson_without.to_dict() if self.pearson_without else None,
            "spearman_without_excluded": self.spearman_without.to_dict() if self.spearman_without else None,
        }


def _nan_none(value: float) -> float | None:
    return None if math.isnan(value) else value


@dataclasses.dataclass
class CorrelationReport:
    """The study's result: one :class:`MeasureCorrelation` per measure.

    Attributes:
        outcome: Name of the outcome (``gFID``).
        measures: Measure → correlation.
        settings: Bootstrap settings and the outlier set.
        table: The input table.
    """

    outcome: str
    measures: dict[str, MeasureCorrelation]
    settings: dict[str, Any]
    table: StudyTable

    def to_json(self) -> dict[str, Any]:
        """JSON-safe dict: settings, inputs, notes, per measure all statistics."""
        return {
            "format": "irepa-correlations/1",
            "outcome": self.outcome,
            "settings": self.settings,
            "inputs": self.table.sources,
            "notes": self.table.notes,
            "measures": {name: m.to_dict() for name, m in self.measures.items()},
        }

    def to_csv(self) -> str:
        """One row per measure: n, Pearson r/CI/p, Spearman ρ/CI/p, leave-one-out range, r without outliers."""
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(
            [
                "measure", "n", "pearson_r", "pearson_ci_low", "pearson_ci_high", "pearson_p",
                "spearman_rho", "spearman_ci_low", "spearman_ci_high", "spearman_p",
                "loo_min", "loo_max", "most_influential", "r_without_most_influential",
                "excluded", "pearson_r_without_excluded", "spearman_rho_without_excluded",
            ]
        )  # fmt: skip
        for m in self.measures.values():
            low, high, worst, worst_r = m.loo_range()
            writer.writerow(
                [
                    m.measure, len(m.encoders), _num(m.pearson.r), _num(m.pearson.ci[0]), _num(m.pearson.ci[1]),
                    _num(m.pearson.p_value), _num(m.spearman.r), _num(m.spearman.ci[0]), _num(m.spearman.ci[1]),
                    _num(m.spearman.p_value), _num(low), _num(high), worst, _num(worst_r), ";".join(m.excluded),
                    _num(m.pearson_without.r) if m.pearson_without else "",
                    _num(m.spearman_without.r) if m.spearman_without else "",
                ]
            )  # fmt: skip
        return buffer.getvalue()

    def to_markdown(self) -> str:
        """A markdown table with one row per measure and a line on what the numbers can and cannot say."""
        conf = round(100 * self.settings["confidence"])
        lines = [
            f"| measure | n | Pearson r [{conf} % CI] | p | Spearman ρ [{conf} % CI] | p | leave-one-out r "
            "(most influential) | r without " + (", ".join(self.settings["exclude"]) or "—") + " |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for m in self.measures.values():
            low, high, worst, worst_r = m.loo_range()
            without = (
                f"{_fmt(m.pearson_without.r)} [{_fmt(m.pearson_without.ci[0])}, {_fmt(m.pearson_without.ci[1])}] "
                f"(n={m.pearson_without.n})"
                if m.pearson_without
                else "—"
            )
            lines.append(
                f"| {m.label} | {len(m.encoders)} | {_fmt(m.pearson.r)} [{_fmt(m.pearson.ci[0])}, "
                f"{_fmt(m.pearson.ci[1])}] | {_p(m.pearson.p_value)} | {_fmt(m.spearman.r)} "
                f"[{_fmt(m.spearman.ci[0])}, {_fmt(m.spearman.ci[1])}] | {_p(m.spearman.p_value)} | "
                f"{_fmt(low)}..{_fmt(high)} ({worst or '—'}: {_fmt(worst_r)}) | {without} |"
            )
        n_min = min(len(m.encoders) for m in self.measures.values())
        lines += [
            "",
            f"Outcome: {self.outcome}. Intervals: paired percentile bootstrap, {self.settings['n_resamples']} "
            f"resamples, seed {self.settings['seed']}. p: two-sided, against r = 0"
            + (" (exact over all pairings for n ≤ 8)" if n_min <= 8 else "")
            + ". An interval wider than the gap between two measures' r means the data cannot rank those measures.",
        ]
        degenerate = max(max(m.pearson.degenerate, m.spearman.degenerate) for m in self.measures.values())
        if degenerate:
            lines.append(
                f"Up to {degenerate} of {self.settings['n_resamples']} resamples drew too few distinct points for a "
                "correlation and were dropped; with so few encoders the intervals are close to meaningless."
            )
        return "\n".join(lines)


def _fmt(value: float) -> str:
    return "n/a" if value is None or math.isnan(value) else f"{value:+.3f}"


def _num(value: float) -> str:
    return "" if value is None or math.isnan(value) else repr(float(value))


def _p(value: float) -> str:
    if value is None or math.isnan(value):
        return "n/a"
    return f"{value:.2g}" if value >= 1e-4 else f"{value:.1e}"


def correlate_study(
    table: StudyTable,
    *,
    outcome: str = "gFID",
    measures: Sequence[str] | None = None,
    exclude: Sequence[str] = PAPER_OUTLIERS,
    n_resamples: int = 9999,
    confidence: float = 0.95,
    seed: int = 0,
) -> CorrelationReport:
    """Correlate every measure of ``table`` with its outcome.

    Args:
        table: Per-encoder values with an ``outcome`` column.
        outcome: Display name of the outcome.
        measures: Measures to correlate (default: every measure column).
        exclude: Encoders left out in the "without" columns (default: the paper's outliers MoCov3-L, MAE-L).
        n_resamples: Bootstrap resamples.
        confidence: Interval level.
        seed: Bootstrap seed.

    Raises:
        IrepaError: No outcome values, an unknown measure, fewer than 3 encoders with both values.
    """
    from irepa.analysis.stats import correlate, leave_one_out

    if not any("outcome" in row for row in table.rows.values()):
        raise IrepaError("no outcome (FID) values: pass --fid with a CSV or ENCODER=EVAL.json")
    available = table.measures()
    chosen = list(measures) if measures else available
    unknown = [m for m in chosen if m not in available]
    if unknown:
        raise IrepaError(f"no values for measure(s) {', '.join(unknown)}; available: {', '.join(available) or 'none'}")
    if not chosen:
        raise IrepaError("no measure values: pass --metrics and/or --probe files")
    kwargs = {"n_resamples": n_resamples, "confidence": confidence, "seed": seed}
    results: dict[str, MeasureCorrelation] = {}
    for measure in chosen:
        pairs = [
            (name, row[measure], row["outcome"])
            for name, row in table.rows.items()
            if not math.isnan(row.get(measure, math.nan)) and not math.isnan(row.get("outcome", math.nan))
        ]
        missing = [n for n, row in table.rows.items() if n not in {p[0] for p in pairs}]
        if missing:
            table.notes.append(f"{measure}: left out {', '.join(missing)} (no {measure} or no outcome value)")
        if len(pairs) < 3:
            raise IrepaError(f"{measure}: only {len(pairs)} encoders have both values; a correlation needs 3")
        names = [p[0] for p in pairs]
        x = [p[1] for p in pairs]
        y = [p[2] for p in pairs]
        excluded = [n for n in names if n in set(exclude)]
        kept = [i for i, n in enumerate(names) if n not in set(exclude)]
        without_p = without_s = None
        if excluded and len(kept) >= 3:
            kx, ky = [x[i] for i in kept], [y[i] for i in kept]
            without_p = correlate(kx, ky, "pearson", **kwargs)
            without_s = correlate(kx, ky, "spearman", **kwargs)
        results[measure] = MeasureCorrelation(
            measure=measure,
            encoders=names,
            x=x,
            y=y,
            pearson=correlate(x, y, "pearson", **kwargs),
            spearman=correlate(x, y, "spearman", **kwargs),
            leave_one_out=leave_one_out(x, y, names, "pearson"),
            excluded=excluded,
            pearson_without=without_p,
            spearman_without=without_s,
        )
    settings = {**kwargs, "exclude": list(exclude), "interval": "paired percentile bootstrap"}
    return CorrelationReport(outcome, results, settings, table)


def figure_panels(report: CorrelationReport) -> list[dict[str, Any]]:
    """The panels of :func:`irepa.analysis.plots.correlation_figure` for ``report`` (one per measure)."""
    return [
        {
            "x": m.x,
            "y": m.y,
            "labels": m.encoders,
            "measure": m.label,
            "r": m.pearson.r,
            "ci": m.pearson.ci,
            "rho": m.spearman.r,
            "highlight": m.excluded,
        }
        for m in report.measures.values()
    ]


def write_outputs(report: CorrelationReport, out_dir: str | Path, *, figure: bool = True) -> list[Path]:
    """Write ``correlations.{md,csv,json}`` and, with ``figure``, ``correlations.png`` into ``out_dir``."""
    from irepa.utils.io import write_json, write_text

    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise IrepaError(f"--out {str(out)!r} exists and is not a directory")
    payload, table, markdown = report.to_json(), report.to_csv(), report.to_markdown()
    written = []
    write_json(out / "correlations.json", payload)
    write_text(out / "correlations.csv", table)
    write_text(out / "correlations.md", markdown + "\n")
    written += [out / "correlations.md", out / "correlations.csv", out / "correlations.json"]
    if figure:
        from irepa.analysis.plots import correlation_figure

        written.append(
            correlation_figure(
                out / "correlations.png",
                figure_panels(report),
                y_label=report.outcome,
                title=f"{report.outcome} against each measure (n = {len(report.table.rows)} encoders)",
            )
        )
    return written
