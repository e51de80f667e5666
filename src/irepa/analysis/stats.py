"""Correlation with uncertainty: Pearson and Spearman r, paired percentile-bootstrap intervals, p-values, leave-one-out.

The paper's evidence is one Pearson r per measure over 27 encoders (paper-notes §5.3). With so few points an r
alone says little, so every correlation here comes with:

* a **bootstrap confidence interval** — paired resampling of the (x, y) points, ``n_resamples`` resamples drawn as
  ``numpy.random.default_rng(seed).integers(0, n, (n_resamples, n))``, percentile interval
  ``quantile(r*, [α/2, 1 − α/2])`` (linear interpolation). This is exactly what
  ``scipy.stats.bootstrap((x, y), statistic, paired=True, vectorized=True, method="percentile", rng=seed)`` computes
  (the tests check equality). Resamples whose statistic is undefined (all drawn points share an x or a y value, so
  the correlation is 0/0) are dropped and counted in ``degenerate``;
* a **p-value** — two-sided, against zero correlation, from scipy (``pearsonr``: exact under bivariate normality;
  ``spearmanr``: the t approximation) when ``n > 8``. With ``n ≤ 8`` points those approximations fail (scipy gives
  p = 0 for a perfect rank correlation of 3 points), so the p-value is exact instead: the share of all ``n!``
  pairings of x with y whose |r| is at least the observed one;
* **leave-one-out** values — r with each point removed, so a single influential encoder is visible.

Spearman's ρ is Pearson's r of the ranks, with ties given their average rank (as ``scipy.stats.rankdata``).
Everything is vectorized over resamples with numpy in float64.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any, Literal

import numpy as np

from irepa.errors import IrepaError

__all__ = [
    "METHODS",
    "Correlation",
    "bootstrap_interval",
    "correlate",
    "leave_one_out",
    "pearson",
    "rank_average",
    "spearman",
]

Method = Literal["pearson", "spearman"]
#: Correlation coefficients by name.
METHODS: tuple[str, ...] = ("pearson", "spearman")


def pearson(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Pearson r along the last axis (NaN where x or y is constant).

    Args:
        x: ``(..., n)`` values.
        y: ``(..., n)`` values, broadcastable with ``x``.

    Returns:
        ``(...)`` float64.
    """
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    xc = x - x.mean(axis=-1, keepdims=True)
    yc = y - y.mean(axis=-1, keepdims=True)
    num = (xc * yc).sum(axis=-1)
    den = np.sqrt((xc * xc).sum(axis=-1) * (yc * yc).sum(axis=-1))
    with np.errstate(invalid="ignore", divide="ignore"):
        r = num / den
    # Constant inputs: 0/0. Rounding can also give a tiny non-zero spread for constant values; treat any spread
    # below 1e-12 of the values' scale as none.
    scale = np.maximum(np.abs(x).max(axis=-1), np.abs(y).max(axis=-1))
    tiny = den <= 1e-24 * np.maximum(scale, 1.0) ** 2 * x.shape[-1]
    return np.where(tiny, np.nan, np.clip(r, -1.0, 1.0))


def rank_average(a: np.ndarray) -> np.ndarray:
    """Ranks 1..n along the last axis, ties sharing their average rank (``scipy.stats.rankdata(method="average")``).

    Rank of ``a_i`` = ``(#{a_j < a_i} + #{a_j ≤ a_i} + 1) / 2``; O(n²) per row, fine for the tens of encoders of a
    study.
    """
    a = np.asarray(a, dtype=np.float64)
    less = (a[..., None, :] < a[..., :, None]).sum(axis=-1)
    less_equal = (a[..., None, :] <= a[..., :, None]).sum(axis=-1)
    return (less + less_equal + 1) / 2.0


def spearman(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Spearman ρ along the last axis: Pearson r of the average ranks (NaN where x or y is constant)."""
    return pearson(rank_average(x), rank_average(y))


_STATISTICS = {"pearson": pearson, "spearman": spearman}


def _check(x: Sequence[float], y: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    if x.ndim != 1 or x.shape != y.shape:
        raise IrepaError(f"correlation needs two 1-D sequences of the same length, got {x.shape} and {y.shape}")
    if not (np.isfinite(x).all() and np.isfinite(y).all()):
        raise IrepaError("correlation inputs contain NaN or inf; drop the incomplete rows first")
    if len(x) < 3:
        raise IrepaError(f"a correlation needs at least 3 points, got {len(x)}")
    return x, y


def bootstrap_interval(
    x: Sequence[float],
    y: Sequence[float],
    method: Method = "pearson",
    *,
    n_resamples: int = 9999,
    confidence: float = 0.95,
    seed: int = 0,
) -> tuple[float, float, int]:
    """Paired percentile-bootstrap interval of a correlation.

    Args:
        x: Measure values (n,).
        y: Outcome values (n,).
        method: ``pearson`` or ``spearman``.
        n_resamples: Bootstrap resamples.
        confidence: Two-sided confidence level in (0, 1).
        seed: Seed of ``numpy.random.default_rng``.

    Returns:
        ``(low, high, degenerate)``: the interval and the number of resamples dropped because the statistic was
        undefined there (NaN bounds if every resample was).
    """
    x, y = _check(x, y)
    if method not in _STATISTICS:
        raise IrepaError(f"unknown correlation method {method!r}; choose one of {', '.join(METHODS)}")
    if isinstance(n_resamples, bool) or not isinstance(n_resamples, int) or n_resamples < 1:
        raise IrepaError(f"the number of bootstrap resamples must be a positive integer, got {n_resamples!r}")
    if not 0 < confidence < 1:
        raise IrepaError(f"the confidence level must be in (0, 1), got {confidence}")
    rng = np.random.default_rng(seed)
    index = rng.integers(0, len(x), (n_resamples, len(x)))
    theta = _STATISTICS[method](x[index], y[index])
    finite = theta[np.isfinite(theta)]
    degenerate = int(n_resamples - finite.size)
    if finite.size == 0:
        return math.nan, math.nan, degenerate
    alpha = (1.0 - confidence) / 2.0
    low, high = np.quantile(finite, [alpha, 1.0 - alpha])
    return float(low), float(high), degenerate


#: Up to this many points the p-value enumerates all n! pairings (8! = 40,320) instead of scipy's approximation.
EXACT_P_MAX_N = 8


def permutation_p_value(x: np.ndarray, y: np.ndarray, method: str) -> float:
    """Exact two-sided permutation p-value: share of the ``n!`` orderings of ``y`` with ``|r| ≥ |r_observed|``."""
    import itertools

    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    observed = abs(float(_STATISTICS[method](x, y)))
    if math.isnan(observed):
        return math.nan
    orders = np.array(list(itertools.permutations(range(len(y)))))
    values = np.abs(_STATISTICS[method](x[None, :], y[orders]))
    return float(np.mean(values >= observed - 1e-12))


def _p_value(x: np.ndarray, y: np.ndarray, method: str) -> float:
    if len(x) <= EXACT_P_MAX_N:
        return permutation_p_value(x, y, method)
    try:
        from scipy import stats
    except ImportError:
        raise IrepaError("p-values need scipy: pip install 'irepa[analysis]'") from None
    if np.ptp(x) == 0 or np.ptp(y) == 0:
        return math.nan
    result = stats.pearsonr(x, y) if method == "pearson" else stats.spearmanr(x, y)
    return float(result.pvalue)


@dataclasses.dataclass(frozen=True)
class Correlation:
    """One correlation coefficient with its uncertainty.

    Attributes:
        method: ``pearson`` or ``spearman``.
        r: The coefficient on all points (NaN if a variable is constant).
        p_value: Two-sided p-value against zero correlation (scipy; exact permutation for n ≤ 8).
        ci: Percentile-bootstrap interval ``(low, high)``.
        n: Number of points.
        confidence: Confidence level of ``ci``.
        n_resamples: Bootstrap resamples drawn.
        seed: Bootstrap seed.
        degenerate: Resamples dropped because the statistic was undefined.
    """

    method: str
    r: float
    p_value: float
    ci: tuple[float, float]
    n: int
    confidence: float
    n_resamples: int
    seed: int
    degenerate: int

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe dict (NaN → None)."""
        return {
            "method": self.method,
            "r": _json(self.r),
            "p_value": _json(self.p_value),
            "ci": [_json(self.ci[0]), _json(self.ci[1])],
            "n": self.n,
            "confidence": self.confidence,
            "n_resamples": self.n_resamples,
            "seed": self.seed,
            "degenerate_resamples": self.degenerate,
        }


def _json(value: float) -> float | None:
    return None if value is None or math.isnan(value) else float(value)


def correlate(
    x: Sequence[float],
    y: Sequence[float],
    method: Method = "pearson",
    *,
    n_resamples: int = 9999,
    confidence: float = 0.95,
    seed: int = 0,
) -> Correlation:
    """The correlation of ``x`` and ``y`` with its p-value and bootstrap interval.

    Raises:
        IrepaError: Fewer than 3 points, different lengths, non-finite values, bad bootstrap settings.
    """
    x, y = _check(x, y)
    r = float(_STATISTICS[method](x, y)) if method in _STATISTICS else math.nan
    low, high, degenerate = bootstrap_interval(x, y, method, n_resamples=n_resamples, confidence=confidence, seed=seed)
    return Correlation(
        method=method,
        r=r,
        p_value=_p_value(x, y, method),
        ci=(low, high),
        n=len(x),
        confidence=confidence,
        n_resamples=n_resamples,
        seed=seed,
        degenerate=degenerate,
    )


def leave_one_out(
    x: Sequence[float], y: Sequence[float], labels: Sequence[str], method: Method = "pearson"
) -> dict[str, float]:
    """The coefficient with each point left out: label → r of the other ``n − 1`` points (NaN if undefined)."""
    x, y = _check(x, y)
    if len(labels) != len(x):
        raise IrepaError(f"{len(labels)} labels for {len(x)} points")
    keep = ~np.eye(len(x), dtype=bool)
    xs = np.stack([x[row] for row in keep])
    ys = np.stack([y[row] for row in keep])
    values = _STATISTICS[method](xs, ys)
    return {str(label): float(value) for label, value in zip(labels, values)}
