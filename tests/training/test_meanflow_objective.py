"""The ``meanflow`` objective on the one trainer: ci-meanflow trains (loss falls, iREPA moves), accumulates, resumes
exactly after SIGKILL, runs on 2 gloo processes with the explicit all-reduce, and its snapshots sample in 1 and 2
steps through ``irepa sample``."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import irepa
from irepa.errors import ConfigError
from irepa.training.config import resolve_config
from irepa.training.objectives.meanflow import compile_with_fallback
from irepa.training.trainer import Trainer

SRC = Path(irepa.__file__).resolve().parents[1]


def _env() -> dict[str, str]:
    threads = str(torch.get_num_threads())
    return {**os.environ, "PYTHONPATH": str(SRC), "OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads}


@pytest.fixture(scope="module")
def overrides(latent_stores):
    images, latents = latent_stores
    return [f"data.images={images}", f"data.latents={latents}"]


def _rows(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def _state(run_dir: Path, step: int) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    folder = run_dir / "checkpoints" / f"step-{step:07d}"
    out = {}
    for part in ("model", "ema.model", "aligner"):
        out.update({f"{part}/{k}": v for k, v in load_file(folder / f"{part}.safetensors").items()})
    return out


# ----------------------------------------------------------------------------------------------------------------------
# Settings and compile fallback


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("objective.kappa=1.0", "kappa must be in [0, 1)"),
        ("objective.guidance_interval=[0.8,0.2]", "guidance interval"),
        ("objective.equal_share=1.5", "objective.equal_share"),
        ("objective.alpha=1", "objective.alpha"),
    ],
)
def test_bad_settings_are_config_errors(override, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        resolve_config(preset="ci-meanflow", overrides=[override])


def test_compile_fallback_runs_eagerly_once_compilation_fails():
    from torch._dynamo.exc import TorchDynamoException

    calls = {"compiled": 0, "eager": 0}

    def fn(x):
        calls["eager"] += 1
        return x + 1

    def broken_compiler(f):
        def compiled(*args):
            calls["compiled"] += 1
            raise TorchDynamoException("InvalidCxxCompiler: no working C++ compiler found")

        return compiled

    step = compile_with_fallback(fn, compiler=broken_compiler)
    with pytest.warns(UserWarning, match="torch.compile of the MeanFlow JVP step failed .*InvalidCxxCompiler"):
        assert step(1) == 2
    assert step(2) == 3 and calls == {"compiled": 1, "eager": 2} and step.compile_failed()

    def other_error(f):
        def compiled(*args):
            raise ValueError("a real bug")

        return compiled

    with pytest.raises(ValueError, match="a real bug"):
        compile_with_fallback(fn, compiler=other_error)(1)


# ----------------------------------------------------------------------------------------------------------------------
# Training


@pytest.fixture(scope="module")
def trained(tmp_path_factory, overrides):
    """30 steps of ci-meanflow, in-process."""
    run_dir = tmp_path_factory.mktemp("meanflow")
    cfg = resolve_config(preset="ci-meanflow", overrides=[*overrides, "train.max_steps=30",
                                                          "train.checkpoint_every_steps=30",
                                                          "train.snapshot_every_steps=30"])  # fmt: skip
    result = Trainer(cfg, run_dir).fit()
    assert result.status == "completed"
    return run_dir


def test_ci_meanflow_trains_loss_falls_and_the_alignment_term_moves(trained):
    rows = _rows(trained)
    assert [r["step"] for r in rows] == list(range(1, 31))
    first, last = rows[:5], rows[-5:]

    def mean(rs, key):
        return sum(r[key] for r in rs) / len(rs)

    assert mean(last, "v_mse") < 0.9 * mean(first, "v_mse")  # measured: 1.98 -> 1.65
    assert mean(last, "mf_mse") < mean(first, "mf_mse")
    assert all(0.0 < r["meanflow"] <= 1.0 for r in rows)  # L / (L + c): below 1 by construction
    assert all(r["align"] > 0 and -1.0 <= r["align_cos"] <= 1.0 for r in rows)
    assert mean(last, "align_cos") > mean(first, "align_cos") + 0.05  # the projector learns: the cosine rises
    log = (trained / "log.txt").read_text()
    assert "objective meanflow" in log and "effective CFG 2" in log


def test_grad_accumulation_equals_one_micro_batch(tmp_path, overrides):
    # Adam with eps >> sqrt(v) is plain momentum SGD, so parameters compare well (Adam's sign-like first steps
    # would amplify float reordering in near-zero gradients).
    common = [*overrides, "train.max_steps=2", "train.checkpoint_every_steps=2", "optim.eps=1.0", "optim.lr=0.1"]
    Trainer(resolve_config(preset="ci-meanflow", overrides=common), tmp_path / "one").fit()
    Trainer(resolve_config(preset="ci-meanflow", overrides=[*common, "optim.grad_accumulation=2"]),
            tmp_path / "two").fit()  # fmt: skip
    one, two = _state(tmp_path / "one", 2), _state(tmp_path / "two", 2)
    for key in one:
        torch.testing.assert_close(two[key], one[key], rtol=1e-4, atol=1e-6, msg=key)


def test_killed_run_resumes_exactly(tmp_path, overrides):
    args = [*overrides, "train.max_steps=12", "train.checkpoint_every_steps=3", "train.log_every_steps=1"]
    reference = tmp_path / "reference"
    Trainer(resolve_config(preset="ci-meanflow", overrides=args), reference).fit()
    run_dir = tmp_path / "killed"
    command = [sys.executable, "-m", "irepa", "train", "--preset", "ci-meanflow", "--run-dir", str(run_dir), *args]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env(),
                            start_new_session=True)  # fmt: skip
    deadline = time.monotonic() + 240
    while not (run_dir / "checkpoints" / "step-0000003").is_dir() or len(_rows(run_dir)) < 5:
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "the run did not get far enough in time"
        time.sleep(0.01)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    done = subprocess.run(command, capture_output=True, text=True, env=_env(), timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "resumed from step-" in done.stderr
    expected, got = _state(reference, 12), _state(run_dir, 12)
    assert all(torch.equal(got[k], expected[k]) for k in expected)


def test_two_processes_sync_gradients_explicitly_and_match_one_process(tmp_path, overrides):
    args = [*overrides, "train.max_steps=4", "train.checkpoint_every_steps=2", "optim.eps=1.0", "optim.lr=0.1",
            "objective.sync_check_every_steps=1"]  # fmt: skip
    Trainer(resolve_config(preset="ci-meanflow", overrides=args), tmp_path / "one").fit()
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "irepa",
         "train", "--preset", "ci-meanflow", "--run-dir", str(tmp_path / "two"), *args],
        capture_output=True, text=True, env=_env(), timeout=400,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    log = (tmp_path / "two" / "log.txt").read_text()
    assert "processes 2" in log and "gradients all-reduced" in log
    # Every step checked that the gradients are bit-identical across the processes (else training stops), and the
    # checkpoints checked the weights.
    assert log.count("(weights identical on all 2 processes)") == 2
    one, two = _state(tmp_path / "one", 4), _state(tmp_path / "two", 4)
    for key in one:
        torch.testing.assert_close(two[key], one[key], rtol=1e-4, atol=1e-6, msg=key)


def test_cli_train_then_sample_one_and_two_steps(run_cli, tmp_path, overrides, latent_stores):
    """``irepa train --preset ci-meanflow``; the snapshot records MeanFlow, so ``irepa sample --steps 1/2`` uses the
    MeanFlow sampler without being told."""
    import numpy as np

    from irepa.models.io import load_inference

    run_dir = tmp_path / "run"
    res = run_cli("train", "--preset", "ci-meanflow", *overrides, "--run-dir", run_dir)
    assert res.code == 0, res
    assert "finished 4 steps" in res.out and "objective meanflow" in res.err
    snapshot = run_dir / "snapshots" / "ema-0000004.safetensors"
    model, meta = load_inference(snapshot)
    assert meta["diffusion"]["objective"] == "meanflow" and meta["diffusion"]["sampler"] == "meanflow"
    assert meta["diffusion"]["training_guidance"]["effective_scale"] == 2.0 and model.h_embedder is not None
    vae = latent_stores[0].parent / "vae"
    common = ["--snapshot", snapshot, "--num-samples", "4", "--batch-size", "4", "--vae-weights", vae,
              "--device", "cpu", "--no-progress"]  # fmt: skip
    images = {}
    for steps in (1, 2):
        out = tmp_path / f"steps{steps}.npz"
        res = run_cli("sample", *common, "--out", out, "--steps", str(steps))
        assert res.code == 0, res
        with np.load(out) as samples:
            images[steps] = samples["arr_0"]
        assert images[steps].shape == (4, 64, 64, 3) and images[steps].dtype == np.uint8
        card = json.loads((tmp_path / f"steps{steps}.recipe.json").read_text())
        assert card["sampler"]["name"] == "meanflow" and card["sampler"]["nfe_per_sample"] == steps
    assert not np.array_equal(images[1], images[2])
    res = run_cli("sample", *common, "--out", tmp_path / "euler.npz", "--sampler", "euler", "--steps", "2")
    assert res.code == 2 and "sample it with --sampler meanflow" in res.err
