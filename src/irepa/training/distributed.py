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

**Explicit gradient synchronization.** Objectives that differentiate through :func:`torch.func.jvp` (MeanFlow) must
call the *unwrapped* module, which bypasses DDP's gradient hooks: without further action every process silently
steps with its own gradients (the bug of the public MeanFlow ports, prior-implementations §13). They call
:func:`sync_gradients` after the last backward of a step (bucketed all-reduce, averaged over processes), and
:func:`check_replicas_in_sync` periodically verifies that the processes still hold identical tensors.
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import torch

from irepa.errors import ConfigError, IrepaError, first_line
from irepa.utils.device import resolve_device

if TYPE_CHECKING:
    from accelerate import Accelerator

__all__ = [
    "ProcessGroup",
    "ReplicaDivergenceError",
    "capture_rng_state",
    "check_replicas_in_sync",
    "make_accelerator",
    "per_device_batch_size",
    "restore_rng_state",
    "seed_everything",
    "sync_gradients",
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

    use_cpu = resolve_device(device, option="train.device").type == "cpu"
    try:
        accelerator = Accelerator(
            cpu=use_cpu,
            mixed_precision="no",
            kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=False)],
        )
    except ValueError as exc:
        # accelerate validates the launcher's environment (e.g. WORLD_SIZE=2 without MASTER_ADDR) with ValueError.
        raise IrepaError(
            f"cannot set up the distributed processes: {first_line(exc)}; start multi-process runs with torchrun or "
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


# ----------------------------------------------------------------------------------------------------------------------
# Explicit gradient synchronization (objectives that bypass DDP)

#: Default bucket size of :func:`sync_gradients` (DDP's default ``bucket_cap_mb``).
GRAD_BUCKET_MB = 25.0


class ReplicaDivergenceError(IrepaError):
    """The processes of a data-parallel run hold different tensors (they are not synchronized)."""


def _world(group: Any = None) -> int:
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return 1
    return dist.get_world_size(group)


def sync_gradients(
    params: Iterable[torch.nn.Parameter],
    world_size: int,
    *,
    bucket_mb: float = GRAD_BUCKET_MB,
    group: Any = None,
) -> int:
    """Average the gradients of ``params`` over the processes, in place: flatten into buckets, all-reduce, unflatten.

    What DDP's backward hooks do, for objectives that cannot use them (a ``torch.func.jvp`` through the unwrapped
    module). Call it on every process once per optimizer step, after the *last* micro-batch's backward (the
    micro-batches' gradients are summed locally first, as under ``no_sync``), before clipping. Gradients are packed,
    in parameter order, into flat buckets of about ``bucket_mb`` MiB per (device, dtype); each bucket is summed by
    one ``all_reduce`` and divided by the world size, and copied back: a handful of collectives per step instead of
    one per parameter. Afterwards every process holds bit-identical gradients.

    A parameter whose gradient is ``None`` on some processes but not on others gets a zero gradient where it was
    missing (its average is then right); one whose gradient is ``None`` everywhere stays ``None``, as in a
    one-process run. Agreeing on that costs one small extra all-reduce.

    Args:
        params: The trained parameters, in the same order on every process.
        world_size: Number of processes (nothing happens for 1).
        bucket_mb: Bucket size in MiB (a bucket holds at least one gradient).
        group: The process group (default: the world).

    Returns:
        The number of buckets all-reduced (0 when there is nothing to do).
    """
    import torch.distributed as dist

    params = [p for p in params if p.requires_grad]
    if world_size <= 1 or not params:
        return 0
    if bucket_mb <= 0:
        raise IrepaError(f"bucket_mb must be > 0, got {bucket_mb}")
    present = torch.tensor([p.grad is not None for p in params], dtype=torch.int32, device=params[0].device)
    dist.all_reduce(present, group=group)
    grads: dict[tuple[torch.device, torch.dtype], list[torch.Tensor]] = {}
    for param, count in zip(params, present.tolist(), strict=True):
        if count == 0:
            continue
        if param.grad is None:
            param.grad = torch.zeros_like(param)
        if param.grad.is_sparse:
            raise IrepaError("sync_gradients does not support sparse gradients")
        grads.setdefault((param.grad.device, param.grad.dtype), []).append(param.grad)
    limit = int(bucket_mb * 2**20)
    buckets = 0
    for group_grads in grads.values():
        bucket: list[torch.Tensor] = []
        size = 0
        for grad in [*group_grads, None]:
            if grad is not None and (not bucket or size + grad.numel() * grad.element_size() <= limit):
                bucket.append(grad)
                size += grad.numel() * grad.element_size()
                continue
            if bucket:
                flat = torch.cat([g.reshape(-1) for g in bucket])
                dist.all_reduce(flat, group=group)
                flat.div_(world_size)
                for g, chunk in zip(bucket, flat.split([g.numel() for g in bucket]), strict=True):
                    g.copy_(chunk.view_as(g))
                buckets += 1
            bucket, size = ([grad], grad.numel() * grad.element_size()) if grad is not None else ([], 0)
    return buckets


def check_replicas_in_sync(
    tensors: Mapping[str, torch.Tensor | None], *, what: str = "parameters", step: int | None = None, group: Any = None
) -> None:
    """Verify that every process holds bit-identical ``tensors`` (a cheap cross-rank checksum).

    Each tensor is reduced to two float64 numbers (sum and sum of squares), all-gathered and compared exactly, so
    the check costs one small collective. ``None`` entries (e.g. missing gradients) count as zeros. Call it on
    every process; it is a no-op without a process group.

    Args:
        tensors: Name → tensor, the same names in the same order on every process.
        what: What the tensors are, for the message (``"parameters"``, ``"gradients"``).
        step: The optimizer step, for the message.
        group: The process group (default: the world).

    Raises:
        ReplicaDivergenceError: Naming the first tensor that differs and the processes that disagree.
    """
    import torch.distributed as dist

    world = _world(group)
    if world == 1 or not tensors:
        return
    device = next((t.device for t in tensors.values() if t is not None), torch.device("cpu"))
    with torch.no_grad():
        rows = []
        for tensor in tensors.values():
            if tensor is None:
                rows.append(torch.zeros(2, dtype=torch.float64, device=device))
            else:
                value = tensor.detach().to(torch.float64)
                rows.append(torch.stack([value.sum(), value.square().sum()]))
        local = torch.stack(rows)  # (N, 2)
    gathered = [torch.empty_like(local) for _ in range(world)]
    dist.all_gather(gathered, local, group=group)
    reference = gathered[0]
    for rank, other in enumerate(gathered[1:], start=1):
        same = ((other == reference) | (other.isnan() & reference.isnan())).all(dim=1)  # NaN == NaN here
        differs = ~same
        if bool(differs.any()):
            name = list(tensors)[int(differs.nonzero()[0])]
            at = f" at step {step}" if step is not None else ""
            raise ReplicaDivergenceError(
                f"the {world} processes hold different {what}{at} (first: {name!r}, rank 0 vs rank {rank}): they "
                "are not synchronized; an objective that bypasses DDP must call sync_gradients after backward"
            )


@dataclasses.dataclass
class ProcessGroup:
    """The processes of a command launched by ``torchrun`` / ``accelerate launch`` (e.g. ``irepa sample``).

    Built on the same accelerate set-up as the trainer (:func:`make_accelerator`: gloo on CPUs, NCCL on GPUs, the
    process-count check against the launcher's ``WORLD_SIZE``).

    Attributes:
        rank: This process's index.
        world_size: Number of processes.
        local_rank: Index on this node.
        device: accelerate's device for this process (``cuda:<local_rank>`` or ``cpu``).
        accelerator: The ``Accelerator`` (collectives).
    """

    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    accelerator: Any

    @classmethod
    def start(
        cls, device: Literal["auto", "cpu", "cuda"] = "auto", *, expected_world_size: int | None = None
    ) -> ProcessGroup:
        """Join the launcher's process group (a single process without a launcher).

        Raises:
            IrepaError: ``device="cuda"`` without CUDA, or a process-count mismatch (see :func:`make_accelerator`).
        """
        acc = make_accelerator(device, expected_world_size=expected_world_size)
        return cls(acc.process_index, acc.num_processes, acc.local_process_index, acc.device, acc)

    def barrier(self) -> None:
        """Wait for every process."""
        if self.world_size > 1:
            self.accelerator.wait_for_everyone()

    def all_ok(self, ok: bool) -> bool:
        """Whether every process reports ``ok`` (so one process's error stops all of them cleanly)."""
        if self.world_size == 1:
            return ok
        flag = torch.tensor([0.0 if ok else 1.0], device=self.device)
        return float(self.accelerator.reduce(flag, reduction="sum").item()) == 0.0
