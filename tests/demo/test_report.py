"""Outcome statements, the study's ranking verdict and the Markdown rendering, on hand-made results."""

import math

import pytest

from irepa.demo.report import fmt_fd, outcome, study_outcome


def _results(fds: dict[str, list[float]], teachers: dict[str, str | None] | None = None) -> dict:
    steps = [100, 200, 300]
    teachers = teachers or {name: (None if name == "none" else "t") for name in fds}
    runs = {
        name: {
            "label": name.upper(),
            "teacher": teachers[name],
            "fd": [{"step": s, "fd": v} for s, v in zip(steps, values)],
            "final_fd": values[-1],
        }
        for name, values in fds.items()
    }
    return {
        "runs": runs,
        "settings": {"seed": 0, "steps": 300, "image_size": 32, "fd": {"num_samples": 1000}},
        "model_params": 1_280_000,
        "real_fd": 0.5,
    }


def test_outcome_names_the_best_run_per_checkpoint_and_the_margin():
    res = _results({"none": [9.0, 7.0, 6.0], "repa": [8.0, 6.5, 5.0], "irepa": [7.0, 6.0, 5.5]})
    out = outcome(res)
    assert [p["best"] for p in out["per_checkpoint"]] == ["irepa", "irepa", "repa"]
    last = out["per_checkpoint"][-1]
    assert last["runner_up"] == "irepa" and last["margin"] == pytest.approx(0.5)
    assert last["margin_pct"] == pytest.approx(100 * 0.5 / 5.5)
    assert out["wins"] == {"none": 0, "repa": 1, "irepa": 2}
    cmp = out["comparisons"]["irepa_vs_repa"]
    assert cmp["beats"] is False and cmp["checkpoints_won"] == 2 and cmp["delta"] == pytest.approx(0.5)
    text = " ".join(out["statement"])
    assert "iREPA does NOT beat REPA at this scale" in text
    assert f"final FD {fmt_fd(5.5)} vs {fmt_fd(5.0)}" in text
    assert "one seed" in text and "2 of 2 aligned runs end lower" in text


def test_outcome_when_irepa_wins():
    out = outcome(_results({"none": [9.0, 8.0, 7.0], "repa": [8.0, 7.0, 6.0], "irepa": [7.0, 6.0, 5.0]}))
    assert out["comparisons"]["irepa_vs_repa"]["beats"] is True
    assert "iREPA beats REPA at this scale" in " ".join(out["statement"])


def _study(probe, srss, fds):
    res = _results(
        {"none": [9, 9, 9.0], "repa-a": [1, 1, fds[0]], "repa-b": [1, 1, fds[1]], "repa-c": [1, 1, fds[2]]},
        {"none": None, "repa-a": "A", "repa-b": "B", "repa-c": "C"},
    )
    res["teachers"] = {
        t: {
            "card": {
                "metrics": {"probe": {"top1": p}, "spatial": {"means": {"lds": s, "cds": s, "srss": s, "rmsc": s}}}
            }
        }
        for t, p, s in zip("ABC", probe, srss)
    }
    return study_outcome(res)


def test_study_verdict_spatial_structure_predicts():
    out = _study(probe=[0.9, 0.8, 0.95], srss=[0.1, 0.3, 0.2], fds=[6.0, 4.0, 5.0])
    assert out["ranking_by_fd"] == ["B", "C", "A"]
    assert out["spearman_with_fd"]["srss"] == pytest.approx(-1.0)
    assert out["exact"] == {"probe_top1": False, "lds": True, "cds": True, "srss": True, "rmsc": True}
    assert "spatial structure predicted the ranking and accuracy did not" in " ".join(out["statement"])


def test_study_verdict_accuracy_predicts():
    out = _study(probe=[0.9, 0.95, 0.7], srss=[0.3, 0.1, 0.2], fds=[5.0, 4.0, 6.0])
    assert out["exact"]["probe_top1"] and not out["exact"]["srss"]
    assert "accuracy predicted the ranking and spatial structure did not" in " ".join(out["statement"])


def test_study_constant_metric_has_no_rank_correlation():
    out = _study(probe=[0.9, 0.9, 0.9], srss=[0.3, 0.1, 0.2], fds=[5.0, 4.0, 6.0])
    assert math.isnan(out["spearman_with_fd"]["probe_top1"])
    assert "neither" in " ".join(out["statement"])
