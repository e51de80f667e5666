"""The ADM evaluation protocol (guided-diffusion ``evaluations/evaluator.py``) in PyTorch.

Features, then statistics, then metrics:

1. Sample images stream from ``arr_0`` of the samples ``.npz`` in batches of 64 through the FID Inception
   (:mod:`irepa.metrics.generative.inception`): pool features (kept, for precision/recall), spatial features
   (float64 running moments only) and unbiased logits (kept, for IS).
2. The reference ``.npz`` is read as ADM reads it: if it has ``mu``, the stored ``mu/sigma`` and ``mu_s/sigma_s``
   are used; otherwise they are computed from its ``arr_0``. Its ``arr_0`` images (10K in ADM's reference batches)
   always provide the reference pool features for precision/recall.
3. Inception Score (10 splits of 5000 for 50K samples), FID, sFID (float64 Fréchet distance with scipy ``sqrtm``),
   precision and recall (k = 3), reported in ADM's order.

Checks before any heavy work: key, dtype, layout, count (``num_samples``), finite values, image size against the
reference's images (Inception resizes everything to 299 px, but samples and references of different sizes give
numbers nobody else can reproduce: refused unless ``allow_size_mismatch``), and a class-balance report when the
samples file stores ``labels``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from irepa import __version__
from irepa.errors import IrepaError
from irepa.metrics.generative.inception import InceptionFeatures
from irepa.metrics.generative.npz import (
    NpzArrayReader,
    check_image_array,
    count_non_finite,
    npz_keys,
    read_npz_array,
    remove_quietly,
    write_npz,
)
from irepa.metrics.generative.scores import inception_score, precision_recall
from irepa.metrics.generative.stats import FeatureStatistics, RunningMoments, frechet_distance
from irepa.utils.io import sha256_file

__all__ = [
    "EVALUATOR_VERSION",
    "Activations",
    "EvalSettings",
    "ImageSource",
    "Reference",
    "SampleFile",
    "build_reference",
    "compute_activations",
    "evaluate_adm",
    "label_balance",
    "open_samples",
    "read_reference",
    "recipe_card_path",
]

#: Version of the evaluation protocol implementation, recorded in every result.
EVALUATOR_VERSION = f"irepa-adm-torch/1 (irepa {__version__})"
#: ADM's sample count for the reported numbers.
ADM_NUM_SAMPLES = 50_000

Detector = Callable[[torch.Tensor], InceptionFeatures]


def recipe_card_path(samples_npz: str | Path) -> Path:
    """The recipe card written beside a samples file: ``samples.npz`` → ``samples.recipe.json``."""
    p = Path(samples_npz)
    return p.with_name(p.name.removesuffix(".npz") + ".recipe.json")


# ----------------------------------------------------------------------------------------------------------------------
# Image sources


class ImageSource:
    """uint8 image batches (B, 3, H, W) from an ADM ``.npz`` (``arr_0``) or an image folder, streamed.

    Args:
        path: An ``.npz`` file or a folder of images.
        resolution: For folders: ADM centre crop to this size (None: images must already share one size).
        limit: Use only the first ``limit`` images.
    """

    def __init__(self, path: str | Path, *, resolution: int | None = None, limit: int | None = None) -> None:
        self.path = Path(path)
        self._reader: NpzArrayReader | None = None
        self._files: list[Path] | None = None
        self.resolution = resolution
        if self.path.is_dir():
            from irepa.utils.images import list_images, load_image

            self._files = list_images(self.path)
            total = len(self._files)
            first = load_image(self._files[0], size=resolution, crop="adm")
            self.image_size = (int(first.shape[0]), int(first.shape[1]))
        else:
            self._reader = NpzArrayReader(self.path, "arr_0")
            if np.issubdtype(self._reader.dtype, np.floating):
                bad = count_non_finite(self._reader)
                extra = f" and {bad} non-finite values (NaN/inf)" if bad else ""
                self._reader.close()
                raise IrepaError(
                    f"{str(self.path)!r} arr_0 is {self._reader.dtype}{extra}; expected uint8 images (N, H, W, 3): "
                    "check the sampler output for NaNs and convert with ((x + 1) * 127.5).round().clip(0, 255)"
                )
            self.image_size = check_image_array(self._reader.shape, self._reader.dtype, f"{str(self.path)!r} arr_0")
            total = len(self._reader)
        if limit is not None and limit > total:
            self.close()
            raise IrepaError(f"{str(self.path)!r} holds {total} images, fewer than the {limit} requested")
        self.available = total
        self.count = total if limit is None else limit

    def __len__(self) -> int:
        return self.count

    def batches(self, batch_size: int) -> Iterator[torch.Tensor]:
        """Yield uint8 (B, 3, H, W) batches of the first ``len(self)`` images, in order."""
        if self._reader is not None:
            for batch in self._reader.iter_batches(batch_size, self.count):
                yield torch.from_numpy(batch).permute(0, 3, 1, 2)
        else:
            from irepa.utils.images import iter_image_batches

            files = self._files[: self.count]
            for batch, _ in iter_image_batches(files, batch_size, size=self.resolution, crop="adm", on_error="fail"):
                yield batch

    def close(self) -> None:
        """Release the underlying file."""
        if self._reader is not None:
            self._reader.close()


# ----------------------------------------------------------------------------------------------------------------------
# Activations


@dataclasses.dataclass
class Activations:
    """What the evaluator keeps of a set of images.

    Attributes:
        pool: Pool features (N, 2048), float32, CPU (for precision/recall).
        pool_stats: Statistics of the pool features (FID).
        spatial_stats: Statistics of the spatial features (sFID).
        logits: Unbiased logits (N, 1008), float32, CPU (for IS), or None if not kept.
    """

    pool: torch.Tensor
    pool_stats: FeatureStatistics
    spatial_stats: FeatureStatistics
    logits: torch.Tensor | None


def _progress(iterable, total: int | None, desc: str, enabled: bool):
    if not enabled:
        return iterable
    from tqdm.auto import tqdm

    return tqdm(iterable, total=total, desc=desc, unit="batch", leave=False)


def compute_activations(
    detector: Detector,
    batches: Iterator[torch.Tensor],
    *,
    device: str | torch.device = "cpu",
    keep_logits: bool = True,
    keep: np.ndarray | None = None,
    on_batch: Callable[[int, torch.Tensor], None] | None = None,
    progress: bool = False,
    total_batches: int | None = None,
    desc: str = "features",
) -> Activations:
    """Run ``detector`` over uint8 batches (B, 3, H, W), accumulating statistics in float64.

    Args:
        detector: uint8 images → :class:`InceptionFeatures` (the FID Inception, or a test double).
        batches: The image stream.
        device: Where the detector runs.
        keep_logits: Keep the logits (needed for IS of samples, not for references).
        keep: Optional boolean mask over the stream (N,): pool features are kept only for these images.
        on_batch: Called with ``(start_index, images)`` for every batch (e.g. to store a subset of images).
        progress: Show a progress bar.
        total_batches: For the progress bar.
        desc: Progress bar label.
    """
    pool_moments, spatial_moments = RunningMoments(), RunningMoments()
    pools, logits = [], []
    start = 0
    for images in _progress(batches, total_batches, desc, progress):
        feats = detector(images.to(device))
        pool_moments.update(feats.pool)
        spatial_moments.update(feats.spatial)
        pool = feats.pool.float().cpu()
        if keep is not None:
            pool = pool[torch.from_numpy(keep[start : start + pool.shape[0]])]
        pools.append(pool)
        if keep_logits:
            logits.append(feats.logits.float().cpu())
        if on_batch is not None:
            on_batch(start, images)
        start += images.shape[0]
    if start == 0:
        raise IrepaError("no images to evaluate")
    return Activations(
        pool=torch.cat(pools),
        pool_stats=pool_moments.statistics(),
        spatial_stats=spatial_moments.statistics(),
        logits=torch.cat(logits) if keep_logits else None,
    )


# ----------------------------------------------------------------------------------------------------------------------
# Samples and references


def label_balance(labels: np.ndarray, num_classes: int | None = None) -> dict[str, Any]:
    """Class-balance report of sample labels: counts per class summarized.

    Returns:
        ``num_labels``, ``num_classes`` (given, or max label + 1), ``classes_present``, ``min_per_class``,
        ``max_per_class``, ``balanced_per_class`` (N / classes) and ``exactly_balanced``.
    """
    labels = np.asarray(labels).astype(np.int64).ravel()
    k = int(num_classes if num_classes is not None else labels.max() + 1)
    counts = np.bincount(labels, minlength=k)
    return {
        "num_labels": int(labels.size),
        "num_classes": k,
        "classes_present": int((counts > 0).sum()),
        "min_per_class": int(counts.min()),
        "max_per_class": int(counts.max()),
        "balanced_per_class": labels.size / k,
        "exactly_balanced": bool(counts.max() - counts.min() <= 1),
    }


@dataclasses.dataclass
class SampleFile:
    """An opened and checked samples file."""

    source: ImageSource
    labels: np.ndarray | None
    num_samples: int
    image_size: tuple[int, int]


def open_samples(path: str | Path, num_samples: int | None = None) -> SampleFile:
    """Open a samples ``.npz`` and check key, dtype, layout, finite values, count and labels.

    Raises:
        IrepaError: One line per problem, naming the file and the fix.
    """
    path = Path(path)
    if path.is_dir():
        raise IrepaError(f"samples {str(path)!r} is a folder; pass the .npz written by irepa sample (key arr_0)")
    if num_samples is not None and num_samples < 1:
        raise IrepaError(f"--num-samples must be >= 1, got {num_samples}")
    source = ImageSource(path)
    if num_samples is not None:
        if source.available < num_samples:
            source.close()
            raise IrepaError(
                f"{str(path)!r} holds {source.available} samples, fewer than the {num_samples} requested; "
                "generate more or lower --num-samples"
            )
        source.count = num_samples
    labels = None
    keys = npz_keys(path)
    if "labels" in keys:
        labels = read_npz_array(path, "labels")
        if labels.ndim != 1 or labels.shape[0] != source.available or not np.issubdtype(labels.dtype, np.integer):
            source.close()
            raise IrepaError(
                f"{str(path)!r} labels have shape {labels.shape} and dtype {labels.dtype}; "
                f"expected integers ({source.available},), one per image"
            )
        labels = labels[: source.count]
    elif "arr_1" in keys:
        # guided-diffusion's sample scripts store class labels as the second array (np.savez(path, images, labels)).
        candidate = read_npz_array(path, "arr_1")
        if candidate.shape == (source.available,) and np.issubdtype(candidate.dtype, np.integer):
            labels = candidate[: source.count]
    return SampleFile(source=source, labels=labels, num_samples=source.count, image_size=source.image_size)


@dataclasses.dataclass
class Reference:
    """A reference batch as ADM reads it.

    Attributes:
        path: The file.
        sha256: Its SHA-256 (recorded with every result).
        pool: Stored pool statistics (``mu``, ``sigma``) or None.
        spatial: Stored spatial statistics (``mu_s``, ``sigma_s``) or None.
        num_images: Number of images in ``arr_0`` (0 if none).
        image_size: ``(H, W)`` of the reference images (from ``arr_0`` or a stored ``image_size``), or None.
        pool_features: Cached pool features of ``arr_0`` (written by ``irepa eval ref``) or None.
        pool_features_detector: SHA-256 of the Inception weights that produced ``pool_features``.
    """

    path: Path
    sha256: str
    pool: FeatureStatistics | None
    spatial: FeatureStatistics | None
    num_images: int
    image_size: tuple[int, int] | None
    pool_features: np.ndarray | None = None
    pool_features_detector: str | None = None


def _count_label(n: int) -> str:
    """``50K``, ``10K``, ``2.5K``, ``64``: a sample count as FID-N is named."""
    if n >= 1000:
        return f"{n / 1000:g}K"
    return str(n)


def _stored_statistics(path: Path, mu_key: str, sigma_key: str) -> FeatureStatistics:
    """Statistics stored in a reference ``.npz``, checked (shapes, finite, symmetric) before any maths uses them."""
    what = f"reference {str(path)!r} {mu_key}/{sigma_key}"
    try:
        stats = FeatureStatistics(read_npz_array(path, mu_key), read_npz_array(path, sigma_key))
    except IrepaError as exc:
        raise IrepaError(f"{what}: {exc}") from exc
    return stats.check(what)


def read_reference(path: str | Path) -> Reference:
    """Read a reference ``.npz`` (ADM's ``VIRTUAL_imagenet256_labeled.npz`` or one from ``irepa eval ref``).

    Raises:
        IrepaError: Missing file, incomplete or invalid statistics (shapes, NaN/inf, asymmetric covariance), bad
            images, or neither statistics nor images.
    """
    path = Path(path)
    keys = set(npz_keys(path))
    pool = spatial = None
    if "mu" in keys or "sigma" in keys:
        if not {"mu", "sigma"} <= keys:
            raise IrepaError(f"reference {str(path)!r} has only one of mu/sigma; it needs both (or neither)")
        pool = _stored_statistics(path, "mu", "sigma")
    if {"mu_s", "sigma_s"} <= keys:
        spatial = _stored_statistics(path, "mu_s", "sigma_s")
    num_images, image_size = 0, None
    if "arr_0" in keys:
        with NpzArrayReader(path, "arr_0") as reader:
            image_size = check_image_array(reader.shape, reader.dtype, f"reference {str(path)!r} arr_0")
            num_images = len(reader)
    elif "image_size" in keys:
        image_size = tuple(int(v) for v in read_npz_array(path, "image_size"))
    if pool is None and num_images == 0:
        raise IrepaError(
            f"reference {str(path)!r} has neither statistics (mu, sigma) nor images (arr_0); build one with "
            "'irepa eval ref --images DIR --out REF.npz' or use ADM's VIRTUAL_imagenet256_labeled.npz"
        )
    features = detector_id = None
    if "irepa_pool_features" in keys and "irepa_inception_sha256" in keys:
        features = read_npz_array(path, "irepa_pool_features")
        detector_id = str(read_npz_array(path, "irepa_inception_sha256"))
    return Reference(
        path=path,
        sha256=sha256_file(path),
        pool=pool,
        spatial=spatial,
        num_images=num_images,
        image_size=image_size,
        pool_features=features,
        pool_features_detector=detector_id,
    )


# ----------------------------------------------------------------------------------------------------------------------
# Evaluation


@dataclasses.dataclass(frozen=True)
class EvalSettings:
    """Evaluator settings (defaults are ADM's); recorded with every result."""

    batch_size: int = 64
    pr_k: int = 3
    pr_row_batch: int = 10_000
    pr_col_batch: int = 10_000
    pr_distance_dtype: str = "float32"
    is_split_size: int = 5000
    fid_eps: float = 1e-6
    allow_size_mismatch: bool = False

    def __post_init__(self) -> None:
        if self.pr_distance_dtype not in ("float16", "float32", "float64"):
            raise IrepaError(f"pr_distance_dtype must be float16, float32 or float64, got {self.pr_distance_dtype!r}")
        if self.batch_size < 1 or self.pr_k < 1 or self.is_split_size < 1:
            raise IrepaError("batch_size, pr_k and is_split_size must be >= 1")


def _num_batches(n: int, batch_size: int) -> int:
    return -(-n // batch_size)


def evaluate_adm(
    samples: str | Path,
    reference: str | Path | Reference,
    detector: Detector,
    *,
    detector_id: str | None = None,
    num_samples: int | None = None,
    settings: EvalSettings | None = None,
    device: str | torch.device = "cpu",
    progress: bool = False,
    log: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Evaluate a samples ``.npz`` against a reference with the ADM protocol.

    Args:
        samples: Samples file (``arr_0`` uint8 NHWC; optional ``labels``).
        reference: Reference file, or one already read by :func:`read_reference`.
        detector: The FID Inception (:func:`~irepa.metrics.generative.inception.load_inception`) or a stand-in.
        detector_id: Identifies the detector's weights (their SHA-256); cached reference features are used only
            when it matches.
        num_samples: Evaluate the first ``num_samples`` samples (all by default); more than the file holds is an
            error.
        settings: :class:`EvalSettings` (ADM defaults).
        device: Where the detector and the distance computations run.
        progress: Show progress bars.
        log: Receives one-line notes (e.g. the class-balance report).

    Returns:
        A JSON-ready dict: ``metrics`` (``inception_score``, ``fid``, ``sfid``, ``precision``, ``recall``; a metric
        the reference cannot support is None), ``samples``, ``reference``, ``evaluator`` and ``notes``.
    """
    settings = settings or EvalSettings()
    log = log or (lambda _msg: None)
    notes: list[str] = []
    ref = reference if isinstance(reference, Reference) else read_reference(reference)
    sample_file = open_samples(samples, num_samples)
    try:
        if ref.image_size is not None and ref.image_size != sample_file.image_size:
            msg = (
                f"samples are {sample_file.image_size[0]}x{sample_file.image_size[1]} but the reference images are "
                f"{ref.image_size[0]}x{ref.image_size[1]}"
            )
            if not settings.allow_size_mismatch:
                raise IrepaError(
                    f"{msg}; Inception resizes both to 299 px but the numbers are not comparable to published ones: "
                    "use a reference at the samples' resolution (or pass --allow-size-mismatch)"
                )
            notes.append(msg + " (allowed by --allow-size-mismatch)")
        n = sample_file.num_samples
        if n != ADM_NUM_SAMPLES:
            notes.append(f"{n} samples: FID-{_count_label(n)} is biased relative to FID-50K; compare like with like")
        balance = None
        if sample_file.labels is not None:
            balance = label_balance(sample_file.labels, num_classes=None)
            log(
                f"labels: {balance['classes_present']}/{balance['num_classes']} classes, "
                f"{balance['min_per_class']}-{balance['max_per_class']} per class"
                + (" (exactly balanced)" if balance["exactly_balanced"] else " (random/unbalanced)")
            )

        acts = compute_activations(
            detector,
            sample_file.source.batches(settings.batch_size),
            device=device,
            progress=progress,
            total_batches=_num_batches(n, settings.batch_size),
            desc="samples",
        )

        # Reference pool features for precision/recall: cached ones if the same Inception weights produced them,
        # else computed from arr_0 (which also gives the statistics when the file stores none).
        ref_pool_features: torch.Tensor | None = None
        ref_pool, ref_spatial = ref.pool, ref.spatial
        cached = (
            ref.pool_features is not None
            and detector_id is not None
            and ref.pool_features_detector == detector_id
            and ref_pool is not None
            and ref_spatial is not None
        )
        if cached:
            ref_pool_features = torch.from_numpy(np.ascontiguousarray(ref.pool_features, dtype=np.float32))
        elif ref.num_images:
            ref_source = ImageSource(ref.path)
            try:
                ref_acts = compute_activations(
                    detector,
                    ref_source.batches(settings.batch_size),
                    device=device,
                    keep_logits=False,
                    progress=progress,
                    total_batches=_num_batches(len(ref_source), settings.batch_size),
                    desc="reference",
                )
            finally:
                ref_source.close()
            ref_pool_features = ref_acts.pool
            ref_pool = ref_acts.pool_stats if ref_pool is None else ref_pool
            ref_spatial = ref_acts.spatial_stats if ref_spatial is None else ref_spatial

        metrics: dict[str, float | None] = {
            "inception_score": inception_score(acts.logits, settings.is_split_size),
            "fid": frechet_distance(acts.pool_stats, ref_pool, settings.fid_eps),
            "sfid": None,
            "precision": None,
            "recall": None,
        }
        if ref_spatial is not None:
            metrics["sfid"] = frechet_distance(acts.spatial_stats, ref_spatial, settings.fid_eps)
        else:
            notes.append("the reference has no spatial statistics (mu_s, sigma_s) and no images: sFID not computed")
        if ref_pool_features is not None:
            dtype = getattr(torch, settings.pr_distance_dtype)
            metrics["precision"], metrics["recall"] = precision_recall(
                ref_pool_features.to(device),
                acts.pool.to(device),
                settings.pr_k,
                row_batch=settings.pr_row_batch,
                col_batch=settings.pr_col_batch,
                distance_dtype=dtype,
            )
        else:
            notes.append("the reference has no images (arr_0): precision and recall not computed")
    finally:
        sample_file.source.close()

    return {
        "metrics": metrics,
        "samples": {
            "path": str(Path(samples)),
            "num_samples": n,
            "num_available": sample_file.source.available,
            "image_size": list(sample_file.image_size),
            "labels": balance,
        },
        "reference": {
            "path": str(ref.path),
            "sha256": ref.sha256,
            "num_images": ref.num_images,
            "statistics": "stored" if ref.pool is not None else "computed from arr_0",
            "pool_features": "cached" if cached else ("computed from arr_0" if ref.num_images else None),
        },
        "evaluator": {
            "version": EVALUATOR_VERSION,
            "protocol": "ADM (guided-diffusion evaluations/evaluator.py), PyTorch port",
            "network": "FID Inception-v3 (TF 2015 weights), TF1 bilinear resize to 299",
            "weights_sha256": detector_id,
            "settings": dataclasses.asdict(settings),
        },
        "notes": notes,
    }


def build_reference(
    source: ImageSource,
    out: str | Path,
    detector: Detector,
    *,
    detector_id: str,
    keep_images: int = 10_000,
    store_features: bool = True,
    seed: int = 0,
    batch_size: int = 64,
    device: str | torch.device = "cpu",
    progress: bool = False,
) -> dict[str, Any]:
    """Write a reference ``.npz`` (``mu``, ``sigma``, ``mu_s``, ``sigma_s``, ``arr_0``) from a stream of images.

    Statistics cover all images of ``source``. A seeded random subset of ``keep_images`` of them (ADM's reference
    batches hold 10K) is stored as ``arr_0`` for precision/recall, written through a memory-mapped ``.npy`` so the
    images are never all in memory. With ``store_features`` their pool features and the Inception weights' hash
    are stored too (``irepa_pool_features``, ``irepa_inception_sha256``; ADM ignores these keys), so evaluations
    with the same weights need not recompute them.

    Returns:
        A summary (counts, image size, output path).
    """
    out = Path(out)
    n = len(source)
    if n < 2:
        raise IrepaError(f"{str(source.path)!r} has {n} image(s); reference statistics need at least 2")
    k = min(keep_images, n)
    keep = np.zeros(n, dtype=bool)
    if k:
        keep[np.random.default_rng(seed).choice(n, size=k, replace=False)] = True
    h, w = source.image_size
    tmp = out.with_name(f".{out.name}.arr_0.npy.tmp")
    images = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=(k, h, w, 3)) if k else None
    kept_so_far = 0

    def store(start: int, batch: torch.Tensor) -> None:
        nonlocal kept_so_far
        if images is None:
            return
        mask = keep[start : start + batch.shape[0]]
        chosen = batch[torch.from_numpy(mask)].permute(0, 2, 3, 1).numpy()
        images[kept_so_far : kept_so_far + len(chosen)] = chosen
        kept_so_far += len(chosen)

    try:
        acts = compute_activations(
            detector,
            source.batches(batch_size),
            device=device,
            keep_logits=False,
            keep=keep,
            on_batch=store,
            progress=progress,
            total_batches=_num_batches(n, batch_size),
            desc="reference",
        )
        arrays: dict[str, Any] = {
            "mu": acts.pool_stats.mu,
            "sigma": acts.pool_stats.sigma,
            "mu_s": acts.spatial_stats.mu,
            "sigma_s": acts.spatial_stats.sigma,
            "image_size": np.array([h, w], dtype=np.int64),
            "num_images": np.array(n, dtype=np.int64),
        }
        if images is not None:
            images.flush()
            arrays["arr_0"] = tmp
            if store_features:
                arrays["irepa_pool_features"] = acts.pool.numpy()
                arrays["irepa_inception_sha256"] = np.array(detector_id)
        write_npz(out, arrays)
    finally:
        images = None  # drop the memory map before deleting its file
        remove_quietly(tmp)
    return {"out": str(out), "num_images": n, "stored_images": k, "image_size": [h, w]}
