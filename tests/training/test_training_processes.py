"""The trainer as real processes: SIGTERM and SIGKILL mid-run then resume, and 2-process DDP on CPU (gloo)."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import irepa
from irepa.training.config import resolve_config
from irepa.training.trainer import Trainer

SRC = Path(irepa.__file__).resolve().parents[1]


def _env() -> dict[str, str]:
    # Same thread count as this process, so a child's float results are bit-comparable with in-process runs.
    threads = str(torch.get_num_threads())
    return {**os.environ, "PYTHONPATH": str(SRC), "OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads}


def _state(run_dir: Path, step: int) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    folder = run_dir / "checkpoints" / f"step-{step:07d}"
    out = {}
    for part in ("model", "ema.model", "aligner"):
        out.update({f"{part}/{k}": v for k, v in load_file(folder / f"{part}.safetensors").items()})
    return out


def _steps_logged(run_dir: Path) -> int:
    path = run_dir / "metrics.jsonl"
    if not path.exists():
        return 0
    lines = [line for line in path.read_text().splitlines() if line.endswith("}")]
    return json.loads(lines[-1])["step"] if lines else 0


@pytest.fixture(scope="module")
def long_run(pixel_store, pixel_overrides):
    """Overrides of a 40-step run logging every step (slow enough to be interrupted in the middle)."""
    return pixel_overrides(
        pixel_store,
        "train.max_steps=40",
        "train.log_every_steps=1",
        "train.checkpoint_every_steps=5",
        "data.num_workers=1",  # a worker process, which must survive the signal
    )


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, long_run):
    run_dir = tmp_path_factory.mktemp("uninterrupted")
    Trainer(resolve_config(overrides=long_run), run_dir).fit()
    return _state(run_dir, 40)


def _start(run_dir: Path, overrides: list[str]) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "irepa", "train", "--run-dir", str(run_dir), *overrides],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=_env(),
        start_new_session=True,  # its own process group, signalled as a whole like a scheduler or Ctrl-C would
    )


def _interrupt_at(proc: subprocess.Popen, run_dir: Path, step: int, sig: int, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while _steps_logged(run_dir) < step:
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "the run did not reach the step in time"
        time.sleep(0.005)
    os.killpg(proc.pid, sig)  # the trainer and its DataLoader workers


def _assert_same(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert not different, f"{len(different)} tensors differ, e.g. {different[:3]}"


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["sigterm", "sigkill"])
def test_interrupted_process_resumes_bit_identically(tmp_path, long_run, uninterrupted, sig):
    stop_at = random.Random(int(sig)).randint(8, 30)
    proc = _start(tmp_path, long_run)
    _interrupt_at(proc, tmp_path, stop_at, sig)
    _out, err = proc.communicate(timeout=120)
    if sig == signal.SIGTERM:
        # Finish the step, checkpoint, exit cleanly.
        assert proc.returncode == 0, err
        assert "SIGTERM received: stopping after step" in err and "Rerun the same command to resume" in err
        stopped = int(err.split("interrupted by SIGTERM at step ")[1].split(";")[0])
        assert stopped >= stop_at and (tmp_path / "checkpoints" / f"step-{stopped:07d}").is_dir()
    else:
        assert proc.returncode == -signal.SIGKILL
    done = subprocess.run(
        [sys.executable, "-m", "irepa", "train", "--run-dir", str(tmp_path), *long_run],
        capture_output=True,
        text=True,
        env=_env(),
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert "resumed from step-" in done.stderr and "finished 40 steps" in done.stdout
    _assert_same(_state(tmp_path, 40), uninterrupted)


def _torchrun(run_dir: Path, overrides: list[str], script: Path | None = None) -> str:
    """``irepa train`` in two processes (gloo, CPU) through torchrun, or ``script`` in its place; returns the log."""
    program = [str(script)] if script is not None else ["-m", "irepa"]
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node",
            "2",
            *program,
            "train",
            "--run-dir",
            str(run_dir),
            *overrides,
        ],
        capture_output=True,
        text=True,
        env=_env(),
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return (run_dir / "log.txt").read_text()


def test_two_process_ddp_on_cpu_matches_one_process(tmp_path, pixel_store, pixel_overrides):
    overrides = pixel_overrides(pixel_store, "train.max_steps=6", "train.checkpoint_every_steps=3")
    Trainer(resolve_config(overrides=overrides), tmp_path / "one").fit()
    log = _torchrun(tmp_path / "two", overrides)
    assert "processes 2 (DistributedType.MULTI_CPU, cpu)" in log and "x 4 per device" in log
    # Synchronized: every checkpoint verified the processes hold identical weights ...
    assert log.count("(weights identical on all 2 processes)") == 2
    # ... and they equal the one-process run at the same global batch, up to float reduction order.
    one, two = _state(tmp_path / "one", 6), _state(tmp_path / "two", 6)
    for key in one:
        torch.testing.assert_close(two[key], one[key], rtol=1e-4, atol=1e-5, msg=key)


# torch.compile with Dynamo's eager backend: the graph capture of train.compile without inductor's minutes of C++
# compilation per process (the compiled objective's numerics are the eager ones).
_EAGER_COMPILE_RUN = """
import sys
import torch
from irepa.cli.main import main

original = torch.compile
torch.compile = lambda fn, *args, **kwargs: original(fn, *args, **{**kwargs, "backend": "eager"})
sys.exit(main(sys.argv[1:]))
"""


def test_ddp_with_cached_targets_and_a_compiled_objective_equals_plain_ddp(tmp_path, pixel_store, pixel_overrides):
    """Two processes, each caching the targets of the samples it draws, with the objective compiled inside DDP:
    bit-identical to the same two processes without either (20 steps, 2.5 epochs of 64 images)."""
    overrides = pixel_overrides(
        pixel_store,
        "align.encoders=[irepa-demo-vit]",
        "teacher.resolution=null",
        "teacher.offline=true",
        "train.max_steps=20",
        "train.checkpoint_every_steps=0",
    )
    script = tmp_path / "eager_compile.py"
    script.write_text(_EAGER_COMPILE_RUN)
    _torchrun(tmp_path / "plain", overrides)
    log = _torchrun(tmp_path / "fast", [*overrides, "teacher.cache_targets=true", "train.compile=true"], script)
    assert "targets cached in host memory" in log and ", compiled" in log and "processes 2" in log
    _assert_same(_state(tmp_path / "plain", 20), _state(tmp_path / "fast", 20))


_FAILING_RUN = """
import sys
import irepa.data.datasets as datasets
from irepa.cli.main import main

where = sys.argv[1]
reads = 0
original = datasets.StoreDataset.__getitem__


def failing_getitem(self, item):
    global reads
    reads += 1  # counted in the worker process (forked), so the failure happens there
    if where == "worker" and reads > 20:
        raise OSError("simulated read error of a data shard")
    return original(self, item)


datasets.StoreDataset.__getitem__ = failing_getitem
if where == "step":
    import irepa.training.trainer as trainer

    step = trainer.Trainer.train_step

    def failing_step(self, batches):
        if self.step == 3:
            raise RuntimeError("simulated failure inside the training step")
        return step(self, batches)

    trainer.Trainer.train_step = failing_step
sys.exit(main(["train", *sys.argv[2:]]))
"""


@pytest.mark.parametrize("where", ["worker", "step"])
def test_failure_with_dataloader_workers_exits_promptly(tmp_path, pixel_store, pixel_overrides, where):
    """An exception in a DataLoader worker or in the step ends the run with its error, workers shut down, no hang.

    Before the fix, the traceback kept the loader's iterator alive and the interpreter waited forever at exit for
    the worker process.
    """
    script = tmp_path / "failing_run.py"
    script.write_text(_FAILING_RUN)
    overrides = pixel_overrides(pixel_store, "train.max_steps=20", "data.num_workers=1")
    proc = subprocess.Popen(
        [sys.executable, str(script), where, "--run-dir", str(tmp_path / "run"), *overrides],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=_env(),
        start_new_session=True,
    )
    try:
        _out, err = proc.communicate(timeout=90)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        pytest.fail(f"the run hung after a failure in the {where}")
    if where == "worker":  # a store that cannot be read is bad input: one line, exit 2
        assert proc.returncode == 2, err[-2000:]
        line = err.strip().splitlines()[-1]
        assert line.startswith(
            "irepa train: error: reading a training batch failed in a DataLoader worker (OSError: simul"
        )
        assert "irepa data info STORE --verify" in line and "Traceback" not in err
    else:  # a bug keeps its traceback
        assert proc.returncode == 1, err[-2000:]
        assert "RuntimeError: simulated failure inside the training step" in err
    time.sleep(0.5)
    with pytest.raises(ProcessLookupError):  # nothing of the run's process group is left (no orphaned worker)
        os.killpg(proc.pid, 0)
