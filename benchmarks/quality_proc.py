"""Child processes of benchmarks/quality.py: the project's command lines run with their output in a
log file, stopped the way the trainer expects (SIGTERM, then a checkpoint), and read back on failure."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Optional

from quality_common import REPO, say

RUNNING: list = []  # the child now running (at most one), for the interrupt handler


def child_env() -> dict:
    env = dict(os.environ)
    env["PYTHONUNBUFFERED"] = "1"
    # The children import this checkout's dcgan_dist, whatever the working directory.
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), *filter(None, [env.get("PYTHONPATH")])])
    return env


def accelerate_cmd() -> list[str]:
    # The venv's own launcher first: a different accelerate on PATH could launch another Python.
    exe = Path(sys.executable).with_name("accelerate")
    if exe.is_file():
        return [str(exe)]
    found = shutil.which("accelerate")
    return [found] if found else [sys.executable, "-m", "accelerate.commands.accelerate_cli"]


def read_from(path: Path, start: int) -> Optional[bytes]:
    """The bytes of `path` from offset `start` on; None when it cannot be read (not written yet)."""
    try:
        with open(path, "rb") as f:
            f.seek(start)
            return f.read()
    except OSError:
        return None


def tail(path: Path, start: int = 0, lines: int = 25) -> str:
    """What a failed child said (its log from byte `start`): its error lines (once each, whichever rank),
    else its last lines."""
    data = read_from(path, start)
    if data is None:
        return "    (no log)"
    rows = [r for r in re.split(r"[\r\n]+", data.decode(errors="replace")) if r.strip()]
    errors = list(dict.fromkeys(re.sub(r"^.*?\[rank \d+\] ", "", r) for r in rows
                                if re.search(r"\] ERROR |^error:|^\w*Error: ", r)))
    return "\n".join("    " + r[-1500:] for r in (errors[-5:] or rows[-lines:]))


class Child:
    """One subprocess with its output in a log file, in its own session (a Ctrl-C at the terminal
    reaches only this script, which then stops the child the way the child expects)."""

    def __init__(self, cmd: list[str], log_path: Path, what: str):
        self.cmd, self.log_path, self.what = cmd, log_path, what
        log_path.parent.mkdir(parents=True, exist_ok=True)
        self.log = open(log_path, "ab")
        self.log.write(f"\n$ {shlex.join(cmd)}\n".encode())
        self.log.flush()
        self.log_start = self.log.tell()  # this child's part of a log that earlier children appended to
        self.t0 = time.monotonic()
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                     env=child_env(), start_new_session=True)
        self.wall: Optional[float] = None
        RUNNING[:] = [self]

    def poll(self) -> Optional[int]:
        rc = self.proc.poll()
        if rc is not None and self.wall is None:
            self.wall = time.monotonic() - self.t0
            self.log.close()
            if RUNNING and RUNNING[0] is self:
                RUNNING.clear()
        return rc

    def wait(self, timeout: Optional[float] = None) -> int:
        end = None if timeout is None else time.monotonic() + timeout
        while (rc := self.poll()) is None:
            if end is not None and time.monotonic() > end:
                raise TimeoutError
            time.sleep(0.2)
        return rc

    def descendants(self) -> list:
        try:
            import psutil  # a dependency of accelerate

            return psutil.Process(self.proc.pid).children(recursive=True)
        except Exception:
            return []

    def stop(self, grace: float = 90.0) -> None:
        """SIGTERM (torchrun forwards it; the trainer checkpoints and exits), then SIGKILL to the whole
        tree. torchrun puts each worker in its own session, so the tree is collected before anything dies."""
        if self.poll() is not None:
            return
        kids = self.descendants()
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.wait(grace)
        except TimeoutError:
            say(f"{self.what} did not exit {grace:.0f} s after SIGTERM: killing it")
        for p in [*kids, *self.descendants()]:
            try:
                p.kill()
            except Exception:
                pass
        if self.poll() is None:
            self.proc.kill()
            self.proc.wait()
            self.poll()


def stop_running(what: str) -> None:
    """On an interrupt: stop the child now running, if any, and say where its log is."""
    for child in list(RUNNING):
        if child.poll() is None:
            say(f"{what}: stopping {child.what} (SIGTERM; a trainer saves a checkpoint first)")
            child.stop()
            say(f"{child.what} exited; its log: {child.log_path}")
