"""One launch of the trainer (step 1), followed until it exits: its warnings and checkpoints echoed,
its ticks read from stats.jsonl, SIGTERM once the budget is spent (or, when calibrating, once the
speed is measured), and its end checked against status.json."""

from __future__ import annotations

import shlex
import signal
import statistics
import time
from pathlib import Path
from typing import Optional

from dcgan_dist import layout
from dcgan_dist.report import number, read_jsonl

from .common import BenchError, fmt_duration, fmt_kimg, read_json, say
from .proc import Child, LogEcho

STOP_TIMEOUT_S = 180  # a launcher still running this long after SIGTERM is killed and the step fails


class StatsFollower:
    """The ticks RUN/stats.jsonl gained since construction (report's parser; the file is read again
    only when it has grown, i.e. once per tick)."""

    def __init__(self, path: Path):
        self.path = path
        self.size = self._size()
        self.before = sum(1 for _ in read_jsonl(path))  # an earlier launch's ticks
        self.ticks: list[dict] = []

    def _size(self) -> int:
        try:
            return self.path.stat().st_size
        except OSError:
            return 0

    def update(self) -> list[dict]:
        size = self._size()
        if size == self.size:
            return []
        self.size = size
        # A line still being written does not parse and is skipped: it is read on the next growth.
        new = list(read_jsonl(self.path))[self.before + len(self.ticks):]
        self.ticks += new
        return new


def speeds(ticks: list[dict]) -> list[float]:
    """The ticks' training speeds, img/s (stats.jsonl's Speed/img_per_sec)."""
    return [s for t in ticks if (s := number(t.get("Speed/img_per_sec"))) is not None and s > 0]


class Launch:
    """`cmd` (the trainer under accelerate launch) for one phase of step 1 (`name`: calibrate or train).
    `deadline`: time.monotonic() at which the budget is spent (None: no time budget); `budget_s`: the
    whole budget (the calibration stops after 10 % of it at the latest)."""

    def __init__(self, name: str, cmd: list[str], run_dir: Path, log_path: Path, deadline: Optional[float],
                 budget_s: Optional[float], calibrate: bool, progress_every: float):
        self.name, self.cmd, self.run, self.log_path = name, cmd, run_dir, log_path
        self.deadline, self.budget_s, self.calibrate = deadline, budget_s, calibrate
        self.progress_every = progress_every

    def stop_reason(self, ticks: list[dict], now: float, since: float) -> Optional[str]:
        """Why to send SIGTERM now, if at all. Not before the first tick: until then the trainer may not
        handle SIGTERM yet."""
        over = self.deadline is not None and now >= self.deadline
        if self.calibrate and ticks and (len(ticks) >= 3 or over or (
                len(ticks) >= 2 and now - since >= 0.1 * self.budget_s)):
            return "calibration"
        return "budget" if over and ticks else None

    def follow(self, tick_kimg: float) -> dict:
        """Runs the launch to its end; returns its record (with the ticks under "_ticks")."""
        stats = StatsFollower(self.run / layout.STATS)
        echo = LogEcho(self.log_path)
        child = Child(self.cmd, self.log_path, f"training ({self.name})")
        say(f"training ({self.name}): {shlex.join(self.cmd)}")
        say(f"  output: {self.log_path}")
        sent_at = sent_wall = stopped_by = first_tick_at = None
        warned_early = False
        next_report = time.monotonic() + self.progress_every
        while child.poll() is None:
            time.sleep(0.25)
            echo()
            new = stats.update()
            now = time.monotonic()
            if new and first_tick_at is None:
                first_tick_at = now - child.t0
            ticks = stats.ticks
            if sent_at is None:
                stopped_by = self.stop_reason(ticks, now, child.t0)
                if stopped_by:
                    sent_wall = now - child.t0
                    say(f"training ({self.name}): {'budget spent' if stopped_by == 'budget' else 'speed measured'} "
                        f"at kimg ~{fmt_kimg(ticks[-1]['kimg'])}: SIGTERM to the launcher (the trainer checkpoints "
                        "and stops)")
                    sent_at = time.time()  # wall clock: compared with status.json's mtime
                    child.proc.send_signal(signal.SIGTERM)
                elif self.deadline is not None and now >= self.deadline and not warned_early:
                    say("the budget is spent before the trainer's first tick: stopping it at its first tick")
                    warned_early = True
            if now >= next_report and ticks:
                t = ticks[-1]
                left = f", budget left {fmt_duration(max(self.deadline - now, 0))}" if self.deadline else ""
                say(f"training ({self.name}): kimg {fmt_kimg(t['kimg'])}, {t.get('Speed/img_per_sec', 0):.1f} "
                    f"img/s, {fmt_duration(now - child.t0)} in this launch{left}")
                next_report = now + self.progress_every
            if sent_at is not None and time.time() - sent_at > STOP_TIMEOUT_S:
                child.stop(grace=5)
                raise BenchError(f"training ({self.name}) did not exit within {STOP_TIMEOUT_S} s of SIGTERM; "
                                 f"log: {self.log_path}")
        echo()
        stats.update()
        rc = child.poll()
        status = self.check_exit(child, sent_at)
        state = status.get("state")
        if state == "complete":  # reached train.kimg (before or despite a SIGTERM)
            stopped_by = "kimg"
        record = {"phase": self.name, "command": shlex.join(self.cmd), "rc": rc, "wall_s": child.wall,
                  "state": state, "stopped_by": stopped_by, "kimg": status.get("kimg"),
                  "world_size": status.get("world_size"), "checkpoint": status.get("checkpoint"),
                  "signal_after_s": sent_wall, "ticks": len(stats.ticks), "_ticks": stats.ticks}
        # torchrun exits 1 after forwarding a SIGTERM even when every rank stopped cleanly: say so.
        exit_note = f"launcher exit {rc}" + (" after the SIGTERM, as torchrun does" if sent_at is not None and rc else "")
        say(f"training ({self.name}): {state} at kimg {fmt_kimg(status.get('kimg') or 0)} after "
            f"{fmt_duration(child.wall)} ({exit_note}, world size {status.get('world_size')})")
        if self.calibrate:
            rate = statistics.median(speeds(stats.ticks[1:]) or speeds(stats.ticks))  # the 1st tick has warm-up
            record["calibrated_img_per_sec"] = rate
            record["startup_s"] = max((first_tick_at or child.wall) - tick_kimg * 1000 / rate, 0.0)
        return record

    def check_exit(self, child: Child, sent_at: Optional[float]) -> dict:
        """The run's status.json after the launch exited, if it ended as it should: "stopped" or "complete"
        with a complete checkpoint after a SIGTERM, "complete" with exit 0 otherwise."""
        rc = child.poll()
        status_path = self.run / layout.STATUS
        status = read_json(status_path) if status_path.is_file() else {}
        state = status.get("state")
        if sent_at is not None:
            # Written after the SIGTERM: a status.json left by the calibration launch does not count.
            fresh = status_path.is_file() and status_path.stat().st_mtime >= sent_at - 1
            # torchrun exits non-zero after forwarding a SIGTERM; the run's own status is what counts.
            if not (fresh and state in ("stopped", "complete")):
                raise BenchError(
                    f"training ({self.name}) did not stop cleanly on SIGTERM: status.json says {state!r} (expected "
                    f"'stopped'), launcher exit {rc}; log: {self.log_path}\n{child.error_lines()}")
            ckpt = status.get("checkpoint")
            if not ckpt or not (Path(ckpt) / layout.META).is_file():
                raise BenchError(f"training ({self.name}) stopped without a complete checkpoint (status.json: "
                                 f"{ckpt}); log: {self.log_path}")
        elif rc != 0 or state != "complete":
            err = f": {status['error']}" if status.get("error") else ""
            raise BenchError(f"training ({self.name}) failed: launcher exit {rc}, status.json state {state!r}{err}; "
                             f"log: {self.log_path}\n{child.error_lines()}")
        return status
