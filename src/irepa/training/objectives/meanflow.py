"""The ``meanflow`` objective: MeanFlow one- and few-step generation, with REPA / iREPA through the shared term.

MeanFlow (Geng et al. 2025; prior-implementations §8) trains a SiT ``u(z, r, t)`` (built with ``time_interval=True``:
conditioned on ``t`` and ``h = t - r``) to predict the average velocity over ``[r, t]``, regressing the target
``u_tgt = v_g - (t - r)·du/dt`` of one forward-mode JVP (:mod:`irepa.diffusion.meanflow`, where the maths, the
conventions and the reasons for each choice are stated). As a recipe of the one trainer:

- ``draw``: two time draws per sample from ``diffusion.time_sampler`` (presets: ``lognormal`` with mean -0.4,
  std 1.0 — MeanFlow's logit-normal), ``t = max``, ``r = min``, ``r = t`` for ``objective.equal_share`` of the
  global batch; the noise; the label-dropout mask (``diffusion.label_dropout``); latent sampling noise.
- ``loss``: the JVP runs on the *unwrapped* model in float32 on SDPA's math backend, so DDP's gradient hooks never
  fire: the objective declares ``manual_grad_sync`` and the trainer all-reduces the gradients after the last
  micro-batch (:func:`irepa.training.distributed.sync_gradients`) and checks every
  ``objective.sync_check_every_steps`` steps that all processes hold identical gradients.
- REPA / iREPA: the :class:`~irepa.training.alignment.AlignmentTerm` aligns the tokens after block ``align.depth``
  that the JVP call returns as its auxiliary output (the primal, differentiable forward; no second forward).
- ``train.compile``: the whole JVP step is compiled with :func:`torch.compile` (the documented way to make the JVP
  affordable) instead of the model in place; if compilation fails (e.g. no C++ compiler for the CPU backend) it
  falls back to eager with a warning.
- Snapshots record ``objective: meanflow``, so ``irepa sample`` draws with the MeanFlow sampler
  (``z ← z − (t_i − t_{i+1})·u(z, t_{i+1}, t_i)``; ``--steps 1`` is one network evaluation).
"""

from __future__ import annotations

import dataclasses
import functools
import warnings
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from irepa.diffusion.losses import label_drop_mask
from irepa.diffusion.meanflow import MeanFlowGuidance, MeanFlowResult, meanflow_loss, sample_interval_times
from irepa.errors import ConfigError, IrepaError
from irepa.training.alignment import AlignmentTerm
from irepa.training.objectives.base import OBJECTIVES, BackboneObjective, ObjectiveContext, SnapshotSpec, Terms
from irepa.training.objectives.denoising import build_backbone

__all__ = ["MeanFlowObjective", "MeanFlowSettings", "compile_with_fallback"]


@dataclasses.dataclass(frozen=True)
class MeanFlowSettings:
    """The ``objective:`` settings of ``meanflow`` (times, label dropout and the path come from ``diffusion:``)."""

    equal_share: float = 0.75
    """Share of the global batch with ``r = t`` (plain flow matching); official ImageNet 0.75, i.e. 25 % of the
    samples have ``r != t`` (prior-implementations §8)."""
    omega: float = 1.0
    """Training-time guidance ω (1.0 with κ = 0: no guidance)."""
    kappa: float = 0.0
    """Training-time guidance κ in [0, 1); the model learns CFG of effective scale ω / (1 − κ)."""
    guidance_interval: tuple[float, float] = (0.0, 1.0)
    """``[t_start, t_end]`` (SiT time) where guidance applies."""
    adaptive_c: float = 0.01
    """``c`` of the adaptive weighting ``L / sg((L + c)^p)`` (official 0.01)."""
    adaptive_p: float = 1.0
    """``p`` of the adaptive weighting (official ImageNet 1.0; 0 = plain squared error)."""
    sample_steps: int = 1
    """Default number of sampling steps recorded in snapshots (``irepa sample`` without ``--steps``)."""
    sync_check_every_steps: int = 1000
    """Every this many steps, verify that all processes hold bit-identical gradients after the explicit all-reduce
    (one small collective; 0 = never). Checkpoints always verify the weights."""

    def __post_init__(self) -> None:
        try:
            self.guidance()
        except IrepaError as exc:
            raise ConfigError(f"objective: {exc}") from None
        if not 0.0 <= self.equal_share <= 1.0:
            raise ConfigError(f"objective.equal_share must be in [0, 1], got {self.equal_share}")
        if self.adaptive_c <= 0 or self.adaptive_p < 0:
            raise ConfigError(f"objective.adaptive_c must be > 0 and adaptive_p >= 0, got {self.adaptive_c}, "
                              f"{self.adaptive_p}")  # fmt: skip
        if self.sample_steps < 1 or self.sync_check_every_steps < 0:
            raise ConfigError("objective.sample_steps must be >= 1 and objective.sync_check_every_steps >= 0")

    def guidance(self) -> MeanFlowGuidance:
        """The training-time guidance these settings describe."""
        start, end = self.guidance_interval
        return MeanFlowGuidance(omega=self.omega, kappa=self.kappa, t_start=start, t_end=end)


def compile_with_fallback(
    fn: Callable[..., Any], *, compiler: Callable[[Callable[..., Any]], Callable[..., Any]] = torch.compile
) -> Callable[..., Any]:
    """``compiler(fn)``, falling back to ``fn`` for good (with a warning) if compilation fails at the first call.

    Only compilation errors (``torch._dynamo`` exceptions, which wrap the backends' errors such as a missing C++
    compiler) trigger the fallback; any other error propagates.
    """
    from torch._dynamo.exc import TorchDynamoException

    compiled = compiler(fn)
    state = {"failed": False}

    @functools.wraps(fn)
    def call(*args: Any, **kwargs: Any) -> Any:
        if state["failed"]:
            return fn(*args, **kwargs)
        try:
            return compiled(*args, **kwargs)
        except TorchDynamoException as exc:
            state["failed"] = True
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            warnings.warn(f"torch.compile of the MeanFlow JVP step failed ({first}); running it eagerly", stacklevel=2)
            return fn(*args, **kwargs)

    call.compile_failed = lambda: state["failed"]  # type: ignore[attr-defined]
    return call


@OBJECTIVES.register("meanflow")
class MeanFlowObjective(BackboneObjective):
    """MeanFlow average-velocity regression + optional representation alignment.

    Args:
        model: A SiT built with ``time_interval=True``.
        model_name: Its registry name; ``model_kwargs``: its constructor arguments (for snapshots).
        context: The build context.
        alignment: The alignment term, or ``None``.
    """

    Settings = MeanFlowSettings
    manual_grad_sync = True

    def __init__(
        self,
        model: nn.Module,
        *,
        model_name: str,
        model_kwargs: dict[str, Any],
        context: ObjectiveContext,
        alignment: AlignmentTerm | None = None,
    ) -> None:
        from irepa.diffusion.paths import get_path
        from irepa.diffusion.time_sampling import get_time_sampler

        super().__init__(model, model_name=model_name, model_kwargs=model_kwargs, context=context, alignment=alignment)
        cfg = context.config
        self.settings: MeanFlowSettings = cfg.objective.settings
        self.path_name = cfg.diffusion.path
        self.path = get_path(cfg.diffusion.path)
        sampler_kwargs = dict(cfg.diffusion.time_sampler_kwargs)
        if cfg.diffusion.time_sampler == "lognormal":
            sampler_kwargs.setdefault("path", cfg.diffusion.path)
        self.time_sampler_name = cfg.diffusion.time_sampler
        self.time_sampler = get_time_sampler(cfg.diffusion.time_sampler, **sampler_kwargs)
        self.label_dropout = cfg.diffusion.label_dropout
        self.guidance = self.settings.guidance()
        self.sync_check_every_steps = self.settings.sync_check_every_steps
        self._step: Callable[..., MeanFlowResult] = self._meanflow_step

    def compile_for_training(self) -> None:
        """Compile the whole JVP step (guided field, JVP, loss) rather than the model, falling back to eager."""
        self._step = compile_with_fallback(self._meanflow_step)

    @classmethod
    def build(cls, context: ObjectiveContext) -> MeanFlowObjective:
        """A ``model:`` backbone with the interval embedder, and the ``align:`` term."""
        cfg = context.config
        if cfg.model.overrides.get("time_interval") is False:
            raise ConfigError("objective meanflow needs the interval embedder: remove model.overrides.time_interval")
        # The backbone of the model: section with the interval embedder (h = t - r) switched on.
        model_cfg = dataclasses.replace(cfg.model, overrides={**cfg.model.overrides, "time_interval": True})
        backbone_context = dataclasses.replace(context, config=dataclasses.replace(cfg, model=model_cfg))
        model, kwargs = build_backbone(backbone_context)
        alignment = context.alignment_term(model)
        return cls(model, model_name=cfg.model.name, model_kwargs=kwargs, context=context, alignment=alignment)

    def snapshot(self) -> SnapshotSpec:
        """The EMA model; the header says it is a MeanFlow model (sampler, default steps, baked-in guidance)."""
        return SnapshotSpec(
            "model",
            self.model_name,
            self.model_kwargs,
            {
                "path": self.path_name,
                "objective": "meanflow",
                "prediction": "average_velocity",
                "sampler": "meanflow",
                "steps": self.settings.sample_steps,
                "training_guidance": {
                    "omega": self.guidance.omega,
                    "kappa": self.guidance.kappa,
                    "interval": [self.guidance.t_start, self.guidance.t_end],
                    "effective_scale": self.guidance.effective_scale,
                },
            },
        )

    def draw(self, global_batch: int, generator: torch.Generator, device: torch.device) -> dict[str, torch.Tensor]:
        """``r``, ``t`` (G,), ``noise`` (G, C, h, w), ``drop`` (G,) bool, in latent space ``eps``; in this order."""
        shape = (global_batch, *self.data.input_shape)
        r, t = sample_interval_times(
            global_batch,
            time_sampler=self.time_sampler,
            generator=generator,
            device=device,
            equal_share=self.settings.equal_share,
        )
        draws = {
            "r": r,
            "t": t,
            "noise": torch.randn(shape, generator=generator, device=device),
            "drop": label_drop_mask(global_batch, self.label_dropout, generator=generator, device=device),
        }
        if self.data.space == "latent":
            draws["eps"] = torch.randn(shape, generator=generator, device=device)
        return draws

    def _meanflow_step(
        self,
        x0: torch.Tensor,
        y: torch.Tensor,
        r: torch.Tensor,
        t: torch.Tensor,
        noise: torch.Tensor,
        drop: torch.Tensor,
        return_hidden: int | None,
    ) -> MeanFlowResult:
        return meanflow_loss(
            self.model,
            x0,
            y,
            r=r,
            t=t,
            noise=noise,
            drop=drop,
            null_label=self.model.null_label,
            guidance=self.guidance,
            return_hidden=return_hidden,
            adaptive_c=self.settings.adaptive_c,
            adaptive_p=self.settings.adaptive_p,
            path=self.path,
        )

    def loss(self, batch: dict[str, torch.Tensor], draws: dict[str, torch.Tensor], step: int) -> Terms:
        """``loss = meanflow (+ align)``, with the curves to watch.

        ``meanflow`` is the adaptively weighted loss (close to 1 by construction); ``mf_mse`` (mean squared error to
        the MeanFlow target per element) and ``v_mse`` (to the unguided velocity, the official monitor) show the
        learning. With alignment also ``align``, ``align_loss``, ``align_cos``, ...
        """
        x0 = self.data.model_input(batch, draws.get("eps"))
        targets = self.alignment_targets(batch, step)
        result = self._step(
            x0,
            batch["label"],
            draws["r"],
            draws["t"],
            draws["noise"],
            draws["drop"],
            self.alignment.depth if targets is not None else None,
        )
        numel = x0[0].numel()
        terms: Terms = {
            "meanflow": result.loss,
            "mf_mse": result.error.mean() / numel,
            "v_mse": result.v_error.mean() / numel,
        }
        return self.add_alignment(terms, result.loss, result.hidden, targets, step)

    def describe(self) -> list[str]:
        """Times, guidance, weighting."""
        g = self.guidance
        return [
            f"objective meanflow ((r, t) from two {self.time_sampler_name} draws, r = t for "
            f"{self.settings.equal_share:.0%}; guidance ω {g.omega} κ {g.kappa} on [{g.t_start}, {g.t_end}] = "
            f"effective CFG {g.effective_scale:g}; label dropout {self.label_dropout}; adaptive weight c "
            f"{self.settings.adaptive_c} p {self.settings.adaptive_p}; gradients all-reduced explicitly)"
        ]
