"""The training loop: steps, counted in images, with maintenance at tick boundaries.

Progress is counted in images shown to D (all ranks together), so runs stay comparable across
world sizes and endless streams need no epochs. Everything that is not a training step — stats,
logs, sample grids, evaluations, checkpoints — happens at a tick boundary, every `train.tick_kimg`
(see cadence.py), after one reduction of the tick's statistics across ranks.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Iterator, Optional

import torch

from . import checkpoint, layout
from .cadence import Cadence, budget_seconds
from .checkpoint import CheckpointManager, Progress
from .config import Config
from .ema import GeneratorEMA
from .evaluator import TrainingEvaluator
from .grid import SampleGrid
from .monitors import CollapseMonitor, DivergenceMonitor, LoaderMonitor
from .optim import apply_schedule
from .runtime import StopRequest, batch_per_rank
from .step import STEP_STATS, GANStep
from .tracking import StepStats, Tracker

log = logging.getLogger("dcgan_dist")


def to_unit_range(images_u8: torch.Tensor, device: torch.device, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """uint8 images -> [-1, 1] on `device` (the loader ships uint8: 4x less to copy)."""
    return images_u8.to(device, non_blocking=True).float().div_(127.5).sub_(1.0).to(dtype)


@dataclass
class Models:
    """The prepared training objects (DDP- or DeepSpeed-wrapped), built by train.build_training."""

    G: torch.nn.Module
    D: torch.nn.Module
    opt_g: torch.optim.Optimizer
    opt_d: torch.optim.Optimizer
    ema: Optional[GeneratorEMA] = None  # the averaged G used for samples and FID (ema.half_life_kimg > 0)
    dtype: torch.dtype = torch.float32  # the models' input dtype (bf16/fp16 under DeepSpeed mixed precision)


class Loop:
    def __init__(self, cfg: Config, accelerator, models: Models, batches: Iterator[dict], noise: torch.Generator,
                 progress: Progress, stop: Optional[StopRequest], tracker: Optional[Tracker],
                 checkpoints: CheckpointManager, grid: SampleGrid, evaluator: Optional[TrainingEvaluator] = None,
                 dataset_size: Optional[int] = None, rank_state: Optional[dict] = None):
        self.cfg, self.accelerator, self.m = cfg, accelerator, models
        self.batches, self.progress, self.stop = batches, progress, stop
        self.noise = noise  # this rank's generator on the training device (checkpointed per rank)
        self.tracker = tracker  # rank zero only
        self.checkpoints, self.grid, self.evaluator, self.dataset_size = checkpoints, grid, evaluator, dataset_size
        self.cadence = Cadence.from_config(cfg, progress.nimg)
        self.batch = batch_per_rank(cfg, accelerator.num_processes)
        self.step = GANStep(cfg, accelerator, models.G, models.D, models.opt_g, models.opt_d, noise, models.ema)
        if self.step.ada is not None and rank_state and "augment" in rank_state:  # resumed: p where it was
            self.step.ada.load_state_dict(rank_state["augment"])
        self.stats = StepStats(accelerator.device, STEP_STATS)
        self.divergence = DivergenceMonitor(cfg)
        self.collapse = CollapseMonitor(cfg, self.cadence.total, self.cadence.tick, accelerator.is_main_process)
        self.data_monitor = LoaderMonitor(cfg, accelerator.device.type, accelerator.is_main_process)
        self.data_wait = 0.0  # seconds of this tick spent waiting for the loader (host time: no device sync)
        self.bad_total = 0
        self.tick_start_nimg, self.tick_start_time, self.maintenance_time = progress.nimg, time.time(), 0.0
        # train.minutes: training time is this launch's loop time (maintenance included) on top of what the
        # checkpoint we resumed from had counted; startup is not training.
        self.budget = budget_seconds(cfg)
        self.clock_start, self.seconds_at_start = time.monotonic(), progress.seconds
        self.time_up = False  # decided on the tick's reduced statistics: the same on every rank

    def run(self) -> str:
        """Train until `train.kimg`, the time budget `train.minutes` or a stop signal; returns 'complete'
        or 'stopped'."""
        if self.progress.nimg == 0:
            self.sample_grid()  # the untrained generator: the first frame of the progress animation
        while self.progress.nimg < self.cadence.total:
            if self.stop is not None and self.stop.poll():
                log.warning("stop requested (%s): saving a checkpoint at kimg %.3f and exiting",
                            self.stop.signame or "signal on another rank", self.progress.nimg / 1000)
                self.maintenance(final=True, stopping=True)
                return "stopped"
            t0 = time.perf_counter()
            batch = next(self.batches)
            self.data_wait += time.perf_counter() - t0
            self.train_step(batch)
            if self.cadence.tick_due(self.progress.nimg):
                self.maintenance()  # the run's last one when the time budget is spent (self.time_up)
                if self.time_up:
                    log.info("time budget spent: %.1f minutes of training >= train.minutes=%g, at kimg %.3f",
                             self.progress.seconds / 60, self.cfg.train.minutes, self.progress.nimg / 1000)
                    return "complete"
                self.cadence.tick_done(self.progress.nimg)
        self.maintenance(final=True)
        return "complete"

    def train_step(self, batch: dict) -> None:
        """One step on one batch. Nothing here waits for the device: the batch's (pinned) uint8 images
        go over with non_blocking, the latents are drawn on the device from the rank's generator and
        the statistics stay there until the tick's reduction."""
        m, device, global_batch = self.m, self.accelerator.device, self.cfg.train.batch
        z = torch.randn(self.batch, self.cfg.model.z_dim, generator=self.noise, device=device).to(m.dtype)
        real = to_unit_range(batch["image"], device, m.dtype)
        labels = batch["label"].to(device, non_blocking=True) if self.step.conditional else None
        apply_schedule(self.cfg, m.opt_g, m.opt_d, self.progress.nimg)
        self.stats.add(self.step(real, z, labels, self.progress.nimg + global_batch), batch["bad"])
        self.progress.nimg += global_batch
        self.progress.step += 1
        if self.tracker:
            self.tracker.step(global_batch)

    def maintenance(self, final: bool = False, stopping: bool = False) -> None:
        """At a tick boundary: report the tick, then whatever of samples, evaluation, checkpoint is due."""
        nimg, c = self.progress.nimg, self.cadence
        self.progress.seconds = self.seconds_at_start + time.monotonic() - self.clock_start
        if self.stats.steps > 0:  # a stop right after a tick has nothing new to report (it would log zeros)
            self.report()
        final = final or self.time_up
        t0 = time.time()
        if c.sample.due(nimg, final):
            self.sample_grid()
            c.sample.done(nimg)
        # Before the checkpoint (its meta can then hold the FID), and not when stopping: a preempted
        # job has seconds for its checkpoint, not minutes for an evaluation.
        if self.evaluator is not None and c.evaluate.due(nimg, final) and not stopping:
            self.evaluate()
            c.evaluate.done(nimg)
        if c.checkpoint.due(nimg, final):
            self.save_checkpoint()
            c.checkpoint.done(nimg)
        self.maintenance_time = time.time() - t0
        self.tick_start_nimg, self.tick_start_time, self.data_wait = nimg, time.time(), 0.0

    def report(self) -> None:
        """Reduce the tick's stats across ranks (one collective), check them, log them."""
        nimg = self.progress.nimg
        # The training time rides along in the tick's one collective, averaged over ranks: every rank
        # then takes the same decision on the time budget.
        values, bad = self.stats.reduce(self.accelerator, host_means={"Progress/minutes": self.progress.seconds / 60})
        self.bad_total += bad
        self.divergence.check(values, self.tick_start_nimg, nimg, self.checkpoints.last)
        values["Diversity/ratio"] = values["Diversity/fake"] / max(values["Diversity/real"], 1e-12)
        self.collapse.check(values["Diversity/ratio"], nimg)
        # The tick's clock starts after the previous maintenance, so this is training time only.
        train_time = max(time.time() - self.tick_start_time, 1e-9)
        values.update({
            "Speed/img_per_sec": (nimg - self.tick_start_nimg) / train_time,
            "Speed/sec_per_kimg": train_time * 1000 / max(nimg - self.tick_start_nimg, 1),
            "Speed/maintenance_sec": self.maintenance_time,
            # This rank's share of the tick spent waiting for batches (rank zero's is logged): ~0 when
            # the step sets the pace.
            "Speed/data_wait": min(self.data_wait / train_time, 1.0),
            "LR/G": self.m.opt_g.param_groups[0]["lr"],
            "LR/D": self.m.opt_d.param_groups[0]["lr"],
            "Data/bad_samples": float(self.bad_total),
            "Progress/kimg": nimg / 1000,
        })
        if self.dataset_size:
            values["Progress/epoch"] = nimg / self.dataset_size
        self.data_monitor.check(values["Speed/data_wait"], nimg)
        # The checkpoint keeps the agreed time, the one the decision below is taken on: a resume then
        # sees a spent budget as spent.
        self.progress.seconds = values["Progress/minutes"] * 60
        left = self.budget - self.progress.seconds if self.budget is not None else None
        self.time_up = left is not None and left <= 0
        end = self.cadence.total
        if left is not None:  # the run ends where the budget will: at this speed, this image count
            end = min(end, nimg + int(max(left, 0) * values["Speed/img_per_sec"]))
        if self.tracker and left is not None:
            self.tracker.retarget(end)
        if self.tracker:
            self.tracker.tick(nimg, values)
            self.tracker.heartbeat(nimg)  # status.json: this run is alive (report tells dead runs by it)
        log.info("kimg %9.3f/%.3f | D %.4f G %.4f | D(x) %.3f D(G(z)) %.3f | %.1f img/s%s%s",
                 nimg / 1000, end / 1000, values["Loss/D"], values["Loss/G"], values["D/real"],
                 values["D/fake"], values["Speed/img_per_sec"],
                 f" | {max(left, 0) / 60:.1f} of {self.cfg.train.minutes:g} min left" if left is not None else "",
                 f" | {self.bad_total} bad samples replaced" if self.bad_total else "")

    def sampler(self) -> torch.nn.Module:
        """The generator samples and FID use: the EMA (its BatchNorm statistics re-estimated) or G."""
        G = self.accelerator.unwrap_model(self.m.G)
        return self.m.ema.recalibrate(G) if self.m.ema is not None else G

    def sample_grid(self) -> None:
        """Rank zero renders the fixed-noise grid."""
        if self.tracker is None:
            return
        nimg = self.progress.nimg
        fakes = self.grid.render(self.sampler(), self.accelerator.device)
        self.tracker.images("Samples/fixed_noise", fakes, nimg, layout.fakes_name(checkpoint.name_for(nimg)),
                            nrow=self.grid.row)

    def evaluate(self) -> None:
        """Collective: the metrics of the sampler, logged; a new best FID is saved to checkpoints/best/."""
        nimg = self.progress.nimg
        result = self.evaluator(self.accelerator, self.sampler(), nimg)
        if self.tracker:
            self.tracker.metrics(nimg, result)
        if self.checkpoints.is_best(result["fid"]):
            self.checkpoints.save_best(self.progress, self.rank_state(), *self._unwrapped(), self.sampler(),
                                       fid=result["fid"], num=self.cfg.eval.num)

    def save_checkpoint(self) -> None:
        """Collective: the rotation's checkpoint at this image count."""
        path = self.checkpoints.save(self.progress, self.rank_state(), *self._unwrapped(), self.sampler())
        if self.tracker:
            self.tracker.status("running", self.progress.nimg, checkpoint=str(path))

    def rank_state(self) -> dict:
        """What each rank saves of its own: the noise generator (and the adaptive augmentation's state)."""
        state = {"noise": self.noise.get_state()}
        if self.step.ada is not None:
            state["augment"] = self.step.ada.state_dict()
        return state

    def _unwrapped(self) -> tuple[torch.nn.Module, torch.nn.Module]:
        return self.accelerator.unwrap_model(self.m.G), self.accelerator.unwrap_model(self.m.D)
