"""Training objectives: the pluggable loss the trainer wraps in DDP and differentiates.

An objective is an ``nn.Module`` that owns the trained modules of a recipe (the diffusion model, the aligner's
projectors, ...) and maps one micro-batch to *named terms*; ``terms["loss"]`` is what is differentiated, every other
term is logged. The trainer draws the randomness (times, noise, label dropout) for the whole global batch from one
seeded generator and hands each process its slice, so the objective itself is deterministic given its inputs.

:class:`DenoisingObjective` is the SiT/REPA/iREPA objective: velocity regression on the interpolation path plus,
when an aligner is present, the alignment term on the tokens after block ``align.depth``::

    loss = denoise + align           (align = λ(step) · (1 − cos) averaged over tokens, images, encoders)

Other recipes plug in here (docs/training.md, "Recipes of the same trainer"): MeanFlow (a JVP-based loss with two
time inputs, run in float32 on the unwrapped model), JiT (x-prediction in pixel space), REPA-E (a VAE and a
discriminator as further owned modules with their own optimizers).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from irepa.diffusion.losses import denoising_loss
from irepa.diffusion.paths import InterpolationPath
from irepa.diffusion.time_sampling import TimeSampler

__all__ = ["DenoisingObjective"]


class DenoisingObjective(nn.Module):
    """Velocity regression + optional representation alignment (REPA / iREPA).

    Args:
        model: The velocity model ``model(x_t, t, y, return_hidden=...) -> ModelOutput`` (``irepa.models``).
        path: Interpolation path (SiT time).
        time_sampler: Bound time sampler (recorded for completeness; the trainer passes the times explicitly).
        aligner: A :class:`~irepa.align.RepresentationAligner`, or ``None`` to train without alignment.
        align_depth: 1-based block whose output tokens are aligned (REPA's "encoder depth").
    """

    def __init__(
        self,
        model: nn.Module,
        path: InterpolationPath,
        time_sampler: TimeSampler,
        *,
        aligner: nn.Module | None = None,
        align_depth: int | None = None,
    ) -> None:
        super().__init__()
        if aligner is not None and align_depth is None:
            raise ValueError("an aligner needs align_depth (the 1-based block whose tokens are aligned)")
        self.model = model
        self.aligner = aligner
        self.path = path
        self.time_sampler = time_sampler
        self.align_depth = align_depth

    def forward(
        self,
        x0: torch.Tensor,
        y: torch.Tensor,
        t: torch.Tensor,
        noise: torch.Tensor,
        targets: Mapping[str, torch.Tensor] | None = None,
        step: int = 0,
    ) -> dict[str, torch.Tensor]:
        """Loss terms for one micro-batch.

        Args:
            x0: Clean data (B, C, H, W): normalized latents or pixels in [-1, 1].
            y: Labels (B,) int64, label dropout already applied (null class = ``model.null_label``).
            t: SiT times (B,) in [0, 1].
            noise: Standard normal noise (B, C, H, W).
            targets: Encoder name → patch tokens (B, T, D_k) from the frozen teacher, or ``None`` (no alignment
                this step, e.g. after the weight schedule stopped it).
            step: Optimizer step (for the alignment weight schedule).

        Returns:
            ``loss`` (differentiated), ``denoise`` and, with alignment, the aligner's terms (``align``,
            ``align_loss``, ``align_cos``, ``align_weight``, ``align_cos/<name>``); float32 scalars.
        """
        use_align = self.aligner is not None and targets is not None
        result = denoising_loss(
            self.model,
            self.path,
            x0,
            y,
            time_sampler=self.time_sampler,
            t=t,
            noise=noise,
            label_dropout=0.0,
            return_hidden=self.align_depth if use_align else None,
        )
        terms: dict[str, torch.Tensor] = {"denoise": result.denoise}
        loss = result.denoise
        if use_align:
            align = self.aligner.compute(targets, source=result.hidden, grid=self.model.grid, step=step)
            terms.update(align)
            loss = loss + align["align"]
        terms["loss"] = loss
        return terms
