"""The ``repa-e`` objective: end-to-end VAE + SiT training with representation alignment (REPA-E, iREPA-E).

REPA-E (Leng et al. 2025) trains the VAE, the SiT and a PatchGAN discriminator together on images. The diffusion
loss alone would collapse the latent space, so it never reaches the VAE; the REPA alignment loss does, through the
SiT *frozen* for that pass. One trainer step is three phases (prior-implementations §7), each with its own AdamW,
clipping and step, on the same micro-batches and the same draws:

1. **VAE** (optimizer ``vae``): posterior of ``x = image / 127.5 − 1``, ``z = mean + std · ε``, reconstruction::

       L_vae = |x − x̂|₁ + w_lpips · LPIPS(x, x̂) + w_kl · KL + w_gan · (−mean D(x̂)) + w_vae_align · align_loss(z)

   ``align_loss(z)`` runs the SiT frozen (eval mode: the latent BatchNorm uses its running statistics, no label
   dropout; ``requires_grad`` off on the SiT and the projectors) on ``bn(z)`` — *not* detached — noised with this
   step's ``t`` / ``noise``, stopping after block ``align.depth``. KL is summed over the latent and averaged over
   images; the GAN term starts at ``gan_start``.
2. **Discriminator** (optimizer ``discriminator``): ``½ (mean relu(1 − D(x)) + mean relu(1 + D(x̂)))`` on the
   image and the *detached* reconstruction of phase 1.
3. **SiT** (optimizer ``model``: SiT + projectors): the denoising loss on ``bn(z.detach())`` (train mode: batch
   statistics, running statistics updated) with the same ``t`` / ``noise`` and label dropout, plus ``λ · align``
   (``align.weight``). ``z.detach()`` is the stop-gradient that keeps the diffusion loss away from the VAE.

So the alignment loss acts twice: on the VAE with weight ``vae_align_weight`` (REPA-E: 1.5) and on the SiT with
``align.weight`` (0.5); the same projectors serve both. Phases 2 and 3 reuse phase 1's latents and
reconstructions, computed before the VAE update, as the official loop does (they are kept in the micro-batch).

**iREPA-E** (irepa's own combination; iREPA publishes no REPA-E code or coefficients): ``align.projector: conv`` and
``align.target_norm: spatial`` change *both* alignment terms, since they share the aligner. The presets keep
REPA-E's weights (0.5 SiT, 1.5 VAE) and iREPA-ldm's γ = 0.6, so the only difference from REPA-E is the projector
and the target normalization.

**Latent normalization**: :class:`~irepa.models.latent_norm.LatentBatchNorm` (``latent_bn``), initialised from the
VAE's latent statistics, ``SyncBatchNorm`` under several processes; its running statistics are averaged with the
EMA decay after every SiT phase (REPA-E EMAs the BatchNorm buffers with the SiT), and snapshots decode with that
average. The EMA covers the SiT only (REPA-E keeps no EMA of the VAE or the discriminator). Snapshots write the
current VAE next to them (``snapshots/vae-<step>/``, a diffusers folder) and name it as their VAE.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import torch
from torch import nn

from irepa.diffusion.losses import denoising_loss, drop_labels, label_drop_mask
from irepa.errors import ConfigError, IrepaError
from irepa.training.alignment import AlignmentTerm, sample_keys
from irepa.training.objectives.base import (
    OBJECTIVES,
    Objective,
    ObjectiveContext,
    OptimizerSpec,
    Phase,
    SnapshotSpec,
    Terms,
)

__all__ = ["RepaEObjective", "RepaESettings"]

_CACHE = "_repae"  # micro-batch key holding phase 1's detached latents and reconstructions for phases 2 and 3


@dataclasses.dataclass(frozen=True)
class RepaESettings:
    """``objective:`` settings of ``repa-e`` (defaults: REPA-E's published recipe, ``configs/l1_lpips_kl_gan.yaml``)."""

    vae: str = "f8d4"
    """VAE architecture (``f8d4``, ``f16d32``, ``tiny``: :data:`irepa.models.vae.VAE_ARCHITECTURES`), used when
    ``vae_weights`` is null (random initialisation, for tests)."""
    vae_weights: str | None = None
    """Initial VAE: a REPA-E VAE folder (``pretrained/sdvae/``: ``NAME.pt`` + ``NAME-latents-stats.pt`` +
    ``NAME-discriminator-ckpt.pt``), a REPA-E ``.pt``, or a diffusers folder."""
    latent_stats: str | None = None
    """Latent statistics for the BatchNorm's initial running statistics: a ``*-latents-stats.pt``. Default: the
    ones beside ``vae_weights``; without any, mean 0 and std 1."""
    discriminator_weights: str | None = None
    """Initial discriminator (REPA-E loads a pretrained one). Default: the one beside ``vae_weights``, else the
    official random initialisation."""
    lpips_vgg_weights: str | None = None
    """torchvision's VGG16 ImageNet state dict (``vgg16-397923af.pth``), for LPIPS."""
    lpips_heads_weights: str | None = None
    """The LPIPS v0.1 vgg heads (``lpips/weights/v0.1/vgg.pth``)."""
    repae_lpips_input_quirk: bool = False
    """Compatibility switch: REPA-E's LPIPS maps its [−1, 1] inputs x → 2x − 1 (prior-implementations §13.13);
    the released E2E-VAEs were tuned with it."""
    l1_weight: float = 1.0
    """Weight of the L1 reconstruction loss (mean over pixels)."""
    lpips_weight: float = 1.0
    """Weight of LPIPS (0 turns it off and needs no weights)."""
    kl_weight: float = 1e-6
    """Weight of the KL term (summed over the latent, averaged over images)."""
    gan_weight: float = 0.1
    """Weight of the generator term −mean D(x̂) (REPA-E: discriminator_weight 0.1 × discriminator_factor 1.0)."""
    gan_start: int = 0
    """Optimizer step from which the GAN terms (generator and discriminator) are on."""
    vae_align_weight: float = 1.5
    """Weight of the alignment loss in the VAE phase (REPA-E ``--vae-align-proj-coeff``)."""
    bn_momentum: float = 0.1
    """Momentum of the latent BatchNorm (REPA-E ``--bn-momentum``)."""
    vae_lr: float | None = None
    """Learning rate of the VAE (default ``optim.lr``)."""
    discriminator_lr: float | None = None
    """Learning rate of the discriminator (default ``optim.lr``)."""

    def __post_init__(self) -> None:
        for name in ("l1_weight", "lpips_weight", "kl_weight", "gan_weight", "vae_align_weight"):
            if getattr(self, name) < 0:
                raise ConfigError(f"objective.{name} must be >= 0, got {getattr(self, name)}")
        if not 0.0 <= self.bn_momentum <= 1.0:
            raise ConfigError(f"objective.bn_momentum must be in [0, 1], got {self.bn_momentum}")
        if self.gan_start < 0:
            raise ConfigError(f"objective.gan_start must be >= 0, got {self.gan_start}")


def _initial_vae(settings: RepaESettings) -> tuple[nn.Module, dict[str, Any] | None, dict[str, torch.Tensor] | None]:
    """The initial VAE (diffusers AutoencoderKL), its latent statistics and discriminator weights, if known."""
    from irepa.models.vae import build_vae, read_official_vae, read_vae_folder_stats

    if settings.vae_weights is None:
        return build_vae(settings.vae), None, None
    path = Path(settings.vae_weights).expanduser()
    if path.is_dir() and (path / "config.json").is_file():
        from irepa.data.vae import load_vae

        return load_vae(str(path)).model, read_vae_folder_stats(path), None
    official = read_official_vae(path)
    return official.model, official.latent_stats, official.discriminator


@OBJECTIVES.register("repa-e")
class RepaEObjective(Objective):
    """REPA-E / iREPA-E (see the module docstring). Build with :meth:`build` from a config."""

    Settings = RepaESettings
    manual_grad_sync = True

    def __init__(self, context: ObjectiveContext, *, vae: nn.Module, sit: nn.Module, sit_kwargs: dict[str, Any],
                 latent_bn: nn.Module, discriminator: nn.Module, lpips: nn.Module | None,
                 alignment: AlignmentTerm | None) -> None:  # fmt: skip
        from irepa.diffusion.paths import get_path
        from irepa.diffusion.time_sampling import get_time_sampler

        super().__init__()
        cfg = context.config
        self.settings: RepaESettings = cfg.objective.settings or RepaESettings()
        self.vae = vae
        self.model = sit
        self.model_name, self.model_kwargs = cfg.model.name, sit_kwargs
        self.latent_bn = latent_bn
        self.discriminator = discriminator
        self.lpips = lpips  # frozen; a submodule so that it moves with the objective, excluded from checkpoints
        self.alignment = alignment
        self.aligner = alignment.aligner if alignment is not None else None
        self.latent_shape = (int(vae.config.latent_channels), *sit.input_size)
        self.path_name = cfg.diffusion.path
        self.path = get_path(cfg.diffusion.path)
        kwargs = dict(cfg.diffusion.time_sampler_kwargs)
        if cfg.diffusion.time_sampler == "lognormal":
            kwargs.setdefault("path", cfg.diffusion.path)
        self.time_sampler = get_time_sampler(cfg.diffusion.time_sampler, **kwargs)
        self.label_dropout = cfg.diffusion.label_dropout
        self.ema_decay = cfg.train.ema_decay
        self.lr = cfg.optim.lr

    # -- construction --------------------------------------------------------------------------------------------------

    @classmethod
    def needs_images(cls, config) -> bool:
        """Always: the VAE encodes the images."""
        return True

    @classmethod
    def build(cls, context: ObjectiveContext) -> RepaEObjective:
        """VAE, SiT on its latents, latent BatchNorm, discriminator, LPIPS and the alignment term."""
        from irepa.models import build_model
        from irepa.models.discriminator import PatchDiscriminator, load_discriminator_state
        from irepa.models.latent_norm import LatentBatchNorm
        from irepa.models.lpips import load_lpips

        cfg, data = context.config, context.data
        settings: RepaESettings = cfg.objective.settings or RepaESettings()
        if data.space != "pixel":
            raise ConfigError(
                "objective repa-e trains the VAE on images: data.images must be an image store and data.latents "
                "empty (stage 2 on cached latents of the tuned VAE is the denoising objective)"
            )
        vae, stats, disc_state = _initial_vae(settings)
        factor = 2 ** (len(vae.config.block_out_channels) - 1)
        size = data.image_size
        if size[0] % factor or size[1] % factor:
            raise ConfigError(f"image size {size[0]}x{size[1]} is not divisible by the VAE's downsampling {factor}")
        channels = int(vae.config.latent_channels)
        kwargs: dict[str, Any] = {
            "input_size": size[0] // factor if size[0] == size[1] else [size[0] // factor, size[1] // factor],
            "in_channels": channels,
            "num_classes": data.num_classes,
            "null_class": True,
            "qk_norm": cfg.model.qk_norm,
            **cfg.model.overrides,
        }
        try:
            sit = build_model(cfg.model.name, **kwargs)
        except IrepaError as exc:
            raise ConfigError(f"model {cfg.model.name!r}: {exc}") from exc
        if settings.latent_stats is not None:
            from irepa.models.official import load_latent_stats

            stats = load_latent_stats(settings.latent_stats)
        stats = stats or {"mean": [0.0] * channels, "std": [1.0] * channels}
        latent_bn = LatentBatchNorm(channels, momentum=settings.bn_momentum, mean=stats["mean"], std=stats["std"],
                                    ema_decay=cfg.train.ema_decay)  # fmt: skip
        distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
        if distributed and torch.distributed.get_world_size() > 1:
            if torch.device(context.device).type != "cuda":
                raise ConfigError(
                    "objective repa-e with several processes needs CUDA devices: its latent BatchNorm becomes a "
                    "SyncBatchNorm, which PyTorch implements for CUDA only; train on one process on the CPU"
                )
            latent_bn.convert_sync()  # global batch statistics, as REPA-E's SyncBatchNorm
        if settings.discriminator_weights is not None:
            disc_state = load_discriminator_state(settings.discriminator_weights)
        discriminator = PatchDiscriminator()
        if disc_state is not None:
            from irepa.models.io import load_state_dict_checked

            load_state_dict_checked(discriminator, disc_state, what="the initial discriminator weights")
        lpips = None
        if settings.lpips_weight > 0:
            lpips = load_lpips(vgg=settings.lpips_vgg_weights, heads=settings.lpips_heads_weights,
                               repae_input_quirk=settings.repae_lpips_input_quirk)  # fmt: skip
        alignment = context.alignment_term(sit)
        objective = cls(context, vae=vae.train(), sit=sit, sit_kwargs=dict(sit.config), latent_bn=latent_bn,
                        discriminator=discriminator, lpips=lpips, alignment=alignment)  # fmt: skip
        return objective.to(context.device)

    # -- declarations --------------------------------------------------------------------------------------------------

    def trained_modules(self) -> dict[str, nn.Module]:
        """``model`` (SiT), ``latent_bn``, ``aligner`` (with alignment), ``vae``, ``discriminator``."""
        modules: dict[str, nn.Module] = {"model": self.model, "latent_bn": self.latent_bn}
        if self.aligner is not None:
            modules["aligner"] = self.aligner
        modules["vae"] = self.vae
        modules["discriminator"] = self.discriminator
        return modules

    def ema_modules(self) -> tuple[str, ...]:
        """The SiT only, as REPA-E (its BatchNorm statistics are averaged by ``latent_bn`` itself)."""
        return ("model",)

    def optimizers(self) -> dict[str, OptimizerSpec]:
        """``vae``, ``discriminator`` and ``model`` (SiT + projectors), in the order of the phases' updates."""
        s = self.settings
        sit_params = [*self.model.parameters(), *(self.aligner.parameters() if self.aligner is not None else [])]
        return {
            "vae": OptimizerSpec(list(self.vae.parameters()), lr=s.vae_lr),
            "discriminator": OptimizerSpec(list(self.discriminator.parameters()), lr=s.discriminator_lr),
            "model": OptimizerSpec([p for p in sit_params if p.requires_grad]),
        }

    def phases(self) -> list[Phase]:
        """VAE step, discriminator step, SiT step (see the module docstring)."""
        return [Phase("vae", self.vae_phase, "vae"),
                Phase("discriminator", self.discriminator_phase, "disc", active=self.gan_active),
                Phase("model", self.sit_phase, "sit")]  # fmt: skip

    def gan_active(self, step: int) -> bool:
        """Whether the GAN terms (generator term, discriminator phase) are on at optimizer step ``step``."""
        return self.settings.gan_weight > 0 and step >= self.settings.gan_start

    def snapshot(self) -> SnapshotSpec:
        """The EMA SiT, velocity on ``diffusion.path``."""
        return SnapshotSpec("model", self.model_name, self.model_kwargs, {"path": self.path_name})

    def snapshot_space(self, snapshot_path: Path) -> dict[str, Any]:
        """Write the current VAE beside the snapshot and describe the latent space it decodes with."""
        from irepa.models.vae import save_vae_folder

        stats = self.latent_bn.ema_stats()
        folder = snapshot_path.with_name(snapshot_path.name.replace("ema-", "vae-").removesuffix(".safetensors"))
        save_vae_folder(self.vae, folder, latent_stats=stats, source={"snapshot": snapshot_path.name})
        h, w = self.latent_shape[1:]
        factor = 2 ** (len(self.vae.config.block_out_channels) - 1)
        return {
            "kind": "latent",
            "vae": str(folder.resolve()),
            "normalization": {"kind": "per-channel", **stats},
            "channels": self.latent_shape[0],
            "size": [h, w],
            "image_size": [h * factor, w * factor],
        }

    def describe(self) -> list[str]:
        """VAE, BatchNorm, discriminator, loss weights."""
        s = self.settings
        n_vae = sum(p.numel() for p in self.vae.parameters()) / 1e6
        return [
            f"objective repa-e: VAE {s.vae_weights or s.vae} ({n_vae:.1f}M, latents {self.latent_shape}), "
            f"PatchGAN discriminator, LPIPS {'off' if self.lpips is None else 'on'}"
            + (" (REPA-E input quirk)" if s.repae_lpips_input_quirk else ""),
            f"  VAE loss: L1 x{s.l1_weight} + LPIPS x{s.lpips_weight} + KL x{s.kl_weight} + GAN x{s.gan_weight} "
            f"(from step {s.gan_start}) + align x{s.vae_align_weight} through the frozen SiT; latent BatchNorm "
            f"momentum {s.bn_momentum}",
        ]

    # -- per step ------------------------------------------------------------------------------------------------------

    def draw(self, global_batch: int, generator: torch.Generator, device: torch.device) -> dict[str, torch.Tensor]:
        """``t`` (G,), ``noise`` (G, C, h, w), ``drop`` (G,) label dropout, ``eps`` (G, C, h, w) posterior sample."""
        shape = (global_batch, *self.latent_shape)
        return {
            "t": self.time_sampler(global_batch, generator=generator, device=device),
            "noise": torch.randn(shape, generator=generator, device=device),
            "drop": label_drop_mask(global_batch, self.label_dropout, generator=generator, device=device),
            "eps": torch.randn(shape, generator=generator, device=device),
        }

    def _hidden(self, x0: torch.Tensor, y: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """SiT tokens after block ``align.depth`` for ``x_t``; later blocks are not run (REPA-E's ``align_only``)."""
        sit = self.model
        x_t = self.path.sample(x0, noise, t).x_t
        tokens = sit.x_embedder(x_t) + sit.pos_embed.to(x_t.dtype)  # (B, T, D), as SiT.forward
        c = sit.embed_condition(t, y)
        for block in sit.blocks[: self.alignment.depth]:
            tokens = block(tokens, c)
        return tokens

    def vae_phase(self, batch: dict[str, torch.Tensor], draws: dict[str, torch.Tensor], step: int) -> Terms:
        """Phase 1: reconstruction, perceptual, KL, GAN and VAE-alignment losses; caches z and x̂ for phases 2-3."""
        from irepa.models.discriminator import generator_hinge_loss

        s = self.settings
        x = batch["image"].float() / 127.5 - 1.0  # (B, 3, H, W) in [-1, 1]
        with self.autocast():
            posterior = self.vae.encode(x).latent_dist
            z = posterior.mean + posterior.std * draws["eps"].to(posterior.mean.dtype)  # (B, C, h, w)
            recon = self.vae.decode(z).sample
        z, recon = z.float(), recon.float()
        targets = None
        if self.alignment is not None and self.alignment.active(step):
            targets = self.alignment.targets(batch["image"], autocast=self.autocast(), keys=sample_keys(batch))
        batch[_CACHE] = {"z": z.detach(), "recon": recon.detach(), "targets": targets}

        terms: Terms = {"l1": (x - recon).abs().mean()}
        loss = s.l1_weight * terms["l1"]
        if self.lpips is not None:
            terms["lpips"] = self.lpips(x, recon).mean()
            loss = loss + s.lpips_weight * terms["lpips"]
        mean, logvar = posterior.mean.float(), posterior.logvar.float()
        terms["kl"] = 0.5 * (mean.pow(2) + logvar.exp() - 1.0 - logvar).sum(dim=(1, 2, 3)).mean()
        loss = loss + s.kl_weight * terms["kl"]
        if self.gan_active(step):
            self.discriminator.requires_grad_(False)  # the generator term trains the VAE only
            try:
                with self.autocast():
                    logits = self.discriminator(recon)
                terms["gan"] = generator_hinge_loss(logits)
            finally:
                self.discriminator.requires_grad_(True)
            loss = loss + s.gan_weight * terms["gan"]
        if targets is not None and s.vae_align_weight > 0:
            # The frozen SiT: eval mode (running BatchNorm statistics, no label dropout), no parameter gradients.
            frozen = [self.model, self.latent_bn, self.aligner]
            modes = [m.training for m in frozen]
            for module in frozen:
                module.eval().requires_grad_(False)
            try:
                x0 = self.latent_bn(z)
                with self.autocast():
                    tokens = self._hidden(x0, batch["label"], draws["t"], draws["noise"])
                    align = self.alignment(tokens, targets, grid=self.model.grid, step=step, aligner=self.aligner)
            finally:
                for module, mode in zip(frozen, modes):
                    module.train(mode).requires_grad_(True)
            terms["align_loss"] = align["align_loss"]
            terms["align_cos"] = align["align_cos"]
            loss = loss + s.vae_align_weight * align["align_loss"]
        terms["loss"] = loss
        return terms

    def discriminator_phase(self, batch: dict[str, torch.Tensor], draws: dict[str, torch.Tensor], step: int) -> Terms:
        """Phase 2: hinge loss on the images and phase 1's detached reconstructions."""
        from irepa.models.discriminator import hinge_d_loss

        cache = _cached(batch)
        x = batch["image"].float() / 127.5 - 1.0
        with self.autocast():
            logits_real = self.discriminator(x)
            logits_fake = self.discriminator(cache["recon"])
        d_loss = hinge_d_loss(logits_real, logits_fake)  # the phase only runs from gan_start (Phase.active)
        return {
            "loss": d_loss,
            "d_loss": d_loss.detach(),
            "logits_real": logits_real.detach().float().mean(),
            "logits_fake": logits_fake.detach().float().mean(),
        }

    def sit_phase(self, batch: dict[str, torch.Tensor], draws: dict[str, torch.Tensor], step: int) -> Terms:
        """Phase 3: denoising + alignment on the detached latents (BatchNorm in train mode)."""
        cache = _cached(batch)
        x0 = self.latent_bn(cache["z"])  # z is detached: the diffusion loss never reaches the VAE
        self.latent_bn.update_ema()
        y = drop_labels(batch["label"], draws["drop"], self.model.null_label)
        targets = cache["targets"]
        with self.autocast():
            result = denoising_loss(self.model, self.path, x0, y, t=draws["t"], noise=draws["noise"],
                                    return_hidden=self.alignment.depth if targets is not None else None)  # fmt: skip
            terms: Terms = {"denoise": result.denoise}
            loss = result.denoise
            if targets is not None:
                align = self.alignment(result.hidden, targets, grid=self.model.grid, step=step, aligner=self.aligner)
                terms.update(align)
                loss = loss + align["align"]
        del batch[_CACHE]
        terms["loss"] = loss
        return terms


def _cached(batch: dict[str, Any]) -> dict[str, Any]:
    if _CACHE not in batch:
        raise IrepaError("repa-e phases ran out of order: the VAE phase must run first on every micro-batch")
    return batch[_CACHE]
