"""The paper's numbers as data, and `irepa analyze paper` statistics checked by hand (numbers from paper-notes §5)."""

import json
import statistics

import pytest

from irepa.analysis.paper import fisher_interval, load_paper_numbers, paper_checks, summarize_column

# Table 5 (paper-notes §5.9), SiT-B/2 at 400K: FID of REPA and +iREPA per encoder, typed in by hand.
TABLE5_FID = {
    "CLIP-ViT-L": (24.84, 21.26), "DINOv2-B": (22.75, 21.40), "DINOv2-L": (22.46, 20.99),
    "DINOv3-B16": (23.91, 19.65), "DINOv3-H16+": (24.82, 21.80), "DINO-B": (24.71, 24.41),
    "LangPE-G": (25.37, 21.62), "MoCov3-B": (25.60, 22.80), "PE-B": (25.78, 21.15), "PE-G": (26.84, 21.52),
    "SpatialPE-B": (24.28, 22.71), "SpatialPE-L": (23.87, 21.07), "WebSSL-300M": (23.64, 21.46),
    "WebSSL-1B": (23.48, 19.74), "WebSSL-2B": (22.27, 20.47), "WebSSL-3B": (22.55, 20.64),
}  # fmt: skip
TABLE5_IS = {"DINO-B": (58.37, 57.55), "CLIP-ViT-L": (59.44, 69.70)}


def test_every_value_carries_its_provenance():
    data = load_paper_numbers()
    table = data["paired"]["table5"]
    assert len(table.rows) == 16
    cell = table.rows["PE-G"][1][1]  # +iREPA FID
    assert cell.value == 21.52 and cell.source == "Table 5" and cell.page is None and cell.notes == "paper-notes §5.9"
    for key, paired in data["paired"].items():
        for base, treated in paired.rows.values():
            for value in (*base, *treated):
                assert value is None or value.source.startswith("Table"), key


def test_table5_fid_count_and_mean_change_by_hand():
    changes = [after - before for before, after in TABLE5_FID.values()]
    lower = sum(after < before for before, after in TABLE5_FID.values())
    summary = summarize_column(load_paper_numbers()["paired"]["table5"], "FID")
    assert len(summary.better) == lower == 16 and summary.worse == []
    assert summary.mean_change == pytest.approx(sum(changes) / 16, abs=1e-12)
    assert summary.median_change == pytest.approx(statistics.median(changes), abs=1e-12)
    assert summary.mean_change == pytest.approx(-2.78, abs=5e-3)
    is_summary = summarize_column(load_paper_numbers()["paired"]["table5"], "IS")
    assert is_summary.worse == ["DINO-B"] and len(is_summary.better) == 15  # IS 58.37 -> 57.55
    sfid = summarize_column(load_paper_numbers()["paired"]["table5"], "sFID")
    assert "DINOv3-B16" in sfid.better and sfid.n == 16  # 6.77 -> 6.68, one of the few sFID improvements


def test_claims_checked_by_hand():
    checks = {c.claim: c for c in paper_checks()}
    pe_l = checks["relative FID gain of iREPA, PE-L (SiT-XL/2, 100K)"]
    assert round(100 * (28.7 - 17.6) / 28.7, 2) == 38.68  # the paper prints 38.8 %
    assert "38.68 %" in pe_l.recomputed and pe_l.verdict == "differs"
    assert checks["relative FID gain of iREPA, PE-B (SiT-XL/2, 100K)"].verdict == "agrees"  # 5/22.5 = 22.2 %
    headline = checks["the four spatial metrics reach |r| between 0.847 and 0.888"]
    assert headline.verdict == "agrees"
    intro = checks["Pearson |r| > 0.852 (introduction)"]
    assert intro.verdict == "differs" and "CDS 0.847" in intro.recomputed  # 0.847 < 0.852
    ratio = checks["spatial structure is a '3× better predictor' than linear probing"]
    assert f"{0.847 / 0.260:.2f}" in ratio.recomputed
    duplicated = checks["Table 3b: the iREPA no-CFG cells of different encoders differ"]
    assert duplicated.verdict == "differs" and "DINOv3-B / DINOv2-B" in duplicated.recomputed
    pe_g = checks["PE-Core-G + iREPA, SiT-XL/2, 100K, no CFG: FID"]
    assert pe_g.verdict == "differs" and "spread 1.4" in pe_g.recomputed  # 19.5 vs 18.1
    assert checks["Table 7 repeats Table 4's 400K CFG rows with more decimals"].verdict == "agrees"
    verdicts = {c.verdict for c in paper_checks()}
    assert verdicts == {"agrees", "differs", "computed", "not checkable"}


def test_published_correlation_intervals():
    low, high = fisher_interval(-0.260, 27)
    assert low < 0 < high  # linear probing's r is not distinguishable from zero at n = 27
    assert fisher_interval(-0.847, 27)[1] < low  # ... and its interval lies above every spatial metric's
    checks = {c.claim: c for c in paper_checks()}
    lp = checks["SiT-XL/2, 100K, gFID: r(gFID, LP)"]
    assert "p = 0.19" in lp.recomputed  # t = 0.26 sqrt(25 / (1 - 0.0676)) = 1.346, two-sided p(25 df) = 0.19


def test_cli_prints_checks_and_writes_them(run_cli, tmp_path):
    res = run_cli("analyze", "paper", "--section", "Table 5", "--out", tmp_path)
    assert res.code == 0, res
    assert "16/16 rows lower with iREPA" in res.out and "(not: DINO-B)" in res.out
    saved = json.loads((tmp_path / "paper_checks.json").read_text())["checks"]
    assert saved and all("Table 5" in c["section"] for c in saved)
    assert "| claim | paper | recomputed | verdict | source |" in (tmp_path / "paper_checks.md").read_text()
    assert run_cli("analyze", "paper", "--section", "Table 99").code == 2
