"""Training-step throughput of SiT-B/2-, XL/2- and JiT-B/16-shaped models, and the overhead of REPA and iREPA.

One timed step is what :class:`irepa.training.trainer.Trainer` does per batch minus data loading and the teacher:
times/noise drawing, the denoising forward (with the hidden tokens of block ``align.depth``), the alignment term
(projector, target normalization, 1 − cos) in float32, backward, gradient clipping, AdamW and the EMA update.
SiT runs the ``denoising`` objective's loss on 32×32×4 latents; JiT-B/16 runs the ``jit`` objective's loss
(:func:`irepa.diffusion.losses.x_prediction_loss`) on 256 px RGB pixels: the same 16×16 token grid, plus JiT's 32
in-context tokens from block 4.

The alignment targets are **precomputed** fixed random tokens shaped like DINOv2-B's at 256 px (B, 256, 768), so
the "overhead" is the aligner's own cost (projector + normalization + loss and their backward), independent of the
encoder. The teacher forward is reported separately (a randomly initialised DINOv2-B at 256 px, no grad) so its
share of a step can be estimated.

Methods: ``none`` (no alignment), ``repa`` (MLP projector, raw targets, λ 0.5), ``irepa`` (3×3 conv projector,
spatial normalization γ 0.6, λ 1.0 for SiT; γ 0.8, λ 0.5 for JiT) — the shipped presets' settings.

CPU (this machine): small batches, and the XL/2 *shape* at reduced depth (full width 1152 / 16 heads / 256
tokens; the memory of a full-depth XL training state does not fit next to other jobs), fp32. GPU (when one is
present): the full models at batch 256 in bf16.
"""

from __future__ import annotations

import statistics
import time

import torch

METHODS = {
    "none": None,
    "repa": {"projector": "mlp", "target_norm": "none", "weight": 0.5},
    "irepa": {"projector": "conv", "kernel_size": 3, "target_norm": "spatial", "gamma": 0.6, "weight": 1.0},
}
#: The jit presets' iREPA head (γ 0.8, λ 0.5); REPA is the same as for SiT.
JIT_IREPA = {**METHODS["irepa"], "gamma": 0.8, "weight": 0.5}


def _step_fn(
    model_name: str,
    overrides: dict,
    method: str,
    align_depth: int,
    batch: int,
    device,
    precision,
    *,
    compile_objective: bool = False,
    fused_adamw: bool | None = None,
):
    """One training step of ``method`` as a closure (model, aligner, AdamW and EMA built on ``device``).

    ``compile_objective`` wraps model + loss + aligner in one ``torch.compile``; ``fused_adamw`` passes
    ``fused=`` to AdamW (None: PyTorch's default, as the trainer uses).
    """
    from irepa.align import AlignConfig, RepresentationAligner
    from irepa.diffusion.losses import denoising_loss, x_prediction_loss
    from irepa.diffusion.paths import get_path
    from irepa.models import build_model
    from irepa.training.ema import EMA

    torch.manual_seed(0)
    with torch.device(device):  # initialize on the device (an XL/2 init on the CPU alone takes many seconds)
        model = build_model(model_name, **overrides)
        jit = model_name.startswith("JiT-")
        aligner = None
        if METHODS[method] is not None:
            head = JIT_IREPA if jit and method == "irepa" else METHODS[method]
            cfg = AlignConfig(encoders=["dinov2-vit-b"], depth=align_depth, **head)
            aligner = RepresentationAligner.from_config(cfg, model.hidden_size, {"dinov2-vit-b": 768})
    path = get_path("linear")
    ema = EMA(model, 0.9999).to(device)
    params = [p for p in model.parameters() if p.requires_grad]
    params += list(aligner.parameters()) if aligner is not None else []
    optimizer = torch.optim.AdamW(params, lr=1e-4, **({} if fused_adamw is None else {"fused": fused_adamw}))

    def objective(x0, y, t, noise, targets):
        # What the objective computes per micro-batch (irepa.training.objectives.denoising / .jit).
        hidden_at = align_depth if aligner is not None else None
        if jit:
            result = x_prediction_loss(model, x0, y, t=t, noise=noise, return_hidden=hidden_at)
        else:
            result = denoising_loss(model, path, x0, y, t=t, noise=noise, return_hidden=hidden_at)
        loss = result.denoise
        if aligner is not None:
            loss = loss + aligner.compute(targets, source=result.hidden, grid=model.grid, step=0)["align"]
        return loss

    forward = torch.compile(objective) if compile_objective else objective
    c, h, w = model.in_channels, *model.input_size
    x0 = torch.randn(batch, c, h, w, device=device)
    y = torch.randint(0, 1000, (batch,), device=device)
    targets = {"dinov2-vit-b": torch.randn(batch, model.grid[0] * model.grid[1], 768, device=device)}
    generator = torch.Generator(device=device).manual_seed(0)
    dtype = {"bf16": torch.bfloat16, "fp32": None}[precision]

    def step():
        t = torch.rand(batch, generator=generator, device=device)
        noise = torch.randn(x0.shape, generator=generator, device=device)
        with torch.autocast(device_type=device.type, dtype=dtype, enabled=dtype is not None):
            loss = forward(x0, y, t, noise, targets)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        ema.update(model)

    return step


def _sync(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _time(step, device, steps: int, warmup: int) -> float:
    """Median seconds per call of ``step`` over ``steps`` timed calls."""
    for _ in range(warmup):
        step()
    times = []
    for _ in range(steps):
        _sync(device)
        start = time.perf_counter()
        step()
        _sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _time_interleaved(steps_by_method: dict, device, rounds: int, warmup: int) -> dict[str, float]:
    """Median seconds per step of each method, timing the methods round-robin (robust to load drifting over time)."""
    for step in steps_by_method.values():
        for _ in range(warmup):
            step()
    times: dict[str, list[float]] = {m: [] for m in steps_by_method}
    for _ in range(rounds):
        for method, step in steps_by_method.items():
            _sync(device)
            start = time.perf_counter()
            step()
            _sync(device)
            times[method].append(time.perf_counter() - start)
    return {m: statistics.median(t) for m, t in times.items()}


def _teacher_ms(batch: int, device, precision: str, steps: int) -> float:
    from irepa.encoders import load_encoder

    encoder = load_encoder("dinov2-vit-b", resolution=256, pretrained=False, device=device)
    images = torch.randint(0, 256, (batch, 3, 256, 256), dtype=torch.uint8, device=device)
    dtype = {"bf16": torch.bfloat16, "fp32": None}[precision]

    def forward():
        with torch.no_grad(), torch.autocast(device_type=device.type, dtype=dtype, enabled=dtype is not None):
            encoder.encode(images)

    return 1000 * _time(forward, device, steps, warmup=1)


def main(quick: bool = False) -> dict:
    """Run the benchmark; ``quick`` uses tiny depths and one timed step (keeps the script working in tests)."""
    from irepa.models import MODELS

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    gpu = device.type == "cuda"
    precision = "bf16" if gpu else "fp32"
    if gpu:
        cases = [("SiT-B/2", {}, 4, 256), ("JiT-B/16", {}, 4, 256), ("SiT-XL/2", {}, 8, 256)]
        steps, warmup = (3, 1) if quick else (20, 5)
    elif quick:
        cases = [
            ("SiT-B/2", {"depth": 2}, 1, 1),
            ("JiT-B/16", {"depth": 2, "in_context_start": 1}, 1, 1),
            ("SiT-XL/2", {"depth": 1}, 1, 1),
        ]
        steps, warmup = 1, 1
    else:
        cases = [("SiT-B/2", {}, 4, 4), ("JiT-B/16", {}, 4, 4), ("SiT-XL/2", {"depth": 4}, 4, 2)]
        steps, warmup = 5, 1
    rows = []
    for model_name, overrides, depth, batch in cases:
        steps_by_method = {m: _step_fn(model_name, overrides, m, depth, batch, device, precision) for m in METHODS}
        seconds = _time_interleaved(steps_by_method, device, steps, warmup)
        del steps_by_method
        for method in METHODS:
            rows.append(
                {
                    "model": model_name,
                    "depth": overrides.get("depth", MODELS.get(model_name).defaults["depth"]),
                    "align_depth": depth,
                    "batch": batch,
                    "method": method,
                    "step_ms": round(1000 * seconds[method], 1),
                    "img_per_s": round(batch / seconds[method], 2),
                }
            )
            r = rows[-1]
            print(
                f"{model_name} depth {r['depth']} batch {batch} {method:<6} {r['step_ms']:>9.1f} ms/step "
                f"{r['img_per_s']:>8.2f} img/s",
                flush=True,
            )
    overhead = {}
    for model_name, *_ in cases:
        base = next(r["step_ms"] for r in rows if r["model"] == model_name and r["method"] == "none")
        overhead[model_name] = {
            m: f"{100 * (r['step_ms'] / base - 1):+.1f}%"
            for r in rows
            if r["model"] == model_name and (m := r["method"]) != "none"
        }
    out = {
        "device": torch.cuda.get_device_name(0) if gpu else f"cpu ({torch.get_num_threads()} threads)",
        "precision": precision,
        "targets": "precomputed fixed random DINOv2-B-shaped tokens (B, 256, 768); teacher forward not in the step",
        "timing": f"median of {steps} steps per method, methods timed round-robin, after {warmup} warm-up step(s)",
        "rows": rows,
        "alignment_overhead_vs_none": overhead,
    }
    if not quick:
        batch = cases[0][3]
        out["teacher_forward_ms"] = {
            "encoder": "dinov2-vit-b (random init), 256 px, no grad",
            "batch": batch,
            "ms": round(_teacher_ms(batch, device, precision, steps), 1),
        }
    return out


if __name__ == "__main__":
    import json
    import sys

    print(json.dumps(main(quick="--quick" in sys.argv), indent=2))
