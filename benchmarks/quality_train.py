"""Step 1 of benchmarks/quality.py, training: the trainer launched under accelerate on a time and/or
image budget, the checkpoint spacing (given, from --kimg, or calibrated from a first launch that is
stopped and resumed), SIGTERM when the budget is spent, and the checks that each launch ended as
expected. The result is RUN/quality_train.json, which --reuse reads back."""

from __future__ import annotations

import json
import math
import re
import shlex
import signal
import statistics
import time
from pathlib import Path
from typing import Optional

from quality_common import BenchError, fmt_duration, fmt_kimg, read_json, say, write_json
from quality_proc import Child, accelerate_cmd, read_from, tail

DEFAULT_KIMG = 1_000_000.0  # "until the budget is spent"
KEEP = 1000  # checkpoint.keep: keep every checkpoint the spacing gives
NO_CHECKPOINTS_KIMG = 1e9  # checkpoint.every_kimg while calibrating: only the stop checkpoint
ECHO = re.compile(r"\] (WARNING|ERROR)|world size|checkpoint /|resumed from")
RECORD = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d \[rank \d+\] ")  # the start of a log record
STOP_TIMEOUT_S = 180  # a launcher still running this long after SIGTERM is killed and the step fails


class _Follower:
    """A file read on from where the last read stopped; from its end at construction, so that a resumed
    launch sees only what it wrote itself."""

    def __init__(self, path: Path):
        self.path = path
        self.pos = path.stat().st_size if path.exists() else 0

    def unread(self) -> bytes:
        return read_from(self.path, self.pos) or b""


class LogEcho(_Follower):
    """Prints the interesting lines of a child's log (warnings, errors, checkpoints) as they appear."""

    def __init__(self, path: Path):
        super().__init__(path)
        self.rest = ""  # a line not finished yet

    def __call__(self) -> None:
        data = self.unread()
        self.pos += len(data)
        parts = re.split(r"[\r\n]", self.rest + data.decode(errors="replace"))
        self.rest = parts.pop()
        for line in parts:
            start = RECORD.search(line)  # a record may follow a progress bar redraw on the same line
            if start and ECHO.search(line, start.start()):
                print(f"    | {line[start.start():].strip()[:240]}", flush=True)


class StatsReader(_Follower):
    """New lines of RUN/stats.jsonl (one per tick) since construction."""

    def __init__(self, path: Path):
        super().__init__(path)
        self.ticks: list[dict] = []

    def update(self) -> list[dict]:
        data = self.unread()
        complete = data[:data.rfind(b"\n") + 1]  # a line being written is read on the next call
        self.pos += len(complete)
        new = [json.loads(line) for line in complete.decode().splitlines() if line.strip()]
        self.ticks += new
        return new


def load_training(args, run_dir: Path) -> dict:
    """--reuse: the training record this script wrote, which must be for the same config and overrides."""
    train = read_json(run_dir / "quality_train.json")
    then = (train.get("config_path"), train.get("overrides"))
    if then != (str(Path(args.config).resolve()), args.overrides):
        raise BenchError(f"--reuse: {run_dir} was trained with {then[0]} {' '.join(then[1] or [])}, not with "
                         f"{args.config} {' '.join(args.overrides)}; give the same config and overrides")
    say(f"training reused: {train['state']} at kimg {fmt_kimg(train['kimg'])}, "
        f"{fmt_duration(train['wall_s'])} ({run_dir / 'quality_train.json'})")
    return train


class Trainer:
    def __init__(self, args, cfg: dict, run_dir: Path):
        self.args, self.run = args, run_dir
        self.tick = float(cfg["train"]["tick_kimg"])
        self.kimg = args.kimg if args.kimg is not None else DEFAULT_KIMG
        self.budget = args.minutes * 60 if args.minutes is not None else None
        self.log_path = run_dir / "quality_train.log"
        self.phases: list[dict] = []
        self.commands: list[str] = []
        self.deadline: Optional[float] = None

    def spacing(self, kimg: float) -> float:
        """`kimg` rounded to whole ticks (checkpoints happen at tick boundaries), at least one tick."""
        ticks = max(1, round(kimg / self.tick))
        return float(f"{ticks * self.tick:.6g}")

    def command(self, every_kimg: float) -> list[str]:
        return [*accelerate_cmd(), "launch", "--config_file", self.args.launch, "-m", "dcgan_dist.train",
                self.args.config, *self.args.overrides, f"run.dir={self.run}", f"train.kimg={self.kimg:g}",
                f"checkpoint.every_kimg={every_kimg:g}", f"checkpoint.keep={KEEP}", "eval.every_kimg=0"]

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
        status = read_json(self.run / "status.json")
        rates = [t["Speed/img_per_sec"] for p in self.phases for t in p.pop("_ticks")
                 if math.isfinite(t.get("Speed/img_per_sec", math.nan))]
        train_wall = sum(p["wall_s"] for p in self.phases)
        # A run that ends with the calibration launch ends there because the budget is used up.
        stopped_by = "budget" if last["stopped_by"] == "calibration" else last["stopped_by"]
        record = {
            "state": last["state"], "stopped_by": stopped_by, "kimg": status.get("kimg"),
            "target_kimg": self.kimg, "minutes": a.minutes, "world_size": status.get("world_size"),
            "wall_s": train_wall, "wall_incl_overhead_s": wall,
            "img_per_sec_median": statistics.median(rates) if rates else None,
            "img_per_sec_overall": (status.get("kimg") or 0) * 1000 / max(train_wall, 1e-9),
            "ticks": len(rates), "every_kimg": every, "spacing": how if every is not None else None,
            "calibration": calibration, "launches": self.phases, "commands": self.commands,
            "log": str(self.log_path), "config": a.config, "config_path": str(Path(a.config).resolve()),
            "overrides": a.overrides, "launch_config": a.launch,
        }
        write_json(self.run / "quality_train.json", record)
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

    def phase(self, name: str, every_kimg: float, calibrate: bool = False) -> dict:
        """One launch of the trainer, followed until it exits; SIGTERM once the budget is spent (or, when
        calibrating, once the speed is measured)."""
        a = self.args
        cmd = self.command(every_kimg)
        self.commands.append(shlex.join(cmd))
        stats = StatsReader(self.run / "stats.jsonl")
        echo = LogEcho(self.log_path)
        child = Child(cmd, self.log_path, f"training ({name})")
        say(f"training ({name}): {shlex.join(cmd)}")
        say(f"  output: {self.log_path}")
        sent_at = sent_wall = None
        stopped_by = None
        first_tick_at = None
        warned_early = False
        next_report = time.monotonic() + a.progress_every
        while child.poll() is None:
            time.sleep(0.25)
            echo()
            new = stats.update()
            now = time.monotonic()
            if new and first_tick_at is None:
                first_tick_at = now - child.t0
            ticks = stats.ticks
            if sent_at is None:
                over = self.deadline is not None and now >= self.deadline
                why = None
                # Not before the first tick: until then the trainer may not handle SIGTERM yet.
                if calibrate and ticks and (len(ticks) >= 3 or over or (
                        len(ticks) >= 2 and now - child.t0 >= 0.1 * self.budget)):
                    why = "calibration"
                elif over and ticks:
                    why = "budget"
                elif over and not warned_early:
                    say("the budget is spent before the trainer's first tick: stopping it at its first tick")
                    warned_early = True
                if why:
                    stopped_by = why
                    sent_wall = now - child.t0
                    kimg = ticks[-1]["kimg"]
                    say(f"training ({name}): {'budget spent' if why == 'budget' else 'speed measured'} at "
                        f"kimg ~{fmt_kimg(kimg)}: SIGTERM to the launcher (the trainer checkpoints and stops)")
                    sent_at = time.time()  # wall clock: compared with status.json's mtime below
                    child.proc.send_signal(signal.SIGTERM)
            if now >= next_report and ticks:
                t = ticks[-1]
                left = f", budget left {fmt_duration(max(self.deadline - now, 0))}" if self.deadline else ""
                say(f"training ({name}): kimg {fmt_kimg(t['kimg'])}, {t.get('Speed/img_per_sec', 0):.1f} img/s, "
                    f"{fmt_duration(now - child.t0)} in this launch{left}")
                next_report = now + a.progress_every
            if sent_at is not None and time.time() - sent_at > STOP_TIMEOUT_S:
                child.stop(grace=5)
                raise BenchError(f"training ({name}) did not exit within {STOP_TIMEOUT_S} s of SIGTERM; "
                                 f"log: {self.log_path}")
        echo()
        stats.update()
        rc = child.poll()
        status = self.check_exit(name, child, sent_at)
        state = status.get("state")
        if state == "complete":  # reached train.kimg (before or despite a SIGTERM)
            stopped_by = "kimg"
        record = {"phase": name, "command": shlex.join(cmd), "rc": rc, "wall_s": child.wall, "state": state,
                  "stopped_by": stopped_by, "kimg": status.get("kimg"), "world_size": status.get("world_size"),
                  "checkpoint": status.get("checkpoint"), "signal_after_s": sent_wall,
                  "ticks": len(stats.ticks), "_ticks": stats.ticks}
        say(f"training ({name}): {state} at kimg {fmt_kimg(status.get('kimg') or 0)} after "
            f"{fmt_duration(child.wall)} (launcher exit {rc}, world size {status.get('world_size')})")
        if calibrate:
            speeds = [t["Speed/img_per_sec"] for t in stats.ticks[1:] or stats.ticks]  # the 1st tick has warm-up
            rate = statistics.median(speeds)
            record["calibrated_img_per_sec"] = rate
            tick_s = self.tick * 1000 / rate
            record["startup_s"] = max((first_tick_at or child.wall) - tick_s, 0.0)
        self.phases.append(record)
        return record

    def check_exit(self, name: str, child: Child, sent_at: Optional[float]) -> dict:
        """The run's status.json after a launch exited, if it ended as it should: "stopped" or "complete"
        with a complete checkpoint after a SIGTERM, "complete" with exit 0 otherwise."""
        rc = child.poll()
        status_path = self.run / "status.json"
        status = read_json(status_path) if status_path.is_file() else {}
        state = status.get("state")
        if sent_at is not None:
            # Written after the SIGTERM: a status.json left by the calibration launch does not count.
            fresh = status_path.is_file() and status_path.stat().st_mtime >= sent_at - 1
            # torchrun exits non-zero after forwarding a SIGTERM; the run's own status is what counts.
            if not (fresh and state in ("stopped", "complete")):
                raise BenchError(
                    f"training ({name}) did not stop cleanly on SIGTERM: status.json says {state!r} (expected "
                    f"'stopped'), launcher exit {rc}; log: {self.log_path}\n{tail(self.log_path, child.log_start)}")
            ckpt = status.get("checkpoint")
            if not ckpt or not (Path(ckpt) / "meta.json").is_file():
                raise BenchError(f"training ({name}) stopped without a complete checkpoint (status.json: {ckpt}); "
                                 f"log: {self.log_path}")
        elif rc != 0 or state != "complete":
            err = f": {status['error']}" if status.get("error") else ""
            raise BenchError(f"training ({name}) failed: launcher exit {rc}, status.json state {state!r}{err}; "
                             f"log: {self.log_path}\n{tail(self.log_path, child.log_start)}")
        return status
