import numpy as np
import pytest
import torch

from irepa.errors import IrepaError
from irepa.utils.io import atomic_write, load_tensor_file, read_safetensors_metadata, save_safetensors


def test_atomic_write_keeps_old_file_on_failure(tmp_path):
    target = tmp_path / "f.txt"
    target.write_text("old")
    with pytest.raises(RuntimeError), atomic_write(target, "w") as f:
        f.write("new")
        raise RuntimeError("disk full")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["f.txt"]  # no temporary file left behind


def test_atomic_write_uses_normal_permissions(tmp_path):
    import os
    import stat

    umask = os.umask(0o022)
    try:
        with atomic_write(tmp_path / "x.bin") as f:
            f.write(b"1")
    finally:
        os.umask(umask)
    assert stat.S_IMODE((tmp_path / "x.bin").stat().st_mode) == 0o644


def test_tensor_file_formats(tmp_path):
    x = torch.randn(2, 4, 3)
    save_safetensors({"a": x}, tmp_path / "f.safetensors", {"encoder": "demo"})
    torch.save({"a": x}, tmp_path / "f.pt")
    np.save(tmp_path / "f.npy", x.numpy())
    np.savez(tmp_path / "f.npz", a=x.numpy())
    assert torch.equal(load_tensor_file(tmp_path / "f.safetensors")["a"], x)
    assert read_safetensors_metadata(tmp_path / "f.safetensors") == {"encoder": "demo"}
    assert torch.equal(load_tensor_file(tmp_path / "f.pt")["a"], x)
    assert torch.equal(load_tensor_file(tmp_path / "f.npy"), x)
    assert torch.equal(load_tensor_file(tmp_path / "f.npz")["a"], x)


class Evil:  # a module-level class, pickled by torch.save
    pass


def test_tensor_file_errors(tmp_path):
    with pytest.raises(IrepaError, match="does not exist"):
        load_tensor_file(tmp_path / "missing.pt")
    (tmp_path / "empty.pt").write_bytes(b"")
    with pytest.raises(IrepaError, match="is empty"):
        load_tensor_file(tmp_path / "empty.pt")
    (tmp_path / "junk.safetensors").write_bytes(b"\x00\x01junk")
    with pytest.raises(IrepaError, match="cannot read features file"):
        load_tensor_file(tmp_path / "junk.safetensors")
    (tmp_path / "x.txt").write_text("1")
    with pytest.raises(IrepaError, match="unsupported extension"):
        load_tensor_file(tmp_path / "x.txt")

    torch.save({"obj": Evil()}, tmp_path / "evil.pt")  # needs unpickling of a class: refused by weights_only
    with pytest.raises(IrepaError, match="cannot read features file"):
        load_tensor_file(tmp_path / "evil.pt")


def test_save_safetensors_is_byte_deterministic(tmp_path):
    # safetensors orders metadata by a randomized hash map (6 orders of 3 keys show up within 30 calls in one
    # process); irepa's files must hash the same for the same content (the demo assets' checksums rely on it).
    tensors = {"b.weight": torch.arange(6, dtype=torch.float16).view(2, 3), "a": torch.ones(5)}
    blobs = set()
    for i in range(30):
        keys = ["format", "encoder", "z"][i % 3 :] + ["format", "encoder", "z"][: i % 3]
        save_safetensors(tensors, tmp_path / "t.safetensors", metadata={k: k.upper() for k in keys})
        blobs.add((tmp_path / "t.safetensors").read_bytes())
    assert len(blobs) == 1
    blob = blobs.pop()
    size = int.from_bytes(blob[:8], "little")
    assert size % 8 == 0 and blob[8:].startswith(b'{"__metadata__":{"encoder":"ENCODER","format":"FORMAT","z":"Z"}')
    loaded = load_tensor_file(tmp_path / "t.safetensors")
    assert set(loaded) == set(tensors) and all(torch.equal(loaded[k], tensors[k]) for k in tensors)
    assert read_safetensors_metadata(tmp_path / "t.safetensors") == {"format": "FORMAT", "encoder": "ENCODER", "z": "Z"}


def test_describe_load_error_names_the_refused_global_instead_of_torchs_advice(tmp_path):
    import argparse
    import os

    from irepa.utils.io import describe_load_error, refused_global

    class Payload:
        def __reduce__(self):
            return (os.system, ("echo this must never run",))

    torch.save({"w": torch.zeros(1), "p": Payload()}, tmp_path / "blocked.pt")  # torch: "unsupported GLOBAL ..."
    torch.save({"w": torch.zeros(1), "a": argparse.Namespace(x=1)}, tmp_path / "class.pt")  # "Unsupported global: ..."
    for name, expected in (("blocked.pt", "posix.system"), ("class.pt", "argparse.Namespace")):
        with pytest.raises(Exception) as info:
            torch.load(tmp_path / name, weights_only=True)
        assert refused_global(info.value) == expected
        text = describe_load_error(info.value)
        assert expected in text and "weights_only" not in text and "\n" not in text
    assert describe_load_error(ValueError("first\nsecond")) == "first"
    with pytest.raises(IrepaError, match=r"it pickles the Python object 'posix\.system'"):
        load_tensor_file(tmp_path / "blocked.pt")
