"""The one measurement path: encoders on images (tensor or folder) → spatial metrics (+ variants, probe)."""

import math

import pytest
import torch

from irepa.align import spatial_norm
from irepa.analysis.measure import ImageFolder, ProbeOptions, SpatialOptions, measure_encoders, measure_tokens
from irepa.data.synthetic import generate, write_folder
from irepa.encoders import load_encoder
from irepa.errors import IrepaError
from irepa.metrics import spatial
from irepa.metrics.probe import ProbeProtocol


@pytest.fixture(scope="module")
def data():
    return generate(24, image_size=128, num_classes=3, seed=0)


@pytest.fixture(scope="module")
def encoder():
    return load_encoder("pixels", resolution=128)


def test_tensor_images_equal_the_metrics_of_the_encoded_tokens(data, encoder):
    report = measure_encoders(
        {"pixels": encoder},
        data.images,
        masks=data.masks,
        variants={"g0.6": lambda t, _cls: spatial_norm(t, gamma=0.6)},
        batch_size=5,
        keep_tokens=True,
    )
    tokens = encoder.encode(data.images).patch_tokens
    assert torch.equal(report.tokens["pixels"], tokens)
    patch = spatial.masks_to_patches(data.masks, encoder.grid)
    keep = spatial.srss_mask_filter(patch)
    expected = spatial.compute(tokens, masks=patch & keep[:, None])
    assert report.raw.metrics == ["lds", "cds", "srss", "rmsc"]
    assert report.raw.means("pixels") == pytest.approx(expected.means, rel=1e-5)
    assert report.raw.srss_kept["pixels"] == int(keep.sum())
    normed = spatial.compute(spatial_norm(tokens, gamma=0.6), masks=patch & keep[:, None])
    assert report.spatial["g0.6"].means("pixels") == pytest.approx(normed.means, rel=1e-5)
    assert report.inputs["num_images"] == 24 and report.keys[0] == "00"


def test_metric_subset_and_explicit_probe_split(data, encoder):
    protocol = ProbeProtocol(epochs=3, learning_rates=(1e-2,), weight_decays=(0.0,))
    report = measure_encoders(
        {"pixels": encoder},
        data.images,
        masks=data.masks,
        labels=data.labels,
        probe=ProbeOptions(protocol=protocol, train=tuple(range(16)), val=tuple(range(16, 24))),
        metric_indices=range(16, 24),
    )
    assert report.raw.results["pixels"].num_images == 8
    probe = report.probes["raw"]["pixels"]
    assert probe.num_train == 16 and probe.num_val == 8 and 0 <= probe.top1 <= 1
    assert report.to_json()["probes"]["raw"]["pixels"]["num_val"] == 8


def test_folder_equals_tensor(tmp_path, encoder):
    keys = write_folder(tmp_path, 6, image_size=128, num_classes=2, seed=3)
    folder = ImageFolder(tmp_path / "images", tmp_path / "masks", resolution=128, labels=True)
    by_folder = measure_encoders({"pixels": encoder}, folder, keep_tokens=True)
    order = sorted(range(len(keys)), key=lambda i: keys[i])  # folders are read in sorted key order
    batch = generate(6, image_size=128, num_classes=2, seed=3)
    by_tensor = measure_encoders({"pixels": encoder}, batch.images[order], masks=batch.masks[order])
    assert by_folder.keys == sorted(keys)
    assert by_folder.raw.means("pixels") == pytest.approx(by_tensor.raw.means("pixels"), rel=1e-5)
    assert by_folder.labels.tolist() == batch.labels[order].tolist()
    assert by_folder.inputs["classes"] == sorted({k.split("/")[0] for k in keys})


def test_errors(data, encoder):
    with pytest.raises(IrepaError, match="no encoder"):
        measure_encoders({}, data.images)
    with pytest.raises(IrepaError, match="masks hold 3 entries"):
        measure_encoders({"p": encoder}, data.images, masks=data.masks[:3])
    with pytest.raises(IrepaError, match="needs class labels"):
        measure_encoders({"p": encoder}, data.images, probe=ProbeOptions())
    with pytest.raises(IrepaError, match="'raw' is the name"):
        measure_encoders({"p": encoder}, data.images, variants={"raw": lambda t, c: t})
    with pytest.raises(IrepaError, match="metric list is empty"):
        SpatialOptions(metrics=())
    with pytest.raises(IrepaError, match="no token sources"):
        measure_tokens({})


def test_correlogram_matches_a_loop_reference():
    tokens = torch.randn(2, 12, 5, dtype=torch.float64)
    values, counts = spatial.correlogram(tokens, grid=(3, 4))
    assert values.shape == (2, 6)
    pairs = [0] * 6
    for i in range(12):
        for j in range(12):
            pairs[abs(i // 4 - j // 4) + abs(i % 4 - j % 4)] += 1
    assert counts.tolist() == pairs  # ordered pairs per distance
    unit = tokens / tokens.norm(dim=-1, keepdim=True)
    for b in range(2):
        sums = [0.0] * 6
        for i in range(12):
            for j in range(12):
                d = abs(i // 4 - j // 4) + abs(i % 4 - j % 4)
                sums[d] += float(unit[b, i] @ unit[b, j])
        for d in range(6):
            assert values[b, d].item() == pytest.approx(sums[d] / counts[d].item(), abs=1e-12)
    # CDS is minus the least-squares slope of this curve over 1..dmax.
    cds = spatial.cds(tokens, grid=(3, 4), dmax=4)
    deltas = torch.arange(1, 5, dtype=torch.float64)
    slope = ((deltas - deltas.mean()) * values[:, 1:5]).sum(1) / (deltas - deltas.mean()).square().sum()
    assert torch.allclose(cds, -slope)
    assert not math.isnan(values[0, 0].item())
