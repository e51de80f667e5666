"""The ``denoising`` objective: SiT velocity regression plus, when configured, REPA/iREPA alignment.

The recipe of SiT, REPA and iREPA (the default ``objective: {name: denoising}``)::

    x_t = alpha_t x0 + sigma_t eps,   loss = E ||v_theta(x_t, t, y) - (alpha'_t x0 + sigma'_t eps)||^2  (+ align)

with SiT time (t = 0 data, t = 1 noise), times from ``diffusion.time_sampler``, CFG label dropout at
``diffusion.label_dropout``, and the alignment term of :class:`~irepa.training.alignment.AlignmentTerm` on the tokens
after block ``align.depth``. Its settings live in the shared ``diffusion:`` section, so it has none of its own.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Literal

import torch
from torch import nn

from irepa.diffusion.losses import denoising_loss, drop_labels, label_drop_mask
from irepa.errors import ConfigError, IrepaError
from irepa.training.alignment import AlignmentTerm
from irepa.training.objectives.base import OBJECTIVES, BackboneObjective, ObjectiveContext, SnapshotSpec, Terms

__all__ = ["DenoisingObjective", "DenoisingSettings", "build_backbone"]


@dataclasses.dataclass(frozen=True)
class DenoisingSettings:
    """Settings of the ``denoising`` objective (``objective: {name: denoising, prediction: v}``)."""

    prediction: Literal["v", "x", "eps"] = "v"
    """What the network predicts: ``v`` (SiT/REPA/iREPA), ``x`` (the clean data, as JiT) or ``eps``. The loss is the
    velocity MSE either way (x/eps outputs are converted to the velocity first); recorded in snapshots."""
    t_eps: float = 0.05
    """Lower bound of the divisor in the x/eps → velocity conversion near t = 0 / t = 1 (JiT's ``t_eps``)."""

    def __post_init__(self) -> None:
        if not 0.0 < self.t_eps < 0.5:
            raise ConfigError(f"objective.t_eps must be in (0, 0.5), got {self.t_eps}")


def build_backbone(context: ObjectiveContext) -> tuple[nn.Module, dict[str, Any]]:
    """The ``model:`` section's network, shaped by the data: input size and channels, class count, null class.

    Returns:
        ``(model, model_kwargs)`` on the CPU, where ``build_model(config.model.name, **model_kwargs)`` rebuilds it.

    Raises:
        ConfigError: An unknown model or bad ``model.overrides``.
    """
    from irepa.models import build_model

    cfg, data = context.config, context.data
    kwargs: dict[str, Any] = {
        "input_size": list(data.input_shape[1:]),
        "in_channels": data.input_shape[0],
        "num_classes": data.num_classes,
        "null_class": True,  # the official layout: num_classes + 1 label rows (the null / CFG class)
        "qk_norm": cfg.model.qk_norm,
        **cfg.model.overrides,
    }
    if kwargs["input_size"][0] == kwargs["input_size"][1]:
        kwargs["input_size"] = kwargs["input_size"][0]
    try:
        model = build_model(cfg.model.name, **kwargs)
    except IrepaError as exc:
        raise ConfigError(f"model {cfg.model.name!r}: {exc}") from exc
    return model, dict(getattr(model, "config", kwargs))


@OBJECTIVES.register("denoising")
class DenoisingObjective(BackboneObjective):
    """Velocity regression + optional representation alignment (SiT / REPA / iREPA).

    Settings: :class:`DenoisingSettings` (a subclass may extend them).

    Args:
        model: The velocity model ``model(x_t, t, y, return_hidden=...) -> ModelOutput`` (``irepa.models``).
        model_name: Its registry name; ``model_kwargs``: its constructor arguments (for snapshots).
        context: The build context (data for ``x0``, diffusion settings).
        alignment: The alignment term, or ``None`` to train without alignment.
    """

    Settings = DenoisingSettings

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
        cfg = context.config.diffusion
        self.settings = context.config.objective.settings  # the objective's typed settings (subclasses add fields)
        self.path_name = cfg.path
        self.path = get_path(cfg.path)
        sampler_kwargs = dict(cfg.time_sampler_kwargs)
        if cfg.time_sampler == "lognormal":
            sampler_kwargs.setdefault("path", cfg.path)
        self.time_sampler = get_time_sampler(cfg.time_sampler, **sampler_kwargs)
        self.label_dropout = cfg.label_dropout

    @classmethod
    def build(cls, context: ObjectiveContext) -> DenoisingObjective:
        """The ``model:`` backbone and the ``align:`` term (see :class:`~irepa.training.objectives.Objective`)."""
        model, kwargs = build_backbone(context)
        cfg = context.config
        alignment = context.alignment_term(model)
        return cls(model, model_name=cfg.model.name, model_kwargs=kwargs, context=context, alignment=alignment)

    def snapshot(self) -> SnapshotSpec:
        """The EMA model: its path, prediction type (and ``t_eps`` for x/eps)."""
        diffusion: dict[str, Any] = {"path": self.path_name, "prediction": self.settings.prediction}
        if self.settings.prediction != "v":
            diffusion["t_eps"] = self.settings.t_eps
        return SnapshotSpec("model", self.model_name, self.model_kwargs, diffusion)

    def draw(self, global_batch: int, generator: torch.Generator, device: torch.device) -> dict[str, torch.Tensor]:
        """The step's draws, in this order: ``t`` (G,), ``noise`` (G, C, h, w), ``drop`` (G,) bool.

        In latent space also ``eps`` (G, C, h, w), for sampling the latents from their posterior moments.
        """
        shape = (global_batch, *self.data.input_shape)
        draws = {
            "t": self.time_sampler(global_batch, generator=generator, device=device),
            "noise": torch.randn(shape, generator=generator, device=device),
            "drop": label_drop_mask(global_batch, self.label_dropout, generator=generator, device=device),
        }
        if self.data.space == "latent":
            draws["eps"] = torch.randn(shape, generator=generator, device=device)
        return draws

    def _terms(
        self,
        x0: torch.Tensor,
        y: torch.Tensor,
        t: torch.Tensor,
        noise: torch.Tensor,
        targets: dict[str, torch.Tensor] | None,
    ) -> Terms:
        """The velocity (or x/eps-prediction) loss and the unweighted alignment terms (see the base class)."""
        term = self.alignment
        with self.autocast():
            result = denoising_loss(
                self.model,
                self.path,
                x0,
                y,
                t=t,
                noise=noise,
                return_hidden=term.depth if targets is not None else None,
                prediction=self.settings.prediction,
                t_eps=self.settings.t_eps,
            )
            terms: Terms = {"denoise": result.denoise}
            if targets is not None:
                terms.update(term(result.hidden, targets, grid=self.model.grid, step=0, aligner=self.aligner))
        return terms

    def loss(self, batch: dict[str, torch.Tensor], draws: dict[str, torch.Tensor], step: int) -> Terms:
        """``loss = denoise (+ align)``; with alignment also ``align``, ``align_loss``, ``align_cos``, ...

        Eager or compiled (``train.compile``), :meth:`_terms` computes the terms; :meth:`weighted_terms` applies the
        step's alignment weight outside it (a Python float that changes with the step would recompile).

        Args:
            batch: ``label`` (B,), ``moments`` (latent space) or ``image`` (pixel space; also for the teacher).
            draws: This micro-batch's slice of :meth:`draw`.
            step: Optimizer step (alignment weight schedule).
        """
        x0 = self.data.model_input(batch, draws.get("eps"))
        y = drop_labels(batch["label"], draws["drop"], self.model.null_label)
        targets = self.alignment_targets(batch, step)
        return self.weighted_terms(x0, y, draws["t"], draws["noise"], targets, step)

    def describe(self) -> list[str]:
        """The path and time sampler."""
        return [f"objective denoising (velocity on the {self.path_name} path, label dropout {self.label_dropout})"]
