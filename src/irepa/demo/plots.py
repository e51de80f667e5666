"""The demo's own figures (training curves, sample grids) on the shared plotting module.

Backend, colours and PNG writing come from :mod:`irepa.analysis.plots`, which also draws the demo's similarity maps
(:func:`irepa.analysis.plots.similarity_figure`). Each function takes plain numbers or arrays, draws one figure and
writes it; none reads run directories.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from irepa.analysis.plots import COLORS, pyplot, save_figure

__all__ = ["curves_figure", "samples_figure"]


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
    plt = pyplot()
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
    save_figure(fig, path, tight=True)


def samples_figure(path: str | Path, grids: Mapping[str, np.ndarray], title: str) -> None:
    """Sample grids side by side (one panel per run; rows are classes)."""
    plt = pyplot()
    first = next(iter(grids.values()))
    panel_width = max(2.2, 5.0 * first.shape[1] / first.shape[0])  # keep each grid's aspect, 5 in tall
    fig, axes = plt.subplots(1, len(grids), figsize=(panel_width * len(grids) + 0.4, 5.8), squeeze=False)
    for ax, (label, grid) in zip(axes[0], grids.items()):
        ax.imshow(grid, interpolation="nearest")
        ax.set_title(label, fontsize=10)
        ax.axis("off")
    fig.suptitle(title, fontsize=11)
    fig.tight_layout(rect=(0, 0, 1, 0.95))
    save_figure(fig, path, tight=True)
