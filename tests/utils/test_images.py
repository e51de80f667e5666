import numpy as np
import pytest
from PIL import Image

from irepa.errors import IrepaError
from irepa.utils.images import (
    NonRGBImageError,
    ReadStats,
    center_crop_adm,
    class_label_map,
    iter_image_batches,
    list_images,
    load_image,
)


def _save(path, arr, mode=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr, mode=mode).save(path)


def test_center_crop_adm_reference():
    rng = np.random.default_rng(0)
    img = Image.fromarray(rng.integers(0, 255, (300, 700, 3), dtype=np.uint8))
    out = center_crop_adm(img, 64)
    assert out.size == (64, 64)
    # Independent re-derivation of ADM's crop: BOX halving while short side >= 2*size, then bicubic, centre crop.
    ref = img
    while min(ref.size) >= 128:
        ref = ref.resize((ref.size[0] // 2, ref.size[1] // 2), Image.BOX)
    scale = 64 / min(ref.size)
    ref = ref.resize((round(ref.size[0] * scale), round(ref.size[1] * scale)), Image.BICUBIC)
    arr = np.asarray(ref)
    top, left = (arr.shape[0] - 64) // 2, (arr.shape[1] - 64) // 2
    np.testing.assert_array_equal(np.asarray(out), arr[top : top + 64, left : left + 64])


def test_modes_policy(tmp_path):
    rgb = np.zeros((8, 8, 3), np.uint8)
    _save(tmp_path / "rgb.png", rgb)
    _save(tmp_path / "gray.png", np.zeros((8, 8), np.uint8), mode="L")
    _save(tmp_path / "rgba.png", np.zeros((8, 8, 4), np.uint8), mode="RGBA")
    Image.fromarray(np.zeros((8, 8), np.uint16)).save(tmp_path / "deep.png")
    stats = ReadStats()
    assert load_image(tmp_path / "gray.png", stats=stats).shape == (8, 8, 3)
    assert load_image(tmp_path / "rgba.png", stats=stats).shape == (8, 8, 3)
    assert stats.converted == 2
    with pytest.raises(IrepaError, match="not RGB"):
        load_image(tmp_path / "gray.png", strict_mode=True)
    with pytest.raises(IrepaError, match="16-bit or float"):
        load_image(tmp_path / "deep.png")
    with pytest.raises(IrepaError, match="expected 16x16"):
        load_image(tmp_path / "rgb.png", size=16, crop="none")
    assert load_image(tmp_path / "rgb.png", size=16, crop="resize").shape == (16, 16, 3)


def test_batches_keys_skip_and_fail(tmp_path):
    for cls in ("cat", "dog"):
        for i in range(3):
            _save(tmp_path / cls / f"{i}.png", np.full((8, 8, 3), i, np.uint8))
    (tmp_path / "dog" / "broken.png").write_bytes(b"not a png")
    files = list_images(tmp_path)
    stats = ReadStats()
    batches = list(iter_image_batches(files, 4, root=tmp_path, stats=stats))
    keys = [k for _, ks in batches for k in ks]
    assert keys == ["cat/0", "cat/1", "cat/2", "dog/0", "dog/1", "dog/2"]
    assert batches[0][0].shape == (4, 3, 8, 8) and batches[0][0].dtype.is_floating_point is False
    assert stats.skipped == 1 and "broken" in stats.skipped_files[0]
    assert "1 unreadable skipped" in stats.summary()
    with pytest.raises(IrepaError, match="cannot read image"):
        list(iter_image_batches(files, 4, root=tmp_path, on_error="fail"))
    assert class_label_map(keys) == {"cat": 0, "dog": 1}


def test_strict_mode_refusals_are_counted_apart_from_unreadable_files(tmp_path):
    _save(tmp_path / "rgb.png", np.zeros((8, 8, 3), np.uint8))
    _save(tmp_path / "gray.png", np.zeros((8, 8), np.uint8), mode="L")
    _save(tmp_path / "rgba.png", np.zeros((8, 8, 4), np.uint8), mode="RGBA")
    (tmp_path / "broken.png").write_bytes(b"not a png")
    files = list_images(tmp_path)
    stats = ReadStats()
    keys = [k for _, ks in iter_image_batches(files, 4, root=tmp_path, strict_mode=True, stats=stats) for k in ks]
    assert keys == ["rgb"]
    assert stats.skipped == 1 and stats.skipped_files == [str(tmp_path / "broken.png")]
    assert stats.refused_non_rgb == 2 and sorted(stats.refused_files) == [
        str(tmp_path / f) for f in ("gray.png", "rgba.png")
    ]
    assert stats.summary() == "1 images read, 1 unreadable skipped, 2 non-RGB refused (strict mode)"
    # on_error="fail" stops at the first refusal, with the refusal's own message.
    with pytest.raises(NonRGBImageError, match="is L, not RGB"):
        list(iter_image_batches(files[1:], 4, root=tmp_path, strict_mode=True, on_error="fail"))  # broken.png first
    # Without strict mode nothing is refused: both are converted.
    stats = ReadStats()
    list(iter_image_batches(files, 4, root=tmp_path, stats=stats))
    assert stats.refused_non_rgb == 0 and stats.converted == 2 and stats.skipped == 1


def test_empty_and_missing_folder(tmp_path):
    with pytest.raises(IrepaError, match="does not exist"):
        list_images(tmp_path / "nope")
    with pytest.raises(IrepaError, match="holds no images"):
        list_images(tmp_path)
