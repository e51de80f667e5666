"""Inception Score, precision/recall (k-NN manifolds) and CMMD, as vectorized torch functions.

* :func:`inception_score`: ADM's rule: consecutive splits of ``split_size`` = 5000 *samples* (10 splits for 50K,
  a shorter last split when N is not a multiple), ``exp(mean_i KL(p(y|x_i) ‖ p(y)))`` per split, mean over splits.
* :func:`precision_recall`: Kynkäänniemi et al. (2019) as ADM's ``ManifoldEstimator`` with ``nhood_sizes=(3,)``:
  squared Euclidean distances, a feature's radius is the distance to its k-th nearest neighbour *excluding itself*
  (the (k+1)-th smallest distance including the zero self-distance), a point is inside a manifold if it lies within
  (``<=``) the radius of at least one of its points. Precision = fraction of samples inside the reference manifold;
  recall = fraction of reference features inside the sample manifold. Blocks of 10,000 rows and columns as ADM.
* :func:`cmmd`: the CMMD of Jayasumana et al. (2024): squared MMD with a Gaussian RBF kernel (σ = 10) between CLIP
  embeddings, the biased (V-statistic) estimator of the reference implementation, times 1000.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from irepa.errors import IrepaError

__all__ = ["cmmd", "inception_score", "manifold_radii", "precision_recall"]


def _as_tensor(x: np.ndarray | torch.Tensor, name: str) -> torch.Tensor:
    t = torch.as_tensor(x)
    if t.ndim != 2 or t.shape[0] == 0:
        raise IrepaError(f"{name} must be a non-empty (N, D) matrix, got shape {tuple(t.shape)}")
    return t


def inception_score(logits: np.ndarray | torch.Tensor, split_size: int = 5000) -> float:
    """Inception Score from unbiased Inception logits (N, C), with ADM's split rule.

    Args:
        logits: ``pool · Wᵀ`` (no bias), one row per sample in file order.
        split_size: Samples per split (ADM: 5000, so 50K samples give 10 splits).

    Returns:
        The mean over splits of ``exp(mean KL)``: 1 for identical predictions, k for confident predictions spread
        evenly over k classes.
    """
    x = _as_tensor(logits, "logits").to(torch.float64)
    log_p = torch.log_softmax(x, dim=1)
    scores = []
    for start in range(0, x.shape[0], split_size):
        part = log_p[start : start + split_size]
        log_marginal = torch.logsumexp(part, dim=0) - math.log(part.shape[0])
        kl = (part.exp() * (part - log_marginal)).sum(dim=1).mean()
        scores.append(kl.exp().item())
    return float(np.mean(scores))


def _sq_distances(u: torch.Tensor, v: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Squared Euclidean distances (|U|, |V|) as ADM: ‖u‖² − 2u·v + ‖v‖², clamped at 0, in ``dtype``."""

    def compute(dt: torch.dtype) -> torch.Tensor:
        a, b = u.to(dt), v.to(dt)
        d = (a * a).sum(1)[:, None] - 2 * (a @ b.T) + (b * b).sum(1)[None, :]
        return d.clamp_min(0)

    d = compute(dtype)
    if dtype == torch.float16 and not torch.isfinite(d).all():
        d = compute(torch.float32)  # ADM's fallback when half precision overflows
    return d.to(torch.float32) if dtype == torch.float16 else d


def manifold_radii(
    features: np.ndarray | torch.Tensor,
    k: int = 3,
    *,
    row_batch: int = 10_000,
    col_batch: int = 10_000,
    distance_dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Distance (squared) from each feature to its k-th nearest other feature (N,).

    Rows are processed in blocks of ``row_batch`` against column blocks of ``col_batch``, keeping the running
    ``k + 1`` smallest distances, so memory is ``row_batch × (col_batch + k + 1)`` whatever N is.

    Raises:
        IrepaError: With at most ``k`` features (no k-th neighbour).
    """
    x = _as_tensor(features, "features")
    n = x.shape[0]
    if n <= k:
        raise IrepaError(f"precision/recall with k={k} needs more than {k} feature vectors, got {n}")
    dtype = distance_dtype if distance_dtype == torch.float16 else torch.promote_types(x.dtype, distance_dtype)
    radii = torch.empty(n, dtype=torch.float32 if dtype == torch.float16 else dtype, device=x.device)
    for r0 in range(0, n, row_batch):
        rows = x[r0 : r0 + row_batch]
        best = None
        for c0 in range(0, n, col_batch):
            block = _sq_distances(rows, x[c0 : c0 + col_batch], dtype)
            merged = block if best is None else torch.cat([best, block], dim=1)
            best = merged.topk(min(k + 1, merged.shape[1]), dim=1, largest=False).values
        radii[r0 : r0 + rows.shape[0]] = best[:, k]
    return radii


def precision_recall(
    reference: np.ndarray | torch.Tensor,
    samples: np.ndarray | torch.Tensor,
    k: int = 3,
    *,
    row_batch: int = 10_000,
    col_batch: int = 10_000,
    distance_dtype: torch.dtype = torch.float32,
) -> tuple[float, float]:
    """Improved precision and recall (Kynkäänniemi et al.) of ``samples`` (M, D) against ``reference`` (N, D).

    Args:
        reference: Reference features (ADM: the pool features of the 10K reference images).
        samples: Sample features (ADM: all 50K samples).
        k: Neighbourhood size (ADM: 3).
        row_batch: Rows per distance block (ADM: 10,000).
        col_batch: Columns per distance block (ADM: 10,000).
        distance_dtype: ``torch.float32`` (default), ``torch.float64``, or ``torch.float16`` to approximate ADM's
            TensorFlow half-precision distances (with its float32 fallback on overflow).

    Returns:
        ``(precision, recall)``.
    """
    ref = _as_tensor(reference, "reference features")
    smp = _as_tensor(samples, "sample features").to(ref.device)
    if ref.shape[1] != smp.shape[1]:
        raise IrepaError(f"reference features are {ref.shape[1]}-d but sample features are {smp.shape[1]}-d")
    kw = dict(row_batch=row_batch, col_batch=col_batch, distance_dtype=distance_dtype)
    radii_ref = manifold_radii(ref, k, **kw)
    radii_smp = manifold_radii(smp, k, **kw)
    dtype = distance_dtype if distance_dtype == torch.float16 else torch.promote_types(ref.dtype, distance_dtype)
    sample_in_ref = torch.zeros(smp.shape[0], dtype=torch.bool, device=ref.device)
    ref_in_sample = torch.zeros(ref.shape[0], dtype=torch.bool, device=ref.device)
    for r0 in range(0, ref.shape[0], row_batch):
        rows = ref[r0 : r0 + row_batch]
        rad_rows = radii_ref[r0 : r0 + row_batch]
        for c0 in range(0, smp.shape[0], col_batch):
            d = _sq_distances(rows, smp[c0 : c0 + col_batch], dtype)
            sample_in_ref[c0 : c0 + d.shape[1]] |= (d <= rad_rows[:, None]).any(dim=0)
            ref_in_sample[r0 : r0 + d.shape[0]] |= (d <= radii_smp[None, c0 : c0 + d.shape[1]]).any(dim=1)
    return sample_in_ref.double().mean().item(), ref_in_sample.double().mean().item()


def cmmd(
    x: np.ndarray | torch.Tensor, y: np.ndarray | torch.Tensor, sigma: float = 10.0, scale: float = 1000.0
) -> float:
    """CMMD: ``scale · MMD²`` with the Gaussian RBF kernel ``exp(-‖a − b‖² / (2σ²))`` (float64, biased estimator).

    Args:
        x: Embeddings of one set (N, D) (CMMD: L2-normalized CLIP image embeddings of the reference images).
        y: Embeddings of the other set (M, D).
        sigma: Kernel bandwidth (10 in the CMMD paper).
        scale: Output scale (1000 in the CMMD paper).
    """
    a = _as_tensor(x, "embeddings").to(torch.float64)
    b = _as_tensor(y, "embeddings").to(torch.float64).to(a.device)
    if a.shape[1] != b.shape[1]:
        raise IrepaError(f"CMMD needs embeddings of one dimension, got {a.shape[1]} and {b.shape[1]}")
    gamma = 1.0 / (2.0 * sigma**2)

    def mean_kernel(u: torch.Tensor, v: torch.Tensor, block: int = 4096) -> float:
        total = 0.0
        v_sq = (v * v).sum(1)
        for start in range(0, u.shape[0], block):
            rows = u[start : start + block]
            d = ((rows * rows).sum(1)[:, None] - 2 * rows @ v.T + v_sq[None, :]).clamp_min(0)
            total += torch.exp(-gamma * d).sum().item()
        return total / (u.shape[0] * v.shape[0])

    return scale * (mean_kernel(a, a) + mean_kernel(b, b) - 2 * mean_kernel(a, b))
