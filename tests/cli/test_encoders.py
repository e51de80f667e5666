import json

import pytest

from irepa.encoders import ENCODERS


def test_list_shows_every_encoder_with_its_columns(run_cli):
    res = run_cli("encoders", "list")
    assert res.code == 0, res
    header = res.out.splitlines()[0]
    for column in ("id", "family", "params (M)", "patch", "grid@256", "grid@512", "dim", "weights"):
        assert column in header
    for name in ENCODERS.list():
        assert name in res.out
    row = next(line for line in res.out.splitlines() if line.startswith("dinov2-vit-b "))
    assert "16x16" in row and "32x32" in row and "224/448" in row and "768" in row
    assert "hf:timm/vit_base_patch14_dinov2.lvd142m" in row
    assert "[gated]" in next(line for line in res.out.splitlines() if line.startswith("dinov3-vit-b16"))


def test_list_study_json_and_markdown(run_cli):
    res = run_cli("encoders", "list", "--study", "--format", "json")
    rows = json.loads(res.out)
    assert len(rows) == 27 and all(r["study"] for r in rows)
    res = run_cli("encoders", "list", "--family", "siglip 2", "--format", "markdown")
    assert res.code == 0 and res.out.startswith("| id | family |") and res.out.count("siglip2-vit-") == 4
    res = run_cli("encoders", "list", "--family", "nosuch")
    assert res.code == 2 and "unknown family" in res.err


def test_list_cached_column(run_cli, tmp_path):
    folder = tmp_path / "encoders" / "dino-vit-b"
    folder.mkdir(parents=True)
    (folder / "model.safetensors").write_bytes(b"x")
    res = run_cli("encoders", "list", "--cached", "--cache-dir", tmp_path, "--hf-cache-dir", tmp_path / "hf")
    assert res.code == 0
    cached = {line.split()[0]: line for line in res.out.splitlines()[1:] if line and not line[0].isdigit()}
    assert " yes " in cached["dino-vit-b"] and " no " in cached["dinov2-vit-b"] and " yes " in cached["hog"]


def test_info(run_cli, tmp_path):
    res = run_cli("encoders", "info", "siglip-vit-b", "--cache-dir", tmp_path)
    assert res.code == 0
    assert "native (default)" in res.out and "irepa:" in res.out and "looked_in" in res.out
    res = run_cli("encoders", "info", "mocov3-vit-b", "--json", "--cache-dir", tmp_path)
    info = json.loads(res.out)
    assert info["remap"] == "mocov3" and info["found"] is None and info["weights"].startswith("url:https://")
    res = run_cli("encoders", "info", "dinov2-vit-bb")
    assert res.code == 2 and "did you mean 'dinov2-vit-b'" in res.err


def test_download_errors(run_cli, tmp_path, monkeypatch):
    res = run_cli("encoders", "download", "--cache-dir", tmp_path)
    assert res.code == 2 and "name at least one encoder" in res.err
    res = run_cli("encoders", "download", "dino-vit-b", "--offline", "--cache-dir", tmp_path)
    assert res.code == 2 and "offline" in res.err
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    res = run_cli("encoders", "download", "hog", "--cache-dir", tmp_path)
    assert res.code == 0 and "nothing to download (weight-free)" in res.out


def test_download_from_an_official_url(run_cli, tmp_path, monkeypatch):
    import torch

    from irepa.encoders.spec import WeightSource

    served = tmp_path / "served" / "vit-s-300ep.pth.tar"
    served.parent.mkdir()
    torch.save({"state_dict": {}}, served)
    spec = ENCODERS.get("mocov3-vit-s")
    monkeypatch.setitem(
        ENCODERS._items,
        "mocov3-vit-s",
        type(spec)(**{**spec.__dict__, "weights": WeightSource(url=served.as_uri(), homepage="https://x.org")}),
    )
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    res = run_cli("encoders", "download", "mocov3-vit-s", "--cache-dir", tmp_path / "cache")
    assert res.code == 0, res
    assert (tmp_path / "cache" / "encoders" / "mocov3-vit-s" / "vit-s-300ep.pth.tar").is_file()
    assert "sha256" in res.out and "copy it to offline machines" in res.out


@pytest.mark.parametrize("kind", ["dns", "dropped"])
@pytest.mark.parametrize("encoder", ["dinov2-vit-b", "mocov3-vit-s"])  # a Hub repository, an official URL
def test_no_network_fails_fast_with_the_offline_fix(run_cli, tmp_path, no_network, kind, encoder):
    """`encoders download` and `features extract` without --offline: a one-line error in seconds, not after retries."""
    import time

    images = tmp_path / "images"
    images.mkdir()
    from PIL import Image

    Image.new("RGB", (32, 32)).save(images / "a.png")
    out = tmp_path / "f.safetensors"
    extract = ["features", "extract", "--encoder", encoder, "--images", images, "--out", out, "--resolution", "32"]
    commands = {"download": ["encoders", "download", encoder], "extract": [*extract, "--device", "cpu"]}
    for name, command in commands.items():
        waited = no_network(kind)
        start = time.perf_counter()
        res = run_cli(*command)
        seconds = time.perf_counter() - start + waited()
        assert res.code == 2, (name, res)
        assert seconds < 10, f"{name}: {seconds:.0f} s (of which {waited():.0f} s connect timeouts and retry sleeps)"
        assert len(res.err.strip().splitlines()) == 1, (name, res.err)
        assert "no network: cannot reach" in res.err and "--offline" in res.err, (name, res.err)
        assert f"irepa encoders download {encoder}" in res.err and "copy" in res.err, (name, res.err)
        assert not (tmp_path / "f.safetensors").exists()
