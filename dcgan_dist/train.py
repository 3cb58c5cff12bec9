"""Train a DCGAN on one process, many GPUs or many nodes.

    accelerate launch --config_file launch/cpu.yaml -m dcgan_dist.train configs/quickstart.yaml [key=value ...]
    python -m dcgan_dist.train CONFIG --dry-run      # print the resolved config and exit

The same command runs unchanged on 1 GPU, 8 GPUs or several nodes: the accelerate config file
in launch/ says how many processes; the YAML config says what to train.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Optional

import torch
from accelerate.utils import set_seed
from omegaconf import OmegaConf

from . import checkpoint, config, engines, errors, layout, runlock, runtime, tracking
from .cadence import nothing_left, total_nimg
from .checkpoint import CheckpointError, CheckpointManager, Progress
from .config import Config, ConfigError
from .data import cache, locate, stream, workers
from .ema import build_ema
from .errors import UserError
from .evaluator import TrainingEvaluator
from .grid import SampleGrid
from .loop import Loop, Models
from .models import arch_signature, build_models, count_params
from .monitors import TrainingDiverged
from .optim import build_optimizers

log = logging.getLogger("dcgan_dist")

def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m dcgan_dist.train", formatter_class=argparse.RawDescriptionHelpFormatter,
        description=__doc__, epilog="config keys (set in the YAML file or as key=value):\n" + config.describe_keys())
    p.add_argument("config", help="YAML config file (may `extends:` another)")
    p.add_argument("overrides", nargs="*", help="key=value overrides, e.g. train.kimg=50 optim.g_lr=1e-4")
    p.add_argument("--dry-run", action="store_true", help="print the resolved config and exit without training")
    return p.parse_args(argv)


def overridden(cfg: Config, overrides: list[str]) -> dict:
    """The keys set on the command line (a sweep's settings) with their resolved values; run.* is bookkeeping."""
    resolved = OmegaConf.create(config.to_dict(cfg))
    keys = dict.fromkeys(o.split("=", 1)[0] for o in overrides)
    return {k: OmegaConf.select(resolved, k) for k in keys if not k.startswith("run.")}


def locate_data(cfg: Config, accelerator) -> locate.ShardSet:
    """Find and check the shards, and settle `data.workers` (auto: see data/workers.py) for every rank."""
    def find() -> tuple[locate.ShardSet, int]:
        shards = locate.resolve(cfg.data.shards, cfg.model.resolution, cfg.model.channels)
        n = workers.resolve(cfg.data.workers, device_type=accelerator.device.type, shards=len(shards.urls),
                            ranks=accelerator.num_processes)
        locate.check(shards, resolution=cfg.model.resolution, channels=cfg.model.channels,
                     ranks=accelerator.num_processes, workers=n)
        return shards, n

    # Each node's first rank goes first (it may write the embedded set once per node); an error it
    # finds reaches the other ranks as the same message instead of a broken barrier.
    first = accelerator.is_local_main_process
    found = runtime.agree(accelerator, lambda: find() if first else None, (UserError,))
    shards, n = runtime.agree(accelerator, lambda: found if first else find(), (UserError,))
    # One number for all ranks (the shards are split by rank x worker): rank zero's, where nodes differ.
    n = runtime.agree(accelerator, lambda: n, (UserError,), only_main=True)
    if cfg.data.workers == workers.AUTO:
        log.info("data.workers=auto: %d loader worker(s) per rank (%s, %d CPU(s) for %d rank(s) on this node, "
                 "%d shards)", n, accelerator.device.type, workers.usable_cpus(), workers.local_ranks(),
                 len(shards.urls))
    cfg.data.workers = n  # what the run records (config.yaml, checkpoint meta) and a resume compares
    check_classes(cfg, shards)
    if shards.counts is None:
        log.warning("no dataset.json beside the shards: epoch length is unknown and a resume re-reads the "
                    "skipped samples (write shards with `python -m dcgan_dist.prepare` to get one)")
    return shards


def build_loader(cfg: Config, accelerator, shards: locate.ShardSet, progress: Progress):
    """This rank's endless batch stream over `shards`, positioned at `progress`."""
    counts = shards.counts
    spec = stream.StreamSpec(
        urls=tuple(shards.urls), counts=tuple(counts) if counts else None,
        batch=runtime.batch_per_rank(cfg, accelerator.num_processes), rank=accelerator.process_index,
        world_size=accelerator.num_processes, workers=max(1, cfg.data.workers),
        resolution=cfg.model.resolution, channels=cfg.model.channels, seed=cfg.seed,
        shuffle_buffer=cfg.data.shuffle_buffer, hflip=cfg.data.hflip, start_batch=progress.step)
    pin = accelerator.device.type == "cuda"
    if cfg.data.cache == "memory":  # decoded once, batches built here: no worker processes
        return cache.make_memory_loader(spec, pin_memory=pin, progress=accelerator.is_local_main_process)
    return stream.make_loader(spec, cfg.data.workers, cfg.data.prefetch, pin_memory=pin)


def check_classes(cfg: Config, shards) -> None:
    """A conditional model needs shards whose dataset.json names exactly model.num_classes classes."""
    n = cfg.model.num_classes
    if not n:
        return
    classes = shards.index.classes if shards.index else []
    if not classes:
        raise ConfigError(f"model.num_classes={n} (conditional) but the shards {cfg.data.shards} carry no class "
                          "labels (no dataset.json with classes): prepare them from class folders without "
                          "--no-labels, or set model.num_classes=0")
    if len(classes) != n:
        raise ConfigError(f"model.num_classes={n} but the shards have {len(classes)} classes "
                          f"({', '.join(classes[:12])}{', ...' if len(classes) > 12 else ''}): "
                          f"set model.num_classes={len(classes)}")


def build_training(cfg: Config, accelerator, precision: str) -> Models:
    """Models and optimizers, identically initialised on every rank, prepared for DDP or DeepSpeed."""
    set_seed(cfg.seed)
    G, D = build_models(cfg.model)
    log.info("G: %s parameters, D: %s parameters", f"{count_params(G):,}", f"{count_params(D):,}")
    opt_g, opt_d = build_optimizers(cfg, G, D)
    G, D, opt_g, opt_d, dtype = engines.prepare(accelerator, G, D, opt_g, opt_d, precision)
    ema = build_ema(accelerator.unwrap_model(G), cfg, runtime.batch_per_rank(cfg, accelerator.num_processes),
                    accelerator.device)
    if ema is not None:
        accelerator.register_for_checkpointing(ema)  # saved and restored with the training state
        log.info("EMA of G: half-life %g kimg, ramp-up %g", cfg.ema.half_life_kimg, cfg.ema.rampup)
    set_seed(cfg.seed, device_specific=True)  # dropout masks differ across ranks from here on
    return Models(G, D, opt_g, opt_d, ema, dtype)


def resume(cfg: Config, accelerator, noise: torch.Generator, arch: dict) -> tuple[Progress, Optional[dict]]:
    """Restore the newest (or the named) checkpoint into the prepared objects and the noise generator;
    return the position and the rest of this rank's own state (a fresh Progress and None if none)."""
    # Rank zero verifies the files (and falls back past damaged ones); every rank loads what it chose.
    path = runtime.agree(accelerator, lambda: checkpoint.find_resume(cfg.run.dir, cfg.resume), (UserError,),
                         only_main=True)
    if path is None:
        return Progress(), None
    meta = checkpoint.read_meta(path)
    checkpoint.verify_compatible(path, meta, arch)
    progress, rank_state = runtime.agree(accelerator, lambda: checkpoint.load(accelerator, path), (UserError,))
    layout = {"world_size": accelerator.num_processes, "workers": max(1, cfg.data.workers), "batch": cfg.train.batch}
    changed = {k: (meta.get(k), v) for k, v in layout.items() if meta.get(k) != v}
    if changed:
        log.warning("resuming with a different %s than the checkpoint: training continues correctly but does not "
                    "replay the exact data order and noise of an uninterrupted run", changed)
    if rank_state is not None:
        runtime.restore_noise(noise, rank_state["noise"], path)
    log.info("resumed from %s at kimg %.3f (step %d)", path, progress.nimg / 1000, progress.step)
    return progress, rank_state


def claim_run_dir(accelerator, run_dir: Path) -> Optional[runlock.RunLock]:
    """Rank zero takes the run directory's lock before anything there is written (one training per
    run.dir), then clears what interrupted saves left; every rank learns the outcome."""
    held: list[runlock.RunLock] = []

    def take() -> None:
        try:
            held.append(runlock.RunLock.acquire(run_dir))
            for stale in checkpoint.clean_partial(run_dir):
                log.warning("removed an interrupted checkpoint save: %s", stale)
        except OSError as e:  # a full disk or a read-only mount: say so on every rank, not as a traceback
            raise CheckpointError(f"cannot write in run.dir {run_dir} ({e}): check its disk space and permissions, "
                                  "or point run.dir elsewhere") from None

    runtime.agree(accelerator, take, (UserError,), only_main=True)
    return held[0] if held else None


def record_failure(accelerator, run_dir: Path, lock, started: bool, error: str) -> None:
    """status.json = failed, for `report` and Slurm, unless the run belongs to someone else (no lock) or
    this start was refused before training: a refused start leaves an existing run's records alone."""
    if accelerator.is_main_process and lock is not None and (started or not (run_dir / layout.STATUS).exists()):
        try:
            tracking.write_status(run_dir, "failed", error=error)
        except OSError as e:  # the disk that failed the run may refuse this too; the error is logged anyway
            log.warning("could not record the failure in %s: %s", run_dir / layout.STATUS, e)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        cfg = config.load(args.config, args.overrides)
        if args.dry_run:
            print(config.to_yaml(cfg), end="")
            return 0
        accelerator, precision = runtime.make_accelerator(cfg)
    except UserError as e:  # before logging is set up: the console only
        return errors.report(e)
    run_dir = Path(cfg.run.dir)
    # The console only, until the lock says this run.dir is ours: a refused start writes nothing there.
    tracking.setup_logging(None, accelerator.is_main_process, accelerator.process_index)
    tracker = batches = lock = models = loader = checkpoints = evaluator = None
    code, together = 0, True  # the exit status; whether every rank leaves through the same point
    started = False  # from here on the run's records (config.yaml, status.json) are this start's to write
    try:
        lock = claim_run_dir(accelerator, run_dir)
        tracking.setup_logging(run_dir, accelerator.is_main_process, accelerator.process_index)
        log.info("run %s: world size %d (%s), device %s, mixed precision %s, %d images per rank per step",
                 run_dir, accelerator.num_processes, accelerator.distributed_type, accelerator.device,
                 precision, runtime.batch_per_rank(cfg, accelerator.num_processes))
        arch = arch_signature(cfg.model)
        models = build_training(cfg, accelerator, precision)
        noise = runtime.noise_generator(cfg.seed, accelerator)
        shards = locate_data(cfg, accelerator)  # before resume: it settles data.workers, which resume compares
        progress, rank_state = resume(cfg, accelerator, noise, arch)
        loader = build_loader(cfg, accelerator, shards, progress)
        evaluator = TrainingEvaluator.build(cfg, accelerator, shards)
        checkpoints = CheckpointManager(cfg, accelerator, arch, generator_kind="ema" if models.ema else "G")
        if accelerator.is_main_process:  # every start-up check passed: only now touch the run's records
            tracking.prepare_run_dir(cfg)
            tracker = tracking.Tracker(cfg, run_dir, progress.nimg, total_nimg(cfg), accelerator.num_processes)
            tracker.status("running", progress.nimg)
            if progress.nimg == 0:
                m = cfg.model
                reals = stream.preview(shards.urls, cfg.train.sample_grid, m.resolution, m.channels)
                tracker.images("Samples/reals", reals, 0, layout.REALS)
        started = True
        stop = runtime.StopRequest(accelerator.num_processes)  # before the loader forks its workers
        batches = iter(loader)
        done = nothing_left(cfg, progress.nimg, progress.seconds)  # the same answer on every rank
        if done:
            log.info("%s", done)
            outcome = "complete"
        else:
            outcome = Loop(cfg, accelerator, models, batches, noise, progress, stop, tracker, checkpoints,
                           SampleGrid.from_config(cfg), evaluator,
                           dataset_size=shards.index.count if shards.index else None, rank_state=rank_state).run()
        stop.close()
        if tracker:
            tracker.status(outcome, progress.nimg, checkpoint=checkpoints.last)
            if outcome == "complete":
                tracker.hparams(overridden(cfg, args.overrides), progress.nimg)
            log.info("%s at kimg %.3f; run directory %s", outcome, progress.nimg / 1000, run_dir)
    except (UserError, TrainingDiverged) as e:
        # Raised by every rank at the same point (agreed, or judged on the same reduced statistics):
        # said once, by rank 0.
        collective = getattr(e, "shared", False) or isinstance(e, TrainingDiverged)
        if accelerator.is_main_process or not collective:
            log.error("%s", e)
        record_failure(accelerator, run_dir, lock, started, str(e))
        # Every rank raised a collective error at the same point: they leave together (below), before
        # torchrun, seeing one rank gone, SIGTERMs the others. A rank's own error cannot wait for them.
        together = collective
        code = errors.EXIT_USER_ERROR if isinstance(e, UserError) else 1
    except BaseException as e:  # a bug or a crash: record it for `report`/Slurm, then show the traceback
        record_failure(accelerator, run_dir, lock, started, f"{type(e).__name__}: {e}")
        if runtime.peer_lost(e):
            # Another rank failed (its own message says why) or died: this rank's collective traceback
            # would only bury that message.
            log.error("lost contact with another rank (%s): it failed (its message says why) or was killed",
                      str(e).splitlines()[0][:200])
            return 1
        raise
    finally:
        if tracker:
            tracker.close()
        # The loader's workers ignore SIGTERM (see data/stream.py), so after an unexpected exception the
        # interpreter's exit would wait for them forever while the other ranks wait in a collective:
        # tell them to stop now, on every exit path.
        if hasattr(batches, "_shutdown_workers"):
            batches._shutdown_workers()
        if lock is not None:  # last: after the final status and the workers (forked with its descriptor)
            lock.release()
    # Drop every reference to the prepared objects before the process group ends (see runtime.shutdown):
    # on the error paths too, or rank 0 can abort at exit and turn exit status 2 into SIGABRT.
    models = loader = checkpoints = evaluator = None
    runtime.shutdown(accelerator, together=together)
    return code


if __name__ == "__main__":
    sys.exit(main())
