"""Evaluation metrics: FID, KID, improved precision/recall and Inception Score, computed collectively.

    inception_net     the FID Inception-v3 network (pytorch-fid layout) and the TorchScript name map
    inception         weights location and formats, preprocessing, the feature extractor
    fid               float64 sufficient statistics, one all-reduce, Frechet distance, Inception Score
    kid               Kernel Inception Distance over seeded subsets
    precision_recall  improved precision and recall (k-NN manifolds)
    features          gathering per-rank features, splitting O(N^2) work over the ranks
    suite             which metrics (`--metrics`, `eval.metrics`), and KID / PR from kept features
    evaluation        the collective API: evaluate_generator, generator_stats, image_stats
    reference         the reference set's statistics and features, cached on disk (reference_stats)

The images measured come from the data layer: `data.imagesets` (shard sets and image folders in a
fixed global order, decoded by `data.images`) and `data.images.to_uint8` (generated images).
"""

from .evaluation import evaluate_generator, generator_stats, image_stats
from .fid import FeatureStats, frechet_distance, inception_score
from .inception import InceptionExtractor, InceptionWeightsError, load_extractor, resolve_weights
from .reference import RefStats, load_stats, reference_stats
from .suite import METRICS, MetricSpec

__all__ = [
    "FeatureStats", "InceptionExtractor", "InceptionWeightsError", "METRICS", "MetricSpec", "RefStats",
    "evaluate_generator", "frechet_distance", "generator_stats", "image_stats", "inception_score", "load_extractor",
    "load_stats", "reference_stats", "resolve_weights",
]
