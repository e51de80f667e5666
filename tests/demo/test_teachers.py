"""The demo's encoders: shipped assets load through the zoo with verified checksums; the training command works.

The reproduction command is exercised at reduced size (a few steps on a few images) for every objective; at full
size it is what produced the shipped assets (docs/demo.md gives the command and its time).
"""

import dataclasses
import json
import shutil
from pathlib import Path

import pytest
import torch

from irepa.demo.teachers import (
    ATTRIBUTES,
    RECIPES,
    TEACHER_KINDS,
    TeacherRecipe,
    image_attributes,
    load_trained,
    patch_labels,
)
from irepa.encoders import ENCODERS, load_encoder
from irepa.encoders.packaged import CARD_FORMAT, read_packaged_card, register_packaged_card
from irepa.errors import IrepaError
from irepa.utils.io import sha256_file

ASSETS = Path(__file__).resolve().parents[2] / "src" / "irepa" / "assets"


@pytest.mark.parametrize("kind", TEACHER_KINDS)
def test_shipped_asset_is_a_zoo_entry_with_a_verified_checksum(kind):
    recipe = RECIPES[kind]
    card = read_packaged_card(ASSETS / f"{recipe.asset}.json")
    weights = ASSETS / f"{recipe.asset}.safetensors"
    assert card["format"] == CARD_FORMAT and card["encoder"]["id"] == recipe.encoder_id
    assert sha256_file(weights) == card["encoder"]["sha256"] == card["demo"]["file"]["sha256"]
    assert weights.stat().st_size == card["demo"]["file"]["bytes"] < 3_000_000  # "a few MB at most"
    spec = ENCODERS.get(recipe.encoder_id)
    assert spec.backend == "packaged" and spec.weights.sha256 == card["encoder"]["sha256"]
    encoder = load_encoder(recipe.encoder_id, resolution=32, offline=True)
    assert encoder.weights_info["origin"] == "package" and encoder.weights_info["sha256"] == spec.weights.sha256
    assert encoder.grid == (8, 8) and encoder.embed_dim == recipe.embed_dim
    feats = encoder.encode(torch.zeros(2, 3, 32, 32, dtype=torch.uint8))
    assert feats.patch_tokens.shape == (2, 64, recipe.embed_dim) and feats.cls_token.shape == (2, recipe.embed_dim)
    # The shipped asset was made with exactly the current default recipe.
    assert card["demo"]["recipe"] == dataclasses.asdict(recipe)
    assert card["demo"]["command"] == f"irepa demo teacher --kind {kind}"
    assert set(card["demo"]["metrics"]["spatial"]["means"]) == {"lds", "cds", "srss", "rmsc"}
    assert 0.0 < card["demo"]["metrics"]["probe"]["top1"] <= 1.0


def test_a_tampered_shipped_asset_is_refused_at_load(tmp_path):
    recipe = RECIPES["default"]
    weights = tmp_path / f"{recipe.asset}.safetensors"
    shutil.copy(ASSETS / weights.name, weights)
    blob = bytearray(weights.read_bytes())
    blob[-1] ^= 0xFF  # one flipped bit in the last weight
    weights.write_bytes(bytes(blob))
    register_packaged_card(ASSETS / f"{recipe.asset}.json", id="test-tampered-demo-vit", asset=weights)
    with pytest.raises(IrepaError, match="checksum mismatch"):
        load_encoder("test-tampered-demo-vit", resolution=32)
    # The same file under its shipped name through an explicit weights path is refused too.
    with pytest.raises(IrepaError, match="checksum mismatch"):
        load_encoder(recipe.encoder_id, resolution=32, weights=weights)


def test_card_errors_are_one_line(tmp_path):
    bad = tmp_path / "card.json"
    bad.write_text(json.dumps({"format": "something-else"}))
    with pytest.raises(IrepaError, match="not a packaged-encoder card"):
        read_packaged_card(bad)
    bad.write_text("{")
    with pytest.raises(IrepaError, match="not valid JSON"):
        read_packaged_card(bad)
    bad.write_text(json.dumps({"format": CARD_FORMAT, "encoder": {"id": "x"}}))
    with pytest.raises(IrepaError, match="no valid 'encoder' section"):
        read_packaged_card(bad)


def test_patch_labels_against_a_loop_reference():
    g = torch.Generator().manual_seed(0)
    masks = torch.rand(3, 8, 8, generator=g) > 0.5
    labels = torch.tensor([0, 4, 9])
    out = patch_labels(masks, labels, 4)
    assert out.shape == (3, 4)
    for b in range(3):
        for i in range(2):
            for j in range(2):
                fraction = masks[b, 4 * i : 4 * i + 4, 4 * j : 4 * j + 4].float().mean()
                expected = int(labels[b]) + 1 if fraction > 0.5 else 0
                assert out[b, 2 * i + j] == expected


def test_image_attributes_against_a_loop_reference():
    images = torch.zeros(1, 3, 4, 4, dtype=torch.uint8)
    masks = torch.zeros(1, 4, 4, dtype=torch.bool)
    masks[0, 0:2, 2:4] = True  # top-right quarter
    images[0, 0][masks[0]] = 255  # red object
    images[0, 2][~masks[0]] = 51  # background blue 0.2
    attrs = image_attributes(images, masks)[0]
    values = dict(zip(ATTRIBUTES, attrs.tolist()))
    xs = torch.linspace(-1, 1, 4)
    assert values["area"] == pytest.approx(0.25)
    assert values["center_x"] == pytest.approx(float(xs[2:].mean()))
    assert values["center_y"] == pytest.approx(float(xs[:2].mean()))
    assert (values["fg_r"], values["fg_g"], values["fg_b"]) == pytest.approx((1.0, 0.0, 0.0))
    assert (values["bg_r"], values["bg_g"], values["bg_b"]) == pytest.approx((0.0, 0.0, 0.2))


def test_recipe_validation():
    with pytest.raises(IrepaError, match="unknown teacher objective"):
        TeacherRecipe(kind="x", encoder_id="x", asset="x", objective="magic", role="")
    with pytest.raises(IrepaError, match="steps must be >= 1"):
        TeacherRecipe(kind="x", encoder_id="x", asset="x", objective="class", role="", steps=0)


def test_teacher_command_at_reduced_size_is_deterministic_and_loads(run_cli, tmp_path):
    args = ["demo", "teacher", "--kind", "all", "--steps", "3", "--train-images", "48", "--eval-images", "60"]
    res = run_cli(*args, "--out", tmp_path / "a", "--no-progress")
    assert res.code == 0, res
    for kind in TEACHER_KINDS:
        recipe = RECIPES[kind]
        card = json.loads((tmp_path / "a" / f"{recipe.asset}.json").read_text())
        weights = tmp_path / "a" / f"{recipe.asset}.safetensors"
        assert card["encoder"]["sha256"] == sha256_file(weights)
        assert card["demo"]["recipe"]["steps"] == 3 and card["demo"]["recipe"]["train_images"] == 48
        assert card["demo"]["metrics"]["images"] == {"seed": 1000, "count": 60, "probe_train": 40, "metrics": 20}
        assert recipe.encoder_id in res.out and card["encoder"]["sha256"] in res.out
        encoder = load_trained(card, weights)
        assert encoder.grid == (8, 8)
    # Same command, same bytes.
    res = run_cli("demo", "teacher", "--kind", "dense", *args[4:], "--out", tmp_path / "b", "--no-progress")
    assert res.code == 0, res
    name = f"{RECIPES['dense'].asset}.safetensors"
    assert sha256_file(tmp_path / "a" / name) == sha256_file(tmp_path / "b" / name)
