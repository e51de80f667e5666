"""The paper's published numbers as data, and every statistic they allow, recomputed beside the paper's claims.

The numbers live in ``irepa/analysis/data/paper_numbers.yaml`` (shipped with the package), each table with its
source (table or figure, section, the paper-notes section it was transcribed from; pages are unknown and recorded
as null). :func:`load_paper_numbers` reads them into :class:`PairedTable` objects whose values carry that
provenance; :func:`paper_checks` recomputes:

* for every table that pairs a baseline with iREPA (Tables 1–10): per column, on how many rows iREPA is better
  (lower FID/sFID/CMMD, higher IS/precision/recall), the mean, median and mean relative change;
* the claims stated with numbers: relative FID gains (Table 1a), the headline correlation range and ratio,
  "gains are marginal" for SAM2, the recall drop with CFG at 400K, the largest FID reduction;
* for every published correlation: its 95 % Fisher-z interval and t-test p-value at n = 27, the share of variance;
* agreement between values reported more than once (e.g. PE-Core-G + iREPA: 19.5, 18.19, 18.1) and between Table 7
  and Table 4;
* and lists what cannot be checked from text (results shown only as figures).

Each :class:`Check` says what the paper claims, what the numbers give, and a verdict: ``agrees``, ``differs``,
``computed`` (a statistic the paper does not state) or ``not checkable``.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import statistics
from typing import Any

from irepa.errors import IrepaError

__all__ = [
    "Check",
    "ColumnSummary",
    "PairedTable",
    "PaperValue",
    "load_paper_numbers",
    "paper_checks",
    "render_checks",
]

DATA_FILE = "paper_numbers.yaml"


@dataclasses.dataclass(frozen=True)
class PaperValue:
    """One published number with where it comes from.

    Attributes:
        value: The number as printed.
        source: Table or figure (e.g. ``Table 5``).
        section: Section of the paper, when known.
        page: Page of the paper (None: unknown; the team's notes record no pages).
        notes: The paper-notes section it was transcribed from.
    """

    value: float
    source: str
    section: str | None
    page: int | None
    notes: str | None


def _provenance(source: dict[str, Any]) -> dict[str, Any]:
    label = source.get("table") or source.get("figure") or source.get("section") or "?"
    return {"source": label, "section": source.get("section"), "page": source.get("page"), "notes": source.get("notes")}


@dataclasses.dataclass(frozen=True)
class PairedTable:
    """A table pairing a baseline with the same setting under iREPA.

    Attributes:
        key: Identifier (``table5``).
        title: What the table shows.
        source: Provenance of the table.
        baseline: Baseline method name.
        treatment: iREPA variant name.
        columns: Column names.
        lower_is_better: Columns that improve downwards.
        rows: Row label → (baseline values, treatment values), each a tuple of :class:`PaperValue` (None = blank).
    """

    key: str
    title: str
    source: dict[str, Any]
    baseline: str
    treatment: str
    columns: tuple[str, ...]
    lower_is_better: frozenset[str]
    rows: dict[str, tuple[tuple[PaperValue | None, ...], tuple[PaperValue | None, ...]]]

    def value(self, row: str, column: str, treated: bool) -> float:
        """One number (NaN when blank)."""
        cell = self.rows[row][1 if treated else 0][self.columns.index(column)]
        return math.nan if cell is None else cell.value


@functools.lru_cache(maxsize=1)
def load_paper_numbers() -> dict[str, Any]:
    """The shipped numbers: ``{"paired": {key: PairedTable}, "raw": the parsed YAML}``.

    Raises:
        IrepaError: The data file is missing or malformed (a broken installation).
    """
    import importlib.resources

    import yaml

    try:
        text = (importlib.resources.files("irepa.analysis") / "data" / DATA_FILE).read_text()
        raw = yaml.safe_load(text)
    except (OSError, yaml.YAMLError) as exc:
        raise IrepaError(f"the paper's numbers ({DATA_FILE}) cannot be read: {exc}; reinstall irepa") from None
    paired = {}
    for key, spec in raw["paired_tables"].items():
        prov = _provenance(spec["source"])
        columns = tuple(spec["columns"])

        def cells(
            values: list[Any], prov: dict[str, Any] = prov, columns: tuple[str, ...] = columns, key: str = key
        ) -> tuple:
            if len(values) != len(columns):
                raise IrepaError(f"{DATA_FILE}: a row of {key} has {len(values)} values for {len(columns)} columns")
            return tuple(None if v is None else PaperValue(float(v), **prov) for v in values)

        paired[key] = PairedTable(
            key=key,
            title=spec["title"],
            source=prov,
            baseline=spec["baseline"],
            treatment=spec["treatment"],
            columns=columns,
            lower_is_better=frozenset(spec.get("lower_is_better", [])),
            rows={label: (cells(pair[0]), cells(pair[1])) for label, pair in spec["rows"].items()},
        )
    return {"paired": paired, "raw": raw}


# ----------------------------------------------------------------------------------------------------------------------
# Checks


@dataclasses.dataclass(frozen=True)
class Check:
    """One statistic beside the paper's claim.

    Attributes:
        section: Group heading (e.g. ``Table 5``).
        claim: What is checked (the paper's words where it makes a claim).
        paper: What the paper states ("—" when it states nothing).
        recomputed: What its numbers give.
        verdict: ``agrees``, ``differs``, ``computed`` or ``not checkable``.
        source: Provenance (table/figure, section; page unknown).
    """

    section: str
    claim: str
    paper: str
    recomputed: str
    verdict: str
    source: str

    def to_dict(self) -> dict[str, str]:
        """JSON-safe dict."""
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class ColumnSummary:
    """How iREPA changes one column of a paired table.

    Attributes:
        column: Column name.
        better: Rows where iREPA is better (names).
        worse: Rows where it is worse.
        ties: Rows with equal values.
        mean_change: Mean of (iREPA − baseline).
        median_change: Median of (iREPA − baseline).
        mean_relative: Mean of (iREPA − baseline) / baseline, in percent.
    """

    column: str
    better: list[str]
    worse: list[str]
    ties: list[str]
    mean_change: float
    median_change: float
    mean_relative: float

    @property
    def n(self) -> int:
        """Rows with both values."""
        return len(self.better) + len(self.worse) + len(self.ties)


def summarize_column(table: PairedTable, column: str) -> ColumnSummary:
    """Count, mean, median and mean relative change of ``column`` over the rows of ``table`` with both values."""
    lower = column in table.lower_is_better
    better, worse, ties, changes, relative = [], [], [], [], []
    for row in table.rows:
        base, treated = table.value(row, column, False), table.value(row, column, True)
        if math.isnan(base) or math.isnan(treated):
            continue
        delta = treated - base
        changes.append(delta)
        relative.append(100.0 * delta / base)
        if math.isclose(treated, base, abs_tol=1e-12):
            ties.append(row)
        elif (delta < 0) == lower:
            better.append(row)
        else:
            worse.append(row)
    if not changes:
        raise IrepaError(f"{table.key}: column {column!r} has no complete pair")
    return ColumnSummary(
        column=column,
        better=better,
        worse=worse,
        ties=ties,
        mean_change=statistics.fmean(changes),
        median_change=statistics.median(changes),
        mean_relative=statistics.fmean(relative),
    )


def _src(prov: dict[str, Any]) -> str:
    parts = [prov.get("source") or "?"]
    if prov.get("section") and prov.get("section") != prov.get("source"):
        parts.append(str(prov["section"]))
    parts.append(f"p. {prov['page']}" if prov.get("page") else "page unknown")
    return ", ".join(parts)


def _table_checks(table: PairedTable) -> list[Check]:
    out = []
    section = f"{table.source['source']}: {table.title}"
    for column in table.columns:
        s = summarize_column(table, column)
        direction = "lower" if column in table.lower_is_better else "higher"
        detail = f"{len(s.better)}/{s.n} rows {direction} with {table.treatment}"
        if s.worse:
            detail += f" (not: {', '.join(s.worse)})"
        if s.ties:
            detail += f" (equal: {', '.join(s.ties)})"
        detail += (
            f"; change mean {s.mean_change:+.4g}, median {s.median_change:+.4g}, mean relative {s.mean_relative:+.1f} %"
        )
        out.append(
            Check(
                section, f"{column}: {table.treatment} vs {table.baseline}", "—", detail, "computed", _src(table.source)
            )
        )
    return out


def _verdict(ok: bool) -> str:
    return "agrees" if ok else "differs"


def _claim_checks(data: dict[str, Any]) -> list[Check]:
    paired: dict[str, PairedTable] = data["paired"]
    raw = data["raw"]
    out: list[Check] = []

    # Table 1a: relative FID gains stated in the text.
    t1a = paired["table1a"]
    for row, stated in (("PE-B", 22.2), ("PE-L", 38.8), ("PE-G", 39.6)):
        base, treated = t1a.value(row, "FID", False), t1a.value(row, "FID", True)
        gain = 100 * (base - treated) / base
        out.append(
            Check(
                "Claims with numbers",
                f"relative FID gain of iREPA, {row} (SiT-XL/2, 100K)",
                f"{stated} %",
                f"({base:g} − {treated:g}) / {base:g} = {gain:.2f} %",
                _verdict(round(gain, 1) == stated),
                _src(t1a.source),
            )
        )

    # Table 5: the brief's running example, stated as the paper's message (iREPA helps across encoders).
    t5 = paired["table5"]
    fid = summarize_column(t5, "FID")
    out.append(
        Check(
            "Claims with numbers",
            "iREPA improves FID across the 16 encoders of Table 5 (SiT-B/2, 400K)",
            "improves across encoders",
            f"{len(fid.better)}/{fid.n} lower; mean change {fid.mean_change:+.3f}, median {fid.median_change:+.3f}",
            _verdict(len(fid.better) == fid.n),
            _src(t5.source),
        )
    )
    dino = t5.rows["DINO-B"]
    is_drop = dino[1][0].value < dino[0][0].value
    out.append(
        Check(
            "Claims with numbers",
            "DINO-B at SiT-B/2: iREPA barely helps (FID) and IS drops",
            "FID 24.71 → 24.41, IS drops",
            f"FID {dino[0][1].value:g} → {dino[1][1].value:g} "
            f"({dino[1][1].value - dino[0][1].value:+.2f}); IS {dino[0][0].value:g} → {dino[1][0].value:g}",
            _verdict(is_drop),
            _src(t5.source),
        )
    )

    # sFID gets worse sometimes.
    t1b = paired["table1b"]
    worse = [r for r in t1b.rows if t1b.value(r, "sFID", True) > t1b.value(r, "sFID", False)]
    out.append(
        Check(
            "Claims with numbers",
            "sFID sometimes gets worse with iREPA (SiT-B 7.00 → 7.87, SiT-XL 5.83 → 6.26)",
            "SiT-B and SiT-XL worse",
            f"worse for {', '.join(worse)} of Table 1b",
            _verdict(set(worse) == {"SiT-B", "SiT-XL"}),
            _src(t1b.source),
        )
    )

    # Table 7: CFG gains at 400K small for DINOv2/DINOv3, recall drops.
    t7 = paired["table7"]
    recall = {r: t7.value(r, "Rec", True) - t7.value(r, "Rec", False) for r in t7.rows}
    fid7 = {r: t7.value(r, "FID", True) - t7.value(r, "FID", False) for r in t7.rows}
    drops = [r for r, d in recall.items() if d < 0]
    out.append(
        Check(
            "Claims with numbers",
            "at 400K with CFG, gains are small for DINOv2/DINOv3 and recall drops slightly",
            "1.98 → 1.93, 1.99 → 1.89; recall drops",
            "FID change "
            + ", ".join(f"{r} {d:+.2f}" for r, d in fid7.items())
            + "; recall change "
            + ", ".join(f"{r} {d:+.3f}" for r, d in recall.items())
            + f" (drops only for {', '.join(drops)})",
            _verdict(set(drops) == {"DINOv2-B", "DINOv3-B"}),
            _src(t7.source),
        )
    )

    # SAM2: gains marginal (compare with the other encoders at the same model and steps, Table 4).
    t9, t4 = paired["table9"], paired["table4"]
    sam = {r: 100 * (t9.value(r, "FID", False) - t9.value(r, "FID", True)) / t9.value(r, "FID", False) for r in t9.rows}
    others = [
        100 * (t4.value(r, "FID", False) - t4.value(r, "FID", True)) / t4.value(r, "FID", False)
        for r in t4.rows
        if r.endswith("100K")
    ]
    out.append(
        Check(
            "Claims with numbers",
            "SAM2-S: iREPA's gains are marginal (little global component to remove)",
            "marginal",
            f"relative FID gain {sam['100K']:.1f} % at 100K, {sam['400K']:.1f} % at 400K; the four "
            f"encoders of Table 4 at 100K: {min(others):.1f}–{max(others):.1f} %",
            _verdict(sam["100K"] < min(others)),
            _src(t9.source),
        )
    )

    # Largest FID reduction ("up to 14-point", a third-party summary).
    best = max(
        (
            (t.value(r, c, False) - t.value(r, c, True), t.key, r, c)
            for t in paired.values()
            for r in t.rows
            for c in t.columns
            if c in ("FID", "CFG FID") or c.startswith("FID ")
        ),
    )
    latent = max(
        t.value(r, "FID", False) - t.value(r, "FID", True)
        for t in (paired["table2_full"], paired["table4"])
        for r in t.rows
    )
    out.append(
        Check(
            "Claims with numbers",
            "'up to 14-point FID reduction' (third-party summary; PE-Core-G 32.35 → 18.19, SiT-XL/2 100K)",
            "14 points",
            f"SiT-XL/2 100K: {latent:.2f} points; over every table: "
            f"{best[0]:.2f} points ({best[1]}, {best[2]}, {best[3]})",
            _verdict(round(latent) == 14),
            "Table 2 / Table 4 (summary by emergentmind [S])",
        )
    )

    # Anecdotes of §2.
    an = raw["anecdotes"]["rows"]
    out.append(
        Check(
            "Claims with numbers",
            "PE-Spatial-B (53.1 % LP) gives better gFID than PE-Core-G (82.8 % LP)",
            "21.0 vs 32.3",
            f"{an['PE-Spatial-B']['gfid']:g} < {an['PE-Core-G']['gfid']:g}: "
            f"{an['PE-Spatial-B']['gfid'] < an['PE-Core-G']['gfid']}",
            _verdict(an["PE-Spatial-B"]["gfid"] < an["PE-Core-G"]["gfid"]),
            _src(_provenance(raw["anecdotes"]["source"])),
        )
    )
    sam_fid = t9.value("100K", "FID", False)
    out.append(
        Check(
            "Claims with numbers",
            "SAM2-S (24.1 % LP) beats encoders with about 60 points higher accuracy, e.g. PE-Core-G",
            "beats PE-Core-G",
            f"gFID {sam_fid:g} (Table 9, 100K) vs {an['PE-Core-G']['gfid']:g};"
            f" accuracy gap {an['PE-Core-G']['lp'] - 24.1:.1f} points",
            _verdict(sam_fid < an["PE-Core-G"]["gfid"]),
            "§2, Table 9",
        )
    )
    out.append(_anecdote_correlation(an, _src(_provenance(raw["anecdotes"]["source"]))))

    # CLS mixing endpoints.
    cm = raw["cls_mixing"]
    a0, a5 = cm["endpoints"]
    out.append(
        Check(
            "Claims with numbers",
            "CLS mixing (DINOv2-B, α 0 → 0.5): accuracy rises, gFID gets worse",
            "LP 70.7 → 78.5 %, gFID 19.2 → 25.4",
            f"LP {a5['lp'] - a0['lp']:+.1f} points, gFID "
            f"{a5['gfid'] - a0['gfid']:+.1f} ({100 * (a5['gfid'] - a0['gfid']) / a0['gfid']:+.1f} %)",
            _verdict(a5["lp"] > a0["lp"] and a5["gfid"] > a0["gfid"]),
            _src(_provenance(cm["source"])),
        )
    )
    out.append(
        Check(
            "Claims with numbers",
            "CLS mixing: accuracy rises monotonically with α",
            "monotonic",
            "intermediate α only in the figure",
            "not checkable",
            _src(_provenance(cm["source"])),
        )
    )

    # Table 3b duplicate cells.
    t3b = paired["table3b"]
    dup = [
        (a, b)
        for i, a in enumerate(t3b.rows)
        for b in list(t3b.rows)[i + 1 :]
        if all(t3b.value(a, c, True) == t3b.value(b, c, True) for c in t3b.columns[:4])
    ]
    out.append(
        Check(
            "Consistency",
            "Table 3b: the iREPA no-CFG cells of different encoders differ",
            "—",
            "identical for " + " and ".join(f"{a} / {b}" for a, b in dup) if dup else "all differ",
            "differs" if dup else "agrees",
            _src(t3b.source),
        )
    )

    # Table 7 vs Table 4 (400K CFG rows).
    mismatches = []
    names = {
        "DINOv2-B": "DINOv2-B 400K",
        "DINOv3-B": "DINOv3-B 400K",
        "WebSSL-1B": "WebSSL-1B 400K",
        "PE-G": "PE-Core-G 400K",
    }
    for r7, r4 in names.items():
        for c7 in t7.columns:
            for treated in (False, True):
                v7, v4 = t7.value(r7, c7, treated), t4.value(r4, f"CFG {c7}", treated)
                decimals = len(repr(v4).split(".")[1]) if "." in repr(v4) else 0
                if abs(v7 - v4) > 0.5 * 10**-decimals + 1e-9:
                    mismatches.append(f"{r7} {c7} {'iREPA' if treated else 'REPA'}: {v7:g} vs {v4:g}")
    out.append(
        Check(
            "Consistency",
            "Table 7 repeats Table 4's 400K CFG rows with more decimals",
            "same values",
            "all 40 values round to Table 4's" if not mismatches else "; ".join(mismatches),
            _verdict(not mismatches),
            "Table 7, Table 4",
        )
    )

    # Values reported more than once.
    for item in raw["repeated_values"]:
        values = [(v["value"], _provenance(v["source"])["source"]) for v in item["values"]]
        spread = max(v for v, _ in values) - min(v for v, _ in values)
        listing = ", ".join(f"{v:g} ({s})" for v, s in values)
        out.append(
            Check(
                "Consistency",
                item["what"],
                listing,
                f"spread {spread:.3g}",
                _verdict(spread == 0),
                "; ".join(s for _, s in values),
            )
        )
    return out


def _anecdote_correlation(rows: dict[str, dict[str, float]], source: str) -> Check:
    from irepa.analysis.stats import correlate

    names = list(rows)
    gfid = [rows[n]["gfid"] for n in names]
    lds = correlate([rows[n]["lds"] for n in names], gfid, n_resamples=9999, seed=0)
    lp = correlate([rows[n]["lp"] for n in names], gfid, n_resamples=9999, seed=0)
    return Check(
        "Correlations",
        f"gFID against LDS and LP over the {len(names)} encoders quoted with all three numbers in §2",
        "—",
        f"LDS r = {lds.r:+.3f} [{lds.ci[0]:+.2f}, {lds.ci[1]:+.2f}]; LP r = {lp.r:+.3f} [{lp.ci[0]:+.2f}, "
        f"{lp.ci[1]:+.2f}] (95 % bootstrap, n = {len(names)}: far too few points to rank measures)",
        "computed",
        source,
    )


def fisher_interval(r: float, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Fisher-z confidence interval of a Pearson r from n points: ``tanh(atanh(r) ± z_{1−α/2} / sqrt(n − 3))``."""
    if n < 4 or not -1 < r < 1:
        raise IrepaError(f"a Fisher interval needs -1 < r < 1 and n >= 4, got r={r}, n={n}")
    z = statistics.NormalDist().inv_cdf(0.5 + confidence / 2)
    centre, half = math.atanh(r), z / math.sqrt(n - 3)
    return math.tanh(centre - half), math.tanh(centre + half)


def r_p_value(r: float, n: int) -> float:
    """Two-sided p-value of a Pearson r from n points (t-test with n − 2 degrees of freedom)."""
    try:
        from scipy import stats
    except ImportError:
        raise IrepaError("p-values need scipy: pip install 'irepa[analysis]'") from None
    t = r * math.sqrt((n - 2) / (1 - r * r))
    return float(2 * stats.t.sf(abs(t), n - 2))


def _correlation_checks(raw: dict[str, Any]) -> list[Check]:
    out = []
    for item in raw["correlations"]:
        n, src = item["n"], _src(_provenance(item["source"]))
        for measure, r in item["r"].items():
            low, high = fisher_interval(r, n)
            out.append(
                Check(
                    "Correlations",
                    f"{item['setting']}: r(gFID, {measure})",
                    f"{r:+.3f}",
                    f"95 % CI [{low:+.3f}, {high:+.3f}] (Fisher z, n = {n}); p = {r_p_value(r, n):.2g}; "
                    f"r² = {r * r:.3f}",
                    "computed",
                    src,
                )
            )
    xl = raw["correlations"][0]
    spatial = {k: abs(v) for k, v in xl["r"].items() if k != "LP"}
    head = raw["headline"]
    src = _src(_provenance(xl["source"]))
    low, high = min(spatial.values()), max(spatial.values())
    out.append(
        Check(
            "Correlations",
            head["range"]["text"],
            f"{head['range']['low']}–{head['range']['high']}",
            f"min |r| {low:.3f} ({min(spatial, key=spatial.get)}), max {high:.3f} ({max(spatial, key=spatial.get)})",
            _verdict((low, high) == (head["range"]["low"], head["range"]["high"])),
            src,
        )
    )
    bound = head["intro_bound"]["value"]
    below = [k for k, v in spatial.items() if v <= bound]
    out.append(
        Check(
            "Correlations",
            head["intro_bound"]["text"] + " (introduction)",
            f"> {bound}",
            "below the bound: " + ", ".join(f"{k} {spatial[k]:.3f}" for k in below) if below else "all four above",
            _verdict(not below),
            _src(_provenance(head["intro_bound"]["source"])),
        )
    )
    lp = abs(xl["r"]["LP"])
    out.append(
        Check(
            "Correlations",
            head["ratio"]["text"],
            "3×",
            f"|r| ratio weakest spatial / LP = {low / lp:.2f}, "
            f"strongest / LP = {high / lp:.2f}; r² ratio {low**2 / lp**2:.1f}–{high**2 / lp**2:.1f}",
            _verdict(low / lp >= head["ratio"]["value"]),
            _src(_provenance(head["ratio"]["source"])),
        )
    )
    lp_low, lp_high = fisher_interval(xl["r"]["LP"], xl["n"])
    sp_high = max(fisher_interval(-v, xl["n"])[1] for v in spatial.values())
    out.append(
        Check(
            "Correlations",
            "LP's r is distinguishable from zero, and from the spatial metrics' r (n = 27)",
            "LP |r| = 0.26 'does not' predict",
            f"LP 95 % CI [{lp_low:+.2f}, {lp_high:+.2f}] includes 0; "
            f"the spatial CIs end at {sp_high:+.2f}, below LP's lower end {lp_low:+.2f}"
            if sp_high < lp_low
            else "the intervals overlap",
            "computed",
            src,
        )
    )
    out.append(
        Check(
            "Correlations",
            "whether the spatial r values differ from each other (e.g. RMSC vs CDS)",
            "—",
            "needs the correlation between the metrics across encoders (Steiger's test), which the paper does not give",
            "not checkable",
            src,
        )
    )
    for bound_item in raw["correlation_bounds"]:
        out.append(
            Check(
                "Correlations",
                bound_item["claim"],
                "bound only",
                "per-encoder values are only in the figure",
                "not checkable",
                _src(_provenance(bound_item["source"])),
            )
        )
    return out


def paper_checks() -> list[Check]:
    """Every check, in report order: claims with numbers, correlations, consistency, per-table statistics, figures."""
    data = load_paper_numbers()
    checks = _claim_checks(data)
    claims = [c for c in checks if c.section == "Claims with numbers"]
    consistency = [c for c in checks if c.section == "Consistency"]
    out = claims + _correlation_checks(data["raw"]) + consistency
    for table in data["paired"].values():
        out += _table_checks(table)
    for item in data["raw"]["figures_only"]:
        out.append(
            Check(
                "Shown only as figures",
                item["what"],
                "figure",
                "no numbers in the text",
                "not checkable",
                item["source"],
            )
        )
    return out


def render_checks(checks: list[Check], markdown: bool = False) -> str:
    """Text (or markdown) report: one block per section, one line (row) per check."""
    lines: list[str] = []
    section = None
    for check in checks:
        if check.section != section:
            section = check.section
            if markdown:
                lines += [
                    "",
                    f"### {section}",
                    "",
                    "| claim | paper | recomputed | verdict | source |",
                    "|---|---|---|---|---|",
                ]
            else:
                lines += ["", f"== {section}"]
        if markdown:
            cells = [check.claim, check.paper, check.recomputed, f"**{check.verdict}**", check.source]
            lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
        else:
            paper = f" — paper: {check.paper}" if check.paper != "—" else ""
            lines.append(f"[{check.verdict}] {check.claim}{paper}\n    {check.recomputed}  ({check.source})")
    counts = statistics_counts(checks)
    summary = ", ".join(f"{v} {k}" for k, v in counts.items())
    lines += ["", f"{len(checks)} checks: {summary}. Pages: unknown (the notes the numbers come from give none)."]
    return "\n".join(lines).lstrip("\n")


def statistics_counts(checks: list[Check]) -> dict[str, int]:
    """Number of checks per verdict."""
    counts: dict[str, int] = {}
    for check in checks:
        counts[check.verdict] = counts.get(check.verdict, 0) + 1
    return counts
