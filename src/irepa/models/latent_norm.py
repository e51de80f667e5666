"""REPA-E's latent normalization: a BatchNorm without affine parameters on the diffusion side.

In end-to-end training the VAE's latent statistics move, so REPA-E normalizes latents with a
``BatchNorm2d(C, eps=1e-4, momentum=0.1, affine=False)`` owned by the SiT (prior-implementations §7):

- initialised from the VAE's latent statistics file: ``running_mean = latents_bias`` (the channel means),
  ``running_var = 1 / latents_scale²`` (the channel variances);
- train mode (the SiT step): normalizes with the batch statistics and updates the running ones;
  eval mode (the VAE-alignment pass through the frozen SiT, stage 2 on cached latents): uses the running ones;
- no affine parameters, deliberately: the diffusion loss must not be able to rescale the latents;
- under DDP it becomes a ``SyncBatchNorm`` (:meth:`LatentBatchNorm.convert_sync`), so statistics are global;
- sampling de-normalizes with the running statistics *without* the eps, as REPA-E's sampler does
  (``z = x · sqrt(running_var) + running_mean``).

State-dict keys are REPA-E's: ``bn.running_mean``, ``bn.running_var``, ``bn.num_batches_tracked`` (this module is
registered as ``bn``'s parent, so keys read ``<name>.bn.*``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from irepa.errors import IrepaError

__all__ = ["LatentBatchNorm"]


class LatentBatchNorm(nn.Module):
    """Per-channel latent normalization by BatchNorm running statistics (REPA-E).

    Args:
        channels: Latent channels C.
        momentum: BatchNorm momentum (REPA-E ``--bn-momentum`` 0.1).
        eps: BatchNorm eps (1e-4 in REPA-E), used when normalizing only.
        mean: Initial running mean per channel (the VAE's latent means); default 0.
        std: Initial running standard deviation per channel (1/``latents_scale``); default 1.
        ema_decay: Also keep an exponential moving average of the running statistics (buffers ``ema_mean``,
            ``ema_var``; :meth:`update_ema`), as REPA-E's EMA model averages its BatchNorm buffers with the SiT's
            weights and samples with them. None: no average.
    """

    def __init__(
        self,
        channels: int,
        *,
        momentum: float = 0.1,
        eps: float = 1e-4,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        ema_decay: float | None = None,
    ) -> None:
        super().__init__()
        if not 0.0 <= momentum <= 1.0:
            raise IrepaError(f"latent BatchNorm momentum must be in [0, 1], got {momentum}")
        if ema_decay is not None and not 0.0 <= ema_decay <= 1.0:
            raise IrepaError(f"latent BatchNorm EMA decay must be in [0, 1], got {ema_decay}")
        self.bn = nn.BatchNorm2d(channels, eps=eps, momentum=momentum, affine=False)
        self.ema_decay = ema_decay
        if ema_decay is not None:
            self.register_buffer("ema_mean", self.bn.running_mean.clone())
            self.register_buffer("ema_var", self.bn.running_var.clone())
        if mean is not None or std is not None:
            self.init_stats(
                mean if mean is not None else [0.0] * channels, std if std is not None else [1.0] * channels
            )

    @property
    def channels(self) -> int:
        """Latent channels C."""
        return int(self.bn.num_features)

    @torch.no_grad()
    def init_stats(self, mean: Sequence[float], std: Sequence[float]) -> None:
        """Set the running statistics: ``running_mean = mean``, ``running_var = std²`` (REPA-E's ``init_bn``)."""
        mean_t = torch.as_tensor(list(mean), dtype=torch.float64)
        std_t = torch.as_tensor(list(std), dtype=torch.float64)
        if mean_t.numel() != self.channels or std_t.numel() != self.channels:
            raise IrepaError(
                f"latent statistics have {mean_t.numel()} means and {std_t.numel()} stds for {self.channels} channels"
            )
        if not bool(torch.isfinite(mean_t).all()) or not bool((std_t > 0).all()):
            raise IrepaError("latent statistics need finite means and positive standard deviations")
        self.bn.running_mean.copy_(mean_t.to(self.bn.running_mean))
        self.bn.running_var.copy_(std_t.pow(2).to(self.bn.running_var))
        if self.ema_decay is not None:  # the EMA starts as a copy, like the EMA model
            self.ema_mean.copy_(self.bn.running_mean)
            self.ema_var.copy_(self.bn.running_var)

    @torch.no_grad()
    def update_ema(self) -> None:
        """``ema ← decay · ema + (1 − decay) · running`` for the mean and the variance (no-op without ``ema_decay``)."""
        if self.ema_decay is None:
            return
        self.ema_mean.lerp_(self.bn.running_mean, 1.0 - self.ema_decay)
        self.ema_var.lerp_(self.bn.running_var, 1.0 - self.ema_decay)

    def ema_stats(self) -> dict[str, list[float]]:
        """``{"mean", "std"}`` of the averaged statistics (the running ones without ``ema_decay``)."""
        if self.ema_decay is None:
            return self.latent_stats()
        return {"mean": self.ema_mean.double().cpu().tolist(), "std": self.ema_var.double().sqrt().cpu().tolist()}

    def forward(self, latents: torch.Tensor) -> torch.Tensor:
        """Normalize raw VAE latents ``(B, C, h, w)``: batch statistics in train mode, running ones in eval; float32."""
        if latents.ndim != 4 or latents.shape[1] != self.channels:
            raise IrepaError(f"latents must be (B, {self.channels}, h, w), got {tuple(latents.shape)}")
        with torch.autocast(device_type=latents.device.type, enabled=False):
            return self.bn(latents.float())

    def denormalize(self, latents: torch.Tensor) -> torch.Tensor:
        """Training-space latents → raw VAE latents with the running statistics (no eps, as REPA-E samples), float32."""
        mean = self.bn.running_mean.float().view(1, -1, 1, 1)
        std = self.bn.running_var.float().sqrt().view(1, -1, 1, 1)
        with torch.autocast(device_type=latents.device.type, enabled=False):
            return latents.float() * std + mean

    def latent_stats(self) -> dict[str, list[float]]:
        """``{"mean": [...], "std": [...]}`` from the running statistics (std = sqrt(running_var), no eps)."""
        return {
            "mean": self.bn.running_mean.double().cpu().tolist(),
            "std": self.bn.running_var.double().sqrt().cpu().tolist(),
        }

    def normalization(self) -> dict[str, Any]:
        """The per-channel normalization recorded in snapshots (``space.normalization``) to decode samples."""
        return {"kind": "per-channel", **self.latent_stats()}

    def convert_sync(self) -> LatentBatchNorm:
        """Replace the BatchNorm by a ``SyncBatchNorm`` (multi-process training); same keys and statistics."""
        self.bn = nn.SyncBatchNorm.convert_sync_batchnorm(self.bn)
        return self
