"""Generation: the one sampling loop from a trained model to uint8 images.

Used by ``irepa sample`` (``irepa.cli.sample``: argument parsing, sharding and resume of the output), the demo's
FD evaluation (``irepa.demo.evaluation``) and training-time previews. One batch of :func:`generate`:

1. **Noise.** Sample ``i`` (its global index in the run) gets its own ``torch.Generator`` seeded with
   ``generator_seed(seed, i)`` (:func:`~irepa.diffusion.samplers.sample_generators`); it draws the initial noise
   first (:func:`~irepa.diffusion.samplers.draw_noise`), then the SDE's per-step noise. The result does not depend
   on the batch size or the number of processes.
2. **Velocity.** The model's output is converted to the sampler's velocity by :func:`to_velocity`, according to the
   snapshot's ``prediction`` (``v``, ``x`` or ``eps``; absent = ``v`` for snapshots written before the setting
   existed); see :func:`velocity_function`.
3. **Sampler.** ``SAMPLERS[name]`` (``euler``, ``heun``, ``sde``) integrates from t = 1 to t = 0 with classifier-free
   guidance inside the guidance interval (SiT time). A recipe with another model signature or integrator (MeanFlow's
   1-/k-step sampler) registers its own sampler in ``SAMPLERS`` and, if its model is not a plain ``(x, t, y)``
   network, its own adapter in :data:`PREDICTIONS`; the loop passes the adapter's function to the sampler.
4. **Decoding.** Latent-space samples go through a ``decode`` function (``irepa.data.vae.snapshot_decoder``: the VAE
   decoder on the denormalized latents); pixel-space samples are the images. Either way the result is a float image
   in [-1, 1]. Samples with non-finite values are decoded as zeros and reported.
5. **Quantization** to uint8 with :func:`quantize`: ``truncate`` (default) ``clamp(255·(x + 1)/2, 0, 255)`` cast to
   uint8, as ADM and the official ``generate.py`` scripts do; ``round`` rounds to the nearest level instead (irepa
   before this setting existed; +0.5 grey level on average, a small FID drift, see docs/evaluation.md).

**Prediction types** (SiT time: t = 0 data, t = 1 noise; ``x_t = alpha_t x0 + sigma_t eps``,
``v = alpha'_t x0 + sigma'_t eps``):

* ``v``: the output is the velocity.
* ``x``: the output is ``x0_hat``; with ``eps_hat = (x_t − alpha_t x0_hat) / sigma_t``,
  ``v = alpha'_t x0_hat + sigma'_t eps_hat = (sigma'_t x_t + (alpha'_t sigma_t − sigma'_t alpha_t) x0_hat) / sigma_t``.
  On the linear path ``v = (x_t − x0_hat) / t``: JiT's velocity ``(x0_hat − z) / (1 − t_JiT)`` in its reversed time
  ``t_JiT = 1 − t`` (hence the opposite sign).
* ``eps``: the output is ``eps_hat``; with ``x0_hat = (x_t − sigma_t eps_hat) / alpha_t``,
  ``v = (alpha'_t x_t + (sigma'_t alpha_t − alpha'_t sigma_t) eps_hat) / alpha_t``.

The divisor ``sigma_t`` (x) or ``alpha_t`` (eps) vanishes at t = 0 or t = 1 and is clamped from below by ``t_eps``
(0.05 by default, JiT's ``t_eps``; the snapshot's ``diffusion.t_eps`` when recorded), exactly as JiT clamps
``max(1 − t_JiT, t_eps)``; inside ``[t_eps, 1 − t_eps]`` on the linear path nothing is clamped. The conversion is
affine in the model output with coefficients that do not depend on the label, so classifier-free guidance on the
velocity equals guidance on the x- or eps-prediction (JiT's CFG in x-space).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from irepa.diffusion.meanflow import average_velocity_adapter
from irepa.diffusion.paths import DEFAULT_T_EPS, PREDICTION_TYPES, InterpolationPath, get_path, to_velocity
from irepa.diffusion.samplers import SAMPLERS, VelocityFn, draw_noise, sample_generators
from irepa.errors import IrepaError
from irepa.registry import Registry

__all__ = [
    "COMPILE_MODES",
    "DEFAULT_T_EPS",
    "PREDICTIONS",
    "PREDICTION_TYPES",
    "QUANTIZE_MODES",
    "Generated",
    "SamplingSettings",
    "SnapshotSampler",
    "check_sampler",
    "generate",
    "quantize",
    "to_velocity",
    "velocity_function",
]

#: uint8 quantization modes: ``truncate`` (ADM / official generate.py, default) and ``round``.
QUANTIZE_MODES = ("truncate", "round")
Quantize = Literal["truncate", "round"]
#: ``SamplingSettings.compile``: eager, or a ``torch.compile`` mode.
COMPILE_MODES = ("none", "default", "reduce-overhead", "max-autotune")


# ----------------------------------------------------------------------------------------------------------------------
# Prediction → velocity (the conversion itself: irepa.diffusion.paths.to_velocity)

#: Model-output adapters by prediction type: ``adapter(model, path, diffusion_meta) -> velocity_fn(x, t, y)``.
#: Built in: ``v``, ``x``, ``eps``. A recipe whose model is not a plain ``model(x, t, y).out`` network (MeanFlow's
#: ``u(z, r, t)``) registers its own, and a sampler in ``SAMPLERS`` that calls it.
PREDICTIONS: Registry[Callable[[nn.Module, InterpolationPath, Mapping[str, Any]], VelocityFn]] = Registry(
    "prediction type"
)


def _affine_adapter(prediction: str) -> Callable[[nn.Module, InterpolationPath, Mapping[str, Any]], VelocityFn]:
    def adapter(model: nn.Module, path: InterpolationPath, diffusion: Mapping[str, Any]) -> VelocityFn:
        t_eps = float(diffusion.get("t_eps", DEFAULT_T_EPS))

        def velocity(x: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            out = model(x, t, y).out
            return to_velocity(out, x, t, prediction=prediction, path=path, t_eps=t_eps)

        return velocity

    adapter.__doc__ = f"Velocity from a {prediction}-prediction model."
    return adapter


for _name in PREDICTION_TYPES:
    PREDICTIONS.register(_name, _affine_adapter(_name))
# MeanFlow: u(z, r, t, y) for the "meanflow" sampler (registered in SAMPLERS by irepa.diffusion.meanflow).
PREDICTIONS.register("average_velocity", average_velocity_adapter)

#: Prediction types that need one particular sampler (and that sampler only accepts them).
PREDICTION_SAMPLERS = {"average_velocity": "meanflow"}


def check_sampler(prediction: str, sampler: str) -> None:
    """Refuse a sampler that cannot drive a model of this prediction type (``euler`` on MeanFlow, or vice versa).

    Raises:
        IrepaError: Naming the sampler to use.
    """
    needed = PREDICTION_SAMPLERS.get(prediction)
    if needed is not None and sampler != needed:
        raise IrepaError(f"this snapshot predicts {prediction!r}: sample it with --sampler {needed}, not {sampler!r}")
    if needed is None and sampler in PREDICTION_SAMPLERS.values():
        raise IrepaError(f"sampler {sampler!r} needs a MeanFlow snapshot; this one predicts {prediction!r}")


def velocity_function(
    model: nn.Module, diffusion: Mapping[str, Any], *, dtype: torch.dtype = torch.float32
) -> VelocityFn:
    """The sampler's velocity function of ``model`` under the snapshot's ``diffusion`` metadata.

    Args:
        model: The (EMA) model, in eval mode.
        diffusion: The snapshot's ``diffusion`` entry: ``path``, ``prediction`` (absent = ``v``), ``t_eps``.
        dtype: Forward precision: ``float32``, or ``bfloat16``/``float16`` under autocast (times and the sampler
            state stay full precision: a bf16 t would round 0.996 to 0.99609375).

    Returns:
        ``v = f(x_t, t, y)`` (float32, no grad).
    """
    path = get_path(diffusion["path"])
    adapter = PREDICTIONS.get(str(diffusion.get("prediction", "v")))
    fn = adapter(model, path, diffusion)
    device_type = next((p.device.type for p in model.parameters()), "cpu")
    reduced = dtype != torch.float32

    @torch.no_grad()
    def velocity(*args: torch.Tensor) -> torch.Tensor:  # (x, t, y); MeanFlow's average velocity: (z, r, t, y)
        with torch.autocast(device_type, dtype=dtype, enabled=reduced):
            return fn(*args).float()

    return velocity


# ----------------------------------------------------------------------------------------------------------------------
# Quantization


def quantize(images: torch.Tensor, mode: Quantize = "truncate") -> torch.Tensor:
    """Map images in [-1, 1] to uint8 [0, 255] (float32 maths).

    Args:
        images: (B, 3, H, W) float.
        mode: ``truncate``: ``clamp(255·(x + 1)/2, 0, 255)`` cast to uint8 (rounds down; ADM and the official
            ``generate.py`` scripts); ``round``: nearest level.

    Returns:
        uint8 (B, 3, H, W), same device.
    """
    x = ((images.float() + 1) * 127.5).clamp(0, 255)
    if mode == "round":
        x = x.round()
    elif mode != "truncate":
        raise IrepaError(f"quantize {mode!r} is not one of {', '.join(QUANTIZE_MODES)}")
    return x.to(torch.uint8)


# ----------------------------------------------------------------------------------------------------------------------
# The loop


@dataclasses.dataclass(frozen=True)
class SamplingSettings:
    """How samples are drawn (everything but the model, the labels and the sample indices).

    Attributes:
        sampler: ``SAMPLERS`` name: ``euler``, ``heun`` (NFE 2N − 1) or ``sde`` (the papers' default).
        steps: Sampler steps N.
        cfg_scale: Classifier-free guidance scale (1 = none).
        guidance_interval: ``(low, high)`` in SiT time; guided iff ``low <= t <= high``.
        heun_guidance_time: ``heun`` only: ``next`` (irepa) or ``current`` (the official REPA sampler's quirk).
        seed: Global seed of the per-sample generators.
        dtype: Forward precision (``float32``, ``bfloat16``, ``float16``; reduced precision changes FID).
        quantize: ``truncate`` (default, ADM parity) or ``round``.
        compile: ``none`` (eager, default) or a :func:`torch.compile` mode of the model: ``default``,
            ``reduce-overhead`` (CUDA graphs on the GPU: the launch overhead of small batches goes away) or
            ``max-autotune``. Compiled kernels may fuse operations differently, so samples can differ from eager ones
            at float round-off (a recipe's samples should not mix the two).
    """

    sampler: str = "sde"
    steps: int = 250
    cfg_scale: float = 1.0
    guidance_interval: tuple[float, float] = (0.0, 1.0)
    heun_guidance_time: Literal["next", "current"] = "next"
    seed: int = 0
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    quantize: Quantize = "truncate"
    compile: Literal["none", "default", "reduce-overhead", "max-autotune"] = "none"

    def __post_init__(self) -> None:
        SAMPLERS.canonical(self.sampler)
        if self.steps < 1:
            raise IrepaError(f"sampling steps must be >= 1, got {self.steps}")
        if not (math.isfinite(self.cfg_scale) and self.cfg_scale >= 0):  # NaN passes every comparison test
            raise IrepaError(f"cfg_scale must be a finite number >= 0 (1: no guidance), got {self.cfg_scale}")
        low, high = self.guidance_interval
        if not 0.0 <= low <= high <= 1.0:
            raise IrepaError(f"guidance interval [{low}, {high}] must satisfy 0 <= low <= high <= 1 (SiT time)")
        if self.seed < 0:
            raise IrepaError(f"sampling seed must be >= 0, got {self.seed}")
        if self.quantize not in QUANTIZE_MODES:
            raise IrepaError(f"quantize {self.quantize!r} is not one of {', '.join(QUANTIZE_MODES)}")
        if self.heun_guidance_time not in ("next", "current"):
            raise IrepaError(f"heun_guidance_time must be 'next' or 'current', got {self.heun_guidance_time!r}")
        if self.dtype not in ("float32", "bfloat16", "float16"):
            raise IrepaError(f"dtype must be float32, bfloat16 or float16, got {self.dtype!r}")
        if self.compile not in COMPILE_MODES:
            raise IrepaError(f"compile mode {self.compile!r} is not one of {', '.join(COMPILE_MODES)}")

    @property
    def torch_dtype(self) -> torch.dtype:
        """:attr:`dtype` as a ``torch.dtype``."""
        return getattr(torch, self.dtype)

    @property
    def nfe_per_sample(self) -> int:
        """Velocity evaluations per sample (a guided evaluation runs a doubled batch but counts once)."""
        return 2 * self.steps - 1 if self.sampler == "heun" else self.steps


@dataclasses.dataclass
class Generated:
    """One batch of generated samples.

    Attributes:
        images: uint8 (B, 3, H, W) on the CPU.
        finite: (B,) bool: False where the sampler produced non-finite values (those images are decoded zeros).
    """

    images: torch.Tensor
    finite: torch.Tensor


@torch.no_grad()
def generate(
    velocity_fn: VelocityFn,
    path: InterpolationPath,
    indices: Sequence[int],
    labels: torch.Tensor,
    settings: SamplingSettings,
    *,
    shape: Sequence[int],
    null_label: int | None,
    decode: Callable[[torch.Tensor], torch.Tensor] | None = None,
    device: torch.device | str = "cpu",
    noise_scale: float = 1.0,
) -> Generated:
    """Generate the samples with global indices ``indices`` (see the module docstring for the steps).

    Args:
        velocity_fn: ``v = f(x_t, t, y)`` (:func:`velocity_function`).
        path: The model's interpolation path.
        indices: Global sample indices (B,) of this batch: they seed the per-sample generators.
        labels: Class labels (B,) int64 of these samples.
        settings: Sampler, steps, guidance, seed, quantization.
        shape: ``(C, h, w)`` of one model input (latent or pixel).
        null_label: The model's null class (needed when ``cfg_scale > 1``).
        decode: ``samples (B, C, h, w) -> images (B, 3, H, W)`` in [-1, 1] (latent space); ``None`` = pixel space.
        device: Where the model runs.
        noise_scale: Standard deviation of the noise at t = 1 (the snapshot's ``diffusion.noise_scale``; JiT trains
            with ``x_t = (1 − t) x0 + t s ε``, s = 2 at 512 px): the sampler starts from ``s · ε``.

    Returns:
        :class:`Generated` (uint8 images on the CPU and the finite mask).
    """
    sampler = SAMPLERS.get(settings.sampler)
    options = {"heun_guidance_time": settings.heun_guidance_time} if settings.sampler == "heun" else {}
    gens = sample_generators(list(indices), settings.seed)
    noise = draw_noise((len(gens), *shape), gens, device=device)  # each sample's generator: noise first
    if noise_scale != 1.0:
        noise = noise * noise_scale
    result = sampler(
        velocity_fn,
        path,
        noise,
        labels.to(device),
        num_steps=settings.steps,
        cfg_scale=settings.cfg_scale,
        guidance_interval=settings.guidance_interval,
        null_label=null_label,
        generator=gens,
        **options,
    )
    x = result.samples
    finite = torch.isfinite(x.flatten(1)).all(dim=1)
    x = torch.where(finite.view(-1, *[1] * (x.ndim - 1)), x, torch.zeros_like(x))
    images = decode(x) if decode is not None else x
    return Generated(quantize(images, settings.quantize).cpu(), finite.cpu())


@dataclasses.dataclass
class SnapshotSampler:
    """A model ready to sample: the network, its diffusion metadata and the decoder of its data space.

    Build it from a snapshot file (:meth:`load`) or from a module in memory (training previews: the EMA module and
    the objective's ``SnapshotSpec``).

    Attributes:
        model: The network (eval mode).
        diffusion: ``path``, ``prediction`` (absent = ``v``), ``t_eps``, ``noise_scale`` (absent = 1), ... (the
            snapshot's ``diffusion`` entry).
        space: The snapshot's ``space`` entry (``kind`` pixel or latent, VAE id, normalization).
        decode: Latent decoder to [-1, 1] images, or ``None`` in pixel space.
        device: Where the model runs.
    """

    model: nn.Module
    diffusion: dict[str, Any]
    space: dict[str, Any]
    decode: Callable[[torch.Tensor], torch.Tensor] | None
    device: torch.device | str
    _compiled: dict[str, nn.Module] = dataclasses.field(default_factory=dict, repr=False)

    def network(self, compile: str = "none") -> nn.Module:
        """The model, or its :func:`torch.compile` in mode ``compile`` (compiled once per mode and kept).

        Recompilation for new batch shapes (the guided doubled batch, a last smaller batch) is torch's own.
        """
        if compile == "none":
            return self.model
        if compile not in self._compiled:
            self._compiled[compile] = torch.compile(self.model, mode=compile)
        return self._compiled[compile]

    @classmethod
    def load(
        cls,
        snapshot: str | Path,
        *,
        device: torch.device | str = "cpu",
        decoder: Callable[[Mapping[str, Any]], Callable[[torch.Tensor], torch.Tensor] | None] | None = None,
    ) -> tuple[SnapshotSampler, dict[str, Any]]:
        """Load an inference snapshot (float32 weights).

        Args:
            snapshot: ``.safetensors`` written by the trainer or ``irepa convert``.
            device: Where the model runs.
            decoder: ``decoder(space) -> decode | None`` for latent snapshots (``irepa.data.vae.snapshot_decoder``
                with the VAE options bound); required when the snapshot is in latent space.

        Returns:
            ``(sampler, metadata)``: the metadata as :func:`irepa.models.io.load_inference` returns it.

        Raises:
            IrepaError: A latent snapshot without ``decoder``, or an unknown prediction type.
        """
        from irepa.models.io import load_inference

        model, meta = load_inference(snapshot, device=device, dtype=torch.float32)
        space = dict(meta["space"])
        decode = None
        if space.get("kind") != "pixel":
            if decoder is None:
                raise IrepaError(f"{str(snapshot)!r} samples in VAE latent space: pass a latent decoder (the VAE)")
            decode = decoder(space)
        sampler = cls(model.eval(), dict(meta["diffusion"]), space, decode, device)
        PREDICTIONS.canonical(sampler.prediction)
        return sampler, meta

    @property
    def prediction(self) -> str:
        """``v``, ``x``, ``eps`` (or a registered adapter's name); ``v`` when the snapshot does not say."""
        return str(self.diffusion.get("prediction", "v"))

    @property
    def default_sampler(self) -> str | None:
        """The sampler the snapshot asks for (MeanFlow: ``meanflow``), or ``None`` (any; ``irepa sample``: sde)."""
        sampler = self.diffusion.get("sampler", PREDICTION_SAMPLERS.get(self.prediction))
        return None if sampler is None else str(sampler)

    @property
    def default_steps(self) -> int | None:
        """The number of sampling steps the snapshot records (MeanFlow: ``objective.sample_steps``), or ``None``."""
        steps = self.diffusion.get("steps")
        return None if steps is None else int(steps)

    def check_sampler(self, sampler: str) -> None:
        """Refuse a sampler that cannot drive this model (:func:`check_sampler`)."""
        check_sampler(self.prediction, sampler)

    @property
    def shape(self) -> tuple[int, ...]:
        """``(C, h, w)`` of one model input."""
        return (int(self.model.in_channels), *(int(s) for s in self.model.input_size))

    @property
    def num_classes(self) -> int:
        """Number of real classes (0 = unconditional)."""
        return int(getattr(self.model, "num_classes", 0))

    @property
    def null_label(self) -> int | None:
        """The null (CFG) class, or ``None`` if the model has none."""
        return getattr(self.model, "null_label", None) if getattr(self.model, "has_null_class", True) else None

    def generate(self, indices: Sequence[int], labels: torch.Tensor, settings: SamplingSettings) -> Generated:
        """Samples ``indices`` with ``labels`` (see :func:`generate`)."""
        if settings.cfg_scale > 1 and self.null_label is None:
            raise IrepaError("cfg_scale > 1 needs a model with a null class (trained with label dropout)")
        self.check_sampler(settings.sampler)
        velocity = velocity_function(self.network(settings.compile), self.diffusion, dtype=settings.torch_dtype)
        return generate(
            velocity,
            get_path(self.diffusion["path"]),
            indices,
            labels,
            settings,
            shape=self.shape,
            null_label=self.null_label,
            decode=self.decode,
            device=self.device,
            noise_scale=float(self.diffusion.get("noise_scale", 1.0)),
        )
