"""What every part of the quality benchmark shares: its error types, its timestamped log line,
number formats and JSON files."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

T0 = time.monotonic()  # the benchmark's start: say() and the report's total time count from here


class BenchError(RuntimeError):
    """A step failed; the message names the step and where its log is."""


class Interrupted(Exception):
    """Ctrl-C or SIGTERM to the benchmark."""


def say(msg: str) -> None:
    el = int(time.monotonic() - T0)
    print(f"[quality {el // 3600}:{el // 60 % 60:02d}:{el % 60:02d}] {msg}", flush=True)


def fmt_kimg(k: float) -> str:
    return f"{k:.3f}".rstrip("0").rstrip(".") if k < 1000 else f"{k:.1f}"


def fmt_duration(s: float) -> str:
    s = int(round(s))
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60:02d} s"
    return f"{s // 3600} h {s // 60 % 60:02d} min"


def read_json(path: Path) -> dict:
    return json.loads(Path(path).read_text())


def write_json(path: Path, doc: dict) -> None:
    # Through a temporary file: an interrupted write must not leave a truncated cache or report behind.
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(doc, indent=2) + "\n")
    os.replace(tmp, path)
