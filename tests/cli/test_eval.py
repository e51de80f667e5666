"""``irepa eval``: the ADM protocol with random Inception weights from a local file, ``eval ref``, ``eval fd``."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from irepa.metrics.generative.inception import random_inception_state_dict
from irepa.utils.io import sha256_file


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    path = tmp_path_factory.mktemp("inception") / "weights-inception-2015-12-05-6726825d.pth"
    torch.save(random_inception_state_dict(seed=0), path)
    return path


@pytest.fixture
def no_weights_env(monkeypatch, tmp_path):
    """No Inception weights anywhere: env var unset, torch hub cache pointed at an empty folder."""
    monkeypatch.delenv("IREPA_INCEPTION_WEIGHTS", raising=False)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))


def images(n, size=8, seed=0, offset=0):
    rng = np.random.default_rng(seed)
    return np.clip(
        rng.integers(0, 220, (n, 1, 1, 3)) + rng.integers(0, 36, (n, size, size, 3)) + offset, 0, 255
    ).astype(np.uint8)


def test_sample_then_eval_ref_then_eval(run_cli, tmp_path, weights):
    """The whole chain in CI: irepa sample (tiny SiT) → irepa eval ref → irepa eval (random Inception weights)."""
    from test_sample import base_args, tiny_snapshot

    snap = tiny_snapshot(tmp_path / "tiny.safetensors")
    samples = tmp_path / "samples.npz"
    res = run_cli(*base_args(snap, samples)[:4], "16", *base_args(snap, samples)[5:])
    assert res.code == 0, res
    np.savez(tmp_path / "ref_images.npz", images(12))
    ref = tmp_path / "ref.npz"
    res = run_cli("eval", "ref", "--npz", tmp_path / "ref_images.npz", "--out", ref, "--keep-images", "10",
                  "--inception-weights", weights, "--no-progress")  # fmt: skip
    assert res.code == 0, res
    assert "statistics of 12 images (8x8), 10 stored as arr_0" in res.out
    with np.load(ref) as z:
        assert {"mu", "sigma", "mu_s", "sigma_s", "arr_0"} <= set(z.files)
        assert z["mu"].shape == (2048,) and z["sigma_s"].shape == (2023, 2023) and z["arr_0"].shape == (10, 8, 8, 3)

    out = tmp_path / "result.json"
    res = run_cli("eval", samples, "--ref", ref, "--inception-weights", weights, "--out", out, "--no-progress")
    assert res.code == 0, res
    lines = res.out.strip().splitlines()
    assert [line.split(":")[0] for line in lines] == ["Inception Score", "FID", "sFID", "Precision", "Recall"]
    result = json.loads(out.read_text())
    metrics = result["metrics"]
    assert all(np.isfinite(metrics[k]) for k in ("inception_score", "fid", "sfid", "precision", "recall"))
    assert result["reference"]["sha256"] == sha256_file(ref)
    assert result["reference"]["pool_features"] == "cached"
    assert result["evaluator"]["weights_sha256"] == sha256_file(weights)
    assert result["evaluator"]["version"].startswith("irepa-adm-torch/")
    assert result["recipe"]["sampler"]["name"] == "sde" and result["recipe"]["num_samples"] == 16
    assert result["samples"]["labels"]["num_labels"] == 16
    assert "FID-16" in res.err or any("16 samples" in n for n in result["notes"])


def test_missing_inception_weights(run_cli, tmp_path, no_weights_env):
    np.savez(tmp_path / "s.npz", images(4))
    np.savez(tmp_path / "r.npz", images(4, seed=1))
    res = run_cli("eval", tmp_path / "s.npz", "--ref", tmp_path / "r.npz")
    assert res.code == 2
    assert "Inception weights not found" in res.err and "IREPA_INCEPTION_WEIGHTS" in res.err
    assert len(res.err.strip().splitlines()) == 1


def test_weights_from_environment_variable(run_cli, tmp_path, weights, monkeypatch, no_weights_env):
    np.savez(tmp_path / "s.npz", images(4))
    np.savez(tmp_path / "r.npz", images(4, seed=1))
    monkeypatch.setenv("IREPA_INCEPTION_WEIGHTS", str(weights))
    # Bad input found after the weights resolve: samples larger than the reference images.
    np.savez(tmp_path / "big.npz", images(4, size=16))
    res = run_cli("eval", tmp_path / "big.npz", "--ref", tmp_path / "r.npz")
    assert res.code == 2 and "16x16 but the reference images are 8x8" in res.err


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda p: np.savez(p, images=images(4)), "no array 'arr_0' (keys: images)"),
        (lambda p: np.savez(p, images(4).astype(np.float32) * np.nan), "768 non-finite values"),
        (lambda p: np.savez(p, images(4).astype(np.float32)), "expected uint8"),
        (lambda p: np.savez(p, images(4).transpose(0, 3, 1, 2)), "NCHW"),
        (lambda p: np.savez(p, images(3)), "holds 3 samples, fewer than the 4 requested"),
    ],
)
def test_bad_samples_files(run_cli, tmp_path, weights, make, message):
    make(tmp_path / "s.npz")
    np.savez(tmp_path / "r.npz", images(4, seed=1))
    res = run_cli("eval", tmp_path / "s.npz", "--ref", tmp_path / "r.npz", "--num-samples", "4",
                  "--inception-weights", weights)  # fmt: skip
    assert res.code == 2, res
    assert message in res.err


def test_bad_references(run_cli, tmp_path, weights):
    np.savez(tmp_path / "s.npz", images(4))
    np.savez(tmp_path / "nothing.npz", labels=np.arange(3))
    res = run_cli("eval", tmp_path / "s.npz", "--ref", tmp_path / "nothing.npz", "--inception-weights", weights)
    assert res.code == 2 and "neither statistics (mu, sigma) nor images (arr_0)" in res.err
    res = run_cli("eval", tmp_path / "s.npz", "--ref", tmp_path / "missing.npz", "--inception-weights", weights)
    assert res.code == 2 and "does not exist" in res.err
    res = run_cli("eval", tmp_path / "s.npz")
    assert res.code == 2 and "--ref" in res.err


def test_eval_ref_from_folder_and_argument_errors(run_cli, tmp_path, weights):
    folder = tmp_path / "imgs" / "class0"
    folder.mkdir(parents=True)
    for i, im in enumerate(images(5, size=12)):
        Image.fromarray(im).save(folder / f"{i}.png")
    out = tmp_path / "ref.npz"
    res = run_cli("eval", "ref", "--images", tmp_path / "imgs", "--resolution", "8", "--out", out,
                  "--inception-weights", weights, "--no-progress")  # fmt: skip
    assert res.code == 0, res
    with np.load(out) as z:
        assert z["arr_0"].shape == (5, 8, 8, 3) and list(z["image_size"]) == [8, 8]
    res = run_cli("eval", "ref", "--out", out)
    assert res.code == 2 and "--images DIR or --npz FILE" in res.err
    res = run_cli("eval", "ref", "--images", tmp_path / "imgs")
    assert res.code == 2 and "--out" in res.err
    res = run_cli("eval", "ref", "--images", tmp_path / "nope", "--out", out)
    assert res.code == 2 and "does not exist" in res.err
    res = run_cli("eval", "ref", "--images", tmp_path / "imgs", "--out", out, "--num-samples", "3")
    assert res.code == 2 and "--num-samples does not apply" in res.err


def test_eval_fd_with_clip_embeddings(run_cli, tmp_path):
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    torch.manual_seed(0)
    config = CLIPVisionConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, image_size=16,
        patch_size=8, projection_dim=8,
    )  # fmt: skip
    CLIPVisionModelWithProjection(config).save_pretrained(tmp_path / "clip")
    np.savez(tmp_path / "s.npz", images(20))
    np.savez(tmp_path / "r.npz", images(20, seed=3, offset=30))
    out = tmp_path / "fd.json"
    res = run_cli("eval", "fd", tmp_path / "s.npz", "--ref", tmp_path / "r.npz",
                  "--feature-space", f"clip:{tmp_path / 'clip'}", "--out", out)  # fmt: skip
    assert res.code == 0, res
    assert res.out.startswith("FD (clip-embedding:clip): ") and "CMMD: " in res.out
    result = json.loads(out.read_text())
    assert result["metrics"]["fd"] > 0 and result["metrics"]["cmmd"] > 0
    assert result["feature_space"]["dim"] == 8
    res = run_cli("eval", "fd", tmp_path / "s.npz", "--ref", tmp_path / "r.npz", "--feature-space", "pixels")
    assert res.code == 2 and "unknown feature space" in res.err


def test_missing_weights_in_a_real_process(run_cli_subprocess, tmp_path):
    np.savez(tmp_path / "s.npz", images(4))
    np.savez(tmp_path / "r.npz", images(4, seed=1))
    res = run_cli_subprocess(
        "eval", "s.npz", "--ref", "r.npz", env={"IREPA_INCEPTION_WEIGHTS": "", "TORCH_HOME": str(tmp_path / "th")}
    )
    assert res.code == 2
    assert res.err.startswith("irepa eval: error: Inception weights not found")
    assert "Traceback" not in res.err


def test_eval_fd_with_a_zoo_encoder(run_cli, tmp_path):
    """encoder:NAME through the zoo (a small randomly initialised MoCo v3 ViT-S at 32 px: a 2×2 token grid)."""
    np.savez(tmp_path / "s.npz", images(10, size=32))
    np.savez(tmp_path / "r.npz", images(10, size=32, seed=4, offset=40))
    res = run_cli("eval", "fd", tmp_path / "s.npz", "--ref", tmp_path / "r.npz", "--feature-space",
                  "encoder:mocov3-vit-s", "--pooling", "cls", "--random-init", "--device", "cpu")  # fmt: skip
    assert res.code == 0, res
    assert "random weights" in res.out
    result = json.loads((tmp_path / "s.fd.json").read_text())
    assert result["feature_space"]["name"] == "mocov3-vit-s:cls" and result["feature_space"]["dim"] == 384
    assert result["metrics"]["fd"] > 0 and result["metrics"]["cmmd"] is None
    res = run_cli("eval", "fd", tmp_path / "s.npz", "--ref", tmp_path / "r.npz", "--feature-space", "encoder:dinov9")
    assert res.code == 2 and "unknown encoder" in res.err


def test_nan_reference_covariance_fails_fast_in_a_real_process(run_cli_subprocess, tmp_path, weights):
    """A NaN covariance used to hang `irepa eval` forever inside scipy's sqrtm; now one line, exit 2."""
    np.savez(tmp_path / "s.npz", images(4))
    np.savez(tmp_path / "r.npz", mu=np.zeros(4), sigma=np.full((4, 4), np.nan))
    res = run_cli_subprocess("eval", "s.npz", "--ref", "r.npz", "--inception-weights", weights, timeout=120)
    assert res.code == 2 and "'r.npz' mu/sigma: the covariance holds 16 non-finite" in res.err, res
    assert len(res.err.strip().splitlines()) == 1
