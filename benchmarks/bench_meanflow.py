"""The cost of the MeanFlow step (a JVP through the network) against the SiT denoising step of the same model size.

One timed step of each on one shared network (a SiT with MeanFlow's ``h_embedder``; the SiT step feeds it
``h = 0``, one small extra MLP), alignment off; MeanFlow's JVP always runs in float32, the SiT step in the
benchmark's precision:

- ``sit``: velocity regression (:func:`irepa.diffusion.losses.denoising_loss`): forward, backward.
- ``meanflow``: :func:`irepa.diffusion.meanflow.meanflow_loss` without guidance: one ``torch.func.jvp`` (primal +
  tangent) on SDPA's math backend, backward through the primal.
- ``meanflow-guided``: the same with the B/2 preset's training-time guidance (ω 1.0, κ 0.5: two extra no-grad
  forwards at ``h = 0`` for the guided samples, here all of them).

Each step also draws its randomness and runs AdamW and the EMA update, as the trainer does. Eager mode (no
``torch.compile``). CPU: the full SiT-B/2 at batch 2 and the XL/2 shape (width 1152, 16 heads, 256 tokens) at
depth 2 and batch 1; GPU (when present): full B/2 and XL/2 at batch 64 in bf16 for the SiT step.
"""

from __future__ import annotations

import statistics
import time

import torch

METHODS = ("sit", "meanflow", "meanflow-guided")


def _step_fns(model_name: str, overrides: dict, batch: int, device, precision: str) -> dict:
    """One step function per method, all on one shared model, optimizer and EMA (three B/2 training states would
    not fit next to other jobs on the CPU machine)."""
    from irepa.diffusion.losses import denoising_loss
    from irepa.diffusion.meanflow import MeanFlowGuidance, meanflow_loss, sample_interval_times
    from irepa.diffusion.paths import get_path
    from irepa.diffusion.time_sampling import get_time_sampler
    from irepa.models import build_model
    from irepa.training.ema import EMA

    torch.manual_seed(0)
    model = build_model(model_name, time_interval=True, **overrides).to(device)
    ema = EMA(model, 0.9999).to(device)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-4, betas=(0.9, 0.95))
    c, h, w = model.in_channels, *model.input_size
    x0 = torch.randn(batch, c, h, w, device=device)
    y = torch.randint(0, 1000, (batch,), device=device)
    generator = torch.Generator(device=device).manual_seed(0)
    path, time_sampler = get_path("linear"), get_time_sampler("uniform")
    dtype = {"bf16": torch.bfloat16, "fp32": None}[precision]

    def sit(x, t, y, return_hidden=None):  # the SiT step on the same network, at h = 0
        return model(x, t, y, h=torch.zeros_like(t), return_hidden=return_hidden)

    def update(loss: torch.Tensor) -> None:
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        ema.update(model)

    def sit_step():
        noise = torch.randn(x0.shape, generator=generator, device=device)
        t = time_sampler(batch, generator=generator, device=device)
        with torch.autocast(device_type=device.type, dtype=dtype, enabled=dtype is not None):
            update(denoising_loss(sit, path, x0, y, t=t, noise=noise).denoise)

    def meanflow_step(guidance: MeanFlowGuidance | None):
        def step():
            noise = torch.randn(x0.shape, generator=generator, device=device)
            r, t = sample_interval_times(batch, generator=generator, device=device)
            update(meanflow_loss(model, x0, y, r=r, t=t, noise=noise, null_label=1000, guidance=guidance).loss)

        return step

    return {
        "sit": sit_step,
        "meanflow": meanflow_step(None),
        "meanflow-guided": meanflow_step(MeanFlowGuidance(omega=1.0, kappa=0.5)),
    }


def _sync(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _time_interleaved(steps_by_method: dict, device, rounds: int, warmup: int) -> dict[str, float]:
    """Median seconds per step of each method, timed round-robin (robust to load drifting over time)."""
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


def main(quick: bool = False) -> dict:
    """Run the benchmark; ``quick`` uses tiny depths and one timed step (keeps the script working in tests)."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    gpu = device.type == "cuda"
    precision = "bf16" if gpu else "fp32"
    if gpu:
        cases = [("SiT-B/2", {}, 64), ("SiT-XL/2", {}, 64)]
        rounds, warmup = (3, 1) if quick else (10, 3)
    elif quick:
        cases = [("SiT-B/2", {"depth": 1, "input_size": 8}, 1)]
        rounds, warmup = 1, 1
    else:
        cases = [("SiT-B/2", {}, 2), ("SiT-XL/2", {"depth": 2}, 1)]
        rounds, warmup = 3, 1
    rows = []
    for model_name, overrides, batch in cases:
        steps = _step_fns(model_name, overrides, batch, device, precision)
        seconds = _time_interleaved(steps, device, rounds, warmup)
        del steps
        base = seconds["sit"]
        for method in METHODS:
            rows.append(
                {
                    "model": model_name,
                    "depth": overrides.get("depth", {"SiT-B/2": 12, "SiT-XL/2": 28}[model_name]),
                    "batch": batch,
                    "method": method,
                    "step_ms": round(1000 * seconds[method], 1),
                    "vs_sit": round(seconds[method] / base, 2),
                }
            )
            r = rows[-1]
            print(
                f"{model_name} depth {r['depth']} batch {batch} {method:<16} {r['step_ms']:>9.1f} ms/step "
                f"{r['vs_sit']:>5.2f}x SiT",
                flush=True,
            )
    return {
        "device": torch.cuda.get_device_name(0) if gpu else f"cpu ({torch.get_num_threads()} threads)",
        "precision": f"SiT step {precision}; MeanFlow step float32 (JVP)",
        "timing": f"median of {rounds} steps per method, methods timed round-robin, after {warmup} warm-up step(s)",
        "rows": rows,
    }


if __name__ == "__main__":
    import json
    import sys

    print(json.dumps(main(quick="--quick" in sys.argv), indent=2))
