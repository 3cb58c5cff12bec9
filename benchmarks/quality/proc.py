"""The quality benchmark's child processes: launcher.Child in the user's environment, the one now
running known to the interrupt handler (which stops it the way the trainer expects: SIGTERM, then a
checkpoint), and LogEcho, which prints the interesting lines of a trainer's log as they are written."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Optional

from .. import launcher
from .common import say

RUNNING: list["Child"] = []  # the child now running (at most one), for the interrupt handler
ECHO = re.compile(r"\] (WARNING|ERROR)|world size|checkpoint /|resumed from")
RECORD = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d \[rank \d+\] ")  # the start of a log record


class Child(launcher.Child):
    """One of the benchmark's children (`what` names it in messages), with the user's environment as it
    is (thread counts, devices: on a GPU it must stay so), started in the current directory (the user's
    paths are relative to it)."""

    def __init__(self, cmd: list[str], log_path: Path, what: str):
        super().__init__(cmd, log_path, env=launcher.child_env(cpu=False))
        self.what = what
        RUNNING[:] = [self]

    def poll(self) -> Optional[int]:
        rc = super().poll()
        if rc is not None and RUNNING and RUNNING[0] is self:
            RUNNING.clear()
        return rc

    rc = property(poll)


class LogEcho:
    """Prints the interesting lines of a child's log (warnings, errors, checkpoints) as they appear; from
    the log's end at construction, so that a resumed launch shows only what it wrote itself."""

    def __init__(self, path: Path):
        self.path = path
        self.pos = path.stat().st_size if path.exists() else 0
        self.rest = ""  # a line not finished yet

    def __call__(self) -> None:
        try:
            with open(self.path, "rb") as f:
                f.seek(self.pos)
                data = f.read()
        except OSError:  # not written yet
            return
        self.pos += len(data)
        parts = re.split(r"[\r\n]", self.rest + data.decode(errors="replace"))
        self.rest = parts.pop()
        for line in parts:
            start = RECORD.search(line)  # a record may follow a progress bar redraw on the same line
            if start and ECHO.search(line, start.start()):
                print(f"    | {line[start.start():].strip()[:240]}", flush=True)


def stop_running(what: str) -> None:
    """On an interrupt: stop the child now running, if any, and say where its log is."""
    for child in list(RUNNING):
        if child.poll() is None:
            say(f"{what}: stopping {child.what} (SIGTERM; a trainer saves a checkpoint first)")
            child.stop()
            say(f"{child.what} exited; its log: {child.log_path}")
