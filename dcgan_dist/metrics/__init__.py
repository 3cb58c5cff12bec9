"""Evaluation metrics: FID and Inception Score, computed collectively across ranks.

    inception_net  the FID Inception-v3 network (pytorch-fid layout) and the TorchScript name map
    inception      weights location and formats, preprocessing, the feature extractor
    fid            float64 sufficient statistics, one all-reduce, Frechet distance, Inception Score
    evaluation     the collective API: evaluate_generator, image_stats, reference_stats (cached)

The images measured come from the data layer: `data.imagesets` (shard sets and image folders in a
fixed global order, decoded by `data.images`) and `data.images.to_uint8` (generated images).
"""

from .evaluation import RefStats, evaluate_generator, generator_stats, image_stats, load_stats, reference_stats
from .fid import FeatureStats, frechet_distance, inception_score
from .inception import InceptionExtractor, InceptionWeightsError, load_extractor, resolve_weights

__all__ = [
    "FeatureStats", "InceptionExtractor", "InceptionWeightsError", "RefStats", "evaluate_generator",
    "frechet_distance", "generator_stats", "image_stats", "inception_score", "load_extractor", "load_stats",
    "reference_stats", "resolve_weights",
]
