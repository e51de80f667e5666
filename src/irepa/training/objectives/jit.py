"""The ``jit`` objective: JiT's pixel-space x-prediction with the loss in velocity space, plus REPA / iREPA.

The recipe of JiT (Li & He 2025) and of iREPA's ``jit/`` tree (prior-implementations §9), written in irepa's one
time convention, SiT time (``t = 0`` data, ``t = 1`` noise)::

    t     = sigmoid(n),  n ~ N(time_mean, time_std)       logit-normal, mostly noisy (0.8, 0.8)
    x_t   = (1 − t) · x0 + t · s · ε                       s = noise_scale (1 at 256 px, 2 at 512 px)
    x̂0    = model(x_t, t, y)                               the network predicts the clean image
    v     = (x_t − x0) / max(t, t_eps),  v̂ = (x_t − x̂0) / max(t, t_eps)
    loss  = mean ‖v − v̂‖²  (+ λ · align)                  t_eps = 0.05

**JiT's time, converted once, here.** JiT writes its recipe in the reversed time ``t_JiT = 1 − t``:
``z = t_JiT x + (1 − t_JiT) e``, ``t_JiT = sigmoid(N(P_mean, P_std))`` with ``P_mean = −0.8``, ``P_std = 0.8``, and
``v = (x − z) / max(1 − t_JiT, t_eps)``. Substituting ``t = 1 − t_JiT`` gives the formulas above with
``time_mean = −P_mean = 0.8`` and ``time_std = P_std = 0.8`` (the same distribution of noise levels); JiT's velocity
is the negative of irepa's, which the squared error does not see. The model converts its time embedding inside
:class:`irepa.models.jit.JiT`; nothing else in irepa knows about ``t_JiT``.

**Alignment.** REPA / iREPA come from the shared :class:`~irepa.training.alignment.AlignmentTerm`: the tokens after
block ``align.depth`` *without* JiT's in-context class tokens (``return_hidden`` returns grid tokens only) are
projected and aligned with the teacher's tokens of the same (flipped) uint8 images. The /32 models at 512 px have a
16×16 grid; their presets run the teacher at 256 px (``teacher.resolution: 256``) so that the encoder's grid is
16×16 too (the official code feeds 512 px to the encoder, gets 32×32 tokens and stops at a shape assertion).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Literal

import torch
from torch import nn

from irepa.diffusion.losses import drop_labels, jit_noise_scale, label_drop_mask, x_prediction_loss
from irepa.errors import ConfigError
from irepa.training.alignment import AlignmentTerm
from irepa.training.objectives.base import OBJECTIVES, BackboneObjective, ObjectiveContext, SnapshotSpec, Terms
from irepa.training.objectives.denoising import build_backbone

__all__ = ["JiTObjective", "JiTSettings"]


@dataclasses.dataclass(frozen=True)
class JiTSettings:
    """The ``objective:`` section of ``name: jit`` (defaults: the official JiT / iREPA-JiT recipe, in SiT time)."""

    time_mean: float = 0.8
    """Mean of the logit-normal training times ``t = sigmoid(N(time_mean, time_std))`` (SiT time). JiT's
    ``P_mean = −0.8`` over its reversed time is ``time_mean = 0.8`` here."""
    time_std: float = 0.8
    """Standard deviation of that normal (JiT's ``P_std``)."""
    t_eps: float = 0.05
    """Lower bound on ``t`` in the velocity denominators (JiT's ``t_eps`` on ``1 − t_JiT``)."""
    noise_scale: float | None = None
    """Standard deviation of the noise ``s``; ``null`` = by resolution, ``max(1, image side / 256)``: 1.0 at 256 px
    and 2.0 at 512 px as in the official README."""
    label_dropout: float = 0.1
    """Probability of the null label (classifier-free guidance), JiT's ``label_drop_prob``."""
    sampler: Literal["heun", "euler"] = "heun"
    """Default ODE sampler of the snapshots (``irepa sample`` overrides it): JiT samples with Heun."""
    num_steps: int = 50
    """Default sampling steps (Heun: 2 evaluations per step but the last, 99 NFE at 50 steps)."""
    cfg_scale: float = 1.0
    """Default guidance scale (1.0 = none, as in the paper's Table 10; the JiT README uses 2.9 for JiT-B)."""
    guidance_interval: tuple[float, float] = (0.0, 0.9)
    """Default guidance interval in SiT time: JiT's ``[interval_min 0.1, interval_max 1.0]`` over ``t_JiT``."""

    def __post_init__(self) -> None:
        if self.time_std <= 0:
            raise ConfigError(f"objective.time_std must be > 0, got {self.time_std}")
        if not 0.0 < self.t_eps < 1.0:
            raise ConfigError(f"objective.t_eps must be in (0, 1), got {self.t_eps}")
        if self.noise_scale is not None and self.noise_scale <= 0:
            raise ConfigError(f"objective.noise_scale must be > 0 or null, got {self.noise_scale}")
        if not 0.0 <= self.label_dropout < 1.0:
            raise ConfigError(f"objective.label_dropout must be in [0, 1), got {self.label_dropout}")
        if self.num_steps < 1 or self.cfg_scale < 0:
            raise ConfigError("objective.num_steps must be >= 1 and objective.cfg_scale >= 0")
        low, high = self.guidance_interval
        if not 0.0 <= low <= high <= 1.0:
            raise ConfigError(f"objective.guidance_interval must satisfy 0 <= low <= high <= 1, got {[low, high]}")


@OBJECTIVES.register("jit")
class JiTObjective(BackboneObjective):
    """x-prediction with the loss in velocity space (JiT) + optional representation alignment.

    Args:
        model: A JiT (``irepa.models.jit.JiT``): ``model(x_t, t, y, return_hidden=...) -> ModelOutput`` with
            ``out`` the clean-image prediction.
        model_name: Its registry name; ``model_kwargs``: its constructor arguments (for snapshots).
        context: The build context (pixel data for ``x0``).
        settings: The ``objective:`` settings.
        alignment: The alignment term, or ``None`` to train without alignment.
    """

    Settings = JiTSettings

    def __init__(
        self,
        model: nn.Module,
        *,
        model_name: str,
        model_kwargs: dict[str, Any],
        context: ObjectiveContext,
        settings: JiTSettings,
        alignment: AlignmentTerm | None = None,
    ) -> None:
        super().__init__(model, model_name=model_name, model_kwargs=model_kwargs, context=context, alignment=alignment)
        self.settings = settings
        side = context.data.input_shape[1]
        self.noise_scale = settings.noise_scale if settings.noise_scale is not None else jit_noise_scale(side)

    @classmethod
    def build(cls, context: ObjectiveContext) -> JiTObjective:
        """A JiT ``model:`` backbone on pixels and the ``align:`` term.

        Raises:
            ConfigError: A model that is not a JiT, or latent-space data.
        """
        cfg = context.config
        if not cfg.model.name.startswith("JiT-"):
            raise ConfigError(f"objective jit trains a JiT model (JiT-B/16, ...), got model.name={cfg.model.name!r}")
        if cfg.data.space != "pixel":
            raise ConfigError("objective jit denoises pixels: set data.space=pixel (and data.images)")
        # JiT always has its RMSNorm QK-norm (model.qk_norm is SiT's switch; model.overrides.qk_norm=false disables).
        model_cfg = dataclasses.replace(cfg.model, qk_norm=True)
        model, kwargs = build_backbone(dataclasses.replace(context, config=dataclasses.replace(cfg, model=model_cfg)))
        alignment = context.alignment_term(model)
        settings = cfg.objective.settings
        return cls(model, model_name=cfg.model.name, model_kwargs=kwargs, context=context, settings=settings,
                   alignment=alignment)  # fmt: skip

    def snapshot(self) -> SnapshotSpec:
        """The EMA JiT: x-prediction on the linear path with noise scale ``s``, Heun by default."""
        s = self.settings
        diffusion = {
            "path": "linear",
            "prediction": "x",
            "noise_scale": self.noise_scale,
            "t_eps": s.t_eps,
            "sampler": {
                "method": s.sampler,
                "num_steps": s.num_steps,
                "cfg_scale": s.cfg_scale,
                "guidance_interval": list(s.guidance_interval),
            },
        }
        return SnapshotSpec("model", self.model_name, self.model_kwargs, diffusion)

    def draw(self, global_batch: int, generator: torch.Generator, device: torch.device) -> dict[str, torch.Tensor]:
        """``t`` (G,) logit-normal SiT times, ``noise`` (G, C, H, W) standard normal, ``drop`` (G,) bool."""
        s = self.settings
        normal = torch.randn(global_batch, generator=generator, device=device)
        return {
            "t": torch.sigmoid(normal * s.time_std + s.time_mean),
            "noise": torch.randn((global_batch, *self.data.input_shape), generator=generator, device=device),
            "drop": label_drop_mask(global_batch, s.label_dropout, generator=generator, device=device),
        }

    def _terms(
        self,
        x0: torch.Tensor,
        y: torch.Tensor,
        t: torch.Tensor,
        noise: torch.Tensor,
        targets: dict[str, torch.Tensor] | None,
    ) -> Terms:
        """The velocity-space error of the x-prediction and the unweighted alignment terms (see the base class)."""
        term = self.alignment
        with self.autocast():
            result = x_prediction_loss(
                self.model,
                x0,
                y,
                t=t,
                noise=noise,
                noise_scale=self.noise_scale,
                t_eps=self.settings.t_eps,
                return_hidden=term.depth if targets is not None else None,
            )
            terms: Terms = {"denoise": result.denoise}
            if targets is not None:
                terms.update(term(result.hidden, targets, grid=self.model.grid, step=0, aligner=self.aligner))
        return terms

    def loss(self, batch: dict[str, torch.Tensor], draws: dict[str, torch.Tensor], step: int) -> Terms:
        """``loss = denoise (+ align)``: the velocity-space error of the x-prediction, plus alignment if configured.

        The denoising term is :func:`irepa.diffusion.losses.x_prediction_loss` (module docstring); eager or compiled
        (``train.compile``: model + loss + aligner as one graph), through :meth:`weighted_terms`.
        """
        x0 = self.data.model_input(batch, None)  # (B, 3, H, W) in [-1, 1]
        y = drop_labels(batch["label"], draws["drop"], self.model.null_label)
        targets = self.alignment_targets(batch, step)
        return self.weighted_terms(x0, y, draws["t"], draws["noise"], targets, step)

    def describe(self) -> list[str]:
        """The recipe in one line."""
        s = self.settings
        return [
            f"objective jit (x-prediction, velocity loss, t = sigmoid(N({s.time_mean}, {s.time_std})), t_eps {s.t_eps},"
            f" noise scale {self.noise_scale:g}, label dropout {s.label_dropout})"
        ]
