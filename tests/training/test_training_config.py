import pytest

from irepa.config import to_dict
from irepa.errors import ConfigError
from irepa.training.config import (
    RESUMABLE_KEYS,
    TrainConfig,
    check_resume_compatible,
    config_diff,
    is_resumable_key,
    resolve_config,
)

DATA = ["data.images=/data/images", "data.latents=/data/latents"]


def test_precedence_defaults_preset_file_cli(tmp_path):
    file = tmp_path / "exp.yaml"
    file.write_text("preset: sit-b2-repa\noptim:\n  lr: 2e-4\n  global_batch_size: 128\ntrain: {max_steps: 10}\n")
    cfg = resolve_config(config_file=file, overrides=["optim.lr=3e-4"])
    assert cfg.name == "sit-b2-repa"  # the preset's name
    assert cfg.model.name == "SiT-B/2" and cfg.align.depth == 4  # from the preset
    assert cfg.optim.global_batch_size == 128 and cfg.train.max_steps == 10  # file beats preset
    assert cfg.optim.lr == pytest.approx(3e-4)  # CLI beats file
    assert cfg.optim.betas == (0.9, 0.999) and cfg.train.ema_decay == 0.9999  # defaults


def test_preset_flag_and_file_without_preset(tmp_path):
    file = tmp_path / "mine.yaml"
    file.write_text("model: {name: SiT-L/2}\n")
    cfg = resolve_config(preset="sit-xl2-repa", config_file=file)
    assert cfg.model.name == "SiT-L/2" and cfg.align.depth == 8
    cfg = resolve_config(config_file=file, overrides=[*DATA, "align.encoders=[]"])
    assert cfg.name == "mine" and cfg.align.encoders == []


def test_conflicting_presets_are_an_error(tmp_path):
    file = tmp_path / "x.yaml"
    file.write_text("preset: sit-b2-repa\n")
    with pytest.raises(ConfigError, match="conflicts"):
        resolve_config(preset="sit-b2-irepa", config_file=file)


def test_unknown_keys_and_presets_name_the_fix():
    with pytest.raises(ConfigError, match=r"optim\.learning_rate.*valid keys"):
        resolve_config(preset="sit-b2-repa", overrides=["optim.learning_rate=1"])
    with pytest.raises(ConfigError, match="did you mean 'sit-b2-irepa'"):
        resolve_config(preset="sit-b2-irepaa")
    with pytest.raises(ConfigError, match=r"model\.name: unknown model 'SiT-XXL/2'"):
        resolve_config(preset="sit-b2-repa", overrides=["model.name=SiT-XXL/2"])


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["align.depth=13"], r"align\.depth=13 is deeper than SiT-B/2 \(12 blocks\)"),
        (["data.images=null"], r"needs the images for the teacher: set data\.images"),
        (["data.latents=null"], r"data\.space=latent needs a latent store"),
        (["optim.global_batch_size=256", "optim.grad_accumulation=3"], "not divisible by optim.grad_accumulation=3"),
        (["diffusion.label_dropout=1.5"], r"label_dropout must be in \[0, 1\)"),
        (["train.keep_last=0"], "keep_last must be >= 1"),
        (["train.precision=fp8"], "must be one of"),
        (["model.overrides={depht: 2}"], r"model\.overrides: unknown SiT-B/2 argument"),
    ],
)
def test_validation_messages(overrides, message):
    with pytest.raises(ConfigError, match=message):
        resolve_config(preset="sit-b2-repa", overrides=overrides)


def test_validation_builds_no_model(monkeypatch):
    from irepa.models.sit import SiT

    def refuse(*args, **kwargs):
        raise AssertionError("config validation built a model")

    monkeypatch.setattr(SiT, "__init__", refuse)
    assert resolve_config(preset="sit-xl2-irepa").align.depth == 8
    with pytest.raises(ConfigError, match=r"model\.overrides: SiT hidden_size 100 must be divisible by num_heads=12"):
        resolve_config(preset="sit-b2-repa", overrides=["model.overrides={hidden_size: 100}"])


def test_tiny_override_depth_is_checked():
    base = ["model.overrides={depth: 2, hidden_size: 64, num_heads: 2}"]
    assert resolve_config(preset="sit-b2-repa", overrides=[*base, "align.depth=2"]).align.depth == 2
    with pytest.raises(ConfigError, match=r"deeper than SiT-B/2 \(2 blocks\)"):
        resolve_config(preset="sit-b2-repa", overrides=[*base, "align.depth=3"])


def test_diff_and_resume_compatibility():
    old = resolve_config(preset="sit-b2-repa")
    new = resolve_config(preset="sit-b2-repa", overrides=["train.max_steps=500000", "data.num_workers=2"])
    changed = check_resume_compatible(to_dict(old), new, where="run directory r")
    assert set(changed) == {"train.max_steps", "data.num_workers"}
    bad = resolve_config(preset="sit-b2-repa", overrides=["optim.lr=2e-4", "align.weight=1.0"])
    with pytest.raises(ConfigError) as info:
        check_resume_compatible(to_dict(old), bad, where="run directory r")
    msg = str(info.value)
    assert "align.weight: 0.5 -> 1.0" in msg and "optim.lr: 0.0001 -> 0.0002" in msg and "\n" not in msg
    assert config_diff({"a": {"b": 1}}, {"a": {"b": 2}, "c": 3}) == {"a.b": (1, 2), "c": (None, 3)}


def test_resumable_keys_are_real_config_keys():
    from irepa.training.config import _flatten

    flat = set(_flatten(to_dict(resolve_config(preset="sit-b2-repa"))))
    for key in RESUMABLE_KEYS:
        assert any(k == key or k.startswith(key + ".") for k in flat), key
    assert is_resumable_key("logging.wandb") and not is_resumable_key("optim.lr")


def test_trainconfig_needs_data():
    with pytest.raises(ConfigError, match=r"data\.latents"):
        TrainConfig()
