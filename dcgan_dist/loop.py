"""One training step, and the loop that counts images and does maintenance at tick boundaries.

Progress is counted in images shown to D (all ranks together), so runs stay comparable across
world sizes and endless streams need no epochs. Everything that is not a training step — stats,
logs, sample grids, checkpoints — happens at a tick boundary, every `train.tick_kimg`.
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Optional

import torch
from accelerate.utils import gather_object

from . import checkpoint, layout
from .checkpoint import Progress
from .config import Config
from .ema import GeneratorEMA
from .metrics.evaluation import evaluate_generator
from .optim import apply_schedule
from .runtime import StopRequest
from .step import STEP_STATS, GANStep
from .tracking import StepStats, Tracker

log = logging.getLogger("dcgan_dist")


class TrainingDiverged(RuntimeError):
    """The losses stopped being finite; nothing after the last checkpoint is kept."""


def to_unit_range(images_u8: torch.Tensor, device: torch.device, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """uint8 images -> [-1, 1] on `device` (the loader ships uint8: 4x less to copy)."""
    return images_u8.to(device, non_blocking=True).float().div_(127.5).sub_(1.0).to(dtype)


def grid_labels(num_classes: int, grid: int) -> tuple[Optional[torch.Tensor], int]:
    """The sample grid's class labels and images per row. Unconditional: None and sqrt(grid). Conditional:
    each class fills whole rows, classes top to bottom (10 classes in 100 images: a row each; 2 classes
    in 64: four rows of 8 each), at least one row per class."""
    cols = max(1, int(math.sqrt(grid)))
    if not num_classes:
        return None, cols
    per_class = max(cols, (grid // num_classes) // cols * cols)
    return torch.arange(num_classes).repeat_interleave(per_class), cols


@dataclass
class LoopState:
    """Everything the loop needs besides the models; built by train.py."""

    cfg: Config
    accelerator: Any
    G: torch.nn.Module
    D: torch.nn.Module
    opt_g: torch.optim.Optimizer
    opt_d: torch.optim.Optimizer
    batches: Iterator[dict]
    noise: torch.Generator  # this rank's generator on the training device (its state is checkpointed per rank)
    fixed_z: torch.Tensor  # the sample grid's latents, the same for the whole run
    progress: Progress
    stop: StopRequest
    tracker: Optional[Tracker]  # rank zero only
    meta: dict  # architecture, config and data layout stored in every checkpoint
    dataset_size: Optional[int] = None
    fixed_labels: Optional[torch.Tensor] = None  # the grid's classes (conditional G): whole rows per class
    grid_row: Optional[int] = None  # images per row of the sample grid (default: square)
    dtype: torch.dtype = torch.float32  # the models' input dtype (bf16/fp16 under DeepSpeed mixed precision)
    fid: Optional[tuple] = None  # (extractor, reference statistics) when eval.every_kimg > 0
    ema: Optional[GeneratorEMA] = None  # the averaged G used for samples and FID (ema.half_life_kimg > 0)
    class_probs: Optional[list] = None  # the training set's class frequencies (conditional FID labels)
    last_checkpoint: Optional[str] = None
    extra_scalars: dict = field(default_factory=dict)


class Loop:
    def __init__(self, s: LoopState):
        self.s = s
        cfg = s.cfg
        self.global_batch = cfg.train.batch
        self.batch_per_rank = cfg.train.batch // s.accelerator.num_processes
        self.z_dim = cfg.model.z_dim
        self.total_nimg = int(round(cfg.train.kimg * 1000))
        self.tick_nimg = max(1, int(round(cfg.train.tick_kimg * 1000)))
        self.sample_nimg = max(1, int(round(cfg.train.sample_every_kimg * 1000)))
        self.ckpt_nimg = max(1, int(round(cfg.checkpoint.every_kimg * 1000)))
        self.eval_nimg = max(1, int(round(cfg.eval.every_kimg * 1000))) if s.fid else 0
        self.last_eval_nimg = s.progress.nimg
        best = Path(cfg.run.dir) / checkpoint.CKPT_DIR / "best" / checkpoint.META  # survives resumes
        self.best_fid = json.loads(best.read_text()).get("fid") if best.is_file() else None
        self.stats = StepStats(s.accelerator.device, STEP_STATS)
        self.step = GANStep(cfg, s.accelerator, s.G, s.D, s.opt_g, s.opt_d, s.noise, s.ema)
        self.collapse_warned = False
        self.explode_ticks = 0  # consecutive ticks with |loss| > train.loss_limit
        self.bad_total = 0
        self.last_ckpt_nimg = self.last_sample_nimg = s.progress.nimg
        self.tick_start_nimg = s.progress.nimg
        self.tick_start_time = time.time()
        self.maintenance_time = 0.0

    def run(self) -> str:
        """Train until `train.kimg` or a stop signal; returns 'complete' or 'stopped'."""
        s = self.s
        next_tick = self.tick_start_nimg + self.tick_nimg
        if s.progress.nimg == 0:
            self.sample_grid()  # the untrained generator: the first frame of the progress animation
        while s.progress.nimg < self.total_nimg:
            if s.stop.poll():
                log.warning("stop requested (%s): saving a checkpoint at kimg %.3f and exiting",
                            s.stop.signame or "signal on another rank", s.progress.nimg / 1000)
                self.maintenance(final=True, stopping=True)
                return "stopped"
            self.train_step(next(s.batches))
            if s.progress.nimg >= next_tick and s.progress.nimg < self.total_nimg:
                self.maintenance()
                next_tick = s.progress.nimg + self.tick_nimg
        self.maintenance(final=True)
        return "complete"

    def train_step(self, batch: dict) -> None:
        """One step on one batch. Nothing here waits for the device: the batch's (pinned) uint8 images
        go over with non_blocking, the latents are drawn on the device from the rank's generator and
        the statistics stay there until the tick's reduction."""
        s, device = self.s, self.s.accelerator.device
        z = torch.randn(self.batch_per_rank, self.z_dim, generator=s.noise, device=device).to(s.dtype)
        real = to_unit_range(batch["image"], device, s.dtype)
        labels = batch["label"].to(device, non_blocking=True) if self.step.conditional else None
        apply_schedule(s.cfg, s.opt_g, s.opt_d, s.progress.nimg)
        self.stats.add(self.step(real, z, labels, s.progress.nimg + self.global_batch), batch["bad"])
        s.progress.nimg += self.global_batch
        s.progress.step += 1
        if s.tracker:
            s.tracker.step(self.global_batch)

    # ---- maintenance at tick boundaries -------------------------------------------------------

    def maintenance(self, final: bool = False, stopping: bool = False) -> None:
        nimg = self.s.progress.nimg
        if self.stats.steps > 0:  # a stop right after a tick has nothing new to report (it would log zeros)
            self.report()
        t0 = time.time()
        if final or nimg // self.sample_nimg > self.last_sample_nimg // self.sample_nimg:
            self.sample_grid()
            self.last_sample_nimg = nimg
        # Before the checkpoint (its meta can then hold the FID), and not when stopping: a preempted
        # job has seconds for its checkpoint, not minutes for an evaluation.
        due = final or nimg // max(self.eval_nimg, 1) > self.last_eval_nimg // max(self.eval_nimg, 1)
        if self.eval_nimg and due and not stopping:
            self.evaluate()
            self.last_eval_nimg = nimg
        if final or nimg // self.ckpt_nimg > self.last_ckpt_nimg // self.ckpt_nimg:
            self.save_checkpoint()
            self.last_ckpt_nimg = nimg
        self.maintenance_time = time.time() - t0
        self.tick_start_nimg, self.tick_start_time = nimg, time.time()

    def report(self) -> None:
        """Reduce the tick's stats across ranks (one collective), check them, log them."""
        s, nimg = self.s, self.s.progress.nimg
        values, bad = self.stats.reduce(s.accelerator)
        self.bad_total += bad
        if not all(math.isfinite(v) for v in values.values()):
            last = s.last_checkpoint or "none yet"
            raise TrainingDiverged(
                f"losses became non-finite between kimg {self.tick_start_nimg / 1000:.3f} and {nimg / 1000:.3f} "
                f"({', '.join(f'{k}={v:.4g}' for k, v in values.items())}). Nothing after the last checkpoint "
                f"({last}) is saved. Resume from it with resume=auto and lower optim.g_lr/optim.d_lr, set "
                "loss.real_label=0.9, or use train.mixed_precision=no.")
        self.check_explosion(values, nimg)
        values["Diversity/ratio"] = values["Diversity/fake"] / max(values["Diversity/real"], 1e-12)
        self.check_collapse(values["Diversity/ratio"], nimg)
        # The tick's clock starts after the previous maintenance, so this is training time only.
        train_time = max(time.time() - self.tick_start_time, 1e-9)
        values.update({
            "Speed/img_per_sec": (nimg - self.tick_start_nimg) / train_time,
            "Speed/sec_per_kimg": train_time * 1000 / max(nimg - self.tick_start_nimg, 1),
            "Speed/maintenance_sec": self.maintenance_time,
            "LR/G": s.opt_g.param_groups[0]["lr"],
            "LR/D": s.opt_d.param_groups[0]["lr"],
            "Data/bad_samples": float(self.bad_total),
            "Progress/kimg": nimg / 1000,
            **s.extra_scalars,
        })
        if s.dataset_size:
            values["Progress/epoch"] = nimg / s.dataset_size
        if s.tracker:
            s.tracker.tick(nimg, values)
            s.tracker.heartbeat(nimg)  # status.json: this run is alive (report tells dead runs by it)
        log.info("kimg %9.3f/%.3f | D %.4f G %.4f | D(x) %.3f D(G(z)) %.3f | %.1f img/s%s",
                 nimg / 1000, self.total_nimg / 1000, values["Loss/D"], values["Loss/G"], values["D/real"],
                 values["D/fake"], values["Speed/img_per_sec"],
                 f" | {self.bad_total} bad samples replaced" if self.bad_total else "")

    def check_explosion(self, values: dict[str, float], nimg: int) -> None:
        """Finite but exploding losses (e.g. a learning rate of 1e10 drives them to ~1e22) train nothing
        useful: stop like a NaN once they stay above train.loss_limit for train.loss_limit_ticks ticks.
        Every rank sees the same reduced values, so all stop at the same tick."""
        limit, ticks = self.s.cfg.train.loss_limit, self.s.cfg.train.loss_limit_ticks
        worst = max(abs(values["Loss/D"]), abs(values["Loss/G"]))
        self.explode_ticks = self.explode_ticks + 1 if limit and worst > limit else 0
        if self.explode_ticks >= ticks:
            raise TrainingDiverged(
                f"losses exploded: |loss| above train.loss_limit={limit:g} for {ticks} ticks in a row, up to kimg "
                f"{nimg / 1000:.3f} (Loss/D={values['Loss/D']:.4g}, Loss/G={values['Loss/G']:.4g}). Nothing after the "
                f"last checkpoint ({self.s.last_checkpoint or 'none yet'}) is saved. Resume from it with resume=auto "
                "and lower optim.g_lr/optim.d_lr, or raise train.loss_limit if such losses are expected (0 = off).")

    def check_collapse(self, ratio: float, nimg: int) -> None:
        """Warn (once per collapse) when generated batches are much less diverse than real ones. The
        first ticks are exempt: an untrained G draws near-identical blobs by construction."""
        threshold = self.s.cfg.train.collapse_threshold
        if not threshold or nimg < min(0.05 * self.total_nimg, 20 * self.tick_nimg):
            return
        if ratio < threshold and not self.collapse_warned and self.s.accelerator.is_main_process:
            log.warning("possible mode collapse at kimg %.3f: generated batches are %.2f as diverse as real ones "
                        "(Diversity/ratio < train.collapse_threshold=%g). Keep the earlier checkpoints; consider "
                        "augment.policy=color,translation,cutout, loss.label_flip, model.d_dropout or a lower optim.d_lr",
                        nimg / 1000, ratio, threshold)
        self.collapse_warned = ratio < threshold

    def sampler(self) -> torch.nn.Module:
        """The generator samples and FID use: the EMA (its BatchNorm statistics re-estimated) or G."""
        s = self.s
        G = s.accelerator.unwrap_model(s.G)
        return s.ema.recalibrate(G) if s.ema is not None else G

    def sample_grid(self) -> None:
        """Rank zero renders the fixed-noise grid with G in eval mode (no BatchNorm statistics change)."""
        s = self.s
        if s.tracker is None:
            return
        G = self.sampler()
        was_training = G.training
        G.eval()
        dtype = next(G.parameters()).dtype
        with torch.no_grad():
            z = s.fixed_z.to(s.accelerator.device, dtype)
            fakes = G(z) if s.fixed_labels is None else G(z, s.fixed_labels.to(s.accelerator.device))
        G.train(was_training)
        nimg = s.progress.nimg
        s.tracker.images("Samples/fixed_noise", fakes, nimg, layout.fakes_name(checkpoint.name_for(nimg)), nrow=s.grid_row)

    def evaluate(self) -> None:
        """Collective: FID (and IS) of G, logged to TensorBoard and metrics.jsonl; a new best FID is
        saved to checkpoints/best/, beside the rotation."""
        s, e, nimg = self.s, self.s.cfg.eval, self.s.progress.nimg
        extractor, ref = s.fid
        result = evaluate_generator(s.accelerator, self.sampler(), num=e.num, batch=e.batch, z_dim=s.cfg.model.z_dim,
                                    seed=s.cfg.seed, extractor=extractor, ref_stats=ref, progress=False,
                                    class_probs=s.class_probs)
        is_text = f" IS {result['is_mean']:.3f}" if result["is_mean"] is not None else ""
        log.info("kimg %9.3f | FID %.3f%s (%d samples, %.0f s)", nimg / 1000, result["fid"], is_text,
                 result["num"], result["seconds"])
        if s.tracker:
            s.tracker.metrics(nimg, result)
        if self.best_fid is None or result["fid"] < self.best_fid:  # every rank has the same number
            self.best_fid = result["fid"]
            self.save_checkpoint(name="best", extra={"fid": result["fid"], "fid_num": e.num})

    def save_checkpoint(self, name: Optional[str] = None, extra: Optional[dict] = None) -> None:
        """Collective. Also proves the ranks agree: each rank's parameter digest goes into meta.json."""
        s = self.s
        G, D = s.accelerator.unwrap_model(s.G), s.accelerator.unwrap_model(s.D)
        digests = gather_object([checkpoint.params_digest(G, D)])
        if len(set(digests)) > 1:
            log.error("ranks hold different parameters at kimg %.3f (digests %s): the processes are not "
                      "training in sync", s.progress.nimg / 1000, digests)
        meta = {**s.meta, "world_size": s.accelerator.num_processes, "param_digests": digests,
                "generator": "ema" if s.ema is not None else "G", **(extra or {})}
        path = checkpoint.save(s.accelerator, s.cfg.run.dir, s.progress, {"noise": s.noise.get_state()},
                               meta, keep=s.cfg.checkpoint.keep, generator=self.sampler(), name=name,
                               make_room=s.cfg.checkpoint.make_room)
        if name is not None:
            log.info("checkpoint %s (%s)", path, ", ".join(f"{k} {v:.4g}" for k, v in (extra or {}).items()))
            return
        s.last_checkpoint = str(path)
        log.info("checkpoint %s", path)
        if s.tracker:
            s.tracker.status("running", s.progress.nimg, checkpoint=str(path))
