"""Multi-node training, rehearsed on one machine: two ``torchrun`` launchers (``--nnodes 2 --nproc-per-node 1``)
meet at a c10d rendezvous on 127.0.0.1 and run ``irepa train --preset ci`` as one 2-process gloo job on the CPU.

Each launcher is a "node" with its own process tree (LOCAL_RANK 0 on both, RANK 0 and 1); the run directory plays
the storage both nodes share. docs/training.md ("N nodes") quotes these commands.

- CI-sized: one run, then a crash after the step-2 checkpoint is replayed (the step-4 checkpoint and snapshot
  removed) and the same two commands resume; the result equals the uninterrupted run's, bit for bit.
- ``slow``: a real preemption: SIGTERM to both launchers mid-run, the same two commands resume, and the final
  weights equal those of an uninterrupted two-node run.

A ``sitecustomize`` spy in the workers records which process writes each checkpoint and snapshot, so "written
once, by rank 0" is checked directly rather than inferred from the files.
"""

from __future__ import annotations

import collections
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import irepa

SRC = Path(irepa.__file__).resolve().parents[1]
TORCHRUN = Path(sys.executable).parent / "torchrun"
#: Wall-clock limit of one two-node launch (a few seconds on a quiet 2-core machine): fail instead of hanging.
LAUNCH_TIMEOUT_S = 240

SPY = '''"""Test spy of tests/cli/test_train_multinode.py: which process writes each checkpoint and EMA snapshot."""
import os

if "LOCAL_RANK" in os.environ and os.environ.get("IREPA_TEST_WRITES"):  # torchrun workers only
    from pathlib import Path

    import irepa.models.io as _io
    from irepa.training.checkpoint import CheckpointManager as _Manager

    def _record(what):
        with open(os.environ["IREPA_TEST_WRITES"], "a") as f:
            f.write(f"rank {os.environ['RANK']} {what}\\n")

    _save_checkpoint, _save_inference = _Manager.save, _io.save_inference

    def _checkpoint(self, step, **kwargs):
        _record(f"checkpoint {step}")
        return _save_checkpoint(self, step, **kwargs)

    def _snapshot(path, *args, **kwargs):
        _record(f"snapshot {Path(path).name}")
        return _save_inference(path, *args, **kwargs)

    _Manager.save, _io.save_inference = _checkpoint, _snapshot
'''


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def node_command(port: int, run_dir: Path, stores: list[str], *overrides: str) -> list[str]:
    """The command each of the two "nodes" runs (identical on both: c10d assigns the node ranks)."""
    return [
        str(TORCHRUN),
        "--nnodes",
        "2",
        "--nproc-per-node",
        "1",
        "--rdzv-backend",
        "c10d",
        "--rdzv-endpoint",
        f"127.0.0.1:{port}",
        "--rdzv-id",
        "irepa-rehearsal",
        "-m",
        "irepa",
        "train",
        "--preset",
        "ci",
        *stores,
        *overrides,
        "--run-dir",
        str(run_dir),
    ]


@pytest.fixture
def spy(tmp_path) -> tuple[dict[str, str], Path]:
    """(environment for the launchers, file the workers record their writes in)."""
    folder = tmp_path / "spy"
    folder.mkdir()
    (folder / "sitecustomize.py").write_text(SPY)
    writes = tmp_path / "writes.txt"
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(folder), str(SRC)]),
        "IREPA_TEST_WRITES": str(writes),
        "OMP_NUM_THREADS": "1",  # two workers on a 2-core machine
    }
    return env, writes


def _start(command: list[str], env: dict[str, str]) -> list[subprocess.Popen]:
    return [
        subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, start_new_session=True
        )
        for _ in range(2)
    ]


def _finish(nodes: list[subprocess.Popen], started: float) -> list[tuple[int, str, str]]:
    """Wait for both launchers (killing both process trees at the deadline); [(returncode, stdout, stderr)]."""
    results = []
    for node in nodes:
        try:
            out, err = node.communicate(timeout=max(1.0, started + LAUNCH_TIMEOUT_S - time.monotonic()))
        except subprocess.TimeoutExpired:
            for other in nodes:
                if other.poll() is None:
                    os.killpg(other.pid, signal.SIGKILL)
            details = [n.communicate()[1][-2000:] for n in nodes]
            pytest.fail(f"the two-node launch did not finish within {LAUNCH_TIMEOUT_S} s: {details}")
        results.append((node.returncode, out, err))
    return results


def run_two_nodes(command: list[str], env: dict[str, str]) -> list[tuple[int, str, str]]:
    """Launch ``command`` twice (the two nodes) and wait for both; each must exit 0."""
    results = _finish(_start(command, env), time.monotonic())
    for code, _out, err in results:
        assert code == 0, err[-3000:]
    return results


def state(run_dir: Path, step: int) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    folder = run_dir / "checkpoints" / f"step-{step:07d}"
    out = {}
    for part in ("model", "ema.model", "aligner"):
        out.update({f"{part}/{k}": v for k, v in load_file(folder / f"{part}.safetensors").items()})
    return out


def assert_identical(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert not different, f"{len(different)} tensors differ, e.g. {different[:3]}"


def _writes(path: Path) -> collections.Counter:
    counts = collections.Counter(path.read_text().splitlines()) if path.exists() else collections.Counter()
    path.unlink(missing_ok=True)
    return counts


def _steps(run_dir: Path) -> list[int]:
    """Steps logged to metrics.jsonl (complete lines only: the file may be mid-write)."""
    path = run_dir / "metrics.jsonl"
    lines = path.read_text().splitlines() if path.exists() else []
    return [json.loads(line)["step"] for line in lines if line.endswith("}")]


def test_two_nodes_train_agree_write_once_and_resume_exactly(tmp_path, ci_stores, spy):
    env, writes = spy
    run_dir = tmp_path / "run"
    command = node_command(_free_port(), run_dir, ci_stores)
    run_two_nodes(command, env)

    log = (run_dir / "log.txt").read_text()
    assert "processes 2 (DistributedType.MULTI_CPU, cpu); global batch 8 = 2 x 1 accumulation x 4 per device" in log
    # Both nodes hold bit-identical weights at every checkpoint (the trainer all-gathers and compares them) ...
    assert log.count("(weights identical on all 2 processes)") == 2
    # ... and only rank 0 (node 0's worker) writes, each checkpoint and snapshot exactly once.
    once = ["rank 0 checkpoint 2", "rank 0 snapshot ema-0000002.safetensors"]
    once += ["rank 0 checkpoint 4", "rank 0 snapshot ema-0000004.safetensors"]
    assert _writes(writes) == collections.Counter(once)
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["step-0000002", "step-0000004"]
    uninterrupted = state(run_dir, 4)

    # Replay a crash after the step-2 checkpoint: the step-4 files never made it to the shared storage.
    shutil.rmtree(run_dir / "checkpoints" / "step-0000004")
    (run_dir / "snapshots" / "ema-0000004.safetensors").unlink()
    # The same two commands resume (a new rendezvous port: the first job's store may linger in TIME_WAIT).
    run_two_nodes(node_command(_free_port(), run_dir, ci_stores), env)
    log = (run_dir / "log.txt").read_text()
    assert "resumed from step-0000002 (step 2, 16 images)" in log
    assert _writes(writes) == collections.Counter(["rank 0 checkpoint 4", "rank 0 snapshot ema-0000004.safetensors"])
    assert _steps(run_dir) == [1, 2, 3, 4]
    assert_identical(state(run_dir, 4), uninterrupted)


@pytest.mark.slow
def test_two_nodes_preempted_by_sigterm_resume_bit_identically(tmp_path, ci_stores, spy):
    env, writes = spy
    schedule = ["train.max_steps=24", "train.checkpoint_every_steps=4", "train.snapshot_every_steps=0"]
    reference = tmp_path / "uninterrupted"
    run_two_nodes(node_command(_free_port(), reference, ci_stores, *schedule), env)
    _writes(writes)

    run_dir = tmp_path / "run"
    command = node_command(_free_port(), run_dir, ci_stores, *schedule)
    stop_at = random.Random(0).randint(5, 14)
    started = time.monotonic()
    nodes = _start(command, env)
    while len(_steps(run_dir)) < stop_at:
        assert all(n.poll() is None for n in nodes), "a node exited before the preemption"
        assert time.monotonic() - started < LAUNCH_TIMEOUT_S, "the run did not reach the preemption step in time"
        time.sleep(0.01)
    for node in nodes:  # the scheduler signals each node's launcher; torchrun forwards SIGTERM to its worker
        node.send_signal(signal.SIGTERM)
    _finish(nodes, started)  # the launchers themselves exit non-zero (torchrun re-raises the signal)
    log = (run_dir / "log.txt").read_text()
    stopped = int(log.split("SIGTERM received: stopping after step ")[1].split(";")[0])
    assert stop_at <= stopped < 24 and (run_dir / "checkpoints" / f"step-{stopped:07d}").is_dir()
    assert f"checkpoint {run_dir / 'checkpoints' / f'step-{stopped:07d}'} (weights identical on all 2 processes)" in log
    assert _writes(writes)[f"rank 0 checkpoint {stopped}"] == 1

    run_two_nodes(node_command(_free_port(), run_dir, ci_stores, *schedule), env)
    assert f"resumed from step-{stopped:07d}" in (run_dir / "log.txt").read_text()
    assert set(_writes(writes)) <= {f"rank 0 checkpoint {s}" for s in range(stopped + 1, 25)} | {
        "rank 0 snapshot ema-0000024.safetensors"
    }
    assert _steps(run_dir) == list(range(1, 25))
    assert_identical(state(run_dir, 24), state(reference, 24))
