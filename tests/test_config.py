from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import pytest

from irepa.config import ConfigError, build, dump_yaml, from_dict, parse_overrides, read_yaml, replace, to_dict


@dataclass(frozen=True)
class Optim:
    lr: float = 1e-4
    betas: tuple[float, float] = (0.9, 0.999)
    clip: float | None = 1.0

    def __post_init__(self):
        if self.lr <= 0:
            raise ConfigError(f"optim.lr must be positive, got {self.lr}")


@dataclass(frozen=True)
class Run:
    steps: int = 10
    name: str = "run"
    kind: Literal["a", "b"] = "a"
    coeffs: list[float] = field(default_factory=lambda: [0.5])
    compile: bool = False
    optim: Optim = field(default_factory=Optim)


def test_defaults_and_dotted_overrides():
    cfg = build(Run, parse_overrides(["steps=5", "optim.lr=3e-4", "optim.betas=[0.8, 0.95]", "coeffs=[1, 2]"]))
    assert cfg == Run(steps=5, coeffs=[1.0, 2.0], optim=Optim(lr=3e-4, betas=(0.8, 0.95)))
    assert isinstance(cfg.optim.lr, float)


def test_precedence_defaults_preset_file_cli(tmp_path):
    preset = {"steps": 100, "name": "preset", "optim": {"lr": 1e-3}}
    file = tmp_path / "run.yaml"
    file.write_text("name: file\noptim:\n  lr: 2e-3\n")
    cli = parse_overrides(["optim.lr=5e-3"])
    cfg = build(Run, preset, read_yaml(file), cli)
    assert cfg.steps == 100  # preset over default
    assert cfg.name == "file"  # file over preset
    assert cfg.optim.lr == 5e-3  # CLI over file
    assert cfg.optim.betas == (0.9, 0.999)  # untouched default
    assert build(Run, preset, read_yaml(file)).optim.lr == 2e-3  # YAML '2e-3' (a string for PyYAML) parses


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("stepz=3", r"unknown config key 'stepz'; did you mean steps"),
        ("optim.lrr=1", r"unknown config key 'optim.lrr'; did you mean optim.lr"),
        ("steps=abc", r"config key 'steps' expects int, got 'abc'"),
        ("steps=1.5", r"config key 'steps' expects int"),
        ("compile=yes please", r"config key 'compile' expects bool"),
        ("kind=c", r"config key 'kind' must be one of 'a', 'b'"),
        ("optim.betas=[0.9]", r"config key 'optim.betas' expects 2 values"),
        ("optim=3", r"config key 'optim' expects Optim"),
        ("optim.lr=-1", r"optim.lr must be positive"),
        ("optim.lr=inf", r"config key 'optim.lr' must be a finite number, got 'inf'"),
        ("optim.lr=nan", r"config key 'optim.lr' must be a finite number, got 'nan'"),
        ("optim.lr=.inf", r"config key 'optim.lr' must be a finite number, got inf"),
        ("optim.clip=-inf", r"config key 'optim.clip' must be a finite number"),
        ("optim.betas=[0.9, nan]", r"config key 'optim.betas\[1\]' must be a finite number"),
        ("coeffs=[1, .nan]", r"config key 'coeffs\[1\]' must be a finite number"),
    ],
)
def test_bad_keys_and_types_name_the_key(override, message):
    with pytest.raises(ConfigError, match=message):
        build(Run, parse_overrides([override]))


def test_malformed_override():
    with pytest.raises(ConfigError, match="not of the form key=value"):
        parse_overrides(["steps"])
    with pytest.raises(ConfigError, match="not of the form key=value"):
        parse_overrides(["a..b=1"])


def test_optional_and_null():
    assert build(Run, parse_overrides(["optim.clip=null"])).optim.clip is None
    assert build(Run, parse_overrides(["optim.clip=2"])).optim.clip == 2.0


def test_roundtrip_yaml_and_replace(tmp_path):
    cfg = build(Run, {"steps": 7, "optim": {"betas": [0.1, 0.2]}})
    path = tmp_path / "resolved.yaml"
    path.write_text(dump_yaml(cfg))
    assert from_dict(Run, read_yaml(path)) == cfg
    assert to_dict(cfg)["optim"]["betas"] == [0.1, 0.2]
    assert replace(cfg, ["name=x"]).name == "x"


def test_read_yaml_errors(tmp_path):
    with pytest.raises(ConfigError, match="cannot read config file"):
        read_yaml(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("a: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        read_yaml(bad)
    lst = tmp_path / "list.yaml"
    lst.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="must hold a mapping"):
        read_yaml(lst)


@dataclass(frozen=True)
class _Inner:
    """The inner section.

    More text.
    """

    rate: float | None = 0.5
    """A rate,
    on two lines."""
    names: list[str] = field(default_factory=lambda: ["a"])


@dataclass(frozen=True)
class _Outer:
    """Top."""

    steps: tuple[int, int] = (1, 2)
    """Steps."""
    inner: _Inner = field(default_factory=_Inner)


def test_describe_reads_attribute_docstrings_types_and_defaults():
    from irepa.config import describe

    docs = describe(_Outer)
    assert [(d.key, d.type, d.default, d.doc, d.section_doc) for d in docs] == [
        ("steps", "tuple[int, int]", [1, 2], "Steps.", "Top."),
        ("inner.rate", "float | null", 0.5, "A rate, on two lines.", "The inner section."),
        ("inner.names", "list[str]", ["a"], "", "The inner section."),
    ]
