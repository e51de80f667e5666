"""GPU profile (``python benchmarks/run.py --gpu``): every GPU figure of the performance issue in one run (< 8 min).

Cases, in this order (cheap and certain first, so that a run cut short still has them):

1. **Training step**, SiT-XL/2, batch 128, bf16 autocast, random targets shaped like DINOv2-B tokens (B, 256, 768):
   the full step of ``bench_train`` (times/noise, forward with the aligned block's tokens, alignment term in
   float32, backward, clip 1.0, AdamW, EMA 0.9999). ``none`` / ``repa`` / ``irepa`` eager with the trainer's
   optimizer (PyTorch's default AdamW: foreach on CUDA), ``irepa`` eager with fused AdamW, then compiled
   (``torch.compile`` of model + loss + aligner, fused AdamW): ``irepa`` first, ``none`` and ``repa`` while the
   time budget lasts. Median of ``steps`` steps after ``warmup`` warm-up steps; the compiled cases also report the
   first step's time (compilation included). The real ``Trainer.train_step`` of the same iREPA case (bench
   ``trainer_step``'s trainer: SiT-XL/2 on 32 px pixels, 16×16 tokens, data loading, fixed targets) with the
   default AdamW and with ``optim.fused`` (the step without host syncs), and compiled (``train.compile``) after
   the compiled cases while the budget lasts: its time over ``irepa`` eager is the trainer's own overhead.
2. **Spatial metrics**, B = 256 images of 16×16×768 tokens, float32, all four metrics with masks, against one
   batched Gram matrix of unit tokens (the floor); structured and near-uniform tokens.
3. **Sampling**, SiT-XL/2 (random weights), Euler ODE, 32×32×4 latents, batch 64, 10 steps, without and with CFG
   1.5, bf16 autocast: images/s and network evaluations × images / s.

MFU counts model FLOPs analytically (:func:`sit_forward_flops`): a training step is 3× the forward (backward = 2×
forward), divided by 989 TFLOP/s (H100/H200 dense bf16 peak), the convention of the issue's table. The aligner's
FLOPs are not counted (they are < 1 % of an XL/2 forward). Peak memory is ``torch.cuda.max_memory_allocated``
per case (reserved memory too).

``tiny=True`` runs the same code at toy sizes (a 2-block narrow SiT, batch 2, 8×8 tokens) on whatever device is
there, so the script is tested on CPU; its numbers mean nothing.
"""

from __future__ import annotations

import gc
import importlib.util
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

HERE = Path(__file__).resolve().parent
PEAK_BF16_FLOPS = 989e12  # H100 / H200 SXM dense bf16 (the denominator of the MFU column)


def _load(name: str):
    """Import a sibling benchmark module (``bench_train``, ``bench_spatial``) by file."""
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, HERE / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def sit_forward_flops(
    depth: int, hidden: int, tokens: int, patch: int, in_channels: int, mlp_ratio: float = 4.0
) -> int:
    """Forward FLOPs of one image through a SiT (multiply-add = 2 FLOPs).

    Per block: qkv ``6·T·D²``, attention output ``2·T·D²``, scores and weighted values ``4·T²·D``, MLP
    ``4·r·T·D²``, adaLN modulation ``12·D²`` (one conditioning vector per image). Plus the patch embedding
    ``2·T·p²C·D``, the final layer ``2·T·D·p²C + 4·D²`` and the timestep/label embedders (``2·256·D + 2·D²``).
    SiT-XL/2 at 256 px: 237.3 GFLOPs, which reproduces the issue's MFU column (378 img/s → 27.2 %).

    Args:
        depth: Number of blocks.
        hidden: Width ``D``.
        tokens: Tokens per image ``T``.
        patch: Patch size ``p``.
        in_channels: Latent channels ``C``.
        mlp_ratio: MLP width over ``D``.
    """
    d, t, pc = hidden, tokens, patch * patch * in_channels
    block = 6 * t * d * d + 2 * t * d * d + 4 * t * t * d + 4 * mlp_ratio * t * d * d + 12 * d * d
    embed = 2 * t * pc * d + 2 * 256 * d + 2 * d * d
    final = 2 * t * d * pc + 4 * d * d
    return int(depth * block + embed + final)


class _Budget:
    """Wall-clock budget of the whole profile: later optional cases are skipped once it is spent."""

    def __init__(self, seconds: float) -> None:
        self.start, self.seconds = time.perf_counter(), seconds

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def allows(self, estimate: float) -> bool:
        return self.elapsed() + estimate <= self.seconds


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _free(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def _median_time(fn: Callable[[], object], device: torch.device, steps: int, warmup: int) -> tuple[float, float]:
    """(first call's seconds, median seconds of ``steps`` calls after ``warmup`` calls; the first is one of them)."""
    _sync(device)
    start = time.perf_counter()
    fn()
    _sync(device)
    first = time.perf_counter() - start
    for _ in range(max(0, warmup - 1)):
        fn()
    times = []
    for _ in range(steps):
        _sync(device)
        start = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - start)
    return first, statistics.median(times)


def _model_flops(model: torch.nn.Module) -> float:
    """Analytic forward FLOPs per image of a SiT (:func:`sit_forward_flops` from its size)."""
    tokens = model.grid[0] * model.grid[1]
    return sit_forward_flops(len(model.blocks), model.hidden_size, tokens, model.patch_size, model.in_channels)


def _throughput(batch: int, first: float, median: float, flops: float, device: torch.device) -> dict[str, Any]:
    """A row's timing columns: step time, first step, images/s, MFU (3 × forward FLOPs, bf16 peak), memory."""
    images_per_s = batch / median
    return {
        "step_ms": round(1000 * median, 1),
        "first_step_s": round(first, 2),
        "images_per_s": round(images_per_s, 1),
        "mfu_percent": round(100 * images_per_s * 3 * flops / PEAK_BF16_FLOPS, 1),
        "forward_gflops_per_image": round(flops / 1e9, 2),
        **_memory(device),
    }


def _memory(device: torch.device) -> dict[str, float | None]:
    if device.type != "cuda":
        return {"peak_allocated_gb": None, "peak_reserved_gb": None}
    return {
        "peak_allocated_gb": round(torch.cuda.max_memory_allocated() / 1e9, 2),
        "peak_reserved_gb": round(torch.cuda.max_memory_reserved() / 1e9, 2),
    }


def train_case(
    method: str, *, compiled: bool, fused: bool | None, device: torch.device, tiny: bool, steps: int, warmup: int
) -> dict:
    """Time the full training step of one method (see the module docstring)."""
    bench_train = _load("bench_train")
    if tiny:
        name, overrides, depth, batch = "SiT-XL/2", {"depth": 2, "hidden_size": 64, "num_heads": 2}, 1, 2
        overrides["input_size"] = 16
    else:
        name, overrides, depth, batch = "SiT-XL/2", {}, 8, 128
    precision = "bf16" if device.type == "cuda" or not tiny else "fp32"
    _free(device)
    if compiled:
        torch._dynamo.reset()
    step = bench_train._step_fn(
        name, overrides, method, depth, batch, device, precision, compile_objective=compiled, fused_adamw=fused
    )
    first, median = _median_time(step, device, steps, warmup)
    from irepa.models import build_model

    with torch.device("meta"):
        flops = _model_flops(build_model(name, **overrides))
    row = {
        "model": name + (f" {overrides}" if overrides else ""),
        "batch": batch,
        "method": method,
        "compiled": compiled,
        "adamw": {None: "default (foreach)", True: "fused", False: "for-loop"}[fused],
        "precision": precision,
        **_throughput(batch, first, median, flops, device),
    }
    del step
    _free(device)
    return row


def trainer_case(*, compiled: bool, fused: bool, device: torch.device, tiny: bool, steps: int, warmup: int) -> dict:
    """The real ``Trainer.train_step`` of the iREPA case (``bench_trainer_step``'s trainer, bf16 autocast).

    SiT-XL/2 on 32 px pixels (the same 16×16 tokens, and the same cost up to the 3 vs 4 input channels, as 32×32×4
    latents), data loading through the trainer's DataLoader, the teacher replaced by fixed random DINOv2-B-shaped
    targets like the other cases. ``fused``: ``optim.fused=true``, the step without host syncs; ``compiled``:
    ``train.compile`` (model + loss + aligner).
    """
    import tempfile

    bench = _load("bench_trainer_step")
    if tiny:
        overrides, depth, batch, size = "{depth: 2, hidden_size: 64, num_heads: 2}", 1, 2, 16
    else:
        overrides, depth, batch, size = "{}", 8, 128, 32
    precision = "bf16" if device.type == "cuda" or not tiny else "fp32"
    _free(device)
    if compiled:
        torch._dynamo.reset()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        store = bench._store(root, size=size, count=batch)
        trainer, step, _ = bench._trainer(
            store,
            root / "run",
            overrides,
            depth,
            batch,
            fused,
            model="SiT-XL/2",
            precision=precision,
            device=device.type,
            compiled=compiled,
            teacher_resolution=8 * size,
        )
        first, median = _median_time(step, device, steps, warmup)
        flops = _model_flops(trainer.model)
        trainer.data.close()
        del trainer, step
    row = {
        "model": f"SiT-XL/2 {overrides} on {size} px pixels",
        "batch": batch,
        "method": "irepa Trainer.train_step",
        "compiled": compiled,
        "adamw": "fused" if fused else "default (foreach)",
        "precision": precision,
        **_throughput(batch, first, median, flops, device),
    }
    _free(device)
    return row


def spatial_case(device: torch.device, tiny: bool, repeats: int) -> dict:
    """All four spatial metrics vs one batched Gram matrix of unit tokens, on ``device``."""
    bench_spatial = _load("bench_spatial")
    from irepa.data.synthetic import generate
    from irepa.metrics import spatial

    batch, side, dim = (8, 8, 32) if tiny else (256, 16, 768)
    masks = spatial.masks_to_patches(generate(batch, image_size=4 * side, seed=0).masks, (side, side)).to(device)
    out = {"shape": [batch, side * side, dim]}
    for kind, tokens in bench_spatial.token_sets(batch, side, dim).items():
        tokens = tokens.to(device)
        unit = torch.nn.functional.normalize(tokens, dim=-1)
        _, t_metrics = _median_time(lambda t=tokens: spatial.compute(t, masks), device, repeats, 2)
        _, t_gram = _median_time(lambda u=unit: torch.bmm(u, u.transpose(1, 2)), device, repeats, 2)
        out[kind] = {
            "metrics_ms": round(1000 * t_metrics, 3),
            "gram_ms": round(1000 * t_gram, 3),
            "metrics_over_gram": round(t_metrics / t_gram, 2),
        }
    return out


def sampling_case(device: torch.device, tiny: bool, repeats: int, compile_mode: str = "none") -> list[dict]:
    """Euler sampling throughput of SiT-XL/2, with and without CFG, eager or compiled as ``irepa sample --compile``.

    The compiled rows' ``first_run_s`` is the first (compiling, CUDA-graph recording) sampling run's wall time.
    """
    from irepa.diffusion.generate import SnapshotSampler
    from irepa.diffusion.paths import get_path
    from irepa.diffusion.samplers import SAMPLERS
    from irepa.models import build_model

    _free(device)
    overrides = {"depth": 2, "hidden_size": 64, "num_heads": 2, "input_size": 16} if tiny else {}
    batch, steps = (2, 2) if tiny else (64, 10)
    torch.manual_seed(0)
    with torch.device(device):
        model = build_model("SiT-XL/2", **overrides).eval()
    c, (h, w) = model.in_channels, model.input_size
    noise = torch.randn(batch, c, h, w, device=device)
    labels = torch.randint(0, 1000, (batch,), device=device)
    autocast = device.type == "cuda"
    network = SnapshotSampler(model, {"path": "linear"}, {"kind": "latent"}, None, device).network(compile_mode)

    @torch.no_grad()
    def velocity(x, t, y):
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
            return network(x, t, y).out.float()

    rows = []
    for cfg in (1.0, 1.5):

        def run(cfg=cfg):
            return SAMPLERS.get("euler")(velocity, get_path("linear"), noise, labels, num_steps=steps, cfg_scale=cfg,
                                         null_label=1000)  # fmt: skip

        first, seconds = _median_time(run, device, repeats, 1)
        rows.append(
            {
                "sampler": "euler",
                "compile": compile_mode,
                "first_run_s": round(first, 2),
                "model": "SiT-XL/2" + (f" {overrides}" if overrides else ""),
                "batch": batch,
                "steps": steps,
                "cfg_scale": cfg,
                "precision": "bf16" if autocast else "fp32",
                "images_per_s": round(batch / seconds, 2),
                "images_x_nfe_per_s": round(batch * steps / seconds, 1),
            }
        )
    _free(device)
    return rows


def markdown(result: dict) -> str:
    """The results as the markdown tables of docs/benchmarks.md."""
    lines = [
        f"GPU profile on {result['machine'].get('device')} ({result['date']}, torch {result['machine'].get('torch')}, "
        f"{result['wall_s']} s)",
        "",
        "| case | images/s | step ms | MFU | peak allocated / reserved GB | first step s |",
        "|---|---|---|---|---|---|",
    ]
    for r in result["train"]:
        label = f"{r['method']}, {'compiled' if r['compiled'] else 'eager'}, AdamW {r['adamw']}"
        lines.append(
            f"| {label} | {r['images_per_s']} | {r['step_ms']} | {r['mfu_percent']} % | "
            f"{r['peak_allocated_gb']} / {r['peak_reserved_gb']} | {r['first_step_s']} |"
        )
    for name in result.get("skipped", []):
        lines.append(f"| {name} | skipped (time budget) | | | | |")
    if "spatial" in result:
        s = result["spatial"]
        lines += ["", f"Spatial metrics {s['shape']} (all four, with masks) vs one batched Gram of unit tokens:", ""]
        lines += ["| tokens | metrics ms | Gram ms | ratio |", "|---|---|---|---|"]
        for kind in ("structured", "near_uniform"):
            k = s[kind]
            lines.append(f"| {kind} | {k['metrics_ms']} | {k['gram_ms']} | {k['metrics_over_gram']}× |")
    if "sampling" in result:
        lines += ["", "| sampler | compile | batch | steps | CFG | images/s | images × NFE / s | first run s |"]
        lines += ["|---|---|---|---|---|---|---|---|"]
        for r in result["sampling"]:
            lines.append(
                f"| {r['sampler']} {r['precision']} | {r['compile']} | {r['batch']} | {r['steps']} | {r['cfg_scale']} "
                f"| {r['images_per_s']} | {r['images_x_nfe_per_s']} | {r['first_run_s']} |"
            )
    return "\n".join(lines) + "\n"


def main(
    *,
    tiny: bool = False,
    compile_cases: bool = True,
    budget_s: float = 400.0,
    write: Callable[[dict], None] | None = None,
    machine: dict | None = None,
) -> dict:
    """Run the profile; ``write(result)`` is called after every case (partial results survive a time-out).

    Args:
        tiny: Toy sizes on any device (tests); the numbers mean nothing.
        compile_cases: Run the compiled training cases (minutes of compilation at full size).
        budget_s: Wall-clock budget; optional cases that would not fit are skipped and listed.
        write: Called with the result so far after each case.
        machine: Machine description stored with the result.
    """
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True  # the trainer's default (train.tf32)
        torch.backends.cudnn.allow_tf32 = True
    budget = _Budget(budget_s)
    steps, warmup = (2, 1) if tiny else (10, 3)
    result: dict = {
        "profile": "gpu",
        "tiny": tiny,
        "date": time.strftime("%Y-%m-%d"),
        "machine": machine or {},
        "peak_flops": PEAK_BF16_FLOPS,
        "mfu_formula": "images/s x 3 x forward FLOPs (sit_forward_flops) / 989e12",
        "train": [],
        "skipped": [],
    }

    def save() -> None:
        result["wall_s"] = round(budget.elapsed(), 1)
        if write is not None:
            write(result)

    def guarded(name: str, estimate: float, fn: Callable[[], object]) -> object | None:
        if not budget.allows(estimate):
            result["skipped"].append(name)
            save()
            return None
        try:
            return fn()
        except torch.cuda.OutOfMemoryError as exc:  # record and go on: a missing row says why
            result.setdefault("errors", {})[name] = f"out of memory: {str(exc).splitlines()[0]}"
            _free(device)
            return None

    est_eager, est_compile = (5, 60) if tiny else (25, 150)
    for method, fused in (("none", None), ("repa", None), ("irepa", None), ("irepa", True)):
        row = guarded(
            f"{method} eager",
            est_eager,
            lambda m=method, f=fused: train_case(
                m, compiled=False, fused=f, device=device, tiny=tiny, steps=steps, warmup=warmup
            ),
        )
        if row is not None:
            result["train"].append(row)
            print(json.dumps(row), flush=True)
        save()
    for fused in (False, True):  # the real trainer: the full step's overhead over bench_train's step; no-sync path
        row = guarded(
            f"Trainer.train_step eager{' fused' if fused else ''}",
            est_eager,
            lambda f=fused: trainer_case(compiled=False, fused=f, device=device, tiny=tiny, steps=steps, warmup=warmup),
        )
        if row is not None:
            result["train"].append(row)
            print(json.dumps(row), flush=True)
        save()
    spatial = guarded("spatial", 10, lambda: spatial_case(device, tiny, 5 if tiny else 20))
    if spatial is not None:
        result["spatial"] = spatial
        print(json.dumps(spatial), flush=True)
    save()
    sampling = guarded("sampling", 15, lambda: sampling_case(device, tiny, 1 if tiny else 3))
    if sampling is not None:
        result["sampling"] = sampling
        print(json.dumps(sampling), flush=True)
    save()
    if compile_cases:
        for method in ("irepa", "none", "repa"):
            row = guarded(
                f"{method} compiled",
                est_compile,
                lambda m=method: train_case(
                    m, compiled=True, fused=True, device=device, tiny=tiny, steps=steps, warmup=warmup
                ),
            )
            if row is not None:
                result["train"].append(row)
                print(json.dumps(row), flush=True)
            save()
        row = guarded(
            "Trainer.train_step compiled fused",
            est_compile,
            lambda: trainer_case(compiled=True, fused=True, device=device, tiny=tiny, steps=steps, warmup=warmup),
        )
        if row is not None:
            result["train"].append(row)
            print(json.dumps(row), flush=True)
        save()
        compiled_sampling = guarded(
            "sampling compiled", 60, lambda: sampling_case(device, tiny, 1 if tiny else 3, "reduce-overhead")
        )
        if compiled_sampling is not None:
            result["sampling"] = result.get("sampling", []) + compiled_sampling
            print(json.dumps(compiled_sampling), flush=True)
            save()
    rows = {(r["method"], r["compiled"], r["adamw"]): r for r in result["train"]}
    summary = {}
    for compiled in (False, True):
        adamw = "fused" if compiled else "default (foreach)"
        base = rows.get(("none", compiled, adamw))
        for method in ("repa", "irepa"):
            other = rows.get((method, compiled, adamw))
            if base and other:
                key = f"{method}_over_none_{'compiled' if compiled else 'eager'}"
                summary[key] = f"{100 * (other['step_ms'] / base['step_ms'] - 1):+.1f}%"
    result["alignment_overhead"] = summary
    save()
    return result


if __name__ == "__main__":
    print(json.dumps(main(tiny="--tiny" in sys.argv), indent=2))
