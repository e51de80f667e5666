"""Sampler throughput: images/s and velocity evaluations/s for Euler, Heun and the SDE, with and without CFG.

Two models: a SiT (``SiT-S/2`` on 32×32×4 latents, the ImageNet-256 shape; a 2-block SiT-S/2 in quick mode) to
show end-to-end throughput per NFE, and a zero-cost velocity field to show the sampler's own overhead (the float64
state updates and, for the SDE, drawing per-sample noise from one generator per sample).
"""

from __future__ import annotations

import time

import torch

from irepa.diffusion.paths import get_path
from irepa.diffusion.samplers import SAMPLERS, sample_generators
from irepa.models import build_model


def _time(fn, repeats: int):
    """Best wall time of ``repeats`` calls after one warm-up call; returns ``(seconds, last result)``."""
    out = fn()  # warm-up
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - start)
    return best, out


def main(quick: bool = False) -> dict:
    device = "cuda" if torch.cuda.is_available() else "cpu"
    torch.manual_seed(0)
    overrides = {"depth": 2} if quick else {}
    model = build_model("SiT-S/2", **overrides).to(device).eval()
    batch = 4 if quick else 8
    steps = 4 if quick else 10
    repeats = 1 if quick else 2
    path = get_path("linear")
    labels = torch.randint(0, 1000, (batch,), device=device)
    noise = torch.randn(batch, 4, 32, 32, device=device)

    @torch.no_grad()
    def velocity(x, t, y):
        return model(x, t, y).out

    if device == "cuda" and not quick:
        batch, steps = 64, 50
    results = {"device": device, "model": f"SiT-S/2 {overrides or ''}".strip(), "batch": batch, "steps": steps}
    rows = []
    for name in ("euler", "heun", "sde"):
        for cfg in (1.0, 1.5):
            gens = sample_generators(range(batch), 0)
            run = SAMPLERS.get(name)

            def call(run=run, cfg=cfg, gens=gens):
                return run(
                    velocity, path, noise, labels, num_steps=steps, cfg_scale=cfg, null_label=1000, generator=gens
                )

            seconds, result = _time(call, repeats)
            nfe = result.nfe
            rows.append(
                {
                    "sampler": name,
                    "cfg_scale": cfg,
                    "nfe": nfe,
                    "seconds": round(seconds, 4),
                    "images_per_s": round(batch / seconds, 3),
                    "images_x_nfe_per_s": round(batch * nfe / seconds, 2),
                }
            )
    results["sit"] = rows

    # Sampler overhead alone: a velocity field that costs nothing.
    def zero(x, t, y):
        return torch.zeros_like(x)

    big = 64
    noise64 = torch.randn(big, 4, 32, 32, device=device)
    labels64 = torch.zeros(big, dtype=torch.long, device=device)
    overhead = {}
    for label, gens in (("per_sample_generators", sample_generators(range(big), 0)), ("one_generator", None)):
        seconds, _ = _time(lambda gens=gens: SAMPLERS.get("sde")(zero, path, noise64, labels64, num_steps=steps,
                                                              generator=gens), repeats)  # fmt: skip
        overhead[f"sde_{label}_ms_per_step_batch64"] = round(1000 * seconds / steps, 3)
    seconds, _ = _time(lambda: SAMPLERS.get("euler")(zero, path, noise64, labels64, num_steps=steps), repeats)
    overhead["euler_ms_per_step_batch64"] = round(1000 * seconds / steps, 3)
    results["overhead"] = overhead
    return results


if __name__ == "__main__":
    import json

    print(json.dumps(main(), indent=2))
