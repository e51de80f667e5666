"""Interpolation paths between data and noise, and the one time convention of irepa.

**Time convention (SiT time, used everywhere in irepa).** ``t = 0`` is clean data and ``t = 1`` is pure noise::

    x_t = alpha_t * x_0 + sigma_t * eps,        eps ~ N(0, I)
    velocity  v_t = d x_t / d t = alpha'_t * x_0 + sigma'_t * eps

The network predicts ``v`` (the SiT/REPA objective); sampling integrates ``dx/dt = v`` from ``t = 1`` down to ``t = 0``.
Recipes written in the opposite convention (JiT: ``t = 1`` clean) convert at their own boundary. Networks that
predict ``x_0`` or ``eps`` instead of ``v`` are converted to the velocity by :func:`to_velocity` (formulas there).

Paths:
    ``linear``: alpha_t = 1 - t, sigma_t = t (rectified flow / SiT default; v = eps - x_0).
    ``cosine``: alpha_t = cos(pi t / 2), sigma_t = sin(pi t / 2) (variance preserving).
"""

from __future__ import annotations

import dataclasses
import math

import torch

from irepa.errors import IrepaError
from irepa.registry import Registry

__all__ = [
    "DEFAULT_T_EPS",
    "PATHS",
    "PREDICTION_TYPES",
    "CosinePath",
    "InterpolationPath",
    "LinearPath",
    "PathSample",
    "expand_t",
    "get_path",
    "to_velocity",
]

#: What a network may predict: the velocity ``v``, the clean data ``x`` (JiT) or the noise ``eps``.
PREDICTION_TYPES = ("v", "x", "eps")
#: Lower bound of the divisor when converting x- or eps-predictions near t = 0 or t = 1 (JiT's t_eps).
DEFAULT_T_EPS = 0.05


def expand_t(t: torch.Tensor | float, x: torch.Tensor) -> torch.Tensor:
    """Broadcast per-sample times ``t`` (B,) (or a scalar) against a batch ``x`` (B, ...)."""
    t = torch.as_tensor(t, dtype=x.dtype, device=x.device)
    if t.ndim == 0:
        return t
    return t.reshape(t.shape[0], *([1] * (x.ndim - 1)))


@dataclasses.dataclass
class PathSample:
    """A point on the path and its regression target.

    Attributes:
        x_t: Noisy input (B, ...).
        velocity: Target velocity ``alpha'_t x_0 + sigma'_t eps`` (B, ...).
        t: Times (B,).
    """

    x_t: torch.Tensor
    velocity: torch.Tensor
    t: torch.Tensor


class InterpolationPath:
    """Base class: subclasses define ``alpha``, ``sigma`` and their time derivatives (elementwise in ``t``)."""

    name = "base"

    def alpha(self, t: torch.Tensor) -> torch.Tensor:
        """Signal coefficient alpha_t."""
        raise NotImplementedError

    def sigma(self, t: torch.Tensor) -> torch.Tensor:
        """Noise coefficient sigma_t."""
        raise NotImplementedError

    def d_alpha(self, t: torch.Tensor) -> torch.Tensor:
        """Time derivative alpha'_t."""
        raise NotImplementedError

    def d_sigma(self, t: torch.Tensor) -> torch.Tensor:
        """Time derivative sigma'_t."""
        raise NotImplementedError

    def sample(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> PathSample:
        """Interpolate data ``x0`` (B, ...) and ``noise`` (B, ...) at times ``t`` (B,)."""
        tt = expand_t(t, x0)
        x_t = self.alpha(tt) * x0 + self.sigma(tt) * noise
        velocity = self.d_alpha(tt) * x0 + self.d_sigma(tt) * noise
        return PathSample(x_t=x_t, velocity=velocity, t=t)

    def velocity_to_x0_eps(
        self, velocity: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Recover ``(x0, eps)`` from a velocity at ``(x_t, t)`` by solving the 2×2 linear system per sample.

        ``x_t = a x0 + s eps`` and ``v = a' x0 + s' eps`` give ``x0 = (s' x_t - s v) / (a s' - a' s)`` and
        ``eps = (a v - a' x_t) / (a s' - a' s)``. The determinant is 1 for the linear path and pi/2 for cosine.
        """
        tt = expand_t(t, x_t)
        a, s, da, ds = self.alpha(tt), self.sigma(tt), self.d_alpha(tt), self.d_sigma(tt)
        det = a * ds - da * s
        x0 = (ds * x_t - s * velocity) / det
        eps = (a * velocity - da * x_t) / det
        return x0, eps

    def velocity_to_score(self, velocity: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Score ``∇ log p_t(x_t) = -eps / sigma_t`` implied by a velocity prediction (undefined at ``t = 0``)."""
        _, eps = self.velocity_to_x0_eps(velocity, x_t, t)
        return -eps / self.sigma(expand_t(t, x_t))

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


PATHS: Registry[type[InterpolationPath]] = Registry("interpolation path")


@PATHS.register("linear")
class LinearPath(InterpolationPath):
    """alpha_t = 1 - t, sigma_t = t: the SiT/REPA default; the target velocity is ``eps - x0``."""

    name = "linear"

    def alpha(self, t):
        """alpha_t."""
        return 1 - t

    def sigma(self, t):
        """sigma_t."""
        return t

    def d_alpha(self, t):
        """alpha'_t."""
        return torch.full_like(torch.as_tensor(t), -1.0)

    def d_sigma(self, t):
        """sigma'_t."""
        return torch.ones_like(torch.as_tensor(t))


@PATHS.register("cosine")
class CosinePath(InterpolationPath):
    """alpha_t = cos(pi t / 2), sigma_t = sin(pi t / 2): a variance-preserving path."""

    name = "cosine"

    def alpha(self, t):
        """alpha_t."""
        return torch.cos(t * (math.pi / 2))

    def sigma(self, t):
        """sigma_t."""
        return torch.sin(t * (math.pi / 2))

    def d_alpha(self, t):
        """alpha'_t."""
        return -(math.pi / 2) * torch.sin(t * (math.pi / 2))

    def d_sigma(self, t):
        """sigma'_t."""
        return (math.pi / 2) * torch.cos(t * (math.pi / 2))


def get_path(name: str) -> InterpolationPath:
    """Instantiate the path registered as ``name`` (``"linear"`` or ``"cosine"``)."""
    return PATHS.get(name)()


def to_velocity(
    out: torch.Tensor,
    x_t: torch.Tensor,
    t: torch.Tensor,
    *,
    prediction: str,
    path: InterpolationPath,
    t_eps: float = DEFAULT_T_EPS,
) -> torch.Tensor:
    """Convert a model output to the velocity ``dx_t/dt`` in SiT time.

    With ``x_t = alpha_t x0 + sigma_t eps`` and ``v = alpha'_t x0 + sigma'_t eps``:

    * ``x`` (``out = x0_hat``): ``v = (sigma'_t x_t + (alpha'_t sigma_t - sigma'_t alpha_t) x0_hat) / sigma_t``;
      on the linear path ``(x_t - x0_hat) / t``, which is JiT's ``(x0_hat - z) / (1 - t_JiT)`` with the sign of
      the reversed time ``t_JiT = 1 - t``.
    * ``eps`` (``out = eps_hat``): ``v = (alpha'_t x_t + (sigma'_t alpha_t - alpha'_t sigma_t) eps_hat) / alpha_t``.

    The divisor vanishes at t = 0 (x) or t = 1 (eps) and is clamped from below by ``t_eps``, as JiT clamps
    ``max(1 - t_JiT, t_eps)``; on the linear path nothing is clamped inside ``[t_eps, 1 - t_eps]``.

    Args:
        out: Model output (B, C, H, W): ``v``, ``x0_hat`` or ``eps_hat``.
        x_t: The model's input (B, C, H, W).
        t: SiT times (B,).
        prediction: ``v``, ``x`` or ``eps``.
        path: The interpolation path the model was trained on.
        t_eps: Lower bound of ``sigma_t`` (x) or ``alpha_t`` (eps) in the division.

    Returns:
        The velocity (B, C, H, W), float32 (``out`` as is for ``v``).
    """
    if prediction == "v":
        return out
    out, x_t = out.float(), x_t.float()
    tt = expand_t(t.float(), x_t)
    alpha, sigma, d_alpha, d_sigma = path.alpha(tt), path.sigma(tt), path.d_alpha(tt), path.d_sigma(tt)
    if prediction == "x":
        return (d_sigma * x_t + (d_alpha * sigma - d_sigma * alpha) * out) / sigma.clamp_min(t_eps)
    if prediction == "eps":
        return (d_alpha * x_t + (d_sigma * alpha - d_alpha * sigma) * out) / alpha.clamp_min(t_eps)
    raise IrepaError(f"unknown prediction type {prediction!r}; use v, x or eps")
