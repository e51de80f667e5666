"""The ``jit`` objective: JiT's loss in JiT's own time convention, settings, and a 512-px /32 iREPA run."""

from __future__ import annotations

import json

import pytest
import torch

from irepa.errors import ConfigError, IrepaError
from irepa.training.config import resolve_config
from irepa.training.trainer import Trainer

TINY_JIT = "model.overrides={depth: 2, hidden_size: 64, num_heads: 4, bottleneck_dim: 16, in_context_len: 4, in_context_start: 1}"  # noqa: E501


def jit_overrides(store, *extra):
    """A tiny JiT-B/16-shaped run on a 32 px store: patch 8 (4x4 tokens), HOG teacher at 64 px (4x4 targets)."""
    return [
        "objective.name=jit",
        "model.name=JiT-B/16",
        TINY_JIT.replace("}", ", patch_size: 8}"),
        "data.space=pixel",
        f"data.images={store}",
        "data.latents=null",
        "data.num_workers=0",
        "align.encoders=[hog]",
        "align.depth=2",
        "align.projector=conv",
        "align.target_norm=spatial",
        "align.gamma=0.8",
        "teacher.resolution=64",
        "optim.global_batch_size=4",
        "train.precision=fp32",
        "train.max_steps=1",
        "train.snapshot_every_steps=0",
        "train.checkpoint_every_steps=0",
        "logging.tensorboard=false",
        "logging.progress_bar=false",
        *extra,
    ]


def test_loss_equals_jits_own_formula_in_jit_time(tmp_path, pixel_store):
    """The objective's loss, recomputed the way JiT writes it: t_JiT = 1 - t, z = t_JiT x + (1 - t_JiT) s e."""
    trainer = Trainer(resolve_config(overrides=jit_overrides(pixel_store, "align.encoders=[]")), tmp_path)
    objective = trainer.objective
    torch.manual_seed(0)
    batch = {"image": torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8), "label": torch.tensor([0, 1, 2, 3])}
    draws = objective.draw(4, torch.Generator().manual_seed(1), torch.device("cpu"))
    draws["t"][0] = 0.01  # below t_eps: the clamped denominator
    with torch.no_grad():
        for p in objective.model.parameters():
            p.add_(0.05 * torch.randn_like(p))  # a non-zero prediction
        terms = objective.loss(batch, draws, 0)

        x = batch["image"].float() / 127.5 - 1
        t_jit = (1 - draws["t"]).view(-1, 1, 1, 1)
        e = objective.noise_scale * draws["noise"]
        z = t_jit * x + (1 - t_jit) * e
        labels = torch.where(draws["drop"], torch.full_like(batch["label"], 4), batch["label"])
        # The JiT network sees JiT time; irepa's JiT takes SiT time and converts inside (t_SiT = 1 - t_JiT).
        x_pred = objective.model(z, 1 - t_jit.flatten(), labels).out
        v = (x - z) / (1 - t_jit).clamp_min(0.05)
        v_pred = (x_pred - z) / (1 - t_jit).clamp_min(0.05)
        expected = ((v - v_pred) ** 2).mean(dim=(1, 2, 3)).mean()
    torch.testing.assert_close(terms["denoise"], expected, rtol=1e-5, atol=1e-6)
    assert terms["loss"] == terms["denoise"]


def test_time_distribution_is_jits_logit_normal_in_sit_time(tmp_path, pixel_store):
    trainer = Trainer(resolve_config(overrides=jit_overrides(pixel_store, "align.encoders=[]")), tmp_path)
    t = trainer.objective.draw(20000, torch.Generator().manual_seed(0), torch.device("cpu"))["t"]
    logit_jit = torch.logit(1 - t.double())  # JiT: t_JiT = sigmoid(N(-0.8, 0.8))
    assert logit_jit.mean().item() == pytest.approx(-0.8, abs=0.02)
    assert logit_jit.std().item() == pytest.approx(0.8, abs=0.02)
    assert trainer.objective.noise_scale == 1.0  # max(1, 32 / 256)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["model.name=SiT-S/4", "model.overrides={depth: 2}"], "objective jit trains a JiT model"),
        (["objective.t_eps=0"], "objective.t_eps must be in (0, 1)"),
        (["objective.guidance_interval=[0.5, 0.2]"], "objective.guidance_interval"),
        (["objective.sampler=dpm"], "objective.sampler"),
    ],
)
def test_bad_settings_are_config_errors(tmp_path, pixel_store, extra, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        Trainer(resolve_config(overrides=jit_overrides(pixel_store, *extra)), tmp_path)


@pytest.fixture(scope="module")
def store_512(tmp_path_factory, write_image_folder):
    """Four 512 px images (one per class)."""
    from irepa.data.prepare import prepare_folder_store

    root = tmp_path_factory.mktemp("px512")
    write_image_folder(root / "folder", 512, 1)
    prepare_folder_store(root / "folder", root / "store", resolution=512, crop="resize", shard_size=8)
    return root / "store"


def test_512px_patch32_irepa_matches_the_encoder_grid_and_trains(tmp_path, store_512):
    """JiT-B/32 at 512 px (16x16 tokens) with iREPA: the teacher at 256 px gives 16x16 targets; noise scale 2."""
    overrides = [
        *jit_overrides(store_512),
        "model.name=JiT-B/32",
        TINY_JIT,
        "align.encoders=[dinov2-vit-b]",
        "align.depth=2",
        "teacher.pretrained=false",
        "teacher.arch_overrides={dinov2-vit-b: {depth: 1, embed_dim: 64, num_heads: 2}}",
        "teacher.resolution=256",
        "optim.global_batch_size=2",
        "train.max_steps=1",
        "train.log_every_steps=1",
    ]
    trainer = Trainer(resolve_config(overrides=overrides), tmp_path)
    assert trainer.objective.model.grid == (16, 16) and trainer.objective.noise_scale == 2.0
    result = trainer.fit()
    assert result.status == "completed" and result.step == 1
    row = json.loads((tmp_path / "metrics.jsonl").read_text().splitlines()[-1])
    assert -1 <= row["align_cos"] <= 1 and row["loss"] == pytest.approx(row["denoise"] + row["align"], rel=1e-5)
    # The official code's failure mode: the encoder at the data resolution gives 32x32 tokens for a 16x16 model.
    with pytest.raises(IrepaError, match=r"teacher token grid \(dinov2-vit-b 32x32\) differs from JiT-B/32's 16x16"):
        Trainer(resolve_config(overrides=[*overrides, "teacher.resolution=null"]), tmp_path / "mismatch")


def test_compiled_jit_step_is_the_eager_step(tmp_path, pixel_store, monkeypatch):
    """``train.compile``: one graph for JiT + loss + aligner (Dynamo, eager backend), weights identical to eager."""
    from safetensors.torch import load_file

    original = torch.compile
    calls = []

    def compile_eager(fn, *args, **kwargs):
        calls.append(getattr(fn, "__name__", type(fn).__name__))
        return original(fn, *args, backend="eager", **kwargs)

    overrides = jit_overrides(pixel_store, "train.max_steps=2", "align.weight=0.7", "align.warmup_steps=2")

    def final_weights(run_dir):
        folder = run_dir / "checkpoints" / "step-0000002"
        return {part: load_file(folder / f"{part}.safetensors") for part in ("model", "aligner")}

    Trainer(resolve_config(overrides=overrides), tmp_path / "eager").fit()
    monkeypatch.setattr(torch, "compile", compile_eager)
    Trainer(resolve_config(overrides=[*overrides, "train.compile=true"]), tmp_path / "compiled").fit()
    assert calls == ["_terms"]
    eager, compiled = final_weights(tmp_path / "eager"), final_weights(tmp_path / "compiled")
    for part in eager:
        assert eager[part].keys() == compiled[part].keys()
        assert all(torch.equal(eager[part][k], compiled[part][k]) for k in eager[part]), part
