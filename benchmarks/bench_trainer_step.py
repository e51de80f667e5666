"""``Trainer.train_step`` against an independent bare iREPA step (the performance issue's CPU comparison).

The issue compares irepa's step with the official iREPA training loop (SiT-B/2, fp32, batch 4 on the CPU: 1.06×).
The official code is not in this repository, so this benchmark writes down what its loop does per step, in a few
lines and independently of irepa's training code (only the SiT network is shared, so both steps run the same
model): linear-path noising with label dropout, the velocity MSE, a 3×3 conv projector on the tapped block's
tokens, spatially normalized targets (γ 0.6), 1 − cos per token, ``loss = denoise + 1.0 · align``, backward,
gradient clipping at 1.0, PyTorch's default AdamW and an EMA updated by a plain per-parameter loop
(``ema.mul_(d).add_(p, alpha=1 − d)``). The trainer side is a real :class:`~irepa.training.trainer.Trainer` on a
pixel store (32 px images: the same 16×16 token grid and the same cost as SiT-B/2's 32×32×4 latents, 3 channels
instead of 4), iREPA preset settings, data loading included, its teacher replaced by the same precomputed random
DINOv2-B-shaped targets (B, 256, 768) as the bare step (the teacher's forward is the same cost on both sides).

Rows (median of the timed rounds; the three steps timed round-robin in one process, so machine load hits all
alike): ``trainer`` (``Trainer.train_step``, PyTorch's default AdamW as the official code), ``trainer-fused``
(the same with ``optim.fused=true``) and ``bare`` (the official loop as described, PyTorch's default AdamW).
``adamw_update_ms``: ``optimizer.step()`` alone of the for-loop (PyTorch's CPU default), ``foreach`` and ``fused``
AdamW on the same parameters, stepped round-robin.
"""

from __future__ import annotations

import copy
import statistics
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn


def _store(root: Path, size: int, count: int, classes: int = 4) -> Path:
    """A small labelled image store (random images; the values do not change the speed)."""
    import numpy as np
    from PIL import Image

    from irepa.data.prepare import prepare_folder_store

    rng = np.random.default_rng(0)
    for i in range(count):
        folder = root / "folder" / f"class{i % classes}"
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(folder / f"{i:03d}.png")
    prepare_folder_store(root / "folder", root / "store", resolution=size, crop="resize")
    return root / "store"


class _FixedTargets:
    """Stands in for the teacher: the same precomputed tokens every step (the issue's random targets)."""

    def __init__(self, targets: dict[str, torch.Tensor]) -> None:
        self.targets = targets

    def __call__(self, images: torch.Tensor, autocast=None) -> dict[str, torch.Tensor]:
        return self.targets


def _trainer(
    store: Path,
    run_dir: Path,
    model_overrides: str,
    depth: int,
    batch: int,
    fused: bool,
    *,
    model: str = "SiT-B/2",
    precision: str = "fp32",
    device: str = "cpu",
    compiled: bool = False,
    teacher_resolution: int = 256,
):
    """A real Trainer (iREPA preset head) on ``store``; returns ``(trainer, step, targets)``.

    Its teacher is replaced by fixed random DINOv2-B-shaped targets (B, T, 768); ``step()`` is one
    ``Trainer.train_step`` (data loading included).
    """
    from irepa.training.config import resolve_config
    from irepa.training.trainer import Trainer

    overrides = [
        "data.space=pixel",
        f"data.images={store}",
        "data.latents=null",
        "data.num_workers=0",
        f"model.name={model}",
        f"model.overrides={model_overrides}",
        "align.encoders=[dinov2-vit-b]",
        f"align.depth={depth}",
        "align.projector=conv",
        "align.kernel_size=3",
        "align.target_norm=spatial",
        "align.gamma=0.6",
        "align.weight=1.0",
        "teacher.pretrained=false",
        "teacher.arch_overrides={dinov2-vit-b: {depth: 1}}",
        f"teacher.resolution={teacher_resolution}",
        f"optim.global_batch_size={batch}",
        f"optim.fused={str(fused).lower()}",
        f"train.precision={precision}",
        f"train.device={device}",
        f"train.compile={str(compiled).lower()}",
        "train.log_every_steps=1000000",
        "logging.tensorboard=false",
        "logging.jsonl=false",
        "logging.console=false",
        "logging.progress_bar=false",
    ]
    trainer = Trainer(resolve_config(overrides=overrides), run_dir)
    grid = trainer.model.grid
    targets = {"dinov2-vit-b": torch.randn(batch, grid[0] * grid[1], 768, device=trainer.device)}
    trainer.alignment.teacher = _FixedTargets(targets)
    batches = trainer.data.iterator()
    return trainer, (lambda: trainer.train_step(batches)), targets


def _bare_step(trainer, targets: dict[str, torch.Tensor], depth: int, batch: int):
    """The official loop's per-step work, written out (see the module docstring); same model and init as ``trainer``."""
    from irepa.models import build_model

    torch.manual_seed(0)
    model = build_model("SiT-B/2", **trainer.objective.model_kwargs)
    model.load_state_dict(trainer.model.state_dict())
    model.train()
    width, h, w = model.hidden_size, *model.grid
    projector = nn.Conv2d(width, 768, kernel_size=3, padding=1)
    params = [p for p in model.parameters() if p.requires_grad] + list(projector.parameters())
    optimizer = torch.optim.AdamW(params, lr=1e-4, weight_decay=0.0)
    ema = copy.deepcopy(model).requires_grad_(False)
    ema_params = dict(ema.named_parameters())
    c, size = model.in_channels, model.input_size
    images = torch.randint(0, 256, (batch, c, *size), dtype=torch.uint8)
    labels = torch.randint(0, trainer.data.num_classes, (batch,))
    target = targets["dinov2-vit-b"]

    def step() -> None:
        x0 = images.float() / 127.5 - 1.0
        t = torch.rand(batch)
        noise = torch.randn_like(x0)
        y = torch.where(torch.rand(batch) < 0.1, torch.full_like(labels, model.null_label), labels)
        tt = t.view(-1, 1, 1, 1)
        x_t = (1 - tt) * x0 + tt * noise
        out = model(x_t, t, y, return_hidden=depth)
        denoise = ((out.out - (noise - x0)) ** 2).mean(dim=(1, 2, 3)).mean()
        tokens = out.hidden.transpose(1, 2).reshape(batch, width, h, w)
        pred = projector(tokens).flatten(2).transpose(1, 2)  # (B, T, 768)
        z = (target - 0.6 * target.mean(dim=1, keepdim=True)) / (target.std(dim=1, keepdim=True) + 1e-6)
        align = (1 - F.cosine_similarity(pred, z, dim=-1)).mean()
        (denoise + 1.0 * align).backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        with torch.no_grad():
            for name, p in model.named_parameters():
                ema_params[name].mul_(0.9999).add_(p.detach(), alpha=1 - 0.9999)

    return step


def _adamw_ms(model_overrides: dict, rounds: int) -> dict[str, float]:
    """``optimizer.step()`` alone of PyTorch's AdamW implementations on SiT-B/2 + conv projector parameters.

    The three optimizers step round-robin over the same parameters (random gradients); median ms per update.
    """
    from irepa.models import build_model

    torch.manual_seed(0)
    model = build_model("SiT-B/2", **model_overrides)
    projector = nn.Conv2d(model.hidden_size, 768, kernel_size=3, padding=1)
    params = [p for p in model.parameters() if p.requires_grad] + list(projector.parameters())
    for p in params:
        p.grad = torch.randn_like(p) * 1e-3
    optimizers = {
        "for-loop": torch.optim.AdamW(params, lr=1e-4, foreach=False),
        "foreach": torch.optim.AdamW(params, lr=1e-4, foreach=True),
        "fused": torch.optim.AdamW(params, lr=1e-4, fused=True),
    }
    times: dict[str, list[float]] = {name: [] for name in optimizers}
    for i in range(rounds + 1):
        for name, optimizer in optimizers.items():
            start = time.perf_counter()
            optimizer.step()
            if i:  # the first round allocates the state
                times[name].append(time.perf_counter() - start)
    return {name: round(1000 * statistics.median(t), 1) for name, t in times.items()}


def main(quick: bool = False) -> dict:
    """Time the trainer step and the bare steps; ``quick``: a 1-block SiT-B/2, one round (keeps the script working)."""
    if quick:
        model_overrides, depth, batch, rounds, warmup = "{depth: 1}", 1, 2, 1, 1
    else:
        model_overrides, depth, batch, rounds, warmup = "{}", 4, 4, 5, 1
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        store = _store(root, size=32, count=16)
        trainer, trainer_step, targets = _trainer(store, root / "run", model_overrides, depth, batch, False)
        fused, fused_step, _ = _trainer(store, root / "fused", model_overrides, depth, batch, True)
        fused.alignment.teacher = _FixedTargets(targets)
        bare = _bare_step(trainer, targets, depth, batch)
        steps = {"trainer": trainer_step, "trainer-fused": fused_step, "bare": bare}
        for step in steps.values():
            for _ in range(warmup):
                step()
        times: dict[str, list[float]] = {name: [] for name in steps}
        for _ in range(rounds):
            for name, step in steps.items():
                start = time.perf_counter()
                step()
                times[name].append(time.perf_counter() - start)
        trainer.data.close()
        fused.data.close()
    ms = {name: round(1000 * statistics.median(t), 1) for name, t in times.items()}
    adamw = _adamw_ms({"depth": 1} if quick else {}, rounds)
    print(f"AdamW update alone: {adamw}", flush=True)
    for name, value in ms.items():
        print(f"SiT-B/2 iREPA batch {batch} {name:<13} {value:>9.1f} ms/step", flush=True)
    return {
        "model": f"SiT-B/2 {model_overrides}, 16x16 tokens, fp32, batch {batch}, align depth {depth}",
        "device": f"cpu ({torch.get_num_threads()} threads)",
        "timing": f"median of {rounds} round-robin rounds after {warmup} warm-up step(s)",
        "step_ms": ms,
        "trainer_over_bare": round(ms["trainer"] / ms["bare"], 3),
        "trainer_fused_over_bare": round(ms["trainer-fused"] / ms["bare"], 3),
        "adamw_update_ms": adamw,
    }


if __name__ == "__main__":
    import json
    import sys

    print(json.dumps(main(quick="--quick" in sys.argv), indent=2))
