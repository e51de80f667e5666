"""Feature statistics (mean, covariance) accumulated in float64 while streaming, and the Fréchet distance.

``FeatureStatistics`` is what ADM stores as ``mu``/``sigma`` (pool features) and ``mu_s``/``sigma_s`` (spatial
features): the mean and the unbiased covariance (``np.cov(x, rowvar=False)``, i.e. divided by ``N - 1``).
:class:`RunningMoments` reaches the same numbers batch by batch, merging per-batch moments with the pairwise update
of Chan, Golub and LeVeque (1979), which stays accurate where the naive ``E[xxᵀ] - μμᵀ`` loses digits.
"""

from __future__ import annotations

import dataclasses
import warnings

import numpy as np
import torch

from irepa.errors import IrepaError

__all__ = ["FeatureStatistics", "RunningMoments", "frechet_distance"]


@dataclasses.dataclass
class FeatureStatistics:
    """Mean ``mu`` (D,) and unbiased covariance ``sigma`` (D, D), float64, of ``count`` feature vectors.

    ``count`` is None for statistics read from a file that does not record it (ADM reference batches).
    """

    mu: np.ndarray
    sigma: np.ndarray
    count: int | None = None

    def __post_init__(self) -> None:
        self.mu = np.asarray(self.mu, dtype=np.float64)
        self.sigma = np.asarray(self.sigma, dtype=np.float64)
        if self.mu.ndim != 1 or self.sigma.shape != (self.mu.shape[0], self.mu.shape[0]):
            raise IrepaError(
                f"feature statistics need mu (D,) and sigma (D, D); got {self.mu.shape} and {self.sigma.shape}"
            )

    def check(self, what: str) -> FeatureStatistics:
        """Check that the statistics can be compared: finite, and a symmetric covariance.

        scipy's ``sqrtm`` never returns on a matrix holding NaN, so statistics read from a file are checked first.

        Args:
            what: How to name the statistics in the error (e.g. ``"reference 'ref.npz' mu/sigma"``).

        Returns:
            ``self``.

        Raises:
            IrepaError: Non-finite values, or a covariance that is not symmetric (relative asymmetry > 1e-6).
        """
        for name, value in (("mean", self.mu), ("covariance", self.sigma)):
            bad = int(np.size(value) - np.isfinite(value).sum())
            if bad:
                raise IrepaError(
                    f"{what}: the {name} holds {bad} non-finite value(s) (NaN/inf); recompute the statistics "
                    "(e.g. 'irepa eval ref --images DIR --out REF.npz')"
                )
        scale = float(np.abs(self.sigma).max(initial=0.0))
        asym = float(np.abs(self.sigma - self.sigma.T).max(initial=0.0))
        if asym > 1e-6 * scale:
            raise IrepaError(
                f"{what}: the covariance is not symmetric (max |Σ − Σᵀ| = {asym:.3g}, max |Σ| = {scale:.3g}); "
                "it is not a covariance matrix: recompute the statistics"
            )
        return self

    @property
    def dim(self) -> int:
        """Feature dimension D."""
        return int(self.mu.shape[0])

    @classmethod
    def from_features(cls, features: np.ndarray | torch.Tensor) -> FeatureStatistics:
        """Statistics of a whole (N, D) feature matrix (float64)."""
        moments = RunningMoments()
        moments.update(features)
        return moments.statistics()


class RunningMoments:
    """Streaming mean and covariance in float64 on any device.

    Example:
        >>> m = RunningMoments()
        >>> for batch in batches:  # doctest: +SKIP
        ...     m.update(batch)    # (B, D)
        >>> stats = m.statistics()  # doctest: +SKIP
    """

    def __init__(self) -> None:
        self.count = 0
        self._mean: torch.Tensor | None = None
        self._m2: torch.Tensor | None = None  # sum of outer products of deviations from the mean

    def update(self, features: np.ndarray | torch.Tensor) -> None:
        """Add a batch of feature vectors (B, D)."""
        x = torch.as_tensor(features).to(torch.float64)
        if x.ndim != 2:
            raise IrepaError(f"features must be (B, D), got shape {tuple(x.shape)}")
        n_b = x.shape[0]
        if n_b == 0:
            return
        if self._mean is not None and x.shape[1] != self._mean.shape[0]:
            raise IrepaError(f"feature dimension changed from {self._mean.shape[0]} to {x.shape[1]}")
        mean_b = x.mean(dim=0)
        centred = x - mean_b
        m2_b = centred.T @ centred
        if self._mean is None:
            self._mean, self._m2, self.count = mean_b, m2_b, n_b
            return
        n_a = self.count
        n = n_a + n_b
        delta = (mean_b - self._mean.to(x.device)).to(x.device)
        self._mean = self._mean.to(x.device) + delta * (n_b / n)
        self._m2 = self._m2.to(x.device) + m2_b + torch.outer(delta, delta) * (n_a * n_b / n)
        self.count = n

    def statistics(self) -> FeatureStatistics:
        """Mean and unbiased covariance so far (as ``np.cov(x, rowvar=False)``).

        Raises:
            IrepaError: With fewer than 2 vectors (the covariance is undefined).
        """
        if self._mean is None or self.count < 2:
            raise IrepaError(f"need at least 2 feature vectors for a covariance, got {self.count}")
        return FeatureStatistics(
            mu=self._mean.cpu().numpy(), sigma=(self._m2 / (self.count - 1)).cpu().numpy(), count=self.count
        )


def frechet_distance(a: FeatureStatistics, b: FeatureStatistics, eps: float = 1e-6) -> float:
    """Fréchet distance between two Gaussians, as the ADM evaluator computes it (float64, scipy ``sqrtm``).

    ``‖μ_a − μ_b‖² + tr Σ_a + tr Σ_b − 2 tr (Σ_a Σ_b)^½``. If ``sqrtm`` returns non-finite values, ``eps·I`` is
    added to both covariances (ADM's fallback). A complex square root whose diagonal has an imaginary part above
    1e-3 is an error (ADM raises too); otherwise the real part is used. Negative round-off (identical statistics)
    is returned as 0.

    Raises:
        IrepaError: Dimension mismatch, non-finite statistics, or a numerically meaningless result
            (ill-conditioned covariances, e.g. far fewer samples than dimensions).
    """
    from scipy import linalg

    if a.dim != b.dim:
        raise IrepaError(f"cannot compare statistics of dimension {a.dim} and {b.dim} (different feature spaces)")
    for name, stats in (("first", a), ("second", b)):
        if not (np.isfinite(stats.mu).all() and np.isfinite(stats.sigma).all()):
            # sqrtm would never return (it iterates on NaN forever).
            raise IrepaError(f"the {name} feature statistics hold non-finite values: no Fréchet distance")
    diff = a.mu - b.mu
    with warnings.catch_warnings():
        # Singular products warn; ADM calls sqrtm(disp=False) and handles the result below, so do we.
        warnings.simplefilter("ignore", linalg.LinAlgWarning)
        covmean = linalg.sqrtm(a.sigma @ b.sigma)
        if not np.isfinite(covmean).all():
            offset = np.eye(a.dim) * eps
            covmean = linalg.sqrtm((a.sigma + offset) @ (b.sigma + offset))
    if np.iscomplexobj(covmean):
        worst = float(np.max(np.abs(np.diagonal(covmean).imag)))
        if worst > 1e-3:
            raise IrepaError(
                f"the Fréchet distance's matrix square root has an imaginary component {worst:.3g}: the covariances "
                f"are ill-conditioned (too few samples for {a.dim}-d features?)"
            )
        covmean = covmean.real
    distance = float(diff @ diff + np.trace(a.sigma) + np.trace(b.sigma) - 2.0 * np.trace(covmean))
    # A distance is >= 0; identical statistics give round-off of either sign (e.g. -2.5e-07), reported as 0.
    return max(distance, 0.0)
