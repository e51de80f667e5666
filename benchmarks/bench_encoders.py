"""Feature-extraction throughput of the encoder zoo (images/s), on CPU and on the GPU when there is one.

Two measurements:

- ``encode``: ``VisionEncoder.encode`` on in-memory uint8 batches (preprocessing + forward + float32 tokens), one
  warm-up batch, then the median over timed batches. Random weights: speed does not depend on the values.
- ``extract``: ``irepa.encoders.features.extract_features`` end to end on a folder of PNG files (decode, ADM crop,
  encode, streaming safetensors write).

Run with ``python benchmarks/run.py --only encoders`` (``--quick`` for a smoke run).
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from irepa.encoders import load_encoder
from irepa.encoders.features import extract_features
from irepa.utils.images import list_images

# (encoder id, resolution, batch size) on CPU; full-size models with random weights.
CPU_CASES = [
    ("pixels", 256, 32),
    ("hog", 256, 32),
    ("mocov3-vit-s", 256, 8),
    ("dinov2-vit-b", 256, 8),
    ("dinov3-vit-b16", 256, 8),
    ("dinov2-vit-b", 512, 2),
]
GPU_CASES = [
    ("dinov2-vit-b", 256, 64),
    ("dinov2-vit-l", 256, 64),
    ("dinov3-vit-b16", 256, 64),
    ("siglip2-vit-b", 256, 64),
    ("dinov2-vit-b", 512, 32),
    ("hog", 256, 64),
]
QUICK_CASES = [("pixels", 64, 4), ("hog", 64, 4), ("mocov3-vit-s", 64, 2)]


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def bench_encode(name: str, resolution: int, batch: int, device: str, dtype: torch.dtype, repeats: int) -> dict:
    """Median images/s of ``encode`` on random uint8 batches."""
    torch.manual_seed(0)
    start = time.perf_counter()
    encoder = load_encoder(name, resolution=resolution, pretrained=False, device=device, dtype=dtype)
    build_s = time.perf_counter() - start
    images = torch.randint(0, 256, (batch, 3, resolution, resolution), dtype=torch.uint8, device=device)
    encoder.encode(images)  # warm-up (allocations, cuDNN/kernel selection)
    _sync(device)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        encoder.encode(images)
        _sync(device)
        times.append(time.perf_counter() - t0)
    median = statistics.median(times)
    return {
        "encoder": name,
        "resolution": resolution,
        "batch": batch,
        "device": device,
        "dtype": str(dtype).removeprefix("torch."),
        "grid": list(encoder.grid),
        "build_s": round(build_s, 2),
        "batch_s": round(median, 4),
        "images_per_s": round(batch / median, 1),
    }


def bench_extract(name: str, resolution: int, batch: int, device: str, num_images: int) -> dict:
    """images/s of the whole ``extract_features`` pipeline on PNG files (source images 1.25x larger: ADM crop)."""
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "images"
        (root / "class0").mkdir(parents=True)
        size = resolution * 5 // 4
        for i in range(num_images):
            Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(root / "class0" / f"{i}.png")
        encoder = load_encoder(name, resolution=resolution, pretrained=False, device=device)
        result = extract_features(
            encoder, list_images(root), Path(tmp) / "f.safetensors", root=root, batch_size=batch, progress=False
        )
    return {
        "encoder": name,
        "resolution": resolution,
        "batch": batch,
        "device": device,
        "images": result.num_images,
        "seconds": round(result.seconds, 2),
        "images_per_s": round(result.images_per_second, 1),
    }


def main(quick: bool = False) -> dict:
    results: dict = {"torch_threads": torch.get_num_threads(), "encode": [], "extract": []}
    cases = QUICK_CASES if quick else CPU_CASES
    for name, resolution, batch in cases:
        row = bench_encode(name, resolution, batch, "cpu", torch.float32, repeats=2 if quick else 3)
        results["encode"].append(row)
        print(f"cpu  {name:16s} {resolution:4d}px b{batch:<3d} {row['images_per_s']:8.1f} images/s", flush=True)
    if torch.cuda.is_available() and not quick:
        results["gpu"] = torch.cuda.get_device_name(0)
        for name, resolution, batch in GPU_CASES:
            for dtype in (torch.float32, torch.bfloat16):
                row = bench_encode(name, resolution, batch, "cuda", dtype, repeats=10)
                results["encode"].append(row)
                print(f"cuda {name:16s} {resolution:4d}px b{batch:<3d} {row['dtype']:8s} {row['images_per_s']:8.1f}")
    extract_case = ("pixels", 64, 8, 16) if quick else ("mocov3-vit-s", 256, 16, 64)
    name, resolution, batch, count = extract_case
    results["extract"].append(bench_extract(name, resolution, batch, "cpu", count))
    return results


if __name__ == "__main__":
    import json

    print(json.dumps(main(), indent=2))
