"""``irepa export-vae``: the VAE of an end-to-end run's checkpoint → a diffusers folder that ``data encode`` takes."""

from __future__ import annotations

import json

import pytest
import torch

from irepa.errors import IrepaError


def test_exported_vae_encodes_a_store_that_normalizes_with_the_run_statistics(tmp_path, run_cli):
    from irepa.data.latents import latent_normalization
    from irepa.data.prepare import prepare_synthetic_store
    from irepa.data.store import open_store
    from irepa.models.latent_norm import LatentBatchNorm
    from irepa.models.vae import build_vae
    from irepa.training.checkpoint import CheckpointManager

    vae = build_vae("tiny", seed=0)
    bn = LatentBatchNorm(4, mean=[0.5, 0.0, -0.5, 1.0], std=[1.0, 2.0, 3.0, 4.0], ema_decay=0.9)
    bn.bn.running_var.mul_(4.0)  # the running statistics moved; the averaged ones (what is exported) did not
    CheckpointManager(tmp_path / "run" / "checkpoints").save(
        3, tensors={"vae": vae.state_dict(), "latent_bn": bn.state_dict()}, objects={"trainer": {"step": 3}}
    )
    res = run_cli("export-vae", tmp_path / "run", "--out", tmp_path / "vae")
    assert res.code == 0 and "wrote the VAE of step 3" in res.out, res
    stats = json.loads((tmp_path / "vae" / "irepa_latent_stats.json").read_text())
    assert stats["std"] == [1.0, 2.0, 3.0, 4.0] and stats["source"]["step"] == 3

    prepare_synthetic_store(tmp_path / "images", num_images=4, resolution=32, num_classes=2)
    args = ["--store", tmp_path / "images", "--vae", tmp_path / "vae", "--out", tmp_path / "latents", "--quiet"]
    res = run_cli("data", "encode", *args)
    assert res.code == 0, res
    store = open_store(tmp_path / "latents")
    assert store.manifest["vae"]["latent_stats"] == {"mean": [0.5, 0.0, -0.5, 1.0], "std": [1.0, 2.0, 3.0, 4.0]}
    norm = latent_normalization("vae-stats", store)
    assert norm.bias == (0.5, 0.0, -0.5, 1.0) and norm.scale == (1.0, 0.5, 1 / 3, 0.25)
    with torch.no_grad():  # the exported weights are the checkpoint's
        from irepa.data.vae import load_vae

        loaded = load_vae(str(tmp_path / "vae")).model
        assert all(torch.equal(a, b) for a, b in zip(vae.state_dict().values(), loaded.state_dict().values()))


def test_export_needs_an_end_to_end_checkpoint(tmp_path, run_cli):
    from irepa.training.checkpoint import CheckpointManager
    from irepa.training.export import export_vae

    res = run_cli("export-vae", tmp_path, "--out", tmp_path / "vae")
    assert res.code == 2 and "has no checkpoints" in res.err and len(res.err.strip().splitlines()) == 1
    CheckpointManager(tmp_path / "checkpoints").save(1, tensors={"model": {"w": torch.zeros(1)}}, objects={})
    with pytest.raises(IrepaError, match="holds no VAE"):
        export_vae(tmp_path, tmp_path / "vae")
