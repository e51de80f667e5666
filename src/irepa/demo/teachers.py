"""The demo's tiny encoders: ViTs trained by irepa on the synthetic dataset and shipped inside the package.

Four recipes, one training loop (``irepa demo teacher --kind KIND`` runs it; the shipped assets in ``irepa/assets``
are exactly what it writes with the default settings)::

    kind       encoder id              objective (heads on the final-norm tokens, dropped after training)
    default    irepa-demo-vit          class from the mean patch token + per-patch class segmentation (11-way)
    global     irepa-demo-vit-global   class from the mean patch token only            (global information)
    dense      irepa-demo-vit-dense    per-patch foreground / background only           (spatial, class-agnostic)
    evaluator  irepa-demo-evaluator    class + object attributes from the CLS token     (FD feature space)

All are timm ``VisionTransformer`` backbones (patch 4 on 32 px images: an 8×8 token grid, the tiny SiT's grid)
registered in the encoder zoo through packaged-encoder cards (:mod:`irepa.encoders.packaged`), so they load with
``irepa.encoders.load_encoder(id, resolution=32)`` like any other encoder, their SHA-256 checked at every load.

* The **default** teacher is what ``irepa demo`` aligns to. Its tokens carry class information everywhere (the
  pooled classification) *and* a segmentation of the object, i.e. a strong global component on top of spatial
  structure: the situation iREPA's spatial normalization is designed for.
* **global** and **dense** are the two teachers of ``irepa demo --study``: the laptop-scale analogue of the paper's
  PE/CLIP-like (accurate, weak spatial structure) versus SAM-like (inaccurate, strong spatial structure) encoders.
* The **evaluator** is not a teacher: it defines the feature space of the demo's Fréchet distance (its CLS token,
  trained on another data seed with a different objective), so FD is never measured in a teacher's own space.

Every card records the recipe, the command, the training time and loss, and the encoder's metrics on held-out
synthetic images: linear-probe top-1 (:mod:`irepa.metrics.probe`, the project's protocol, on mean-pooled patch
tokens) and the four spatial metrics (:mod:`irepa.metrics.spatial`, released-code radii, masks from the generator).
"""

from __future__ import annotations

import dataclasses
import math
import platform
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from irepa.errors import IrepaError

__all__ = [
    "EVAL_DATA_SEED",
    "MEAN",
    "RECIPES",
    "STD",
    "TEACHER_KINDS",
    "TeacherRecipe",
    "evaluate_encoder",
    "patch_labels",
    "train_teacher",
]

#: Normalization of the demo encoders' input (pixels in [0, 1]); recorded in each card's preprocessing.
MEAN = (0.5, 0.5, 0.5)
STD = (0.25, 0.25, 0.25)
#: Dataset seed of the held-out images every encoder is evaluated on (never used for training anything).
EVAL_DATA_SEED = 1000
#: Synthetic classes (the first 10 shapes of :mod:`irepa.data.synthetic`).
NUM_CLASSES = 10
#: Attributes the evaluator regresses (besides the class), computed from each image and its mask.
ATTRIBUTES = ("area", "center_x", "center_y", "fg_r", "fg_g", "fg_b", "bg_r", "bg_g", "bg_b")


@dataclasses.dataclass(frozen=True)
class TeacherRecipe:
    """How one demo encoder is trained (every field is recorded in its card).

    Attributes:
        kind: ``default``, ``global``, ``dense`` or ``evaluator``.
        encoder_id: Zoo id of the shipped encoder.
        asset: File stem in ``irepa/assets`` (``<asset>.safetensors`` + ``<asset>.json``).
        objective: ``class+segment``, ``class``, ``foreground`` or ``class+attributes``.
        role: One line for listings and reports.
        embed_dim: Token width D.
        depth: Transformer blocks.
        num_heads: Attention heads.
        patch_size: Pixels per token side (4: an 8×8 grid on 32 px images).
        image_size: Training image size in pixels.
        steps: AdamW steps.
        batch_size: Images per step.
        lr: Peak learning rate (linear warmup, cosine decay to 0).
        weight_decay: AdamW weight decay.
        warmup_steps: Warmup steps.
        grad_clip: Global gradient-norm clip.
        train_images: Synthetic training images (drawn with ``data_seed``).
        data_seed: Synthetic dataset seed of the training images.
        seed: Seed of the initialization and the batch order.
        eval_images: Held-out images for the metrics: the first 2/3 train the linear probe, the last 1/3 are its
            validation split and the images of the spatial metrics.
    """

    kind: str
    encoder_id: str
    asset: str
    objective: str
    role: str
    embed_dim: int = 96
    depth: int = 4
    num_heads: int = 3
    patch_size: int = 4
    image_size: int = 32
    steps: int = 3000
    batch_size: int = 128
    lr: float = 1e-3
    weight_decay: float = 0.05
    warmup_steps: int = 200
    grad_clip: float = 1.0
    train_images: int = 30000
    data_seed: int = 1
    seed: int = 0
    eval_images: int = 6000

    def __post_init__(self) -> None:
        if self.objective not in _OBJECTIVES:
            raise IrepaError(f"unknown teacher objective {self.objective!r}; choose one of {', '.join(_OBJECTIVES)}")
        for name in ("steps", "batch_size", "train_images", "embed_dim", "depth", "num_heads"):
            if getattr(self, name) < 1:
                raise IrepaError(f"teacher {name} must be >= 1, got {getattr(self, name)}")
        if self.eval_images < 30:
            raise IrepaError(f"teacher eval_images must be >= 30 (probe and metrics splits), got {self.eval_images}")
        if self.image_size % self.patch_size:
            raise IrepaError(f"image size {self.image_size} is not a multiple of the patch size {self.patch_size}")

    @property
    def grid(self) -> tuple[int, int]:
        """Token grid ``(h, w)`` at the training size."""
        side = self.image_size // self.patch_size
        return side, side

    def arch_kwargs(self) -> dict[str, Any]:
        """The ``VisionTransformer`` keyword arguments (as :func:`irepa.encoders.register_packaged_vit` builds them)."""
        return {
            "patch_size": self.patch_size,
            "embed_dim": self.embed_dim,
            "depth": self.depth,
            "num_heads": self.num_heads,
            "mlp_ratio": 4.0,
            "class_token": True,
            "reg_tokens": 0,
            "global_pool": "token",
        }

    def encoder_fields(self, sha256: str) -> dict[str, Any]:
        """The ``encoder`` section of the card: :func:`register_packaged_vit`'s arguments."""
        arch = self.arch_kwargs()
        return {
            "id": self.encoder_id,
            "asset": f"{self.asset}.safetensors",
            "sha256": sha256,
            "img_size": self.image_size,
            "pixels_per_token": self.patch_size,
            **{k: arch[k] for k in ("patch_size", "embed_dim", "depth", "num_heads", "mlp_ratio")},
            "class_token": arch["class_token"],
            "reg_tokens": arch["reg_tokens"],
            "global_pool": arch["global_pool"],
            "mean": list(MEAN),
            "std": list(STD),
            "interpolation": "bicubic",
            "family": "irepa-demo",
            "license": "apache-2.0",
            "notes": f"irepa demo {self.kind} encoder: {self.role} (irepa demo teacher --kind {self.kind})",
        }


_OBJECTIVES = ("class+segment", "class", "foreground", "class+attributes")

#: The four recipes (``irepa demo teacher --kind KIND``). Seeds and data seeds differ per encoder.
RECIPES: dict[str, TeacherRecipe] = {
    "default": TeacherRecipe(
        kind="default",
        encoder_id="irepa-demo-vit",
        asset="demo_vit",
        objective="class+segment",
        role="REPA/iREPA teacher of irepa demo (class + per-patch segmentation)",
        data_seed=1,
        seed=1,
    ),
    "global": TeacherRecipe(
        kind="global",
        encoder_id="irepa-demo-vit-global",
        asset="demo_vit_global",
        objective="class",
        role="study teacher with global information only (class from the mean patch token)",
        data_seed=2,
        seed=2,
    ),
    "dense": TeacherRecipe(
        kind="dense",
        encoder_id="irepa-demo-vit-dense",
        asset="demo_vit_dense",
        objective="foreground",
        role="study teacher with a dense, class-agnostic objective (per-patch foreground/background)",
        data_seed=3,
        seed=3,
    ),
    "evaluator": TeacherRecipe(
        kind="evaluator",
        encoder_id="irepa-demo-evaluator",
        asset="demo_evaluator",
        objective="class+attributes",
        role="feature space of the demo's Fréchet distance (CLS token; class + object attributes)",
        data_seed=4,
        seed=4,
    ),
}
TEACHER_KINDS: tuple[str, ...] = tuple(RECIPES)


# ----------------------------------------------------------------------------------------------------------------------
# Targets


def patch_labels(masks: torch.Tensor, labels: torch.Tensor, patch_size: int) -> torch.Tensor:
    """Per-patch segmentation labels: ``0`` background, ``1 + class`` where most of the patch's pixels are object.

    Args:
        masks: Object masks (B, H, W) bool.
        labels: Classes (B,) int64.
        patch_size: Pixels per patch side.

    Returns:
        (B, T) int64, row-major over the patch grid.
    """
    fraction = F.avg_pool2d(masks[:, None].float(), patch_size).flatten(1)  # (B, T)
    return torch.where(fraction > 0.5, labels[:, None] + 1, torch.zeros_like(labels[:, None]))


def image_attributes(images: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """The evaluator's regression targets (B, 9), in :data:`ATTRIBUTES` order.

    Object area (fraction of pixels), centroid (x, y in [-1, 1]), mean object and background colour (RGB in
    [0, 1]), from uint8 images (B, 3, H, W) and bool masks (B, H, W).
    """
    x = images.float() / 255.0
    m = masks.float()
    h, w = m.shape[-2:]
    area = m.flatten(1).mean(1)
    fg_count = m.flatten(1).sum(1).clamp_min(1.0)
    bg_count = (1 - m).flatten(1).sum(1).clamp_min(1.0)
    ys = torch.linspace(-1, 1, h).view(1, h, 1)
    xs = torch.linspace(-1, 1, w).view(1, 1, w)
    center_x = (m * xs).flatten(1).sum(1) / fg_count
    center_y = (m * ys).flatten(1).sum(1) / fg_count
    fg = (x * m[:, None]).flatten(2).sum(2) / fg_count[:, None]
    bg = (x * (1 - m[:, None])).flatten(2).sum(2) / bg_count[:, None]
    return torch.cat([area[:, None], center_x[:, None], center_y[:, None], fg, bg], dim=1)


class _Heads(nn.Module):
    """Training-only heads on the backbone's final-norm tokens (B, 1 + T, D); never shipped."""

    def __init__(self, objective: str, dim: int, num_classes: int) -> None:
        super().__init__()
        self.objective = objective
        self.classify = nn.Linear(dim, num_classes) if objective != "foreground" else None
        self.segment = {
            "class+segment": lambda: nn.Linear(dim, num_classes + 1),
            "foreground": lambda: nn.Linear(dim, 1),
        }.get(objective, lambda: None)()
        self.regress = nn.Linear(dim, len(ATTRIBUTES)) if objective == "class+attributes" else None

    def forward(
        self,
        feats: torch.Tensor,
        labels: torch.Tensor,
        masks: torch.Tensor,
        attributes: torch.Tensor | None,
        patch: int,
    ) -> tuple[dict[str, torch.Tensor], torch.Tensor | None]:
        """Loss terms and the class logits (for the training-time accuracy)."""
        cls_token, patches = feats[:, 0], feats[:, 1:]
        terms: dict[str, torch.Tensor] = {}
        logits = None
        if self.classify is not None:
            # The CLS token for the evaluator; the mean patch token (the probe's input) for the teachers.
            logits = self.classify(cls_token if self.objective == "class+attributes" else patches.mean(dim=1))
            terms["class"] = F.cross_entropy(logits, labels)
        if self.objective == "class+segment":
            targets = patch_labels(masks, labels, patch)
            terms["segment"] = F.cross_entropy(self.segment(patches).flatten(0, 1), targets.flatten())
        elif self.objective == "foreground":
            targets = (patch_labels(masks, labels, patch) > 0).float()
            terms["foreground"] = F.binary_cross_entropy_with_logits(self.segment(patches).squeeze(-1), targets)
        if self.regress is not None and attributes is not None:
            terms["attributes"] = F.mse_loss(self.regress(cls_token), attributes)
        return terms, logits


# ----------------------------------------------------------------------------------------------------------------------
# Training


def _preprocess(images: torch.Tensor) -> torch.Tensor:
    """uint8 (B, 3, H, W) → normalized float32, as the packaged encoder's preprocessing does at its native size."""
    mean = torch.tensor(MEAN).view(1, 3, 1, 1)
    std = torch.tensor(STD).view(1, 3, 1, 1)
    return (images.float() / 255.0 - mean) / std


def _lr_factor(step: int, recipe: TeacherRecipe) -> float:
    warm = min(1.0, (step + 1) / recipe.warmup_steps) if recipe.warmup_steps > 0 else 1.0
    return warm * 0.5 * (1.0 + math.cos(math.pi * step / recipe.steps))


def _generate(num: int, seed: int, size: int) -> Any:
    from irepa.data.synthetic import generate

    return generate(num, image_size=size, num_classes=NUM_CLASSES, seed=seed)


def train_teacher(
    recipe: TeacherRecipe,
    out_dir: str | Path,
    *,
    progress: bool = True,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Train one demo encoder, write ``<asset>.safetensors`` (float16) and its card ``<asset>.json`` into ``out_dir``.

    The card's metrics are measured on the written file, loaded through the zoo's packaged-encoder path (checksum
    verified), on :data:`EVAL_DATA_SEED` images that no encoder was trained on.

    Returns:
        The card (also written as JSON).
    """
    from timm.models.vision_transformer import VisionTransformer

    from irepa.encoders.packaged import CARD_FORMAT
    from irepa.utils.io import save_safetensors, sha256_file, write_json

    out_dir = Path(out_dir)
    start = time.perf_counter()
    data = _generate(recipe.train_images, recipe.data_seed, recipe.image_size)
    attributes = None
    if recipe.objective == "class+attributes":
        raw = image_attributes(data.images, data.masks)
        attr_mean, attr_std = raw.mean(0), raw.std(0).clamp_min(1e-6)
        attributes = (raw - attr_mean) / attr_std  # standardized: every attribute weighs the same

    torch.manual_seed(recipe.seed)
    backbone = VisionTransformer(img_size=recipe.image_size, num_classes=0, **recipe.arch_kwargs())
    heads = _Heads(recipe.objective, recipe.embed_dim, NUM_CLASSES)
    params = [*backbone.parameters(), *heads.parameters()]
    optimizer = torch.optim.AdamW(params, lr=recipe.lr, weight_decay=recipe.weight_decay)
    order = torch.Generator().manual_seed(recipe.seed)
    perm = torch.randperm(recipe.train_images, generator=order)
    cursor = 0
    history: list[dict[str, float]] = []
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=recipe.steps, desc=f"teacher {recipe.kind}", unit="step", dynamic_ncols=True)
    backbone.train()
    for step in range(recipe.steps):
        if cursor + recipe.batch_size > recipe.train_images:  # next epoch: a fresh permutation
            perm, cursor = torch.randperm(recipe.train_images, generator=order), 0
        idx = perm[cursor : cursor + recipe.batch_size]
        cursor += recipe.batch_size
        for group in optimizer.param_groups:
            group["lr"] = recipe.lr * _lr_factor(step, recipe)
        feats = backbone.forward_features(_preprocess(data.images[idx]))  # (B, 1 + T, D) after the final norm
        terms, logits = heads(
            feats,
            data.labels[idx],
            data.masks[idx],
            attributes[idx] if attributes is not None else None,
            recipe.patch_size,
        )
        loss = sum(terms.values())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, recipe.grad_clip)
        optimizer.step()
        record = {name: float(value.detach()) for name, value in terms.items()}
        record["loss"] = float(loss.detach())
        if logits is not None:
            record["top1"] = float((logits.argmax(1) == data.labels[idx]).float().mean())
        history.append(record)
        if bar is not None:
            bar.update(1)
            if step % 25 == 0 or step == recipe.steps - 1:
                bar.set_postfix(loss=f"{record['loss']:.3f}")
    if bar is not None:
        bar.close()
    train_seconds = time.perf_counter() - start
    backbone.eval()

    # The shipped file: backbone only (num_classes=0, no heads), float16 to halve the package size.
    weights = out_dir / f"{recipe.asset}.safetensors"
    state = {k: v.detach().to(torch.float16) for k, v in backbone.state_dict().items()}
    save_safetensors(state, weights, metadata={"format": "irepa-demo-encoder", "encoder": recipe.encoder_id})
    sha256 = sha256_file(weights)

    tail = history[-min(100, len(history)) :]
    final = {k: sum(r[k] for r in tail) / len(tail) for k in tail[0]}
    card: dict[str, Any] = {
        "format": CARD_FORMAT,
        "encoder": recipe.encoder_fields(sha256),
        "demo": {
            "kind": recipe.kind,
            "role": recipe.role,
            "objective": recipe.objective,
            "command": f"irepa demo teacher --kind {recipe.kind}",
            "recipe": dataclasses.asdict(recipe),
            "optimizer": "AdamW(betas=(0.9, 0.999)), linear warmup then cosine decay to 0, grad-norm clip",
            "file": {"name": weights.name, "bytes": weights.stat().st_size, "sha256": sha256, "dtype": "float16"},
            "training": {
                "seconds": round(train_seconds, 1),
                "final": {k: round(v, 4) for k, v in final.items()},
                "torch": torch.__version__,
                "threads": torch.get_num_threads(),
                "machine": platform.machine(),
            },
        },
    }
    log(f"teacher {recipe.kind}: trained in {train_seconds:.0f} s, wrote {weights} (sha256 {sha256[:12]}…)")
    eval_start = time.perf_counter()
    encoder = load_trained(card, weights)
    card["demo"]["metrics"] = evaluate_encoder(encoder, recipe.eval_images)
    card["demo"]["metrics"]["seconds"] = round(time.perf_counter() - eval_start, 1)
    write_json(out_dir / f"{recipe.asset}.json", card)
    return card


def load_trained(card: dict[str, Any], weights: str | Path) -> Any:
    """Load the encoder of ``card`` from ``weights`` through the zoo's packaged path (checksum verified).

    The file is registered under ``<id>@<sha256 prefix>`` (content-addressed, so loading the same file twice
    reuses the entry), which never collides with the shipped entry of the same id.
    """
    import tempfile

    from irepa.encoders import ENCODERS, load_encoder
    from irepa.encoders.packaged import register_packaged_card
    from irepa.utils.io import write_json

    fields = card["encoder"]
    name = f"{fields['id']}@{fields['sha256'][:12]}"
    if name not in ENCODERS:
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "card.json"
            write_json(path, card)
            register_packaged_card(path, id=name, asset=Path(weights).resolve())
    return load_encoder(name, resolution=int(fields["img_size"]))


# ----------------------------------------------------------------------------------------------------------------------
# Evaluation


def evaluate_encoder(encoder: Any, num_images: int = 6000) -> dict[str, Any]:
    """Linear-probe top-1 and the four spatial metrics of an encoder on held-out synthetic images.

    The ``num_images`` images of :data:`EVAL_DATA_SEED` are split 2/3 (probe training) and 1/3 (probe validation,
    and the images of the spatial metrics). The probe follows the project's protocol
    (:class:`irepa.metrics.probe.ProbeProtocol` defaults) on mean-pooled patch tokens; the spatial metrics use the
    released-code radii (near 1, far 6, dmax 8) with SRSS masks from the generator, max-pooled to the token grid
    and filtered with the paper's quarter rule.

    Returns:
        ``{"probe": {...}, "spatial": {means, counts, settings}, "images": {...}}`` (JSON-safe).
    """
    from irepa.analysis.measure import ProbeOptions, SpatialOptions, measure_encoders

    size = int(encoder.resolution[0])
    data = _generate(num_images, EVAL_DATA_SEED, size)
    split = (2 * num_images) // 3
    report = measure_encoders(
        {"encoder": encoder},
        data.images,
        masks=data.masks,
        labels=data.labels,
        options=SpatialOptions(metrics=("lds", "cds", "srss", "rmsc")),
        probe=ProbeOptions(train=tuple(range(split)), val=tuple(range(split, num_images))),
        metric_indices=range(split, num_images),
        batch_size=500,
    )
    probe = report.probes["raw"]["encoder"]
    summary = report.raw.results["encoder"].to_dict(per_image=False)
    return {
        "probe": {
            "top1": probe.top1,
            "top5": probe.top5,
            "learning_rate": probe.learning_rate,
            "weight_decay": probe.weight_decay,
            "num_train": probe.num_train,
            "num_val": probe.num_val,
            "features": "mean-pooled patch tokens",
        },
        "spatial": {"means": summary["means"], "counts": summary["counts"], "settings": summary["settings"]},
        "images": {"seed": EVAL_DATA_SEED, "count": num_images, "probe_train": split, "metrics": num_images - split},
    }
