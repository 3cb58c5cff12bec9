"""Checks on each tick's reduced statistics: divergence (non-finite or exploding losses) and mode
collapse. Every rank sees the same reduced values, so every rank reaches the same verdict at the
same tick and a divergence stops all of them together. And one on the speed: a loader that keeps
the GPU waiting."""

from __future__ import annotations

import logging
import math
from typing import Optional

from .config import Config

log = logging.getLogger("dcgan_dist")


class TrainingDiverged(RuntimeError):
    """The losses stopped being finite (or exploded); nothing after the last checkpoint is kept."""


class DivergenceMonitor:
    """Stops the run on non-finite losses at once, and on finite but exploding ones (e.g. a learning
    rate of 1e10 drives them to ~1e22) once they stay above train.loss_limit for
    train.loss_limit_ticks ticks in a row."""

    def __init__(self, cfg: Config):
        self.limit, self.ticks = cfg.train.loss_limit, cfg.train.loss_limit_ticks
        self.explode_ticks = 0

    def check(self, values: dict[str, float], start_nimg: int, nimg: int, last_checkpoint: Optional[str]) -> None:
        last = last_checkpoint or "none yet"
        if not all(math.isfinite(v) for v in values.values()):
            raise TrainingDiverged(
                f"losses became non-finite between kimg {start_nimg / 1000:.3f} and {nimg / 1000:.3f} "
                f"({', '.join(f'{k}={v:.4g}' for k, v in values.items())}). Nothing after the last checkpoint "
                f"({last}) is saved. Resume from it with resume=auto and lower optim.g_lr/optim.d_lr, set "
                "loss.real_label=0.9, or use train.mixed_precision=no.")
        worst = max(abs(values["Loss/D"]), abs(values["Loss/G"]))
        self.explode_ticks = self.explode_ticks + 1 if self.limit and worst > self.limit else 0
        if self.explode_ticks >= self.ticks:
            raise TrainingDiverged(
                f"losses exploded: |loss| above train.loss_limit={self.limit:g} for {self.ticks} ticks in a row, up "
                f"to kimg {nimg / 1000:.3f} (Loss/D={values['Loss/D']:.4g}, Loss/G={values['Loss/G']:.4g}). Nothing "
                f"after the last checkpoint ({last}) is saved. Resume from it with resume=auto and lower "
                "optim.g_lr/optim.d_lr, or raise train.loss_limit if such losses are expected (0 = off).")


class CollapseMonitor:
    """Warns (once per collapse, on rank zero) when generated batches are much less diverse than real
    ones. The first ticks are exempt: an untrained G draws near-identical blobs by construction."""

    def __init__(self, cfg: Config, total_nimg: int, tick_nimg: int, is_main: bool):
        self.threshold = cfg.train.collapse_threshold
        self.exempt_until = min(0.05 * total_nimg, 20 * tick_nimg)
        self.is_main = is_main
        self.warned = False

    def check(self, ratio: float, nimg: int) -> None:
        if not self.threshold or nimg < self.exempt_until:
            return
        if ratio < self.threshold and not self.warned and self.is_main:
            log.warning("possible mode collapse at kimg %.3f: generated batches are %.2f as diverse as real ones "
                        "(Diversity/ratio < train.collapse_threshold=%g). Keep the earlier checkpoints; consider "
                        "augment.policy=color,translation,cutout, loss.label_flip, model.d_dropout or a lower optim.d_lr",
                        nimg / 1000, ratio, self.threshold)
        self.warned = ratio < self.threshold


class LoaderMonitor:
    """Warns once, on rank zero of a GPU run, when the training process spent more than a quarter of
    a tick waiting for batches: the data loader, not the GPU, then sets the speed. On one H200 the
    default of the CPU configs (2 workers) held a batch-512 run to a quarter of the bare loop's
    img/s (README: Performance). The first tick of each start is exempt (the workers start up)."""

    THRESHOLD = 0.25

    def __init__(self, cfg: Config, device_type: str, is_main: bool):
        self.enabled = is_main and device_type == "cuda"
        self.cfg = cfg
        self.ticks = 0
        self.warned = False

    def check(self, data_wait: float, nimg: int) -> None:
        self.ticks += 1
        if not self.enabled or self.warned or self.ticks < 2 or data_wait <= self.THRESHOLD:
            return
        self.warned = True
        d = self.cfg.data
        fix = ("raise data.workers (each worker decodes a few thousand images per second) or set data.cache=memory "
               "if the set fits in RAM" if d.cache != "memory" else "the in-process cache builds batches on the "
               "training process's core: use data.cache=none with more data.workers")
        log.warning("the training process waited for batches %.0f%% of the tick to kimg %.3f (Speed/data_wait): "
                    "the data loader sets the speed, not the GPU (data.workers=%s, data.cache=%s). Fix: %s",
                    100 * data_wait, nimg / 1000, d.workers, d.cache, fix)
