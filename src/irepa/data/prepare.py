"""``irepa data prepare``: image folders (ImageNet layout) or synthetic data → a sharded image store.

Folder stores: every image under ``ROOT`` is decoded to RGB, brought to ``resolution`` × ``resolution`` with ADM's
centre crop (:func:`irepa.utils.images.center_crop_adm`, the REPA/iREPA/ADM protocol) and written as uint8
``(N, H, W, 3)`` shards of ``shard_size`` images, keyed by their path relative to ``ROOT`` without extension
(``n01440764/n01440764_10026``). Class labels come from the first folder level (``ROOT/CLASS/IMAGE``, classes
sorted by name as in torchvision's ImageFolder); a flat folder gives an unlabelled store (every label 0).

Shard ``i`` always holds the images ``[i·shard_size, (i+1)·shard_size)`` of the key-sorted file list (minus any
skipped ones), so shards can be written in any order by any number of worker processes, and an interrupted run
resumes where it stopped (see :mod:`irepa.data.store`). Output bytes do not depend on the number of workers.
"""

from __future__ import annotations

import hashlib
import itertools
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import FIRST_EXCEPTION, ProcessPoolExecutor, wait
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import numpy as np

from irepa.data.store import BuildReport, StoreBuild, shard_name, write_shard
from irepa.errors import IrepaError
from irepa.utils.images import ReadStats, class_label_map, image_key, list_images, load_image

__all__ = ["prepare_folder_store", "prepare_synthetic_store", "run_tasks"]

COMMAND = "irepa data prepare"


def run_tasks(
    fn: Callable[[Any], dict[str, Any]],
    tasks: Sequence[Any],
    *,
    workers: int,
    on_result: Callable[[dict[str, Any]], None],
) -> None:
    """Run ``fn`` over ``tasks`` in ``workers`` spawned processes (in-process when ``workers <= 1``).

    Results are handed to ``on_result`` as they complete. The first exception cancels the pending tasks (running
    ones finish: they write complete shards) and is re-raised.
    """
    if workers <= 1 or len(tasks) <= 1:
        for task in tasks:
            on_result(fn(task))
        return
    # spawn, not fork: workers start clean (no inherited torch/OpenMP state), the same on Linux and macOS.
    with ProcessPoolExecutor(max_workers=min(workers, len(tasks)), mp_context=get_context("spawn")) as pool:
        pending = {pool.submit(fn, task) for task in tasks}
        try:
            while pending:
                done, pending = wait(pending, return_when=FIRST_EXCEPTION)
                for future in done:
                    on_result(future.result())
        except BaseException:
            for future in pending:
                future.cancel()
            raise


def _progress(total: int, desc: str, enabled: bool):
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="img", disable=not enabled, dynamic_ncols=True)


# ----------------------------------------------------------------------------------------------------------------------
# Folder → store


def _folder_shard(task: dict[str, Any]) -> dict[str, Any]:
    """Worker: decode, crop and write one shard of a folder store."""
    resolution = task["resolution"]
    stats = ReadStats()
    images = np.empty((len(task["files"]), resolution, resolution, 3), dtype=np.uint8)
    keys: list[str] = []
    labels: list[int] = []
    skipped: list[dict[str, str]] = []
    for path, key, label in zip(task["files"], task["keys"], task["labels"]):
        try:
            images[len(keys)] = load_image(path, size=resolution, crop=task["crop"], stats=stats)
        except IrepaError as exc:
            if task["on_error"] == "fail":
                raise IrepaError(f"{exc} (pass --on-error skip to skip bad images)") from exc
            # Record the key, not the absolute path: shard records must not depend on where the folder lives.
            skipped.append({"key": key, "reason": str(exc).replace(repr(str(path)), repr(key))})
            continue
        keys.append(key)
        labels.append(label)
    n = len(keys)
    write_shard(
        task["store"],
        task["name"],
        {"images": images[:n], "labels": np.asarray(labels, dtype=np.int64)},
        keys,
        {"assigned": len(task["files"]), "skipped": skipped, "converted": stats.converted},
    )
    return {
        "name": task["name"],
        "count": n,
        "assigned": len(task["files"]),
        "skipped": len(skipped),
        "converted": stats.converted,
    }


def _hash_lines(lines: Iterable[str]) -> str:
    digest = hashlib.sha256()
    for line in lines:
        digest.update(line.encode())
        digest.update(b"\n")
    return digest.hexdigest()


def _plan_shards(
    out: str | Path, settings: dict[str, Any], total: int, shard_size: int, verify: str
) -> tuple[StoreBuild, BuildReport, list[str], list[tuple[int, str, int, int]]]:
    """Open (or resume) a store build of ``total`` records.

    Returns:
        The build, its report (``already_complete`` set when nothing is left to do), all shard names, and the shards
        still to write as ``(index, name, first record, end record)``.
    """
    build = StoreBuild(out, settings, command=COMMAND)
    names = [shard_name(i) for i in range(-(-total // shard_size))]
    report = BuildReport(store=Path(out), shards_total=len(names))
    if build.complete:
        from irepa.data.store import load_manifest

        report.already_complete, report.count = True, int(load_manifest(out)["count"])
        return build, report, names, []
    pending = []
    for i, name in enumerate(names):
        if build.completed(name, verify=verify) is not None:
            report.shards_reused += 1
        else:
            pending.append((i, name, i * shard_size, min((i + 1) * shard_size, total)))
    return build, report, names, pending


def prepare_folder_store(
    images_dir: str | Path,
    out: str | Path,
    *,
    resolution: int,
    crop: str = "adm",
    shard_size: int = 1000,
    workers: int = 1,
    on_error: str = "skip",
    verify: str = "hash",
    progress: bool = False,
) -> BuildReport:
    """Build (or resume) an image store from an image folder.

    Args:
        images_dir: Root folder; ``ROOT/CLASS/IMAGE`` gives class labels, a flat folder an unlabelled store.
        out: Store directory (created; resumed when it holds a partial store built with the same settings).
        resolution: Output side length in pixels (256 or 512 for ImageNet).
        crop: ``"adm"`` (ADM centre crop, the default and the REPA/iREPA protocol) or ``"resize"``.
        shard_size: Images per shard (memory per worker ≈ shard_size · resolution² · 3 bytes).
        workers: Worker processes decoding images.
        on_error: ``"skip"`` unreadable/16-bit images (counted in the manifest) or ``"fail"`` on the first one.
        verify: How existing shards are checked on resume: ``"hash"`` (SHA-256) or ``"size"``.
        progress: Show a progress bar.

    Raises:
        IrepaError: Missing/empty folder, duplicate keys, mixed flat/class layout, a bad image with
            ``on_error="fail"``, an ``out`` that holds another store or other files.
    """
    if resolution < 8:
        raise IrepaError(f"resolution {resolution} is too small; use e.g. 256 or 512")
    if shard_size < 1:
        raise IrepaError(f"shard size {shard_size} must be at least 1")
    if crop not in ("adm", "resize"):
        raise IrepaError(f"crop {crop!r} is not one of 'adm', 'resize'")
    if on_error not in ("skip", "fail"):
        raise IrepaError(f"on_error {on_error!r} is not one of 'skip', 'fail'")
    start_time = time.perf_counter()
    root = Path(images_dir).resolve()
    files = list_images(root)
    keys = [image_key(p, root) for p in files]
    duplicates = sorted({k for k, nxt in itertools.pairwise(keys) if k == nxt})
    if duplicates:
        raise IrepaError(
            f"{len(duplicates)} images share a key (same name, different extension), e.g. {duplicates[0]!r}; "
            "keep one file per name"
        )
    if any("/" in k for k in keys):
        class_map: dict[str, int] | None = class_label_map(keys)
        labels = [class_map[k.split("/", 1)[0]] for k in keys]
    else:
        class_map, labels = None, [0] * len(keys)

    source = {"type": "folder", "num_files": len(keys), "keys_sha256": _hash_lines(keys)}
    settings = {"kind": "images", "source": source, "resolution": resolution, "crop": crop, "shard_size": shard_size}
    build, report, names, pending = _plan_shards(out, settings, len(keys), shard_size, verify)
    if report.already_complete:
        return report
    tasks = []
    for _, name, lo, hi in pending:
        tasks.append(
            {
                "store": str(build.dir),
                "name": name,
                "files": [str(p) for p in files[lo:hi]],
                "keys": keys[lo:hi],
                "labels": labels[lo:hi],
                "resolution": resolution,
                "crop": crop,
                "on_error": on_error,
            }
        )
    bar = _progress(sum(len(t["files"]) for t in tasks), f"prepare {resolution}px", progress)

    def on_result(result: dict[str, Any]) -> None:
        report.shards_written += 1
        report.records_written += result["count"]
        bar.update(result["assigned"])

    try:
        run_tasks(_folder_shard, tasks, workers=workers, on_result=on_result)
    finally:
        bar.close()

    records = [build.completed(name, verify="size") for name in names]
    if records and all(r is not None and r["count"] == 0 for r in records):
        # Refuse before writing a manifest: an empty store would only fail later, in training.
        raise IrepaError(f"no image of {str(root)!r} could be read (all {len(keys)} skipped); check the files")
    skipped = [s for r in records if r for s in r["skipped"]]
    report.skipped = len(skipped)
    report.converted = sum(r["converted"] for r in records if r)
    header = {
        "kind": "images",
        "source": source,
        "source_path": str(root),
        "resolution": resolution,
        "crop": crop,
        "fields": {
            "images": {"dtype": "uint8", "shape": [resolution, resolution, 3]},
            "labels": {"dtype": "int64", "shape": []},
        },
        "labels": "folders" if class_map is not None else "none",
        "num_classes": len(class_map) if class_map is not None else 1,
        "class_names": sorted(class_map, key=class_map.__getitem__) if class_map is not None else None,
        "skipped": {"count": len(skipped), "keys": [s["key"] for s in skipped]},
        "converted_to_rgb": report.converted,
    }
    manifest = build.finalize(header, names)
    report.count, report.finalized = manifest["count"], True
    report.seconds = time.perf_counter() - start_time
    return report


# ----------------------------------------------------------------------------------------------------------------------
# Synthetic data → store


def synthetic_class_folder(label: int, name: str) -> str:
    """``03_cross``: the class folder of :func:`irepa.data.synthetic.write_folder` (sorts in label order)."""
    return f"{label:02d}_{name}"


def synthetic_key(label: int, name: str, index: int) -> str:
    """Key of synthetic image ``index``: ``03_cross/000013``.

    The same key as in folders written by :func:`irepa.data.synthetic.write_folder`, so a synthetic store and a
    store prepared from such a folder pair by key.
    """
    return f"{synthetic_class_folder(label, name)}/{index:06d}"


def _synthetic_shard(task: dict[str, Any]) -> dict[str, Any]:
    """Worker: generate and write one shard of a synthetic store."""
    from irepa.data import synthetic

    batch = synthetic.generate(
        task["count"],
        image_size=task["resolution"],
        num_classes=task["num_classes"],
        seed=task["seed"],
        start=task["start"],
    )
    names = synthetic.class_names(task["num_classes"])
    labels = batch.labels.numpy().astype(np.int64)
    keys = [synthetic_key(label, names[label], task["start"] + j) for j, label in enumerate(labels.tolist())]
    arrays = {
        "images": batch.images.permute(0, 2, 3, 1).contiguous().numpy(),
        "masks": batch.masks.numpy().astype(bool),
        "labels": labels,
    }
    write_shard(task["store"], task["name"], arrays, keys, {"assigned": task["count"], "skipped": [], "converted": 0})
    return {"name": task["name"], "count": task["count"], "assigned": task["count"]}


def prepare_synthetic_store(
    out: str | Path,
    *,
    num_images: int,
    resolution: int = 32,
    num_classes: int = 10,
    seed: int = 0,
    shard_size: int = 1000,
    workers: int = 1,
    verify: str = "hash",
    progress: bool = False,
) -> BuildReport:
    """Build (or resume) an image store of :mod:`irepa.data.synthetic` images, with labels and foreground masks.

    Image ``i`` depends only on ``(seed, i)``, so shards are generated independently (and in parallel).

    Raises:
        IrepaError: Bad sizes, or an ``out`` that holds another store or other files.
    """
    if num_images < 1:
        raise IrepaError(f"--synthetic {num_images}: the number of images must be at least 1")
    if shard_size < 1:
        raise IrepaError(f"shard size {shard_size} must be at least 1")
    from irepa.data import synthetic

    start_time = time.perf_counter()
    names_of_classes = synthetic.class_names(num_classes)
    source = {"type": "synthetic", "num_images": num_images, "num_classes": num_classes, "seed": seed}
    settings = {"kind": "images", "source": source, "resolution": resolution, "crop": "none", "shard_size": shard_size}
    build, report, names, pending = _plan_shards(out, settings, num_images, shard_size, verify)
    if report.already_complete:
        return report
    tasks = []
    for _, name, start, end in pending:
        count = end - start
        tasks.append(
            {
                "store": str(build.dir),
                "name": name,
                "start": start,
                "count": count,
                "resolution": resolution,
                "num_classes": num_classes,
                "seed": seed,
            }
        )
    bar = _progress(sum(t["count"] for t in tasks), f"synthetic {resolution}px", progress)

    def on_result(result: dict[str, Any]) -> None:
        report.shards_written += 1
        report.records_written += result["count"]
        bar.update(result["count"])

    try:
        run_tasks(_synthetic_shard, tasks, workers=workers, on_result=on_result)
    finally:
        bar.close()
    header = {
        "kind": "images",
        "source": source,
        "resolution": resolution,
        "crop": "none",
        "fields": {
            "images": {"dtype": "uint8", "shape": [resolution, resolution, 3]},
            "masks": {"dtype": "bool", "shape": [resolution, resolution]},
            "labels": {"dtype": "int64", "shape": []},
        },
        "labels": "synthetic",
        "num_classes": num_classes,
        "class_names": [synthetic_class_folder(i, n) for i, n in enumerate(names_of_classes)],
        "skipped": {"count": 0, "keys": []},
        "converted_to_rgb": 0,
    }
    manifest = build.finalize(header, names)
    report.count, report.finalized = manifest["count"], True
    report.seconds = time.perf_counter() - start_time
    return report
