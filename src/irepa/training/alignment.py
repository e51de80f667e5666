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
backbone's (e.g. a /32 JiT at 512 px and a /16 encoder at 256 px both give 16×16). With ``teacher.cache_targets`` the
term keeps each sample's targets in a :class:`TargetCache` (pass the batch's ``index``/``flipped`` as ``keys``).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Mapping, Sequence
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import nn

from irepa.errors import IrepaError
from irepa.utils.io import human_bytes

if TYPE_CHECKING:
    from irepa.align import AlignConfig, RepresentationAligner
    from irepa.encoders import WeightLocations
    from irepa.training.config import TrainConfig
    from irepa.training.teacher import Teacher

__all__ = ["AlignmentTerm", "TargetCache", "sample_keys"]


class TargetCache:
    """Every sample's teacher targets once computed, in host memory (``teacher.cache_targets``).

    A sample's targets depend only on its stored image and whether it was flipped (the teacher is frozen and its
    input deterministic), so they are computed the first time the sample is drawn and read back afterwards: after
    one epoch the teacher no longer runs. A batch is looked up whole: when any of its samples is missing, the teacher
    runs on the whole batch (the batch size it has without the cache) and every row is stored. On the CPU a
    teacher's rows do not depend on the other rows of its batch, so the cached targets are bit-identical to
    recomputed ones; a cached run is bit-identical to an uncached one, and resuming (with an empty cache) is exact.

    Storage: per encoder a float32 ``(slots, T, D_k)`` tensor allocated up front but paged in by the OS as rows are
    written; slot = ``index``, or ``2 · index + flipped`` when the data flips.

    Args:
        num_samples: Samples in the data set (the largest ``index`` + 1).
        shapes: Encoder id → ``(T, D_k)`` of its targets.
        flips: Whether the data flips samples (two slots per sample).
    """

    def __init__(self, num_samples: int, shapes: Mapping[str, tuple[int, int]], *, flips: bool) -> None:
        self.flips = flips
        slots = num_samples * (2 if flips else 1)
        self.tokens = {name: torch.empty((slots, *shape), dtype=torch.float32) for name, shape in shapes.items()}
        self.filled = np.zeros(slots, dtype=bool)

    @staticmethod
    def nbytes(num_samples: int, shapes: Mapping[str, tuple[int, int]], *, flips: bool) -> int:
        """Bytes of the cache when every slot is filled."""
        per_sample = sum(4 * t * d for t, d in shapes.values())
        return num_samples * (2 if flips else 1) * per_sample

    def _slots(self, index: torch.Tensor, flipped: torch.Tensor | None) -> np.ndarray:
        # The trainer passes host tensors; keys that reached a GPU (DDP's forward moves every input tensor to the
        # device) are read back, a small synchronizing copy.
        slots = index.cpu().numpy().astype(np.int64)
        if self.flips:
            if flipped is None:
                raise IrepaError("the target cache of flipped data needs each sample's flip (batch['flipped'])")
            slots = 2 * slots + flipped.cpu().numpy().astype(np.int64)
        return slots

    def get(
        self, index: torch.Tensor, flipped: torch.Tensor | None, device: torch.device
    ) -> dict[str, torch.Tensor] | None:
        """The batch's targets (encoder id → (B, T, D_k) on ``device``), or ``None`` if any sample is missing.

        Args:
            index: int64 (B,) dataset indices, on the host (the trainer keeps them there: no device sync).
            flipped: bool (B,) flips, on the host; ignored when the data does not flip.
            device: Where the targets are returned.
        """
        slots = self._slots(index, flipped)
        if not self.filled[slots].all():
            return None
        rows = torch.from_numpy(slots)
        return {name: tokens.index_select(0, rows).to(device) for name, tokens in self.tokens.items()}

    def put(self, index: torch.Tensor, flipped: torch.Tensor | None, targets: Mapping[str, torch.Tensor]) -> None:
        """Store a batch's targets (encoder id → (B, T, D_k), any device)."""
        slots = self._slots(index, flipped)
        rows = torch.from_numpy(slots)
        for name, tokens in self.tokens.items():
            tokens.index_copy_(0, rows, targets[name].detach().to("cpu", torch.float32))
        self.filled[slots] = True

    @property
    def capacity_bytes(self) -> int:
        """Bytes of the cache when every slot is filled (what :meth:`nbytes` said)."""
        return sum(t.numel() * t.element_size() for t in self.tokens.values())

    def __len__(self) -> int:
        """Filled slots."""
        return int(self.filled.sum())


def sample_keys(batch: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor | None] | None:
    """A training batch's ``(index, flipped)`` (what a :class:`TargetCache` is keyed by), or ``None`` without them."""
    if "index" not in batch:
        return None
    return batch["index"], batch.get("flipped")


def _physical_memory() -> int | None:
    """Bytes of RAM of this machine, or ``None`` where the OS does not say (``os.sysconf`` is POSIX)."""
    try:
        return int(os.sysconf("SC_PAGE_SIZE")) * int(os.sysconf("SC_PHYS_PAGES"))
    except (AttributeError, ValueError, OSError):
        return None


class AlignmentTerm:
    """Teacher, aligner and tapped block of REPA/iREPA, usable by any objective.

    Not an ``nn.Module`` on purpose: the frozen teacher must not become part of the trained module tree (no DDP
    broadcast, no checkpoint, no EMA). The trainable part, :attr:`aligner`, is registered by the objective that owns
    it (checkpointed as ``aligner``).

    Args:
        teacher: The frozen encoders (``Teacher``).
        aligner: Projectors, target normalization, loss and weight schedule (``RepresentationAligner``).
        depth: 1-based block whose output tokens are aligned (``align.depth``).
        precision: The teacher's autocast (``bf16``/``fp32``), or ``None`` for the caller's.
        cache: Where each sample's targets are kept once computed (``teacher.cache_targets``), or ``None``.
    """

    def __init__(
        self,
        teacher: Teacher,
        aligner: RepresentationAligner,
        depth: int,
        precision: str | None = None,
        cache: TargetCache | None = None,
    ) -> None:
        self.teacher = teacher
        self.aligner = aligner
        self.depth = depth
        self.precision = precision  # "bf16" / "fp32": the teacher's own autocast; None: the caller's
        self.cache = cache  # teacher.cache_targets
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
        num_samples: int | None = None,
        flips: bool = False,
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
            num_samples: Samples in the training data (needed by ``teacher.cache_targets``).
            flips: Whether the training data flips samples (``teacher.cache_targets`` keeps both flips).

        Raises:
            IrepaError: Missing encoder weights, an encoder grid that differs from ``grid`` (one line naming both
                grids and the fix), or a target cache larger than half of this machine's memory.
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
        cache = None
        if config.teacher.cache_targets:
            if num_samples is None:
                raise IrepaError("teacher.cache_targets needs the number of training samples (num_samples)")
            shapes = {name: (h * w, teacher.embed_dims[name]) for name, (h, w) in teacher.grids.items()}
            need, memory = TargetCache.nbytes(num_samples, shapes, flips=flips), _physical_memory()
            if memory is not None and need > memory // 2:
                raise IrepaError(
                    f"teacher.cache_targets would keep {human_bytes(need)} of targets per process ({num_samples} "
                    f"samples{' x 2 flips' if flips else ''}), more than half of this machine's "
                    f"{human_bytes(memory)} of memory; set teacher.cache_targets=false"
                )
            cache = TargetCache(num_samples, shapes, flips=flips)
        return cls(teacher, aligner, config.align.depth, precision, cache)

    def active(self, step: int) -> bool:
        """Whether optimizer step ``step`` needs the alignment (False once the weight schedule stopped it)."""
        return self.aligner.active(step)

    def targets(
        self,
        images: torch.Tensor,
        autocast: AbstractContextManager | None = None,
        keys: tuple[torch.Tensor, torch.Tensor | None] | None = None,
    ) -> dict[str, torch.Tensor]:
        """The teacher's target tokens.

        Args:
            images: uint8 images (B, 3, H, W).
            autocast: The training autocast context; used only when the term has no precision of its own
                (``teacher.precision`` sets one for every term built by :meth:`from_config`).
            keys: The samples' dataset ``index`` (int64 (B,)) and ``flipped`` (bool (B,) or ``None``), on the host:
                with a :attr:`cache`, targets of samples seen before are read from it. Required with a cache.

        Returns:
            Encoder id → float32 patch tokens (B, T, D_k).
        """
        with self.timer.section("teacher") if self.timer is not None else contextlib.nullcontext():
            if self.cache is None:
                return self._encode(images, autocast)
            if keys is None:
                raise IrepaError("teacher.cache_targets: the caller must pass each sample's keys (index, flipped)")
            cached = self.cache.get(*keys, device=images.device)
            if cached is not None:
                return cached
            targets = self._encode(images, autocast)
            self.cache.put(*keys, targets)
            return targets

    def _encode(self, images: torch.Tensor, autocast: AbstractContextManager | None) -> dict[str, torch.Tensor]:
        if self.precision == "fp32":
            autocast = contextlib.nullcontext()
        elif self.precision == "bf16":
            autocast = torch.autocast(device_type=images.device.type, dtype=torch.bfloat16)
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
        if self.cache is not None:
            teacher += f", targets cached in host memory (up to {human_bytes(self.cache.capacity_bytes)} per process)"
        return (
            f"align {', '.join(config.encoders)} at block {self.depth}, projector {config.projector}"
            f" ({n / 1e6:.2f}M params), target norm {config.target_norm}, weight {config.weight}{teacher}"
        )
