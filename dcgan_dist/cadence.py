"""When the loop does what: intervals counted in images shown to D (all ranks together).

Every interval in the config is in kimg; a tick (`train.tick_kimg`) is the unit of maintenance,
and samples, evaluations and checkpoints happen at the first tick boundary that crosses a
multiple of their own interval, so their cadence survives resumes and changes of world size.
The run ends at `train.kimg`, or at the first tick past `train.minutes` of training (a time
budget, summed over resumes), whichever comes first.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from .config import Config


def to_nimg(kimg: float) -> int:
    """kimg -> whole images (never 0: an interval of 0 images would fire forever)."""
    return max(1, int(round(kimg * 1000)))


def total_nimg(cfg: Config) -> int:
    """The training length in images: `train.kimg` of the config."""
    return int(round(cfg.train.kimg * 1000))


def budget_seconds(cfg: Config) -> Optional[float]:
    """The time budget `train.minutes` in seconds, or None when there is none."""
    return cfg.train.minutes * 60 if cfg.train.minutes > 0 else None


def nothing_left(cfg: Config, nimg: int, seconds: float) -> Optional[str]:
    """Why a run resumed at `nimg` images and `seconds` of training has nothing left to train, if so."""
    if nimg >= total_nimg(cfg):
        return f"already trained to kimg {nimg / 1000:.3f} >= train.kimg={cfg.train.kimg:g}; raise train.kimg to continue"
    budget = budget_seconds(cfg)
    if budget is not None and seconds >= budget:
        return (f"the time budget is spent: {seconds / 60:.1f} minutes of training >= train.minutes={cfg.train.minutes:g} "
                f"(kimg {nimg / 1000:.3f}); raise train.minutes (or set it to 0) to continue")
    return None


class Every:
    """An interval of images: due once each time the counter crosses a multiple of it."""

    def __init__(self, kimg: float, start_nimg: int):
        self.nimg = to_nimg(kimg)
        self.last = start_nimg

    def due(self, nimg: int, final: bool = False) -> bool:
        return final or nimg // self.nimg > self.last // self.nimg

    def done(self, nimg: int) -> None:
        self.last = nimg


@dataclass
class Cadence:
    """The run's length, its ticks, and the intervals of samples, evaluations and checkpoints."""

    total: int
    tick: int
    sample: Every
    checkpoint: Every
    evaluate: Optional[Every]  # None when eval.every_kimg is 0
    next_tick: int = 0

    @classmethod
    def from_config(cls, cfg: Config, start_nimg: int) -> "Cadence":
        tick = to_nimg(cfg.train.tick_kimg)
        return cls(total=total_nimg(cfg), tick=tick, sample=Every(cfg.train.sample_every_kimg, start_nimg),
                   checkpoint=Every(cfg.checkpoint.every_kimg, start_nimg),
                   evaluate=Every(cfg.eval.every_kimg, start_nimg) if cfg.eval.every_kimg > 0 else None,
                   next_tick=start_nimg + tick)

    def tick_due(self, nimg: int) -> bool:
        """A tick boundary before the end (the end has its own, final, maintenance)."""
        return self.next_tick <= nimg < self.total

    def tick_done(self, nimg: int) -> None:
        self.next_tick = nimg + self.tick
