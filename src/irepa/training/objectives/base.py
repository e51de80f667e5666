"""The objective API: what a training recipe declares, and how the one trainer drives it.

An **objective** is an ``nn.Module`` registered in :data:`OBJECTIVES` under the name that ``objective.name`` selects
in the config. It owns the trained modules of a recipe and maps micro-batches to named loss terms; the trainer
(:mod:`irepa.training.trainer`) keeps the loop, gradient accumulation, DDP, autocast, the non-finite guard,
checkpoints, signals, hooks and logging. The contract (see docs/recipes.md for a worked example):

**Construction.** ``cls.build(context)`` with an :class:`ObjectiveContext` (the resolved ``TrainConfig``, the
process's ``TrainData`` — input shape, class count, space, ``model_input`` — and the device). The objective builds
its modules (:func:`~irepa.training.objectives.build_backbone` builds ``model:`` from the data) and, when alignment is
configured, an :class:`~irepa.training.alignment.AlignmentTerm` (``AlignmentTerm.from_config``) whose
``aligner`` it registers as a submodule. Its own settings come from the ``objective:`` config section as the typed
dataclass ``cls.Settings`` (unknown keys are config errors); ``cls.needs_images(config)`` tells the data pipeline
whether the uint8 images must be loaded.

**Declarations** (called once by the trainer, after ``build``):

- :meth:`Objective.trained_modules`: name → module, each checkpointed as ``<name>.safetensors`` (parameters *and*
  buffers, e.g. BatchNorm running statistics).
- :meth:`Objective.ema_modules`: names of the trained modules that get an EMA (``ema.<name>.safetensors``);
  e.g. REPA-E keeps an EMA of the SiT only.
- :meth:`Objective.optimizers`: optimizer name → :class:`OptimizerSpec` (parameters in a fixed order, per-optimizer
  overrides of the ``optim:`` section such as ``betas``). Each is an AdamW checkpointed as
  ``optimizer.<name>.pt`` and follows the warmup schedule of ``optim.warmup_steps``.
- :meth:`Objective.phases`: the ordered :class:`Phase` list of one optimizer step. A phase names its optimizer and a
  function ``fn(batch, draws, step) -> terms``; the trainer runs, per phase, every micro-batch's forward/backward,
  then gradient sync, clipping (``optim.grad_clip``), the finiteness check and that optimizer's step, before the
  next phase starts (REPA-E: VAE step, then discriminator step, then SiT step). Almost every recipe has one phase
  (the default: :meth:`Objective.loss` on optimizer ``main``).
- :attr:`Objective.manual_grad_sync`: ``True`` when gradients cannot be synchronized by DDP's backward hooks —
  a MeanFlow JVP through ``torch.func.jvp`` on the unwrapped module, or several phases whose backward passes touch
  different parameter subsets. The trainer then does not DDP-wrap the objective and all-reduces each phase's
  gradients itself (:func:`~irepa.training.distributed.sync_gradients`, bucketed, once after the last micro-batch).
  Objectives with more than one phase must set it.
- :meth:`Objective.snapshot`: a :class:`SnapshotSpec` — which (EMA'd) module ``irepa sample`` draws from, its model
  registry name and constructor arguments, and the ``diffusion`` metadata a sampler needs (path, time convention,
  prediction type, sampler defaults), written into every snapshot header.

**Per step.** ``draw(global_batch, generator, device)`` draws *all* of the step's randomness for the whole global
batch as a dict of ``(G, ...)`` tensors from the one seeded generator the trainer hands it (same state on every
process); the trainer gives each micro-batch its slice (positions ``r, r + W, ...``, the data sampler's layout), so
results do not depend on the number of processes. A phase function gets the micro-batch (``batch``: the data
loader's dict on the device — ``image`` uint8 (B, 3, H, W), ``label`` (B,), ``moments`` in latent space), its
``draws`` slice (``(B, ...)``) and the optimizer ``step``, and returns float32 scalar terms; ``terms["loss"]`` is
differentiated (divided by the accumulation count by the trainer), the others are logged. Phase functions run
outside autocast: use ``self.autocast()`` around the forwards that should be mixed precision (the trainer binds the
training autocast) and keep numerically sensitive maths (JVPs, losses) in float32. Models are called through the
objective's own attributes, so calling the objective (``objective(batch, draws, step, phase)``, which is what DDP
wraps) reaches them.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import nn

from irepa.registry import Registry
from irepa.training.alignment import sample_keys

if TYPE_CHECKING:
    from irepa.encoders import WeightLocations
    from irepa.training.alignment import AlignmentTerm
    from irepa.training.config import TrainConfig
    from irepa.training.data import TrainData

__all__ = [
    "OBJECTIVES",
    "BackboneObjective",
    "NoSettings",
    "Objective",
    "ObjectiveContext",
    "OptimizerSpec",
    "Phase",
    "PhaseFn",
    "SnapshotSpec",
]

#: Terms of one micro-batch: name → float32 scalar; ``"loss"`` is differentiated.
Terms = dict[str, torch.Tensor]
#: ``fn(batch, draws, step) -> terms`` of one phase.
PhaseFn = Callable[[dict[str, torch.Tensor], dict[str, torch.Tensor], int], Terms]


@dataclasses.dataclass(frozen=True)
class NoSettings:
    """Settings of an objective that has none of its own (every key but ``name`` is an error)."""


@dataclasses.dataclass
class OptimizerSpec:
    """One AdamW of an objective. ``None`` fields take the ``optim:`` section's value.

    Attributes:
        params: The parameters it updates, in a fixed order (the order of the optimizer state in checkpoints).
        lr: Peak learning rate (the warmup schedule scales it).
        betas: Adam betas (e.g. REPA-E's discriminator uses its own).
        weight_decay: Decoupled weight decay.
        eps: Adam eps.
    """

    params: list[nn.Parameter]
    lr: float | None = None
    betas: tuple[float, float] | None = None
    weight_decay: float | None = None
    eps: float | None = None


@dataclasses.dataclass
class Phase:
    """One optimizer update inside a trainer step.

    Attributes:
        optimizer: Name of the optimizer (a key of :meth:`Objective.optimizers`) stepped after this phase.
        fn: ``fn(batch, draws, step) -> terms`` for one micro-batch.
        name: Prefix of the logged terms (``"<name>/<term>"``) when an objective has several phases; ignored (no
            prefix) for a single phase.
        active: ``active(step) -> bool``; the phase (forward, backward and optimizer step) is skipped at steps where
            it is False (e.g. a discriminator that starts later). ``None`` = always.
    """

    optimizer: str
    fn: PhaseFn
    name: str = ""
    active: Callable[[int], bool] | None = None


@dataclasses.dataclass
class SnapshotSpec:
    """What an inference snapshot of the objective holds.

    Attributes:
        module: Name of the trained module whose EMA is saved (it must be in :meth:`Objective.ema_modules`).
        model_name: Registry name that rebuilds it (``build_model(model_name, **model_kwargs)``).
        model_kwargs: Constructor arguments (JSON-serializable).
        diffusion: The ``diffusion`` header entry: ``path`` and whatever the sampler needs (prediction type,
            time convention, sampler defaults).
    """

    module: str
    model_name: str
    model_kwargs: dict[str, Any]
    diffusion: dict[str, Any]


@dataclasses.dataclass
class ObjectiveContext:
    """What an objective is built from.

    Attributes:
        config: The resolved training config (``config.objective.settings`` is the objective's own settings).
        data: This process's data (``input_shape`` (C, h, w), ``image_size``, ``num_classes``, ``space``,
            ``model_input(batch, eps)``).
        device: The training device.
        weight_locations: Where encoder weights (the teacher's) are looked for, as resolved at the CLI boundary
            (``$IREPA_CACHE``, hub caches, offline switch); ``None`` = only ``teacher.cache_dir``.
    """

    config: TrainConfig
    data: TrainData
    device: torch.device
    weight_locations: WeightLocations | None = None

    def alignment_term(self, backbone: nn.Module) -> AlignmentTerm | None:
        """The ``align:``/``teacher:`` term for ``backbone``, or ``None`` when no encoders are configured.

        Every recipe builds its term here, so the teacher resolution (``teacher.resolution`` or the image size),
        the weight locations resolved at the CLI boundary and the grid check are the same for all of them.

        Args:
            backbone: The tapped model (its ``grid`` and ``hidden_size``).
        """
        from irepa.training.alignment import AlignmentTerm

        return AlignmentTerm.from_config(
            self.config,
            image_size=self.data.image_size[0],
            grid=backbone.grid,
            source_dim=backbone.hidden_size,
            what=self.config.model.name,
            device=self.device,
            locations=self.weight_locations,
            num_samples=len(self.data.dataset),
            flips=self.config.data.flip,
        )


#: Objectives by config name (``objective.name``): classes with ``build(context)``.
OBJECTIVES: Registry[type[Objective]] = Registry("objective")


class Objective(nn.Module):
    """Base class of training objectives (see the module docstring for the contract).

    Subclasses set :attr:`Settings` (a frozen dataclass; default :class:`NoSettings`), implement :meth:`build`,
    :meth:`trained_modules`, :meth:`draw`, :meth:`snapshot` and either :meth:`loss` (one phase on optimizer
    ``main``) or :meth:`phases`, and register themselves with ``OBJECTIVES.register(name)``.
    """

    Settings: ClassVar[type] = NoSettings
    manual_grad_sync: ClassVar[bool] = False
    """True when the trainer must not DDP-wrap the objective and all-reduces gradients itself (MeanFlow's JVP,
    several phases)."""
    sync_check_every_steps: int = 0
    """With ``manual_grad_sync`` on several processes: every this many steps the trainer verifies, after the
    all-reduce, that every process holds bit-identical gradients (:func:`~irepa.training.distributed.
    check_replicas_in_sync`, one small collective; 0 = never). Checkpoints always verify the weights."""

    def __init__(self) -> None:
        super().__init__()
        self.alignment: AlignmentTerm | None = None
        self._autocast: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext

    # -- construction --------------------------------------------------------------------------------------------------

    @classmethod
    def build(cls, context: ObjectiveContext) -> Objective:
        """Build the objective and its modules for ``context`` (on ``context.device``)."""
        raise NotImplementedError

    @classmethod
    def needs_images(cls, config: TrainConfig) -> bool:
        """Whether the micro-batches must carry the uint8 images (default: when alignment is configured)."""
        return bool(config.align.encoders)

    def bind(self, *, autocast: Callable[[], contextlib.AbstractContextManager], timer: Any = None) -> None:
        """Called by the trainer: the training autocast factory and the step timer (the teacher's section)."""
        self._autocast = autocast
        if self.alignment is not None:
            self.alignment.timer = timer

    def autocast(self) -> contextlib.AbstractContextManager:
        """The training autocast context (a no-op in fp32 and until the trainer binds it)."""
        return self._autocast()

    # -- declarations --------------------------------------------------------------------------------------------------

    def trained_modules(self) -> dict[str, nn.Module]:
        """Name → trained module, each checkpointed as ``<name>.safetensors`` (in this order)."""
        raise NotImplementedError

    def ema_modules(self) -> tuple[str, ...]:
        """Names of the trained modules that get an EMA (``ema.<name>.safetensors``)."""
        return ()

    def optimizers(self) -> dict[str, OptimizerSpec]:
        """Optimizer name → :class:`OptimizerSpec`.

        Default: one ``main`` AdamW over every trainable parameter, in module order.
        """
        return {"main": OptimizerSpec([p for p in self.parameters() if p.requires_grad])}

    def phases(self) -> list[Phase]:
        """The ordered phases of one optimizer step. Default: :meth:`loss` on optimizer ``main``."""
        return [Phase("main", self.loss)]

    def snapshot(self) -> SnapshotSpec:
        """What the EMA inference snapshot holds (see :class:`SnapshotSpec`)."""
        raise NotImplementedError

    def compile_for_training(self) -> None:
        """Compile for training (the trainer calls it when ``train.compile`` is on).

        Default: the snapshot's module (the backbone) in place, so state-dict keys stay unprefixed; the small
        auxiliary modules (projectors) stay eager, as before objectives existed. Objectives whose step cannot run
        through a compiled module (MeanFlow compiles its whole JVP step instead) or that want more compiled override
        it.
        """
        self.trained_modules()[self.snapshot().module].compile()

    def snapshot_space(self, snapshot_path: Path) -> dict[str, Any] | None:
        """The ``space`` header entry of the snapshot written to ``snapshot_path`` (main process only).

        Default ``None``: the data's space (:meth:`TrainData.space_metadata`). Objectives whose model works in
        another space than the data (REPA-E: images in, a latent-space SiT, a VAE trained in the same run) return
        their own and may write what it refers to next to the snapshot.
        """
        return None

    def describe(self) -> list[str]:
        """Lines for the start-up summary (default: the objective's name)."""
        return [f"objective {type(self).__name__}"]

    # -- per step ------------------------------------------------------------------------------------------------------

    def draw(self, global_batch: int, generator: torch.Generator, device: torch.device) -> dict[str, torch.Tensor]:
        """All of one step's randomness for the whole global batch: name → (G, ...) tensors from ``generator``."""
        raise NotImplementedError

    def loss(self, batch: dict[str, torch.Tensor], draws: dict[str, torch.Tensor], step: int) -> Terms:
        """Terms of one micro-batch for single-phase objectives (``terms["loss"]`` is differentiated)."""
        raise NotImplementedError

    def forward(
        self, batch: dict[str, torch.Tensor], draws: Mapping[str, torch.Tensor], step: int, phase: int = 0
    ) -> Terms:
        """Run phase ``phase`` on one micro-batch (the trainer calls this, through DDP when it wraps)."""
        return self.phases()[phase].fn(batch, dict(draws), step)


class BackboneObjective(Objective):
    """Base of the recipes that train one backbone with an optional alignment term (denoising, JiT, MeanFlow).

    It holds what they share: the modules, the EMA and the alignment plumbing. Trained modules: ``model`` and,
    with alignment, ``aligner`` (the projectors); EMA: ``model`` only (the projectors are not used for sampling). A
    subclass computes its own loss and adds the alignment with :meth:`alignment_targets` and :meth:`add_alignment`.

    Args:
        model: The backbone ``model(x_t, t, y, return_hidden=...) -> ModelOutput`` (``irepa.models``).
        model_name: Its registry name; ``model_kwargs``: its constructor arguments (for snapshots).
        context: The build context (the data gives ``x0``).
        alignment: The alignment term, or ``None`` to train without alignment.
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        model_name: str,
        model_kwargs: dict[str, Any],
        context: ObjectiveContext,
        alignment: AlignmentTerm | None = None,
    ) -> None:
        super().__init__()
        self.model = model
        self.alignment = alignment
        self.aligner = alignment.aligner if alignment is not None else None  # registered: trained, checkpointed
        self.data = context.data
        self.model_name, self.model_kwargs = model_name, model_kwargs
        self._core: Callable[..., Terms] | None = None  # the compiled _terms (train.compile)

    def trained_modules(self) -> dict[str, nn.Module]:
        """``model`` and, with alignment, ``aligner`` (the projectors)."""
        modules: dict[str, nn.Module] = {"model": self.model}
        if self.aligner is not None:
            modules["aligner"] = self.aligner
        return modules

    def ema_modules(self) -> tuple[str, ...]:
        """The model only (the projectors are not used for sampling)."""
        return ("model",)

    def alignment_targets(self, batch: dict[str, torch.Tensor], step: int) -> dict[str, torch.Tensor] | None:
        """The teacher's targets for ``batch["image"]``, or ``None`` without alignment or once its schedule stopped."""
        term = self.alignment
        if term is None or not term.active(step):
            return None
        return term.targets(batch["image"], autocast=self.autocast(), keys=sample_keys(batch))

    def add_alignment(
        self,
        terms: Terms,
        loss: torch.Tensor,
        hidden: torch.Tensor | None,
        targets: dict[str, torch.Tensor] | None,
        step: int,
    ) -> Terms:
        """Add the alignment terms of ``hidden`` (B, T, D) when ``targets`` are given, and ``terms["loss"]``.

        ``terms["loss"]`` is ``loss`` (+ ``align``); returns ``terms``. Runs in the caller's autocast context.
        """
        if targets is not None:
            align = self.alignment(hidden, targets, grid=self.model.grid, step=step, aligner=self.aligner)
            terms.update(align)
            loss = loss + align["align"]
        terms["loss"] = loss
        return terms

    # -- recipes whose whole micro-batch loss is one function of tensors (denoising, JiT) ----------------------------

    def _terms(
        self,
        x0: torch.Tensor,
        y: torch.Tensor,
        t: torch.Tensor,
        noise: torch.Tensor,
        targets: dict[str, torch.Tensor] | None,
    ) -> Terms:
        """``denoise`` and, with ``targets``, the unweighted alignment terms of one micro-batch.

        What ``train.compile`` compiles (model + loss + aligner as one graph) for the recipes that use
        :meth:`weighted_terms`; the alignment weight inside is step 0's, :meth:`weighted_terms` applies the step's.

        Args:
            x0: Clean model input (B, C, H, W).
            y: Labels (B,) after label dropout.
            t: SiT times (B,).
            noise: Standard normal (B, C, H, W).
            targets: The teacher's targets (:meth:`alignment_targets`), or ``None``.
        """
        raise NotImplementedError(f"{type(self).__name__} does not compute its loss through _terms")

    def compile_for_training(self) -> None:
        """Compile :meth:`_terms`: model + loss + aligner as one graph, the teacher and the step's scalars outside.

        The compiled function takes only tensors (no optimizer step, whose value changes every step and would
        recompile); the step's alignment weight is applied after it, exactly as the eager path does. Modules are
        not wrapped, so state-dict keys stay plain. Recipes that do not use :meth:`weighted_terms` override this.
        """
        self._core = torch.compile(self._terms)

    def weighted_terms(
        self,
        x0: torch.Tensor,
        y: torch.Tensor,
        t: torch.Tensor,
        noise: torch.Tensor,
        targets: dict[str, torch.Tensor] | None,
        step: int,
    ) -> Terms:
        """:meth:`_terms` (eager, or compiled under ``train.compile``) with the alignment weight of ``step``.

        Returns:
            The terms with ``loss = denoise (+ align)``; with alignment also ``align`` (λ · ``align_loss``),
            ``align_loss``, ``align_cos``, ``align_weight``, ...
        """
        core = self._core if self._core is not None else self._terms
        terms = core(x0, y, t, noise, targets)
        loss = terms["denoise"]
        if targets is not None:
            weight = self.aligner.weight_at(step)
            terms["align"] = terms["align_loss"] * weight
            # full, not tensor: a fill kernel, where torch.tensor(..., device=cuda) copies from host memory and waits
            terms["align_weight"] = torch.full((), weight, dtype=torch.float32, device=loss.device)
            loss = loss + terms["align"]
        terms["loss"] = loss
        return terms
