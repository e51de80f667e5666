import dataclasses

import pytest

from irepa.demo.settings import DemoSettings, full_settings, quick_settings, settings_for, study_settings
from irepa.errors import IrepaError


def test_presets_compare_the_same_recipe_with_and_without_alignment():
    full = full_settings()
    assert [r.name for r in full.runs] == ["none", "repa", "irepa"]
    none, repa, irepa = full.runs
    assert not none.aligned and repa.teacher == irepa.teacher == "irepa-demo-vit"
    assert (repa.projector, repa.target_norm) == ("mlp", "none")
    assert (irepa.projector, irepa.target_norm) == ("conv", "spatial")
    assert full.eval_steps == [500, 1000, 1500]
    study = study_settings()
    assert [r.teacher for r in study.runs] == [None, "irepa-demo-vit", "irepa-demo-vit-global", "irepa-demo-vit-dense"]
    assert {r.projector for r in study.runs} == {"mlp"}
    assert quick_settings().steps < 20


def test_steps_override_keeps_the_number_of_evaluations():
    s = settings_for("full", seed=3, steps=600)
    assert s.seed == 3 and s.steps == 600 and s.eval_steps == [200, 400, 600]
    assert settings_for("full", steps=10).eval_steps == [4, 8, 10]
    odd = dataclasses.replace(full_settings(), steps=7, eval_every=3)
    assert odd.eval_steps == [3, 6, 7]
    with pytest.raises(IrepaError, match="--steps must be >= 1"):
        settings_for("quick", steps=0)


def test_round_trip_and_validation():
    s = quick_settings(seed=2)
    assert DemoSettings.from_dict(s.to_dict()) == s
    assert s.fd.quantize == "truncate"
    old = s.to_dict()
    del old["fd"]["quantize"]  # demo.json written before the setting existed: sampled with rounding
    assert DemoSettings.from_dict(old).fd.quantize == "round"
    with pytest.raises(IrepaError, match="not readable by this irepa version"):
        DemoSettings.from_dict({**s.to_dict(), "unknown": 1})
    with pytest.raises(IrepaError, match="--seed must be >= 0"):
        dataclasses.replace(s, seed=-1)
    with pytest.raises(IrepaError, match="unique names"):
        dataclasses.replace(s, runs=(s.runs[0], s.runs[0]))
