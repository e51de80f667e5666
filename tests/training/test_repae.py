"""The ``repa-e`` objective: gradient routing of its three phases, the latent BatchNorm, snapshots and export."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from irepa.training.config import resolve_config
from irepa.training.trainer import Trainer


@pytest.fixture(scope="session")
def lpips_files(tmp_path_factory) -> tuple[Path, Path]:
    """Stand-in LPIPS weights in the official formats (torchvision VGG16 trunk keys; LPIPS v0.1 heads)."""
    from torchvision.models.vgg import cfgs, make_layers

    from irepa.models.lpips import LPIPS_CHANNELS

    root = tmp_path_factory.mktemp("lpips")
    torch.manual_seed(0)
    trunk = make_layers(cfgs["D"]).state_dict()
    torch.save({f"features.{k}": v for k, v in trunk.items()}, root / "vgg16.pth")
    torch.save(
        {f"lin{i}.model.1.weight": torch.rand(1, c, 1, 1) for i, c in enumerate(LPIPS_CHANNELS)}, root / "vgg.pth"
    )
    return root / "vgg16.pth", root / "vgg.pth"


def repae_overrides(store: Path, lpips: tuple[Path, Path], *extra: str) -> list[str]:
    """The ci-repae preset on the 32-px test store: tiny VAE (4x4x4 latents), SiT-S/1 (4x4 tokens), HOG teacher."""
    return [
        f"data.images={store}",
        f"objective.lpips_vgg_weights={lpips[0]}",
        f"objective.lpips_heads_weights={lpips[1]}",
        "logging.progress_bar=false",
        *extra,
    ]


@pytest.fixture
def trainer(tmp_path, pixel_store, lpips_files):
    cfg = resolve_config(preset="ci-repae", overrides=repae_overrides(pixel_store, lpips_files))
    return Trainer(cfg, tmp_path / "run")


def _batch_and_draws(trainer):
    batch = next(trainer.data.iterator())
    batch = {k: v.to(trainer.device) for k, v in batch.items()}
    draws = trainer.objective.draw(trainer.config.optim.global_batch_size, trainer.generator, trainer.device)
    return batch, draws


def _grads(loss, params):
    grads = torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True)
    return [torch.zeros_like(p) if g is None else g for p, g in zip(params, grads)]


def test_phases_route_gradients_as_repae(trainer):
    obj = trainer.objective
    batch, draws = _batch_and_draws(trainer)
    vae_params = list(obj.vae.parameters())
    encoder_params = [p for n, p in obj.vae.named_parameters() if n.startswith(("encoder.", "quant_conv."))]
    sit_params = [*obj.model.parameters(), *obj.aligner.parameters()]
    sit_before = [p.detach().clone() for p in sit_params]
    bn_before = {k: v.clone() for k, v in obj.latent_bn.state_dict().items()}

    # Phase 1 (VAE): the alignment term reaches the VAE (its encoder) through the frozen SiT ...
    terms = obj.vae_phase(batch, draws, step=0)
    assert {"l1", "lpips", "kl", "gan", "align_loss", "loss"} <= set(terms)
    align_grads = _grads(terms["align_loss"], encoder_params)
    assert sum(g.abs().sum() for g in align_grads) > 0
    terms["loss"].backward()
    # ... and leaves the SiT, its projectors and the BatchNorm statistics untouched (no gradients, same values).
    assert all(p.grad is None for p in sit_params)
    assert all(torch.equal(a, b.detach()) for a, b in zip(sit_before, sit_params))
    assert all(torch.equal(bn_before[k], v) for k, v in obj.latent_bn.state_dict().items())
    assert all(p.requires_grad for p in sit_params) and obj.model.training  # restored for the SiT phase
    assert all(p.grad is not None for p in encoder_params)
    for p in vae_params:
        p.grad = None

    # Phase 2 (discriminator): hinge on the detached reconstruction; nothing reaches the VAE.
    terms = obj.discriminator_phase(batch, draws, step=0)
    terms["loss"].backward()
    assert all(p.grad is None for p in vae_params)
    assert sum(p.grad.abs().sum() for p in obj.discriminator.parameters()) > 0

    # Phase 3 (SiT): the diffusion loss gives exactly zero gradient to every VAE parameter.
    terms = obj.sit_phase(batch, draws, step=0)
    assert all(g.abs().sum() == 0 for g in _grads(terms["denoise"], vae_params))
    assert all(g.abs().sum() == 0 for g in _grads(terms["loss"], vae_params))
    terms["loss"].backward()
    assert all(p.grad is None for p in vae_params)
    assert all(p.grad is not None for p in obj.model.parameters())
    # The BatchNorm ran in train mode: running statistics moved towards this batch's latents.
    assert not torch.equal(bn_before["bn.running_mean"], obj.latent_bn.bn.running_mean)
    assert int(obj.latent_bn.bn.num_batches_tracked) == 1


def test_train_steps_update_bn_and_the_snapshot_decodes_with_its_statistics(tmp_path, pixel_store, lpips_files):
    from irepa.data.latents import LatentNormalization
    from irepa.models.io import read_inference_metadata

    overrides = repae_overrides(pixel_store, lpips_files, "train.max_steps=2", "train.checkpoint_every_steps=0")
    trainer = Trainer(resolve_config(preset="ci-repae", overrides=overrides), tmp_path / "run")
    obj = trainer.objective
    initial = obj.latent_bn.ema_stats()
    result = trainer.fit()
    assert result.status == "completed"
    meta = read_inference_metadata(result.snapshot)
    space = meta["space"]
    assert space["kind"] == "latent" and Path(space["vae"]).name == f"vae-{result.step:07d}"
    assert (Path(space["vae"]) / "config.json").is_file()
    stats = obj.latent_bn.ema_stats()
    assert stats != initial  # the running statistics moved and their average with them
    norm = LatentNormalization.from_dict(space["normalization"])
    x = torch.randn(2, 4, 4, 4)
    expected = x * torch.tensor(stats["std"]).view(1, 4, 1, 1).float() + torch.tensor(stats["mean"]).view(1, 4, 1, 1)
    torch.testing.assert_close(norm.denormalize(x), expected.float())
