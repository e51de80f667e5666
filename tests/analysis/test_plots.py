"""Every analysis figure is a valid PNG of the size its figure size and DPI give."""

import numpy as np
import pytest
import torch
from PIL import Image

from irepa.analysis import plots
from irepa.data.synthetic import generate
from irepa.errors import IrepaError


def assert_png(path, width_in, height_in):
    with Image.open(path) as png:
        png.verify()
    with Image.open(path) as png:
        assert png.format == "PNG"
        w, h = png.size
    assert abs(w - width_in * plots.DPI) <= 1 and abs(h - height_in * plots.DPI) <= 1, (w, h)


@pytest.fixture(scope="module")
def example():
    data = generate(2, image_size=32, num_classes=2, seed=0)
    tokens = torch.randn(2, 64, 6)
    return data, tokens


def test_similarity_and_pca_figures(tmp_path, example):
    data, tokens = example
    anchors = torch.tensor([27, 36])
    maps = plots.similarity_maps(tokens, anchors)
    assert torch.allclose(maps[torch.arange(2), anchors], torch.ones(2))  # every anchor is itself at cosine 1
    plots.similarity_figure(
        tmp_path / "s.png",
        images=data.images,
        masks=data.masks,
        anchors=anchors,
        raw=maps,
        normalized=maps,
        grid=(8, 8),
        title="t",
        gamma=0.6,
    )
    assert_png(tmp_path / "s.png", 2.3 * 4, 2.3 * 2 + 0.5)
    plots.similarity_figure(
        tmp_path / "s3.png",
        images=data.images,
        masks=None,
        anchors=anchors,
        raw=maps,
        normalized=maps,
        grid=(8, 8),
        title="t",
        gamma=0.6,
    )
    assert_png(tmp_path / "s3.png", 2.3 * 3, 2.3 * 2 + 0.5)
    rgb = plots.pca_rgb(tokens, (8, 8))
    assert rgb.shape == (2, 8, 8, 3) and rgb.min() >= 0 and rgb.max() <= 1
    plots.pca_figure(tmp_path / "p.png", images=data.images, maps={"raw": rgb}, title="t")
    assert_png(tmp_path / "p.png", 2.3 * 2, 2.3 * 2 + 0.4)


def test_pca_rgb_is_the_principal_subspace():
    # Tokens that vary along three known orthogonal directions (variances 9, 4, 1) plus nothing else.
    g = torch.Generator().manual_seed(0)
    raw = torch.randn(200, 3, generator=g, dtype=torch.float64)
    columns = torch.linalg.qr(raw - raw.mean(0)).Q  # centred, orthogonal: the sample covariance is exactly diagonal
    coeffs = (columns * torch.tensor([3.0, 2.0, 1.0], dtype=torch.float64))[None]
    basis = torch.linalg.qr(torch.randn(5, 3, generator=g, dtype=torch.float64)).Q.T  # (3, 5) orthonormal rows
    rgb = plots.pca_rgb(coeffs @ basis, (10, 20)).reshape(200, 3).double()
    for k in range(3):  # each colour channel is an affine function of one coefficient (up to sign)
        corr = np.corrcoef(rgb[:, k].numpy(), coeffs[0, :, k].numpy())[0, 1]
        assert abs(corr) == pytest.approx(1.0, abs=1e-6)


def test_curve_figures(tmp_path):
    plots.correlogram_figure(
        tmp_path / "c.png",
        {"raw": ([1, 2, 3], [0.5, 0.4, 0.3])},
        title="t",
        dmax=2,
        bands={"raw": ([0.4, 0.3, 0.2], [0.6, 0.5, 0.4])},
    )
    assert_png(tmp_path / "c.png", 6.4, 4.2)
    plots.sweep_figure(
        tmp_path / "w.png",
        [0, 0.5, 1],
        {"lds": [0.1, 0.2, 0.3], "cds": [1, 2, 3]},
        x_label="γ",
        title="t",
        mark=0.5,
        mark_label="m",
        reference={"lds": 0.15},
    )
    assert_png(tmp_path / "w.png", 3.2 * 2, 3.2)
    panels = [
        {
            "x": [1, 2, 3],
            "y": [3, 2, 1],
            "labels": ["a", "b", "c"],
            "measure": "LDS",
            "r": -1.0,
            "ci": (-1.0, -1.0),
            "rho": -1.0,
            "highlight": ["c"],
        }
    ]
    plots.correlation_figure(tmp_path / "r.png", panels * 4, y_label="gFID")
    assert_png(tmp_path / "r.png", 3.4 * 4, 3.2)
    with pytest.raises(IrepaError, match="nothing to plot"):
        plots.correlation_figure(tmp_path / "x.png", [], y_label="gFID")
