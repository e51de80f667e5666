import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from irepa.data.encode import assign_shards, encode_latent_store, finalize_latent_store
from irepa.data.prepare import prepare_folder_store
from irepa.data.store import open_store
from irepa.data.vae import load_vae, save_random_vae
from irepa.errors import IrepaError

SRC = Path(__file__).resolve().parents[2] / "src"


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    base = tmp_path_factory.mktemp("encode")
    rng = np.random.default_rng(0)
    for c in ("a", "b", "c"):
        (base / "imgs" / c).mkdir(parents=True)
        for i in range(3 + (c == "b")):
            Image.fromarray(rng.integers(0, 256, (36, 40, 3), dtype=np.uint8)).save(base / "imgs" / c / f"{i}.png")
    prepare_folder_store(base / "imgs", base / "images", resolution=32, shard_size=4, workers=1)
    vae_dir = save_random_vae(base / "vae", seed=0)
    return base, load_vae("stabilityai/sd-vae-ft-mse", weights=vae_dir)


def test_encode_content_flip_labels_and_stats(setup, tmp_path):
    base, vae = setup
    report = encode_latent_store(base / "images", tmp_path / "lat", vae, batch_size=3, flip=True)
    assert report.finalized and report.count == 10 and report.shards_written == 3
    images, latents = open_store(base / "images"), open_store(tmp_path / "lat", kind="latents")
    assert latents.keys() == images.keys()
    m = latents.manifest
    assert m["vae"]["id"] == "stabilityai/sd-vae-ft-mse" and m["vae"]["encoder_sha256"] == vae.encoder_sha256()
    assert (m["dtype"], m["encoder_dtype"], m["moments"], m["flip"]) == (
        "float32",
        "float32",
        "mean_std",
        "also-flipped",
    )
    assert m["latent_shape"] == [4, 4, 4] and m["resolution"] == 32 and m["crop"] == "adm"
    assert m["source"]["fingerprint"] == images.fingerprint and m["source"]["manifest_sha256"] == images.manifest_sha256
    assert m["class_names"] == ["a", "b", "c"] and m["fields"]["moments"] == {"dtype": "float32", "shape": [8, 4, 4]}
    all_moments = []
    for i in range(10):
        pixels = torch.from_numpy(images.read("images", i)).permute(2, 0, 1)[None]
        mean, std = vae.encode_moments(pixels)
        np.testing.assert_allclose(latents.read("moments", i), torch.cat([mean, std], 1)[0], atol=1e-5)
        mean_f, std_f = vae.encode_moments(pixels.flip(3))
        np.testing.assert_allclose(latents.read("moments_flip", i), torch.cat([mean_f, std_f], 1)[0], atol=1e-5)
        assert int(latents.read("labels", i)) == int(images.read("labels", i))
        all_moments += [latents.read("moments", i), latents.read("moments_flip", i)]
    # Reference statistics with plain numpy: z = mean + std * eps has Var(z) = Var(mean) + E[std^2] per channel.
    stacked = np.stack(all_moments).astype(np.float64)
    means, stds = stacked[:, :4], stacked[:, 4:]
    ref_mean = means.mean(axis=(0, 2, 3))
    ref_std = np.sqrt(means.var(axis=(0, 2, 3)) + (stds**2).mean(axis=(0, 2, 3)))
    stats = m["latent_stats"]
    np.testing.assert_allclose(stats["mean"], ref_mean, rtol=1e-10)
    np.testing.assert_allclose(stats["std"], ref_std, rtol=1e-10)
    np.testing.assert_allclose(stats["posterior_mean_std"], means.std(axis=(0, 2, 3)), rtol=1e-10)
    assert stats["count"] == 20 * 16 and stats["includes_flipped"]
    # Sampled, per-channel-normalized latents are standardized (the purpose of the statistics).
    from irepa.data.latents import latent_normalization, sample_latents

    norm = latent_normalization("per-channel", latents)
    z = norm.normalize(sample_latents(torch.from_numpy(stacked.repeat(50, 0)), torch.Generator().manual_seed(0)))
    assert z.mean(dim=(0, 2, 3)).abs().max() < 0.05 and (z.std(dim=(0, 2, 3)) - 1).abs().max() < 0.05


def test_float16_storage(setup, tmp_path):
    base, vae = setup
    encode_latent_store(base / "images", tmp_path / "lat16", vae, batch_size=8, dtype="float16")
    latents = open_store(tmp_path / "lat16")
    assert latents.manifest["dtype"] == "float16" and latents.read("moments", 0).dtype == np.float16
    assert not latents.has_field("moments_flip") and latents.manifest["flip"] == "none"
    assert latents.manifest["latent_stats"]["includes_flipped"] is False
    with pytest.raises(IrepaError, match="stored dtype 'bfloat16'"):
        encode_latent_store(base / "images", tmp_path / "x", vae, dtype="bfloat16")


def test_resume_after_crash_and_settings_mismatch(setup, tmp_path):
    base, vae = setup
    encode_latent_store(base / "images", tmp_path / "clean", vae, batch_size=4)
    clean = open_store(tmp_path / "clean")
    out = tmp_path / "crashed"
    encode_latent_store(base / "images", out, vae, batch_size=4)
    (out / "manifest.json").unlink()
    (out / "build.json").write_text(json.dumps(clean.manifest["build"]))
    (out / "shard-00002.json").unlink()
    (out / ".shard-00002.moments.npy.zz.tmp").write_bytes(b"partial")
    report = encode_latent_store(base / "images", out, vae, batch_size=4)
    assert (report.shards_written, report.shards_reused) == (1, 2)
    assert open_store(out).fingerprint == clean.fingerprint
    assert encode_latent_store(base / "images", out, vae).already_complete
    with pytest.raises(IrepaError, match=r"dtype was \"float32\", now \"float16\""):
        encode_latent_store(base / "images", out, vae, dtype="float16")


def test_rank_split_and_finalize(setup, tmp_path):
    base, vae = setup
    assert assign_shards(7, 0, 3) == [0, 3, 6] and assign_shards(7, 2, 3) == [2, 5]
    assert sorted(s for r in range(3) for s in assign_shards(7, r, 3)) == list(range(7))
    with pytest.raises(IrepaError, match="rank 3 is not in"):
        assign_shards(7, 3, 3)
    encode_latent_store(base / "images", tmp_path / "one", vae, batch_size=4)
    out = tmp_path / "two"
    r1 = encode_latent_store(base / "images", out, vae, batch_size=4, rank=1, world_size=2, finalize=False)
    assert r1.shards_written == 1 and not (out / "manifest.json").exists()
    with pytest.raises(IrepaError, match=r"missing shards shard-00000, shard-00002; re-run irepa data encode"):
        finalize_latent_store(base / "images", out)
    encode_latent_store(base / "images", out, vae, batch_size=4, rank=0, world_size=2, finalize=False)
    manifest = finalize_latent_store(base / "images", out)
    assert manifest["fingerprint"] == open_store(tmp_path / "one").fingerprint


def test_non_finite_output_and_bad_sources(setup, tmp_path, monkeypatch):
    base, vae = setup
    monkeypatch.setattr(vae, "encode_moments", lambda x: (torch.full((len(x), 4, 4, 4), float("nan")),) * 2)
    with pytest.raises(IrepaError, match=r"non-finite moments in shard-00000 \(images 0..3\)"):
        encode_latent_store(base / "images", tmp_path / "nan", vae, batch_size=4)
    monkeypatch.undo()
    with pytest.raises(IrepaError, match="does not exist"):
        encode_latent_store(tmp_path / "nope", tmp_path / "x", vae)
    partial = tmp_path / "partial"
    shutil.copytree(base / "images", partial)
    (partial / "manifest.json").unlink()
    (partial / "build.json").write_text("{}")
    with pytest.raises(IrepaError, match="is incomplete"):
        encode_latent_store(partial, tmp_path / "x", vae)


@pytest.mark.slow
def test_two_process_torchrun_encode_matches_one_process(setup, tmp_path):
    base, vae = setup
    encode_latent_store(base / "images", tmp_path / "one", vae, batch_size=4)
    env = {**os.environ, "PYTHONPATH": str(SRC), "OMP_NUM_THREADS": "1"}
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "-m",
        "irepa",
        "data",
        "encode",
        "--store",
        str(base / "images"),
        "--out",
        str(tmp_path / "two"),
        "--vae",
        "stabilityai/sd-vae-ft-mse",
        "--vae-weights",
        str(base / "vae"),
        "--batch-size",
        "4",
        "--device",
        "cpu",
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "complete, 10 records" in proc.stdout
    assert open_store(tmp_path / "two").fingerprint == open_store(tmp_path / "one").fingerprint
