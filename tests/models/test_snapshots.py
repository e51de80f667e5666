import json
import re

import pytest
import torch
from safetensors.torch import save_file

from irepa.errors import IrepaError
from irepa.models import build_model
from irepa.models.io import (
    SNAPSHOT_FORMAT,
    load_inference,
    read_inference_metadata,
    save_inference,
    state_dict_mismatch,
)
from irepa.utils.io import read_safetensors_metadata

KWARGS = dict(input_size=8, hidden_size=32, depth=2, num_heads=2, num_classes=10)
SPACE = {
    "kind": "latent",
    "vae": "stabilityai/sd-vae-ft-mse",
    "normalization": {"kind": "sd-scalar", "scale": 0.18215, "bias": 0.0},
    "channels": 4,
    "size": [8, 8],
    "image_size": [64, 64],
}
META = {"diffusion": {"path": "linear"}, "space": SPACE, "step": 400, "ema": True, "config": {"optim": {"lr": 1e-4}}}


def random_model(**overrides):
    model = build_model("SiT-S/2", **{**KWARGS, **overrides})
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g))
    return model


def test_snapshot_round_trip_is_bit_exact(tmp_path):
    model = random_model()
    path = tmp_path / "ema.safetensors"
    save_inference(path, model, model_name="SiT-S/2", model_kwargs=model.config, metadata=META)
    loaded, meta = load_inference(path)
    assert not loaded.training
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
    x, t, y = torch.randn(2, 4, 8, 8), torch.rand(2), torch.tensor([1, 10])
    assert torch.equal(loaded(x, t, y).out, model(x, t, y).out)
    assert meta["format"] == SNAPSHOT_FORMAT
    assert meta["model"] == {"name": "SiT-S/2", "kwargs": model.config}
    assert meta["space"] == SPACE and meta["diffusion"] == {"path": "linear"}
    assert meta["step"] == 400 and meta["ema"] is True and meta["config"] == {"optim": {"lr": 1e-4}}
    header = read_safetensors_metadata(path)  # plain strings in the safetensors header
    assert header["format"] == SNAPSHOT_FORMAT and json.loads(header["step"]) == 400
    assert "lr: 0.0001" in header["config"]


def test_snapshot_dtype_option_and_device(tmp_path):
    model = random_model()
    path = tmp_path / "bf16.safetensors"
    save_inference(path, model, model_name="SiT-S/2", model_kwargs=model.config, metadata=META, dtype=torch.bfloat16)
    loaded, _ = load_inference(path, device="cpu", dtype=torch.float32)
    assert loaded.blocks[0].attn.qkv.weight.dtype == torch.float32
    torch.testing.assert_close(loaded.blocks[0].attn.qkv.weight, model.blocks[0].attn.qkv.weight.bfloat16().float())


def test_snapshot_from_another_architecture_names_mismatched_keys(tmp_path):
    model = random_model(depth=3)
    path = tmp_path / "mislabeled.safetensors"
    save_inference(path, model, model_name="SiT-S/2", model_kwargs=model.config, metadata=META)
    # Rewrite the header so that it claims depth 2 and width 32 while the weights are depth 3.
    header = read_safetensors_metadata(path)
    header["model"] = json.dumps({"name": "SiT-S/2", "kwargs": {**model.config, "depth": 2}})
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path), metadata=header)
    with pytest.raises(IrepaError, match=r"unexpected keys blocks\.2\.adaLN_modulation"):
        load_inference(path)
    header["model"] = json.dumps({"name": "SiT-S/2", "kwargs": {**model.config, "hidden_size": 64}})
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path), metadata=header)
    with pytest.raises(
        IrepaError, match=r"shape mismatches \(found vs expected\) .*\(32, 4, 2, 2\) vs \(64, 4, 2, 2\)"
    ):
        load_inference(path)


def test_truncated_corrupt_and_foreign_files_are_clear_errors(tmp_path):
    model = random_model()
    good = tmp_path / "good.safetensors"
    save_inference(good, model, model_name="SiT-S/2", model_kwargs=model.config, metadata=META)
    data = good.read_bytes()
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(IrepaError, match="truncated"):
        load_inference(truncated)
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"\x00" * 100)
    with pytest.raises(IrepaError, match="cannot read inference snapshot"):
        load_inference(garbage)
    plain = tmp_path / "plain.safetensors"
    save_file({"w": torch.ones(2)}, str(plain))
    with pytest.raises(IrepaError, match="not an irepa inference snapshot"):
        load_inference(plain)
    with pytest.raises(IrepaError, match="does not exist"):
        read_inference_metadata(tmp_path / "missing.safetensors")


@pytest.mark.parametrize(
    ("metadata", "message"),
    [
        ({**META, "epoch": 3}, "unknown snapshot metadata key"),
        ({**META, "diffusion": {}}, "'diffusion' must be a mapping with a 'path'"),
        ({**META, "space": {"kind": "video"}}, "kind 'latent' or 'pixel'"),
        ({**META, "space": {"kind": "latent", "vae": "x"}}, "needs space.vae"),
        ({**META, "space": {**SPACE, "channels": 3}}, "the model takes 4 channels"),
        ({**META, "space": {**SPACE, "size": [16, 16]}}, "inputs of size"),
        ({**META, "step": -1}, "non-negative int"),
        ({**META, "extra": {"f": object()}}, "JSON-serializable"),
    ],
)
def test_save_rejects_bad_metadata(tmp_path, metadata, message):
    model = random_model()
    path = tmp_path / "x.safetensors"
    with pytest.raises(IrepaError, match=message):
        save_inference(path, model, model_name="SiT-S/2", model_kwargs=model.config, metadata=metadata)
    assert not path.exists()


def test_save_rejects_kwargs_that_do_not_rebuild_the_model(tmp_path):
    model = random_model()
    with pytest.raises(IrepaError, match="does not rebuild this model"):
        save_inference(tmp_path / "x.safetensors", model, model_name="SiT-S/2", model_kwargs={}, metadata=META)


def test_pixel_space_snapshot_needs_no_vae(tmp_path):
    model = random_model(in_channels=3)
    space = {"kind": "pixel", "channels": 3, "size": [8, 8], "image_size": [8, 8]}
    path = tmp_path / "pixel.safetensors"
    save_inference(path, model, model_name="SiT-S/2", model_kwargs=model.config, metadata={**META, "space": space})
    assert load_inference(path)[1]["space"]["kind"] == "pixel"


def test_state_dict_mismatch_lists_missing_unexpected_and_shapes():
    expected = {"a": (2,), "b": (3,), "c": (4,)}
    found = {"a": torch.zeros(2), "c": torch.zeros(5), "d": torch.zeros(1)}
    text = state_dict_mismatch(expected, found)
    assert text == "missing keys b; unexpected keys d; shape mismatches (found vs expected) c (5,) vs (4,)"
    assert state_dict_mismatch({"a": (2,)}, {"a": torch.zeros(2)}) is None


@pytest.mark.parametrize(
    ("entry", "value", "message"),
    [
        ("space", {"kind": "voxels"}, "'space' must be a mapping with kind 'latent' or 'pixel'"),
        ("space", "latent", "'space' must be a mapping with kind 'latent' or 'pixel'"),
        ("space", {"kind": "latent"}, "a latent-space snapshot needs space.vae"),
        ("diffusion", {"path": 3}, "'diffusion' must be a mapping with a 'path' name"),
    ],
)
def test_hand_edited_header_sections_are_one_line_errors(tmp_path, entry, value, message):
    """A header `space` sampling cannot use used to surface as an AttributeError deep inside `irepa sample`."""
    model = random_model()
    path = tmp_path / "edited.safetensors"
    save_inference(path, model, model_name="SiT-S/2", model_kwargs=model.config, metadata=META)
    header = read_safetensors_metadata(path)
    header[entry] = json.dumps(value)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path), metadata=header)
    named = r"inference snapshot '.*edited\.safetensors': (snapshot metadata|a latent-space)"
    with pytest.raises(IrepaError, match=named):
        read_inference_metadata(path)
    with pytest.raises(IrepaError, match=re.escape(message)):
        load_inference(path)
