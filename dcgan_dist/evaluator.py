"""The metrics during training (FID, and KID / precision-recall as `eval.metrics` asks; IS when the
weights have logits): the Inception extractor and the training set's reference statistics (and
features, for KID / PR), built once at start-up, and a collective evaluation of the sampling
generator at the cadence of `eval.every_kimg`."""

from __future__ import annotations

import logging
from typing import Optional

from . import runtime
from .config import Config
from .errors import UserError
from .metrics.evaluation import evaluate_generator
from .metrics.inception import load_extractor
from .metrics.reference import reference_stats
from .metrics.suite import MetricSpec, format_metrics
from .data.imagesets import ImageSet

log = logging.getLogger("dcgan_dist")


class TrainingEvaluator:
    def __init__(self, cfg: Config, extractor, ref, class_probs: Optional[list]):
        self.cfg, self.extractor, self.ref, self.class_probs = cfg, extractor, ref, class_probs
        self.spec = spec_of(cfg)

    @classmethod
    def build(cls, cfg: Config, accelerator, shards) -> Optional["TrainingEvaluator"]:
        """Collective: the extractor and the reference statistics (cached on disk, so only the first run on
        a data set pays for them); None when eval.every_kimg is 0."""
        if cfg.eval.every_kimg <= 0:
            return None
        extractor = runtime.agree(accelerator, lambda: load_extractor(
            cfg.eval.inception, origin="eval.inception", device=accelerator.device, preprocess=cfg.eval.preprocess),
            (UserError,))
        spec = spec_of(cfg)
        log.info("%s every %g kimg from %d samples: %s", ", ".join(spec.names).upper(), cfg.eval.every_kimg,
                 cfg.eval.num, extractor)
        source = ImageSet.from_shard_set(cfg.data.shards, shards)
        ref = reference_stats(accelerator, source, num=cfg.eval.ref_num, extractor=extractor, batch=cfg.eval.batch,
                              features=spec.features)
        # A conditional G is evaluated on labels drawn with the training set's class frequencies.
        class_probs = shards.index.class_counts if shards.index and cfg.model.num_classes else None
        return cls(cfg, extractor, ref, class_probs)

    def __call__(self, accelerator, G, nimg: int) -> dict:
        """Collective: the metrics of G at `nimg`, the same numbers on every rank."""
        e = self.cfg.eval
        result = evaluate_generator(accelerator, G, num=e.num, batch=e.batch, z_dim=self.cfg.model.z_dim,
                                    seed=self.cfg.seed, extractor=self.extractor, ref_stats=self.ref, progress=False,
                                    class_probs=self.class_probs, metrics=self.spec)
        log.info("kimg %9.3f | %s (%d samples, %.0f s)", nimg / 1000, format_metrics(result), result["num"],
                 result["seconds"])
        return result


def spec_of(cfg: Config) -> MetricSpec:
    """The metrics of `eval.metrics` (validated with the config)."""
    e = cfg.eval
    return MetricSpec.parse(e.metrics, "eval.metrics", kid_subsets=e.kid_subsets, kid_subset_size=e.kid_subset_size)
