"""The objective API: the ``objective:`` config section, several phases and optimizers, manual gradient sync."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from torch import nn

from irepa.config import to_dict
from irepa.errors import ConfigError, IrepaError
from irepa.training.config import check_resume_compatible, resolve_config
from irepa.training.objectives import OBJECTIVES, DenoisingObjective, NoSettings, OptimizerSpec, Phase
from irepa.training.trainer import Trainer


@dataclasses.dataclass(frozen=True)
class CriticSettings:
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
    assert cfg.objective.name == "denoising" and isinstance(cfg.objective.settings, NoSettings)
    assert to_dict(cfg)["objective"] == {"name": "denoising"}
    cfg = resolve_config(
        overrides=pixel_overrides(pixel_store, "objective.name=test-two-phase", "objective.critic_lr=3")
    )
    assert cfg.objective.settings == CriticSettings(critic_lr=3.0)
    assert to_dict(cfg)["objective"] == {"name": "test-two-phase", "critic_lr": 3.0}
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
