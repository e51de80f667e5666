"""An encoder report card: "should I align to this encoder, and with which γ?", with the uncertainty stated.

:func:`encoder_report` measures one encoder on an image set through :func:`irepa.analysis.measure.measure_encoders`
and writes ``report.md``, ``report.json``, ``metrics.csv`` (one row, ready for ``irepa analyze correlate``) and
figures:

* the four spatial metrics of the raw tokens and after spatial normalization at every γ of a sweep (0 … 1),
  ``gamma_sweep.png``;
* the correlogram (mean cosine against grid distance) of raw and normalized tokens, ``correlogram.png``;
* cosine-similarity maps from an anchor patch, raw and normalized (the paper's illustration), ``similarity.png``,
  and PCA-to-RGB token maps, ``pca.png``;
* the linear probe when labels are given;
* where the encoder's LDS falls against the published LDS–gFID relation: a least-squares line through the
  encoders whose LDS and gFID the paper quotes in its text (or through your own study's points, from
  ``irepa analyze correlate``), with the 95 % prediction interval at the encoder's LDS — an interval, never a
  single FID — and the caveats that make even the interval optimistic (``position.png``);
* a γ recommendation with its reasoning: a stated heuristic from the share of the tokens' energy in their spatial
  mean (the component spatial normalization removes); the paper reports no γ sweep.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from irepa.errors import IrepaError

__all__ = ["DEFAULT_GAMMAS", "ReportCard", "encoder_report", "published_relation", "recommend_gamma"]

#: The γ sweep of the report (0 = no mean removed, 1 = full z-scoring).
DEFAULT_GAMMAS: tuple[float, ...] = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)
#: The paper's recommended range (§4, App. G) and the released code's defaults (SiT 0.6, JiT 0.8).
PAPER_GAMMA_RANGE = (0.6, 0.8)


@dataclasses.dataclass
class ReportCard:
    """What :func:`encoder_report` measured and concluded.

    Attributes:
        encoder: Encoder id.
        gammas: The γ sweep.
        sweep: ``raw`` and ``γ=<g>`` → metric means.
        correlogram: ``raw`` / ``γ=<g>`` → mean cosine per distance ``0..H+W−2``.
        probe: Probe result dict, or None.
        position: Where the LDS falls against the published relation (see :func:`position_on_relation`).
        gamma: Recommended γ and its reasoning.
        files: Written files (names relative to the output folder).
        report: The underlying :class:`~irepa.analysis.measure.EncoderReport`.
    """

    encoder: str
    gammas: list[float]
    sweep: dict[str, dict[str, float]]
    correlogram: dict[str, list[float]]
    probe: dict[str, Any] | None
    position: dict[str, Any]
    gamma: dict[str, Any]
    files: list[str]
    report: Any

    def to_json(self) -> dict[str, Any]:
        """JSON-safe dict (NaN → None)."""
        return _clean(
            {
                "format": "irepa-encoder-report/1",
                "encoder": self.encoder,
                "gammas": self.gammas,
                "metrics": self.sweep,
                "correlogram": self.correlogram,
                "probe": self.probe,
                "position": self.position,
                "gamma_recommendation": self.gamma,
                "inputs": self.report.inputs,
                "notes": self.report.notes,
                "files": self.files,
            }
        )


def _clean(value: Any) -> Any:
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    return value


# ----------------------------------------------------------------------------------------------------------------------
# The published relation


def published_relation() -> dict[str, Any]:
    """The LDS–gFID points the paper quotes in its text (SiT-XL/2 + REPA, 100K, no CFG) and its LDS r.

    The paper's 27-encoder scatter is only a figure; its text quotes LDS and gFID together for five encoders (§2,
    Fig. 2/19; paper-notes §5.1). Those five points and the published r = −0.852 (n = 27) are all there is.
    """
    from irepa.analysis.paper import load_paper_numbers

    raw = load_paper_numbers()["raw"]
    rows = raw["anecdotes"]["rows"]
    r_lds = raw["correlations"][0]["r"]["LDS"]
    return {
        "names": list(rows),
        "x": [rows[n]["lds"] for n in rows],
        "y": [rows[n]["gfid"] for n in rows],
        "measure": "lds",
        "source": "paper §2 (Fig. 2/19): the five encoders with LDS and gFID in the text; SiT-XL/2, 100K",
        "published_r": r_lds,
        "published_n": raw["correlations"][0]["n"],
    }


def position_on_relation(value: float, relation: dict[str, Any], confidence: float = 0.95) -> dict[str, Any]:
    """Where ``value`` falls against a least-squares line through ``relation``'s points, with a prediction interval.

    The interval is the classical one for a new observation: ``ŷ ± t_{n−2} · s · sqrt(1 + 1/n + (x − x̄)²/Sxx)``.
    It assumes the relation is linear with normal scatter *and* that ``value`` was measured like the relation's
    points (same images, resolution and radii), which for your own images it usually was not.

    Returns:
        ``{"value", "fit": {slope, intercept, n}, "interval": [low, high], "inside_range": bool, ...}``.
    """
    from scipy import stats

    x = np.asarray(relation["x"], dtype=float)
    y = np.asarray(relation["y"], dtype=float)
    n = len(x)
    if n < 3 or np.ptp(x) == 0:
        raise IrepaError("the relation needs at least 3 points with different measure values")
    slope, intercept = np.polyfit(x, y, 1)
    residual = y - (slope * x + intercept)
    s = math.sqrt(float((residual**2).sum()) / (n - 2))
    sxx = float(((x - x.mean()) ** 2).sum())
    t = float(stats.t.ppf(0.5 + confidence / 2, n - 2))
    centre = slope * value + intercept
    half = t * s * math.sqrt(1 + 1 / n + (value - x.mean()) ** 2 / sxx)
    return {
        "measure": relation["measure"],
        "value": value,
        "fit": {"slope": float(slope), "intercept": float(intercept), "n": n, "residual_sd": s},
        "confidence": confidence,
        "interval": [float(centre - half), float(centre + half)],
        "inside_range": bool(x.min() <= value <= x.max()),
        "range": [float(x.min()), float(x.max())],
        "source": relation.get("source"),
        "points": {"names": list(relation.get("names", [])), "x": x.tolist(), "y": y.tolist()},
    }


# ----------------------------------------------------------------------------------------------------------------------
# γ


def recommend_gamma(gammas: Sequence[float], lds: Sequence[float], rmsc: float) -> dict[str, Any]:
    """Recommend γ from how much of the tokens is a shared (global) component (a heuristic, stated as one).

    Spatial normalization subtracts γ times the spatial mean, the component every token shares. For unit tokens
    that component's share of the energy is ``‖mean_t x̂_t‖² = 1 − RMSC²`` (RMSC of the raw tokens, here from its
    mean over images). The paper motivates normalization by encoders whose global component swamps the spatial
    contrast, and finds iREPA's gains marginal for SAM2, which has little of it. The rule maps that share linearly
    onto the paper's range: share ≤ 0.25 → γ = 0.6 (the released SiT default: little to remove, keep the global
    information), share ≥ 0.75 → γ = 0.8 (the top of the range, the released JiT default), rounded to 0.05. The
    sweep's LDS at the chosen γ is reported beside it; the paper itself reports no γ sweep.

    Returns:
        ``{"gamma", "reason", "rule", "global_share", "lds_gain"}``.
    """
    g = [float(v) for v in gammas]
    values = [float(v) for v in lds]
    if 0.0 not in g:
        raise IrepaError("the γ sweep must include 0 (the raw tokens' mean kept) to measure the gain")
    if not 0 <= rmsc <= 1 or math.isnan(rmsc):
        raise IrepaError(f"RMSC must lie in [0, 1], got {rmsc}")
    share = 1.0 - rmsc * rmsc
    low, high = PAPER_GAMMA_RANGE
    fraction = min(1.0, max(0.0, (share - 0.25) / 0.5))
    gamma = round((low + (high - low) * fraction) * 20) / 20
    base = values[g.index(0.0)]
    nearest = min(g, key=lambda v: abs(v - gamma))
    gain = values[g.index(nearest)] - base
    rule = (
        "γ = 0.6 + 0.2 · clip((s − 0.25) / 0.5, 0, 1), s = 1 − RMSC² the share of the unit tokens' energy in their "
        "spatial mean; rounded to 0.05"
    )
    if share <= 0.25:
        why = "little shared component to remove, so the lower end keeps more of the global information"
    elif share >= 0.75:
        why = "a large shared component swamps the spatial contrast, so the top of the range removes most of it"
    else:
        why = "between the ends of the paper's range in proportion"
    reason = (
        f"the spatial mean holds {100 * share:.0f} % of the unit tokens' energy (1 − RMSC², RMSC = {rmsc:.3f}): "
        f"{why}; at γ = {nearest:g} the sweep's LDS is {gain:+.3f} above γ = 0"
    )
    return {"gamma": gamma, "reason": reason, "rule": rule, "global_share": share, "lds_gain": gain}


# ----------------------------------------------------------------------------------------------------------------------
# The report


def encoder_report(
    name: str,
    encoder: Any,
    images: Any,
    out_dir: str | Path,
    *,
    masks: torch.Tensor | None = None,
    labels: torch.Tensor | None = None,
    gammas: Sequence[float] = DEFAULT_GAMMAS,
    options: Any = None,
    probe: Any = None,
    relation: dict[str, Any] | None = None,
    examples: int = 4,
    batch_size: int = 32,
    device: str | torch.device = "cpu",
) -> ReportCard:
    """Measure ``encoder`` on ``images`` and write its report card into ``out_dir``.

    Args:
        name: Encoder id.
        encoder: Loaded encoder.
        images: uint8 ``(N, 3, H, W)`` or an :class:`~irepa.analysis.measure.ImageFolder`.
        out_dir: Output folder (``report.md``, ``report.json``, ``metrics.csv``, PNGs).
        masks: Pixel masks for SRSS and the anchor patches (tensor images).
        labels: Labels for the probe (tensor images).
        gammas: The γ sweep (must include 0).
        options: :class:`~irepa.analysis.measure.SpatialOptions` (default: the four metrics).
        probe: :class:`~irepa.analysis.measure.ProbeOptions`, or None.
        relation: Points to position the encoder against (``x``, ``y``, ``names``, ``measure``, ``source``);
            default :func:`published_relation`.
        examples: Images shown in the similarity and PCA figures.
        batch_size: Images per forward pass.
        device: Where metrics and probe run.

    Raises:
        IrepaError: Bad γ values, no images, measurement errors.
    """
    from irepa.align import spatial_norm
    from irepa.analysis.measure import SpatialOptions, measure_encoders
    from irepa.metrics import spatial
    from irepa.utils.io import write_json, write_text

    gammas = sorted({float(g) for g in gammas})
    if not gammas or any(not 0 <= g <= 1 for g in gammas) or 0.0 not in gammas:
        raise IrepaError(f"γ values must lie in [0, 1] and include 0, got {gammas}")
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise IrepaError(f"--out {str(out)!r} exists and is not a directory")
    options = options or SpatialOptions()

    def norm(gamma: float):
        return lambda tokens, _cls: spatial_norm(tokens, gamma=gamma)

    variants = {f"γ={g:g}": norm(g) for g in gammas}
    report = measure_encoders(
        {name: encoder},
        images,
        masks=masks,
        labels=labels,
        options=options,
        variants=variants,
        probe=probe,
        batch_size=batch_size,
        device=device,
        keep_tokens=True,
    )
    tokens = report.tokens[name]
    grid = tuple(encoder.grid)
    sweep = {variant: rep.means(name) for variant, rep in report.spatial.items()}
    metrics = report.raw.metrics

    if "lds" not in metrics or "rmsc" not in metrics:
        raise IrepaError("the report card needs the lds and rmsc metrics")
    lds = [sweep[f"γ={g:g}"]["lds"] for g in gammas]
    gamma = recommend_gamma(gammas, lds, sweep["raw"]["rmsc"])
    chosen = gamma["gamma"]
    normed = spatial_norm(tokens, gamma=chosen)

    raw_curve, _ = spatial.correlogram(tokens, grid)
    norm_curve, _ = spatial.correlogram(normed, grid)
    correlogram = {"raw": raw_curve.mean(0).tolist(), f"γ={chosen:g}": norm_curve.mean(0).tolist()}

    relation = relation or published_relation()
    position = (
        position_on_relation(sweep["raw"][relation["measure"]], relation)
        if relation["measure"] in sweep["raw"] and not math.isnan(sweep["raw"][relation["measure"]])
        else {"measure": relation["measure"], "value": None, "interval": None}
    )
    position["published_r"] = relation.get("published_r")
    position["published_n"] = relation.get("published_n")

    files = _figures(
        name,
        out,
        report,
        tokens,
        normed,
        grid,
        gammas,
        sweep,
        metrics,
        correlogram,
        chosen,
        position,
        examples,
        options,
    )
    probe_result = report.probes.get("raw", {}).get(name)
    card = ReportCard(
        encoder=name,
        gammas=gammas,
        sweep=sweep,
        correlogram=correlogram,
        probe=None if probe_result is None else probe_result.to_dict(),
        position=position,
        gamma=gamma,
        files=files,
        report=report,
    )
    row = {"encoder": name, **{m: sweep["raw"][m] for m in metrics}}
    if probe_result is not None:
        row["lp"] = probe_result.top1
    header = list(row)
    csv_text = ",".join(header) + "\n" + ",".join(str(row[k]) for k in header) + "\n"
    write_text(out / "metrics.csv", csv_text)
    write_json(out / "report.json", card.to_json())
    write_text(out / "report.md", render_markdown(card))
    card.files += ["metrics.csv", "report.json", "report.md"]
    return card


def _figures(
    name, out, report, tokens, normed, grid, gammas, sweep, metrics, correlogram, chosen, position, examples, options
) -> list[str]:
    from irepa.analysis import plots
    from irepa.metrics import spatial

    files = []
    count = min(examples, tokens.shape[0])
    images = report.images
    masks = report.masks
    if masks is not None:
        patch = spatial.masks_to_patches(masks, grid)
        keep = spatial.srss_mask_filter(patch)
        shown = torch.nonzero(keep).flatten()[:count]
        if shown.numel() == 0:
            shown = torch.arange(count)
        anchors = plots.anchor_patches(patch[shown], grid)
    else:
        shown = torch.arange(count)
        centre = (grid[0] // 2) * grid[1] + grid[1] // 2
        anchors = torch.full((count,), centre, dtype=torch.long)
    plots.similarity_figure(
        out / "similarity.png",
        images=images[shown],
        masks=masks[shown] if masks is not None else None,
        anchors=anchors,
        raw=plots.similarity_maps(tokens[shown], anchors),
        normalized=plots.similarity_maps(normed[shown], anchors),
        grid=grid,
        title=f"{name}: cosine similarity to the anchor patch (x)",
        gamma=chosen,
    )
    files.append("similarity.png")
    rgb = plots.pca_rgb(torch.cat([tokens[shown], normed[shown]]), grid)
    plots.pca_figure(
        out / "pca.png",
        images=images[shown],
        maps={"raw tokens (PCA → RGB)": rgb[: len(shown)], f"normalized, γ = {chosen:g}": rgb[len(shown) :]},
        title=f"{name}: first three principal components of the tokens as RGB",
    )
    files.append("pca.png")
    distances = list(range(len(correlogram["raw"])))
    plots.correlogram_figure(
        out / "correlogram.png",
        {label: (distances[1:], values[1:]) for label, values in correlogram.items()},
        title=f"{name}: correlogram (mean over images)",
        dmax=options.dmax if "cds" in metrics else None,
    )
    files.append("correlogram.png")
    series = {m: [sweep[f"γ={g:g}"][m] for g in gammas] for m in metrics}
    plots.sweep_figure(
        out / "gamma_sweep.png",
        gammas,
        series,
        x_label="γ of spatial normalization",
        title=f"{name}: spatial metrics after spatial normalization",
        mark=chosen,
        mark_label=f"recommended γ = {chosen:g}",
        reference={m: sweep["raw"][m] for m in metrics},
        reference_label="raw tokens",
    )
    files.append("gamma_sweep.png")
    if position.get("interval") is not None:
        _position_figure(out / "position.png", name, position)
        files.append("position.png")
    return files


def _position_figure(path: Path, name: str, position: dict[str, Any]) -> None:
    from irepa.analysis.plots import pyplot, save_figure

    plt = pyplot()
    points = position["points"]
    fit = position["fit"]
    fig, ax = plt.subplots(figsize=(6.0, 4.2))
    ax.scatter(points["x"], points["y"], color="#0072B2", zorder=3, label="quoted in the paper's text")
    for x, y, label in zip(points["x"], points["y"], points["names"]):
        ax.annotate(label, (x, y), fontsize=7, xytext=(3, 3), textcoords="offset points")
    xs = np.linspace(min(min(points["x"]), position["value"]) - 0.02, max(max(points["x"]), position["value"]) + 0.02)
    ax.plot(xs, fit["slope"] * xs + fit["intercept"], color="#444444", lw=1.2, label="least-squares line")
    low, high = position["interval"]
    ax.axvline(
        position["value"],
        color="#D55E00",
        lw=1.2,
        label=f"{name}: {position['measure'].upper()} = {position['value']:.3f}",
    )
    ax.errorbar(
        [position["value"]],
        [(low + high) / 2],
        yerr=[[(high - low) / 2]],
        fmt="none",
        ecolor="#D55E00",
        capsize=6,
        lw=2,
        label=f"{int(100 * position['confidence'])} % prediction interval",
    )
    ax.set(xlabel=f"{position['measure'].upper()} (released-code radii)", ylabel="gFID (SiT-XL/2 + REPA, 100K)")
    ax.set_title(f"{name} against the paper's quoted encoders (interval, not a prediction)", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    save_figure(fig, path)


def render_markdown(card: ReportCard) -> str:
    """``report.md``: every number of the card, the figures and the caveats."""
    report = card.report
    metrics = report.raw.metrics
    lines = [f"# Encoder report: {card.encoder}", ""]
    inputs = report.inputs
    lines += [
        f"Images: {inputs.get('num_images')} ({inputs.get('images')}, {inputs.get('resolution')} px); token grid "
        f"{'x'.join(str(v) for v in report.encoders[card.encoder]['grid'])}; radii near {report.raw.settings['near']}"
        f", far {report.raw.settings['far']}, dmax {report.raw.settings['dmax']} (released code)."
    ]
    if card.encoder in report.raw.srss_kept:
        lines.append(f"SRSS mask filter kept {report.raw.srss_kept[card.encoder]} images.")
    for note in report.notes:
        lines.append(f"Note: {note}.")
    lines += ["", "## Spatial metrics, raw and spatially normalized", ""]
    lines += ["| tokens | " + " | ".join(m.upper() for m in metrics) + " |", "|---|" + "---|" * len(metrics)]
    for variant, means in card.sweep.items():
        lines.append(f"| {variant} | " + " | ".join(_f(means[m]) for m in metrics) + " |")
    lines += [
        "",
        "`raw`: the encoder's tokens. `γ=g`: spatially normalized, `(x − g·mean_T x) / std_T x` per image and "
        "channel (the released code's form), so γ = 0 still divides by the spatial std and only the mean removal "
        "varies with γ.",
        "",
        "![γ sweep](gamma_sweep.png)",
        "",
        "![correlogram](correlogram.png)",
        "",
    ]
    lines += ["![similarity maps](similarity.png)", "", "![PCA token maps](pca.png)", ""]
    lines += ["## Global information (linear probe)", ""]
    if card.probe is None:
        lines.append("No labels given: no probe (pass --labels with a ROOT/CLASS/IMAGE folder).")
    else:
        p = card.probe
        lines.append(
            f"Top-1 {100 * p['top1']:.2f} % on {p['num_val']} held-out images ({p['num_classes']} classes, mean-pooled "
            f"patch tokens, irepa's probe protocol). The paper's finding: this predicts REPA's FID far worse than the "
            "spatial metrics (|r| 0.26 vs 0.85–0.89 over 27 encoders)."
        )
    lines += ["", "## Against the published LDS–gFID relation", ""]
    pos = card.position
    if pos.get("interval") is None:
        lines.append("LDS was not measured, so there is nothing to position.")
    else:
        low, high = pos["interval"]
        fit = pos["fit"]
        lines += [
            f"LDS = {pos['value']:.3f}. A least-squares line through {pos['source']} ({fit['n']} points: gFID ≈ "
            f"{fit['intercept']:.1f} {fit['slope']:+.1f}·LDS) gives a {int(100 * pos['confidence'])} % prediction "
            f"interval of **{low:.1f} to {high:.1f} gFID** at this LDS"
            + (
                ""
                if pos["inside_range"]
                else f", outside the points' LDS range {pos['range'][0]:g}–{pos['range'][1]:g} (an extrapolation)"
            )
            + ".",
            "",
            "Read it as a range, not a prediction: the line rests on the few encoders quoted in the text "
            f"(the paper's r = {pos.get('published_r')} over {pos.get('published_n')} encoders leaves "
            f"{100 * (1 - (pos.get('published_r') or 0) ** 2):.0f} % of the variance unexplained); the paper measured "
            "LDS on its own ImageNet images at 256 px with SAM2 masks, so an LDS measured on other images (or "
            "another resolution) is not on the same scale; and gFID also depends on the model, steps and recipe.",
            "",
            "![position](position.png)",
        ]
    lines += ["", "## γ recommendation", ""]
    lines += [f"**γ = {card.gamma['gamma']:g}**: {card.gamma['reason']}.", ""]
    lines.append(
        f"Rule: {card.gamma['rule']}. The paper recommends γ ∈ [0.6, 0.8] and reports no γ sweep; the released "
        "code uses 0.6 for SiT (latent) and 0.8 for JiT (pixel space). LDS rises with γ for most encoders (removing "
        "more of the mean always adds contrast), so the sweep alone cannot pick γ; the rule is a heuristic, and "
        "only a short training run per γ measures what matters (FID)."
    )
    return "\n".join(lines) + "\n"


def _f(value: float) -> str:
    return "nan" if value is None or math.isnan(value) else f"{value:.4f}"
