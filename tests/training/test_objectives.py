"""The objective API: the ``objective:`` config section, several phases and optimizers, manual gradient sync."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from torch import nn

from irepa.config import to_dict
from irepa.errors import ConfigError, IrepaError
from irepa.training.config import check_resume_compatible, resolve_config
from irepa.training.objectives import OBJECTIVES, DenoisingObjective, DenoisingSettings, OptimizerSpec, Phase
from irepa.training.trainer import Trainer


@dataclasses.dataclass(frozen=True)
class CriticSettings(DenoisingSettings):
    critic_lr: float = 1e-2


class TwoPhaseObjective(DenoisingObjective):
    """Denoising plus a tiny 'critic' updated first by its own optimizer (the shape of REPA-E's phases)."""

    Settings = CriticSettings
    manual_grad_sync = True

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.critic = nn.Linear(self.data.input_shape[0], 1)

    def trained_modules(self):
        return {**super().trained_modules(), "critic": self.critic}

    def optimizers(self):
        main = [p for name, m in super().trained_modules().items() for p in m.parameters() if p.requires_grad]
        return {
            "main": OptimizerSpec(main),
            "critic": OptimizerSpec(list(self.critic.parameters()), lr=self.settings.critic_lr, betas=(0.5, 0.9)),
        }

    def phases(self):
        # The critic starts at step 1 (like a discriminator that starts late): skipped at step 0.
        return [
            Phase("critic", self.critic_loss, "critic", active=lambda step: step >= 1),
            Phase("main", self.loss, "sit"),
        ]

    def critic_loss(self, batch, draws, step):
        x0 = self.data.model_input(batch, draws.get("eps"))
        score = self.critic(x0.mean(dim=(2, 3)))  # (B, 1)
        return {"loss": (score - 1.0).square().mean()}


class UnsyncedTwoPhase(TwoPhaseObjective):
    manual_grad_sync = False


OBJECTIVES.register("test-two-phase", TwoPhaseObjective)
OBJECTIVES.register("test-two-phase-unsynced", UnsyncedTwoPhase)


# ----------------------------------------------------------------------------------------------------------------------
# Config


def test_objective_section_defaults_to_denoising_and_is_typed(pixel_store, pixel_overrides):
    cfg = resolve_config(overrides=pixel_overrides(pixel_store))
    assert cfg.objective.name == "denoising" and isinstance(cfg.objective.settings, DenoisingSettings)
    assert cfg.objective.settings.prediction == "v"
    cfg = resolve_config(
        overrides=pixel_overrides(pixel_store, "objective.name=test-two-phase", "objective.critic_lr=3")
    )
    assert cfg.objective.settings == CriticSettings(critic_lr=3.0)
    assert to_dict(cfg)["objective"] == {"name": "test-two-phase", "prediction": "v", "t_eps": 0.05, "critic_lr": 3.0}
    with pytest.raises(ConfigError, match=r"unknown objective 'denoisng'; did you mean 'denoising'"):
        resolve_config(overrides=pixel_overrides(pixel_store, "objective.name=denoisng"))
    with pytest.raises(ConfigError, match=r"unknown config key 'objective.critic_lr'"):
        resolve_config(overrides=pixel_overrides(pixel_store, "objective.critic_lr=3"))  # not a denoising setting
    with pytest.raises(ConfigError, match=r"objective.critic_lr' expects float"):
        resolve_config(overrides=pixel_overrides(pixel_store, "objective.name=test-two-phase", "objective.critic_lr=x"))


def test_a_config_without_objective_key_resumes_as_denoising(pixel_store, pixel_overrides):
    cfg = resolve_config(overrides=pixel_overrides(pixel_store))
    old = to_dict(cfg)
    del old["objective"]  # a run directory written before objectives existed
    assert check_resume_compatible(old, cfg, where="old run") == {}
    other = resolve_config(overrides=pixel_overrides(pixel_store, "objective.name=test-two-phase"))
    with pytest.raises(ConfigError, match=r"objective\.name: 'denoising' -> 'test-two-phase'"):
        check_resume_compatible(old, other, where="old run")


# ----------------------------------------------------------------------------------------------------------------------
# Several phases and optimizers


def _fit(run_dir, overrides):
    trainer = Trainer(resolve_config(overrides=overrides), run_dir)
    return trainer, trainer.fit()


def test_two_phases_step_two_optimizers_and_resume_exactly(tmp_path, pixel_store, pixel_overrides):
    from safetensors.torch import load_file

    overrides = pixel_overrides(
        pixel_store,
        "objective.name=test-two-phase",
        "train.max_steps=4",
        "train.checkpoint_every_steps=2",
        "optim.grad_accumulation=2",
    )
    trainer, result = _fit(tmp_path / "full", overrides)
    assert result.step == 4
    folder = tmp_path / "full" / "checkpoints" / "step-0000004"
    names = sorted(p.name for p in folder.iterdir())
    assert names == sorted(
        [
            "aligner.safetensors",
            "config.yaml",
            "critic.safetensors",
            "ema.model.safetensors",
            "manifest.json",
            "model.safetensors",
            "optimizer.critic.pt",
            "optimizer.main.pt",
            "trainer.pt",
        ]
    )
    critic = trainer.optimizers["critic"]
    assert critic.param_groups[0]["betas"] == (0.5, 0.9) and critic.param_groups[0]["lr"] == pytest.approx(1e-2)
    assert trainer.optimizers["main"].param_groups[0]["lr"] == pytest.approx(1e-3)
    import json

    row = json.loads((tmp_path / "full" / "metrics.jsonl").read_text().splitlines()[-1])
    for key in ("critic/loss", "critic/grad_norm", "sit/loss", "sit/denoise", "sit/align", "sit/grad_norm"):
        assert key in row, key
    initial = nn.Linear(3, 1)
    assert not torch.equal(load_file(folder / "critic.safetensors")["weight"], initial.weight)  # it trained

    # Stop at step 2, resume to 4: identical to the uninterrupted run (all modules and both optimizers).
    _fit(tmp_path / "resumed", [*overrides, "train.max_steps=2"])
    _, result = _fit(tmp_path / "resumed", overrides)
    assert result.step == 4
    resumed = tmp_path / "resumed" / "checkpoints" / "step-0000004"
    for part in ("model", "ema.model", "aligner", "critic"):
        a, b = load_file(folder / f"{part}.safetensors"), load_file(resumed / f"{part}.safetensors")
        assert all(torch.equal(a[k], b[k]) for k in a), part
    for part in ("optimizer.critic.pt", "optimizer.main.pt"):
        a, b = (torch.load(f / part, weights_only=True)["state"] for f in (folder, resumed))
        assert all(torch.equal(a[i]["exp_avg"], b[i]["exp_avg"]) for i in a), part
    steps = {
        p: int(torch.load(folder / p, weights_only=True)["state"][0]["step"])
        for p in ("optimizer.critic.pt", "optimizer.main.pt")
    }
    assert steps == {"optimizer.critic.pt": 3, "optimizer.main.pt": 4}  # the inactive phase did not step


def test_several_phases_need_manual_grad_sync(tmp_path, pixel_store, pixel_overrides):
    cfg = resolve_config(overrides=pixel_overrides(pixel_store, "objective.name=test-two-phase-unsynced"))
    with pytest.raises(IrepaError, match="must set manual_grad_sync"):
        Trainer(cfg, tmp_path)


def test_old_objective_sections_take_the_new_defaults(pixel_store, pixel_overrides):
    cfg = resolve_config(overrides=pixel_overrides(pixel_store))
    assert to_dict(cfg)["objective"] == {"name": "denoising", "prediction": "v", "t_eps": 0.05}
    old = to_dict(cfg)
    old["objective"] = {"name": "denoising"}  # written before the denoising settings existed
    assert check_resume_compatible(old, cfg, where="old run") == {}
    xpred = resolve_config(overrides=pixel_overrides(pixel_store, "objective.prediction=x"))
    with pytest.raises(ConfigError, match=r"objective\.prediction: 'v' -> 'x'"):
        check_resume_compatible(old, xpred, where="old run")


def test_x_prediction_trains_and_its_snapshot_samples_through_the_adapter(tmp_path, pixel_store, pixel_overrides):
    from irepa.diffusion.generate import SamplingSettings, SnapshotSampler

    overrides = pixel_overrides(pixel_store, "objective.prediction=x", "align.encoders=[]", "train.max_steps=2")
    _, result = _fit(tmp_path, overrides)
    sampler, meta = SnapshotSampler.load(result.snapshot)
    assert meta["diffusion"] == {"path": "linear", "prediction": "x", "t_eps": 0.05}
    out = sampler.generate([0, 1], torch.tensor([0, 1]), SamplingSettings(sampler="euler", steps=2))
    assert out.finite.all() and out.images.shape == (2, 3, 32, 32)


def test_every_recipe_builds_its_alignment_term_through_the_context(monkeypatch):
    # One place builds the term, so the weight locations resolved at the CLI boundary ($IREPA_CACHE, hub caches)
    # reach every recipe's teacher (JiT and MeanFlow once built it without them).
    import ast
    import types
    from pathlib import Path

    import irepa.training.objectives as objectives_pkg
    from irepa.training.alignment import AlignmentTerm
    from irepa.training.objectives.base import ObjectiveContext

    for path in Path(objectives_pkg.__file__).parent.glob("*.py"):
        if path.name == "base.py":
            continue
        calls = [
            node
            for node in ast.walk(ast.parse(path.read_text()))
            if isinstance(node, ast.Attribute)
            and node.attr == "from_config"
            and isinstance(node.value, ast.Name)
            and node.value.id == "AlignmentTerm"
        ]
        assert not calls, f"{path.name} builds AlignmentTerm itself: use context.alignment_term(backbone)"

    seen = {}
    monkeypatch.setattr(AlignmentTerm, "from_config", classmethod(lambda cls, config, **kw: seen.update(kw) or "term"))
    locations = object()
    context = ObjectiveContext(
        config=types.SimpleNamespace(
            model=types.SimpleNamespace(name="SiT-S/2"), data=types.SimpleNamespace(flip=True)
        ),
        data=types.SimpleNamespace(image_size=(64, 64), dataset=range(12)),
        device="cpu",
        weight_locations=locations,
    )
    assert context.alignment_term(types.SimpleNamespace(grid=(4, 4), hidden_size=64)) == "term"
    assert seen["locations"] is locations
    assert (seen["image_size"], tuple(seen["grid"]), seen["source_dim"]) == (64, (4, 4), 64)
    assert (seen["num_samples"], seen["flips"]) == (12, True)  # what teacher.cache_targets sizes its cache by
