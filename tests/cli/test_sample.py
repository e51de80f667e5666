"""``irepa sample`` on a tiny pixel-space SiT: ADM npz + recipe card, world-size invariance, resume, bad input."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from irepa.models import build_model
from irepa.models.io import save_inference

KWARGS = dict(input_size=8, in_channels=3, hidden_size=32, depth=2, num_heads=2, num_classes=10)
META = {
    "diffusion": {"path": "linear"},
    "space": {"kind": "pixel", "channels": 3, "size": [8, 8], "image_size": [8, 8]},
    "step": 100,
    "ema": True,
}


def tiny_snapshot(path, *, nan=False):
    torch.manual_seed(0)
    model = build_model("SiT-S/2", **KWARGS)
    with torch.no_grad():
        for p in model.parameters():  # leave the zero init so the velocity field is not trivial
            p.add_(0.05 * torch.randn_like(p))
        if nan:
            model.final_layer.linear.bias[0] = float("nan")
    save_inference(path, model, model_name="SiT-S/2", model_kwargs=model.config, metadata=META)
    return path


@pytest.fixture(scope="module")
def snapshot(tmp_path_factory):
    return tiny_snapshot(tmp_path_factory.mktemp("snap") / "tiny.safetensors")


def base_args(snapshot, out, *extra):
    return [
        "sample", "--snapshot", snapshot, "--num-samples", "6", "--out", out, "--steps", "4", "--batch-size", "4",
        "--no-progress", *extra,
    ]  # fmt: skip


def test_sample_writes_adm_npz_and_recipe_card(run_cli, snapshot, tmp_path):
    out = tmp_path / "samples.npz"
    res = run_cli(*base_args(snapshot, out, "--cfg-scale", "1.5", "--guidance-high", "0.7", "--labels", "balanced"))
    assert res.code == 0, res
    with np.load(out) as z:
        assert set(z.files) == {"arr_0", "labels"}
        images, labels = z["arr_0"], z["labels"]
    assert images.shape == (6, 8, 8, 3) and images.dtype == np.uint8
    assert images.std() > 0
    assert labels.shape == (6,) and labels.max() < 10
    card = json.loads((tmp_path / "samples.recipe.json").read_text())
    assert card["format"] == "irepa-recipe/1"
    assert card["snapshot"]["model"]["name"] == "SiT-S/2" and card["snapshot"]["ema"] is True
    assert len(card["snapshot"]["sha256"]) == 64
    assert card["sampler"] == {
        "name": "sde", "steps": 4, "nfe_per_sample": 4, "cfg_scale": 1.5, "guidance_interval": [0.0, 0.7],
        "null_label": 10, "heun_guidance_time": None, "sde_last_time": 0.04, "dtype": "float32",
        "quantize": "truncate", "compile": "none",
    }  # fmt: skip
    assert card["seeds"]["per_sample"] == "torch.Generator (CPU) seeded with (index + seed * 0x9E3779B9) mod 2**32"
    assert card["snapshot"]["prediction"] == "v"  # a snapshot without a prediction type is a velocity model
    assert card["labels"]["scheme"] == "balanced" and card["num_samples"] == 6 and card["vae"] is None
    assert card["seeds"]["seed"] == 0
    assert not (tmp_path / "samples.npz.work").exists()


def test_same_result_for_any_batch_size_and_world_size(run_cli, snapshot, tmp_path):
    a, b = tmp_path / "a.npz", tmp_path / "b.npz"
    assert run_cli(*base_args(snapshot, a)).code == 0
    assert run_cli(*base_args(snapshot, b), "--batch-size", "1").code == 0
    with np.load(a) as za, np.load(b) as zb:
        np.testing.assert_array_equal(za["arr_0"], zb["arr_0"])
        np.testing.assert_array_equal(za["labels"], zb["labels"])
    # Two "ranks" sharing the work folder, run one after the other (the rank split without a process group):
    # rank 0 creates the folder, does its half and cannot finish; rank 1 does the other half; rank 0 assembles.
    c = tmp_path / "c.npz"
    results = []
    for rank in (0, 1, 0):
        env = {"WORLD_SIZE": "2", "RANK": str(rank), "LOCAL_RANK": "0"}
        with pytest.MonkeyPatch.context() as mp, _no_process_group(mp):
            for k, v in env.items():
                mp.setenv(k, v)
            results.append(run_cli(*base_args(snapshot, c)))
    assert results[0].code == 2 and "3 samples are not generated yet" in results[0].err
    assert results[1].code == 0 and results[2].code == 0, results
    assert json.loads((tmp_path / "c.recipe.json").read_text())["run"]["generated_now"] == 0
    with np.load(a) as za, np.load(c) as zc:
        np.testing.assert_array_equal(za["arr_0"], zc["arr_0"])


class _no_process_group:
    """Replace the process group by a no-op so two ranks can run sequentially in one test process."""

    def __init__(self, mp):
        self.mp = mp

    def __enter__(self):
        import os

        from irepa.training.distributed import ProcessGroup

        def start(cls, device="auto", *, expected_world_size=None):
            assert expected_world_size == int(os.environ["WORLD_SIZE"])
            return cls(int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), 0, torch.device("cpu"), None)

        self.mp.setattr(ProcessGroup, "start", classmethod(start))
        self.mp.setattr(ProcessGroup, "barrier", lambda self: None)
        self.mp.setattr(ProcessGroup, "all_ok", lambda self, ok: ok)
        return self

    def __exit__(self, *exc):
        return False


def test_resume_after_interruption(run_cli, snapshot, tmp_path, monkeypatch):
    import irepa.cli.sample as sample

    full = tmp_path / "full.npz"
    assert run_cli(*base_args(snapshot, full)).code == 0
    out = tmp_path / "resumed.npz"
    real = sample.generate_shard
    calls = []

    def crash_after_first_batch(*args, **kwargs):
        writer = args[3]
        original = writer.write

        def write_once(indices, images, finite=None):
            if calls:
                raise KeyboardInterrupt
            calls.append(len(indices))
            original(indices, images, finite)

        writer.write = write_once
        return real(*args, **kwargs)

    monkeypatch.setattr(sample, "generate_shard", crash_after_first_batch)
    assert run_cli(*base_args(snapshot, out)).code == 130
    assert not out.exists() and (tmp_path / "resumed.npz.work").is_dir()
    monkeypatch.setattr(sample, "generate_shard", real)
    res = run_cli(*base_args(snapshot, out))
    assert res.code == 0, res
    card = json.loads((tmp_path / "resumed.recipe.json").read_text())
    assert card["run"]["generated_now"] == 6 - calls[0]
    with np.load(full) as zf, np.load(out) as zo:
        np.testing.assert_array_equal(zf["arr_0"], zo["arr_0"])


def test_resume_with_another_recipe_is_refused(run_cli, snapshot, tmp_path):
    from irepa.metrics.generative.npz import IndexedImageWriter

    out = tmp_path / "s.npz"
    IndexedImageWriter.create(tmp_path / "s.npz.work", 6, (8, 8, 3), {"steps": 99})
    res = run_cli(*base_args(snapshot, out))
    assert res.code == 2
    assert "another recipe" in res.err and "steps" in res.err


def test_non_finite_samples_are_an_error(run_cli, tmp_path):
    snap = tiny_snapshot(tmp_path / "nan.safetensors", nan=True)
    out = tmp_path / "nan.npz"
    res = run_cli(*base_args(snap, out))
    assert res.code == 2
    assert "6 of 6 samples have non-finite values (indices 0, 1, 2, 3, 4, 5)" in res.err
    assert not out.exists()


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (("--steps", "0"), "--steps must be >= 1"),
        (("--guidance-low", "0.8", "--guidance-high", "0.2"), "guidance interval"),
        (("--batch-size", "0"), "--batch-size"),
        (("--seed", "-1"), "--seed must be >= 0"),
    ],
)
def test_bad_arguments(run_cli, snapshot, tmp_path, extra, message):
    res = run_cli(*base_args(snapshot, tmp_path / "x.npz"), *extra)
    assert res.code == 2 and message in res.err


@pytest.mark.parametrize(
    ("extra", "flag"),
    [
        (("--cfg-scale", "-3"), "--cfg-scale"),
        (("--cfg-scale", "nan"), "--cfg-scale"),
        (("--cfg-scale", "inf"), "--cfg-scale"),
        (("--guidance-high", "nan"), "--guidance-high"),
        (("--num-samples", "0"), "--num-samples"),
    ],
)
def test_bad_arguments_write_nothing_and_the_corrected_command_runs(run_cli, snapshot, tmp_path, extra, flag):
    out = tmp_path / "x.npz"
    res = run_cli(*base_args(snapshot, out), *extra)
    assert res.code == 2 and flag in res.err, res
    assert len(res.err.strip().splitlines()) == 1, res.err
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # no OUT, no OUT.work, no recipe card
    res = run_cli(*base_args(snapshot, out))
    assert res.code == 0, res
    assert out.exists()


def test_compile_mode_reaches_torch_compile_and_the_card(run_cli, snapshot, tmp_path, monkeypatch):
    modes = []

    def recording_compile(module, *, mode):  # the wiring only; real compilation: tests/diffusion/test_generate.py
        modes.append(mode)
        return module

    monkeypatch.setattr(torch, "compile", recording_compile)
    out = tmp_path / "compiled.npz"
    res = run_cli(*base_args(snapshot, out), "--compile", "reduce-overhead")
    assert res.code == 0, res
    assert modes == ["reduce-overhead"]
    assert json.loads((tmp_path / "compiled.recipe.json").read_text())["sampler"]["compile"] == "reduce-overhead"


def test_sampling_settings_reject_non_finite_cfg_scale():
    from irepa.diffusion.generate import SamplingSettings
    from irepa.errors import IrepaError

    for bad in (float("nan"), float("inf"), -3.0):
        with pytest.raises(IrepaError, match="cfg_scale"):
            SamplingSettings(cfg_scale=bad)


def test_bfloat16_forward_runs_and_is_recorded(run_cli, snapshot, tmp_path):
    out = tmp_path / "bf16.npz"
    res = run_cli(*base_args(snapshot, out), "--dtype", "bfloat16", "--sampler", "heun", "--steps", "2")
    assert res.code == 0, res
    card = json.loads((tmp_path / "bf16.recipe.json").read_text())
    assert card["sampler"]["dtype"] == "bfloat16" and card["sampler"]["nfe_per_sample"] == 3


def test_existing_output_and_missing_snapshot(run_cli, snapshot, tmp_path):
    out = tmp_path / "exists.npz"
    out.write_bytes(b"")
    res = run_cli(*base_args(snapshot, out))
    assert res.code == 2 and "--overwrite" in res.err
    res = run_cli(*base_args(tmp_path / "missing.safetensors", tmp_path / "y.npz"))
    assert res.code == 2 and "does not exist" in res.err
    res = run_cli(*base_args(snapshot, tmp_path / "y.zip"))
    assert res.code == 2 and ".npz" in res.err


def test_torchrun_two_processes_match_one(run_cli, snapshot, tmp_path):
    """The real distributed path: torchrun, 2 gloo processes on CPU, identical to a single-process run."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    single = tmp_path / "single.npz"
    assert run_cli(*base_args(snapshot, single)).code == 0
    src = Path(__file__).resolve().parents[2] / "src"
    env = {**os.environ, "PYTHONPATH": str(src), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "-m", "irepa",
         *map(str, base_args(snapshot, tmp_path / "ddp.npz"))],
        capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    card = json.loads((tmp_path / "ddp.recipe.json").read_text())
    assert card["run"]["world_size"] == 2
    with np.load(single) as za, np.load(tmp_path / "ddp.npz") as zb:
        np.testing.assert_array_equal(za["arr_0"], zb["arr_0"])
        np.testing.assert_array_equal(za["labels"], zb["labels"])


def test_latent_snapshot_decodes_through_the_vae(run_cli, tmp_path):
    """Latent space: denormalize with the snapshot's normalization, decode with a (tiny random) VAE from a folder."""
    from irepa.data.vae import save_random_vae

    vae_dir = save_random_vae(tmp_path / "vae")
    torch.manual_seed(0)
    model = build_model("SiT-S/2", **{**KWARGS, "in_channels": 4})
    space = {"kind": "latent", "vae": "stabilityai/sd-vae-ft-mse", "channels": 4, "size": [8, 8],
             "normalization": {"kind": "sd-scalar", "scale": 0.18215, "bias": 0.0}}  # fmt: skip
    snap = tmp_path / "latent.safetensors"
    save_inference(snap, model, model_name="SiT-S/2", model_kwargs=model.config, metadata={**META, "space": space})
    out = tmp_path / "latent.npz"
    res = run_cli(*base_args(snap, out), "--vae", "stabilityai/sd-vae-ft-ema", "--vae-weights", vae_dir, "--offline")
    assert res.code == 0, res
    with np.load(out) as z:
        assert z["arr_0"].shape == (6, 64, 64, 3) and z["arr_0"].dtype == np.uint8
    card = json.loads((tmp_path / "latent.recipe.json").read_text())
    assert card["vae"]["id"] == "stabilityai/sd-vae-ft-ema" and card["snapshot"]["space"]["kind"] == "latent"
    assert card["vae"]["weights"] == str(vae_dir)


def test_quantize_round_is_truncate_plus_at_most_one_level(run_cli, snapshot, tmp_path):
    a, b = tmp_path / "t.npz", tmp_path / "r.npz"
    assert run_cli(*base_args(snapshot, a)).code == 0
    assert run_cli(*base_args(snapshot, b), "--quantize", "round").code == 0
    with np.load(a) as za, np.load(b) as zb:
        diff = zb["arr_0"].astype(int) - za["arr_0"].astype(int)
    assert diff.min() >= 0 and diff.max() == 1 and 0.3 < diff.mean() < 0.7  # about half a grey level
    assert json.loads((tmp_path / "r.recipe.json").read_text())["sampler"]["quantize"] == "round"
