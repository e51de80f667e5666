"""Samplers: Euler and Heun ODE, Euler–Maruyama SDE, classifier-free guidance with a guidance interval.

All samplers are pure functions over a *velocity function* ``v = velocity_fn(x_t (B, ...), t (B,), y (B,))`` that
returns the velocity ``dx_t/dt`` in SiT time (``t = 1`` noise → ``t = 0`` data, see :mod:`irepa.diffusion.paths`).
They integrate from ``t = 1`` to ``t = 0`` on the exact grids of the official REPA / iREPA / REPA-E samplers:

==========  =====================================================================  ===========================
sampler     grid (float64)                                                         velocity evaluations (NFE)
==========  =====================================================================  ===========================
``euler``   ``linspace(1, 0, N + 1)``                                              ``N``
``heun``    ``linspace(1, 0, N + 1)``; predictor–corrector on every interval but   ``2N - 1``
            the last, which is a plain Euler step
``sde``     ``linspace(1, 0.04, N)`` then ``0``; the first ``N - 1`` intervals are  ``N``
            Euler–Maruyama steps with diffusion ``w(t) = 2t``, the last interval
            ``0.04 → 0`` is the noiseless mean step ``x + d·dt``
==========  =====================================================================  ===========================

The state ``x`` is kept in float64 (as the official samplers do) and cast to the noise's dtype for each velocity
call; the result is returned in the noise's dtype.

**Classifier-free guidance.** Guidance is active at a step iff ``cfg_scale > 1`` and ``low <= t <= high`` (both
inclusive, SiT time, ``t`` the time the velocity is evaluated at). Then the conditional and the unconditional
(``null_label``) inputs go through *one* forward of a ``2B`` batch and are combined as ``v_u + s·(v_c − v_u)``.
For the SDE the official code combines the drifts ``d = v − ½·w·score(v)``; the drift is affine in ``v`` with
coefficients summing to one, so combining velocities first is the same thing.

**Randomness.** Initial noise is an input. The SDE draws its per-step noise from ``generator``: either one
``torch.Generator`` per sample (``generators[i]`` drives sample ``i`` only, so a sample does not depend on the batch
it was drawn in, nor on the number of GPUs) or a single generator for the whole batch (faster; results then depend
on the batch composition). :func:`sample_generators` builds the per-sample generators of a run from the global
seed and each sample's global index: see :func:`generator_seed` for the formula.

**Compatibility switch.** The official Heun corrector tests whether guidance is on with the *current* time
``t_cur`` although it evaluates the velocity at ``t_next`` (prior-implementations §10). irepa tests ``t_next``
(``heun_guidance_time="next"``, default); ``"current"`` reproduces the official behaviour.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Callable, Sequence
from typing import Literal

import torch

from irepa.diffusion.paths import InterpolationPath
from irepa.errors import IrepaError
from irepa.registry import Registry

__all__ = [
    "SAMPLERS",
    "SDE_LAST_TIME",
    "SEED_FORMULA",
    "SEED_STRIDE",
    "SamplerResult",
    "VelocityFn",
    "draw_noise",
    "euler_sample",
    "generator_seed",
    "guidance_active",
    "heun_sample",
    "sample_generators",
    "sample_labels",
    "sde_sample",
    "time_grid",
]

#: ``velocity_fn(x_t (B, ...), t (B,), y (B,)) -> v (B, ...)``.
VelocityFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
Generators = torch.Generator | Sequence[torch.Generator] | None

#: Golden-ratio increment (2^32 / φ, odd): consecutive seeds start their streams far apart (see generator_seed).
SEED_STRIDE = 0x9E3779B9
#: How :func:`generator_seed` seeds sample ``index`` (recorded in recipe cards).
SEED_FORMULA = f"torch.Generator (CPU) seeded with (index + seed * 0x{SEED_STRIDE:X}) mod 2**32"
#: Last time of the stochastic part of the official SDE grid.
SDE_LAST_TIME = 0.04


@dataclasses.dataclass
class SamplerResult:
    """What a sampler returns.

    Attributes:
        samples: Final states at ``t = 0`` (B, ...), in the noise's dtype.
        nfe: Number of velocity-function calls (the usual "NFE"; a guided call counts once although it runs a
            ``2B`` batch).
        guided_nfe: How many of those calls had guidance active (each evaluated ``2B`` inputs).
        times: The times the velocity was evaluated at, in call order (float64, for inspection and tests).
    """

    samples: torch.Tensor
    nfe: int
    guided_nfe: int
    times: list[float]


# ----------------------------------------------------------------------------------------------------------------------
# Seeds and generators


def generator_seed(seed: int, index: int) -> int:
    """Seed of the generator of sample ``index`` in a run with global seed ``seed``.

    ``generator_seed(seed, index) = (index + seed · 0x9E3779B9) mod 2^32``.

    torch's CPU generator uses only the low 32 bits of a seed (``manual_seed(1)`` and ``manual_seed(1 + 2**32)``
    give the same stream), so the formula lives in 32 bits. For a fixed seed it is injective in ``index``
    (``index < 2^32``): no two samples of a run share noise, whatever the batch size or world size (REPA-E's
    ``(seed + rank) · world_size // 2`` collides, e.g. seeds 0 and 1 on one GPU). Two runs whose seeds differ by at
    most 100 start their index ranges at least 21.5 million apart, so they share no stream below that many samples.

    Raises:
        IrepaError: If ``seed`` or ``index`` is negative or ``index >= 2^32``.
    """
    if seed < 0:
        raise IrepaError(f"seed {seed} is negative; use a seed >= 0")
    if not 0 <= index < 2**32:
        raise IrepaError(f"sample index {index} is outside [0, 2^32)")
    return (index + seed * SEED_STRIDE) % 2**32


def sample_generators(indices: Sequence[int] | torch.Tensor, seed: int, device: str = "cpu") -> list[torch.Generator]:
    """One ``torch.Generator`` per sample, seeded by :func:`generator_seed` from the sample's global index.

    CPU generators (the default) give the same noise on every machine; the samplers move noise to the state's
    device. CUDA generators are faster for large SDE batches but draw different numbers than CPU ones.
    """
    return [torch.Generator(device=device).manual_seed(generator_seed(seed, int(i))) for i in indices]


#: Index reserved for the labels generator of a run (no sample has it: runs hold fewer than 2^32 - 1 samples).
LABELS_INDEX = 2**32 - 1


def sample_labels(num_samples: int, num_classes: int, scheme: Literal["random", "balanced"], seed: int) -> torch.Tensor:
    """Class labels (N,) int64 of a whole run, the same on every rank.

    ``random``: i.i.d. uniform labels (REPA / iREPA / REPA-E / ADM / DiT). ``balanced``: ``arange(N) % K`` in a
    random order, exactly ``N / K`` per class when ``K`` divides ``N`` (JiT, EDM), otherwise counts differ by at
    most one. Both draw from one CPU generator seeded with ``generator_seed(seed, 2^32 - 1)``, an index no sample
    uses, so the labels never share a stream with a sample's noise.

    Raises:
        IrepaError: Unknown scheme, ``num_classes < 1`` or ``num_samples < 1``.
    """
    if num_samples < 1 or num_classes < 1:
        raise IrepaError(f"need num_samples >= 1 and num_classes >= 1, got {num_samples} and {num_classes}")
    gen = torch.Generator().manual_seed(generator_seed(seed, LABELS_INDEX))
    if scheme == "random":
        return torch.randint(num_classes, (num_samples,), generator=gen)
    if scheme == "balanced":
        labels = torch.arange(num_samples) % num_classes
        return labels[torch.randperm(num_samples, generator=gen)]
    raise IrepaError(f"unknown label scheme {scheme!r}; use 'random' or 'balanced'")


def draw_noise(shape: Sequence[int], generators: Generators, *, device: torch.device | str) -> torch.Tensor:
    """Standard normal noise of ``shape`` (B, ...) in float32 on ``device``.

    With a sequence of generators, row ``i`` comes from ``generators[i]`` alone (batch-size invariant); with one
    generator (or None: torch's global generator) the whole batch is drawn at once.
    """
    shape = tuple(int(s) for s in shape)
    if generators is None or isinstance(generators, torch.Generator):
        gen_device = generators.device if isinstance(generators, torch.Generator) else "cpu"
        return torch.randn(shape, generator=generators, device=gen_device).to(device)
    if len(generators) != shape[0]:
        raise IrepaError(f"got {len(generators)} generators for a batch of {shape[0]}; pass one per sample")
    rows = [torch.randn(shape[1:], generator=g, device=g.device) for g in generators]
    return torch.stack(rows).to(device)


# ----------------------------------------------------------------------------------------------------------------------
# Grids and guidance


def time_grid(sampler: str, num_steps: int, *, last_time: float = SDE_LAST_TIME) -> torch.Tensor:
    """The float64 time grid of ``sampler`` with ``num_steps`` steps (``num_steps + 1`` points, 1 → 0).

    Raises:
        IrepaError: If ``num_steps < 1`` or the sampler is unknown.
    """
    if num_steps < 1:
        raise IrepaError(f"num_steps must be >= 1, got {num_steps}")
    if sampler in ("euler", "heun"):
        return torch.linspace(1.0, 0.0, num_steps + 1, dtype=torch.float64)
    if sampler == "sde":
        if not 0.0 < last_time < 1.0:
            raise IrepaError(f"the SDE's last stochastic time must be in (0, 1), got {last_time}")
        head = torch.linspace(1.0, last_time, num_steps, dtype=torch.float64)
        return torch.cat([head, torch.zeros(1, dtype=torch.float64)])
    raise IrepaError(f"unknown sampler {sampler!r}; use euler, heun or sde")


def guidance_active(t: float, cfg_scale: float, guidance_interval: tuple[float, float]) -> bool:
    """Whether classifier-free guidance applies at SiT time ``t``: ``cfg_scale > 1`` and ``low <= t <= high``."""
    low, high = guidance_interval
    return cfg_scale > 1.0 and low <= t <= high


class _Guided:
    """Evaluates the (possibly guided) velocity at one time for the whole batch and counts the calls."""

    def __init__(
        self,
        velocity_fn: VelocityFn,
        labels: torch.Tensor,
        dtype: torch.dtype,
        cfg_scale: float,
        guidance_interval: tuple[float, float],
        null_label: int | None,
    ) -> None:
        low, high = (float(v) for v in guidance_interval)
        if low > high:
            raise IrepaError(f"guidance interval [{low}, {high}] is empty; pass low <= high (SiT time)")
        if cfg_scale > 1.0 and null_label is None:
            raise IrepaError(f"cfg_scale {cfg_scale} > 1 needs the null (unconditional) label; pass null_label")
        if cfg_scale < 0:
            raise IrepaError(f"cfg_scale must be >= 0, got {cfg_scale}")
        self.velocity_fn = velocity_fn
        self.labels = labels
        self.dtype = dtype
        self.cfg_scale = float(cfg_scale)
        self.interval = (low, high)
        self.null = None if null_label is None else torch.full_like(labels, int(null_label))
        self.nfe = 0
        self.guided_nfe = 0
        self.times: list[float] = []

    def __call__(self, x: torch.Tensor, t: float, *, guidance_time: float | None = None) -> torch.Tensor:
        """Velocity (float64, (B, ...)) at state ``x`` (float64) and time ``t``.

        ``guidance_time`` is the time the guidance interval is tested at (``t`` unless a compat switch says so).
        """
        guided = guidance_active(t if guidance_time is None else guidance_time, self.cfg_scale, self.interval)
        batch = x.shape[0]
        model_x = x.to(self.dtype)
        y = self.labels
        if guided:
            # One forward of the 2B batch [cond; uncond], as the official samplers do.
            model_x = torch.cat([model_x, model_x])
            y = torch.cat([self.labels, self.null])
        time = torch.full((model_x.shape[0],), t, dtype=self.dtype, device=x.device)
        v = self.velocity_fn(model_x, time, y).to(torch.float64)
        self.nfe += 1
        self.guided_nfe += int(guided)
        self.times.append(float(t))
        if guided:
            v_cond, v_uncond = v[:batch], v[batch:]
            v = v_uncond + self.cfg_scale * (v_cond - v_uncond)
        return v


def _check_inputs(noise: torch.Tensor, labels: torch.Tensor) -> None:
    if noise.ndim < 2:
        raise IrepaError(f"noise must be batched (B, ...), got shape {tuple(noise.shape)}")
    if labels.ndim != 1 or labels.shape[0] != noise.shape[0]:
        raise IrepaError(f"labels must have shape ({noise.shape[0]},), got {tuple(labels.shape)}")
    if not noise.is_floating_point():
        raise IrepaError(f"noise must be a floating-point tensor, got {noise.dtype}")


# ----------------------------------------------------------------------------------------------------------------------
# Samplers

SAMPLERS: Registry[Callable[..., SamplerResult]] = Registry("sampler")


@SAMPLERS.register("euler")
@torch.no_grad()
def euler_sample(
    velocity_fn: VelocityFn,
    path: InterpolationPath,
    noise: torch.Tensor,
    labels: torch.Tensor,
    *,
    num_steps: int,
    cfg_scale: float = 1.0,
    guidance_interval: tuple[float, float] = (0.0, 1.0),
    null_label: int | None = None,
    generator: Generators = None,
) -> SamplerResult:
    """Euler integration of the probability-flow ODE ``dx/dt = v`` on ``linspace(1, 0, N + 1)``.

    Args:
        velocity_fn: ``v = f(x_t (B, ...), t (B,), y (B,))``.
        path: The interpolation path the model was trained on (unused by the ODE update itself, which only needs
            ``v``; accepted so that all samplers share one signature).
        noise: Initial state at ``t = 1`` (B, ...); its dtype is the model's input dtype.
        labels: Class labels (B,), int64.
        num_steps: Number of Euler steps ``N`` (NFE = N).
        cfg_scale: Guidance scale ``s``; guidance is off for ``s <= 1``.
        guidance_interval: ``(low, high)`` in SiT time, inclusive.
        null_label: The unconditional class (1000 for ImageNet SiT); required when ``cfg_scale > 1``.
        generator: Unused (the ODE is deterministic); accepted so that all samplers share one signature.

    Returns:
        A :class:`SamplerResult`.
    """
    del path, generator
    _check_inputs(noise, labels)
    grid = time_grid("euler", num_steps).tolist()
    velocity = _Guided(velocity_fn, labels, noise.dtype, cfg_scale, guidance_interval, null_label)
    x = noise.to(torch.float64)
    for t_cur, t_next in itertools.pairwise(grid):
        x = x + (t_next - t_cur) * velocity(x, t_cur)
    return SamplerResult(x.to(noise.dtype), velocity.nfe, velocity.guided_nfe, velocity.times)


@SAMPLERS.register("heun")
@torch.no_grad()
def heun_sample(
    velocity_fn: VelocityFn,
    path: InterpolationPath,
    noise: torch.Tensor,
    labels: torch.Tensor,
    *,
    num_steps: int,
    cfg_scale: float = 1.0,
    guidance_interval: tuple[float, float] = (0.0, 1.0),
    null_label: int | None = None,
    generator: Generators = None,
    heun_guidance_time: Literal["next", "current"] = "next",
) -> SamplerResult:
    """Heun's second-order method (explicit trapezoid) on ``linspace(1, 0, N + 1)``; the last step is plain Euler.

    The last interval ends at ``t = 0`` where the corrector would evaluate the model on clean data, so the official
    sampler stops with an Euler step there: NFE = ``2N - 1``.

    Args:
        velocity_fn: ``v = f(x_t (B, ...), t (B,), y (B,))``.
        path: The interpolation path the model was trained on (unused, as in :func:`euler_sample`).
        noise: Initial state at ``t = 1`` (B, ...); its dtype is the model's input dtype.
        labels: Class labels (B,), int64.
        num_steps: Number of steps ``N``.
        cfg_scale: Guidance scale ``s``; guidance is off for ``s <= 1``.
        guidance_interval: ``(low, high)`` in SiT time, inclusive.
        null_label: The unconditional class (1000 for ImageNet SiT); required when ``cfg_scale > 1``.
        generator: Unused (deterministic sampler).
        heun_guidance_time: Which time the corrector's guidance-interval test uses: ``"next"`` (correct: the time
            the corrector evaluates at) or ``"current"`` (the official REPA sampler's quirk).

    Returns:
        A :class:`SamplerResult`.
    """
    del path, generator
    if heun_guidance_time not in ("next", "current"):
        raise IrepaError(f"heun_guidance_time must be 'next' or 'current', got {heun_guidance_time!r}")
    _check_inputs(noise, labels)
    grid = time_grid("heun", num_steps).tolist()
    velocity = _Guided(velocity_fn, labels, noise.dtype, cfg_scale, guidance_interval, null_label)
    x = noise.to(torch.float64)
    for i, (t_cur, t_next) in enumerate(itertools.pairwise(grid)):
        dt = t_next - t_cur
        d_cur = velocity(x, t_cur)
        x_euler = x + dt * d_cur
        if i == num_steps - 1:
            x = x_euler
            break
        test_time = t_next if heun_guidance_time == "next" else t_cur
        d_next = velocity(x_euler, t_next, guidance_time=test_time)
        x = x + dt * (0.5 * d_cur + 0.5 * d_next)
    return SamplerResult(x.to(noise.dtype), velocity.nfe, velocity.guided_nfe, velocity.times)


@SAMPLERS.register("sde")
@torch.no_grad()
def sde_sample(
    velocity_fn: VelocityFn,
    path: InterpolationPath,
    noise: torch.Tensor,
    labels: torch.Tensor,
    *,
    num_steps: int,
    cfg_scale: float = 1.0,
    guidance_interval: tuple[float, float] = (0.0, 1.0),
    null_label: int | None = None,
    generator: Generators = None,
    last_time: float = SDE_LAST_TIME,
) -> SamplerResult:
    """Euler–Maruyama integration of the reverse SDE on the official grid ``linspace(1, 0.04, N)`` then ``0``.

    For the first ``N - 1`` intervals (``dt < 0``)::

        w = 2 t,   score = path.velocity_to_score(v, x, t),   d = v - ½ w score
        x <- x + d dt + sqrt(w) sqrt(|dt|) eps,   eps ~ N(0, I) from ``generator``

    and the last interval ``0.04 → 0`` is the noiseless mean step ``x + d dt`` (no model call at ``t = 0``, where
    the score is undefined). NFE = ``N``.

    Args:
        velocity_fn: ``v = f(x_t (B, ...), t (B,), y (B,))``.
        path: The interpolation path the model was trained on (the score conversion depends on it).
        noise: Initial state at ``t = 1`` (B, ...); its dtype is the model's input dtype.
        labels: Class labels (B,), int64.
        num_steps: Number of steps ``N``.
        cfg_scale: Guidance scale ``s``; guidance is off for ``s <= 1``.
        guidance_interval: ``(low, high)`` in SiT time, inclusive.
        null_label: The unconditional class (1000 for ImageNet SiT); required when ``cfg_scale > 1``.
        generator: One generator per sample (batch-size invariant), one for the batch, or None (torch's global
            generator).
        last_time: Last time of the stochastic grid (0.04 in the official code; not ``1/N``).

    Returns:
        A :class:`SamplerResult`.
    """
    _check_inputs(noise, labels)
    grid = time_grid("sde", num_steps, last_time=last_time).tolist()
    velocity = _Guided(velocity_fn, labels, noise.dtype, cfg_scale, guidance_interval, null_label)
    x = noise.to(torch.float64)

    def drift(x: torch.Tensor, t: float) -> tuple[torch.Tensor, float]:
        v = velocity(x, t)
        t_batch = torch.full((x.shape[0],), t, dtype=torch.float64, device=x.device)
        diffusion = 2.0 * t
        return v - 0.5 * diffusion * path.velocity_to_score(v, x, t_batch), diffusion

    for t_cur, t_next in itertools.pairwise(grid[:-1]):
        dt = t_next - t_cur
        d, diffusion = drift(x, t_cur)
        eps = draw_noise(x.shape, generator, device=x.device).to(torch.float64)
        x = x + d * dt + (diffusion**0.5) * (abs(dt) ** 0.5) * eps
    t_cur, t_next = grid[-2], grid[-1]
    d, _ = drift(x, t_cur)
    x = x + d * (t_next - t_cur)
    return SamplerResult(x.to(noise.dtype), velocity.nfe, velocity.guided_nfe, velocity.times)
