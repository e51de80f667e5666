"""Explicit gradient synchronization for objectives that bypass DDP (MeanFlow's JVP), on 2 CPU processes (gloo)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import meanflow_ddp_worker as worker
import pytest
import torch

import irepa
from irepa.training.distributed import check_replicas_in_sync, sync_gradients

SRC = Path(irepa.__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def two_process(tmp_path_factory) -> list[dict]:
    out = tmp_path_factory.mktemp("ddp")
    threads = str(torch.get_num_threads())
    env = {**os.environ, "PYTHONPATH": str(SRC), "OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads}
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node",
            "2",
            worker.__file__,
            str(out),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return [torch.load(out / f"rank{rank}.pt", weights_only=True) for rank in range(2)]


def test_gradients_are_bit_identical_across_processes_after_the_explicit_allreduce(two_process):
    rank0, rank1 = (r["sync"] for r in two_process)
    # Each process computed different local gradients (its own half of the batch) ...
    assert any(not torch.equal(rank0["local_grads"][k], rank1["local_grads"][k]) for k in rank0["local_grads"])
    # ... and after the bucketed all-reduce they are bit-identical, as are the parameters after the optimizer step.
    for key in rank0["grads"]:
        assert torch.equal(rank0["grads"][key], rank1["grads"][key]), key
        assert torch.equal(rank0["params"][key], rank1["params"][key]), key
        torch.testing.assert_close(rank0["grads"][key], (rank0["local_grads"][key] + rank1["local_grads"][key]) / 2)
    assert not rank0["diverged"] and not rank1["diverged"]


def test_two_processes_equal_one_process_at_the_same_global_batch(two_process):
    one = worker.run(worker.build(), 0, 1, sync=True)
    for key, value in one["params"].items():
        torch.testing.assert_close(two_process[0]["sync"]["params"][key], value, rtol=1e-4, atol=1e-6, msg=key)


def test_without_the_explicit_allreduce_processes_diverge_and_the_checksum_says_so(two_process):
    """The JVP bypasses DDP: without sync_gradients nothing synchronizes the gradients."""
    rank0, rank1 = (r["nosync"] for r in two_process)
    assert rank0["diverged"] and rank1["diverged"]
    differing = [k for k in rank0["params"] if not torch.equal(rank0["params"][k], rank1["params"][k])]
    assert len(differing) > len(rank0["params"]) // 2


def test_single_process_helpers_are_no_ops():
    param = torch.nn.Parameter(torch.ones(3))
    param.grad = torch.full((3,), 2.0)
    assert sync_gradients([param], 1) == 0
    assert torch.equal(param.grad, torch.full((3,), 2.0))
    check_replicas_in_sync({"p": param})  # nothing to compare with
