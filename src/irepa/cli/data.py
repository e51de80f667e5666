"""``irepa data``: prepare image stores, encode VAE latent stores, inspect and verify stores.

Examples::

    irepa data prepare --images /data/imagenet/train --resolution 256 --out stores/in256 --workers 16
    irepa data prepare --synthetic 10000 --num-classes 10 --resolution 32 --out stores/synth32
    torchrun --nproc_per_node 8 -m irepa data encode --store stores/in256 --out stores/in256-sdvae --flip
    irepa data info stores/in256-sdvae --verify
    irepa data make-vae vaes/tiny-random          # a tiny random VAE for the ci preset (smoke tests only)

This is the only data layer that reads the environment: ``RANK``/``WORLD_SIZE``/``LOCAL_RANK`` (set by torchrun or
``accelerate launch``) and ``HF_HUB_OFFLINE``; everything below takes explicit arguments.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path


def _cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS
        return os.cpu_count() or 1


def configure(parser: argparse.ArgumentParser) -> None:
    """Add the ``prepare``, ``encode`` and ``info`` subcommands."""
    sub = parser.add_subparsers(dest="data_command", metavar="SUBCOMMAND", required=True)

    p = sub.add_parser(
        "prepare",
        help="image folder (ImageNet layout) or synthetic data -> sharded image store",
        description="Decode, ADM-centre-crop and shard an image folder (ROOT/CLASS/IMAGE gives labels), or generate "
        "synthetic images with masks, into a store with a manifest. Re-running the same command resumes.",
    )
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--images", metavar="DIR", help="image folder; ROOT/CLASS/IMAGE layout gives class labels")
    source.add_argument("--synthetic", metavar="N", type=int, help="generate N synthetic images instead")
    p.add_argument("--out", metavar="STORE", required=True, help="store directory to create (or resume)")
    p.add_argument(
        "--resolution", type=int, default=None, help="output side in pixels, e.g. 256 or 512 (synthetic: default 32)"
    )
    p.add_argument(
        "--crop",
        choices=("adm", "resize"),
        default="adm",
        help="'adm' centre crop (REPA/ADM protocol, default) or plain bicubic 'resize'",
    )
    p.add_argument("--shard-size", type=int, default=1000, metavar="N", help="images per shard (default 1000)")
    p.add_argument(
        "--workers",
        type=int,
        default=min(_cpu_count(), 32),
        metavar="N",
        help="decoding processes (default: available CPUs, at most 32)",
    )
    p.add_argument(
        "--on-error",
        choices=("skip", "fail"),
        default="skip",
        help="unreadable or 16-bit images: skip and count them (default) or stop",
    )
    p.add_argument("--num-classes", type=int, default=10, metavar="K", help="synthetic: number of classes (10)")
    p.add_argument("--seed", type=int, default=0, help="synthetic: seed; image i depends only on (seed, i)")
    _add_common(p)

    e = sub.add_parser(
        "encode",
        help="image store -> VAE latent store (posterior mean || std), multi-process, resumable",
        description="Encode an image store with an SD-VAE into a latent store sharded like it. For several GPUs "
        "launch with `torchrun --nproc_per_node N -m irepa data encode ...` (or accelerate launch): each rank "
        "takes a disjoint set of shards; rank 0 writes the manifest. Re-running the same command resumes.",
    )
    e.add_argument("--store", metavar="STORE", required=True, help="image store made by `irepa data prepare`")
    e.add_argument("--out", metavar="LATENTS", required=True, help="latent store directory to create (or resume)")
    e.add_argument(
        "--vae",
        default="stabilityai/sd-vae-ft-mse",
        help="VAE hub id (recorded in the store) or a local folder (default stabilityai/sd-vae-ft-mse, REPA's)",
    )
    e.add_argument("--vae-weights", metavar="DIR", help="load the --vae weights from this save_pretrained folder")
    e.add_argument("--vae-revision", metavar="REV", help="hub revision (branch, tag or commit) of the VAE")
    e.add_argument("--cache-dir", metavar="DIR", help="Hugging Face cache folder (default: the library's)")
    e.add_argument(
        "--offline", action="store_true", help="never download (also on when HF_HUB_OFFLINE=1); use the cache"
    )
    e.add_argument("--batch-size", type=int, default=64, help="images per VAE forward pass (default 64)")
    e.add_argument(
        "--flip",
        action="store_true",
        help="also store the latents of horizontally flipped images (flip policy "
        "'also-flipped'; doubles encode time and disk)",
    )
    e.add_argument(
        "--dtype",
        choices=("float32", "float16"),
        default="float32",
        help="stored dtype of the moments (default float32 as REPA; float16 halves the disk)",
    )
    e.add_argument(
        "--encoder-dtype",
        choices=("float32", "float16", "bfloat16"),
        default="float32",
        help="VAE compute dtype (default float32)",
    )
    e.add_argument(
        "--device", default="auto", help="'auto' (cuda:LOCAL_RANK when CUDA is available, else cpu), 'cpu', 'cuda:1'"
    )
    _add_common(e)

    v = sub.add_parser(
        "make-vae",
        help="write a tiny randomly initialised VAE folder (for the ci preset and smoke tests; not for real data)",
        description="Write a tiny random AutoencoderKL (1.0M parameters, 4 latent channels, downsampling 8) with "
        "save_pretrained, to pass to 'irepa data encode --vae DIR' and 'irepa sample --vae-weights DIR'. Its latents "
        "are meaningless: it exercises the machinery (the ci preset), it does not encode images usefully.",
    )
    v.add_argument("out", metavar="OUT", type=Path, help="folder to write (config.json + safetensors weights)")
    v.add_argument("--seed", type=int, default=0, help="seed of the random initialisation (default 0)")
    v.add_argument("--force", action="store_true", help="overwrite an existing folder's files")

    i = sub.add_parser("info", help="summarize a store's manifest; --verify re-hashes every shard")
    i.add_argument("store", metavar="STORE", help="store directory")
    i.add_argument("--verify", action="store_true", help="re-hash every shard file against the manifest")
    i.add_argument("--json", action="store_true", help="print the manifest header as JSON (without the shard list)")


def _add_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--verify",
        choices=("hash", "size"),
        default="hash",
        help="on resume, check finished shards by SHA-256 (default) or by file size only (faster)",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    """Dispatch to the subcommand."""
    return {"prepare": _prepare, "encode": _encode, "make-vae": _make_vae, "info": _info}[args.data_command](args)


def _make_vae(args: argparse.Namespace) -> int:
    from irepa.data.vae import save_random_vae
    from irepa.errors import IrepaError

    out: Path = args.out
    if out.exists() and not out.is_dir():
        raise IrepaError(f"{str(out)!r} is a file; pass a folder for the VAE")
    if out.is_dir() and any(out.iterdir()) and not args.force:
        raise IrepaError(f"{str(out)!r} is not empty; pass --force to overwrite, or choose a new folder")
    save_random_vae(out, seed=args.seed)
    print(f"tiny random VAE (seed {args.seed}) written to {out}; use it with: irepa data encode --vae {out} ...")
    return 0


# ----------------------------------------------------------------------------------------------------------------------


def _prepare(args: argparse.Namespace) -> int:
    from irepa.data.prepare import prepare_folder_store, prepare_synthetic_store
    from irepa.errors import IrepaError

    if args.workers < 1:
        raise IrepaError(f"--workers {args.workers} must be at least 1")
    progress = not args.quiet and sys.stderr.isatty()
    if args.synthetic is not None:
        report = prepare_synthetic_store(
            args.out,
            num_images=args.synthetic,
            resolution=args.resolution or 32,
            num_classes=args.num_classes,
            seed=args.seed,
            shard_size=args.shard_size,
            workers=args.workers,
            verify=args.verify,
            progress=progress,
        )
    else:
        if args.resolution is None:
            raise IrepaError("--resolution is required with --images (e.g. 256 or 512)")
        report = prepare_folder_store(
            args.images,
            args.out,
            resolution=args.resolution,
            crop=args.crop,
            shard_size=args.shard_size,
            workers=args.workers,
            on_error=args.on_error,
            verify=args.verify,
            progress=progress,
        )
    print(report.summary())
    return 0


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    return int(value) if value not in (None, "") else default


def _encode(args: argparse.Namespace) -> int:

    from irepa.data.encode import encode_latent_store, finalize_latent_store
    from irepa.data.store import open_store
    from irepa.data.vae import load_vae
    from irepa.utils.device import resolve_device

    rank, world_size = _env_int("RANK", 0), _env_int("WORLD_SIZE", 1)
    local_rank = _env_int("LOCAL_RANK", 0)
    device = resolve_device(args.device, local_rank=local_rank)
    offline = args.offline or os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")
    images = open_store(args.store, kind="images")
    vae = load_vae(
        args.vae,
        weights=args.vae_weights,
        revision=args.vae_revision,
        cache_dir=args.cache_dir,
        offline=offline,
        device=device,
        dtype=args.encoder_dtype,
    )
    distributed = world_size > 1
    if distributed:
        import torch.distributed as dist

        # gloo is enough: ranks only meet at barriers (the VAE runs independently on each device).
        dist.init_process_group(backend="gloo")
    try:
        report = encode_latent_store(
            images,
            args.out,
            vae,
            batch_size=args.batch_size,
            flip=args.flip,
            dtype=args.dtype,
            rank=rank,
            world_size=world_size,
            verify=args.verify,
            finalize=not distributed,
            progress=not args.quiet and rank == 0 and sys.stderr.isatty(),
        )
        if distributed:
            dist.barrier()
            if rank == 0 and not report.already_complete:
                manifest = finalize_latent_store(images, args.out)
                report.count, report.finalized = manifest["count"], True
            dist.barrier()
    finally:
        if distributed:
            dist.destroy_process_group()
    if rank == 0:
        print(report.summary())
    return 0


def _info(args: argparse.Namespace) -> int:
    from irepa.data.store import open_store

    store = open_store(args.store)
    manifest = store.manifest
    if args.json:
        print(json.dumps({k: v for k, v in manifest.items() if k != "shards"}, indent=2))
    else:
        print(f"{store.kind} store {str(store.path)!r}: {store.count} records in {len(manifest['shards'])} shards")
        print(f"  resolution {manifest.get('resolution')} px, crop {manifest.get('crop')}")
        fields = ", ".join(f"{k} {v['dtype']} {v['shape']}" for k, v in store.fields.items())
        print(f"  fields: {fields}")
        names = store.class_names
        classes = f"{store.num_classes} classes" if names else "unlabelled"
        print(f"  {classes}" + (f" ({', '.join(names[:5])}{', ...' if len(names) > 5 else ''})" if names else ""))
        if store.kind == "latents":
            vae = manifest["vae"]
            print(
                f"  VAE {vae['id']} (encoder sha256 {vae['encoder_sha256'][:12]}), encoder {manifest['encoder_dtype']}"
            )
            print(f"  moments {manifest['moments']} stored as {manifest['dtype']}, latent {manifest['latent_shape']}")
            print(f"  flip policy {manifest['flip']}")
            stats = manifest.get("latent_stats")
            if stats:
                print("  channel mean " + " ".join(f"{m:+.4f}" for m in stats["mean"]))
                print("  channel std  " + " ".join(f"{s:.4f}" for s in stats["std"]))
        skipped = manifest.get("skipped", {}).get("count", 0)
        if skipped:
            print(f"  {skipped} unreadable images skipped")
        size = sum(info["bytes"] for shard in manifest["shards"] for info in shard["files"].values())
        from irepa.utils.io import human_bytes

        print(f"  {human_bytes(size)} of shards; fingerprint {store.fingerprint[:16]}")
    if args.verify:
        problems = store.verify(progress=sys.stderr.isatty())
        if problems:
            for problem in problems[:20]:
                print(f"  corrupt: {problem}", file=sys.stderr)
            from irepa.errors import IrepaError

            raise IrepaError(
                f"{len(problems)} shard(s) of {str(store.path)!r} failed verification; re-create the store (delete the "
                "listed shards' files and re-run its prepare/encode command to rewrite them)"
            )
        print("  verified: every shard matches its SHA-256")
    return 0
