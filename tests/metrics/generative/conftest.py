"""Fixtures for the generative-metric tests: a random FID-Inception weights file and a tiny stand-in detector."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from irepa.metrics.generative.inception import InceptionFeatures, random_inception_state_dict


@pytest.fixture(scope="session")
def inception_weights(tmp_path_factory):
    """A random state dict in the official layout saved as a .pth file (as torch-fidelity's weights file is)."""
    path = tmp_path_factory.mktemp("inception") / "weights-inception-2015-12-05-6726825d.pth"
    torch.save(random_inception_state_dict(seed=0), path)
    return path


class TinyDetector:
    """A fast stand-in for the Inception: pool = 4×4 average-pooled pixels (48-d), spatial = 2×2 (12-d), 10 logits."""

    def __init__(self, seed: int = 0):
        gen = torch.Generator().manual_seed(seed)
        self.weight = torch.randn(10, 48, generator=gen)
        self.calls = 0

    def __call__(self, images: torch.Tensor) -> InceptionFeatures:
        assert images.dtype == torch.uint8
        self.calls += 1
        x = images.float() / 255.0
        pool = torch.nn.functional.adaptive_avg_pool2d(x, 4).flatten(1)
        spatial = torch.nn.functional.adaptive_avg_pool2d(x, 2).flatten(1)
        return InceptionFeatures(pool=pool, spatial=spatial, logits=pool @ self.weight.T)


@pytest.fixture
def tiny_detector():
    return TinyDetector()


def _random_images(n: int, size: int = 16, seed: int = 0, offset: int = 0) -> np.ndarray:
    """uint8 NHWC images with some structure (a per-image colour plus noise)."""
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 200, size=(n, 1, 1, 3))
    noise = rng.integers(0, 56, size=(n, size, size, 3))
    return np.clip(base + noise + offset, 0, 255).astype(np.uint8)


@pytest.fixture
def random_images():
    """Factory ``random_images(n, size=16, seed=0, offset=0)`` of uint8 NHWC images."""
    return _random_images
