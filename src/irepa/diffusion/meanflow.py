"""MeanFlow: one-step and few-step generation by regressing the *average* velocity over a time interval.

**Time convention.** MeanFlow is written in SiT time already (Geng et al. 2025; prior-implementations §8): ``t = 0``
is data, ``t = 1`` is noise, ``z_t = (1 - t) x + t eps`` on the linear path, ``r <= t``, and sampling runs from
``t = 1`` to ``t = 0``. So irepa's one convention (:mod:`irepa.diffusion.paths`) applies unchanged; nothing here is
converted.

The network ``u(z, r, t)`` predicts the average velocity ``u = 1/(t - r) ∫_r^t v(z_τ, τ) dτ`` of the flow between
times ``r`` and ``t``. irepa's SiT takes it as ``model(z, t, y, h=t - r)`` (built with ``time_interval=True``: a
second timestep embedder for ``h``, as the official MeanFlow DiT). Differentiating ``(t - r) u = ∫_r^t v`` in ``t``
gives the MeanFlow identity, the regression target (stop-gradient)::

    u_tgt = v_g - clip(t - r, 0, 1) · du/dt,     du/dt = ∂_z u · v_g + ∂_t u     (r held fixed)

``du/dt`` is one forward-mode JVP (:func:`torch.func.jvp`) of ``(z, r, t) ↦ u`` with tangents ``(v_g, 0, 1)``; its
primal output is the prediction (one forward plus the JVP, no second forward), and the tokens after block ``N``
come out of the same call as an auxiliary output for REPA / iREPA. The loss per sample is the squared L2 error
summed over ``(C, H, W)``, adaptively weighted ``L / sg((L + c)^p)`` with ``c = 0.01``, ``p = 1``.

Why the JVP is done the way it is (prior-implementations §8, §13 item 17):

- on the *unwrapped* module: ``torch.func.jvp`` through a DDP wrapper bypasses DDP's gradient hooks, so gradients
  are not all-reduced; the trainer all-reduces them explicitly (:func:`irepa.training.distributed.sync_gradients`);
- in float32 (autocast off): forward-mode AD in bf16/fp16 makes the target noisy;
- under :func:`irepa.models.layers.math_attention`: the fused flash / memory-efficient SDPA kernels have no
  forward-mode AD.

Times: ``t`` and ``r`` are two logit-normal draws ``sigmoid(N(-0.4, 1))``, ``t = max``, ``r = min``, and ``r = t``
for a share of the batch (75 % officially, so 25 % of the samples have ``r != t``); at ``r = t`` the target is
``v_g`` and the loss is flow matching. Training-time guidance (:class:`MeanFlowGuidance`) bakes classifier-free
guidance of effective scale ``ω / (1 - κ)`` into the model, so samples are drawn without CFG.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from collections.abc import Callable, Sequence

import torch
from torch import nn

from irepa.diffusion.paths import InterpolationPath, LinearPath, expand_t
from irepa.diffusion.samplers import SAMPLERS, SamplerResult
from irepa.diffusion.time_sampling import TimeSampler, get_time_sampler
from irepa.errors import IrepaError
from irepa.models.layers import math_attention

__all__ = [
    "AverageVelocityFn",
    "MeanFlowGuidance",
    "MeanFlowResult",
    "adaptive_weight",
    "average_velocity_adapter",
    "average_velocity_jvp",
    "guided_velocity",
    "meanflow_loss",
    "meanflow_sample",
    "meanflow_sampler",
    "meanflow_time_grid",
    "sample_interval_times",
]

#: ``u = u_fn(z (B, ...), r (B,), t (B,), y (B,))``: the average velocity over ``[r, t]``.
AverageVelocityFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


# ----------------------------------------------------------------------------------------------------------------------
# Times


def sample_interval_times(
    batch_size: int,
    *,
    time_sampler: TimeSampler | None = None,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
    equal_share: float = 0.75,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Draw MeanFlow's ``(r, t)`` pairs in SiT time.

    Two draws of ``time_sampler`` per sample (default: MeanFlow's logit-normal ``sigmoid(N(-0.4, 1))``, which is
    :mod:`irepa.diffusion.time_sampling`'s ``lognormal`` with mean -0.4, std 1 on the linear path), ``t = max``,
    ``r = min``; then ``r = t`` for exactly ``floor(equal_share · B)`` samples (the official JAX count), chosen by
    one random permutation of the batch rather than by position, so any slice of a global batch (a process, a
    micro-batch) gets that share in expectation.

    Args:
        batch_size: ``B`` (the whole global batch, sliced by the caller).
        time_sampler: A bound time sampler (:func:`irepa.diffusion.time_sampling.get_time_sampler`).
        generator: Draws happen on its device (two time draws, then one permutation), then move to ``device``.
        device: Device of the results.
        equal_share: Fraction of the batch with ``r = t`` (official ImageNet: 0.75).

    Returns:
        ``(r, t)``, each (B,) float32 in (0, 1) with ``r <= t``.
    """
    if batch_size < 1:
        raise IrepaError(f"batch_size must be >= 1, got {batch_size}")
    if not 0.0 <= equal_share <= 1.0:
        raise IrepaError(f"equal_share (the share of samples with r = t) must be in [0, 1], got {equal_share}")
    if time_sampler is None:
        time_sampler = get_time_sampler("lognormal", path="linear", mean=-0.4, std=1.0)
    source = generator.device if generator is not None else device
    a = time_sampler(batch_size, generator=generator, device=source)
    b = time_sampler(batch_size, generator=generator, device=source)
    t, r = torch.maximum(a, b), torch.minimum(a, b)
    order = torch.randperm(batch_size, generator=generator, device=source)
    equal = torch.zeros(batch_size, dtype=torch.bool, device=source)
    equal[order[: int(batch_size * equal_share)]] = True
    r = torch.where(equal, t, r)
    return r.to(device) if device is not None else r, t.to(device) if device is not None else t


# ----------------------------------------------------------------------------------------------------------------------
# Guidance


@dataclasses.dataclass(frozen=True)
class MeanFlowGuidance:
    """Training-time classifier-free guidance of MeanFlow (the guided field the model learns to average).

    For ``t`` in ``[t_start, t_end]`` and samples that keep their label, the instantaneous velocity ``v`` is
    replaced by::

        v_g = ω v + κ u(z_t, t, t | y) + (1 - ω - κ) u(z_t, t, t | ∅)      (no gradient through u)

    outside the interval ``v_g = v``. With ``κ = 0`` only the unconditional branch is evaluated. The model then
    represents CFG of effective scale ``ω / (1 - κ)`` (:attr:`effective_scale`) and is sampled without guidance.

    Attributes:
        omega: ``ω`` (MeanFlow B/2: 1.0; L/2 and XL/2: 0.2).
        kappa: ``κ`` in [0, 1) (B/2: 0.5; L/2, XL/2: 0.92).
        t_start: Start of the interval in SiT time (inclusive).
        t_end: End of the interval (inclusive; 0.8 for L/2 in zhuyu-cs's README, 1.0 officially otherwise).
    """

    omega: float = 1.0
    kappa: float = 0.0
    t_start: float = 0.0
    t_end: float = 1.0

    def __post_init__(self) -> None:
        if self.omega <= 0:
            raise IrepaError(f"guidance omega must be > 0, got {self.omega}")
        if not 0.0 <= self.kappa < 1.0:
            raise IrepaError(f"guidance kappa must be in [0, 1), got {self.kappa}")
        if not 0.0 <= self.t_start <= self.t_end <= 1.0:
            raise IrepaError(f"guidance interval [{self.t_start}, {self.t_end}] must satisfy 0 <= start <= end <= 1")

    @property
    def effective_scale(self) -> float:
        """The CFG scale the trained model represents: ``ω / (1 - κ)`` (2.0 for ω 1, κ 0.5)."""
        return self.omega / (1.0 - self.kappa)

    @property
    def enabled(self) -> bool:
        """Whether the guided field differs from ``v`` (``ω != 1`` or ``κ > 0``)."""
        return self.omega != 1.0 or self.kappa > 0.0


@torch.no_grad()
def guided_velocity(
    model: nn.Module,
    z_t: torch.Tensor,
    t: torch.Tensor,
    velocity: torch.Tensor,
    y: torch.Tensor,
    *,
    drop: torch.Tensor,
    null_label: int,
    guidance: MeanFlowGuidance,
) -> torch.Tensor:
    """The guided field ``v_g`` (B, C, H, W) of :class:`MeanFlowGuidance`; dropped samples keep ``v``.

    Args:
        model: ``model(z, t, y, h=...) -> ModelOutput`` (unwrapped, in the dtype of ``z_t``).
        z_t: Noisy inputs (B, C, H, W).
        t: Times (B,).
        velocity: The path's conditional velocity ``v`` (B, C, H, W).
        y: The *real* labels (B,) (before dropout: the conditional branch needs them).
        drop: (B,) bool, samples whose label is dropped (they regress ``v``, unguided).
        null_label: The unconditional class.
        guidance: ω, κ and the interval.

    Returns:
        ``v_g`` (B, C, H, W), no gradient.
    """
    if not guidance.enabled:
        return velocity
    inside = (t >= guidance.t_start) & (t <= guidance.t_end) & ~drop
    if not bool(inside.any()):
        return velocity
    zero = torch.zeros_like(t)
    null = torch.full_like(y, null_label)
    u_uncond = model(z_t, t, null, h=zero).out
    omega = torch.where(inside, guidance.omega, 1.0).to(velocity.dtype)
    kappa = torch.where(inside, guidance.kappa, 0.0).to(velocity.dtype)
    guided = expand_t(omega, velocity) * velocity + expand_t(1.0 - omega - kappa, velocity) * u_uncond
    if guidance.kappa > 0:
        u_cond = model(z_t, t, y, h=zero).out
        guided = guided + expand_t(kappa, velocity) * u_cond
    return guided


# ----------------------------------------------------------------------------------------------------------------------
# Target and loss


def average_velocity_jvp(
    model: nn.Module,
    z: torch.Tensor,
    r: torch.Tensor,
    t: torch.Tensor,
    tangent: torch.Tensor,
    y: torch.Tensor,
    *,
    return_hidden: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """``u(z, r, t)``, its total derivative ``du/dt`` along ``(z' = tangent, r' = 0, t' = 1)``, and hidden tokens.

    One :func:`torch.func.jvp` of ``(z, r, t) ↦ model(z, t, y, h=t - r)``: the primal output is the prediction
    (differentiable in the model's parameters), the tangent output is ``du/dt``, and the tokens after block
    ``return_hidden`` come out of the same call (``has_aux``). Runs in the dtype of the inputs; the caller
    disables autocast and selects an attention backend with forward-mode AD (:func:`meanflow_loss` does both).

    Args:
        model: The *unwrapped* model (a DDP wrapper's gradient hooks would not fire).
        z: Inputs (B, C, H, W).
        r: Interval starts (B,).
        t: Interval ends (B,), ``r <= t``.
        tangent: ``dz/dt`` (B, C, H, W): the (guided) velocity.
        y: Labels (B,).
        return_hidden: 1-based block whose output tokens are returned, or None.

    Returns:
        ``(u (B, C, H, W), du_dt (B, C, H, W) detached, hidden (B, T, D) | None)``.
    """

    def u_fn(z_: torch.Tensor, r_: torch.Tensor, t_: torch.Tensor):
        out = model(z_, t_, y, h=t_ - r_, return_hidden=return_hidden)
        return out.out, (out.hidden,) if return_hidden is not None else ()

    tangents = (tangent, torch.zeros_like(r), torch.ones_like(t))
    u, du_dt, aux = torch.func.jvp(u_fn, (z, r, t), tangents, has_aux=True)
    return u, du_dt.detach(), aux[0] if aux else None


def adaptive_weight(loss: torch.Tensor, c: float = 0.01, p: float = 1.0) -> torch.Tensor:
    """MeanFlow's adaptive loss weighting ``L / sg((L + c)^p)`` (per sample; ``p = 0`` is the plain loss).

    The gradient is ``∇L / (L + c)^p``: with ``p = 1`` every sample contributes a gradient of roughly unit scale
    whatever its error (a robust, Cauchy-like loss).

    Args:
        loss: Per-sample losses (B,) >= 0.
        c: ``c`` > 0 (official: 0.01).
        p: ``p`` >= 0 (official ImageNet: 1.0).

    Returns:
        (B,) weighted losses.
    """
    if c <= 0 or p < 0:
        raise IrepaError(f"adaptive weighting needs c > 0 and p >= 0, got c={c}, p={p}")
    return loss / (loss.detach() + c).pow(p)


@dataclasses.dataclass
class MeanFlowResult:
    """Named terms of one MeanFlow evaluation.

    Attributes:
        loss: Batch mean of ``per_sample`` (scalar): what is differentiated.
        per_sample: Adaptively weighted losses (B,).
        error: Unweighted ``‖u - u_tgt‖²`` summed over (C, H, W), detached (B,).
        v_error: ``‖u - v‖²`` summed over (C, H, W) against the unguided velocity, detached (B,): monitoring only.
        hidden: Tokens (B, T, D) after block ``return_hidden`` of the primal call, or None.
        u: Prediction (B, C, H, W).
        target: ``u_tgt`` (B, C, H, W), detached.
        guided: ``v_g`` (B, C, H, W), detached.
        r: Interval starts (B,).
        t: Interval ends (B,).
        y: Labels the model saw (after dropout) (B,).
    """

    loss: torch.Tensor
    per_sample: torch.Tensor
    error: torch.Tensor
    v_error: torch.Tensor
    hidden: torch.Tensor | None
    u: torch.Tensor
    target: torch.Tensor
    guided: torch.Tensor
    r: torch.Tensor
    t: torch.Tensor
    y: torch.Tensor


def meanflow_loss(
    model: nn.Module,
    x0: torch.Tensor,
    y: torch.Tensor,
    *,
    r: torch.Tensor,
    t: torch.Tensor,
    noise: torch.Tensor,
    drop: torch.Tensor | None = None,
    null_label: int | None = None,
    guidance: MeanFlowGuidance | None = None,
    return_hidden: int | None = None,
    adaptive_c: float = 0.01,
    adaptive_p: float = 1.0,
    path: InterpolationPath | None = None,
) -> MeanFlowResult:
    """One evaluation of the MeanFlow objective (one guided-field pass without grad, one forward + JVP).

    Everything runs in float32 with autocast off (float64 if ``x0`` is float64) on SDPA's math backend.

    Args:
        model: The *unwrapped* model with an interval embedder (``time_interval=True``).
        x0: Clean data (B, C, H, W).
        y: Real labels (B,) int64 (dropout is applied here from ``drop``).
        r: Interval starts (B,), SiT time.
        t: Interval ends (B,), ``r <= t``.
        noise: Standard normal noise (B, C, H, W).
        drop: (B,) bool: samples whose label becomes ``null_label`` and whose target uses the unguided ``v``.
        null_label: The model's null class; needed with ``drop`` or guidance.
        guidance: Training-time guidance, or None.
        return_hidden: Block (1-based) whose tokens are returned for the aligner.
        adaptive_c: ``c`` of :func:`adaptive_weight`.
        adaptive_p: ``p`` of :func:`adaptive_weight`.
        path: Interpolation path (default linear, as MeanFlow).

    Returns:
        A :class:`MeanFlowResult`.
    """
    path = path or LinearPath()
    batch = x0.shape[0]
    if r.shape != (batch,) or t.shape != (batch,):
        raise IrepaError(f"r and t must have shape ({batch},), got {tuple(r.shape)} and {tuple(t.shape)}")
    if bool((r > t).any()):
        raise IrepaError("MeanFlow needs r <= t for every sample (SiT time: the interval runs from r up to t)")
    uses_null = (drop is not None and bool(drop.any())) or (guidance is not None and guidance.enabled)
    if uses_null and null_label is None:
        raise IrepaError("label dropout or guidance needs the model's null_label (build it with null_class=True)")
    drop = torch.zeros(batch, dtype=torch.bool, device=y.device) if drop is None else drop.to(y.device)
    dtype = torch.float64 if x0.dtype == torch.float64 else torch.float32
    with torch.autocast(device_type=x0.device.type, enabled=False), math_attention():
        x0, noise, r, t = x0.to(dtype), noise.to(dtype), r.to(dtype), t.to(dtype)
        sample = path.sample(x0, noise, t)
        v = sample.velocity
        v_g = v
        if guidance is not None:
            v_g = guided_velocity(model, sample.x_t, t, v, y, drop=drop, null_label=int(null_label), guidance=guidance)
        y_in = torch.where(drop, torch.full_like(y, int(null_label)), y) if bool(drop.any()) else y
        u, du_dt, hidden = average_velocity_jvp(model, sample.x_t, r, t, v_g, y_in, return_hidden=return_hidden)
        target = (v_g - expand_t((t - r).clamp(0.0, 1.0), v_g) * du_dt).detach()
        error = (u - target).square().flatten(1).sum(dim=1)
        per_sample = adaptive_weight(error, adaptive_c, adaptive_p)
        v_error = (u.detach() - v).square().flatten(1).sum(dim=1)
    return MeanFlowResult(
        loss=per_sample.mean(),
        per_sample=per_sample,
        error=error.detach(),
        v_error=v_error,
        hidden=hidden,
        u=u,
        target=target,
        guided=v_g.detach(),
        r=r,
        t=t,
        y=y_in,
    )


# ----------------------------------------------------------------------------------------------------------------------
# Sampling


def meanflow_time_grid(num_steps: int = 1, grid: Sequence[float] | None = None) -> list[float]:
    """The sampling times ``1 = t_0 > t_1 > ... > t_k = 0``.

    Args:
        num_steps: ``k`` for the uniform grid ``linspace(1, 0, k + 1)`` (1 step: ``[1, 0]``, the official default).
        grid: An explicit grid instead (the official ``sampling_timesteps``), e.g. ``[1.0, 0.6, 0.0]``.

    Raises:
        IrepaError: ``num_steps < 1``, or a grid that does not start at 1, end at 0 and strictly decrease.
    """
    if grid is None:
        if num_steps < 1:
            raise IrepaError(f"num_steps must be >= 1, got {num_steps}")
        return torch.linspace(1.0, 0.0, num_steps + 1, dtype=torch.float64).tolist()
    points = [float(v) for v in grid]
    if (
        len(points) < 2
        or not math.isclose(points[0], 1.0)
        or points[-1] != 0.0
        or any(b >= a for a, b in itertools.pairwise(points))
    ):
        raise IrepaError(f"MeanFlow time grid {points} must start at 1, end at 0 and strictly decrease")
    return points


@torch.no_grad()
def meanflow_sample(
    u_fn: AverageVelocityFn,
    noise: torch.Tensor,
    labels: torch.Tensor,
    *,
    num_steps: int = 1,
    grid: Sequence[float] | None = None,
) -> SamplerResult:
    """Few-step MeanFlow sampling: ``z_{i+1} = z_i - (t_i - t_{i+1}) · u(z_i, r = t_{i+1}, t = t_i)``.

    One step (the default grid ``[1, 0]``) is ``x = z_1 - u(z_1, 0, 1)``. The state is kept in float64 and cast
    to the noise's dtype for each call, as the other samplers do. Guidance was baked in at training time; there is
    no sampling-time CFG.

    Args:
        u_fn: ``u = u_fn(z (B, ...), r (B,), t (B,), y (B,))``.
        noise: The state at ``t = 1`` (B, ...).
        labels: Class labels (B,) int64.
        num_steps: Steps of the uniform grid (NFE = steps).
        grid: Explicit time grid (see :func:`meanflow_time_grid`); overrides ``num_steps``.

    Returns:
        A :class:`~irepa.diffusion.samplers.SamplerResult` (``times`` are the ``t`` of each call).
    """
    if noise.ndim < 2 or labels.shape != (noise.shape[0],):
        raise IrepaError(f"noise must be (B, ...) and labels (B,), got {tuple(noise.shape)}, {tuple(labels.shape)}")
    times = meanflow_time_grid(num_steps, grid)
    x = noise.to(torch.float64)
    batch = noise.shape[0]
    for t_cur, t_next in itertools.pairwise(times):
        t = torch.full((batch,), t_cur, dtype=noise.dtype, device=noise.device)
        r = torch.full((batch,), t_next, dtype=noise.dtype, device=noise.device)
        u = u_fn(x.to(noise.dtype), r, t, labels).to(torch.float64)
        x = x - (t_cur - t_next) * u
    return SamplerResult(x.to(noise.dtype), len(times) - 1, 0, times[:-1])


@SAMPLERS.register("meanflow")
@torch.no_grad()
def meanflow_sampler(
    u_fn: AverageVelocityFn,
    path: InterpolationPath,
    noise: torch.Tensor,
    labels: torch.Tensor,
    *,
    num_steps: int,
    cfg_scale: float = 1.0,
    guidance_interval: tuple[float, float] = (0.0, 1.0),
    null_label: int | None = None,
    generator: object = None,
) -> SamplerResult:
    """:func:`meanflow_sample` on the uniform grid, in the signature of :data:`~irepa.diffusion.samplers.SAMPLERS`.

    ``u_fn`` is an average-velocity function (:func:`average_velocity_adapter`), not a velocity function. The
    path, guidance interval, null label and generators are accepted for the shared signature and unused: the
    sampler is deterministic, and a MeanFlow model carries its guidance from training.

    Raises:
        IrepaError: ``cfg_scale != 1`` (there is no sampling-time guidance for MeanFlow models).
    """
    del path, guidance_interval, null_label, generator
    if cfg_scale != 1.0:
        raise IrepaError(
            f"cfg_scale {cfg_scale}: a MeanFlow model has its guidance built in at training time (omega, kappa; see "
            "the snapshot's training_guidance); sample it with cfg_scale 1"
        )
    return meanflow_sample(u_fn, noise, labels, num_steps=num_steps)


def average_velocity_adapter(model: nn.Module, path: InterpolationPath, diffusion: object) -> AverageVelocityFn:
    """``u(z, r, t, y) = model(z, t, y, h=t - r).out`` of a MeanFlow network (the ``average_velocity`` prediction).

    The signature of :data:`irepa.diffusion.generate.PREDICTIONS` adapters; ``path`` and ``diffusion`` are unused.
    """
    del path, diffusion

    def u_fn(z: torch.Tensor, r: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return model(z, t, y, h=t - r).out

    return u_fn
