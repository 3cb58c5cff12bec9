"""FID (and IS) during training: the Inception extractor and the training set's reference
statistics, built once at start-up, and a collective evaluation of the sampling generator at the
cadence of `eval.every_kimg`."""

from __future__ import annotations

import logging
from typing import Optional

from . import runtime
from .config import Config
from .errors import UserError
from .metrics.evaluation import evaluate_generator, reference_stats
from .metrics.inception import load_extractor
from .data.imagesets import ImageSet

log = logging.getLogger("dcgan_dist")


class TrainingEvaluator:
    def __init__(self, cfg: Config, extractor, ref, class_probs: Optional[list]):
        self.cfg, self.extractor, self.ref, self.class_probs = cfg, extractor, ref, class_probs

    @classmethod
    def build(cls, cfg: Config, accelerator, shards) -> Optional["TrainingEvaluator"]:
        """Collective: the extractor and the reference statistics (cached on disk, so only the first run on
        a data set pays for them); None when eval.every_kimg is 0."""
        if cfg.eval.every_kimg <= 0:
            return None
        extractor = runtime.agree(accelerator, lambda: load_extractor(
            cfg.eval.inception, origin="eval.inception", device=accelerator.device, preprocess=cfg.eval.preprocess),
            (UserError,))
        log.info("FID every %g kimg from %d samples: %s", cfg.eval.every_kimg, cfg.eval.num, extractor)
        source = ImageSet.from_shard_set(cfg.data.shards, shards)
        ref = reference_stats(accelerator, source, num=cfg.eval.ref_num, extractor=extractor, batch=cfg.eval.batch)
        # A conditional G is evaluated on labels drawn with the training set's class frequencies.
        class_probs = shards.index.class_counts if shards.index and cfg.model.num_classes else None
        return cls(cfg, extractor, ref, class_probs)

    def __call__(self, accelerator, G, nimg: int) -> dict:
        """Collective: the metrics of G at `nimg`, the same numbers on every rank."""
        e = self.cfg.eval
        result = evaluate_generator(accelerator, G, num=e.num, batch=e.batch, z_dim=self.cfg.model.z_dim,
                                    seed=self.cfg.seed, extractor=self.extractor, ref_stats=self.ref, progress=False,
                                    class_probs=self.class_probs)
        is_text = f" IS {result['is_mean']:.3f}" if result["is_mean"] is not None else ""
        log.info("kimg %9.3f | FID %.3f%s (%d samples, %.0f s)", nimg / 1000, result["fid"], is_text,
                 result["num"], result["seconds"])
        return result
