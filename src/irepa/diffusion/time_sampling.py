"""Training-time distributions over SiT time ``t`` in [0, 1] (``t = 0`` data, ``t = 1`` noise).

Samplers in :data:`TIME_SAMPLERS` are functions ``sampler(batch_size, *, generator=None, device=None, **params)``
returning float32 times (B,). :func:`get_time_sampler` binds the ``params`` of a config once and returns a
:class:`TimeSampler` callable ``(batch_size, *, generator=None, device=None)``.

Random numbers are drawn on the generator's device and then moved to ``device``, so a seeded CPU generator gives the
same times whatever device training runs on. Without a generator the global RNG of ``device`` is used.

- ``uniform``: ``t ~ U[0, 1)`` — REPA's default, used for every reported REPA/iREPA run.
- ``lognormal``: ``σ = exp(n)``, ``n ~ N(mean, std)``, then ``t = σ / (1 + σ)`` on the linear path or
  ``t = (2/π) atan σ`` on the cosine path — REPA's ``--weighting lognormal``. On the linear path this is the
  logit-normal distribution ``t = sigmoid(n)`` of SD3 / MeanFlow.
"""

from __future__ import annotations

import functools
import inspect
import math
from collections.abc import Callable
from typing import Any, Protocol

import torch

from irepa.diffusion.paths import InterpolationPath
from irepa.errors import IrepaError
from irepa.registry import Registry

__all__ = ["TIME_SAMPLERS", "TimeSampler", "get_time_sampler", "sample_lognormal", "sample_uniform"]


class TimeSampler(Protocol):
    """A time distribution with its parameters bound: ``sampler(batch_size, *, generator, device) -> (B,)``."""

    def __call__(
        self, batch_size: int, *, generator: torch.Generator | None = None, device: torch.device | str | None = None
    ) -> torch.Tensor:
        """Draw ``batch_size`` times (float32) on ``generator``'s device, returned on ``device``."""
        ...


TIME_SAMPLERS: Registry[Callable[..., torch.Tensor]] = Registry("time sampler")


def _draw(
    kind: str, batch_size: int, generator: torch.Generator | None, device: torch.device | str | None
) -> torch.Tensor:
    """``torch.rand`` / ``torch.randn`` (B,) float32, drawn on the generator's device, then moved to ``device``."""
    source = generator.device if generator is not None else device
    fn = torch.rand if kind == "rand" else torch.randn
    out = fn(batch_size, generator=generator, device=source, dtype=torch.float32)
    return out.to(device) if device is not None else out


@TIME_SAMPLERS.register("uniform")
def sample_uniform(
    batch_size: int, *, generator: torch.Generator | None = None, device: torch.device | str | None = None
) -> torch.Tensor:
    """``t ~ U[0, 1)``, float32 (B,)."""
    return _draw("rand", batch_size, generator, device)


@TIME_SAMPLERS.register("lognormal")
def sample_lognormal(
    batch_size: int,
    *,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
    path: str | InterpolationPath = "linear",
    mean: float = 0.0,
    std: float = 1.0,
) -> torch.Tensor:
    """Log-normal noise level ``σ = exp(N(mean, std))`` mapped to the time of ``path`` where ``σ_t / α_t = σ``.

    Args:
        batch_size: Number of times ``B``.
        generator: Optional generator (its device is where the numbers are drawn).
        device: Device of the result.
        path: ``"linear"`` (``t = σ / (1 + σ)``) or ``"cosine"`` (``t = (2/π) atan σ``), or a path instance.
        mean: Mean of ``log σ`` (REPA: 0).
        std: Standard deviation of ``log σ`` (REPA: 1).

    Returns:
        Times (B,) float32 in (0, 1).
    """
    if std <= 0:
        raise IrepaError(f"lognormal time sampler needs std > 0, got {std}")
    name = path if isinstance(path, str) else path.name
    normal = _draw("randn", batch_size, generator, device) * std + mean
    if name == "linear":
        return torch.sigmoid(normal)  # σ / (1 + σ) with σ = exp(n), without overflow for large n
    if name == "cosine":
        return torch.atan(torch.exp(normal)) * (2 / math.pi)
    raise IrepaError(f"lognormal time sampler supports the linear and cosine paths, got {name!r}")


def get_time_sampler(name: str, **params: Any) -> TimeSampler:
    """Bind ``params`` to the sampler registered as ``name``; e.g. ``get_time_sampler("lognormal", path="cosine")``.

    Raises:
        UnknownNameError: For an unregistered sampler name.
        IrepaError: For a parameter the sampler does not take.
    """
    fn = TIME_SAMPLERS.get(name)
    signature = inspect.signature(fn).parameters.values()
    accepted = [p.name for p in signature if p.kind == p.KEYWORD_ONLY and p.name not in ("generator", "device")]
    unknown = sorted(set(params) - set(accepted))
    if unknown:
        valid = ", ".join(accepted) or "none"
        raise IrepaError(f"time sampler {name!r} takes no parameter(s) {', '.join(unknown)} (valid: {valid})")
    return functools.partial(fn, **params)
