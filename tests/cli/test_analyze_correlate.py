"""`irepa analyze correlate`: files irepa writes in, markdown/CSV/JSON/PNG out, numbers equal to scipy's."""

import csv
import json

import numpy as np
import pytest
from PIL import Image
from scipy import stats

from irepa.analysis.plots import DPI

NAMES = [f"enc-{i:02d}" for i in range(10)] + ["mocov3-vit-l", "mae-vit-l"]


@pytest.fixture
def inputs(tmp_path):
    rng = np.random.default_rng(5)
    lds = rng.uniform(0.1, 0.4, len(NAMES))
    fid = 40 - 60 * lds + rng.normal(0, 1.5, len(NAMES))
    lp = rng.uniform(0.5, 0.8, len(NAMES))
    sources = {n: {"means": {"lds": float(a), "cds": float(a / 10), "rmsc": None if i == 0 else 0.5}} for i, (n, a) in
               enumerate(zip(NAMES, lds))}  # fmt: skip
    (tmp_path / "spatial_metrics.json").write_text(json.dumps({"sources": sources}))
    with open(tmp_path / "fid.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["encoder", "gFID"])
        writer.writerows([n, float(v)] for n, v in zip(NAMES[:-1], fid[:-1]))
    (tmp_path / "last.eval.json").write_text(json.dumps({"metrics": {"fid": float(fid[-1])}}))
    with open(tmp_path / "lp.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["encoder", "top1"])
        writer.writerows([n, float(v)] for n, v in zip(NAMES, lp))
    return tmp_path, lds, fid, lp


def test_correlate_end_to_end(run_cli, inputs, tmp_path):
    root, lds, fid, lp = inputs
    res = run_cli(
        "analyze", "correlate", "--metrics", root / "spatial_metrics.json", "--fid", root / "fid.csv",
        f"mae-vit-l={root / 'last.eval.json'}", "--probe", root / "lp.csv", "--measures", "lp,lds,cds",
        "--resamples", "500", "--out", tmp_path / "out",
    )  # fmt: skip
    assert res.code == 0, res
    report = json.loads((tmp_path / "out" / "correlations.json").read_text())
    assert list(report["measures"]) == ["lp", "lds", "cds"]
    lds_entry = report["measures"]["lds"]
    assert lds_entry["n"] == 12
    assert lds_entry["pearson"]["r"] == pytest.approx(stats.pearsonr(lds, fid).statistic, abs=1e-12)
    assert lds_entry["spearman"]["p_value"] == pytest.approx(stats.spearmanr(lds, fid).pvalue, rel=1e-9)
    keep = [i for i, n in enumerate(NAMES) if n not in ("mocov3-vit-l", "mae-vit-l")]
    without = stats.pearsonr(lds[keep], fid[keep]).statistic
    assert lds_entry["excluded"] == ["mocov3-vit-l", "mae-vit-l"]
    assert lds_entry["pearson_without_excluded"]["r"] == pytest.approx(without, abs=1e-12)
    assert report["measures"]["lp"]["pearson"]["r"] == pytest.approx(stats.pearsonr(lp, fid).statistic, abs=1e-12)
    low, high = lds_entry["pearson"]["ci"]
    assert low <= lds_entry["pearson"]["r"] <= high
    rows = list(csv.DictReader((tmp_path / "out" / "correlations.csv").read_text().splitlines()))
    assert [r["measure"] for r in rows] == ["lp", "lds", "cds"]
    assert float(rows[1]["pearson_r"]) == pytest.approx(lds_entry["pearson"]["r"])
    markdown = (tmp_path / "out" / "correlations.md").read_text()
    assert f"{lds_entry['pearson']['r']:+.3f}" in markdown and "LDS" in markdown
    assert markdown.splitlines()[0] in res.out
    with Image.open(tmp_path / "out" / "correlations.png") as png:
        assert png.format == "PNG"
        assert png.size == (round(3 * 3.4 * DPI), round(3.2 * DPI))  # three panels in the paper's layout


def test_rmsc_missing_value_is_a_note_and_rows_are_left_out(run_cli, inputs):
    root, *_ = inputs
    res = run_cli("analyze", "correlate", "--metrics", root / "spatial_metrics.json", "--fid", root / "fid.csv",
                  "--measures", "rmsc", "--resamples", "50", "--exclude")  # fmt: skip
    assert res.code == 0, res
    assert "rmsc: left out enc-00, mae-vit-l" in res.out


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--fid", "fid.csv"], "nothing to correlate"),
        (["--metrics", "spatial_metrics.json", "--fid", "last.eval.json"], "ENCODER="),
        (["--metrics", "spatial_metrics.json", "--fid", "fid.csv", "--measures", "srss"], "no values for measure"),
        (["--metrics", "lp.csv", "--fid", "lp.csv"], "no FID column"),
        (["--metrics", "missing.csv", "--fid", "fid.csv"], "cannot read"),
    ],
)
def test_errors_are_one_line(run_cli, inputs, args, message, monkeypatch):
    root, *_ = inputs
    monkeypatch.chdir(root)
    res = run_cli("analyze", "correlate", *args)
    assert res.code == 2, res
    assert message in res.err and len(res.err.strip().splitlines()) == 1
