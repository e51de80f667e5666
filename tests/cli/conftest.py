"""Fixtures shared by the CLI tests: the CI preset's stores, made once per test session (per xdist worker)."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def ci_stores(tmp_path_factory):
    """A 32-image synthetic store at 64 px and its latents from a tiny random VAE, made with the real CLI."""
    from irepa.cli.main import main
    from irepa.data.vae import save_random_vae

    root = tmp_path_factory.mktemp("ci")
    vae = save_random_vae(root / "vae")
    assert (
        main(
            [
                "data",
                "prepare",
                "--synthetic",
                "32",
                "--num-classes",
                "4",
                "--resolution",
                "64",
                "--out",
                str(root / "images"),
                "--quiet",
            ]
        )
        == 0
    )
    assert (
        main(
            [
                "data",
                "encode",
                "--store",
                str(root / "images"),
                "--vae",
                str(vae),
                "--out",
                str(root / "latents"),
                "--batch-size",
                "16",
                "--quiet",
            ]
        )
        == 0
    )
    return [f"data.images={root / 'images'}", f"data.latents={root / 'latents'}"]


@pytest.fixture(scope="session")
def ci_vae(ci_stores):
    """The tiny random VAE folder the CI latents were encoded with (written by ``ci_stores``)."""
    return Path(ci_stores[0].split("=", 1)[1]).parent / "vae"
