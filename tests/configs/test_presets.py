"""Every shipped preset loads, validates, and builds (big models on the meta device)."""

from pathlib import Path

import pytest
import torch
import yaml

from irepa.config import read_yaml
from irepa.training.config import resolve_config
from irepa.training.presets import list_presets, load_preset, preset_path

PAPER = {
    # name: (model, depth, projector, kernel, target norm, weight, precision)
    "sit-b2-repa": ("SiT-B/2", 4, "mlp", None, "none", 0.5, "bf16"),
    "sit-b2-irepa": ("SiT-B/2", 4, "conv", 3, "spatial", 1.0, "bf16"),
    "sit-l2-repa": ("SiT-L/2", 8, "mlp", None, "none", 0.5, "bf16"),
    "sit-l2-irepa": ("SiT-L/2", 8, "conv", 3, "spatial", 1.0, "bf16"),
    "sit-xl2-repa": ("SiT-XL/2", 8, "mlp", None, "none", 0.5, "bf16"),
    "sit-xl2-irepa": ("SiT-XL/2", 8, "conv", 3, "spatial", 1.0, "bf16"),
    "sit-xl2-irepa-official-1x1": ("SiT-XL/2", 8, "conv", 1, "spatial", 1.0, "fp16"),
}
# Published SiT sizes (prior-implementations §1.2), excluding the fixed pos-embed and the projectors.
PARAMS_M = {"SiT-B/2": 130.3, "SiT-L/2": 457.8, "SiT-XL/2": 674.8}


#: Each preset's config layer as it was before the presets inherited from each other, written out in full.
RECORDED = yaml.safe_load((Path(__file__).parent / "preset_layers.yaml").read_text())
#: The recipes' lineage: each paper preset's ``preset:`` parent.
LINEAGE = {
    "sit-xl2-irepa": None,
    "sit-l2-irepa": "sit-xl2-irepa",
    "sit-b2-irepa": "sit-xl2-irepa",
    "sit-xl2-irepa-official-1x1": "sit-xl2-irepa",
    "sit-xl2-repa": "sit-xl2-irepa",
    "sit-l2-repa": "sit-xl2-repa",
    "sit-b2-repa": "sit-xl2-repa",
}
MEANFLOW = {
    # name: (model, align depth or None, projector, target norm, omega, kappa, guidance interval)
    "meanflow-b2-none": ("SiT-B/2", None, None, None, 1.0, 0.5, (0.0, 1.0)),
    "meanflow-b2-repa": ("SiT-B/2", 4, "mlp", "none", 1.0, 0.5, (0.0, 1.0)),
    "meanflow-b2-irepa": ("SiT-B/2", 4, "conv", "spatial", 1.0, 0.5, (0.0, 1.0)),
    "meanflow-xl2-none": ("SiT-XL/2", None, None, None, 0.2, 0.92, (0.0, 0.8)),
    "meanflow-xl2-repa": ("SiT-XL/2", 8, "mlp", "none", 0.2, 0.92, (0.0, 0.8)),
    "meanflow-xl2-irepa": ("SiT-XL/2", 8, "conv", "spatial", 0.2, 0.92, (0.0, 0.8)),
}


def test_all_expected_presets_exist():
    assert set(PAPER) | set(MEANFLOW) | {"debug", "ci", "ci-meanflow"} <= set(list_presets())


@pytest.mark.parametrize("name", sorted(MEANFLOW))
def test_meanflow_presets_match_the_published_settings(name):
    """prior-implementations §8: Adam β2 0.95, lr 1e-4, batch 256, EMA 0.9999, logit-normal(-0.4, 1), 75 % r = t."""
    model_name, depth, projector, norm, omega, kappa, interval = MEANFLOW[name]
    cfg = resolve_config(preset=name)
    mf = cfg.objective.settings
    assert cfg.objective.name == "meanflow" and cfg.model.name == model_name
    assert (mf.omega, mf.kappa, mf.guidance_interval) == (omega, kappa, interval)
    assert mf.equal_share == 0.75 and mf.adaptive_c == 0.01 and mf.adaptive_p == 1.0
    assert cfg.diffusion.time_sampler == "lognormal" and cfg.diffusion.time_sampler_kwargs == {"mean": -0.4, "std": 1.0}
    assert cfg.diffusion.label_dropout == 0.1 and cfg.diffusion.path == "linear"
    assert cfg.optim.lr == 1e-4 and cfg.optim.betas == (0.9, 0.95) and cfg.optim.weight_decay == 0.0
    assert cfg.optim.global_batch_size == 256 and cfg.optim.grad_clip is None and cfg.train.ema_decay == 0.9999
    if depth is None:
        assert cfg.align.encoders == []
    else:
        assert cfg.align.encoders == ["dinov2-vit-b"] and cfg.align.depth == depth and cfg.align.weight == 0.5
        assert cfg.align.projector == projector and cfg.align.target_norm == norm


@pytest.mark.parametrize("name", sorted(list_presets()))
def test_preset_validates_and_cites_sources(name):
    cfg = resolve_config(preset=name)
    assert cfg.name == name
    text = preset_path(name).read_text()
    assert text.startswith("#"), "each preset starts with a header comment citing its sources"
    assert "preset" not in load_preset(name)


def test_every_preset_has_a_recorded_recipe():
    assert set(RECORDED) == set(list_presets()), "record a new preset's layer in tests/configs/preset_layers.yaml"


@pytest.mark.parametrize("name", sorted(RECORDED))
def test_preset_resolves_to_its_recorded_recipe(name):
    # The whole resolved config, field by field, through the same dataclass defaults.
    assert resolve_config(preset=name) == resolve_config(overrides=RECORDED[name])


def test_paper_presets_inherit_along_their_lineage():
    assert {name: read_yaml(preset_path(name)).get("preset") for name in PAPER} == LINEAGE


@pytest.mark.parametrize("name", sorted(PAPER))
def test_paper_presets_match_the_recipe_and_build(name):
    from irepa.align import RepresentationAligner
    from irepa.encoders import ENCODERS
    from irepa.models import build_model

    model_name, depth, projector, kernel, norm, weight, precision = PAPER[name]
    cfg = resolve_config(preset=name)
    assert cfg.model.name == model_name and cfg.align.depth == depth
    assert cfg.align.projector == projector and cfg.align.target_norm == norm
    assert cfg.align.weight == weight and cfg.train.precision == precision
    if kernel is not None:
        assert cfg.align.kernel_size == kernel
    if norm == "spatial":
        assert cfg.align.gamma == 0.6 and cfg.align.eps == 1e-6
    assert cfg.align.encoders == ["dinov2-vit-b"]
    assert cfg.optim.lr == 1e-4 and cfg.optim.betas == (0.9, 0.999) and cfg.optim.weight_decay == 0.0
    assert cfg.optim.global_batch_size == 256 and cfg.optim.grad_clip == 1.0
    assert cfg.train.ema_decay == 0.9999 and cfg.train.max_steps == 400_000
    assert cfg.diffusion.label_dropout == 0.1 and cfg.diffusion.time_sampler == "uniform"
    assert cfg.data.space == "latent" and cfg.data.resolution == 256

    with torch.device("meta"):
        model = build_model(cfg.model.name, null_class=True, **cfg.model.overrides)
        dims = {enc: ENCODERS.get(enc).embed_dim for enc in cfg.align.encoders}
        aligner = RepresentationAligner.from_config(cfg.align, model.hidden_size, dims)
    params = sum(p.numel() for p in model.parameters()) / 1e6
    assert params == pytest.approx(PARAMS_M[model_name], abs=0.05)
    assert model.grid == (16, 16) and 1 <= cfg.align.depth <= model.depth
    assert sum(p.numel() for p in aligner.parameters()) > 0


JIT = {
    # name: (model, align depth, projector, target norm, image px, noise scale, teacher px)
    "jit-b16-irepa": ("JiT-B/16", 4, "conv", "spatial", 256, 1.0, 256),
    "jit-b16-repa": ("JiT-B/16", 4, "mlp", "none", 256, 1.0, 256),
    "jit-l16-irepa": ("JiT-L/16", 8, "conv", "spatial", 256, 1.0, 256),
    "jit-l16-repa": ("JiT-L/16", 8, "mlp", "none", 256, 1.0, 256),
    "jit-h16-irepa": ("JiT-H/16", 8, "conv", "spatial", 256, 1.0, 256),
    "jit-h16-repa": ("JiT-H/16", 8, "mlp", "none", 256, 1.0, 256),
    "jit-b32-irepa": ("JiT-B/32", 4, "conv", "spatial", 512, 2.0, 256),
    "jit-b32-repa": ("JiT-B/32", 4, "mlp", "none", 512, 2.0, 256),
    "jit-l32-irepa": ("JiT-L/32", 8, "conv", "spatial", 512, 2.0, 256),
    "jit-l32-repa": ("JiT-L/32", 8, "mlp", "none", 512, 2.0, 256),
    "jit-h32-irepa": ("JiT-H/32", 8, "conv", "spatial", 512, 2.0, 256),
    "jit-h32-repa": ("JiT-H/32", 8, "mlp", "none", 512, 2.0, 256),
}
# Trainable parameters of the official JiT code at each preset's resolution (tests/models/test_jit.py).
JIT_PARAMS = {"JiT-B/16": 131_123_712, "JiT-B/32": 133_190_400, "JiT-L/16": 458_877_664,
              "JiT-L/32": 461_534_176, "JiT-H/16": 952_514_368, "JiT-H/32": 956_055_616}  # fmt: skip


def test_all_jit_presets_exist():
    assert set(JIT) | {"ci-jit"} <= set(list_presets())


@pytest.mark.parametrize("name", sorted(JIT))
def test_jit_presets_match_the_official_recipe_and_grids(name):
    from irepa.encoders import ENCODERS
    from irepa.models import build_model, count_parameters

    model_name, depth, projector, norm, px, noise_scale, teacher_px = JIT[name]
    cfg = resolve_config(preset=name)
    jit = cfg.objective.settings
    assert cfg.objective.name == "jit" and cfg.model.name == model_name and cfg.model.qk_norm
    assert (jit.time_mean, jit.time_std, jit.t_eps, jit.label_dropout) == (0.8, 0.8, 0.05, 0.1)
    assert jit.noise_scale == noise_scale and jit.sampler == "heun" and jit.num_steps == 50
    assert jit.guidance_interval == (0.0, 0.9)  # JiT's [0.1, 1.0] in its reversed time
    assert cfg.align.encoders == ["dinov2-vit-b"] and cfg.align.depth == depth and cfg.align.weight == 0.5
    assert cfg.align.projector == projector and cfg.align.target_norm == norm
    if norm == "spatial":
        assert cfg.align.gamma == 0.8 and cfg.align.kernel_size == 3
    assert cfg.data.space == "pixel" and cfg.data.resolution == px and cfg.data.flip
    assert cfg.optim.lr == 5e-5 and cfg.optim.betas == (0.9, 0.95) and cfg.optim.grad_clip is None
    assert cfg.optim.warmup_steps == 25020 and cfg.optim.global_batch_size == 256
    assert cfg.train.ema_decay == 0.9999 and cfg.train.precision == "bf16" and cfg.train.max_steps == 200_000
    assert (cfg.teacher.resolution or cfg.data.resolution) == teacher_px
    assert cfg.model.overrides == ({"proj_drop": 0.2} if model_name.startswith("JiT-H") else {})
    with torch.device("meta"):
        model = build_model(cfg.model.name, input_size=px, null_class=True, **cfg.model.overrides)
    assert count_parameters(model, trainable_only=True) == JIT_PARAMS[model_name]
    assert model.grid == (16, 16) == ENCODERS.get("dinov2-vit-b").grid(teacher_px)  # the teacher matches the model
    assert depth <= model.depth


@pytest.mark.parametrize("name", ["repae-xl2-sdvae-repa", "repae-xl2-sdvae-irepa"])
def test_repae_presets_match_the_published_recipe(name):
    cfg = resolve_config(preset=name)
    s = cfg.objective.settings
    assert cfg.objective.name == "repa-e" and s.vae == "f8d4" and s.vae_weights == "pretrained/sdvae"
    assert (s.l1_weight, s.lpips_weight, s.kl_weight, s.gan_weight, s.gan_start) == (1.0, 1.0, 1e-6, 0.1, 0)
    assert s.vae_align_weight == 1.5 and s.bn_momentum == 0.1 and s.repae_lpips_input_quirk
    assert cfg.model.name == "SiT-XL/2" and cfg.align.encoders == ["dinov2-vit-b"] and cfg.align.depth == 8
    assert cfg.align.weight == 0.5 and cfg.diffusion.label_dropout == 0.1 and cfg.diffusion.path == "linear"
    assert cfg.data.space == "pixel" and cfg.data.latents is None and cfg.data.resolution == 256
    assert cfg.optim.lr == 1e-4 and cfg.optim.global_batch_size == 256 and cfg.optim.grad_clip == 1.0
    assert cfg.train.ema_decay == 0.9999 and cfg.train.max_steps == 400_000
    if name.endswith("-irepa"):  # iREPA-E: conv projector + spatial normalization, REPA-E's weights kept
        assert cfg.align.projector == "conv" and cfg.align.kernel_size == 3
        assert cfg.align.target_norm == "spatial" and cfg.align.gamma == 0.6
    else:
        assert cfg.align.projector == "mlp" and cfg.align.target_norm == "none"
