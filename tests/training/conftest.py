"""Tiny stores and configs for the trainer tests (built once per test session / xdist worker)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

# A 2-block, 64-wide SiT: a few ms per step on one CPU core.
TINY_MODEL = "model.overrides={depth: 2, hidden_size: 64, num_heads: 2}"


def _write_folder(root: Path, size: int, per_class: int, classes: int = 4) -> Path:
    """Seeded toy images: a coloured square on a tinted background, one colour channel per class."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for c in range(classes):
        folder = root / f"class{c}"
        folder.mkdir(parents=True)
        for i in range(per_class):
            img = np.zeros((size, size, 3), np.uint8) + rng.integers(0, 60, (1, 1, 3), dtype=np.uint8)
            side = size // 3
            x, y = rng.integers(0, size - side, 2)
            img[y : y + side, x : x + side, c % 3] = 220
            Image.fromarray(img).save(folder / f"{i:03d}.png")
    return root


@pytest.fixture(scope="session")
def write_image_folder():
    """``write_image_folder(root, size, per_class, classes=4)`` → ``root`` holding seeded toy class folders.

    A fixture rather than ``from conftest import ...``: with several conftest modules, which one a bare
    ``import conftest`` finds depends on the test order (it failed under xdist).
    """
    return _write_folder


@pytest.fixture(scope="session")
def pixel_store(tmp_path_factory) -> Path:
    """Image store: 64 images of 32 px, 4 classes."""
    from irepa.data.prepare import prepare_folder_store

    root = tmp_path_factory.mktemp("pixel")
    _write_folder(root / "folder", 32, 16)
    prepare_folder_store(root / "folder", root / "store", resolution=32, crop="resize", shard_size=40)
    return root / "store"


@pytest.fixture(scope="session")
def latent_stores(tmp_path_factory) -> tuple[Path, Path]:
    """(image store, latent store): 8 images of 64 px and their tiny-random-VAE latents (4 x 8 x 8)."""
    from irepa.data.encode import encode_latent_store
    from irepa.data.prepare import prepare_folder_store
    from irepa.data.vae import load_vae, save_random_vae

    root = tmp_path_factory.mktemp("latent")
    _write_folder(root / "folder", 64, 2)
    prepare_folder_store(root / "folder", root / "images", resolution=64, crop="resize", shard_size=20)
    vae_dir = save_random_vae(root / "vae")
    # A random VAE's posterior std is ~1 (latents would be mostly noise); a trained SD-VAE's is small. Shift the
    # log-variance half of quant_conv's bias so the latents are (nearly) deterministic, like real ones.
    from diffusers import AutoencoderKL

    model = AutoencoderKL.from_pretrained(str(vae_dir))
    with torch.no_grad():
        channels = model.quant_conv.bias.shape[0] // 2
        model.quant_conv.bias[channels:] -= 8.0
    model.save_pretrained(str(vae_dir))
    vae = load_vae(str(vae_dir))
    encode_latent_store(root / "images", root / "latents", vae, batch_size=16)
    return root / "images", root / "latents"


def _pixel_overrides(store: Path, *extra: str) -> list[str]:
    """Pixel space, 32 px, tiny SiT-S/4 (8x8 tokens), HOG teacher at 128 px (8x8 targets), fp32, no workers."""
    return [
        "data.space=pixel",
        f"data.images={store}",
        "data.latents=null",
        "data.num_workers=0",
        "model.name=SiT-S/4",
        TINY_MODEL,
        "align.encoders=[hog]",
        "align.depth=1",
        "align.projector=conv",
        "align.target_norm=spatial",
        "teacher.resolution=128",
        "optim.global_batch_size=8",
        "optim.lr=1e-3",
        "train.precision=fp32",
        "train.max_steps=8",
        "train.log_every_steps=2",
        "train.checkpoint_every_steps=4",
        "train.snapshot_every_steps=0",
        "train.keep_last=3",
        "logging.tensorboard=false",
        "logging.progress_bar=false",
        *extra,
    ]


def _latent_overrides(stores: tuple[Path, Path], *extra: str) -> list[str]:
    """Latent space (4x8x8 per-channel normalized), tiny SiT-S/2 (4x4 tokens), HOG teacher at 64 px (4x4)."""
    images, latents = stores
    return _pixel_overrides(
        images,
        "data.space=latent",
        f"data.latents={latents}",
        "data.latent_norm=per-channel",
        "model.name=SiT-S/2",
        "teacher.resolution=null",
        *extra,
    )


@pytest.fixture(scope="session")
def pixel_overrides():
    """``pixel_overrides(store, *extra)`` → config overrides of the tiny pixel-space run."""
    return _pixel_overrides


@pytest.fixture(scope="session")
def latent_overrides():
    """``latent_overrides((images, latents), *extra)`` → config overrides of the tiny latent-space run."""
    return _latent_overrides
