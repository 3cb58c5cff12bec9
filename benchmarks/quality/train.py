"""Step 1, training: the trainer launched under accelerate on a time and/or image budget, the
checkpoint spacing (given, from --kimg, or calibrated from a first launch that is stopped and
resumed). Each launch is followed by launch.Launch. The result is RUN/quality_train.json, which
--reuse reads back."""

from __future__ import annotations

import math
import shlex
import statistics
import time
from pathlib import Path
from typing import Optional

from dcgan_dist import layout

from ..launcher import train_cmd
from .common import BenchError, fmt_duration, fmt_kimg, read_json, say, write_json
from .launch import Launch, speeds

DEFAULT_KIMG = 1_000_000.0  # "until the budget is spent"
KEEP = 1000  # checkpoint.keep: keep every checkpoint the spacing gives
NO_CHECKPOINTS_KIMG = 1e9  # checkpoint.every_kimg while calibrating: only the stop checkpoint
RECORD = "quality_train.json"  # in the run directory: what --reuse reads back
LOG = "quality_train.log"  # in the run directory: every launch's output


def load_training(subject) -> dict:
    """--reuse: the training record this benchmark wrote, which must be for the same config and overrides."""
    train = read_json(subject.run_dir / RECORD)
    then = (train.get("config_path"), train.get("overrides"))
    if then != (str(Path(subject.config).resolve()), subject.overrides):
        raise BenchError(f"--reuse: {subject.run_dir} was trained with {then[0]} {' '.join(then[1] or [])}, not "
                         f"with {subject.config} {' '.join(subject.overrides)}; give the same config and overrides")
    say(f"training reused: {train['state']} at kimg {fmt_kimg(train['kimg'])}, "
        f"{fmt_duration(train['wall_s'])} ({subject.run_dir / RECORD})")
    return train


class Trainer:
    """Trains one subject (cli.Subject: config, overrides, run directory) on the budget of `args`."""

    def __init__(self, args, subject):
        self.args, self.subject, self.run = args, subject, subject.run_dir
        self.tick = float(subject.cfg["train"]["tick_kimg"])
        self.kimg = args.kimg if args.kimg is not None else DEFAULT_KIMG
        self.budget = args.minutes * 60 if args.minutes is not None else None
        self.log_path = self.run / LOG
        self.phases: list[dict] = []
        self.commands: list[str] = []
        self.deadline: Optional[float] = None

    def spacing(self, kimg: float) -> float:
        """`kimg` rounded to whole ticks (checkpoints happen at tick boundaries), at least one tick."""
        ticks = max(1, round(kimg / self.tick))
        return float(f"{ticks * self.tick:.6g}")

    def command(self, every_kimg: float) -> list[str]:
        s = self.subject
        # The wall-clock deadline (which counts start-ups too) is this benchmark's to enforce, by SIGTERM.
        # The trainer gets a time budget a minute longer, which therefore never ends the run first: it
        # only gives the trainer's progress bar and status.json the end that the deadline will give.
        # Without --minutes: none (0), whatever the config says, so --kimg alone sets the length.
        minutes = self.args.minutes + 1 if self.args.minutes is not None else 0
        return train_cmd(s.config, [*s.overrides, f"run.dir={self.run}", f"train.kimg={self.kimg:g}",
                                    f"train.minutes={minutes:g}",
                                    f"checkpoint.every_kimg={every_kimg:g}", f"checkpoint.keep={KEEP}",
                                    "eval.every_kimg=0"], self.args.launch)

    def phase(self, name: str, every_kimg: float, calibrate: bool = False) -> dict:
        cmd = self.command(every_kimg)
        self.commands.append(shlex.join(cmd))
        record = Launch(name, cmd, self.run, self.log_path, self.deadline, self.budget, calibrate,
                        self.args.progress_every).follow(self.tick)
        self.phases.append(record)
        return record

    def train(self) -> dict:
        a = self.args
        t_start = time.monotonic()
        self.deadline = t_start + self.budget if self.budget else None
        calibration = None
        if a.every_kimg is not None:
            every = self.spacing(a.every_kimg)
            how = "--every-kimg"
        elif a.kimg is not None:
            every = self.spacing(a.kimg / a.checkpoints)
            how = f"--kimg / {a.checkpoints}"
        else:
            every, how, calibration = self.calibrate()
        if every is not None:
            say(f"training: checkpoint every {fmt_kimg(every)} kimg ({how})")
            self.phase("train", every)
        wall = time.monotonic() - t_start
        last = self.phases[-1]
        status = read_json(self.run / layout.STATUS)
        rates = [r for p in self.phases for r in speeds(p.pop("_ticks")) if math.isfinite(r)]
        train_wall = sum(p["wall_s"] for p in self.phases)
        # A run that ends with the calibration launch ends there because the budget is used up.
        stopped_by = "budget" if last["stopped_by"] == "calibration" else last["stopped_by"]
        s = self.subject
        record = {
            "state": last["state"], "stopped_by": stopped_by, "kimg": status.get("kimg"),
            "target_kimg": self.kimg, "minutes": a.minutes, "world_size": status.get("world_size"),
            "wall_s": train_wall, "wall_incl_overhead_s": wall,
            "img_per_sec_median": statistics.median(rates) if rates else None,
            "img_per_sec_overall": (status.get("kimg") or 0) * 1000 / max(train_wall, 1e-9),
            "ticks": len(rates), "every_kimg": every, "spacing": how if every is not None else None,
            "calibration": calibration, "launches": self.phases, "commands": self.commands,
            "log": str(self.log_path), "config": s.config, "config_path": str(Path(s.config).resolve()),
            "overrides": s.overrides, "launch_config": a.launch,
        }
        write_json(self.run / RECORD, record)
        return record

    def calibrate(self) -> tuple[Optional[float], str, dict]:
        """--minutes alone: measure the speed in a first launch, then the spacing for the rest of the budget
        (None: nothing left to train)."""
        a = self.args
        say(f"training: calibrating the speed (checkpoint spacing for ~{a.checkpoints} checkpoints in "
            f"{a.minutes:g} min)")
        first = self.phase("calibrate", NO_CHECKPOINTS_KIMG, calibrate=True)
        rate = first["calibrated_img_per_sec"]
        startup = first["startup_s"]
        left = self.deadline - time.monotonic()
        # The calibration left one checkpoint: the resumed launch adds the other N - 1.
        n = max(a.checkpoints - 1, 1)
        # Start-up times vary with machine load: count on at least half the time left for training.
        every = self.spacing(max(rate * max(left - startup, left / 2), 1.0) / 1000 / n)
        how = f"{rate:.1f} img/s x ({left:.0f} s left - {startup:.0f} s start-up) / {n}"
        calibration = {"img_per_sec": rate, "startup_s": startup, "seconds_left": left, "kimg": first["kimg"]}
        if first["state"] == "complete":
            every = None
        elif left <= 0:
            say("warning: the calibration used up the budget: training ends with it; give a larger --minutes, "
                "or --every-kimg")
            every = None
        elif left - startup < 2 * self.tick * 1000 / rate:
            say(f"warning: {left:.0f} s left is short for a resumed launch (start-up ~{startup:.0f} s): it will "
                "overrun the budget (it stops at its first tick); give a larger --minutes, or --every-kimg")
        return every, how, calibration
