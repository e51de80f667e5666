"""Generative metrics under the ADM protocol (FID, sFID, IS, precision/recall), FD in any feature space, CMMD.

Layers (features, then statistics, then metrics):

* :mod:`~irepa.metrics.generative.inception`: the FID Inception-v3 (local weights only) with the ADM taps.
* :mod:`~irepa.metrics.generative.npz`: streaming ADM ``.npz`` I/O and image-array checks.
* :mod:`~irepa.metrics.generative.stats`: float64 streaming moments and the Fréchet distance.
* :mod:`~irepa.metrics.generative.scores`: Inception Score, precision/recall, CMMD.
* :mod:`~irepa.metrics.generative.feature_spaces`: the feature-space protocol, encoder and CLIP spaces.
* :mod:`~irepa.metrics.generative.evaluator`: the ADM protocol end to end, reference building.

Importing this package is light: torch and numpy only (scipy, transformers load inside the functions using them).
"""

from irepa.metrics.generative.evaluator import (
    EVALUATOR_VERSION,
    EvalSettings,
    ImageSource,
    build_reference,
    evaluate_adm,
    label_balance,
    read_reference,
    recipe_card_path,
)
from irepa.metrics.generative.feature_spaces import (
    ClipEmbeddingSpace,
    EncoderSpace,
    FeatureSpace,
    InceptionPoolSpace,
    compute_features,
)
from irepa.metrics.generative.inception import (
    FIDInceptionV3,
    InceptionFeatures,
    load_inception,
    locate_inception_weights,
    random_inception_state_dict,
)
from irepa.metrics.generative.npz import NpzArrayReader, write_npz
from irepa.metrics.generative.scores import cmmd, inception_score, manifold_radii, precision_recall
from irepa.metrics.generative.stats import FeatureStatistics, RunningMoments, frechet_distance

__all__ = [
    "EVALUATOR_VERSION",
    "ClipEmbeddingSpace",
    "EncoderSpace",
    "EvalSettings",
    "FIDInceptionV3",
    "FeatureSpace",
    "FeatureStatistics",
    "ImageSource",
    "InceptionFeatures",
    "InceptionPoolSpace",
    "NpzArrayReader",
    "RunningMoments",
    "build_reference",
    "cmmd",
    "compute_features",
    "evaluate_adm",
    "frechet_distance",
    "inception_score",
    "label_balance",
    "load_inception",
    "locate_inception_weights",
    "manifold_radii",
    "precision_recall",
    "random_inception_state_dict",
    "read_reference",
    "recipe_card_path",
    "write_npz",
]
