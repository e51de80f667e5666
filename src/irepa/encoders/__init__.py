"""The vision-encoder zoo: frozen teachers with exact preprocessing and offline-first weights.

Example:
    >>> from irepa.encoders import ENCODERS, load_encoder
    >>> enc = load_encoder("dinov2-vit-b", resolution=256)            # doctest: +SKIP
    >>> feats = enc.encode(images_uint8)                               # doctest: +SKIP
    >>> feats.patch_tokens.shape, feats.grid                           # doctest: +SKIP
    (torch.Size([8, 256, 768]), (16, 16))

Everything here imports without timm/transformers; those load when a model is built.
"""

from irepa.encoders import zoo as _zoo  # noqa: F401  (registers the zoo entries)
from irepa.encoders.base import CLS_MIXING_MODES, EncoderFeatures, VisionEncoder
from irepa.encoders.load import load_encoder
from irepa.encoders.packaged import register_packaged_vit
from irepa.encoders.spec import ENCODERS, EncoderSpec, Preprocessing, WeightSource
from irepa.encoders.weights import (
    ResolvedWeights,
    WeightLocations,
    download_weights,
    is_cached,
    locate_weights,
    resolve_weights,
    verify_checksum,
)

__all__ = [
    "CLS_MIXING_MODES",
    "ENCODERS",
    "EncoderFeatures",
    "EncoderSpec",
    "Preprocessing",
    "ResolvedWeights",
    "VisionEncoder",
    "WeightLocations",
    "WeightSource",
    "download_weights",
    "is_cached",
    "load_encoder",
    "locate_weights",
    "register_packaged_vit",
    "resolve_weights",
    "verify_checksum",
]
