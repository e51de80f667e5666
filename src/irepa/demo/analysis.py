"""What the teachers look like: their cards, similarity maps with and without spatial normalization.

iREPA aligns the diffusion tokens with *spatially normalized* teacher tokens: ``(x − γ·mean_T(x)) / std_T(x)`` per
image and channel. For a teacher whose tokens share a large global component (every token "knows" the class), raw
cosine similarities are high everywhere; removing the spatial mean reveals which tokens belong together. The
similarity maps show this for one anchor patch on the object, and the spatial metrics of raw and normalized tokens
quantify it on held-out images.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

__all__ = ["encoder_card", "teacher_analysis"]


def encoder_card(encoder_id: str) -> dict[str, Any]:
    """The packaged-encoder card (JSON next to the shipped weights) of a demo encoder in the zoo.

    Raises:
        IrepaError: The encoder is not a packaged encoder, or its card is missing.
    """
    import importlib.resources

    from irepa.encoders import ENCODERS
    from irepa.errors import IrepaError

    spec = ENCODERS.get(encoder_id)
    if spec.backend != "packaged" or spec.weights is None or spec.weights.asset is None:
        raise IrepaError(f"encoder {encoder_id!r} is not a packaged encoder with a card")
    asset = Path(spec.weights.asset)
    if not asset.is_absolute():  # a package asset (as irepa.encoders resolves it)
        asset = Path(str(importlib.resources.files("irepa") / "assets" / asset))
    card = asset.with_suffix(".json")
    if not card.is_file():
        raise IrepaError(f"the card of packaged encoder {encoder_id!r} is missing ({card}); reinstall irepa")
    return json.loads(card.read_text())


@torch.no_grad()
def teacher_analysis(
    teachers: list[str], settings: Any, figure_dir: str | Path, *, device: str | torch.device = "cpu"
) -> dict[str, Any]:
    """Cards, spatial metrics of raw vs spatially normalized tokens, and similarity-map figures of ``teachers``.

    Returns:
        ``{teacher id: {"card": ..., "raw": metric means, "normalized": metric means, "figure": file name,
        "images": count}}``.
    """
    from irepa.align import spatial_norm
    from irepa.analysis.measure import SpatialOptions, measure_encoders
    from irepa.analysis.plots import anchor_patches, similarity_figure, similarity_maps
    from irepa.data.synthetic import generate
    from irepa.demo.teachers import EVAL_DATA_SEED
    from irepa.encoders import load_encoder
    from irepa.metrics import spatial

    count = 100 if settings.mode == "quick" else 1000
    data = generate(count, image_size=settings.image_size, num_classes=settings.num_classes, seed=EVAL_DATA_SEED)
    out: dict[str, Any] = {}
    for index, teacher in enumerate(teachers):
        encoder = load_encoder(teacher, resolution=settings.image_size, offline=True, device=device)
        grid = tuple(encoder.grid)
        report = measure_encoders(
            {teacher: encoder},
            data.images,
            masks=data.masks,
            options=SpatialOptions(metrics=("lds", "cds", "srss", "rmsc")),
            variants={"normalized": lambda t, _cls: spatial_norm(t, gamma=settings.gamma)},
            batch_size=count,  # one forward pass, as the figures' tokens
            keep_tokens=True,
        )
        tokens = report.tokens[teacher]
        # Four clear examples: images that pass the SRSS filter, the anchor on the object.
        patch_masks = spatial.masks_to_patches(data.masks, grid)
        shown = torch.nonzero(spatial.srss_mask_filter(patch_masks)).flatten()[:4]
        anchors = anchor_patches(patch_masks[shown], grid)
        name = "similarity.png" if index == 0 else f"similarity-{teacher}.png"
        similarity_figure(
            Path(figure_dir) / name,
            images=data.images[shown],
            masks=data.masks[shown],
            anchors=anchors,
            raw=similarity_maps(tokens[shown], anchors),
            normalized=similarity_maps(spatial_norm(tokens[shown], gamma=settings.gamma), anchors),
            grid=grid,
            title=f"{teacher}: cosine similarity to the anchor patch (x)",
            gamma=settings.gamma,
        )
        card = encoder_card(teacher)
        out[teacher] = {
            "card": {
                "kind": card["demo"]["kind"],
                "role": card["demo"]["role"],
                "objective": card["demo"]["objective"],
                "command": card["demo"]["command"],
                "sha256": card["encoder"]["sha256"],
                "params_m": encoder.spec.params_m,
                "embed_dim": encoder.embed_dim,
                "grid": list(grid),
                "metrics": card["demo"]["metrics"],
                "training_seconds": card["demo"]["training"]["seconds"],
            },
            "raw": report.spatial["raw"].means(teacher),
            "normalized": report.spatial["normalized"].means(teacher),
            "gamma": settings.gamma,
            "images": count,
            "figure": name,
        }
    return out
