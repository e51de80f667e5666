"""The library generation loop: prediction adapters, quantization, batch invariance, snapshot loading."""

from __future__ import annotations

import pytest
import torch

from irepa.diffusion.generate import (
    PREDICTIONS,
    SamplingSettings,
    SnapshotSampler,
    generate,
    quantize,
    to_velocity,
    velocity_function,
)
from irepa.diffusion.paths import get_path
from irepa.errors import IrepaError
from irepa.models import ModelOutput, build_model
from irepa.models.io import save_inference


@pytest.mark.parametrize("path_name", ["linear", "cosine"])
@pytest.mark.parametrize("prediction", ["x", "eps"])
def test_oracle_predictions_give_the_true_velocity(path_name, prediction):
    path = get_path(path_name)
    x0, eps = torch.randn(6, 2, 4, 4), torch.randn(6, 2, 4, 4)
    t = torch.tensor([0.1, 0.25, 0.4, 0.6, 0.75, 0.9])  # inside [t_eps, 1 - t_eps]: no clamping
    sample = path.sample(x0, eps, t)
    out = x0 if prediction == "x" else eps
    v = to_velocity(out, sample.x_t, t, prediction=prediction, path=path)
    torch.testing.assert_close(v, sample.velocity, rtol=1e-5, atol=1e-5)
    assert to_velocity(sample.velocity, sample.x_t, t, prediction="v", path=path) is sample.velocity


def test_x_prediction_on_the_linear_path_is_jits_velocity_with_t_eps():
    path = get_path("linear")
    x_t, x_hat = torch.randn(4, 3, 2, 2), torch.randn(4, 3, 2, 2)
    t = torch.tensor([0.0, 0.02, 0.5, 1.0])
    v = to_velocity(x_hat, x_t, t, prediction="x", path=path, t_eps=0.05)
    # JiT (t_JiT = 1 - t, z = x_t): v_JiT = (x_hat - z) / max(1 - t_JiT, t_eps); dx/dt in SiT time is its negative.
    expected = (x_t - x_hat) / t.clamp_min(0.05).view(-1, 1, 1, 1)
    torch.testing.assert_close(v, expected)
    assert torch.isfinite(v).all()
    e = to_velocity(torch.randn(4, 3, 2, 2), x_t, t, prediction="eps", path=path)
    assert torch.isfinite(e).all()  # alpha_1 = 0 is clamped too
    with pytest.raises(IrepaError, match="unknown prediction type"):
        to_velocity(x_hat, x_t, t, prediction="score", path=path)


def test_guidance_on_the_velocity_equals_guidance_on_the_x_prediction():
    path = get_path("linear")
    x_t, x_c, x_u = torch.randn(3, 2, 4, 4), torch.randn(3, 2, 4, 4), torch.randn(3, 2, 4, 4)
    t, s = torch.tensor([0.3, 0.5, 0.8]), 2.9
    v_c, v_u = (to_velocity(x, x_t, t, prediction="x", path=path) for x in (x_c, x_u))
    guided_x = x_u + s * (x_c - x_u)
    torch.testing.assert_close(v_u + s * (v_c - v_u), to_velocity(guided_x, x_t, t, prediction="x", path=path))


def test_quantize_truncates_by_default_and_rounds_on_request():
    # 255 (x + 1) / 2 at these x: -1.5 -> clamp 0, -1 -> 0, 0.004 -> 128.01, 0.0 -> 127.5, 0.5 -> 191.25, 2 -> 255
    x = torch.tensor([-1.5, -1.0, 0.004, 0.0, 0.5, 2.0]).view(1, 1, 1, 6)
    assert quantize(x).flatten().tolist() == [0, 0, 128, 127, 191, 255]
    assert quantize(x, "round").flatten().tolist() == [0, 0, 128, 128, 191, 255]
    assert quantize(x).dtype == torch.uint8
    with pytest.raises(IrepaError, match="not one of truncate, round"):
        quantize(x, "floor")


def test_sampling_settings_are_validated():
    assert SamplingSettings().quantize == "truncate" and SamplingSettings(sampler="heun", steps=5).nfe_per_sample == 9
    for bad, match in (
        ({"steps": 0}, "steps must be >= 1"),
        ({"guidance_interval": (0.5, 0.2)}, "guidance interval"),
        ({"seed": -1}, "seed must be >= 0"),
        ({"quantize": "floor"}, "quantize"),
        ({"sampler": "eulr"}, "did you mean 'euler'"),
        ({"compile": "fast"}, "compile mode 'fast' is not one of none, default, reduce-overhead, max-autotune"),
    ):
        with pytest.raises(IrepaError, match=match):
            SamplingSettings(**bad)


def _tiny_model():
    torch.manual_seed(0)
    model = build_model("SiT-S/2", input_size=8, in_channels=3, hidden_size=32, depth=2, num_heads=2, num_classes=4)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model.eval()


@pytest.mark.parametrize("sampler", ["euler", "sde"])
def test_generate_is_batch_invariant(sampler):
    model = _tiny_model()
    velocity = velocity_function(model, {"path": "linear"})
    settings = SamplingSettings(sampler=sampler, steps=3, cfg_scale=1.5, seed=3)
    labels = torch.tensor([0, 1, 2, 3, 0, 1])
    kwargs = dict(shape=(3, 8, 8), null_label=model.null_label)
    whole = generate(velocity, get_path("linear"), range(6), labels, settings, **kwargs)
    parts = [
        generate(velocity, get_path("linear"), idx, labels[idx], settings, **kwargs) for idx in ([0, 1], [2, 3, 4, 5])
    ]
    assert torch.equal(whole.images, torch.cat([p.images for p in parts]))
    assert whole.images.shape == (6, 3, 8, 8) and whole.images.dtype == torch.uint8 and whole.finite.all()
    rounded = generate(
        velocity, get_path("linear"), range(6), labels, dataclass_replace(settings, quantize="round"), **kwargs
    )
    diff = rounded.images.int() - whole.images.int()
    assert diff.min() >= 0 and diff.max() <= 1 and diff.float().mean() > 0.3  # round = truncate + 0 or 1


def dataclass_replace(obj, **changes):
    import dataclasses

    return dataclasses.replace(obj, **changes)


def test_snapshot_sampler_reads_the_prediction_type(tmp_path):
    model = _tiny_model()
    meta = {"space": {"kind": "pixel", "channels": 3, "size": [8, 8], "image_size": [8, 8]}, "step": 1, "ema": True}
    old = tmp_path / "old.safetensors"
    save_inference(
        old, model, model_name="SiT-S/2", model_kwargs=model.config, metadata={**meta, "diffusion": {"path": "linear"}}
    )
    sampler, _ = SnapshotSampler.load(old)
    assert sampler.prediction == "v" and sampler.shape == (3, 8, 8) and sampler.null_label == 4
    xpred = tmp_path / "x.safetensors"
    diffusion = {"path": "linear", "prediction": "x", "t_eps": 0.05}
    save_inference(
        xpred, model, model_name="SiT-S/2", model_kwargs=model.config, metadata={**meta, "diffusion": diffusion}
    )
    sampler, _ = SnapshotSampler.load(xpred)
    assert sampler.prediction == "x"
    out = sampler.generate([0, 1], torch.tensor([0, 1]), SamplingSettings(sampler="heun", steps=2))
    assert out.images.shape == (2, 3, 8, 8) and out.finite.all()
    # The adapter really applies: the x-prediction sampler differs from reading the same output as a velocity.
    v = SnapshotSampler(model, {"path": "linear"}, sampler.space, None, "cpu")
    assert not torch.equal(
        v.generate([0, 1], torch.tensor([0, 1]), SamplingSettings(sampler="heun", steps=2)).images, out.images
    )
    latent = tmp_path / "latent.safetensors"
    space = {
        "kind": "latent",
        "channels": 3,
        "size": [8, 8],
        "image_size": [64, 64],
        "vae": "x",
        "normalization": {"kind": "sd-scalar"},
    }
    save_inference(
        latent,
        model,
        model_name="SiT-S/2",
        model_kwargs=model.config,
        metadata={**meta, "space": space, "diffusion": {"path": "linear"}},
    )
    with pytest.raises(IrepaError, match="latent space: pass a latent decoder"):
        SnapshotSampler.load(latent)


def test_predictions_registry_holds_the_built_in_adapters():
    assert sorted(PREDICTIONS.list()) == ["average_velocity", "eps", "v", "x"]  # MeanFlow: irepa.diffusion.meanflow
    model = _tiny_model()

    class Fixed(torch.nn.Module):
        def forward(self, x, t, y):
            return ModelOutput(torch.zeros_like(x), None)

    fn = PREDICTIONS.get("x")(Fixed(), get_path("linear"), {"path": "linear", "t_eps": 0.1})
    x = torch.ones(2, 3, 8, 8)
    torch.testing.assert_close(
        fn(x, torch.tensor([0.5, 0.0]), torch.tensor([0, 1])), x / torch.tensor([0.5, 0.1]).view(-1, 1, 1, 1)
    )
    del model


def test_generation_starts_from_noise_scaled_by_the_snapshots_noise_scale():
    """JiT at 512 px trains with noise of std 2: a zero velocity must leave the samples at exactly 2 · ε."""
    seen = []

    def decode(x):
        seen.append(x.clone())
        return x.clamp(-1, 1)

    settings = SamplingSettings(sampler="euler", steps=2)
    zero = lambda x, t, y: torch.zeros_like(x)  # noqa: E731
    labels = torch.tensor([0, 1])
    path = get_path("linear")
    for scale in (1.0, 2.0):
        generate(zero, path, [0, 1], labels, settings, shape=(3, 4, 4), null_label=None, decode=decode,
                 noise_scale=scale)  # fmt: skip
    torch.testing.assert_close(seen[1], 2 * seen[0], rtol=0, atol=0)


def test_compiled_sampling_matches_eager_and_compiles_once(monkeypatch):
    """``compile``: the sampler runs the ``torch.compile``d model (once per mode) and gives eager's samples."""
    model = _tiny_model()
    sampler = SnapshotSampler(model, {"path": "linear"}, {"kind": "pixel"}, None, "cpu")
    settings = SamplingSettings(sampler="euler", steps=2, seed=1)  # no guidance: one batch shape, one compilation
    labels = torch.tensor([0, 1, 2])
    eager = sampler.generate([0, 1, 2], labels, settings)
    calls = []
    compile_ = torch.compile

    def recording_compile(module, **kwargs):
        calls.append(kwargs)
        return compile_(module, **kwargs)

    monkeypatch.setattr(torch, "compile", recording_compile)
    compiled = dataclass_replace(settings, compile="default")
    first = sampler.generate([0, 1, 2], labels, compiled)
    again = sampler.generate([0, 1, 2], labels, compiled)
    assert calls == [{"mode": "default"}]  # compiled once, reused
    # Inductor may fuse differently from eager: the floats can differ at round-off, the uint8 images by a level.
    assert (first.images.int() - eager.images.int()).abs().max() <= 1
    assert torch.equal(first.images, again.images)
