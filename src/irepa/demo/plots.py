"""The demo's figures (matplotlib, Agg backend, PNG written atomically).

Each function takes plain numbers or arrays, draws one figure and writes it; none reads run directories.
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch

__all__ = ["curves_figure", "samples_figure", "similarity_figure"]

#: One colour per run, in run order (colour-blind safe: Okabe–Ito).
COLORS = ("#000000", "#E69F00", "#0072B2", "#009E73", "#CC79A7", "#D55E00")


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: str | Path) -> None:
    from irepa.utils.io import atomic_write

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    _pyplot().close(fig)
    with atomic_write(path, "wb") as f:
        f.write(buffer.getvalue())


def _smooth(values: Sequence[float], window: int) -> np.ndarray:
    """Trailing moving average (the first points average what exists), so curves stay aligned with their steps."""
    x = np.asarray(values, dtype=np.float64)
    if window <= 1 or len(x) < 2:
        return x
    cumulative = np.cumsum(np.insert(x, 0, 0.0))
    idx = np.arange(1, len(x) + 1)
    start = np.maximum(0, idx - window)
    return (cumulative[idx] - cumulative[start]) / (idx - start)


def curves_figure(
    path: str | Path,
    *,
    loss: Mapping[str, tuple[Sequence[int], Sequence[float]]],
    align_cos: Mapping[str, tuple[Sequence[int], Sequence[float]]],
    fd: Mapping[str, tuple[Sequence[int], Sequence[float]]],
    real_fd: float | None,
    smooth: int = 5,
) -> None:
    """Three panels: the denoising loss, the alignment cosine (aligned runs), FD at each checkpoint.

    Args:
        path: Output PNG.
        loss: Run label → (steps, denoising loss) from the training logs.
        align_cos: Run label → (steps, mean cosine between projected diffusion tokens and targets).
        fd: Run label → (steps, FD).
        real_fd: FD of as many unseen real images (drawn as a floor), or None.
        smooth: Moving-average window of the loss curves (log intervals).
    """
    plt = _pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    labels = list(dict.fromkeys([*loss, *fd]))
    color = {label: COLORS[i % len(COLORS)] for i, label in enumerate(labels)}
    ax = axes[0]
    for label, (steps, values) in loss.items():
        ax.plot(steps, _smooth(values, smooth), color=color[label], label=label, lw=1.6)
    ax.set(title="denoising loss (velocity MSE)", xlabel="step", ylabel=f"loss ({smooth}-interval moving average)")
    ax.set_yscale("log")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax = axes[1]
    for label, (steps, values) in align_cos.items():
        ax.plot(steps, _smooth(values, smooth), color=color[label], label=label, lw=1.6)
    ax.set(title="alignment: cosine(projected tokens, targets)", xlabel="step", ylabel="mean cosine")
    ax.grid(alpha=0.3)
    if align_cos:
        ax.legend(fontsize=8)
    ax = axes[2]
    for label, (steps, values) in fd.items():
        ax.plot(steps, values, "o-", color=color[label], label=label, lw=1.8)
    if real_fd is not None:
        ax.axhline(real_fd, color="grey", ls="--", lw=1, label="real images (floor)")
    ax.set(title="Fréchet distance (evaluator features; lower is better)", xlabel="step", ylabel="FD (log scale)")
    ax.set_yscale("log")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    _save(fig, path)


def samples_figure(path: str | Path, grids: Mapping[str, np.ndarray], title: str) -> None:
    """Sample grids side by side (one panel per run; rows are classes)."""
    plt = _pyplot()
    first = next(iter(grids.values()))
    panel_width = max(2.2, 5.0 * first.shape[1] / first.shape[0])  # keep each grid's aspect, 5 in tall
    fig, axes = plt.subplots(1, len(grids), figsize=(panel_width * len(grids) + 0.4, 5.8), squeeze=False)
    for ax, (label, grid) in zip(axes[0], grids.items()):
        ax.imshow(grid, interpolation="nearest")
        ax.set_title(label, fontsize=10)
        ax.axis("off")
    fig.suptitle(title, fontsize=11)
    fig.tight_layout(rect=(0, 0, 1, 0.95))
    _save(fig, path)


def similarity_figure(
    path: str | Path,
    *,
    images: torch.Tensor,
    masks: torch.Tensor,
    anchors: torch.Tensor,
    raw: torch.Tensor,
    normalized: torch.Tensor,
    grid: tuple[int, int],
    title: str,
    gamma: float,
) -> None:
    """Per example (rows): the image, its object mask, cosine maps of raw and of spatially normalized tokens.

    Args:
        path: Output PNG.
        images: uint8 (B, 3, H, W).
        masks: bool (B, H, W).
        anchors: (B,) anchor token index (row-major).
        raw: (B, T) cosine similarity of raw tokens to the anchor.
        normalized: (B, T) the same after spatial normalization.
        grid: ``(h, w)`` token grid.
        title: Figure title.
        gamma: γ of the spatial normalization (for the column title).
    """
    plt = _pyplot()
    h, w = grid
    rows = images.shape[0]
    # Constrained layout keeps the four columns the same size next to a colorbar that spans every row.
    fig, axes = plt.subplots(rows, 4, figsize=(9.2, 2.3 * rows + 0.5), squeeze=False, layout="constrained")
    columns = ("image", "object mask", "raw tokens", f"spatially normalized\n(γ = {gamma:g})")
    for r in range(rows):
        ay, ax_ = divmod(int(anchors[r]), w)
        panels = [
            (images[r].permute(1, 2, 0).numpy(), None),
            (masks[r].numpy(), "gray"),
            (raw[r].view(h, w).numpy(), "viridis"),
            (normalized[r].view(h, w).numpy(), "viridis"),
        ]
        for c, (data, cmap) in enumerate(panels):
            ax = axes[r][c]
            if c >= 2:
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
    _save(fig, path)
