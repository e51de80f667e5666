import hashlib

import numpy as np
import pytest
import torch
from PIL import Image

from irepa.data.synthetic import SHAPES, class_names, generate, write_folder
from irepa.errors import IrepaError
from irepa.metrics.spatial import masks_to_patches, srss_mask_filter
from irepa.utils.images import class_label_map, list_images, load_image


def _digest(batch) -> str:
    h = hashlib.sha256()
    for t in (batch.images, batch.masks, batch.labels):
        h.update(t.numpy().tobytes())
    return h.hexdigest()


def test_shapes_dtypes_and_labels():
    b = generate(25, image_size=32, num_classes=10, seed=0)
    assert b.images.shape == (25, 3, 32, 32) and b.images.dtype == torch.uint8
    assert b.masks.shape == (25, 32, 32) and b.masks.dtype == torch.bool
    assert b.labels.dtype == torch.int64 and b.labels.tolist() == [i % 10 for i in range(25)]
    assert b.indices.tolist() == list(range(25)) and len(b) == 25
    assert generate(0).images.shape == (0, 3, 32, 32)


def test_determinism_and_seed_dependence():
    a = generate(12, image_size=24, seed=7)
    assert _digest(a) == _digest(generate(12, image_size=24, seed=7))
    other = generate(12, image_size=24, seed=8)
    assert not torch.equal(a.images, other.images)
    assert torch.equal(a.labels, other.labels)  # labels depend only on the index
    assert not torch.equal(a.masks, other.masks)


def test_chunks_equal_one_pass():
    whole = generate(20, image_size=32, seed=3)
    parts = [generate(7, image_size=32, seed=3, start=s) for s in (0, 7)] + [
        generate(6, image_size=32, seed=3, start=14)
    ]
    assert torch.equal(torch.cat([p.images for p in parts]), whole.images)
    assert torch.equal(torch.cat([p.masks for p in parts]), whole.masks)
    assert torch.equal(torch.cat([p.labels for p in parts]), whole.labels)
    assert torch.equal(generate(1, image_size=32, seed=3, start=13).images[0], whole.images[13])


@pytest.mark.parametrize("num_classes", [10, 12])
def test_class_balance(num_classes):
    b = generate(10 * num_classes + 3, image_size=16, num_classes=num_classes, seed=1)
    counts = torch.bincount(b.labels, minlength=num_classes)
    assert counts.max() - counts.min() <= 1


def test_mask_coverage_supports_the_srss_filter():
    # Measured on 1200 images: 32 px ~81 % and 64 px ~89 % pass the paper's 25 %/25 % patch filter on a 16x16 grid.
    b = generate(240, image_size=32, num_classes=12, seed=0)
    fraction = b.masks.float().mean((1, 2))
    assert fraction.min() > 0.08 and fraction.max() < 0.7
    assert 0.22 < fraction.mean() < 0.4
    patches = masks_to_patches(b.masks, (16, 16))
    keep = srss_mask_filter(patches)
    assert keep.float().mean() > 0.7
    for label in range(12):  # every class contributes to SRSS
        assert keep[b.labels == label].any()


def test_object_stands_out_from_the_background():
    b = generate(60, image_size=32, seed=2)
    luma = b.images.float().mean(1)  # (N, H, W)
    inside = (luma * b.masks).sum((1, 2)) / b.masks.sum((1, 2))
    outside = (luma * ~b.masks).sum((1, 2)) / (~b.masks).sum((1, 2))
    assert ((inside - outside).abs() > 40).float().mean() > 0.9  # brightness gap in 0-255 units


def test_every_class_has_a_distinct_mean_mask():
    # Shapes differ: the average centred masks of two classes are far apart.
    b = generate(12 * 20, image_size=32, num_classes=12, seed=0)
    means = torch.stack([b.masks[b.labels == c].float().mean(0) for c in range(12)])
    dist = torch.cdist(means.flatten(1), means.flatten(1))
    assert dist[~torch.eye(12, dtype=torch.bool)].min() > 0.5


def test_class_names_and_errors():
    assert class_names(3) == ["circle", "square", "triangle"]
    assert len(SHAPES) == 12 and class_names(12) == list(SHAPES)
    with pytest.raises(IrepaError, match="between 1 and 12"):
        generate(2, num_classes=13)
    with pytest.raises(IrepaError, match="image_size must be an integer >= 16"):
        generate(2, image_size=8)
    with pytest.raises(IrepaError, match="seed"):
        generate(2, seed=-1)
    with pytest.raises(IrepaError, match="num_images"):
        generate(-1)


def test_write_folder_round_trip(tmp_path):
    keys = write_folder(tmp_path, 14, image_size=16, num_classes=5, seed=4, start=2)
    b = generate(14, image_size=16, num_classes=5, seed=4, start=2)
    assert keys[0] == "02_triangle/000002" and len(keys) == 14
    images = list_images(tmp_path / "images")
    masks = list_images(tmp_path / "masks")
    image_keys = [p.relative_to(tmp_path / "images").with_suffix("").as_posix() for p in images]
    mask_keys = [p.relative_to(tmp_path / "masks").with_suffix("").as_posix() for p in masks]
    assert image_keys == mask_keys == sorted(keys)
    labels = class_label_map(image_keys)
    for key, image, mask, label in zip(keys, b.images, b.masks, b.labels):
        assert labels[key.split("/")[0]] == label
        pixels = load_image(tmp_path / "images" / f"{key}.png")
        assert np.array_equal(pixels, image.permute(1, 2, 0).numpy())
        with Image.open(tmp_path / "masks" / f"{key}.png") as im:
            assert np.array_equal(np.asarray(im) > 0, mask.numpy())
