"""``irepa train``: presets, dry run, bad input, and an end-to-end CI run on synthetic data (latent space)."""

from __future__ import annotations

import json

import pytest


def test_help_and_list_presets(run_cli):
    res = run_cli("train", "--help")
    assert res.code == 0 and "--dry-run" in res.out and "torchrun --nproc_per_node" in res.out
    res = run_cli("train", "--list-presets")
    assert res.code == 0
    assert "sit-xl2-irepa-official-1x1" in res.out
    assert "conv 3x3 projector, λ 1.0, target norm spatial (γ 0.6), depth 8; bf16" in res.out


def test_list_presets_lines_come_from_the_resolved_config(run_cli):
    lines = {line.split()[0]: line.split(None, 1)[1] for line in run_cli("train", "--list-presets").out.splitlines()}
    assert "conv 1x1 projector" in lines["sit-xl2-irepa-official-1x1"] and lines["sit-xl2-irepa-official-1x1"].endswith(
        "fp16"
    )
    assert "conv 3x3 projector" in lines["sit-xl2-irepa"]
    assert len(set(lines.values())) == len(lines)  # no two presets print the same line
    assert "mlp projector, λ 0.5, target norm none" in lines["sit-b2-repa"]


def _config_leaves(cls, prefix=""):
    """Dotted leaf keys of a config dataclass tree (independent of irepa.config.describe)."""
    import dataclasses
    import typing

    hints = typing.get_type_hints(cls)
    for field in dataclasses.fields(cls):
        if dataclasses.is_dataclass(hints[field.name]):
            yield from _config_leaves(hints[field.name], f"{prefix}{field.name}.")
        else:
            yield prefix + field.name


def test_help_config_lists_every_key_with_type_default_and_doc(run_cli):
    from irepa.training.config import TrainConfig
    from irepa.training.objectives import OBJECTIVES

    res = run_cli("train", "--help-config")
    assert res.code == 0, res
    lines = res.out.splitlines()
    listed = [line.split()[0] for line in lines if line.startswith("  ") and not line.startswith("   ")]
    # objective.settings stands for the objectives' own flat keys (objective.<field> of each objective's Settings).
    settings = [f"objective.{key}" for _, obj in OBJECTIVES.items() for key in _config_leaves(obj.Settings)]
    expected = list(_config_leaves(TrainConfig))
    at = expected.index("objective.settings")
    assert listed == [*expected[:at], *settings, *expected[at + 1 :]]
    for i, line in enumerate(lines):
        if line.startswith("  ") and not line.startswith("   "):
            assert lines[i + 1].startswith("      ") and lines[i + 1].strip(), f"{line.split()[0]} has no description"
    assert "  train.max_steps (int, default 400000)" in lines
    assert "      Optimizer steps to train for (may be raised when resuming)." in lines
    assert "  align.decay_end (int | null, default null)" in lines and "  optim.betas (tuple[float, float]" in res.out
    assert "train: The loop, precision, EMA, intervals and fault handling" in res.out

    res = run_cli("train", "--help-config", "align")
    keys = [line.split()[0] for line in res.out.splitlines() if line.startswith("  ") and not line.startswith("   ")]
    assert res.code == 0 and keys == [k for k in _config_leaves(TrainConfig) if k.startswith("align.")]
    res = run_cli("train", "--help-config", "optimizer")
    assert res.code == 2 and "unknown section 'optimizer'; sections: model, " in res.err and " optim, " in res.err


def test_dry_run_prints_config_and_batch_split(run_cli, tmp_path):
    res = run_cli("train", "--preset", "sit-xl2-irepa", "--dry-run", "--processes", "8", "--run-dir", tmp_path / "r")
    assert res.code == 0, res
    assert "global 256 = 8 process(es) x 1 accumulation x 32 per device" in res.out
    assert "model: SiT-XL/2 674.8" in res.out and "align: dinov2-vit-b at block 8/28, conv projector" in res.out
    assert "data: NOT READY" in res.out and "would start from scratch" in res.out
    import yaml

    parsed = yaml.safe_load(res.out)  # the report is a valid config file (notes are comments)
    assert parsed["align"]["kernel_size"] == 3 and parsed["optim"]["global_batch_size"] == 256


def test_dry_run_checks_that_the_teacher_weights_are_found_offline(run_cli, tmp_path, monkeypatch):
    """Per encoder: where its weights would be found (the zoo lookup, same locations as training), else the fix."""
    for var, folder in (("IREPA_CACHE", "irepa"), ("HF_HUB_CACHE", "hf"), ("TORCH_HOME", "torch")):
        monkeypatch.setenv(var, str(tmp_path / folder))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("IREPA_OFFLINE", raising=False)
    # DINOv2's official file in the torch hub cache; a few bytes only: the dry run must not read or verify it.
    hub = tmp_path / "torch" / "hub" / "checkpoints"
    hub.mkdir(parents=True)
    (hub / "dinov2_vitb14_pretrain.pth").write_bytes(b"not really weights")
    args = ["train", "--preset", "sit-xl2-irepa", "--dry-run", "--run-dir", tmp_path / "r",
            "align.encoders=[dinov2-vit-b,mocov3-vit-s]"]  # fmt: skip

    def teacher_lines(res):
        assert res.code == 0, res
        return [line for line in res.out.splitlines() if line.startswith(("# teacher", "# would"))]

    lines = teacher_lines(run_cli(*args))
    assert lines[0] == f"# teacher dinov2-vit-b: found at {hub / 'dinov2_vitb14_pretrain.pth'} (torch-hub)"
    assert lines[1].startswith("# teacher mocov3-vit-s: NOT FOUND offline: no weights for encoder 'mocov3-vit-s'")
    assert f"irepa cache {tmp_path / 'irepa' / 'encoders' / 'mocov3-vit-s'}" in lines[1]
    assert "`irepa encoders download mocov3-vit-s`" in lines[1] and "teacher.weights: {mocov3-vit-s: PATH}" in lines[1]
    assert "training looks in $IREPA_CACHE (or teacher.cache_dir)" in lines[1] and "--weights" not in lines[1]
    assert "# would download the weights of mocov3-vit-s at start (fails without network)" in lines
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert "# would fail at start: no weights for mocov3-vit-s (offline)" in teacher_lines(run_cli(*args))
    # What `irepa encoders download mocov3-vit-s` leaves in the cache is then found.
    cached = tmp_path / "irepa" / "encoders" / "mocov3-vit-s" / "vit-s-300ep.pth.tar"
    cached.parent.mkdir(parents=True)
    cached.write_bytes(b"x")
    lines = teacher_lines(run_cli(*args))
    assert lines[1] == f"# teacher mocov3-vit-s: found at {cached} (irepa-cache)"
    assert not any("would fail" in line or "would download" in line for line in lines)
    # teacher.cache_dir replaces $IREPA_CACHE, as in training; a wrong explicit teacher.weights path is named.
    lines = teacher_lines(run_cli(*args, f"teacher.cache_dir={tmp_path / 'elsewhere'}"))
    assert lines[1].startswith("# teacher mocov3-vit-s: NOT FOUND offline") and "elsewhere" in lines[1]
    lines = teacher_lines(run_cli(*args, f"teacher.weights={{dinov2-vit-b: {tmp_path / 'nope.pth'}}}"))
    assert lines[0].startswith("# teacher dinov2-vit-b: NOT FOUND: weights path") and "nope.pth" in lines[0]


def test_batch_not_divisible_is_a_clear_error(run_cli, tmp_path):
    res = run_cli("train", "--preset", "sit-b2-repa", "--dry-run", "--processes", "3", "--run-dir", tmp_path)
    assert res.code == 2
    assert "optim.global_batch_size=256 is not divisible by 3 process(es)" in res.err and "255 or 258" in res.err


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--preset", "sit-b2-repaa"], "unknown preset 'sit-b2-repaa'; did you mean 'sit-b2-repa'"),
        (["--preset", "sit-b2-repa", "optim.lr"], "not of the form key=value"),
        (["--preset", "sit-b2-repa", "optim.betas=0.9"], "expects 2 values"),
        (["--config", "missing.yaml"], "cannot read config file 'missing.yaml'"),
        (["--preset", "sit-b2-repa", "name=../../x"], "name '../../x' is not a plain folder name"),
        (["--preset", "sit-b2-repa", "name=/tmp/x"], "name '/tmp/x' is not a plain folder name"),
        (["--preset", "sit-b2-repa", "name=.."], "name '..' is not a plain folder name"),
        (["--preset", "sit-b2-repa", "optim.lr=inf"], "config key 'optim.lr' must be a finite number, got 'inf'"),
        (["--preset", "sit-b2-repa", "optim.lr=nan"], "config key 'optim.lr' must be a finite number, got 'nan'"),
    ],
)
def test_bad_input_exits_2_with_one_line(run_cli, args, message):
    res = run_cli("train", *args, "--dry-run")
    assert res.code == 2 and message in res.err
    assert len(res.err.strip().splitlines()) == 1


def test_missing_data_store_is_a_clear_error(run_cli, tmp_path):
    res = run_cli("train", "--preset", "ci", f"data.images={tmp_path}/nope", "--run-dir", tmp_path / "run")
    assert res.code == 2 and "is not a data store (no manifest.json there)" in res.err


def test_ci_preset_end_to_end_then_resume_then_sample(run_cli, tmp_path, ci_stores, ci_vae):
    run_dir = tmp_path / "run"
    res = run_cli("train", "--preset", "ci", *ci_stores, "--run-dir", run_dir)
    assert res.code == 0, res
    assert "finished 4 steps" in res.out and "starting from scratch" in res.err
    assert "align dinov2-vit-b at block 1" in res.err
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["step-0000002", "step-0000004"]
    assert sorted(p.name for p in (run_dir / "snapshots").iterdir()) == [
        "ema-0000002.safetensors",
        "ema-0000004.safetensors",
    ]
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    assert all(-1.0 <= r["align_cos"] <= 1.0 and r["teacher_share"] > 0 for r in rows)

    # Resume = the same command with a longer schedule.
    res = run_cli("train", "--preset", "ci", *ci_stores, "train.max_steps=6", "--run-dir", run_dir)
    assert res.code == 0, res
    assert "resumed from step-0000004 (step 4, 32 images)" in res.err and "finished 6 steps" in res.out
    assert "config change on resume: train.max_steps: 4 -> 6" in res.err

    # Dry run on the existing run directory says it would resume.
    res = run_cli("train", "--preset", "ci", *ci_stores, "--dry-run", "--run-dir", run_dir)
    assert res.code == 0 and "would resume from" in res.out and "step-0000006" in res.out

    # The snapshot is all `irepa sample` needs.
    from irepa.models.io import load_inference

    snapshot = run_dir / "snapshots" / "ema-0000006.safetensors"
    model, meta = load_inference(snapshot)
    assert meta["space"]["kind"] == "latent" and meta["space"]["vae"] and meta["step"] == 6
    assert model.grid == (4, 4)
    res = run_cli(
        "sample",
        "--snapshot",
        snapshot,
        "--num-samples",
        "4",
        "--out",
        tmp_path / "samples.npz",
        "--sampler",
        "euler",
        "--steps",
        "2",
        "--batch-size",
        "4",
        "--vae-weights",
        ci_vae,
        "--device",
        "cpu",
        "--no-progress",
    )
    assert res.code == 0, res
    import numpy as np

    with np.load(tmp_path / "samples.npz") as samples:
        assert samples["arr_0"].shape == (4, 64, 64, 3) and samples["arr_0"].dtype == np.uint8


def test_changed_config_on_resume_is_refused(run_cli, tmp_path, ci_stores):
    run_dir = tmp_path / "run"
    assert run_cli("train", "--preset", "ci", *ci_stores, "train.max_steps=2", "--run-dir", run_dir).code == 0
    res = run_cli("train", "--preset", "ci", *ci_stores, "align.weight=0.5", "--run-dir", run_dir)
    assert res.code == 2 and "align.weight: 1.0 -> 0.5" in res.err and "use a new run directory" in res.err


def test_teacher_weights_are_looked_for_in_the_irepa_cache(run_cli, tmp_path, ci_stores, monkeypatch):
    """The trainer's teacher looks where `irepa encoders download` puts weights ($IREPA_CACHE/encoders/ID/)."""
    import yaml

    from irepa.training.presets import load_preset

    layer = load_preset("ci")
    layer["align"]["encoders"] = ["mocov3-vit-s"]  # hosted at a URL: only the irepa cache can hold it offline
    layer["teacher"] = {"offline": True}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(layer))
    cache = tmp_path / "cache"
    monkeypatch.setenv("IREPA_CACHE", str(cache))
    res = run_cli("train", "--config", tmp_path / "c.yaml", *ci_stores, "--run-dir", tmp_path / "r")
    assert res.code == 2 and f"irepa cache {cache / 'encoders' / 'mocov3-vit-s'}" in res.err, res

    # A (corrupt) file where the download command would have put it is found and read: one-line error naming it.
    folder = cache / "encoders" / "mocov3-vit-s"
    folder.mkdir(parents=True)
    (folder / "vit-s-300ep.pth.tar").write_bytes(b"not a checkpoint")
    res = run_cli("train", "--config", tmp_path / "c.yaml", *ci_stores, "--run-dir", tmp_path / "r2")
    assert res.code == 2 and str(folder / "vit-s-300ep.pth.tar") in res.err, res
    assert len(res.err.strip().splitlines()) == 1


def test_run_dir_that_is_a_file_is_a_one_line_error(run_cli, tmp_path, ci_stores):
    (tmp_path / "afile").write_text("x")
    for extra in (["--dry-run"], []):
        for run_dir in (tmp_path / "afile", tmp_path / "afile" / "below"):
            res = run_cli("train", "--preset", "ci", *ci_stores, "--run-dir", run_dir, *extra)
            assert res.code == 2 and f"{str(tmp_path / 'afile')!r} is a file, not a folder" in res.err, res
            assert len(res.err.strip().splitlines()) == 1


def test_world_size_without_master_addr_is_a_one_line_error(run_cli_subprocess, tmp_path):
    env = {"WORLD_SIZE": "2", "RANK": "0", "LOCAL_RANK": "0", "MASTER_ADDR": "", "MASTER_PORT": ""}
    res = run_cli_subprocess("train", "--preset", "debug", "--run-dir", tmp_path / "r", env=env, timeout=120)
    assert res.code == 2 and "cannot set up the distributed processes" in res.err and "MASTER_ADDR" in res.err, res
    assert "Traceback" not in res.err and len(res.err.strip().splitlines()) == 1


def test_interrupted_data_prepare_is_named_an_incomplete_store(run_cli, tmp_path, ci_stores):
    """What a killed `irepa data prepare` leaves (build.json + shards, no manifest) is resumable, not 'no store'."""
    import shutil
    from pathlib import Path

    images = Path(ci_stores[0].split("=", 1)[1])
    partial = tmp_path / "partial"
    shutil.copytree(images, partial)
    manifest = json.loads((partial / "manifest.json").read_text())
    (partial / "manifest.json").unlink()
    (partial / "build.json").write_text(json.dumps(manifest["build"]))
    res = run_cli("train", "--preset", "ci", f"data.images={partial}", ci_stores[1], "--run-dir", tmp_path / "r")
    assert res.code == 2 and "is an incomplete data store (1 shard(s) written, no manifest.json)" in res.err, res
    assert "re-run that command with the same arguments" in res.err and "create it" not in res.err


def test_ci_jit_preset_trains_resumes_exactly_and_samples(run_cli, tmp_path, ci_stores):
    """The jit objective end to end on the CI image store: the loss falls, a resumed run equals the uninterrupted one
    bit for bit, and ``irepa sample`` draws from its snapshot."""
    import torch
    from safetensors.torch import load_file

    images = ci_stores[0]  # pixel space: the image store only
    full = tmp_path / "full"
    res = run_cli("train", "--preset", "ci-jit", images, "train.max_steps=8", "--run-dir", full)
    assert res.code == 0, res
    assert "objective jit (x-prediction" in res.err and "align dinov2-vit-b at block 1" in res.err
    rows = [json.loads(line) for line in (full / "metrics.jsonl").read_text().splitlines()]
    denoise = [r["denoise"] for r in rows]
    assert len(denoise) == 8 and sum(denoise[-3:]) < 0.7 * sum(denoise[:3]), denoise  # the loss falls

    resumed = tmp_path / "resumed"
    assert run_cli("train", "--preset", "ci-jit", images, "train.max_steps=4", "--run-dir", resumed).code == 0
    res = run_cli("train", "--preset", "ci-jit", images, "train.max_steps=8", "--run-dir", resumed)
    assert res.code == 0 and "resumed from step-0000004" in res.err
    a, b = (run / "checkpoints" / "step-0000008" for run in (full, resumed))
    for part in ("model", "ema.model", "aligner"):
        ta, tb = load_file(a / f"{part}.safetensors"), load_file(b / f"{part}.safetensors")
        assert ta.keys() == tb.keys() and all(torch.equal(ta[k], tb[k]) for k in ta), part
    oa, ob = (torch.load(f / "optimizer.main.pt", weights_only=True)["state"] for f in (a, b))
    assert all(torch.equal(oa[i]["exp_avg_sq"], ob[i]["exp_avg_sq"]) for i in oa)

    # The snapshot says how to sample it (x-prediction, JiT's Heun), and the library generation path draws from it.
    from irepa.diffusion.generate import SamplingSettings, SnapshotSampler

    sampler, meta = SnapshotSampler.load(full / "snapshots" / "ema-0000008.safetensors")
    assert meta["diffusion"]["prediction"] == "x" and meta["diffusion"]["sampler"]["method"] == "heun"
    assert meta["space"]["kind"] == "pixel" and meta["model"]["name"] == "JiT-B/16"
    out = sampler.generate([0, 1, 2], torch.tensor([0, 1, 4]), SamplingSettings(sampler="heun", steps=3, cfg_scale=2.0))
    assert out.images.shape == (3, 3, 64, 64) and out.images.dtype == torch.uint8 and bool(out.finite.all())
