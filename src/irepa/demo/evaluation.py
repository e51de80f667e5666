"""The demo's evaluation: samples from EMA snapshots, Fréchet distance in the evaluator's feature space, grids.

Everything goes through the project's real code paths at a small size:

* snapshots are read with :func:`irepa.models.io.load_inference` (what ``irepa sample`` reads);
* samples come from the library's generation loop (:mod:`irepa.diffusion.generate`, what ``irepa sample`` runs:
  one generator per sample index, so a sample does not depend on the batch it was drawn in) with a class-balanced
  label plan;
* features are the CLS tokens of the shipped evaluator network (``irepa-demo-evaluator``, a zoo encoder) through
  :class:`irepa.metrics.generative.EncoderSpace`; statistics and the Fréchet distance are
  :class:`~irepa.metrics.generative.FeatureStatistics` and :func:`~irepa.metrics.generative.frechet_distance`
  (float64, the ADM formula).
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = [
    "EVALUATOR_ID",
    "SampleSettings",
    "feature_space",
    "generate_samples",
    "image_grid",
    "reference_statistics",
    "score_samples",
]

#: Zoo id of the network whose CLS features define the demo's Fréchet distance.
EVALUATOR_ID = "irepa-demo-evaluator"


@dataclasses.dataclass(frozen=True)
class SampleSettings:
    """How samples are drawn for one FD evaluation.

    Attributes:
        num_samples: Samples per evaluation (labels balanced over the classes).
        sampler: ``euler``, ``heun`` or ``sde`` (:data:`irepa.diffusion.samplers.SAMPLERS`).
        steps: Sampler steps.
        cfg_scale: Classifier-free guidance scale (1 = none, as the paper's main tables).
        seed: Seed of the noise and label plan (the same for every run and checkpoint, so runs are compared on the
            same noise).
        batch_size: Samples per forward batch (does not change the samples).
        quantize: uint8 quantization: ``truncate`` (default, as ADM and ``irepa sample``) or ``round`` (the
            published demo numbers were measured with ``round``).
    """

    num_samples: int
    sampler: str = "euler"
    steps: int = 16
    cfg_scale: float = 1.0
    seed: int = 0
    batch_size: int = 250
    quantize: str = "truncate"


def feature_space(device: str | torch.device = "cpu") -> Any:
    """The evaluator's feature space (CLS tokens of ``irepa-demo-evaluator`` at 32 px; checksum verified)."""
    from irepa.encoders import load_encoder
    from irepa.metrics.generative import EncoderSpace

    encoder = load_encoder(EVALUATOR_ID, resolution=32, offline=True, device=device)
    return EncoderSpace(encoder, pooling="cls")


def _features(space: Any, images: torch.Tensor, batch_size: int = 500) -> torch.Tensor:
    from irepa.metrics.generative import compute_features

    batches = (images[i : i + batch_size] for i in range(0, images.shape[0], batch_size))
    return compute_features(space, batches)


def reference_statistics(space: Any, images: torch.Tensor) -> Any:
    """Feature statistics (float64 mean and covariance) of uint8 reference images (N, 3, H, W)."""
    from irepa.metrics.generative import FeatureStatistics

    return FeatureStatistics.from_features(_features(space, images))


@torch.no_grad()
def generate_samples(
    snapshot: str | Path, settings: SampleSettings, num_classes: int, device: str | torch.device = "cpu"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Draw ``settings.num_samples`` images from an EMA inference snapshot.

    Returns:
        ``(images uint8 (N, 3, H, W), labels (N,))``; sample ``i`` has label ``labels[i]`` of the balanced plan.
    """
    from irepa.diffusion.generate import SamplingSettings, SnapshotSampler
    from irepa.diffusion.samplers import sample_labels

    sampler, _ = SnapshotSampler.load(snapshot, device=device)
    labels = sample_labels(settings.num_samples, num_classes, "balanced", settings.seed)
    sampling = SamplingSettings(
        sampler=settings.sampler,
        steps=settings.steps,
        cfg_scale=settings.cfg_scale,
        seed=settings.seed,
        quantize=settings.quantize,
    )
    out = []
    for start in range(0, settings.num_samples, settings.batch_size):
        indices = list(range(start, min(start + settings.batch_size, settings.num_samples)))
        out.append(sampler.generate(indices, labels[indices], sampling).images)
    return torch.cat(out), labels


def score_samples(space: Any, images: torch.Tensor, reference: Any) -> float:
    """Fréchet distance between the features of uint8 ``images`` and the ``reference`` statistics."""
    from irepa.metrics.generative import FeatureStatistics, frechet_distance

    return frechet_distance(FeatureStatistics.from_features(_features(space, images)), reference)


def evaluate_snapshot(
    snapshot: str | Path,
    settings: SampleSettings,
    space: Any,
    reference: Any,
    *,
    num_classes: int,
    device: str | torch.device = "cpu",
) -> tuple[dict[str, Any], torch.Tensor, torch.Tensor]:
    """Sample from ``snapshot`` and score the samples.

    Returns:
        ``(record, images, labels)``: the JSON record (FD, settings, seconds) and the samples.
    """
    start = time.perf_counter()
    images, labels = generate_samples(snapshot, settings, num_classes, device)
    sample_seconds = time.perf_counter() - start
    fd = score_samples(space, images, reference)
    record = {
        "fd": fd,
        "num_samples": settings.num_samples,
        "sampler": settings.sampler,
        "sampler_steps": settings.steps,
        "cfg_scale": settings.cfg_scale,
        "seed": settings.seed,
        "quantize": settings.quantize,
        "feature_space": getattr(space, "name", EVALUATOR_ID),
        "sample_seconds": round(sample_seconds, 2),
        "seconds": round(time.perf_counter() - start, 2),
    }
    return record, images, labels


def image_grid(images: torch.Tensor, labels: torch.Tensor, per_class: int, num_classes: int) -> np.ndarray:
    """A (num_classes × per_class) mosaic, one class per row, of uint8 images (N, 3, H, W) → (H', W', 3) uint8.

    Takes the first ``per_class`` images of each class (1 px gaps); missing cells stay black.
    """
    n, c, h, w = images.shape
    del n, c
    canvas = np.zeros((num_classes * (h + 1) - 1, per_class * (w + 1) - 1, 3), dtype=np.uint8)
    for cls in range(num_classes):
        picks = torch.nonzero(labels == cls).flatten()[:per_class].tolist()
        for col, i in enumerate(picks):
            canvas[cls * (h + 1) : cls * (h + 1) + h, col * (w + 1) : col * (w + 1) + w] = (
                images[i].permute(1, 2, 0).numpy()
            )
    return canvas
