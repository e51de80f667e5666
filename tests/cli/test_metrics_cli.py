import csv
import json
import math

import numpy as np
import pytest
import torch

from irepa.data.synthetic import generate
from irepa.metrics import spatial as sp
from irepa.utils.io import save_safetensors


def smooth(batch, grid, dim=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    rows, cols = torch.meshgrid(torch.arange(grid[0]), torch.arange(grid[1]), indexing="ij")
    pos = torch.stack([rows.flatten(), cols.flatten()], -1).float()
    field = torch.sin(pos @ (torch.rand(batch, 2, dim, generator=g) * 0.5) + torch.rand(batch, 1, dim, generator=g) * 6)
    return field + 0.1 * torch.randn(batch, grid[0] * grid[1], dim, generator=g)


@pytest.fixture
def features(tmp_path):
    path = tmp_path / "feats.safetensors"
    save_safetensors(
        {"dino": smooth(6, (8, 8)), "noise": torch.randn(6, 64, 5), "labels": torch.arange(6)},
        path,
    )
    return path


def test_help(run_cli):
    res = run_cli("metrics", "spatial", "--help")
    assert res.code == 0
    assert "--prefix-tokens" in res.out and "SRSS" in res.out
    assert run_cli("metrics", "--help").code == 0
    assert run_cli("metrics").code == 2  # a subcommand is required


def test_table_for_a_dict_file_without_writing(run_cli, features, tmp_path):
    res = run_cli("metrics", "spatial", features)
    assert res.code == 0, res
    lines = res.out.strip().splitlines()
    assert lines[0] == "note: feats.safetensors: skipped 'labels' (torch.int64, shape (6,))"
    header = lines[1].split()
    assert header == ["source", "images", "grid", "lds", "cds", "rmsc"]
    rows = {line.split()[0]: line.split() for line in lines[2:]}
    assert set(rows) == {"dino", "noise"}
    assert rows["dino"][1:3] == ["6", "8x8"]
    expected = sp.compute(smooth(6, (8, 8)))
    assert float(rows["dino"][3]) == pytest.approx(expected.means["lds"], abs=1e-4)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["feats.safetensors"]


def test_out_files_match_the_library(run_cli, tmp_path):
    tokens = smooth(5, (4, 6), dim=7)
    with_cls = torch.cat([torch.randn(5, 1, 7), tokens], 1)
    torch.save(with_cls, tmp_path / "a.pt")
    np.save(tmp_path / "b.npy", with_cls.numpy())
    out = tmp_path / "report"
    res = run_cli(
        "metrics", "spatial", tmp_path / "a.pt", tmp_path / "b.npy", "--grid", "4x6", "--prefix-tokens", "1",
        "--metrics", "lds,lds_paper,cds,rmsc", "--far", "4", "--dmax", "5", "--out", out,
    )  # fmt: skip
    assert res.code == 0, res
    assert "wrote" in res.out
    payload = json.loads((out / "spatial_metrics.json").read_text())
    ref = sp.compute(tokens, metrics=("lds", "lds_paper", "cds", "rmsc"), grid=(4, 6), far=4, dmax=5)
    assert payload["metrics"] == ["lds", "lds_paper", "cds", "rmsc"]
    assert payload["settings"] == {"near": 1, "far": 4, "dmax": 5, "prefix_tokens": 1}
    assert payload["inputs"]["files"] == [str(tmp_path / "a.pt"), str(tmp_path / "b.npy")]
    for name in ("a", "b"):
        source = payload["sources"][name]
        assert source["grid"] == [4, 6] and source["num_images"] == 5
        for metric in ref.means:
            assert source["means"][metric] == pytest.approx(ref.means[metric], abs=1e-6)
            assert source["per_image"][metric] == pytest.approx(ref.values[metric].tolist(), abs=1e-6)
    with open(out / "spatial_metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 10 and rows[0]["source"] == "a" and rows[5]["source"] == "b"
    assert float(rows[3]["cds"]) == pytest.approx(ref.values["cds"][3].item(), abs=1e-6)


def test_srss_with_pixel_masks_and_the_paper_filter(run_cli, tmp_path):
    batch = generate(16, image_size=32, num_classes=4, seed=0)
    # Tokens that "see" the object: foreground tokens share one direction, background tokens another, plus noise.
    patches = sp.masks_to_patches(batch.masks, (8, 8))
    g = torch.Generator().manual_seed(0)
    tokens = torch.where(patches[..., None], torch.ones(8), -torch.ones(8)) + 0.5 * torch.randn(16, 64, 8, generator=g)
    save_safetensors({"tokens": tokens}, tmp_path / "t.safetensors")
    save_safetensors({"masks": batch.masks}, tmp_path / "m.safetensors")
    out = tmp_path / "out"
    res = run_cli("metrics", "spatial", tmp_path / "t.safetensors", "--masks", tmp_path / "m.safetensors",
                  "--far", "3", "--out", out)  # fmt: skip
    assert res.code == 0, res
    keep = sp.srss_mask_filter(patches)
    assert f"SRSS mask filter kept tokens: {int(keep.sum())}/16 images" in res.out
    payload = json.loads((out / "spatial_metrics.json").read_text())["sources"]["tokens"]
    expected = sp.srss(tokens, patches & keep[:, None], far=3)
    assert payload["counts"]["srss"] == int(torch.isfinite(expected).sum()) <= int(keep.sum())
    assert payload["means"]["srss"] == pytest.approx(expected.nanmean().item(), abs=1e-6)
    assert payload["means"]["srss"] > 0.5  # the object is visible in these tokens
    unfiltered = run_cli("metrics", "spatial", tmp_path / "t.safetensors", "--masks", tmp_path / "m.safetensors",
                         "--far", "3", "--no-mask-filter", "--metrics", "srss")  # fmt: skip
    assert unfiltered.code == 0
    mean = float(unfiltered.out.splitlines()[1].split()[3])
    assert mean == pytest.approx(sp.srss(tokens, patches, far=3).nanmean().item(), abs=1e-4)


@pytest.mark.parametrize(
    ("make", "extra", "message"),
    [
        (lambda p: torch.save(torch.full((2, 36, 4), math.nan), p / "x.pt"), [], "contain NaN or Inf"),
        (lambda p: torch.save(torch.randn(2, 36), p / "x.pt"), [], "expected float tokens (B, T, D)"),
        (lambda p: torch.save(torch.randn(2, 35, 4), p / "x.pt"), [], "not a square grid"),
        (lambda p: torch.save(torch.randn(2, 36, 4), p / "x.pt"), ["--grid", "5x5"], "has 25 cells but"),
        (lambda p: torch.save(torch.randn(2, 36, 4), p / "x.pt"), ["--grid", "4by4"], "not of the form HxW"),
        (lambda p: torch.save(torch.randn(2, 36, 4), p / "x.pt"), ["--metrics", "lds,ldss"], "did you mean 'lds'"),
        (lambda p: torch.save(torch.randn(2, 36, 4), p / "x.pt"), ["--metrics", "srss"], "needs a foreground mask"),
        (lambda p: torch.save(torch.randn(2, 36, 4), p / "x.pt"), ["--far", "11"], "no token pairs at distance"),
        (lambda p: (p / "x.pt").write_bytes(b""), [], "is empty"),
        (lambda p: (p / "x.pt").write_bytes(b"not a tensor file"), [], "cannot read features file"),
        (lambda p: torch.save(torch.randn(2, 36, 4), p / "x.pt"), ["--masks", "MASKS3"], "masks hold 3 images"),
        (lambda p: torch.save(torch.randn(2, 36, 4), p / "x.pt"), ["--masks", "MASKSBAD"], "boolean or 0/1"),
        (lambda p: torch.save(torch.randn(2, 36, 4), p / "x.pt"), ["--prefix-tokens", "-1"], "prefix-tokens"),
    ],
)
def test_bad_input_exits_2_with_one_line_and_writes_nothing(run_cli, tmp_path, make, extra, message):
    make(tmp_path)
    torch.save(torch.zeros(3, 36, dtype=torch.bool), tmp_path / "m3.pt")
    torch.save(torch.full((2, 36), 0.5), tmp_path / "mbad.pt")
    extra = [{"MASKS3": tmp_path / "m3.pt", "MASKSBAD": tmp_path / "mbad.pt"}.get(a, a) for a in extra]
    out = tmp_path / "out"
    res = run_cli("metrics", "spatial", tmp_path / "x.pt", *extra, "--out", out)
    assert res.code == 2, res
    assert message in res.err
    assert len(res.err.strip().splitlines()) == 1
    assert not out.exists()


def test_missing_file(run_cli, tmp_path):
    res = run_cli("metrics", "spatial", tmp_path / "nope.safetensors")
    assert res.code == 2 and "does not exist" in res.err


def test_real_process(run_cli_subprocess, tmp_path):
    torch.save({"enc": smooth(3, (6, 6))}, tmp_path / "f.pt")
    res = run_cli_subprocess("metrics", "spatial", tmp_path / "f.pt", "--out", tmp_path / "o")
    assert res.code == 0, res
    assert res.out.splitlines()[0].split() == ["source", "images", "grid", "lds", "cds", "rmsc"]
    assert (tmp_path / "o" / "spatial_metrics.csv").exists()


def test_a_folder_given_as_token_file_says_so(run_cli, tmp_path):
    (tmp_path / "images" / "c").mkdir(parents=True)
    res = run_cli("metrics", "spatial", tmp_path / "images")
    assert res.code == 2 and "is a folder, not a token file" in res.err and "--images DIR" in res.err, res
    assert "does not exist" not in res.err


def test_grid_too_small_for_the_default_distances_names_the_flag(run_cli, tmp_path):
    """HOG at 64 px gives a 4x4 grid (largest distance 6): CDS's default dmax 8 cannot fit; say what to set."""
    from PIL import Image

    (tmp_path / "images" / "c").mkdir(parents=True)
    for i in range(2):
        pixels = np.random.default_rng(i).integers(0, 256, (64, 64, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(tmp_path / "images" / "c" / f"{i}.png")
    res = run_cli("metrics", "spatial", "--encoder", "hog", "--resolution", "64", "--images", tmp_path / "images")
    assert res.code == 2 and "set dmax (--dmax) to at most 6" in res.err, res
    res = run_cli("metrics", "spatial", "--encoder", "hog", "--resolution", "64", "--images", tmp_path / "images",
                  "--dmax", "6")  # fmt: skip
    assert res.code == 0, res
