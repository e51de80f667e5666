"""Evaluator throughput: Inception images/s, streaming npz reads, Fréchet distance and precision/recall timings.

Random Inception weights (the network's cost does not depend on the values). The 2048-d Fréchet distance (scipy
``sqrtm``) is paid twice per evaluation (FID and sFID); precision/recall scales as (N_ref + N_samples)².
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from irepa.metrics.generative import FIDInceptionV3, random_inception_state_dict
from irepa.metrics.generative.npz import NpzArrayReader
from irepa.metrics.generative.scores import precision_recall
from irepa.metrics.generative.stats import FeatureStatistics, frechet_distance


def main(quick: bool = False) -> dict:
    device = "cuda" if torch.cuda.is_available() else "cpu"
    results: dict = {"device": device}

    model = FIDInceptionV3()
    model.load_state_dict(random_inception_state_dict(0))
    model = model.to(device)
    batch = 8 if quick else 64
    for size in (256,) if quick else (256, 512):
        images = torch.randint(0, 256, (batch, 3, size, size), dtype=torch.uint8, device=device)
        model(images)  # warm-up
        reps = 1 if quick else 3
        best = float("inf")
        for _ in range(reps):
            start = time.perf_counter()
            model(images)
            if device == "cuda":
                torch.cuda.synchronize()
            best = min(best, time.perf_counter() - start)
        results[f"inception_images_per_s_{size}px_batch{batch}"] = round(batch / best, 2)

    n = 256 if quick else 4096
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "s.npz"
        np.savez(path, np.random.default_rng(0).integers(0, 256, (n, 256, 256, 3), dtype=np.uint8))
        start = time.perf_counter()
        with NpzArrayReader(path) as reader:
            rows = sum(len(b) for b in reader.iter_batches(64))
        seconds = time.perf_counter() - start
        results["npz_read_images_per_s_256px"] = round(rows / seconds, 1)

    dim = 256 if quick else 2048
    rng = np.random.default_rng(0)
    feats = [rng.standard_normal((2 * dim, dim)) for _ in range(2)]
    stats = [FeatureStatistics.from_features(f) for f in feats]
    start = time.perf_counter()
    frechet_distance(*stats)
    results[f"frechet_seconds_{dim}d"] = round(time.perf_counter() - start, 3)

    n_pr = 1000 if quick else 10_000
    ref = torch.randn(n_pr, 2048, device=device)
    smp = torch.randn(n_pr, 2048, device=device)
    start = time.perf_counter()
    precision_recall(ref, smp)
    results[f"precision_recall_seconds_{n_pr}x{n_pr}"] = round(time.perf_counter() - start, 3)
    return results


if __name__ == "__main__":
    import json

    print(json.dumps(main(), indent=2))
