"""ADM .npz I/O: streaming round trips and the checks on bad sample files."""

from __future__ import annotations

import numpy as np
import pytest

from irepa.errors import IrepaError
from irepa.metrics.generative.npz import NpzArrayReader, check_image_array, npz_keys, read_npz_array, write_npz


def test_round_trip_streamed_and_numpy_compatible(tmp_path, random_images):
    images = random_images(37, size=8)
    labels = np.arange(37, dtype=np.int64) % 5
    big = tmp_path / "images.npy"
    np.save(big, images)
    out = tmp_path / "samples.npz"
    write_npz(out, {"arr_0": big, "labels": labels})
    with np.load(out) as z:  # what ADM's evaluator and numpy users do
        np.testing.assert_array_equal(z["arr_0"], images)
        np.testing.assert_array_equal(z["labels"], labels)
    assert npz_keys(out) == ["arr_0", "labels"]
    with NpzArrayReader(out) as reader:
        assert reader.shape == images.shape and reader.dtype == np.uint8
        batches = list(reader.iter_batches(10))
        assert [len(b) for b in batches] == [10, 10, 10, 7]
        np.testing.assert_array_equal(np.concatenate(batches), images)
        assert batches[0].flags.writeable
        np.testing.assert_array_equal(np.concatenate(list(reader.iter_batches(4, limit=9))), images[:9])
    np.testing.assert_array_equal(read_npz_array(out, "labels"), labels)


def test_reads_compressed_npz(tmp_path, random_images):
    images = random_images(5, size=8)
    path = tmp_path / "c.npz"
    np.savez_compressed(path, images)
    with NpzArrayReader(path) as reader:
        np.testing.assert_array_equal(reader.read(), images)


def test_missing_key_lists_keys(tmp_path, random_images):
    path = tmp_path / "s.npz"
    np.savez(path, images=random_images(2))
    with pytest.raises(IrepaError, match=r"no array 'arr_0' \(keys: images\)"):
        NpzArrayReader(path)


def test_truncated_and_not_a_zip(tmp_path, random_images):
    short = tmp_path / "short.npy"
    np.save(short, random_images(20, size=16))
    data = short.read_bytes()
    short.write_bytes(data[: len(data) - 5 * 16 * 16 * 3])  # header says 20 rows, 15 are there
    write_npz(tmp_path / "trunc.npz", {"arr_0": short})
    with NpzArrayReader(tmp_path / "trunc.npz") as reader, pytest.raises(IrepaError, match="truncated"):
        reader.read()
    (tmp_path / "bad.npz").write_bytes(b"not a zip")
    with pytest.raises(IrepaError, match="not a readable"):
        NpzArrayReader(tmp_path / "bad.npz")
    with pytest.raises(IrepaError, match="does not exist"):
        NpzArrayReader(tmp_path / "missing.npz")


def test_object_arrays_refused(tmp_path):
    path = tmp_path / "o.npz"
    np.savez(path, np.array([{"a": 1}], dtype=object))
    with pytest.raises(IrepaError, match="Python objects"):
        NpzArrayReader(path)


@pytest.mark.parametrize(
    ("shape", "dtype", "match"),
    [
        ((4, 3, 16, 16), np.uint8, "NCHW"),
        ((4, 16, 16), np.uint8, "NHWC"),
        ((4, 16, 16, 4), np.uint8, "3 \\(RGB\\)"),
        ((4, 16, 16, 3), np.float32, "uint8"),
    ],
)
def test_check_image_array(shape, dtype, match):
    with pytest.raises(IrepaError, match=match):
        check_image_array(shape, np.dtype(dtype), "samples.npz arr_0")


def test_check_image_array_ok():
    assert check_image_array((4, 32, 24, 3), np.dtype(np.uint8), "x") == (32, 24)
