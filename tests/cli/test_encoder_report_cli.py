"""`irepa encoders report` and `irepa analyze cls-mixing` on the synthetic images with a small random encoder."""

import csv
import json

import pytest
from PIL import Image

from irepa.analysis.plots import DPI
from irepa.data.synthetic import write_folder


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    root = tmp_path_factory.mktemp("synthetic")
    write_folder(root, 12, image_size=128, num_classes=3, seed=0)
    return root


ENCODER = ["--random-init", "--resolution", "128", "--device", "cpu", "--probe-epochs", "3"]


def test_report_card(run_cli, synthetic, tmp_path):
    out = tmp_path / "card"
    res = run_cli(
        "encoders",
        "report",
        "mocov3-vit-s",
        "--images",
        synthetic / "images",
        "--masks",
        synthetic / "masks",
        "--labels",
        "--gammas",
        "0",
        "0.5",
        "0.6",
        "0.8",
        "1",
        "--out",
        out,
        *ENCODER,
    )
    assert res.code == 0, res
    card = json.loads((out / "report.json").read_text())
    assert card["encoder"] == "mocov3-vit-s" and card["gammas"] == [0.0, 0.5, 0.6, 0.8, 1.0]
    assert set(card["metrics"]) == {"raw", "γ=0", "γ=0.5", "γ=0.6", "γ=0.8", "γ=1"}
    assert set(card["metrics"]["raw"]) == {"lds", "cds", "srss", "rmsc"}
    assert card["probe"]["num_classes"] == 3 and 0 <= card["probe"]["top1"] <= 1
    low, high = card["position"]["interval"]
    assert low < high  # an interval, never a single FID
    assert 0.6 <= card["gamma_recommendation"]["gamma"] <= 0.8
    assert len(card["correlogram"]["raw"]) == 8 + 8 - 1 and card["correlogram"]["raw"][0] == pytest.approx(1.0)
    for name, size in {
        "gamma_sweep.png": (3.2 * 4, 3.2),
        "correlogram.png": (6.4, 4.2),
        "position.png": (6.0, 4.2),
        "similarity.png": (2.3 * 4, 2.3 * 4 + 0.5),
        "pca.png": (2.3 * 3, 2.3 * 4 + 0.4),
    }.items():
        with Image.open(out / name) as png:
            assert png.format == "PNG"
            assert abs(png.size[0] - size[0] * DPI) <= 1 and abs(png.size[1] - size[1] * DPI) <= 1, name
        assert f"({name})" in (out / "report.md").read_text() or name == "position.png"
    report = (out / "report.md").read_text()
    assert f"{low:.1f} to {high:.1f} gFID" in report and "not a prediction" in report
    assert f"**γ = {card['gamma_recommendation']['gamma']:g}**" in report
    row = next(csv.DictReader((out / "metrics.csv").read_text().splitlines()))
    assert float(row["lds"]) == pytest.approx(card["metrics"]["raw"]["lds"]) and "lp" in row
    assert "recommended γ" in res.out and "prediction interval" in res.out


def test_report_card_errors(run_cli, synthetic, tmp_path):
    res = run_cli(
        "encoders",
        "report",
        "mocov3-vit-s",
        "--images",
        synthetic / "images",
        "--gammas",
        "0.5",
        "--out",
        tmp_path / "o",
        *ENCODER,
    )
    assert res.code == 2 and "include 0" in res.err
    res = run_cli(
        "encoders",
        "report",
        "mocov3-vit-s",
        "--images",
        synthetic / "images",
        "--masks",
        tmp_path / "nowhere",
        "--out",
        tmp_path / "o",
        *ENCODER,
    )
    assert res.code == 2 and "--masks" in res.err


def test_cls_mixing_sweep(run_cli, synthetic, tmp_path):
    res = run_cli(
        "analyze",
        "cls-mixing",
        "--encoder",
        "mocov3-vit-s",
        "--images",
        synthetic / "images",
        "--masks",
        synthetic / "masks",
        "--labels",
        "--alphas",
        "0",
        "0.5",
        "--out",
        tmp_path,
        *ENCODER,
    )
    assert res.code == 0, res
    sweep = json.loads((tmp_path / "cls_mixing.json").read_text())
    rows = {(r["mode"], r["alpha"]): r for r in sweep["rows"]}
    assert set(rows) == {("additive", 0.0), ("additive", 0.5), ("convex", 0.0), ("convex", 0.5)}
    assert rows[("additive", 0.0)]["lds"] == pytest.approx(rows[("convex", 0.0)]["lds"])  # α = 0: no mixing
    assert rows[("additive", 0.5)]["lds"] != pytest.approx(rows[("convex", 0.5)]["lds"])  # the formulas differ
    assert all(0 <= r["lp"] <= 1 for r in rows.values())
    assert sweep["formulas"]["additive"].startswith("p_i + alpha")
    with Image.open(tmp_path / "cls_mixing.png") as png:
        assert png.format == "PNG" and abs(png.size[0] - 5 * 3.2 * DPI) <= 1  # probe + four metrics
    assert "| additive | 0.5 |" in res.out
    res = run_cli("analyze", "cls-mixing", "--encoder", "hog", "--images", synthetic / "images", "--resolution", "128")
    assert res.code == 2 and "no CLS token" in res.err
