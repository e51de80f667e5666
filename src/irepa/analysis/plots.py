"""Every figure of irepa's analysis tools (matplotlib, Agg backend, PNG written atomically), and the maps they draw.

One module for the figures of ``irepa analyze``, ``irepa encoders report`` and the demo report:

* :func:`similarity_figure` — cosine-similarity maps from anchor patches, raw and spatially normalized tokens (the
  paper's illustration of spatial normalization), with :func:`anchor_patches` and :func:`similarity_maps`;
* :func:`pca_figure` — token maps projected to RGB by PCA (:func:`pca_rgb`);
* :func:`correlogram_figure` — mean cosine against grid distance;
* :func:`correlation_figure` — one panel per measure against FID, with the fitted line, r and its interval (the
  layout of the paper's Fig. 4);
* :func:`sweep_figure` — measures against a swept parameter (γ of spatial normalization, α of CLS mixing).

Figure functions take plain tensors/arrays and numbers, draw one figure and write it; none reads run directories.
matplotlib is imported inside the functions (``pip install irepa[plots]``).
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from irepa.errors import IrepaError

__all__ = [
    "COLORS",
    "DPI",
    "anchor_patches",
    "correlation_figure",
    "correlogram_figure",
    "pca_figure",
    "pca_rgb",
    "pyplot",
    "save_figure",
    "similarity_figure",
    "similarity_maps",
    "sweep_figure",
]

#: One colour per series, in order (colour-blind safe: Okabe–Ito).
COLORS = ("#000000", "#E69F00", "#0072B2", "#009E73", "#CC79A7", "#D55E00", "#56B4E9", "#F0E442")
#: Resolution of every PNG (dots per inch).
DPI = 110


def pyplot():
    """``matplotlib.pyplot`` on the Agg backend (no display needed).

    Raises:
        IrepaError: matplotlib is not installed.
    """
    try:
        import matplotlib
    except ImportError:
        raise IrepaError("figures need matplotlib: pip install 'irepa[plots]'") from None
    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig: Any, path: str | Path, *, tight: bool = False) -> Path:
    """Write ``fig`` as a PNG at :data:`DPI` (atomically) and close it.

    Args:
        fig: A matplotlib figure.
        path: Output file.
        tight: Crop to the drawn content (``bbox_inches="tight"``). The default keeps the exact figure size, so
            every analysis PNG is ``figsize × DPI`` pixels (the figures lay themselves out to fit).
    """
    from irepa.utils.io import atomic_write

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=DPI, bbox_inches="tight" if tight else None)
    pyplot().close(fig)
    with atomic_write(path, "wb") as f:
        f.write(buffer.getvalue())
    return Path(path)


# ----------------------------------------------------------------------------------------------------------------------
# Maps


def anchor_patches(patch_masks: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """For each image, the foreground patch closest to the foreground's centroid (B,) (row-major index).

    Args:
        patch_masks: (B, T) bool foreground patches.
        grid: ``(h, w)``.
    """
    h, w = grid
    rows = torch.arange(h).repeat_interleave(w).float()
    cols = torch.arange(w).repeat(h).float()
    fg = patch_masks.float()
    count = fg.sum(1).clamp_min(1.0)
    cy, cx = (fg * rows).sum(1) / count, (fg * cols).sum(1) / count
    dist = (rows[None] - cy[:, None]) ** 2 + (cols[None] - cx[:, None]) ** 2
    dist = torch.where(patch_masks, dist, torch.full_like(dist, float("inf")))
    return dist.argmin(1)


def similarity_maps(tokens: torch.Tensor, anchors: torch.Tensor) -> torch.Tensor:
    """Cosine similarity of each image's anchor token to all its tokens (B, T), float32.

    Args:
        tokens: (B, T, D).
        anchors: (B,) token indices.
    """
    with torch.autocast(device_type=tokens.device.type, enabled=False):
        unit = torch.nn.functional.normalize(tokens.float(), dim=-1, eps=1e-8)
        anchor = unit[torch.arange(unit.shape[0]), anchors]  # (B, D)
        return torch.einsum("btd,bd->bt", unit, anchor)


def pca_rgb(tokens: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """Token maps as RGB images: the first three principal components of all tokens, scaled to [0, 1].

    The components are fitted jointly on every token of every image (so colours are comparable across images) in
    float64; each component is min–max scaled over all images. Signs follow the largest-magnitude loading, so the
    colours do not flip between runs.

    Args:
        tokens: (B, T, D) patch tokens.
        grid: ``(h, w)`` with ``h·w = T``.

    Returns:
        (B, h, w, 3) float32 in [0, 1].
    """
    b, t, d = tokens.shape
    h, w = grid
    if h * w != t:
        raise IrepaError(f"grid {h}x{w} does not hold {t} tokens")
    x = tokens.reshape(b * t, d).double()
    x = x - x.mean(0, keepdim=True)
    _, _, v = torch.linalg.svd(x, full_matrices=False)  # rows of v: principal directions
    k = min(3, v.shape[0])
    directions = v[:k]
    signs = torch.sign(directions.gather(1, directions.abs().argmax(1, keepdim=True))).squeeze(1)
    proj = x @ (directions * signs[:, None]).T  # (B·T, k)
    if k < 3:
        proj = torch.cat([proj, proj.new_zeros(proj.shape[0], 3 - k)], 1)
    low, high = proj.min(0).values, proj.max(0).values
    scaled = (proj - low) / torch.where(high > low, high - low, torch.ones_like(high))
    return scaled.reshape(b, h, w, 3).float()


# ----------------------------------------------------------------------------------------------------------------------
# Figures


def similarity_figure(
    path: str | Path,
    *,
    images: torch.Tensor,
    masks: torch.Tensor | None,
    anchors: torch.Tensor,
    raw: torch.Tensor,
    normalized: torch.Tensor,
    grid: tuple[int, int],
    title: str,
    gamma: float,
) -> Path:
    """Per example (rows): the image, its object mask, cosine maps of raw and of spatially normalized tokens.

    Args:
        path: Output PNG.
        images: uint8 (B, 3, H, W).
        masks: bool (B, H, W), or None (the mask column is left out).
        anchors: (B,) anchor token index (row-major).
        raw: (B, T) cosine similarity of raw tokens to the anchor.
        normalized: (B, T) the same after spatial normalization.
        grid: ``(h, w)`` token grid.
        title: Figure title.
        gamma: γ of the spatial normalization (for the column title).
    """
    plt = pyplot()
    h, w = grid
    rows = images.shape[0]
    columns = ["image", *(["object mask"] if masks is not None else []), "raw tokens"]
    columns.append(f"spatially normalized\n(γ = {gamma:g})")
    # Constrained layout keeps the columns the same size next to a colorbar that spans every row.
    fig, axes = plt.subplots(
        rows, len(columns), figsize=(2.3 * len(columns), 2.3 * rows + 0.5), squeeze=False, layout="constrained"
    )
    im = None
    for r in range(rows):
        ay, ax_ = divmod(int(anchors[r]), w)
        panels: list[tuple[np.ndarray, str | None, bool]] = [(images[r].permute(1, 2, 0).numpy(), None, False)]
        if masks is not None:
            panels.append((masks[r].numpy(), "gray", False))
        panels += [(raw[r].view(h, w).numpy(), "viridis", True), (normalized[r].view(h, w).numpy(), "viridis", True)]
        for c, (data, cmap, cosine) in enumerate(panels):
            ax = axes[r][c]
            if cosine:
                im = ax.imshow(data, cmap=cmap, vmin=-1, vmax=1, interpolation="nearest")
                ax.plot([ax_], [ay], "x", color="red", ms=9, mew=2)
            else:
                ax.imshow(data, cmap=cmap, interpolation="nearest")
                scale = images.shape[-1] / w  # mark the anchor patch's centre in pixels
                ax.plot([(ax_ + 0.5) * scale - 0.5], [(ay + 0.5) * scale - 0.5], "x", color="red", ms=9, mew=2)
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(columns[c], fontsize=9)
    fig.colorbar(im, ax=axes.ravel().tolist(), shrink=0.5, label="cosine similarity to the anchor (x)")
    fig.suptitle(title, fontsize=10)
    return save_figure(fig, path)


def pca_figure(
    path: str | Path,
    *,
    images: torch.Tensor,
    maps: Mapping[str, torch.Tensor],
    title: str,
) -> Path:
    """Per example (rows): the image and one PCA-to-RGB token map per column (e.g. raw and normalized tokens).

    Args:
        path: Output PNG.
        images: uint8 (B, 3, H, W).
        maps: Column title → (B, h, w, 3) RGB maps from :func:`pca_rgb`.
        title: Figure title.
    """
    plt = pyplot()
    rows, cols = images.shape[0], 1 + len(maps)
    fig, axes = plt.subplots(rows, cols, figsize=(2.3 * cols, 2.3 * rows + 0.4), squeeze=False, layout="constrained")
    for r in range(rows):
        panels = [images[r].permute(1, 2, 0).numpy(), *(m[r].numpy() for m in maps.values())]
        for c, data in enumerate(panels):
            ax = axes[r][c]
            ax.imshow(data, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(["image", *maps][c], fontsize=9)
    fig.suptitle(title, fontsize=10)
    return save_figure(fig, path)


def correlogram_figure(
    path: str | Path,
    curves: Mapping[str, tuple[Sequence[float], Sequence[float]]],
    *,
    title: str,
    bands: Mapping[str, tuple[Sequence[float], Sequence[float]]] | None = None,
    dmax: int | None = None,
) -> Path:
    """Mean cosine similarity against Manhattan grid distance, one line per series.

    Args:
        path: Output PNG.
        curves: Label → (distances, mean cosine).
        title: Figure title.
        bands: Label → (low, high) per distance (e.g. the 10th and 90th percentile over images), shaded.
        dmax: Shade the distances ``1..dmax`` that CDS fits.
    """
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for i, (label, (dist, values)) in enumerate(curves.items()):
        color = COLORS[i % len(COLORS)]
        ax.plot(dist, values, "o-", ms=3, color=color, label=label, lw=1.6)
        if bands and label in bands:
            low, high = bands[label]
            ax.fill_between(dist, low, high, color=color, alpha=0.15, lw=0)
    if dmax is not None:
        ax.axvspan(1, dmax, color="grey", alpha=0.08, label=f"CDS fit range (1..{dmax})")
    ax.set(title=title, xlabel="Manhattan distance on the token grid", ylabel="mean cosine similarity")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return save_figure(fig, path)


def correlation_figure(
    path: str | Path,
    panels: Sequence[Mapping[str, Any]],
    *,
    y_label: str,
    title: str | None = None,
    panel_size: tuple[float, float] = (3.4, 3.2),
) -> Path:
    """One panel per measure against the outcome (the paper's Fig. 4 layout), at an exact pixel size.

    Each panel mapping holds ``x`` (measure values), ``y`` (outcome values), ``labels`` (point names), ``measure``
    (x-axis label), ``r`` and ``ci`` (Pearson r and its interval), ``rho`` (Spearman), and optionally
    ``highlight`` (names drawn in red, e.g. excluded outliers). The fitted least-squares line is drawn through
    the points.

    The PNG is ``len(panels) × panel_size[0]`` by ``panel_size[1]`` inches at :data:`DPI` (not cropped).
    """
    plt = pyplot()
    n = len(panels)
    if n == 0:
        raise IrepaError("nothing to plot: no measure has values")
    fig, axes = plt.subplots(1, n, figsize=(panel_size[0] * n, panel_size[1]), squeeze=False)
    for ax, panel in zip(axes[0], panels):
        x = np.asarray(panel["x"], dtype=float)
        y = np.asarray(panel["y"], dtype=float)
        labels = list(panel.get("labels") or [])
        highlight = set(panel.get("highlight") or [])
        colors = ["#D55E00" if lab in highlight else "#0072B2" for lab in labels] or "#0072B2"
        ax.scatter(x, y, s=18, c=colors, zorder=3)
        if len(x) >= 2 and np.ptp(x) > 0:
            slope, intercept = np.polyfit(x, y, 1)
            xs = np.linspace(x.min(), x.max(), 50)
            ax.plot(xs, slope * xs + intercept, color="#444444", lw=1.2, zorder=2)
        if len(labels) <= 30:
            for xi, yi, lab in zip(x, y, labels):
                ax.annotate(lab, (xi, yi), fontsize=5, xytext=(2, 2), textcoords="offset points", alpha=0.8)
        ci = panel.get("ci")
        ci_text = f" [{ci[0]:.2f}, {ci[1]:.2f}]" if ci is not None and all(np.isfinite(ci)) else ""
        text = f"r = {panel['r']:.3f}{ci_text}"
        if panel.get("rho") is not None:
            text += f"\nρ = {panel['rho']:.3f}"
        ax.set_title(text, fontsize=8)
        ax.set_xlabel(panel["measure"], fontsize=9)
        ax.grid(alpha=0.3)
        ax.tick_params(labelsize=7)
    axes[0][0].set_ylabel(y_label, fontsize=9)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return save_figure(fig, path)


def sweep_figure(
    path: str | Path,
    x: Sequence[float],
    series: Mapping[str, Sequence[float]],
    *,
    x_label: str,
    title: str,
    groups: Mapping[str, str] | None = None,
    mark: float | None = None,
    mark_label: str | None = None,
    reference: Mapping[str, float] | None = None,
    reference_label: str = "reference",
) -> Path:
    """Measures against a swept parameter, one small panel per measure.

    Args:
        path: Output PNG.
        x: The swept values (e.g. γ or α).
        series: Measure name → values at each ``x`` (NaN where undefined); a name ``"a / b"`` with a group in
            ``groups`` draws several lines in one panel.
        x_label: Parameter name for the x axis.
        title: Figure title.
        groups: Series name → panel name, to draw several series in one panel (e.g. one per mixing formula).
        mark: Draw a vertical line at this ``x`` (e.g. the recommended γ).
        mark_label: Legend text of that line.
        reference: Panel name → a value drawn as a horizontal line (e.g. the raw tokens' metric).
        reference_label: Legend text of the reference lines.
    """
    plt = pyplot()
    groups = dict(groups or {})
    panel_names = list(dict.fromkeys(groups.get(name, name) for name in series))
    fig, axes = plt.subplots(1, len(panel_names), figsize=(3.2 * len(panel_names), 3.2), squeeze=False)
    for ax, panel in zip(axes[0], panel_names):
        members = [name for name in series if groups.get(name, name) == panel]
        for i, name in enumerate(members):
            label = name if len(members) > 1 else None
            ax.plot(x, series[name], "o-", ms=3, color=COLORS[(i + 2) % len(COLORS)], label=label, lw=1.5)
        if mark is not None:
            ax.axvline(mark, color="#D55E00", ls="--", lw=1, label=mark_label)
        if reference and panel in reference:
            ax.axhline(reference[panel], color="grey", ls=":", lw=1.2, label=reference_label)
        ax.set_title(panel, fontsize=9)
        ax.set_xlabel(x_label, fontsize=9)
        ax.grid(alpha=0.3)
        ax.tick_params(labelsize=7)
        if len(members) > 1 or (mark is not None and mark_label) or (reference and panel in reference):
            ax.legend(fontsize=7)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return save_figure(fig, path)
