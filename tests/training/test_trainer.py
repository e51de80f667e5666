"""The trainer on tiny CPU configs: learning, alignment wiring, exact resume, faults."""

from __future__ import annotations

import errno
import json
import random

import numpy as np
import pytest
import torch

from irepa.errors import ConfigError, IrepaError
from irepa.training.checkpoint import CheckpointError
from irepa.training.config import resolve_config
from irepa.training.guard import NonFiniteError
from irepa.training.trainer import Trainer


def fit(run_dir, overrides):
    trainer = Trainer(resolve_config(overrides=overrides), run_dir)
    return trainer, trainer.fit()


def final_state(run_dir, step):
    """Every tensor of the checkpoint at ``step``: weights, EMA, aligner and optimizer moments."""
    from safetensors.torch import load_file

    folder = run_dir / "checkpoints" / f"step-{step:07d}"
    out = {}
    for part in ("model", "ema.model", "aligner"):
        out.update({f"{part}/{k}": v for k, v in load_file(folder / f"{part}.safetensors").items()})
    optim = torch.load(folder / "optimizer.main.pt", weights_only=True)
    for index, state in optim["state"].items():
        out.update({f"optim/{index}/{k}": v for k, v in state.items() if isinstance(v, torch.Tensor)})
    return out


def assert_identical(a, b):
    assert a.keys() == b.keys()
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert not different, f"{len(different)} tensors differ, e.g. {different[:3]}"


def records(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def reference(tmp_path_factory, latent_stores, latent_overrides):
    """An uninterrupted 8-step latent-space run with alignment (checkpoints at 4 and 8)."""
    run_dir = tmp_path_factory.mktemp("reference")
    _, result = fit(run_dir, latent_overrides(latent_stores))
    assert result.status == "completed" and result.step == 8 and result.nimg == 64
    return run_dir, final_state(run_dir, 8)


def test_run_directory_layout_and_logs(reference):
    run_dir, _ = reference
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["step-0000004", "step-0000008"]
    assert (run_dir / "snapshots" / "ema-0000008.safetensors").is_file()
    cfg = resolve_config(config_file=run_dir / "config.yaml")
    assert cfg.model.name == "SiT-S/2" and cfg.align.encoders == ["hog"]
    rows = records(run_dir)
    assert [r["step"] for r in rows] == [2, 4, 6, 8]
    for key in ("loss", "denoise", "align", "align_loss", "align_cos", "align_weight", "grad_norm", "img_per_s"):
        assert all(key in r for r in rows), key
    last = rows[-1]
    assert last["loss"] == pytest.approx(last["denoise"] + last["align"], rel=1e-5)
    assert 0 < last["teacher_share"] < 1 and last["nimg"] == 64 and last["nonfinite_skipped"] == 0
    log = (run_dir / "log.txt").read_text()
    assert "global batch 8 = 1 x 1 accumulation x 8 per device" in log and "starting from scratch" in log


def test_snapshot_is_self_describing(reference):
    from irepa.models.io import load_inference

    run_dir, state = reference
    model, meta = load_inference(run_dir / "snapshots" / "ema-0000008.safetensors")
    assert meta["step"] == 8 and meta["ema"] is True and meta["diffusion"]["path"] == "linear"
    assert meta["space"]["kind"] == "latent" and meta["space"]["size"] == [8, 8]
    assert meta["space"]["normalization"]["kind"] == "per-channel"
    assert meta["config"]["align"]["encoders"] == ["hog"]
    for name, value in model.state_dict().items():
        assert torch.equal(value, state[f"ema.model/{name}"]), name


@pytest.mark.parametrize("crash_kind", ["exception"])
def test_crash_at_random_step_then_resume_is_bit_identical(
    tmp_path, latent_stores, reference, monkeypatch, crash_kind, latent_overrides
):
    crash_at = random.Random(1234).randint(5, 7)  # after the step-4 checkpoint, before the end
    original = Trainer.train_step

    def crashing(self, batches):
        if self.step + 1 == crash_at:
            raise RuntimeError("simulated crash")
        return original(self, batches)

    monkeypatch.setattr(Trainer, "train_step", crashing)
    with pytest.raises(RuntimeError, match="simulated crash"):
        fit(tmp_path, latent_overrides(latent_stores))
    monkeypatch.setattr(Trainer, "train_step", original)
    _, result = fit(tmp_path, latent_overrides(latent_stores))  # the same command again
    assert result.step == 8
    assert_identical(final_state(tmp_path, 8), reference[1])
    assert [r["step"] for r in records(tmp_path)] == [2, 4, 6, 8]  # the lost segment's records were dropped


def test_corrupt_latest_checkpoint_falls_back(tmp_path, latent_stores, reference, latent_overrides):
    fit(tmp_path, latent_overrides(latent_stores))
    weights = tmp_path / "checkpoints" / "step-0000008" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-100])  # truncated
    trainer, result = fit(tmp_path, latent_overrides(latent_stores))
    assert trainer._resumed_from.step == 4 and result.step == 8
    log = (tmp_path / "log.txt").read_text()
    assert "step-0000008: model.safetensors is truncated" in log and "falling back to step-0000004" in log
    assert (tmp_path / "checkpoints" / "corrupt-step-0000008").is_dir()
    assert_identical(final_state(tmp_path, 8), reference[1])


def test_out_of_disk_keeps_the_previous_checkpoint(tmp_path, latent_stores, monkeypatch, latent_overrides):
    from irepa.training import checkpoint

    real_save = torch.save
    calls = {"n": 0}

    def save(obj, f, *args, **kwargs):
        if "optimizer" in str(f):
            calls["n"] += 1
            if calls["n"] == 2:  # the second checkpoint (step 8) hits a full disk
                raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(checkpoint.torch, "save", save)
    with pytest.raises(CheckpointError, match=r"No space left on device.*step-0000004 is intact"):
        fit(tmp_path, latent_overrides(latent_stores))
    monkeypatch.undo()
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["step-0000004"]
    trainer, result = fit(tmp_path, latent_overrides(latent_stores))
    assert trainer._resumed_from.step == 4 and result.step == 8


def test_nan_batch_is_skipped_and_counted(tmp_path, pixel_store, monkeypatch, pixel_overrides):
    trainer = Trainer(resolve_config(overrides=pixel_overrides(pixel_store, "train.max_steps=4")), tmp_path)
    original = trainer.data.model_input
    before = {}

    def poisoned(batch, eps):
        x0 = original(batch, eps)
        if trainer.step == 2:  # the third step's batch holds a NaN
            before.update({k: v.clone() for k, v in trainer.model.state_dict().items()})
            x0[0, 0, 0, 0] = float("nan")
        return x0

    trainer.data.model_input = poisoned
    original_step = trainer.train_step

    def step_and_check(batches):
        out = original_step(batches)
        if trainer.step == 3:  # the poisoned step changed nothing
            for k, v in trainer.model.state_dict().items():
                assert torch.equal(v, before[k]), k
        return out

    trainer.train_step = step_and_check
    result = trainer.fit()
    assert result.status == "completed" and trainer.guard.skipped == 1
    last = records(tmp_path)[-1]
    assert last["nonfinite_skipped"] == 1 and torch.isfinite(torch.tensor(last["loss"]))
    log = (tmp_path / "log.txt").read_text()
    # The pixel inputs themselves were finite (the NaN came later), so the warning lists the step's samples.
    assert "step 3: skipped, non-finite gradients (non-finite terms: denoise" in log
    assert "; inputs finite, samples of the step: " in log


def test_nan_latents_name_their_samples(tmp_path, latent_stores, latent_overrides):
    """A latent store holding NaN moments: the skipped step's warning names the dataset indices to inspect."""
    trainer = Trainer(resolve_config(overrides=latent_overrides(latent_stores, "train.max_steps=3")), tmp_path)
    original = trainer.data.next_batch
    poisoned: list[int] = []

    def next_batch():
        batch = original()
        if trainer.step == 1:
            batch["moments"][1, 0, 2, 3] = float("nan")  # one value of one sample's stored moments
            poisoned.append(int(batch["index"][1]))
        return batch

    trainer.data.next_batch = next_batch
    assert trainer.fit().status == "completed" and trainer.guard.skipped == 1
    log = (tmp_path / "log.txt").read_text()
    assert "step 2: skipped, non-finite gradients (non-finite terms: denoise" in log
    assert f"; non-finite inputs: samples {poisoned[0]} of the data store)" in log


def test_nan_patience_stops_with_a_message(tmp_path, pixel_store, pixel_overrides):
    cfg = resolve_config(overrides=pixel_overrides(pixel_store, "train.nonfinite_patience=3"))
    trainer = Trainer(cfg, tmp_path)
    trainer.data.model_input = lambda batch, eps: torch.full((8, 3, 32, 32), float("nan"))
    with pytest.raises(NonFiniteError, match=r"stopped at step 3: 3 consecutive steps .*non-finite terms: .*denoise"):
        trainer.fit()


def test_overfits_a_few_latents(tmp_path, latent_stores, latent_overrides):
    overrides = latent_overrides(
        latent_stores,
        "align.encoders=[]",
        "diffusion.label_dropout=0",
        "optim.lr=5e-3",
        "train.max_steps=300",
        "train.log_every_steps=10",
        "train.checkpoint_every_steps=0",
        "model.overrides={depth: 2, hidden_size: 128, num_heads: 2}",
    )
    fit(tmp_path, overrides)
    losses = [r["denoise"] for r in records(tmp_path)]
    assert losses[-1] < 0.4 * losses[0], losses  # 8 latents, 300 steps: ~1.87 -> ~0.59 on this CPU


def test_aligner_taps_the_configured_block(tmp_path, pixel_store, pixel_overrides):
    cfg = resolve_config(
        overrides=pixel_overrides(
            pixel_store, "model.overrides={depth: 3, hidden_size: 64, num_heads: 2}", "align.depth=2"
        )
    )
    trainer = Trainer(cfg, tmp_path)
    batch = next(trainer.data.iterator())
    x0 = trainer.data.model_input(batch, None)
    targets = trainer.alignment.targets(batch["image"])
    t, noise = torch.full((8,), 0.5), torch.randn_like(x0)
    draws = {"t": t, "noise": noise, "drop": torch.zeros(8, dtype=torch.bool)}
    terms = trainer.objective(batch, draws, 0)
    terms["align"].backward()
    blocks = trainer.model.blocks
    grad = [sum(float(p.grad.abs().sum()) if p.grad is not None else 0.0 for p in b.parameters()) for b in blocks]
    assert grad[0] > 0 and grad[1] > 0 and grad[2] == 0.0, grad  # blocks 1..2 feed the aligned tokens; 3 does not
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in trainer.alignment.aligner.parameters())
    # The aligned tokens are exactly the model's block-2 output.
    x_t = 0.5 * x0 + 0.5 * noise  # the linear path at t = 0.5
    hidden = trainer.model(x_t, t, batch["label"], return_hidden=2).hidden
    with torch.no_grad():
        expected = trainer.alignment.aligner.compute(targets, source=hidden, grid=trainer.model.grid)["align_loss"]
    assert terms["align_loss"].item() == pytest.approx(expected.item(), rel=1e-6)


def test_grad_accumulation_matches_one_big_batch(tmp_path, pixel_store, pixel_overrides):
    one = pixel_overrides(pixel_store, "train.max_steps=3", "train.checkpoint_every_steps=0")
    fit(tmp_path / "one", one)
    fit(tmp_path / "two", [*one, "optim.grad_accumulation=2"])
    a, b = (final_state(tmp_path / name, 3) for name in ("one", "two"))
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-4, atol=1e-6, msg=key)


def test_resume_refuses_a_different_config(tmp_path, pixel_store, pixel_overrides):
    fit(tmp_path, pixel_overrides(pixel_store, "train.max_steps=2"))
    with pytest.raises(ConfigError, match=r"optim\.lr: 0\.001 -> 0\.002"):
        Trainer(resolve_config(overrides=pixel_overrides(pixel_store, "optim.lr=2e-3")), tmp_path)
    _trainer, result = fit(tmp_path, pixel_overrides(pixel_store, "train.max_steps=4"))  # resumable change
    assert result.step == 4 and "train.max_steps: 2 -> 4" in (tmp_path / "log.txt").read_text()


def test_checkpoint_of_another_architecture_names_the_keys(tmp_path, pixel_store, monkeypatch, pixel_overrides):
    from irepa.training import trainer as trainer_module

    fit(tmp_path, pixel_overrides(pixel_store, "train.max_steps=2"))
    (tmp_path / "config.yaml").unlink()
    monkeypatch.setattr(trainer_module, "check_resume_compatible", lambda *a, **k: {})
    deeper = pixel_overrides(pixel_store, "model.overrides={depth: 3, hidden_size: 64, num_heads: 2}")
    with pytest.raises(CheckpointError, match=r"model from checkpoint .*missing keys blocks\.2\."):
        fit(tmp_path, deeper)


def test_custom_hooks_run_at_their_interval(tmp_path, pixel_store, pixel_overrides):
    trainer = Trainer(resolve_config(overrides=pixel_overrides(pixel_store, "train.max_steps=5")), tmp_path)
    seen = []
    trainer.add_hook("probe", 2, lambda t: seen.append(t.step))
    trainer.fit()
    assert seen == [2, 4, 5]  # every 2 steps and at the end


def test_missing_store_is_a_clear_error(tmp_path, pixel_store, pixel_overrides):
    with pytest.raises(Exception, match=r"data\.images=.*is not a data store.*irepa data prepare") as info:
        Trainer(resolve_config(overrides=pixel_overrides(tmp_path / "nope")), tmp_path / "run")
    assert "\n" not in str(info.value)


def test_store_not_matching_the_config_is_refused(tmp_path, pixel_store, pixel_overrides):
    with pytest.raises(Exception, match="resolution expected 256, found 32"):
        Trainer(resolve_config(overrides=pixel_overrides(pixel_store, "data.resolution=256")), tmp_path)


def test_compiled_model_trains_and_checkpoints_plain_keys(tmp_path, pixel_store, pixel_overrides, monkeypatch):
    # Dynamo with the "eager" backend: the trainer's compile path (one graph for model + loss + aligner, DDP
    # wrapping, plain state-dict keys) without inductor's minutes of C++ compilation on a CPU.
    original = torch.compile
    calls = []

    def compile_eager(fn, *args, **kwargs):
        calls.append(getattr(fn, "__name__", type(fn).__name__))
        return original(fn, *args, backend="eager", **kwargs)

    monkeypatch.setattr(torch, "compile", compile_eager)
    overrides = pixel_overrides(pixel_store, "train.max_steps=2", "align.weight=0.7", "align.warmup_steps=2")
    _, result = fit(tmp_path / "compiled", [*overrides, "train.compile=true"])
    assert result.status == "completed" and calls == ["_terms"]
    state = final_state(tmp_path / "compiled", 2)
    assert not any("_orig_mod" in key for key in state)
    assert all(torch.isfinite(torch.tensor(r["loss"])) for r in records(tmp_path / "compiled"))
    # the traced graph computes what the eager step does, the step's alignment weight included (a warmup schedule)
    fit(tmp_path / "eager", overrides)
    assert_identical(state, final_state(tmp_path / "eager", 2))


@pytest.mark.gpu
@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_mixed_precision_on_cuda(tmp_path, latent_stores, latent_overrides, precision):
    overrides = latent_overrides(
        latent_stores, "train.device=cuda", f"train.precision={precision}", "train.max_steps=4"
    )
    trainer, result = fit(tmp_path, overrides)
    assert result.status == "completed" and trainer.device.type == "cuda"
    rows = records(tmp_path)
    assert all(torch.isfinite(torch.tensor(r["loss"])) for r in rows) and "mem_gb" in rows[-1]
    assert ("loss_scale" in rows[-1]) == (precision == "fp16")
    assert all(v.dtype == torch.float32 for v in final_state(tmp_path, 4).values() if v.is_floating_point())


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only refusal")
def test_fp16_needs_cuda(tmp_path, pixel_store, pixel_overrides):
    with pytest.raises(ConfigError, match="fp16 needs a CUDA device"):
        Trainer(resolve_config(overrides=pixel_overrides(pixel_store, "train.precision=fp16")), tmp_path)


def test_diverged_processes_are_detected_before_writing(tmp_path, pixel_store, pixel_overrides, monkeypatch):
    trainer = Trainer(resolve_config(overrides=pixel_overrides(pixel_store, "train.max_steps=2")), tmp_path)
    trainer.world_size = 2  # pretend: a second process whose weights drifted (e.g. an unsynchronized launch)
    monkeypatch.setattr(trainer.accelerator, "gather", lambda x: torch.cat([x, x + 1.0]))
    with pytest.raises(IrepaError, match="2 processes hold different weights at step 0: they are not synchronized"):
        trainer.save_checkpoint()
    assert not (tmp_path / "checkpoints").exists()


def test_previews_sample_the_ema_model_through_the_generation_loop(tmp_path, pixel_store, pixel_overrides):
    from PIL import Image

    overrides = pixel_overrides(
        pixel_store, "train.max_steps=2", "train.preview_every_steps=1", "train.preview_samples=4"
    )
    fit(tmp_path, overrides)
    files = sorted(p.name for p in (tmp_path / "previews").iterdir())
    assert files == ["step-0000001.png", "step-0000002.png"]
    grid = np.asarray(Image.open(tmp_path / "previews" / "step-0000002.png"))
    assert grid.shape == (2 * 33 - 1, 2 * 33 - 1, 3) and grid.std() > 0  # 2 x 2 samples of 32 px, 1 px gaps
    # The same samples as the library loop on the EMA snapshot written at the same step.
    from irepa.diffusion.generate import SamplingSettings, SnapshotSampler
    from irepa.diffusion.samplers import sample_labels

    sampler, _ = SnapshotSampler.load(tmp_path / "snapshots" / "ema-0000002.safetensors")
    labels = sample_labels(4, 4, "balanced", 0)
    images = sampler.generate(range(4), labels, SamplingSettings(sampler="euler", steps=50, cfg_scale=4.0)).images
    assert np.array_equal(grid[:32, :32], images[0].permute(1, 2, 0).numpy())


def test_resume_with_another_process_count_logs_the_rng_warning(tmp_path, pixel_store, pixel_overrides):
    """The 'written by N processes, RNG re-seeded' warning reaches the log (it was appended after the flush)."""
    from irepa.utils.io import sha256_file

    run_dir = tmp_path / "run"
    fit(run_dir, pixel_overrides(pixel_store, "train.max_steps=4"))
    folder = run_dir / "checkpoints" / "step-0000004"
    state = torch.load(folder / "trainer.pt", weights_only=True)
    state["rng"] = state["rng"] * 2  # as if written by 2 processes
    torch.save(state, folder / "trainer.pt")
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["files"]["trainer.pt"] = {
        "bytes": (folder / "trainer.pt").stat().st_size,
        "sha256": sha256_file(folder / "trainer.pt"),
    }
    (folder / "manifest.json").write_text(json.dumps(manifest))
    _, result = fit(run_dir, pixel_overrides(pixel_store, "train.max_steps=6"))
    assert result.step == 6
    assert "written by 2 process(es), this run has 1" in (run_dir / "log.txt").read_text()


def test_non_finite_weights_are_never_checkpointed(tmp_path, pixel_store, pixel_overrides):
    """Weights turned NaN by an update (finite gradients) stop the run at the next checkpoint, which is not written."""
    run_dir = tmp_path / "run"
    trainer = Trainer(resolve_config(overrides=pixel_overrides(pixel_store)), run_dir)

    def poison(t):
        with torch.no_grad():
            next(t.unwrapped_model.parameters()).fill_(float("nan"))

    trainer.add_hook("poison", 6, poison, at_end=False)
    with pytest.raises(NonFiniteError, match=r"step 8: \d+ weight tensor\(s\) of model are non-finite .*step-0000004"):
        trainer.fit()
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["step-0000004"]
    assert not (run_dir / "snapshots" / "ema-0000008.safetensors").exists()


@pytest.mark.parametrize("disk", ["real tmpfs", "faked ENOSPC"])
def test_full_disk_at_the_snapshot_is_a_checkpoint_error(tmp_path, pixel_store, pixel_overrides, disk, request):
    """A snapshot write that the file system refuses: one-line CheckpointError, no partial file, checkpoint kept."""
    run_dir = tmp_path / "run"
    snapshots = run_dir / "snapshots"
    if disk == "real tmpfs":
        fs = request.getfixturevalue("small_filesystem")(64)  # 64 KiB: the tiny model's snapshot does not fit
        run_dir.mkdir()
        snapshots.symlink_to(fs, target_is_directory=True)
    else:
        from irepa.utils import io

        def full_disk(tensors, path, metadata=None):  # half the file reaches the disk, then ENOSPC
            with io.atomic_write(path, "wb") as f:
                f.write(b"\0" * 1024)
                raise OSError(errno.ENOSPC, "No space left on device")

        request.getfixturevalue("monkeypatch").setattr(io, "save_safetensors", full_disk)
    overrides = pixel_overrides(pixel_store, "train.max_steps=4", "train.snapshot_every_steps=4")
    with pytest.raises(CheckpointError, match=r"could not write EMA snapshot .*ema-0000004.*No space left") as info:
        fit(run_dir, overrides)
    assert "\n" not in str(info.value)
    assert list(snapshots.iterdir()) == []  # neither the snapshot nor its temporary file
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["step-0000004"]


def test_resume_writes_the_missing_snapshot_of_the_checkpoint_step(tmp_path, pixel_store, pixel_overrides):
    """Killed between the checkpoint and its snapshot: the resume writes that snapshot and drops stale temporaries."""
    run_dir = tmp_path / "run"
    fit(run_dir, pixel_overrides(pixel_store, "train.max_steps=4", "train.snapshot_every_steps=4"))
    snapshots = run_dir / "snapshots"
    (snapshots / "ema-0000004.safetensors").unlink()
    (snapshots / ".ema-0000004.safetensors.x1y2.tmp").write_bytes(b"\0" * 100)  # a write killed half-way
    trainer, result = fit(run_dir, pixel_overrides(pixel_store, "train.max_steps=8", "train.snapshot_every_steps=4"))
    assert trainer._resumed_from.step == 4 and result.step == 8
    assert sorted(p.name for p in snapshots.iterdir()) == ["ema-0000004.safetensors", "ema-0000008.safetensors"]
    from safetensors import safe_open

    with safe_open(snapshots / "ema-0000004.safetensors", "pt") as f:
        assert f.metadata()["step"] == "4"


def test_resume_names_earlier_snapshots_it_cannot_rebuild(tmp_path, pixel_store, pixel_overrides):
    """A snapshot removed before the checkpoint step cannot come back from the checkpoint's EMA: the log says so."""
    run_dir = tmp_path / "run"
    fit(run_dir, pixel_overrides(pixel_store, "train.max_steps=4", "train.snapshot_every_steps=2"))
    (run_dir / "snapshots" / "ema-0000002.safetensors").unlink()
    (run_dir / "snapshots" / "ema-0000004.safetensors").unlink()
    fit(run_dir, pixel_overrides(pixel_store, "train.max_steps=6", "train.snapshot_every_steps=2"))
    names = sorted(p.name for p in (run_dir / "snapshots").iterdir())
    assert names == ["ema-0000004.safetensors", "ema-0000006.safetensors"]  # step 4 rebuilt from its checkpoint
    log = (run_dir / "log.txt").read_text()
    assert "EMA snapshot(s) of step 2 are missing from " in log and "cannot be rebuilt (checkpoint step-0000004" in log


def test_stop_signal_at_a_snapshot_step_still_writes_the_snapshot_and_runs_hooks(
    tmp_path, pixel_store, pixel_overrides
):
    import os
    import signal

    overrides = pixel_overrides(pixel_store, "train.snapshot_every_steps=3")
    trainer = Trainer(resolve_config(overrides=overrides), tmp_path)
    seen = []
    trainer.add_hook("term", 2, lambda t: os.kill(os.getpid(), signal.SIGTERM) if t.step == 2 else None)
    trainer.add_hook("probe", 3, lambda t: seen.append(t.step))
    result = trainer.fit()  # the signal arrives after step 2; the loop stops after step 3
    assert result.status == "interrupted" and result.step == 3
    assert (tmp_path / "snapshots" / "ema-0000003.safetensors").exists() and seen == [3]
