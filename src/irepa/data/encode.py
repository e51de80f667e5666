"""``irepa data encode``: an image store → a latent store of VAE posterior moments (mean ‖ std), sharded like it.

Each image shard ``shard-NNNNN`` becomes the latent shard of the same name holding ``moments`` (N, 2C, h, w) (plus
``moments_flip``, the moments of the horizontally flipped images, with ``flip=True``), the same keys and labels.
Images are encoded in batches (not REPA's batch-of-1 loop). Several processes split the work by shards: rank
``r`` of ``W`` encodes shards ``r, r + W, r + 2W, ...`` (:func:`assign_shards`); the manifest is written once all
shards exist (:func:`finalize_latent_store`, rank 0 after a barrier in the CLI). An interrupted run resumes by
re-running the same command (complete shards are verified and kept).

Per-channel statistics: the manifest's ``latent_stats`` are the mean and standard deviation, per channel, of the
*sampled* latents ``z = mean + std · ε`` that training sees, computed exactly (no sampling noise) from the stored
moments with the law of total variance, ``Var(z) = Var(mean) + E[std²]``, over every latent pixel of every image
(and of its flipped copy when stored). Population statistics (divide by n), accumulated in float64 with Chan's
parallel update, shard by shard in store order, so they do not depend on the number of ranks. They define the
``per-channel`` normalization (:mod:`irepa.data.latents`). ``posterior_mean_std`` (the spread of the means
alone) is recorded too.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from irepa.data.store import BuildReport, Store, StoreBuild, open_store, write_shard
from irepa.data.vae import VAE
from irepa.errors import IrepaError

__all__ = ["assign_shards", "encode_latent_store", "finalize_latent_store"]

COMMAND = "irepa data encode"
STORE_DTYPES = ("float32", "float16")


def assign_shards(num_shards: int, rank: int, world_size: int) -> list[int]:
    """Shards encoded by ``rank`` of ``world_size``: ``rank, rank + W, ...`` (disjoint, covering, deterministic)."""
    if world_size < 1 or not 0 <= rank < world_size:
        raise IrepaError(f"rank {rank} is not in [0, world_size={world_size})")
    return list(range(rank, num_shards, world_size))


# ----------------------------------------------------------------------------------------------------------------------
# Channel statistics (Chan et al.'s parallel mean/variance update, float64)


def _empty_stats(channels: int) -> dict[str, Any]:
    return {"n": 0, "mean": [0.0] * channels, "m2": [0.0] * channels, "var_sum": [0.0] * channels}


def _merge_stats(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    na, nb = a["n"], b["n"]
    if nb == 0:
        return a
    if na == 0:
        return b
    n = na + nb
    ma, mb = np.asarray(a["mean"]), np.asarray(b["mean"])
    delta = mb - ma
    mean = ma + delta * (nb / n)
    m2 = np.asarray(a["m2"]) + np.asarray(b["m2"]) + delta**2 * (na * nb / n)
    var_sum = np.asarray(a["var_sum"]) + np.asarray(b["var_sum"])
    return {"n": n, "mean": mean.tolist(), "m2": m2.tolist(), "var_sum": var_sum.tolist()}


def _batch_stats(moments: np.ndarray) -> dict[str, Any]:
    """Statistics of one batch of stored moments ``(B, 2C, h, w)`` (in their stored dtype, summed in float64)."""
    channels = moments.shape[1] // 2
    mean = moments[:, :channels].astype(np.float64).transpose(1, 0, 2, 3).reshape(channels, -1)
    std = moments[:, channels:].astype(np.float64).transpose(1, 0, 2, 3).reshape(channels, -1)
    mu = mean.mean(axis=1)
    return {
        "n": int(mean.shape[1]),
        "mean": mu.tolist(),
        "m2": ((mean - mu[:, None]) ** 2).sum(axis=1).tolist(),
        "var_sum": (std**2).sum(axis=1).tolist(),
    }


def _final_stats(stats: dict[str, Any], includes_flipped: bool) -> dict[str, Any]:
    n = stats["n"]
    var_means = np.asarray(stats["m2"]) / n
    var_z = var_means + np.asarray(stats["var_sum"]) / n
    return {
        "of": "sampled latents z = mean + std * eps (exact: Var(z) = Var(mean) + E[std^2]), per channel",
        "count": n,
        "includes_flipped": includes_flipped,
        "mean": list(stats["mean"]),
        "std": np.sqrt(var_z).tolist(),
        "posterior_mean_std": np.sqrt(var_means).tolist(),
    }


# ----------------------------------------------------------------------------------------------------------------------
# Encoding


def _settings(images: Store, vae: VAE, *, flip: bool, dtype: str) -> dict[str, Any]:
    resolution = int(images.manifest["resolution"])
    return {
        "kind": "latents",
        "source": {"fingerprint": images.fingerprint, "count": images.count},
        "resolution": resolution,
        "vae": {
            "id": vae.name,
            "revision": vae.revision,
            "encoder_sha256": vae.encoder_sha256(),
            "latent_channels": vae.latent_channels,
            "downsample": vae.downsample,
            # The normalization a tuned VAE came with (irepa export-vae / REPA-E stats); only when it has one.
            **({"latent_stats": vae.latent_stats} if getattr(vae, "latent_stats", None) is not None else {}),
        },
        "encoder_dtype": str(vae.dtype).removeprefix("torch."),
        "dtype": dtype,
        "moments": "mean_std",
        "latent_shape": list(vae.latent_shape(resolution)),
        "flip": "also-flipped" if flip else "none",
    }


def _encode_shard(
    vae: VAE, images: np.ndarray, *, batch_size: int, flip: bool, dtype: np.dtype, name: str, bar: Any
) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    n = images.shape[0]
    channels, h, w = vae.latent_shape(images.shape[1])
    out = {"moments": np.empty((n, 2 * channels, h, w), dtype=dtype)}
    if flip:
        out["moments_flip"] = np.empty_like(out["moments"])
    stats = _empty_stats(channels)
    for lo in range(0, n, batch_size):
        hi = min(lo + batch_size, n)
        x = torch.from_numpy(np.array(images[lo:hi])).permute(0, 3, 1, 2)  # a writable copy of the mapped rows
        for field in out:
            pixels = torch.flip(x, dims=[3]) if field == "moments_flip" else x
            mean, std = vae.encode_moments(pixels)
            moments = torch.cat([mean, std], dim=1).cpu().numpy().astype(dtype)
            if not np.isfinite(moments).all():
                raise IrepaError(
                    f"the VAE produced non-finite moments in {name} (images {lo}..{hi - 1}); encode with "
                    "--encoder-dtype float32, or --dtype float32 if float16 storage overflowed"
                )
            out[field][lo:hi] = moments
            stats = _merge_stats(stats, _batch_stats(moments))
        bar.update(hi - lo)
    return out, stats


def encode_latent_store(
    image_store: str | Path | Store,
    out: str | Path,
    vae: VAE,
    *,
    batch_size: int = 64,
    flip: bool = False,
    dtype: str = "float32",
    rank: int = 0,
    world_size: int = 1,
    verify: str = "hash",
    finalize: bool = True,
    progress: bool = False,
) -> BuildReport:
    """Encode (or resume encoding) this rank's shards of an image store into a latent store.

    Args:
        image_store: A complete image store.
        out: Latent store directory.
        vae: The loaded VAE (:func:`irepa.data.vae.load_vae`) on this rank's device.
        batch_size: Images per VAE forward pass.
        flip: Also store the moments of horizontally flipped images (flip policy ``also-flipped``).
        dtype: Stored dtype of the moments, ``float32`` (REPA's) or ``float16`` (half the disk).
        rank: This process's rank.
        world_size: Number of processes sharing the work.
        verify: How existing shards are checked on resume (``"hash"`` or ``"size"``).
        finalize: Write the manifest at the end (single process; with several, rank 0 calls
            :func:`finalize_latent_store` after all ranks are done).
        progress: Show a progress bar.

    Raises:
        IrepaError: A missing/incomplete image store, an unsupported dtype, non-finite VAE output, or an ``out``
            that holds another store.
    """
    if dtype not in STORE_DTYPES:
        raise IrepaError(f"stored dtype {dtype!r} is not one of {', '.join(STORE_DTYPES)}")
    if batch_size < 1:
        raise IrepaError(f"batch size {batch_size} must be at least 1")
    start_time = time.perf_counter()
    images = image_store if isinstance(image_store, Store) else open_store(image_store, kind="images")
    build = StoreBuild(out, _settings(images, vae, flip=flip, dtype=dtype), command=COMMAND)
    shards = images.manifest["shards"]
    report = BuildReport(store=Path(out), shards_total=len(shards))
    if build.complete:
        report.already_complete, report.count = True, images.count
        return report
    mine = assign_shards(len(shards), rank, world_size)
    todo = [i for i in mine if build.completed(shards[i]["name"], verify=verify) is None]
    report.shards_reused = len(mine) - len(todo)
    wanted = set(todo)
    records = {i: r for i, r in enumerate(images.shard_records()) if i in wanted}
    from tqdm import tqdm

    bar = tqdm(
        total=sum(shards[i]["count"] for i in todo), desc="encode", unit="img", disable=not progress, dynamic_ncols=True
    )
    try:
        for i in todo:
            name = shards[i]["name"]
            arrays, stats = _encode_shard(
                vae,
                images.read_shard("images", i),
                batch_size=batch_size,
                flip=flip,
                dtype=np.dtype(dtype),
                name=name,
                bar=bar,
            )
            arrays["labels"] = np.asarray(images.read_shard("labels", i), dtype=np.int64)
            write_shard(build.dir, name, arrays, records[i]["keys"], {"source_shard": name, "stats": stats})
            report.shards_written += 1
            report.records_written += len(records[i]["keys"])
    finally:
        bar.close()
    if finalize:
        manifest = finalize_latent_store(images, out)
        report.count, report.finalized = manifest["count"], True
    report.seconds = time.perf_counter() - start_time
    return report


def finalize_latent_store(image_store: str | Path | Store, out: str | Path) -> dict[str, Any]:
    """Write the latent store's manifest once every shard exists (combining the per-shard statistics).

    Raises:
        IrepaError: If shards are missing (naming them; re-run the encode command) or ``out`` is not a partial
            latent store of this image store.
    """
    images = image_store if isinstance(image_store, Store) else open_store(image_store, kind="images")
    out = Path(out)
    build_file = out / "build.json"
    if (out / "manifest.json").is_file():
        from irepa.data.store import load_manifest

        return load_manifest(out, kind="latents")
    if not build_file.is_file():
        raise IrepaError(f"{str(out)!r} is not a partial latent store; run `irepa data encode` first")
    import json

    settings = json.loads(build_file.read_text())
    if settings.get("kind") != "latents" or settings.get("source", {}).get("fingerprint") != images.fingerprint:
        raise IrepaError(f"{str(out)!r} is not being encoded from image store {str(images.path)!r}")
    build = StoreBuild(out, settings, command=COMMAND)
    names = [s["name"] for s in images.manifest["shards"]]
    build.require(names)
    stats = _empty_stats(settings["latent_shape"][0])
    for name in names:
        stats = _merge_stats(stats, json.loads((out / f"{name}.json").read_text())["stats"])
    flip = settings["flip"] == "also-flipped"
    shape = settings["latent_shape"]
    fields = {"moments": {"dtype": settings["dtype"], "shape": [2 * shape[0], *shape[1:]]}}
    if flip:
        fields["moments_flip"] = dict(fields["moments"])
    fields["labels"] = {"dtype": "int64", "shape": []}
    header = {
        "kind": "latents",
        "source": {
            **settings["source"],
            "manifest_sha256": images.manifest_sha256,
            "resolution": images.manifest["resolution"],
            "crop": images.manifest.get("crop"),
        },
        "source_path": str(images.path.resolve()),
        "resolution": settings["resolution"],
        "crop": images.manifest.get("crop"),
        "vae": settings["vae"],
        "encoder_dtype": settings["encoder_dtype"],
        "dtype": settings["dtype"],
        "moments": settings["moments"],
        "latent_shape": shape,
        "flip": settings["flip"],
        "fields": fields,
        "num_classes": images.num_classes,
        "class_names": images.class_names,
        "latent_stats": _final_stats(stats, flip) if stats["n"] else None,
    }
    return build.finalize(header, names)
