"""How this checkout's CLIs are started, watched and stopped as child processes: the environment and
the command line of an `accelerate launch` child, and `Child`, one such process with its output in a
log file. The test suite (tests/conftest.py) and the benchmarks (faults, soak, bench_train, quality)
all start their children through here.

It lives in the benchmarks package, not in dcgan_dist: it is about running this checkout (its
launch configs, its venv), not something a user of the installed package calls. The benchmarks
import it as `benchmarks.launcher` (run as `python -m benchmarks.X` from the repository root); the
tests through pyproject's `pythonpath = ["."]`.
"""

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

import psutil  # a dependency of accelerate

REPO = Path(__file__).resolve().parents[1]
CPU_LAUNCH = REPO / "launch" / "cpu.yaml"  # 2 processes on this machine's CPU (gloo)
ERROR_LINE = re.compile(r"ERROR|Error|error:|Traceback")
RECORD_HEAD = re.compile(r"^.*?\[rank \d+\] ")  # the log record's time and rank: the same error from each rank


def child_env(cpu: bool = True, threads: int = 1) -> dict:
    """os.environ for a child: unbuffered output (logs are followed as they are written) and this
    checkout's packages first on its path, whatever its working directory or script.

    `cpu`: also the settings of CPU ranks: `threads` OpenMP threads per process (2 ranks on 2 cores),
    DeepSpeed's CPU accelerator (no fallback warning), and no ACCELERATE_USE_CPU (it silently turns
    DeepSpeed off; the trainer picks the CPU by itself when there is no GPU)."""
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), *filter(None, [env.get("PYTHONPATH")])])
    if cpu:
        env.update(OMP_NUM_THREADS=str(threads), DS_ACCELERATOR="cpu")
        env.pop("ACCELERATE_USE_CPU", None)
    return env


def accelerate_exe() -> list[str]:
    """The `accelerate` command: this venv's own first (another on PATH could launch another Python)."""
    exe = Path(sys.executable).with_name("accelerate")
    if exe.is_file():
        return [str(exe)]
    found = shutil.which("accelerate")
    return [found] if found else [sys.executable, "-m", "accelerate.commands.accelerate_cli"]


def launch_cmd(args: list[str], config_file: str | os.PathLike = CPU_LAUNCH) -> list[str]:
    """`accelerate launch --config_file CONFIG_FILE ARGS...` (ARGS: launcher options, then `-m module ...`
    or a script and its arguments)."""
    return [*accelerate_exe(), "launch", "--config_file", str(config_file), *args]


def train_cmd(config: str | os.PathLike, overrides: list[str],
              config_file: str | os.PathLike = CPU_LAUNCH) -> list[str]:
    """The trainer under the launcher: `accelerate launch ... -m dcgan_dist.train CONFIG OVERRIDES...`."""
    return launch_cmd(["-m", "dcgan_dist.train", str(config), *overrides], config_file)


# ---- a child and its process tree ------------------------------------------------------------------

def kill_tree(tree: list[psutil.Process]) -> None:
    for p in tree:
        try:
            p.kill()
        except psutil.Error:
            pass


def _alive(p: psutil.Process) -> bool:
    try:
        return p.is_running() and p.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def gone_within(tree: list[psutil.Process], seconds: float) -> list[psutil.Process]:
    """The processes of `tree` still alive after `seconds` (zombies count as gone)."""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        if not any(_alive(p) for p in tree):
            return []
        time.sleep(0.1)
    return [p for p in tree if _alive(p)]


class Child:
    """`cmd` with its output (stdout and stderr) appended to `log_path`, in its own session: a Ctrl-C at
    the terminal reaches only the parent, which stops the child the way the child expects (`stop`).
    torchrun puts each rank in a session of its own too, so a tree is collected before anything dies."""

    def __init__(self, cmd: list[str], log_path: Path, env: Optional[dict] = None,
                 cwd: Optional[os.PathLike] = None):
        log_path.parent.mkdir(parents=True, exist_ok=True)
        self.cmd, self.log_path = cmd, log_path
        self.log = open(log_path, "ab")
        self.log.write(f"\n$ {shlex.join(cmd)}\n".encode())
        self.log.flush()
        self.log_start = self.log.tell()  # this child's part of a log that earlier children appended to
        self.t0 = time.monotonic()
        self.proc = subprocess.Popen(cmd, cwd=cwd, env=child_env() if env is None else env, stdout=self.log,
                                     stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
        self.wall: Optional[float] = None  # seconds from the start until its exit was seen

    def poll(self) -> Optional[int]:
        rc = self.proc.poll()
        if rc is not None and self.wall is None:
            self.wall = time.monotonic() - self.t0
            self.log.close()
        return rc

    rc = property(poll)

    def wait(self, timeout: Optional[float] = None) -> int:
        """The exit status; TimeoutError after `timeout` seconds."""
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise TimeoutError from None
        return self.poll()

    def output(self) -> str:
        """What this child wrote to its log so far."""
        try:
            with open(self.log_path, "rb") as f:
                f.seek(self.log_start)
                return f.read().decode(errors="replace")
        except OSError:
            return ""

    def error_lines(self, n: int = 6) -> str:
        """What a failed child said: its last `n` error lines (each once, whichever rank), else its last lines."""
        rows = [r for r in re.split(r"[\r\n]+", self.output()) if r.strip()]
        errors = list(dict.fromkeys(RECORD_HEAD.sub("", r) for r in rows if ERROR_LINE.search(r)))
        return "\n".join("    " + r[-1500:] for r in (errors[-n:] or rows[-n:])) or "    (no output)"

    def tree(self) -> list[psutil.Process]:
        """The child and its descendants (empty once it is gone)."""
        try:
            root = psutil.Process(self.proc.pid)
            return [root, *root.children(recursive=True)]
        except psutil.Error:
            return []

    def finish(self, timeout: Optional[float] = None) -> Optional[int]:
        """Wait for the exit; after `timeout` seconds kill the whole tree."""
        tree = self.tree()
        try:
            return self.wait(timeout)
        except TimeoutError:
            kill_tree([*tree, *self.tree()])
            return self.wait()

    def stop(self, grace: float = 90.0) -> Optional[int]:
        """SIGTERM (torchrun forwards it; the trainer checkpoints and exits), then after `grace` seconds
        SIGKILL to the whole tree; whatever is left of the tree is killed either way."""
        if self.poll() is not None:
            return self.rc
        tree = self.tree()
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.wait(grace)
        except TimeoutError:
            pass
        kill_tree([*tree, *self.tree()])
        return self.wait()
