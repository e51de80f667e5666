"""HOG and pixel baselines against independent loop implementations written from their definitions."""

import math

import numpy as np
import pytest
import torch

from irepa.encoders import load_encoder
from irepa.encoders.classic import HOG, PixelPatches


def reference_hog(image: np.ndarray, cell=16, cells_per_side=2, bins=9, clip=0.2, eps=1e-6) -> np.ndarray:
    """Loop-based HOG per token (float64): strongest-channel gradient, linear orientation votes, L2-Hys per token."""
    _, h, w = image.shape
    img = image.astype(np.float64)
    mag = np.zeros((h, w))
    ang = np.zeros((h, w))
    for y in range(h):
        for x in range(w):
            best = -1.0
            for c in range(3):
                gx = img[c, y, x + 1] - img[c, y, x - 1] if 0 < x < w - 1 else 0.0
                gy = img[c, y + 1, x] - img[c, y - 1, x] if 0 < y < h - 1 else 0.0
                m = math.hypot(gx, gy)
                if m > best:
                    best, bgx, bgy = m, gx, gy
            mag[y, x] = best
            ang[y, x] = math.atan2(bgy, bgx) % math.pi
    size = cell // cells_per_side
    hist = np.zeros((h // size, w // size, bins))
    width = math.pi / bins
    for y in range(h):
        for x in range(w):
            pos = ang[y, x] / width - 0.5
            lo = math.floor(pos)
            frac = pos - lo
            hist[y // size, x // size, lo % bins] += mag[y, x] * (1 - frac)
            hist[y // size, x // size, (lo + 1) % bins] += mag[y, x] * frac
    tokens = []
    for ty in range(h // cell):
        for tx in range(w // cell):
            v = np.concatenate(
                [
                    hist[ty * cells_per_side + cy, tx * cells_per_side + cx]
                    for cy in range(cells_per_side)
                    for cx in range(cells_per_side)
                ]
            )
            v = v / math.sqrt((v**2).sum() + eps**2)
            v = np.minimum(v, clip)
            v = v / math.sqrt((v**2).sum() + eps**2)
            tokens.append(v)
    return np.stack(tokens)


def test_hog_matches_the_loop_reference():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(2, 3, 32, 48, generator=g)
    # A smooth ramp plus noise so that all orientations and both vote weights occur.
    x = (x * 0.3 + torch.linspace(0, 1, 48)[None, None, None, :] * torch.linspace(0, 1, 32)[None, None, :, None]).clamp(
        0, 1
    )
    ours = HOG()(x)
    assert ours.shape == (2, 2 * 3, 36)
    for b in range(2):
        np.testing.assert_allclose(ours[b].numpy(), reference_hog(x[b].numpy()), atol=1e-5)


def test_hog_properties():
    hog = HOG()
    flat = torch.full((1, 3, 32, 32), 0.5)
    assert torch.count_nonzero(hog(flat)) == 0  # no gradient, no votes
    # A vertical edge has a horizontal gradient: orientation 0 rad, votes split between bins 0 and 8.
    edge = torch.zeros(1, 3, 32, 32)
    edge[..., 16:] = 1.0
    tokens = hog(edge).reshape(1, 4, 4, 9)
    assert tokens[..., 1:8].abs().max() == 0
    assert tokens[..., 0].max() > 0 and torch.allclose(tokens[..., 0], tokens[..., 8])
    norms = hog(torch.rand(2, 3, 64, 64)).norm(dim=-1)
    assert torch.all(norms <= 1 + 1e-5)


def test_pixels_are_flattened_cells_in_minus_one_one():
    encoder = load_encoder("pixels", resolution=32)
    x = torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8)
    tokens = encoder.encode(x).patch_tokens
    assert tokens.shape == (2, 4, 768)
    for t, (ty, tx) in enumerate([(0, 0), (0, 1), (1, 0), (1, 1)]):
        cell = x[:, :, ty * 16 : (ty + 1) * 16, tx * 16 : (tx + 1) * 16].float() / 255 * 2 - 1
        torch.testing.assert_close(tokens[:, t], cell.reshape(2, -1))  # (channel, row, column) order
    assert PixelPatches().out_dim == 768


@pytest.mark.parametrize("name", ["hog", "pixels"])
def test_baselines_are_grid_matched(name):
    for resolution in (256, 512):
        encoder = load_encoder(name, resolution=resolution)
        x = torch.randint(0, 256, (1, 3, resolution, resolution), dtype=torch.uint8)
        features = encoder.encode(x)
        assert features.grid == (resolution // 16, resolution // 16)
        assert features.patch_tokens.shape[1] == (resolution // 16) ** 2
        assert features.cls_token is None
    assert encoder.weights_info["origin"].startswith("none")
