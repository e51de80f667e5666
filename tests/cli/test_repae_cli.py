"""``irepa train --preset ci-repae`` end to end: losses fall, every module checkpointed, exact resume after SIGKILL,
``irepa export-vae`` → ``irepa data encode``, and ``irepa sample`` from the snapshot."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import irepa

SRC = Path(irepa.__file__).resolve().parents[1]
PARTS = ("model", "ema.model", "aligner", "latent_bn", "vae", "discriminator")


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A 16-image synthetic store at 32 px (made with the CLI) and stand-in LPIPS weights; the preset's overrides."""
    from torchvision.models.vgg import cfgs, make_layers

    from irepa.cli.main import main
    from irepa.models.lpips import LPIPS_CHANNELS

    root = tmp_path_factory.mktemp("repae")
    args = ["data", "prepare", "--synthetic", "16", "--num-classes", "4", "--resolution", "32"]
    assert main([*args, "--out", str(root / "images"), "--quiet"]) == 0
    torch.manual_seed(0)
    trunk = make_layers(cfgs["D"]).state_dict()
    torch.save({f"features.{k}": v for k, v in trunk.items()}, root / "vgg16.pth")
    torch.save(
        {f"lin{i}.model.1.weight": torch.rand(1, c, 1, 1) for i, c in enumerate(LPIPS_CHANNELS)}, root / "vgg.pth"
    )
    overrides = [
        f"data.images={root / 'images'}",
        f"objective.lpips_vgg_weights={root / 'vgg16.pth'}",
        f"objective.lpips_heads_weights={root / 'vgg.pth'}",
    ]
    return root, overrides


def _state(run_dir: Path, step: int) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    folder = run_dir / "checkpoints" / f"step-{step:07d}"
    return {f"{p}/{k}": v for p in PARTS for k, v in load_file(folder / f"{p}.safetensors").items()}


def _env() -> dict[str, str]:
    threads = str(torch.get_num_threads())  # same thread count: bit-comparable with the in-process run
    return {**os.environ, "PYTHONPATH": str(SRC), "OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads}


def _steps_logged(run_dir: Path) -> int:
    path = run_dir / "metrics.jsonl"
    lines = [line for line in path.read_text().splitlines() if line.endswith("}")] if path.exists() else []
    return json.loads(lines[-1])["step"] if lines else 0


@pytest.fixture(scope="module")
def trained(setup, tmp_path_factory):
    """``irepa train --preset ci-repae`` (4 steps) in-process: (run directory, CLI result)."""
    from irepa.cli.main import main

    _, overrides = setup
    run_dir = tmp_path_factory.mktemp("trained") / "run"
    code = main(["train", "--preset", "ci-repae", *overrides, "--run-dir", str(run_dir)])
    assert code == 0
    return run_dir


def test_ci_repae_trains_resumes_exports_encodes_and_samples(run_cli, setup, trained, tmp_path):
    root, overrides = setup
    run_dir = trained

    # Every module, optimizer and the SiT's EMA are checkpointed.
    names = {p.name for p in (run_dir / "checkpoints" / "step-0000004").iterdir()}
    assert {f"{p}.safetensors" for p in PARTS} <= names
    assert {"optimizer.vae.pt", "optimizer.discriminator.pt", "optimizer.model.pt"} <= names

    # Losses fall: reconstruction (VAE phase) and the SiT's loss, first vs last step.
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    assert rows[-1]["vae/l1"] < rows[0]["vae/l1"] and rows[-1]["sit/loss"] < rows[0]["sit/loss"]
    assert all(-1.0 <= r["vae/align_cos"] <= 1.0 and r["disc/d_loss"] > 0 for r in rows)

    # Stopped after the checkpoint of step 2 (what a kill leaves), the same command resumes bit-identically.
    resumed = tmp_path / "resumed"
    assert run_cli("train", "--preset", "ci-repae", *overrides, "train.max_steps=2", "--run-dir", resumed).code == 0
    res = run_cli("train", "--preset", "ci-repae", *overrides, "--run-dir", resumed)
    assert res.code == 0 and "resumed from step-0000002" in res.err, res
    a, b = _state(resumed, 4), _state(run_dir, 4)
    assert a.keys() == b.keys() and not [k for k in a if not torch.equal(a[k], b[k])]

    # The tuned VAE as a diffusers folder, which `irepa data encode` takes; it records the BatchNorm statistics.
    res = run_cli("export-vae", run_dir, "--out", tmp_path / "vae")
    assert res.code == 0 and "wrote the VAE of step 4" in res.out, res
    res = run_cli("data", "encode", "--store", root / "images", "--vae", tmp_path / "vae", "--out", tmp_path / "lat",
                  "--batch-size", "8", "--quiet")  # fmt: skip
    assert res.code == 0, res
    manifest = json.loads((tmp_path / "lat" / "manifest.json").read_text())
    bn = _state(run_dir, 4)
    expected_std = bn["latent_bn/ema_var"].double().sqrt().tolist()
    assert manifest["vae"]["latent_stats"]["std"] == pytest.approx(expected_std, rel=1e-12)
    assert manifest["latent_shape"] == [4, 4, 4]

    # `irepa sample` draws from the snapshot; it decodes with the run's VAE and the BatchNorm statistics.
    from irepa.models.io import read_inference_metadata

    snapshot = run_dir / "snapshots" / "ema-0000004.safetensors"
    space = read_inference_metadata(snapshot)["space"]
    assert space["normalization"]["std"] == pytest.approx(expected_std, rel=1e-12)
    args = ["--num-samples", "2", "--sampler", "euler", "--steps", "2", "--batch-size", "2", "--device", "cpu"]
    res = run_cli("sample", "--snapshot", snapshot, *args, "--out", tmp_path / "s.npz", "--no-progress")
    assert res.code == 0, res
    import numpy as np

    with np.load(tmp_path / "s.npz") as samples:
        assert samples["arr_0"].shape == (2, 32, 32, 3) and samples["arr_0"].dtype == np.uint8


@pytest.mark.slow
def test_ci_repae_resumes_exactly_after_sigkill(setup, trained, tmp_path):
    """SIGKILL after step 3 (checkpoint at 2), rerun the same command: bit-identical to the uninterrupted run."""
    _, overrides = setup
    killed = tmp_path / "killed"
    cmd = [sys.executable, "-m", "irepa", "train", "--preset", "ci-repae", *overrides, "--run-dir", str(killed)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env(),
                            start_new_session=True)  # fmt: skip
    deadline = time.monotonic() + 600
    while _steps_logged(killed) < 3:
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "the run did not reach step 3 in time"
        time.sleep(0.01)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.communicate(timeout=60)
    assert not (killed / "checkpoints" / "step-0000004").exists()
    done = subprocess.run(cmd, capture_output=True, text=True, env=_env(), timeout=600)
    assert done.returncode == 0, done.stderr
    assert "resumed from step-0000002" in done.stderr
    a, b = _state(killed, 4), _state(trained, 4)
    assert a.keys() == b.keys() and not [k for k in a if not torch.equal(a[k], b[k])]


def test_export_vae_needs_an_end_to_end_run(run_cli, tmp_path):
    res = run_cli("export-vae", tmp_path, "--out", tmp_path / "vae")
    assert res.code == 2 and "has no checkpoints" in res.err and len(res.err.strip().splitlines()) == 1
