"""The alignment term of any recipe: frozen teacher + trainable aligner + the block they tap, built in one place.

REPA and iREPA add ``λ(step) · (1 − cos)`` between the projected tokens of one block of the diffusion backbone and a
frozen vision encoder's patch tokens. This is independent of the training objective (velocity regression,
x-prediction, MeanFlow, end-to-end VAE training), so every objective uses the same :class:`AlignmentTerm`::

    term = AlignmentTerm.from_config(config, data, device=device, grid=model.grid, source_dim=model.hidden_size,
                                     what=config.model.name)          # None when align.encoders is empty
    targets = term.targets(batch["image"], autocast) if term.active(step) else None
    out = model(x_t, t, y, return_hidden=term.depth)                  # the backbone's tokens after block `depth`
    terms = term(out.hidden, targets, grid=model.grid, step=step)     # align, align_loss, align_cos, ...

Whether alignment is on is decided here only: :meth:`AlignmentTerm.from_config` returns ``None`` without encoders,
and :meth:`AlignmentTerm.active` says whether this step needs the teacher (the weight schedule may stop it).
Grid matching is checked once at construction: the encoders' token grid at ``teacher.resolution`` must equal the
backbone's (e.g. a /32 JiT at 512 px and a /16 encoder at 256 px both give 16×16).
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping, Sequence
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING

import torch
from torch import nn

if TYPE_CHECKING:
    from irepa.align import AlignConfig, RepresentationAligner
    from irepa.encoders import WeightLocations
    from irepa.training.config import TrainConfig
    from irepa.training.teacher import Teacher

__all__ = ["AlignmentTerm"]


class AlignmentTerm:
    """Teacher, aligner and tapped block of REPA/iREPA, usable by any objective.

    Not an ``nn.Module`` on purpose: the frozen teacher must not become part of the trained module tree (no DDP
    broadcast, no checkpoint, no EMA). The trainable part, :attr:`aligner`, is registered by the objective that owns
    it (checkpointed as ``aligner``).

    Args:
        teacher: The frozen encoders (``Teacher``).
        aligner: Projectors, target normalization, loss and weight schedule (``RepresentationAligner``).
        depth: 1-based block whose output tokens are aligned (``align.depth``).
    """

    def __init__(
        self, teacher: Teacher, aligner: RepresentationAligner, depth: int, precision: str | None = None
    ) -> None:
        self.teacher = teacher
        self.aligner = aligner
        self.depth = depth
        self.precision = precision  # "bf16" / "fp32": the teacher's own autocast; None: the caller's
        self.timer = None  # the trainer's StepTimer (times the teacher as its own section), set by the trainer

    @classmethod
    def from_config(
        cls,
        config: TrainConfig,
        *,
        image_size: int,
        grid: Sequence[int],
        source_dim: int,
        what: str,
        device: torch.device | str,
        locations: WeightLocations | None = None,
    ) -> AlignmentTerm | None:
        """The term configured by ``align:`` and ``teacher:``, or ``None`` when ``align.encoders`` is empty.

        Args:
            config: The training config (``align``, ``teacher`` sections).
            image_size: Side of the training images in px (the teacher resolution when ``teacher.resolution`` is
                null).
            grid: ``(H, W)`` token grid of the tapped backbone.
            source_dim: Token width ``D`` of the tapped backbone.
            what: The backbone's name for error messages (``config.model.name``).
            device: Where the teacher runs.
            locations: Where the encoder weights are looked for (``teacher.cache_dir``/``teacher.offline``
                override it); ``None`` = only ``teacher.cache_dir``.

        Raises:
            IrepaError: Missing encoder weights, or an encoder grid that differs from ``grid`` (one line naming both
                grids and the fix).
        """
        if not config.align.encoders:
            return None
        from irepa.align import RepresentationAligner
        from irepa.training.teacher import Teacher

        teacher = Teacher.load(
            config.align.encoders,
            resolution=config.teacher.resolution or image_size,
            weights=config.teacher.weights,
            locations=locations,
            cache_dir=config.teacher.cache_dir,
            offline=config.teacher.offline,
            pretrained=config.teacher.pretrained,
            arch_overrides=config.teacher.arch_overrides,
            device=device,
        )
        teacher.check_grid(grid, what)
        aligner = RepresentationAligner.from_config(config.align, source_dim, teacher.embed_dims)
        precision = config.teacher.precision
        if precision == "auto":
            precision = "bf16" if torch.device(device).type == "cuda" else "fp32"
        return cls(teacher, aligner, config.align.depth, precision)

    def active(self, step: int) -> bool:
        """Whether optimizer step ``step`` needs the alignment (False once the weight schedule stopped it)."""
        return self.aligner.active(step)

    def targets(self, images: torch.Tensor, autocast: AbstractContextManager | None = None) -> dict[str, torch.Tensor]:
        """The teacher's target tokens.

        Args:
            images: uint8 images (B, 3, H, W).
            autocast: The training autocast context; used only when the term has no precision of its own
                (``teacher.precision`` sets one for every term built by :meth:`from_config`).

        Returns:
            Encoder id → float32 patch tokens (B, T, D_k).
        """
        if self.precision == "fp32":
            autocast = contextlib.nullcontext()
        elif self.precision == "bf16":
            autocast = torch.autocast(device_type=images.device.type, dtype=torch.bfloat16)
        if self.timer is None:
            return self.teacher(images, autocast=autocast)
        with self.timer.section("teacher"):
            return self.teacher(images, autocast=autocast)

    def __call__(
        self,
        tokens: torch.Tensor,
        targets: Mapping[str, torch.Tensor],
        *,
        grid: Sequence[int],
        step: int,
        aligner: nn.Module | None = None,
    ) -> dict[str, torch.Tensor]:
        """Alignment terms for one micro-batch.

        Args:
            tokens: Backbone tokens after block :attr:`depth` (B, T, D), grid tokens only (no class/register
                tokens).
            targets: From :meth:`targets`.
            grid: ``(H, W)`` of ``tokens``.
            step: Optimizer step (weight schedule).
            aligner: The aligner to run (default :attr:`aligner`); pass the objective's registered submodule when
                the objective is wrapped (it is the same module).

        Returns:
            ``align`` (λ · loss, add it to the loss), ``align_loss``, ``align_cos``, ``align_weight`` and, with several
            encoders, ``align_cos/<name>``; float32 scalars.
        """
        aligner = self.aligner if aligner is None else aligner
        return aligner.compute(targets, source=tokens, grid=grid, step=step)

    def describe(self, config: AlignConfig) -> str:
        """One line for the start-up summary."""
        n = sum(p.numel() for p in self.aligner.parameters())
        teacher = f", teacher in {self.precision}" if self.precision else ""
        return (
            f"align {', '.join(config.encoders)} at block {self.depth}, projector {config.projector}"
            f" ({n / 1e6:.2f}M params), target norm {config.target_norm}, weight {config.weight}{teacher}"
        )
