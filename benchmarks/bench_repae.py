"""Training-step time of REPA-E (end-to-end VAE + SiT + discriminator) against a plain latent-space SiT step.

Both are real :class:`irepa.training.trainer.Trainer` steps (``train_step``: data, teacher, every phase with its
backward, clipping and AdamW, EMA) on the same synthetic image store, SiT, teacher and REPA settings:

- ``sit``: the ``denoising`` objective on cached latents of the same VAE (what stage 2 / plain REPA costs);
- ``repa-e``: the ``repa-e`` objective: VAE forward and backward (L1, LPIPS, KL, GAN generator term, the
  alignment through the frozen SiT's first ``align.depth`` blocks), the discriminator step, then the SiT step.

The VAE is the SD-VAE architecture (``f8d4``, 83.7M parameters), LPIPS the VGG16 trunk and the discriminator the
3-layer PatchGAN, all with random weights (timing only). Teacher: HOG (no weights; its cost is the same in both).
CPU: 128 px images (16x16x4 latents), SiT-B/2 at depth 4 (8x8 tokens), batch 2, fp32. ``quick``: the tiny VAE at
32 px and a 2-block SiT, to keep the script working in tests.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path

import torch


def _lpips_files(root: Path) -> tuple[Path, Path]:
    from torchvision.models.vgg import cfgs, make_layers

    from irepa.models.lpips import LPIPS_CHANNELS

    trunk = make_layers(cfgs["D"]).state_dict()
    torch.save({f"features.{k}": v for k, v in trunk.items()}, root / "vgg16.pth")
    torch.save(
        {f"lin{i}.model.1.weight": torch.rand(1, c, 1, 1) for i, c in enumerate(LPIPS_CHANNELS)}, root / "vgg.pth"
    )
    return root / "vgg16.pth", root / "vgg.pth"


def _trainer(overrides: list[str], run_dir: Path):
    from irepa.training.config import resolve_config
    from irepa.training.trainer import Trainer

    return Trainer(resolve_config(overrides=overrides), run_dir)


def _time_steps(trainer, steps: int, warmup: int) -> float:
    batches = trainer.data.iterator()
    for _ in range(warmup):
        trainer.train_step(batches)
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        trainer.train_step(batches)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main(quick: bool = False) -> dict:
    """Run the benchmark (CPU); ``quick`` uses the tiny VAE at 32 px and one timed step."""
    from irepa.data.encode import encode_latent_store
    from irepa.data.prepare import prepare_synthetic_store
    from irepa.data.vae import load_vae
    from irepa.models.vae import build_vae

    if quick:
        resolution, vae_arch, model, depth, batch, teacher_px = 32, "tiny", "SiT-S/1", 2, 2, 64
        model_overrides = "{depth: 2, hidden_size: 64, num_heads: 2}"
        steps, warmup = 1, 1
    else:
        resolution, vae_arch, model, depth, batch, teacher_px = 128, "f8d4", "SiT-B/2", 4, 2, 128
        model_overrides = "{depth: 4}"
        steps, warmup = 3, 1
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        prepare_synthetic_store(root / "images", num_images=8, resolution=resolution, num_classes=4)
        vae_dir = root / "vae"
        build_vae(vae_arch, seed=0).save_pretrained(str(vae_dir))
        encode_latent_store(root / "images", root / "latents", load_vae(str(vae_dir)), batch_size=4)
        vgg, heads = _lpips_files(root)
        common = [
            f"model.name={model}",
            f"model.overrides={model_overrides}",
            "align.encoders=[hog]",
            f"align.depth={min(depth, 2)}",
            "align.projector=mlp",
            f"teacher.resolution={teacher_px}",
            f"data.images={root / 'images'}",
            f"data.resolution={resolution}",
            "data.num_workers=0",
            f"optim.global_batch_size={batch}",
            "train.precision=fp32",
            "train.device=cpu",
            "train.max_steps=100",
            "logging.tensorboard=false",
            "logging.progress_bar=false",
        ]
        sit = _trainer(
            [*common, "data.space=latent", f"data.latents={root / 'latents'}", "data.latent_norm=per-channel"],
            root / "run-sit",
        )
        repae = _trainer(
            [*common, "data.space=pixel", "data.latents=null", "objective.name=repa-e", f"objective.vae={vae_arch}",
             f"objective.lpips_vgg_weights={vgg}", f"objective.lpips_heads_weights={heads}"],
            root / "run-repae",
        )  # fmt: skip
        seconds = {"sit": _time_steps(sit, steps, warmup), "repa-e": _time_steps(repae, steps, warmup)}
        sizes = {
            "vae_params_M": round(sum(p.numel() for p in repae.objective.vae.parameters()) / 1e6, 1),
            "sit_params_M": round(sum(p.numel() for p in repae.objective.model.parameters()) / 1e6, 1),
        }
    rows = [
        {"step": name, "step_ms": round(1000 * s, 1), "img_per_s": round(batch / s, 3)} for name, s in seconds.items()
    ]
    for r in rows:
        print(f"{r['step']:<7} {r['step_ms']:>10.1f} ms/step {r['img_per_s']:>8.3f} img/s", flush=True)
    return {
        "device": f"cpu ({torch.get_num_threads()} threads)",
        "setting": {
            "resolution": resolution,
            "vae": vae_arch,
            "model": model,
            "model_overrides": model_overrides,
            "batch": batch,
            "precision": "fp32",
            **sizes,
        },
        "timing": f"median of {steps} Trainer.train_step calls after {warmup} warm-up step(s)",
        "rows": rows,
        "repae_over_sit": round(seconds["repa-e"] / seconds["sit"], 1),
    }


if __name__ == "__main__":
    import json
    import sys

    print(json.dumps(main(quick="--quick" in sys.argv), indent=2))
