"""Spatial-structure metrics of patch tokens: LDS, CDS, SRSS, RMSC (iREPA paper §3, App. B).

Setup. An image gives patch tokens ``X ∈ R^{T×D}`` on an ``H × W`` grid (row-major, ``T = H·W``, prefix tokens
removed). ``K(t, t') = cos(x_t, x_t')`` is the cosine self-similarity and ``d(t, t') = |Δrow| + |Δcol|`` the
Manhattan distance on the grid. Every metric is computed per image; larger means more spatial organization (for
RMSC: more spatial diversity).

* **LDS** (local vs distant similarity): mean K over pairs with ``1 ≤ d ≤ near`` minus mean K over pairs with
  ``d ≥ far``. ``lds`` defaults to the released code (``near = 1``: 4-neighbours, ``far = 6``); ``lds_paper`` uses
  the paper's radii ``r_near = r_far = H/2`` with the main text's open interval ``0 < d < r_near`` and ``d ≥ r_far``
  (``min(H, W)/2`` on rectangular grids). Which one produced the published correlations is an open question
  (End2End-Diffusion/iREPA#9); the code setting reproduces the paper's Pearson r values.
* **CDS** (correlation decay slope): ``−β̂`` of the least-squares line through the correlogram
  ``g(δ) = mean K at d = δ``, ``δ = 1..dmax`` (released code: ``dmax = 8``).
* **SRSS** (semantic-region self-similarity; needs a foreground mask per image): for each foreground anchor, mean K
  to foreground positives at ``1 ≤ d ≤ near`` minus mean K to background negatives at ``d ≥ far``, averaged over the
  anchors that have at least one positive and one negative; NaN for an image without such an anchor (fewer than 2
  foreground tokens, no background token, ...). Released code: ``near = 1``, ``far = 6``.
* **RMSC** (RMS spatial contrast): ``x̂_t = x_t / max(‖x_t‖, 1e-8)``, ``RMSC = sqrt(mean_t ‖x̂_t − mean_t' x̂_t'‖²)``.

Pairs are ordered pairs; since K is symmetric, means over ordered and unordered pairs agree.

Implementation. Per chunk of images the similarity matrix ``S = X̂ X̂ᵀ`` (B, T, T) is computed **once** (one batched
matmul of the raw tokens, the cost floor; the norms come from its diagonal) and every requested metric is read off
it: LDS, CDS and RMSC from the per-distance sums of S (one float32 ``index_add_`` into (anchor, distance) bins of at
most ``4·d`` terms each, then a float64 sum over the anchors, so nearly uniform tokens keep their digits), SRSS from
a row-vector product and small gathers of S. Everything is vectorized over the batch (no per-image loop), runs on
the tokens' device, in float32 (float64 inputs stay float64), and is chunked (``chunk_size`` images at a time) so
that large batches fit in memory.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any, overload

import torch
import torch.nn.functional as F

from irepa.align.tokens import Grid, drop_prefix, resolve_grid
from irepa.errors import IrepaError
from irepa.registry import Registry

__all__ = [
    "DEFAULT_METRICS",
    "SPATIAL_METRICS",
    "SpatialMetric",
    "SpatialMetricsResult",
    "cds",
    "compute",
    "correlogram",
    "lds",
    "lds_paper",
    "masks_to_patches",
    "rmsc",
    "srss",
    "srss_mask_filter",
]

#: What :func:`compute` reports by default (SRSS only when masks are given).
DEFAULT_METRICS: tuple[str, ...] = ("lds", "cds", "srss", "rmsc")

#: Default budget of similarity-matrix entries per chunk (2**25 float32 = 128 MiB; e.g. 512 images of 16×16 tokens).
_SIM_BUDGET = 1 << 25


# ----------------------------------------------------------------------------------------------------------------------
# Options, grid geometry and the per-chunk context


@dataclasses.dataclass(frozen=True)
class _Options:
    near: int = 1
    far: int = 6
    dmax: int = 8
    eps: float = 1e-8


@dataclasses.dataclass(frozen=True)
class _Geometry:
    """Distances on an ``(H, W)`` grid, shared by every image of that grid."""

    grid: Grid
    dist: torch.Tensor  # (T, T) int64 Manhattan distances
    bins: torch.Tensor  # (T*T,) flat index a * (H + W - 1) + d(a, t): one bin per (anchor, distance)
    counts: torch.Tensor  # (H + W - 1,) number of ordered pairs at each distance d = 0..H+W-2

    @property
    def max_distance(self) -> int:
        return self.grid[0] + self.grid[1] - 2

    @staticmethod
    @functools.lru_cache(maxsize=16)
    def get(grid: Grid, device: torch.device) -> _Geometry:
        height, width = grid
        rows = torch.arange(height, device=device).repeat_interleave(width)
        cols = torch.arange(width, device=device).repeat(height)
        dist = (rows[:, None] - rows[None, :]).abs() + (cols[:, None] - cols[None, :]).abs()
        num_bins = height + width - 1
        anchors = torch.arange(height * width, device=device)[:, None]
        bins = (anchors * num_bins + dist).reshape(-1)
        counts = torch.bincount(dist.reshape(-1), minlength=num_bins)
        return _Geometry(grid, dist, bins, counts)


class _Chunk:
    """Tokens of a chunk of images and the intermediates derived from them, each computed at most once."""

    def __init__(
        self, tokens: torch.Tensor, geometry: _Geometry, masks: torch.Tensor | None, eps: float, offset: int
    ) -> None:
        self.tokens, self.geometry, self.masks, self.eps, self.offset = tokens, geometry, masks, eps, offset

    @functools.cached_property
    def norms(self) -> torch.Tensor:
        """Token norms ``‖x_t‖`` (b, T); raises on non-finite tokens (inf here may also mean float overflow)."""
        norms = torch.linalg.vector_norm(self.tokens, dim=-1)
        if not torch.isfinite(norms).all() and not torch.isfinite(self.tokens).all():
            bad = (~torch.isfinite(self.tokens)).flatten(1).any(1).nonzero()[0].item() + self.offset
            raise IrepaError(f"tokens of image {bad} contain NaN or Inf; fix the features before measuring them")
        return norms

    @functools.cached_property
    def extreme(self) -> bool:
        """True if squared norms or Gram entries could overflow or underflow (huge or tiny non-zero tokens)."""
        norms = self.norms
        return bool(((norms > 1e15) | ((norms > 0) & (norms < 1e-15))).any())

    @functools.cached_property
    def unit(self) -> torch.Tensor:
        """Unit tokens ``x / max(‖x‖, eps)`` (b, T, D); zero tokens stay zero."""
        x = self.tokens
        if self.extreme:
            # Rescale by the max-abs entry first (cosine is scale-invariant), so the squared norm cannot overflow.
            peak = x.abs().amax(dim=-1, keepdim=True)
            x = x / torch.where(peak > 0, peak, torch.ones_like(peak))
            return x / torch.linalg.vector_norm(x, dim=-1, keepdim=True).clamp_min(self.eps)
        return x / self.norms.clamp_min(self.eps).unsqueeze(-1)

    @functools.cached_property
    def sim(self) -> torch.Tensor:
        """Cosine self-similarity ``S = X̂ X̂ᵀ`` (b, T, T)."""
        # Gram matrix of the raw tokens, then scale rows and columns by 1/‖x‖: for T < D this touches far less
        # memory than normalizing the (b, T, D) tokens first, and it is the same number in float32. The norms come
        # from the Gram diagonal, which saves a pass over the tokens; zero, tiny, huge or non-finite tokens (any
        # squared norm outside [1e-30, 1e30]) take the careful path through ``norms`` and ``unit`` instead.
        x = self.tokens
        gram = torch.bmm(x, x.transpose(1, 2))
        squared = torch.diagonal(gram, dim1=1, dim2=2)
        if bool(((squared >= 1e-30) & (squared <= 1e30)).all()):
            inv = squared.sqrt().clamp_min(self.eps).reciprocal()
            self.__dict__.setdefault("inv_norms", inv)
        elif self.extreme:
            return torch.bmm(self.unit, self.unit.transpose(1, 2))
        else:
            inv = self.inv_norms
        return gram.mul_(inv.unsqueeze(2)).mul_(inv.unsqueeze(1))

    @functools.cached_property
    def inv_norms(self) -> torch.Tensor:
        """``1 / max(‖x_t‖, eps)`` (b, T); not used on the extreme path (there ``unit`` is formed directly)."""
        return self.norms.clamp_min(self.eps).reciprocal()

    @functools.cached_property
    def distance_sums(self) -> torch.Tensor:
        """Sum of S over the ordered pairs at each Manhattan distance, (b, H + W − 1), float64.

        Accumulated in two stages so that nearly uniform tokens (every S ≈ 1, metrics that are differences of such
        means) keep their digits: float32 sums per (anchor, distance), i.e. at most ``4·d`` terms each, then a
        float64 sum over the anchors. A single float32 ``index_add_`` over all T² entries loses up to 13 %
        relative on such tokens; this stays at the float32 rounding of S itself.
        """
        sim, geometry = self.sim, self.geometry
        batch, num_tokens = sim.shape[0], sim.shape[1]
        num_bins = geometry.counts.numel()
        fine = sim.new_zeros(batch, num_tokens * num_bins).index_add_(1, geometry.bins, sim.reshape(batch, -1))
        return fine.view(batch, num_tokens, num_bins).sum(1, dtype=torch.float64)

    def mean_between(self, low: int, high: int) -> torch.Tensor:
        """Mean S over the pairs with ``low ≤ d ≤ high``, (b,)."""
        high = min(high, self.geometry.max_distance)
        total = self.distance_sums[:, low : high + 1].sum(1)
        return total / self.geometry.counts[low : high + 1].sum()


# ----------------------------------------------------------------------------------------------------------------------
# The metrics


@dataclasses.dataclass(frozen=True)
class SpatialMetric:
    """A registered spatial metric.

    Attributes:
        fn: ``fn(chunk, options) -> (b,)`` per-image values of a chunk.
        check: ``check(grid, options)`` raising :class:`IrepaError` when the metric is undefined on that grid.
        needs_masks: True if the metric needs a foreground mask per image (SRSS).
        description: One line for listings and docs.
    """

    fn: Callable[[_Chunk, _Options], torch.Tensor]
    check: Callable[[Grid, _Options], None]
    needs_masks: bool
    description: str


SPATIAL_METRICS: Registry[SpatialMetric] = Registry("spatial metric")


def _check_near_far(grid: Grid, opts: _Options, what: str) -> None:
    max_d = grid[0] + grid[1] - 2
    if opts.near < 1:
        raise IrepaError(f"{what}: near must be >= 1 (pairs at distance 1..near), got {opts.near}")
    if opts.far <= opts.near:
        raise IrepaError(f"{what}: far ({opts.far}) must be larger than near ({opts.near})")
    if opts.far > max_d:
        raise IrepaError(
            f"{what}: no token pairs at distance >= {opts.far} on a {grid[0]}x{grid[1]} grid (max {max_d}); set far "
            f"(--far) to at most {max_d}, or use a larger grid (higher resolution)"
        )


def _paper_radii(grid: Grid) -> tuple[int, int]:
    """(largest near distance, smallest far distance) for r_near = r_far = min(H, W) / 2: 0 < d < r, d ≥ r."""
    radius = min(grid) / 2
    return math.ceil(radius) - 1, math.ceil(radius)


def _lds(chunk: _Chunk, opts: _Options) -> torch.Tensor:
    return chunk.mean_between(1, opts.near) - chunk.mean_between(opts.far, chunk.geometry.max_distance)


def _check_lds_paper(grid: Grid, opts: _Options) -> None:
    near, far = _paper_radii(grid)
    if near < 1 or far > grid[0] + grid[1] - 2:
        raise IrepaError(f"lds_paper: a {grid[0]}x{grid[1]} grid is too small for radii min(H, W)/2; use lds")


def _lds_paper(chunk: _Chunk, opts: _Options) -> torch.Tensor:
    near, far = _paper_radii(chunk.geometry.grid)
    return chunk.mean_between(1, near) - chunk.mean_between(far, chunk.geometry.max_distance)


def _check_cds(grid: Grid, opts: _Options) -> None:
    max_d = grid[0] + grid[1] - 2
    if opts.dmax < 2:
        raise IrepaError(f"cds: dmax must be >= 2 (a line needs two distances), got {opts.dmax}")
    if opts.dmax > max_d:
        raise IrepaError(
            f"cds: dmax={opts.dmax} exceeds the largest distance {max_d} of a {grid[0]}x{grid[1]} grid; set dmax "
            f"(--dmax) to at most {max_d}, or use a larger grid (higher resolution)"
        )


def _cds(chunk: _Chunk, opts: _Options) -> torch.Tensor:
    deltas = torch.arange(1, opts.dmax + 1, dtype=torch.float64, device=chunk.tokens.device)
    correlogram = chunk.distance_sums[:, 1 : opts.dmax + 1] / chunk.geometry.counts[1 : opts.dmax + 1]
    centred = deltas - deltas.mean()
    slope = correlogram @ (centred / centred.square().sum())  # least squares: Σ(δ−δ̄)g / Σ(δ−δ̄)²
    return -slope


@functools.lru_cache(maxsize=32)
def _neighbour_table(grid: Grid, device: torch.device, low: int, high: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The partners of every anchor at ``low ≤ d ≤ high`` as a padded table of K slots per anchor.

    Returns:
        ``partner`` (T·K,) token index of each anchor's partner slots (row-major over anchors), ``T`` for padding
        (the index of an appended zero weight), and ``flat`` (T·K,) the matching flat index ``a·T + t`` into S
        (padding points at the anchor itself, a finite entry that the zero weight cancels).
    """
    dist = _Geometry.get(grid, device).dist
    num_tokens = dist.shape[0]
    inside = (dist >= low) & (dist <= high)
    width = max(1, int(inside.sum(1).max()))
    # Stable sort puts each anchor's partners first (in token order), padding after them.
    order = torch.sort((~inside).to(torch.int8), dim=1, stable=True).indices[:, :width]
    valid = torch.gather(inside, 1, order)
    anchors = torch.arange(num_tokens, device=device)[:, None].expand(num_tokens, width)
    partner = torch.where(valid, order, torch.full_like(order, num_tokens))
    flat = anchors * num_tokens + torch.where(valid, order, anchors)
    return partner.reshape(-1), flat.reshape(-1)


def _pair_sums(chunk: _Chunk, weights: torch.Tensor, low: int, high: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per anchor: ``Σ_t S[a, t] w[t]`` and ``Σ_t w[t]`` over the partners at ``low ≤ d ≤ high``, each (b, T).

    Reads only those entries of S, or all of S minus the complement when the pair set is the larger one, so
    sparse neighbourhoods (d = 1) cost almost nothing.
    """
    sim, geometry = chunk.sim, chunk.geometry
    batch, num_tokens = weights.shape
    high = min(high, geometry.max_distance)
    inside = int(geometry.counts[low : high + 1].sum())
    if inside > num_tokens * num_tokens // 2:  # sum over everything, then remove the pairs outside [low, high]
        sets = [(0, low - 1), (high + 1, geometry.max_distance)]
        # S is symmetric, so Σ_t S[a, t] w[t] = (wᵀ S)[a]; the row-vector product streams S faster than S w.
        total = torch.bmm(weights.unsqueeze(1), sim).squeeze(1)
        count = weights.sum(1, keepdim=True).expand(batch, num_tokens)
        sign = -1.0
    else:
        sets, total, count, sign = [(low, high)], 0.0, 0.0, 1.0
    flat_sim = sim.reshape(batch, -1)
    padded = torch.cat([weights, weights.new_zeros(batch, 1)], 1)  # a zero weight at index T for the padding slots
    for lo, hi in sets:
        if lo > hi:
            continue
        partner, flat = _neighbour_table(geometry.grid, sim.device, lo, hi)
        # gather (not index_select) along the inner dimension: a contiguous pass per image, several times faster
        w = torch.gather(padded, 1, partner.expand(batch, -1)).view(batch, num_tokens, -1)  # (b, T, K)
        values = torch.gather(flat_sim, 1, flat.expand(batch, -1)).view(batch, num_tokens, -1)  # (b, T, K)
        total = total + sign * torch.einsum("bak,bak->ba", values, w)
        count = count + sign * w.sum(-1)
    return total, count


def _srss(chunk: _Chunk, opts: _Options) -> torch.Tensor:
    assert chunk.masks is not None
    fg = chunk.masks.to(chunk.sim.dtype)  # (b, T) 1 = foreground
    pos_sum, pos_count = _pair_sums(chunk, fg, 1, opts.near)  # FG positives at 1 ≤ d ≤ near
    neg_sum, neg_count = _pair_sums(chunk, 1.0 - fg, opts.far, chunk.geometry.max_distance)  # BG negatives, d ≥ far
    # Counts are sums of 0/1 weights: exact integers in float, so > 0.5 is an exact test.
    valid = chunk.masks & (pos_count > 0.5) & (neg_count > 0.5)
    per_anchor = pos_sum / pos_count.clamp_min(1) - neg_sum / neg_count.clamp_min(1)
    num_valid = valid.sum(1)
    total = torch.where(valid, per_anchor, torch.zeros_like(per_anchor)).sum(1)
    return torch.where(num_valid > 0, total / num_valid.clamp_min(1), torch.full_like(total, math.nan))


#: Below this RMSC², RMSC is recomputed from the tokens: the similarity-matrix form is a difference of two numbers
#: close to 1 there. With the float64 distance sums its absolute error on RMSC² is ~3e-8 (measured on 16×16×768
#: tokens), i.e. ≤ 3e-4 relative at the threshold and far less above it.
_RMSC_DIRECT_BELOW = 1e-4
#: Elements of the per-group temporary of the direct RMSC form (2**20 float32 = 4 MiB).
_RMSC_GROUP_ELEMENTS = 1 << 20


def _rmsc(chunk: _Chunk, opts: _Options) -> torch.Tensor:
    # mean_t ‖x̂_t − x̄‖² = mean(diag S) − mean(S): free once the per-distance sums of S exist (d = 0 is the
    # diagonal; all distances together are the whole matrix).
    sums = chunk.distance_sums
    num_tokens = chunk.sim.shape[1]
    squared = (sums[:, 0] / num_tokens - sums.sum(1) / num_tokens**2).clamp_min(0)
    small = squared < _RMSC_DIRECT_BELOW
    if bool(small.any()):
        # Near-uniform tokens: the difference of two numbers close to 1 loses digits; use the direct form there.
        squared[small] = _rmsc_direct(chunk, small).to(squared.dtype)
    return squared.sqrt()


def _rmsc_direct(chunk: _Chunk, select: torch.Tensor) -> torch.Tensor:
    """``mean_t ‖x̂_t − x̄‖²`` from the tokens for the images where ``select`` (b,) is True, (n,)."""
    if chunk.extreme:
        unit = chunk.unit[select]
        return (unit - unit.mean(1, keepdim=True)).square().sum(-1).mean(1)
    num_images, num_tokens, dim = chunk.tokens.shape
    # A few images at a time (contiguous slices): the (n, T, D) temporary then stays small enough to be reused by
    # the allocator and to sit in cache; one freshly allocated (b, T, D) temporary costs more in page faults than
    # the arithmetic (measured 2.5x slower on 256 images of 16x16x768).
    group = max(1, _RMSC_GROUP_ELEMENTS // (num_tokens * dim))
    out = []
    for start in range(0, num_images, group):
        keep = select[start : start + group]
        if not bool(keep.any()):
            continue
        tokens, inv = chunk.tokens[start : start + group], chunk.inv_norms[start : start + group].unsqueeze(-1)
        if not bool(keep.all()):
            tokens, inv = tokens[keep], inv[keep]
        mean = torch.bmm(inv.transpose(1, 2), tokens) / num_tokens  # x̄ = mean_t x_t / ‖x_t‖, (n, 1, D)
        centred = torch.addcmul(-mean, tokens, inv)  # x̂_t − x̄ in one fused pass
        out.append(torch.linalg.vector_norm(centred, dim=-1).square().mean(1))
    return torch.cat(out)


def _no_check(grid: Grid, opts: _Options) -> None:
    return None


SPATIAL_METRICS.register(
    "lds",
    SpatialMetric(_lds, lambda g, o: _check_near_far(g, o, "lds"), False, "mean cos at 1<=d<=near - at d>=far"),
)
SPATIAL_METRICS.register(
    "lds_paper",
    SpatialMetric(_lds_paper, _check_lds_paper, False, "LDS with the paper's radii r_near = r_far = H/2"),
)
SPATIAL_METRICS.register("cds", SpatialMetric(_cds, _check_cds, False, "-slope of the correlogram over d = 1..dmax"))
SPATIAL_METRICS.register(
    "srss",
    SpatialMetric(_srss, lambda g, o: _check_near_far(g, o, "srss"), True, "FG positives vs BG negatives per anchor"),
)
SPATIAL_METRICS.register("rmsc", SpatialMetric(_rmsc, _no_check, False, "RMS distance of unit tokens to their mean"))


# ----------------------------------------------------------------------------------------------------------------------
# Input checks


def _check_tokens(tokens: Any, prefix_tokens: int, what: str) -> torch.Tensor:
    if not isinstance(tokens, torch.Tensor):
        raise IrepaError(f"{what} must be a tensor (B, T, D), got {type(tokens).__name__}")
    if tokens.ndim != 3:
        raise IrepaError(f"{what} must be (B, T, D) patch tokens, got shape {tuple(tokens.shape)}")
    if not tokens.is_floating_point():
        raise IrepaError(f"{what} must be floating point, got {tokens.dtype}")
    if tokens.shape[0] == 0 or tokens.shape[2] == 0:
        raise IrepaError(f"{what} {tuple(tokens.shape)} hold no images or no channels")
    tokens = drop_prefix(tokens, prefix_tokens, what=what)
    if tokens.shape[1] < 2:
        raise IrepaError(f"{what} need at least 2 grid tokens per image, got {tokens.shape[1]}")
    return tokens


def _check_masks(masks: Any, batch: int, grid: Grid, what: str) -> torch.Tensor:
    if not isinstance(masks, torch.Tensor):
        raise IrepaError(f"masks for {what} must be a tensor (B, T) or (B, H, W), got {type(masks).__name__}")
    height, width = grid
    if masks.ndim == 3 and tuple(masks.shape[1:]) == (height, width):
        masks = masks.reshape(masks.shape[0], -1)
    if masks.ndim != 2 or masks.shape != (batch, height * width):
        raise IrepaError(
            f"masks {tuple(masks.shape)} do not match {what} ({batch} images, {height}x{width} grid): expected "
            f"({batch}, {height * width}) or ({batch}, {height}, {width}); convert pixel masks with masks_to_patches"
        )
    if masks.dtype != torch.bool:
        if masks.is_complex() or not bool(((masks == 0) | (masks == 1)).all()):
            raise IrepaError(f"masks for {what} must be boolean or 0/1 (True/1 = foreground), got other values")
        masks = masks != 0
    return masks


def _options(near: int, far: int, dmax: int, eps: float) -> _Options:
    for name, value in (("near", near), ("far", far), ("dmax", dmax)):
        if isinstance(value, bool) or not isinstance(value, int):
            raise IrepaError(f"{name} must be an integer distance, got {value!r}")
    if not eps > 0:
        raise IrepaError(f"eps must be > 0, got {eps!r}")
    return _Options(near=near, far=far, dmax=dmax, eps=float(eps))


# ----------------------------------------------------------------------------------------------------------------------
# Evaluation


def _evaluate(
    tokens: torch.Tensor,
    masks: torch.Tensor | None,
    names: Sequence[str],
    grid: Sequence[int] | None,
    opts: _Options,
    prefix_tokens: int,
    chunk_size: int | None,
    what: str,
) -> tuple[dict[str, torch.Tensor], Grid]:
    tokens = _check_tokens(tokens, prefix_tokens, what)
    batch, num_tokens, _ = tokens.shape
    hw = resolve_grid(num_tokens, grid, what=what)
    metrics = {name: SPATIAL_METRICS.get(name) for name in names}
    for name, metric in metrics.items():
        metric.check(hw, opts)
        if metric.needs_masks and masks is None:
            raise IrepaError(f"{name} needs a foreground mask per image; pass masks (B, T) bool")
    if masks is not None:
        masks = _check_masks(masks, batch, hw, what).to(tokens.device)
    if chunk_size is None:
        chunk_size = max(1, _SIM_BUDGET // (num_tokens * num_tokens))
    elif isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
        raise IrepaError(f"chunk_size must be a positive number of images, got {chunk_size!r}")
    dtype = torch.float64 if tokens.dtype == torch.float64 else torch.float32
    geometry = _Geometry.get(hw, tokens.device)
    parts: dict[str, list[torch.Tensor]] = {name: [] for name in metrics}
    with torch.autocast(device_type=tokens.device.type, enabled=False), torch.no_grad():
        for start in range(0, batch, chunk_size):
            stop = min(batch, start + chunk_size)
            chunk = _Chunk(
                tokens[start:stop].to(dtype),
                geometry,
                masks[start:stop] if masks is not None else None,
                opts.eps,
                start,
            )
            for name, metric in metrics.items():
                parts[name].append(metric.fn(chunk, opts).to(dtype))
    return {name: torch.cat(values) for name, values in parts.items()}, hw


def _single(name: str, tokens: torch.Tensor, masks: torch.Tensor | None, grid, opts, prefix_tokens, chunk_size):
    values, _ = _evaluate(tokens, masks, (name,), grid, opts, prefix_tokens, chunk_size, "tokens")
    return values[name]


def lds(
    tokens: torch.Tensor,
    grid: Sequence[int] | None = None,
    near: int = 1,
    far: int = 6,
    *,
    prefix_tokens: int = 0,
    chunk_size: int | None = None,
) -> torch.Tensor:
    """Local vs distant similarity per image (released-code setting by default: d = 1 vs d ≥ 6).

    Args:
        tokens: Patch tokens ``(B, P + T, D)``; the first ``prefix_tokens`` (CLS/registers) are dropped.
        grid: ``(H, W)`` with ``H·W = T``; inferred when ``T`` is a perfect square.
        near: Largest Manhattan distance of a "local" pair (pairs at ``1 ≤ d ≤ near``).
        far: Smallest Manhattan distance of a "distant" pair (``d ≥ far``).
        prefix_tokens: Number of leading non-grid tokens.
        chunk_size: Images per similarity-matrix chunk (default: about 128 MiB of float32 per chunk).

    Returns:
        ``(B,)`` float32 (float64 for float64 input), in [−2, 2].
    """
    return _single("lds", tokens, None, grid, _options(near, far, 8, 1e-8), prefix_tokens, chunk_size)


def lds_paper(
    tokens: torch.Tensor,
    grid: Sequence[int] | None = None,
    *,
    prefix_tokens: int = 0,
    chunk_size: int | None = None,
) -> torch.Tensor:
    """LDS with the paper's radii ``r_near = r_far = H/2``: mean K at ``0 < d < H/2`` minus mean K at ``d ≥ H/2``.

    On a 16×16 grid this is ``1 ≤ d ≤ 7`` vs ``d ≥ 8``; rectangular grids use ``min(H, W)/2``. See the module
    docstring for how it differs from :func:`lds` (the released code's setting).

    Returns:
        ``(B,)`` float32 (float64 for float64 input).
    """
    return _single("lds_paper", tokens, None, grid, _Options(), prefix_tokens, chunk_size)


def cds(
    tokens: torch.Tensor,
    grid: Sequence[int] | None = None,
    dmax: int = 8,
    *,
    prefix_tokens: int = 0,
    chunk_size: int | None = None,
) -> torch.Tensor:
    """Correlation decay slope per image: ``−slope`` of the least-squares line through ``g(δ)``, ``δ = 1..dmax``.

    ``g(δ)`` is the mean cosine over all ordered pairs at Manhattan distance exactly ``δ``.

    Returns:
        ``(B,)`` float32 (float64 for float64 input).
    """
    return _single("cds", tokens, None, grid, _options(1, 2, dmax, 1e-8), prefix_tokens, chunk_size)


def srss(
    tokens: torch.Tensor,
    masks: torch.Tensor,
    grid: Sequence[int] | None = None,
    near: int = 1,
    far: int = 6,
    *,
    prefix_tokens: int = 0,
    chunk_size: int | None = None,
) -> torch.Tensor:
    """Semantic-region self-similarity per image (NaN where undefined).

    Args:
        tokens: Patch tokens ``(B, P + T, D)``.
        masks: Foreground masks ``(B, T)`` (or ``(B, H, W)`` on the token grid), bool or 0/1; True = foreground.
            Make pixel masks patch masks with :func:`masks_to_patches`.
        grid: ``(H, W)``; inferred when ``T`` is a perfect square.
        near: Positives are foreground tokens at ``1 ≤ d ≤ near`` from the anchor.
        far: Negatives are background tokens at ``d ≥ far``.
        prefix_tokens: Number of leading non-grid tokens.
        chunk_size: Images per chunk.

    Returns:
        ``(B,)``: per image, the mean over foreground anchors with ≥ 1 positive and ≥ 1 negative of
        ``mean K(anchor, positives) − mean K(anchor, negatives)``; NaN if no anchor qualifies.
    """
    return _single("srss", tokens, masks, grid, _options(near, far, 8, 1e-8), prefix_tokens, chunk_size)


def rmsc(
    tokens: torch.Tensor,
    grid: Sequence[int] | None = None,
    *,
    prefix_tokens: int = 0,
    eps: float = 1e-8,
    chunk_size: int | None = None,
) -> torch.Tensor:
    """RMS spatial contrast per image: ``sqrt(mean_t ‖x̂_t − mean(x̂)‖²)`` with ``x̂ = x / max(‖x‖, eps)``.

    ``grid`` is only checked (RMSC ignores positions). Returns ``(B,)`` in [0, 1].
    """
    return _single("rmsc", tokens, None, grid, _options(1, 6, 8, eps), prefix_tokens, chunk_size)


# ----------------------------------------------------------------------------------------------------------------------
# compute(): all metrics from one similarity matrix per chunk


@dataclasses.dataclass(frozen=True)
class SpatialMetricsResult:
    """Spatial metrics of one token source.

    Attributes:
        values: Metric name → per-image values ``(B,)`` (NaN where undefined, e.g. SRSS without a valid anchor).
        means: Metric name → NaN-aware mean over images (NaN if no image has a value).
        counts: Metric name → number of images with a defined value.
        num_images: ``B``.
        grid: ``(H, W)`` of the tokens.
        settings: The options used (``near``, ``far``, ``dmax``, ``prefix_tokens``, ``eps``, ``lds_paper`` radii).
    """

    values: dict[str, torch.Tensor]
    means: dict[str, float]
    counts: dict[str, int]
    num_images: int
    grid: Grid
    settings: dict[str, Any]

    def to_dict(self, per_image: bool = True) -> dict[str, Any]:
        """JSON-safe dict: means, counts, grid, settings and (optionally) per-image values (NaN → None)."""
        out: dict[str, Any] = {
            "num_images": self.num_images,
            "grid": list(self.grid),
            "settings": dict(self.settings),
            "means": {k: _json_float(v) for k, v in self.means.items()},
            "counts": dict(self.counts),
        }
        if per_image:
            out["per_image"] = {k: [_json_float(x) for x in v.tolist()] for k, v in self.values.items()}
        return out


def _json_float(value: float) -> float | None:
    return None if math.isnan(value) else float(value)


@overload
def compute(
    tokens_or_dict: torch.Tensor,
    masks: torch.Tensor | None = None,
    metrics: Sequence[str] | None = None,
    grid: Sequence[int] | None = None,
    **kwargs: Any,
) -> SpatialMetricsResult: ...
@overload
def compute(
    tokens_or_dict: Mapping[str, torch.Tensor],
    masks: torch.Tensor | Mapping[str, torch.Tensor] | None = None,
    metrics: Sequence[str] | None = None,
    grid: Sequence[int] | None = None,
    **kwargs: Any,
) -> dict[str, SpatialMetricsResult]: ...


def compute(
    tokens_or_dict,
    masks=None,
    metrics=None,
    grid=None,
    *,
    near: int = 1,
    far: int = 6,
    dmax: int = 8,
    prefix_tokens: int = 0,
    eps: float = 1e-8,
    chunk_size: int | None = None,
):
    """Several spatial metrics from one similarity matrix per chunk.

    Args:
        tokens_or_dict: Patch tokens ``(B, P + T, D)``, or a dict name → tokens (e.g. one entry per encoder; each
            entry may have its own width and grid).
        masks: Foreground masks ``(B, T)`` bool for SRSS (one tensor for all sources, or a dict per source). An
            image whose mask is all False gets SRSS = NaN: that is how filtered-out images are excluded.
        metrics: Names from ``SPATIAL_METRICS`` (``lds``, ``lds_paper``, ``cds``, ``srss``, ``rmsc``). None means
            ``DEFAULT_METRICS`` with SRSS skipped when no masks are given; asking for ``srss`` explicitly without
            masks is an error.
        grid: ``(H, W)``, inferred when ``T`` is a perfect square (the same grid for every source).
        near: LDS/SRSS local radius (pairs at ``1 ≤ d ≤ near``); released code 1.
        far: LDS/SRSS distant radius (``d ≥ far``); released code 6.
        dmax: CDS correlogram length (``δ = 1..dmax``); released code 8.
        prefix_tokens: Leading non-grid tokens to drop (CLS, registers).
        eps: Norm floor of the token normalization (released code 1e-8).
        chunk_size: Images per chunk (default: about 128 MiB of similarity matrix per chunk).

    Returns:
        A :class:`SpatialMetricsResult` for a tensor, a dict name → result for a dict.

    Raises:
        IrepaError: Non-finite tokens, wrong ranks or shapes, masks that do not match, a grid that does not multiply
            to ``T``, unknown metric names, radii the grid cannot hold.
    """
    if metrics is None:
        names = [m for m in DEFAULT_METRICS if m != "srss" or masks is not None]
    else:
        if isinstance(metrics, str):
            metrics = [m for m in metrics.split(",") if m.strip()]
        names = [SPATIAL_METRICS.canonical(str(m).strip()) for m in metrics]
        if not names:
            raise IrepaError("no metric requested; pass metrics such as ('lds', 'cds', 'srss', 'rmsc')")
        names = list(dict.fromkeys(names))
    opts = _options(near, far, dmax, eps)
    settings = {"near": near, "far": far, "dmax": dmax, "prefix_tokens": prefix_tokens, "eps": eps}

    def one(tokens: torch.Tensor, source_masks: torch.Tensor | None, what: str) -> SpatialMetricsResult:
        values, hw = _evaluate(tokens, source_masks, names, grid, opts, prefix_tokens, chunk_size, what)
        extra = {}
        if "lds_paper" in names:
            extra["lds_paper_near"], extra["lds_paper_far"] = _paper_radii(hw)
        counts = {k: int(torch.isfinite(v).sum()) for k, v in values.items()}
        means = {k: float(v.nanmean()) if counts[k] else math.nan for k, v in values.items()}
        return SpatialMetricsResult(values, means, counts, int(tokens.shape[0]), hw, {**settings, **extra})

    if isinstance(tokens_or_dict, Mapping):
        if not tokens_or_dict:
            raise IrepaError("no token sources given (empty dict)")
        results = {}
        for name, tokens in tokens_or_dict.items():
            source_masks = masks.get(name) if isinstance(masks, Mapping) else masks
            if isinstance(masks, Mapping) and source_masks is None and "srss" in names:
                raise IrepaError(f"masks has no entry for token source {name!r}")
            results[str(name)] = one(tokens, source_masks, f"tokens {name!r}")
        return results
    if isinstance(masks, Mapping):
        raise IrepaError("masks is a dict but the tokens are a single tensor; pass one mask tensor")
    return one(tokens_or_dict, masks, "tokens")


def correlogram(
    tokens: torch.Tensor,
    grid: Sequence[int] | None = None,
    *,
    prefix_tokens: int = 0,
    chunk_size: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The correlogram ``g(δ)``: mean cosine self-similarity at each Manhattan distance ``δ = 0..H+W−2``, per image.

    CDS is the negated least-squares slope of this curve over ``δ = 1..dmax``; the curve itself is what the
    encoder report plots. ``g(0) = 1`` for non-zero tokens (every token with itself).

    Args:
        tokens: Patch tokens ``(B, P + T, D)``.
        grid: ``(H, W)``; inferred when ``T`` is a perfect square.
        prefix_tokens: Leading non-grid tokens to drop.
        chunk_size: Images per similarity-matrix chunk.

    Returns:
        ``(values (B, H + W − 1), pair counts (H + W − 1,))``: float32 means (float64 for float64 input) and the
        number of ordered token pairs at each distance.
    """
    tokens = _check_tokens(tokens, prefix_tokens, "tokens")
    batch, num_tokens, _ = tokens.shape
    hw = resolve_grid(num_tokens, grid, what="tokens")
    if chunk_size is None:
        chunk_size = max(1, _SIM_BUDGET // (num_tokens * num_tokens))
    dtype = torch.float64 if tokens.dtype == torch.float64 else torch.float32
    geometry = _Geometry.get(hw, tokens.device)
    parts = []
    with torch.autocast(device_type=tokens.device.type, enabled=False), torch.no_grad():
        for start in range(0, batch, chunk_size):
            chunk = _Chunk(tokens[start : start + chunk_size].to(dtype), geometry, None, 1e-8, start)
            parts.append((chunk.distance_sums / geometry.counts).to(dtype))  # float64 sums, float32 means
    return torch.cat(parts), geometry.counts.clone()


# ----------------------------------------------------------------------------------------------------------------------
# Masks


def masks_to_patches(pixel_masks: torch.Tensor, grid: Sequence[int]) -> torch.Tensor:
    """Downsample pixel masks to the token grid: a patch is foreground if any of its pixels is (max-pooling).

    This is the official pipeline's step (max-pool with a kernel of one patch). When the image size is not a
    multiple of the grid, adaptive max-pooling uses windows that cover every pixel (neighbouring windows may
    overlap by one pixel).

    Args:
        pixel_masks: ``(B, H_img, W_img)`` bool, or numbers where > 0 is foreground (e.g. PNG masks 0/255).
        grid: Token grid ``(H, W)``.

    Returns:
        Patch masks ``(B, H·W)`` bool, row-major like the tokens.

    Raises:
        IrepaError: A mask that is not 3-D or smaller than the grid.
    """
    if not isinstance(pixel_masks, torch.Tensor) or pixel_masks.ndim != 3:
        shape = tuple(pixel_masks.shape) if isinstance(pixel_masks, torch.Tensor) else type(pixel_masks).__name__
        raise IrepaError(f"pixel masks must be (B, H, W), got {shape}")
    height, width = resolve_grid(_grid_cells(grid), grid, what="the mask grid")
    if pixel_masks.shape[1] < height or pixel_masks.shape[2] < width:
        raise IrepaError(f"pixel masks {tuple(pixel_masks.shape[1:])} are smaller than the {height}x{width} token grid")
    foreground = (pixel_masks > 0).to(torch.float32).unsqueeze(1)
    pooled = F.adaptive_max_pool2d(foreground, (height, width))
    return pooled.flatten(1) > 0


def _grid_cells(grid: Sequence[int]) -> int:
    try:
        height, width = grid
        return int(height) * int(width)
    except (TypeError, ValueError):
        raise IrepaError(f"grid {grid!r} must be two positive integers (H, W)") from None


def srss_mask_filter(patch_masks: torch.Tensor, min_fg: int | None = None, min_bg: int | None = None) -> torch.Tensor:
    """Which images the paper's SRSS filter keeps: at least ``min_fg`` foreground and ``min_bg`` background patches.

    The official pipeline keeps images with ≥ 64 FG and ≥ 64 BG patches out of 256 (a quarter each). The defaults
    scale that rule with the grid: ``ceil(T / 4)`` each, which is exactly 64 at ``T = 256``; pass explicit counts to
    override.

    Args:
        patch_masks: ``(B, T)`` bool patch masks (True = foreground).
        min_fg: Minimum number of foreground patches (default ``ceil(T / 4)``).
        min_bg: Minimum number of background patches (default ``ceil(T / 4)``).

    Returns:
        ``(B,)`` bool, True for the images to keep.
    """
    if not isinstance(patch_masks, torch.Tensor) or patch_masks.ndim != 2:
        shape = tuple(patch_masks.shape) if isinstance(patch_masks, torch.Tensor) else type(patch_masks).__name__
        raise IrepaError(f"patch masks must be (B, T), got {shape}; convert pixel masks with masks_to_patches")
    num_tokens = patch_masks.shape[1]
    quarter = math.ceil(num_tokens / 4)
    min_fg = quarter if min_fg is None else min_fg
    min_bg = quarter if min_bg is None else min_bg
    fg = (patch_masks != 0).sum(1)
    return (fg >= min_fg) & (num_tokens - fg >= min_bg)
