"""Worker of test_distributed_grads: MeanFlow steps on the *unwrapped* module of a DDP model, with and without the
explicit gradient all-reduce. Run as ``torchrun --nproc_per_node 2 meanflow_ddp_worker.py OUT_DIR``; the test also
imports :func:`run` for the one-process reference.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

from irepa.diffusion.meanflow import MeanFlowGuidance, meanflow_loss, sample_interval_times
from irepa.models import build_model
from irepa.training.distributed import ReplicaDivergenceError, check_replicas_in_sync, sync_gradients

GLOBAL_BATCH = 8
STEPS = 2


def build() -> torch.nn.Module:
    torch.manual_seed(0)
    model = build_model(
        "SiT-S/2", input_size=8, in_channels=3, hidden_size=32, depth=2, num_heads=2, num_classes=4, time_interval=True
    )
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():  # random weights everywhere, so every gradient is non-zero
        for p in model.parameters():
            p.copy_(0.1 * torch.randn(p.shape, generator=g))
    return model


def global_batch(step: int) -> dict[str, torch.Tensor]:
    """The whole global batch of ``step``, identical on every process."""
    g = torch.Generator().manual_seed(100 + step)
    r, t = sample_interval_times(GLOBAL_BATCH, generator=g, equal_share=0.5)
    return {
        "x0": torch.randn(GLOBAL_BATCH, 3, 8, 8, generator=g),
        "noise": torch.randn(GLOBAL_BATCH, 3, 8, 8, generator=g),
        "y": torch.randint(0, 4, (GLOBAL_BATCH,), generator=g),
        "drop": torch.rand(GLOBAL_BATCH, generator=g) < 0.25,
        "r": r,
        "t": t,
    }


def run(model: torch.nn.Module, rank: int, world: int, *, sync: bool) -> dict[str, object]:
    """``STEPS`` SGD steps on this process's slice; returns the gradients of the last step and the parameters.

    SGD rather than Adam: Adam divides by the gradient's magnitude, so parameters whose gradient is zero up to
    rounding (the key bias, to which softmax is invariant) would amplify reduction-order noise into real steps.
    """
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    guidance = MeanFlowGuidance(omega=1.0, kappa=0.5)
    diverged = False
    local: dict[str, torch.Tensor] = {}
    for step in range(STEPS):
        batch = {k: v[rank::world] for k, v in global_batch(step).items()}
        optimizer.zero_grad(set_to_none=True)
        result = meanflow_loss(
            model,
            batch["x0"],
            batch["y"],
            r=batch["r"],
            t=batch["t"],
            noise=batch["noise"],
            drop=batch["drop"],
            null_label=4,
            guidance=guidance,
        )
        result.loss.backward()
        local = {n: p.grad.clone() for n, p in model.named_parameters()}
        if sync:
            buckets = sync_gradients(model.parameters(), world, bucket_mb=0.02)  # ~20 KB buckets: several of them
            assert world == 1 or buckets > 1, buckets
        try:
            check_replicas_in_sync({n: p.grad for n, p in model.named_parameters()}, what="gradients", step=step)
        except ReplicaDivergenceError:
            diverged = True
        optimizer.step()
    return {
        "local_grads": local,
        "grads": {n: p.grad.clone() for n, p in model.named_parameters()},
        "params": {n: p.detach().clone() for n, p in model.named_parameters()},
        "diverged": diverged,
    }


def main(out_dir: str) -> None:
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    results = {}
    for mode in ("sync", "nosync"):
        wrapped = DistributedDataParallel(build())
        # MeanFlow differentiates through torch.func.jvp on the unwrapped module: DDP's hooks never fire.
        results[mode] = run(wrapped.module, rank, world, sync=mode == "sync")
    torch.save(results, Path(out_dir) / f"rank{rank}.pt")
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1])
