"""The trainer step's speed-related choices: the AdamW implementation (numerics are pinned by the denoising fixture)."""

from __future__ import annotations

import json
import re

import pytest
import torch

from irepa.training.config import resolve_config
from irepa.training.trainer import Trainer


def test_adamw_is_pytorch_default_unless_fused_is_asked_for(tmp_path, pixel_store, pixel_overrides):
    # The default's numerics are pinned by tests/training/test_denoising_fixture.py (every AdamW moment).
    default = Trainer(resolve_config(overrides=pixel_overrides(pixel_store)), tmp_path / "default")
    assert all(o.defaults["foreach"] is None and not o.defaults["fused"] for o in default.optimizers.values())
    overrides = pixel_overrides(pixel_store, "optim.fused=true", "train.max_steps=2", "train.checkpoint_every_steps=0")
    trainer = Trainer(resolve_config(overrides=overrides), tmp_path / "fused")
    assert all(o.defaults["fused"] for o in trainer.optimizers.values())
    result = trainer.fit()
    assert result.status == "completed" and result.step == 2
    rows = [json.loads(line) for line in (tmp_path / "fused" / "metrics.jsonl").read_text().splitlines()]
    assert rows and all(torch.isfinite(torch.tensor(r["loss"])) for r in rows)


# Tensor methods that read a value on the host: on a GPU each waits for the device (a host-device sync).
_HOST_READS = ("item", "tolist", "__bool__", "__float__", "__int__", "__index__", "numpy", "cpu")


def _forbid_host_reads(monkeypatch, active):
    """Make every host read of a tensor raise while ``active()``; returns the list of offending calls."""
    seen = []
    for name in _HOST_READS:
        original = getattr(torch.Tensor, name)

        def guarded(self, *args, _name=name, _original=original, **kwargs):
            if active():
                seen.append(_name)
                raise AssertionError(f"host read Tensor.{_name} inside a training step")
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, name, guarded)
    return seen


def test_fused_steps_read_nothing_from_the_device(tmp_path, pixel_store, pixel_overrides, monkeypatch):
    overrides = pixel_overrides(pixel_store, "optim.fused=true", "train.max_steps=5", "train.log_every_steps=3")
    trainer = Trainer(resolve_config(overrides=overrides), tmp_path)
    assert trainer.deferred_guard
    inside = []
    original_step = trainer.train_step

    def step(batches):
        inside.append(True)
        try:
            return original_step(batches)
        finally:
            inside.pop()

    trainer.train_step = step
    seen = _forbid_host_reads(monkeypatch, lambda: bool(inside))
    result = trainer.fit()  # the log intervals (steps 3, 5) and the final checkpoint read outside the steps
    assert result.status == "completed" and result.step == 5 and not seen
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [3, 5] and all(r["nonfinite_skipped"] == 0 for r in rows)


def test_the_detector_catches_the_default_steps_host_read(tmp_path, pixel_store, pixel_overrides, monkeypatch):
    # The same check on the default (non-fused) step fails: it reads the guard's flags every step.
    trainer = Trainer(resolve_config(overrides=pixel_overrides(pixel_store, "train.max_steps=1")), tmp_path)
    assert not trainer.deferred_guard
    batches = trainer.data.iterator()
    seen = _forbid_host_reads(monkeypatch, lambda: True)
    with pytest.raises(AssertionError, match=r"host read Tensor\.tolist inside a training step"):
        trainer.train_step(batches)
    assert seen == ["tolist"]


def test_fused_non_finite_step_is_skipped_on_the_device(tmp_path, pixel_store, pixel_overrides):
    overrides = pixel_overrides(pixel_store, "optim.fused=true", "train.max_steps=4")
    trainer = Trainer(resolve_config(overrides=overrides), tmp_path)
    original = trainer.data.model_input
    before = {}

    def poisoned(batch, eps):
        x0 = original(batch, eps)
        if trainer.step == 2:  # the third step's batch holds a NaN
            before["model"] = {k: v.clone() for k, v in trainer.model.state_dict().items()}
            before["ema"] = {k: v.clone() for k, v in trainer.ema.state_dict().items()}
            before["adam"] = [v.clone() for s in trainer.optimizers["main"].state.values() for v in s.values()]
            x0[0, 0, 0, 0] = float("nan")
        return x0

    trainer.data.model_input = poisoned
    original_step = trainer.train_step

    def step_and_check(batches):
        out = original_step(batches)
        if trainer.step == 3:  # the poisoned step changed nothing: weights, EMA, AdamW moments and step counts
            for k, v in trainer.model.state_dict().items():
                assert torch.equal(v, before["model"][k]), k
            for k, v in trainer.ema.state_dict().items():
                assert torch.equal(v, before["ema"][k]), k
            after = [v for s in trainer.optimizers["main"].state.values() for v in s.values()]
            assert all(torch.equal(a, b) for a, b in zip(after, before["adam"], strict=True))
        return out

    trainer.train_step = step_and_check
    result = trainer.fit()
    assert result.status == "completed" and trainer.guard.skipped == 1
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["nonfinite_skipped"] for r in rows] == [0, 1]
    assert all(torch.isfinite(torch.tensor(r["loss"])) for r in rows)
    # the default step's warning, written at the log interval of step 4
    assert re.search(
        r"step 3: skipped, non-finite gradients \(non-finite terms: .*denoise.*; inputs finite, samples of the step: ",
        (tmp_path / "log.txt").read_text(),
    )


def test_fused_patience_raises_at_the_next_log_interval(tmp_path, pixel_store, pixel_overrides):
    from irepa.training.guard import NonFiniteError

    overrides = pixel_overrides(pixel_store, "optim.fused=true", "train.nonfinite_patience=2")
    trainer = Trainer(resolve_config(overrides=overrides), tmp_path)
    finite = trainer.data.model_input
    trainer.data.model_input = lambda batch, eps: finite(batch, eps) * (float("nan") if trainer.step in (1, 2) else 1)
    after_step_1 = {}

    def keep_step_1(t):
        if t.step == 1:
            after_step_1.update({k: v.clone() for k, v in t.model.state_dict().items()})

    trainer.add_hook("probe", 1, keep_step_1, at_end=False)
    with pytest.raises(NonFiniteError, match=r"stopped at step 3: 2 consecutive steps .*non-finite terms: .*denoise"):
        trainer.fit()
    # Steps 2 and 3 were non-finite: the guard tripped at step 3 and froze every update from then on (step 4's
    # finite gradients included); the error came at the next host read, the log interval of step 4.
    assert trainer.step == 4 and trainer.guard.skipped == 2
    assert all(torch.equal(v, after_step_1[k]) for k, v in trainer.model.state_dict().items())
    assert "step 2: skipped, non-finite gradients" in (tmp_path / "log.txt").read_text()


@pytest.mark.gpu
def test_fused_cuda_steps_do_not_synchronize(tmp_path, pixel_store, pixel_overrides):
    # CUDA's own detector: any stream/device synchronization inside steps 2-3 raises (step 1 initializes state).
    overrides = pixel_overrides(
        pixel_store, "optim.fused=true", "train.device=cuda", "train.max_steps=3", "train.log_every_steps=3"
    )
    trainer = Trainer(resolve_config(overrides=overrides), tmp_path)
    original_step = trainer.train_step

    def step(batches):
        if trainer.step == 0:
            return original_step(batches)
        torch.cuda.set_sync_debug_mode("error")
        try:
            return original_step(batches)
        finally:
            torch.cuda.set_sync_debug_mode("default")

    trainer.train_step = step
    assert trainer.fit().step == 3


def test_bench_trainer_step_quick():
    # keeps benchmarks/bench_trainer_step.py working (its numbers are not checked)
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_trainer_step.py"
    spec = importlib.util.spec_from_file_location("bench_trainer_step", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    result = module.main(quick=True)
    assert set(result["step_ms"]) == {"trainer", "trainer-fused", "bare"}
    assert set(result["adamw_update_ms"]) == {"for-loop", "foreach", "fused"}


def test_teacher_precision_and_attention_kernel(tmp_path, pixel_store, pixel_overrides):
    from irepa.training.alignment import AlignmentTerm

    overrides = pixel_overrides(
        pixel_store,
        "align.encoders=[dinov2-vit-b]",
        "teacher.pretrained=false",
        "teacher.arch_overrides={dinov2-vit-b: {depth: 1}}",
        "teacher.resolution=128",
        "model.name=SiT-S/2",
    )
    config = resolve_config(overrides=[*overrides, "train.precision=bf16"])
    term = AlignmentTerm.from_config(config, image_size=32, grid=(8, 8), source_dim=64, what="SiT", device="cpu")
    assert term.precision == "fp32"  # auto on the CPU, although the training autocast is bf16
    images = torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8)
    training_autocast = torch.autocast("cpu", dtype=torch.bfloat16)
    fp32 = term.targets(images, autocast=training_autocast)["dinov2-vit-b"]
    assert torch.equal(fp32, term.teacher(images)["dinov2-vit-b"])  # the training autocast was not used
    term.precision = "bf16"
    bf16 = term.targets(images)["dinov2-vit-b"]
    assert bf16.dtype == torch.float32 and not torch.equal(bf16, fp32)
    assert torch.nn.functional.cosine_similarity(bf16, fp32, dim=-1).min() > 0.999
    attention = [m for m in term.teacher.modules() if hasattr(m, "fused_attn")]
    assert attention and all(m.fused_attn for m in attention)  # timm's SDPA path


def _children(pid: int) -> list[int]:
    from pathlib import Path

    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            out.append(int(stat.parent.name))
    return out


def test_two_fused_processes_stop_together_when_one_gets_sigterm(tmp_path, pixel_store, pixel_overrides):
    # optim.fused across processes: the stop flags are summed by a collective read one step later; the guard's
    # non-finite flag is all-reduced on the device. SIGTERM reaches one worker only; both stop at the same step.
    import os
    import signal
    import subprocess
    import sys
    import time
    from pathlib import Path

    overrides = pixel_overrides(
        pixel_store, "optim.fused=true", "train.max_steps=500", "train.checkpoint_every_steps=0"
    )
    src = Path(__file__).resolve().parents[2] / "src"
    env = {**os.environ, "PYTHONPATH": str(src), "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    command += ["-m", "irepa", "train", "--run-dir", str(tmp_path), *overrides]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        log = tmp_path / "log.txt"
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not (log.exists() and "step 4/500" in log.read_text()):
            time.sleep(0.2)
        workers = _children(proc.pid)
        assert len(workers) == 2, workers
        os.kill(max(workers), signal.SIGTERM)
        _, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 0, err[-3000:]
    (checkpoint,) = (tmp_path / "checkpoints").iterdir()
    text = log.read_text()
    assert f"checkpoint {checkpoint} (weights identical on all 2 processes)" in text
    assert "received: stopping after step" in text and int(checkpoint.name.split("-")[1]) < 500
