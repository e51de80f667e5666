import itertools
import math

import pytest

from irepa.align import AlignConfig, RepresentationAligner, WeightSchedule
from irepa.config import build, parse_overrides
from irepa.errors import ConfigError, IrepaError


def test_constant_schedule():
    s = WeightSchedule(weight=0.5)
    assert [s(k) for k in (0, 1, 10**6)] == [0.5, 0.5, 0.5]
    assert s.active(10**6)


def test_warmup_reaches_full_weight_after_warmup_steps():
    s = WeightSchedule(weight=1.0, warmup_steps=4)
    assert [s(k) for k in range(6)] == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]


def test_hard_stop():
    s = WeightSchedule(weight=0.5, warmup_steps=2, stop_after=5)
    assert [s(k) for k in range(7)] == [0.25, 0.5, 0.5, 0.5, 0.5, 0.0, 0.0]
    assert s.active(4) and not s.active(5)


@pytest.mark.parametrize("decay", ["linear", "cosine"])
def test_decay_to_zero(decay):
    s = WeightSchedule(weight=2.0, warmup_steps=10, decay=decay, decay_end=110)
    assert s(9) == pytest.approx(2.0)
    assert s(60) == pytest.approx(1.0)  # halfway: linear 1/2, cosine (1 + cos(pi/2)) / 2 = 1/2
    expected = 2.0 * (1 - 0.25) if decay == "linear" else 2.0 * 0.5 * (1 + math.cos(math.pi * 0.25))
    assert s(35) == pytest.approx(expected)
    assert s(110) == 0.0 and s(500) == 0.0
    values = [s(k) for k in range(10, 111)]
    assert all(a >= b for a, b in itertools.pairwise(values))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"weight": -1.0}, "weight"),
        ({"warmup_steps": -1}, "warmup"),
        ({"decay": "cosine"}, "decay_end"),
        ({"decay": "linear", "decay_end": 5, "warmup_steps": 5}, "after the warmup"),
        ({"decay_end": 5}, "decay is 'none'"),
        ({"decay": "exp", "decay_end": 5}, "decay must be"),
    ],
)
def test_schedule_validation(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        WeightSchedule(**kwargs)


def test_align_config_from_yaml_layers():
    cfg = build(
        AlignConfig,
        {"encoders": ["dinov2-vit-b"], "projector": "conv", "target_norm": "spatial", "weight": "1.0"},
        parse_overrides(["gamma=0.8", "stop_after=100"]),
    )
    assert cfg.enabled and cfg.projector == "conv" and cfg.gamma == 0.8 and cfg.weight == 1.0
    assert cfg.schedule() == WeightSchedule(weight=1.0, stop_after=100)
    assert not AlignConfig().enabled


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        ({"projector": "cnv"}, r"align\.projector: unknown projector 'cnv'; did you mean 'conv'"),
        ({"target_norm": "zscor"}, r"align\.target_norm"),
        ({"loss": "l2"}, r"align\.loss"),
        ({"depth": 0}, "1-based"),
        ({"kernel_size": 2}, "odd"),
        ({"gamma": 1.5}, "gamma"),
        ({"encoders": ["a", "a"]}, "twice"),
        ({"decay": "cosine"}, "decay_end"),
        ({"deepth": 4}, "did you mean depth"),
    ],
)
def test_align_config_errors(overrides, match):
    with pytest.raises(ConfigError, match=match):
        build(AlignConfig, overrides)


def test_aligner_from_config_orders_projectors_like_the_config():
    cfg = AlignConfig(encoders=["b", "a"], projector="linear", target_norm="spatial", gamma=0.8, weight=1.0)
    aligner = RepresentationAligner.from_config(cfg, 16, {"a": 8, "b": 4})
    assert aligner.encoder_names == ("b", "a")
    assert aligner.projectors[0].out_dim == 4 and aligner.projectors[1].out_dim == 8
    assert aligner.gamma == 0.8 and aligner.weight_at(0) == 1.0
    assert list(aligner.state_dict()) == [f"projectors.{k}.net.{p}" for k in (0, 1) for p in ("weight", "bias")]
    with pytest.raises(IrepaError, match="one width per configured encoder"):
        RepresentationAligner.from_config(cfg, 16, {"a": 8})
    with pytest.raises(IrepaError, match="disabled"):
        RepresentationAligner.from_config(AlignConfig(), 16, {})
