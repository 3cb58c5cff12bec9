"""What a run leaves for people: the run directory, the text log, TensorBoard, stats.jsonl, sample grids.

Per-step numbers are accumulated on the device (no `.item()` in the hot loop, which would sync
the GPU every step) and reduced across ranks once per tick. Only rank zero writes files.

The run directory's files are named in layout.py.
"""

from __future__ import annotations

import functools
import json
import logging
import math
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any, Optional

import torch
from tqdm import tqdm

from . import config as config_mod
from . import layout, runlock
from .config import Config
from .data.images import image_grid, save_png
from .errors import UserError

log = logging.getLogger("dcgan_dist")

# The last tick's values that TensorBoard's HParams tab shows beside a run's settings.
FINAL_METRICS = ("Loss/D", "Loss/G", "D/real", "D/fake", "Diversity/ratio", "Speed/img_per_sec")


class _TqdmHandler(logging.StreamHandler):
    """Log lines that do not tear the progress bar."""

    def emit(self, record: logging.LogRecord) -> None:
        tqdm.write(self.format(record), file=sys.stderr)


def setup_logging(run_dir: Optional[Path], is_main: bool, rank: int) -> None:
    """Rank zero logs INFO to stderr and log.txt; other ranks only warnings, tagged with their rank."""
    log.handlers.clear()
    log.propagate = False
    log.setLevel(logging.INFO if is_main else logging.WARNING)
    fmt = logging.Formatter(f"%(asctime)s [rank {rank}] %(levelname)s %(message)s", "%Y-%m-%d %H:%M:%S")
    console = _TqdmHandler()
    console.setFormatter(fmt)
    log.addHandler(console)
    if is_main and run_dir is not None:
        file_handler = logging.FileHandler(run_dir / layout.LOG)
        file_handler.setFormatter(fmt)
        log.addHandler(file_handler)


def write_json_atomic(path: Path, obj: dict) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2) + "\n")
    os.replace(tmp, path)


def write_status(run_dir: Path, state: str, **fields) -> None:
    """`status.json`: running | stopped | complete | failed, for people and for job scripts (requeue or not).
    It also names the writer (host, rank zero's and the launcher's PID, Slurm job: `runlock.identity()`)
    and carries a heartbeat (Unix time), by which `report` shows a `running` run whose trainer is gone
    as `dead`."""
    write_json_atomic(Path(run_dir) / layout.STATUS,
                      {"state": state, **fields, **runlock.identity(), "heartbeat": time.time(),
                       "updated": time.strftime("%Y-%m-%dT%H:%M:%S%z")})


class StepStats:
    """Per-step statistics summed on the device, plus host counters; `reduce()` once per tick
    returns the means over all steps of all ranks and the summed counters."""

    def __init__(self, device: torch.device, names: tuple[str, ...]):
        self.device, self.names = device, names  # names of the stacked values `add` receives, in order
        self.sums = torch.zeros(len(names), dtype=torch.float64, device=device)
        self.steps = 0
        self.bad_samples = 0  # unreadable samples the data stream replaced (a host int, no sync)

    def add(self, values: torch.Tensor, bad_samples: int = 0) -> None:
        self.sums += values.detach().to(torch.float64)
        self.steps += 1
        self.bad_samples += bad_samples

    def reduce(self, accelerator, host_means: Optional[dict[str, float]] = None) -> tuple[dict[str, float], int]:
        """`host_means`: host numbers to average over the ranks in the same collective (every rank then
        holds the same value, so decisions taken on it agree without another collective)."""
        extra = dict(host_means or {})
        host = torch.tensor([*extra.values(), float(self.steps), float(self.bad_samples)], dtype=torch.float64,
                            device=self.device)
        packed = accelerator.reduce(torch.cat([self.sums, host]), reduction="sum").cpu()  # the tick's one sync
        steps = max(packed[-2].item(), 1.0)
        self.sums.zero_()
        self.steps = self.bad_samples = 0
        values = {name: packed[i].item() / steps for i, name in enumerate(self.names)}
        n = len(self.names)
        values.update({k: packed[n + i].item() / accelerator.num_processes for i, k in enumerate(extra)})
        return values, int(packed[-1].item())


class RunDirError(UserError, OSError):
    """Rank zero could not write a run file (a full disk, a read-only mount): one message naming the
    file, the free space and the fix, instead of a traceback from deep inside PIL or json."""


def _writes(what: str):
    """Turn an OSError in a Tracker method into a RunDirError that names `what`, the disk and the fix."""
    def wrap(method):
        @functools.wraps(method)
        def guarded(self, *args, **kwargs):
            try:
                return method(self, *args, **kwargs)
            except RunDirError:
                raise
            except OSError as e:
                try:
                    free = f"{shutil.disk_usage(self.run_dir).free / 1e6:.1f} MB free"
                except OSError:
                    free = "free space unknown"
                raise RunDirError(
                    f"cannot write {what} in {self.run_dir} ({e.strerror or e}; {free}). Free space or fix the "
                    "disk (or move run.dir), then run the same command again: resume=auto continues from the newest "
                    "checkpoint.") from None
        return guarded
    return wrap


class Tracker:
    """Rank zero's writers: TensorBoard, stats.jsonl, status.json, sample grids, the progress bar."""

    def __init__(self, cfg: Config, run_dir: Path, start_nimg: int, total_nimg: int, world_size: int):
        from torch.utils.tensorboard import SummaryWriter  # imported here: only rank zero needs it

        self.run_dir = run_dir
        self.samples_dir = run_dir / layout.SAMPLES
        self.samples_dir.mkdir(parents=True, exist_ok=True)
        # purge_step drops events a crashed attempt logged past the checkpoint we resume from.
        self.writer = SummaryWriter(str(run_dir), purge_step=start_nimg if start_nimg > 0 else None)
        self.stats_file = open(run_dir / layout.STATS, "a")
        self.world_size = world_size
        self.total_nimg = total_nimg
        self.last_values: dict[str, float] = {}
        self.last_status: tuple[str, dict] = ("running", {})  # what heartbeat() writes again
        self.bar = tqdm(total=total_nimg, initial=start_nimg, unit="img", unit_scale=True, dynamic_ncols=True,
                        desc=cfg.run.name, smoothing=0.1, file=sys.stderr,
                        # In a log file (Slurm, CI) a redraw is a line: redraw rarely there.
                        mininterval=0.5 if sys.stderr.isatty() else 30.0)

    def step(self, nimg: int) -> None:
        self.bar.update(nimg)

    def retarget(self, total_nimg: int) -> None:
        """The run's end moved (a time budget: the images it will reach at the current speed): the bar
        and status.json's total_kimg follow it."""
        self.total_nimg = total_nimg
        if total_nimg != self.bar.total:
            self.bar.total = total_nimg
            self.bar.refresh()

    @_writes("the tick's statistics (stats.jsonl, TensorBoard)")
    def tick(self, nimg: int, values: dict[str, float]) -> None:
        """Write one tick's scalars; `values` maps TensorBoard tags to numbers."""
        for tag, v in values.items():
            self.writer.add_scalar(tag, v, global_step=nimg)
        self.writer.flush()
        self.stats_file.write(json.dumps({"kimg": nimg / 1000, **values}) + "\n")
        self.stats_file.flush()
        self.last_values = values
        self.bar.set_postfix_str(f"D {values['Loss/D']:.3f} G {values['Loss/G']:.3f} "
                                 f"D(x) {values['D/real']:.2f} D(G(z)) {values['D/fake']:.2f}", refresh=False)

    @_writes("the evaluation's metrics (metrics.jsonl)")
    def metrics(self, nimg: int, result: dict) -> None:
        """One evaluation: TensorBoard `Metrics/*` (what was computed) and a line of metrics.jsonl (the
        result as it is: `kid` is {"mean", "std"} x 10^3, and null like `precision`/`recall` when not asked for)."""
        kid = result.get("kid") or {}
        scalars = {"Metrics/fid": result.get("fid"), "Metrics/kid": kid.get("mean"), "Metrics/kid_std": kid.get("std"),
                   "Metrics/precision": result.get("precision"), "Metrics/recall": result.get("recall"),
                   "Metrics/is_mean": result.get("is_mean"), "Metrics/is_std": result.get("is_std")}
        for tag, value in scalars.items():
            if value is not None:
                self.writer.add_scalar(tag, value, global_step=nimg)
        self.writer.flush()
        with open(self.run_dir / layout.METRICS, "a") as f:
            f.write(json.dumps({"kimg": nimg / 1000, **result}) + "\n")

    @_writes("a sample grid (samples/)")
    def images(self, tag: str, images: torch.Tensor, nimg: int, filename: str, nrow: Optional[int] = None) -> Path:
        """Save an image grid (values in [-1, 1]; `nrow` images per row, default square) as PNG and as a
        TensorBoard image."""
        nrow = nrow or max(1, int(math.sqrt(images.shape[0])))
        grid = image_grid(images, nrow)  # uint8: the PNG, TensorBoard and `sample` show the same pixels
        path = self.samples_dir / filename
        save_png(grid, path)
        self.writer.add_image(tag, grid, global_step=nimg)
        self.writer.flush()
        return path

    @_writes("the run's hparams (TensorBoard)")
    def hparams(self, hparams: dict[str, Any], nimg: int) -> None:
        """The run's settings (e.g. a sweep's overrides) and final numbers, for TensorBoard's HParams tab."""
        if not hparams:
            return
        metrics = {f"final/{k}": v for k, v in self.last_values.items() if k in FINAL_METRICS}
        metrics["final/kimg"] = nimg / 1000
        values = {k: v if isinstance(v, (bool, int, float, str)) else str(v) for k, v in hparams.items()}
        # run_name=".": written into the run's own directory, so the tab lists the run under its own name.
        self.writer.add_hparams(values, metrics, run_name=".", global_step=nimg)

    @_writes(layout.STATUS)
    def status(self, state: str, nimg: int, **extra) -> None:
        self.last_status = (state, extra)
        write_status(self.run_dir, state, kimg=nimg / 1000, total_kimg=self.total_nimg / 1000,
                     world_size=self.world_size, **extra)

    def heartbeat(self, nimg: int) -> None:
        """Once per tick: status.json again (the last state and checkpoint) with the current kimg and a
        fresh heartbeat; one small atomic write."""
        state, extra = self.last_status
        self.status(state, nimg, **extra)

    def close(self) -> None:
        self.bar.close()
        self.writer.close()
        self.stats_file.close()


def prepare_run_dir(cfg: Config) -> Path:
    """Create the run directory and store the resolved config there (rank zero)."""
    run_dir = Path(cfg.run.dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / layout.CONFIG).write_text(config_mod.to_yaml(cfg))
    return run_dir
