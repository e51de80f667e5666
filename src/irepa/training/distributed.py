"""Distributed set-up on accelerate, batch-size arithmetic, seeding and RNG state capture.

**Launching.** One process per device, started by ``torchrun`` or ``accelerate launch`` (single node or
multi-node); a plain ``python -m irepa train`` is one process. accelerate reads the launcher's environment
(``RANK``, ``WORLD_SIZE``, ``MASTER_ADDR``, ...) and creates the process group (NCCL on GPUs, gloo on CPUs).

**The CPU trap** (measured, docs environment.md §6): on a machine without CUDA, a plain ``Accelerator()`` under
``torchrun`` reports ``DistributedType.NO`` in every process, and the processes then train *independently and
never synchronize*, without any error. :func:`make_accelerator` therefore passes ``cpu=True`` whenever training on
the CPU, and refuses to continue when the launcher announced several processes but accelerate set up only one.

**Randomness.** Model initialization is seeded identically on every process (DDP also broadcasts rank 0's weights).
The per-step randomness of the objective (noise, times, label dropout, latent sampling) comes from one generator
seeded identically on every process, drawn for the *whole global batch* and sliced per process, so a run gives the
same result for any number of processes (up to floating-point reduction order). The global Python / NumPy / torch
generators are seeded with ``seed + rank`` (the official recipes' convention) for anything else.
"""

from __future__ import annotations

import random
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import torch

from irepa.errors import ConfigError, IrepaError

if TYPE_CHECKING:
    from accelerate import Accelerator

__all__ = [
    "capture_rng_state",
    "make_accelerator",
    "per_device_batch_size",
    "restore_rng_state",
    "seed_everything",
]


def per_device_batch_size(global_batch_size: int, world_size: int, grad_accumulation: int = 1) -> int:
    """Samples per device per micro-step: ``global / (world × accumulation)``.

    Raises:
        ConfigError: If the global batch does not divide evenly, naming the numbers and nearby valid sizes.

    Example:
        >>> per_device_batch_size(256, 8, 1)
        32
    """
    if global_batch_size < 1 or world_size < 1 or grad_accumulation < 1:
        raise ConfigError(
            f"batch arithmetic needs positive numbers, got global_batch_size={global_batch_size}, "
            f"world_size={world_size}, grad_accumulation={grad_accumulation}"
        )
    shards = world_size * grad_accumulation
    if global_batch_size % shards:
        lower = global_batch_size // shards * shards
        upper = lower + shards
        options = " or ".join(str(v) for v in (lower, upper) if v > 0)
        raise ConfigError(
            f"optim.global_batch_size={global_batch_size} is not divisible by {world_size} process(es) × "
            f"optim.grad_accumulation={grad_accumulation} = {shards}; use optim.global_batch_size={options}, "
            "or change the number of processes / the accumulation"
        )
    return global_batch_size // shards


def make_accelerator(
    device: Literal["auto", "cpu", "cuda"] = "auto", *, expected_world_size: int | None = None
) -> Accelerator:
    """Create the accelerate ``Accelerator`` for training (process group, device, DDP wrapping).

    Mixed precision is *not* delegated to accelerate: the trainer applies autocast and the fp16 grad scaler
    itself, so the teacher, the model and the float32 alignment maths each get exactly the precision they need.

    Args:
        device: ``"cuda"`` (GPUs, NCCL), ``"cpu"`` (gloo), or ``"auto"`` (CUDA when available).
        expected_world_size: The number of processes the launcher announced (the CLI reads ``WORLD_SIZE``); a
            mismatch with what accelerate set up is an error instead of silent unsynchronized training.

    Raises:
        IrepaError: ``device="cuda"`` without CUDA, an incomplete launcher environment (``WORLD_SIZE`` > 1
            without ``MASTER_ADDR``), or a process-count mismatch.
    """
    from accelerate import Accelerator, DistributedDataParallelKwargs

    if device == "cuda" and not torch.cuda.is_available():
        raise IrepaError("train.device=cuda but no CUDA device is visible; use train.device=cpu or auto")
    use_cpu = device == "cpu" or (device == "auto" and not torch.cuda.is_available())
    try:
        accelerator = Accelerator(
            cpu=use_cpu,
            mixed_precision="no",
            kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=False)],
        )
    except ValueError as exc:
        # accelerate validates the launcher's environment (e.g. WORLD_SIZE=2 without MASTER_ADDR) with ValueError.
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise IrepaError(
            f"cannot set up the distributed processes: {first}; start multi-process runs with torchrun or "
            "'accelerate launch' (they set MASTER_ADDR, MASTER_PORT, RANK, WORLD_SIZE; see docs/training.md)"
        ) from exc
    if expected_world_size is not None and expected_world_size != accelerator.num_processes:
        raise IrepaError(
            f"the launcher started {expected_world_size} processes but accelerate set up "
            f"{accelerator.num_processes} ({accelerator.distributed_type}); the processes would train "
            "unsynchronized. Launch with torchrun or 'accelerate launch --multi_gpu' (see docs/training.md)"
        )
    return accelerator


def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's and torch's global generators (CPU and every CUDA device) with ``seed``."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def capture_rng_state() -> dict[str, Any]:
    """The global Python, NumPy, torch CPU and CUDA generator states as plain data (``weights_only``-loadable)."""
    version, internal, gauss = random.getstate()
    np_state = np.random.get_state(legacy=False)
    state: dict[str, Any] = {
        "python": {"version": version, "state": list(internal), "gauss": gauss},
        "numpy": {
            "bit_generator": np_state["bit_generator"],
            "key": torch.from_numpy(np_state["state"]["key"].astype(np.int64)),
            "pos": int(np_state["state"]["pos"]),
            "has_gauss": int(np_state["has_gauss"]),
            "gauss": float(np_state["gauss"]),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    """Restore states captured by :func:`capture_rng_state` (CUDA states only if CUDA is in use)."""
    py = state["python"]
    random.setstate((py["version"], tuple(py["state"]), py["gauss"]))
    npst = state["numpy"]
    np.random.set_state(
        {
            "bit_generator": npst["bit_generator"],
            "state": {"key": npst["key"].numpy().astype(np.uint32), "pos": npst["pos"]},
            "has_gauss": npst["has_gauss"],
            "gauss": npst["gauss"],
        }
    )
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        cuda_states = state["cuda"]
        if len(cuda_states) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda_states)
