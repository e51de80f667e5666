r"""``irepa sample``: generate samples from an inference snapshot into an ADM-format ``.npz`` with a recipe card.

::

    irepa sample --snapshot model.safetensors --num-samples 50000 --out samples.npz \\
        [--sampler sde --steps 250 --cfg-scale 1.0 --guidance-low 0 --guidance-high 1] \\
        [--labels random|balanced --seed 0 --batch-size 64] [--vae ID --vae-weights DIR]
    torchrun --nproc_per_node 8 -m irepa sample ...        # or: accelerate launch -m irepa sample ...

Sample ``i`` gets its own ``torch.Generator`` seeded with ``generator_seed(seed, i)`` (initial noise first, then
the SDE's per-step noise) and label ``labels[i]`` of the run-wide label plan, so the result is identical for any
batch size and any number of processes. Rank ``r`` of ``W`` takes indices ``r, r + W, r + 2W, ...``.

Decoded uint8 images go straight into a memory-mapped work folder (``OUT.work/``) and are assembled into
``OUT`` (``arr_0`` NHWC uint8 + ``labels``) at the end: no PNG round trip, never two copies in memory. Interrupted?
Re-run the same command: finished samples are kept. ``OUT.recipe.json`` records everything that defines the
samples.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from irepa.errors import IrepaError

if TYPE_CHECKING:
    from irepa.diffusion.paths import InterpolationPath
    from irepa.metrics.generative.npz import IndexedImageWriter

#: Format tag of the recipe card written beside the samples.
RECIPE_FORMAT = "irepa-recipe/1"


def configure(parser: argparse.ArgumentParser) -> None:
    """Add the arguments of ``irepa sample``."""
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = (
        "Reproduce a paper row (SDE, 250 steps, 50K samples, random labels), e.g.:\n"
        "  torchrun --nproc_per_node 8 -m irepa sample --snapshot sit-xl2-irepa.safetensors --num-samples 50000 \\\n"
        "      --out samples.npz --sampler sde --steps 250 --cfg-scale 1.0\n"
        "then: irepa eval samples.npz --ref VIRTUAL_imagenet256_labeled.npz. See docs/evaluation.md."
    )
    parser.add_argument(
        "--snapshot", type=Path, required=True, metavar="FILE", help="inference snapshot (.safetensors)"
    )
    parser.add_argument("--num-samples", type=int, required=True, metavar="N", help="number of samples (papers: 50000)")
    parser.add_argument("--out", type=Path, required=True, metavar="FILE", help="output .npz (ADM format)")
    parser.add_argument(
        "--sampler",
        choices=("euler", "heun", "sde", "meanflow"),
        default=None,
        help="sampler (default: the snapshot's, i.e. meanflow for MeanFlow models, else sde as the papers)",
    )
    parser.add_argument(
        "--steps",
        type=int,
        default=None,
        help="sampling steps (default: the snapshot's, i.e. 1 for MeanFlow, else 250); heun: NFE = 2N-1",
    )
    parser.add_argument("--cfg-scale", type=float, default=1.0, help="classifier-free guidance scale (1: no CFG)")
    parser.add_argument(
        "--guidance-low", type=float, default=0.0, help="guidance interval start in SiT time (t=0 data; default 0)"
    )
    parser.add_argument(
        "--guidance-high",
        type=float,
        default=1.0,
        help="guidance interval end in SiT time (t=1 noise; default 1); guided iff low <= t <= high",
    )
    parser.add_argument(
        "--heun-guidance-time",
        choices=("next", "current"),
        default="next",
        help="heun: time the corrector's guidance test uses; 'current' reproduces the official REPA sampler",
    )
    parser.add_argument(
        "--labels",
        choices=("random", "balanced"),
        default="random",
        help="class labels: uniform random (REPA/ADM papers, default) or exactly balanced (JiT)",
    )
    parser.add_argument("--seed", type=int, default=0, help="global seed (default: 0)")
    parser.add_argument("--batch-size", type=int, default=64, help="samples per forward pass per process")
    parser.add_argument(
        "--dtype",
        choices=("float32", "bfloat16", "float16"),
        default="float32",
        help="model forward precision via autocast (default float32; reduced precision changes FID)",
    )
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1 (default: cuda:LOCAL_RANK if available)")
    parser.add_argument("--vae", default=None, help="VAE id for latent snapshots (default: the snapshot's VAE)")
    parser.add_argument("--vae-weights", type=Path, metavar="DIR", help="local VAE folder (config.json + weights)")
    parser.add_argument("--offline", action="store_true", help="never download the VAE")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


# ----------------------------------------------------------------------------------------------------------------------
# Recipe


@dataclasses.dataclass(frozen=True)
class SampleRecipe:
    """Everything that defines a set of samples (the fingerprint of a run; the recipe card adds provenance)."""

    snapshot_sha256: str
    num_samples: int
    sampler: str
    steps: int
    cfg_scale: float
    guidance_interval: tuple[float, float]
    heun_guidance_time: str
    labels: str
    seed: int
    dtype: str
    vae: str | None

    def __post_init__(self) -> None:
        if self.num_samples < 1:
            raise IrepaError(f"--num-samples must be >= 1, got {self.num_samples}")
        if self.steps < 1:
            raise IrepaError(f"--steps must be >= 1, got {self.steps}")
        low, high = self.guidance_interval
        if not 0.0 <= low <= high <= 1.0:
            raise IrepaError(f"guidance interval [{low}, {high}] must satisfy 0 <= low <= high <= 1 (SiT time)")
        if self.seed < 0:
            raise IrepaError(f"--seed must be >= 0, got {self.seed}")


def nfe_per_sample(sampler: str, steps: int) -> int:
    """Velocity evaluations per sample (a guided evaluation runs a doubled batch but counts once)."""
    return 2 * steps - 1 if sampler == "heun" else steps


# ----------------------------------------------------------------------------------------------------------------------
# Decoding


def pixel_decoder(x: torch.Tensor) -> torch.Tensor:
    """Pixel-space model output in [-1, 1] (B, 3, H, W) → uint8 (the ADM/REPA convention, rounded)."""
    return ((x.float() + 1) * 127.5).round().clamp(0, 255).to(torch.uint8)


def build_decoder(space: dict[str, Any], args: argparse.Namespace, device: str):
    """Return ``(decode(x) -> uint8 (B, 3, H, W), vae_id | None)`` for the snapshot's data space."""
    if space["kind"] == "pixel":
        return pixel_decoder, None
    try:
        from irepa.data.latents import LatentNormalization
        from irepa.data.vae import load_vae
    except ImportError as exc:
        raise IrepaError(
            "this snapshot samples in VAE latent space, but this installation lacks irepa.data.vae; install the "
            "[vae] extra"
        ) from exc
    vae_id = args.vae or space.get("vae")
    vae = load_vae(vae_id, weights=args.vae_weights, offline=args.offline, device=device)
    norm = LatentNormalization.from_dict(space["normalization"])

    def decode(z: torch.Tensor) -> torch.Tensor:
        return vae.decode(norm.denormalize(z))

    return decode, vae.name


# ----------------------------------------------------------------------------------------------------------------------
# Generation


def generate_shard(
    velocity_fn: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor],
    path: InterpolationPath,
    decode: Callable[[torch.Tensor], torch.Tensor],
    writer: IndexedImageWriter,
    labels: torch.Tensor,
    recipe: SampleRecipe,
    *,
    latent_shape: tuple[int, ...],
    null_label: int | None,
    rank: int,
    world_size: int,
    batch_size: int,
    device: str,
    progress: bool = False,
) -> int:
    """Generate the pending samples of rank ``rank`` (indices ``rank, rank + W, ...``) into ``writer``.

    Returns:
        The number of samples this call generated.
    """
    from irepa.diffusion.samplers import SAMPLERS, sample_generators

    sampler = SAMPLERS.get(recipe.sampler)
    options = {"heun_guidance_time": recipe.heun_guidance_time} if recipe.sampler == "heun" else {}
    todo = writer.pending(np.arange(rank, recipe.num_samples, world_size))
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(todo), desc=f"sampling (rank {rank})", unit="img")
    for start in range(0, len(todo), batch_size):
        indices = todo[start : start + batch_size]
        gens = sample_generators(indices.tolist(), recipe.seed)
        # Each sample's generator draws its initial noise first, then (SDE) its per-step noise.
        noise = torch.stack([torch.randn(latent_shape, generator=g) for g in gens]).to(device)
        y = labels[torch.from_numpy(indices)].to(device)
        result = sampler(
            velocity_fn,
            path,
            noise,
            y,
            num_steps=recipe.steps,
            cfg_scale=recipe.cfg_scale,
            guidance_interval=recipe.guidance_interval,
            null_label=null_label,
            generator=gens,
            **options,
        )
        x = result.samples
        finite = torch.isfinite(x.flatten(1)).all(dim=1)
        images = decode(torch.where(finite.view(-1, *[1] * (x.ndim - 1)), x, torch.zeros_like(x)))
        writer.write(indices, images.permute(0, 2, 3, 1).cpu().numpy(), finite.cpu().numpy())
        if bar is not None:
            bar.update(len(indices))
    if bar is not None:
        bar.close()
    return len(todo)


class _Dist:
    """The process group seen by this command (torchrun / accelerate launch set RANK, WORLD_SIZE, LOCAL_RANK)."""

    def __init__(self, env: dict[str, str]) -> None:
        self.world_size = int(env.get("WORLD_SIZE", "1"))
        self.rank = int(env.get("RANK", "0"))
        self.local_rank = int(env.get("LOCAL_RANK", "0"))
        self.initialized = False
        if self.world_size > 1:
            import torch.distributed as dist

            if not dist.is_initialized():
                backend = "nccl" if torch.cuda.is_available() else "gloo"
                if backend == "nccl":
                    torch.cuda.set_device(self.local_rank)
                dist.init_process_group(backend=backend)
                self.initialized = True

    def barrier(self) -> None:
        if self.world_size > 1:
            import torch.distributed as dist

            if torch.cuda.is_available() and dist.get_backend() == "nccl":
                dist.barrier(device_ids=[self.local_rank])
            else:
                dist.barrier()

    def all_ok(self, ok: bool) -> bool:
        """Whether every rank reports ``ok`` (so one rank's error stops all of them cleanly)."""
        if self.world_size == 1:
            return ok
        import torch.distributed as dist

        device = f"cuda:{self.local_rank}" if dist.get_backend() == "nccl" else "cpu"
        flag = torch.tensor([0 if ok else 1], device=device)
        dist.all_reduce(flag)
        return int(flag.item()) == 0

    def close(self) -> None:
        if self.initialized:
            import torch.distributed as dist

            dist.destroy_process_group()


def _work_dir(out: Path) -> Path:
    return out.with_name(out.name + ".work")


def run(args: argparse.Namespace) -> int:
    """Generate the samples, assemble the ``.npz`` and write the recipe card."""
    from irepa import __version__
    from irepa.diffusion.generate import check_sampler, velocity_function
    from irepa.diffusion.paths import get_path
    from irepa.diffusion.samplers import generator_seed, sample_labels
    from irepa.metrics.generative.evaluator import label_balance, recipe_card_path
    from irepa.metrics.generative.npz import IndexedImageWriter
    from irepa.models.io import load_inference
    from irepa.utils.device import resolve_device
    from irepa.utils.io import sha256_file, write_json

    if args.batch_size < 1:
        raise IrepaError(f"--batch-size must be >= 1, got {args.batch_size}")
    if not args.out.name.endswith(".npz"):
        raise IrepaError(f"--out {str(args.out)!r} must end in .npz (the ADM sample format)")
    if args.out.exists() and not args.overwrite:
        raise IrepaError(f"{str(args.out)!r} exists; pass --overwrite to replace it")
    dist = _Dist(dict(os.environ))
    try:
        device = str(resolve_device(args.device, local_rank=dist.local_rank))  # default: cuda:LOCAL_RANK or cpu
        started = time.time()
        # Weights stay float32; --dtype bfloat16/float16 runs the forward under autocast (times and the sampler state
        # stay full precision: a bf16 t would round 0.996 to 0.99609375).
        model_dtype = getattr(torch, args.dtype)
        model, meta = load_inference(args.snapshot, device=device, dtype=torch.float32)
        snapshot_sha = sha256_file(args.snapshot)
        diffusion = meta["diffusion"]
        prediction = str(diffusion.get("prediction", "v"))
        # A MeanFlow snapshot records its sampler ("meanflow") and default steps; other snapshots: SDE, 250 steps.
        sampler_name = args.sampler or str(diffusion.get("sampler", "sde"))
        check_sampler(prediction, sampler_name)
        recipe = SampleRecipe(
            snapshot_sha256=snapshot_sha,
            num_samples=args.num_samples,
            sampler=sampler_name,
            steps=args.steps if args.steps is not None else int(diffusion.get("steps", 250)),
            cfg_scale=args.cfg_scale,
            guidance_interval=(args.guidance_low, args.guidance_high),
            heun_guidance_time=args.heun_guidance_time,
            labels=args.labels,
            seed=args.seed,
            dtype=args.dtype,
            vae=args.vae,
        )
        num_classes = int(getattr(model, "num_classes", 0))
        null_label = getattr(model, "null_label", None) if getattr(model, "has_null_class", True) else None
        if recipe.cfg_scale > 1 and null_label is None:
            raise IrepaError("--cfg-scale > 1 needs a model with a null class (trained with label dropout)")
        labels = (
            sample_labels(recipe.num_samples, num_classes, recipe.labels, recipe.seed)
            if num_classes > 0
            else torch.zeros(recipe.num_samples, dtype=torch.long)  # unconditional: every label is the null label 0
        )
        space = meta["space"]
        decode, vae_id = build_decoder(space, args, device)
        latent_shape = (model.in_channels, *model.input_size)
        probe = decode(torch.zeros(1, *latent_shape, device=device))
        image_shape = (int(probe.shape[2]), int(probe.shape[3]), int(probe.shape[1]))
        if image_shape[2] != 3:
            raise IrepaError(f"decoded images have {image_shape[2]} channels; the ADM format needs RGB")
        path = get_path(meta["diffusion"]["path"])

        # The sampler's model function from the snapshot's prediction type (MeanFlow: u(z, r, t, y)).
        velocity = velocity_function(model, diffusion, dtype=model_dtype)

        work = _work_dir(args.out)
        fingerprint = dataclasses.asdict(recipe)
        error: IrepaError | None = None
        if dist.rank == 0:
            try:
                IndexedImageWriter.create(work, recipe.num_samples, image_shape, fingerprint)
            except IrepaError as exc:
                error = exc
        if not dist.all_ok(error is None):
            raise error or IrepaError("rank 0 could not prepare the work folder (see its error)")
        writer = IndexedImageWriter.open(work)
        generated = generate_shard(
            velocity,
            path,
            decode,
            writer,
            labels,
            recipe,
            latent_shape=latent_shape,
            null_label=null_label,
            rank=dist.rank,
            world_size=dist.world_size,
            batch_size=args.batch_size,
            device=device,
            progress=not args.no_progress and dist.rank == 0 and sys.stderr.isatty(),
        )
        dist.barrier()
        if dist.rank != 0:
            return 0
        writer.finalize(args.out, {"labels": labels.numpy()})
        card = {
            "format": RECIPE_FORMAT,
            "irepa_version": __version__,
            "samples": str(args.out),
            "num_samples": recipe.num_samples,
            "image_size": list(image_shape[:2]),
            "snapshot": {
                "path": str(args.snapshot),
                "sha256": snapshot_sha,
                "model": meta["model"],
                "ema": meta.get("ema"),
                "step": meta.get("step"),
                "diffusion": meta["diffusion"],
                "space": space,
            },
            "vae": None if space["kind"] == "pixel" else {"id": vae_id, "weights": str(args.vae_weights or "")},
            "sampler": {
                "name": recipe.sampler,
                "steps": recipe.steps,
                "nfe_per_sample": nfe_per_sample(recipe.sampler, recipe.steps),
                "cfg_scale": recipe.cfg_scale,
                "guidance_interval": list(recipe.guidance_interval),
                "null_label": null_label,
                "heun_guidance_time": recipe.heun_guidance_time if recipe.sampler == "heun" else None,
                "sde_last_time": 0.04 if recipe.sampler == "sde" else None,
                "dtype": recipe.dtype,
            },
            "seeds": {
                "seed": recipe.seed,
                "per_sample": "torch.Generator (CPU) seeded with (index + seed * 0x9E3779B9) mod 2**32",
                "first_sample_generator_seed": generator_seed(recipe.seed, 0),
            },
            "labels": {"scheme": recipe.labels, "num_classes": num_classes, **label_balance(labels.numpy())},
            "run": {
                "world_size": dist.world_size,
                "batch_size_per_process": args.batch_size,
                "device": device,
                "generated_now": generated,
                "seconds": round(time.time() - started, 1),
            },
        }
        write_json(recipe_card_path(args.out), card)
        print(
            f"wrote {args.out}: {recipe.num_samples} samples {image_shape[0]}x{image_shape[1]} "
            f"({recipe.sampler}, {recipe.steps} steps, cfg {recipe.cfg_scale}); recipe card "
            f"{recipe_card_path(args.out)}"
        )
        return 0
    finally:
        dist.close()
