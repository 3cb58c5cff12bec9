"""Shared helpers: tiny configs, the CLI mains run in this process (one CPU process), and the real
`accelerate launch` with 2 CPU processes for what only a distributed run can show."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import random
import signal
import subprocess
from pathlib import Path
from typing import Callable, Iterator, Optional

import numpy as np
import pytest
import torch

# The child processes' environment (env()), the trainer under `accelerate launch` with 2 CPU processes
# (launch_cmd) and any script or module under it (launcher_cmd), shared with the benchmarks;
# importable through pyproject's `pythonpath = ["."]`.
from benchmarks.launcher import REPO, child_env as env, launch_cmd as launcher_cmd, train_cmd as launch_cmd

SHARED = REPO.parent / "shared"

# A model small enough that a 2-process CPU run takes seconds, on the embedded digits.
TINY = [
    "data.shards=embedded:digits", "data.workers=2", "data.shuffle_buffer=64",
    "model.resolution=32", "model.channels=1", "model.g_width=8", "model.d_width=8", "model.z_dim=16",
    "train.batch=16", "train.tick_kimg=0.032", "train.sample_every_kimg=0.064", "train.sample_grid=16",
    "checkpoint.every_kimg=1000", "checkpoint.keep=3",
]


@pytest.fixture(autouse=True, scope="session")
def _private_cache(tmp_path_factory):
    """The embedded data set is written into a per-session cache, never the user's ~/.cache."""
    os.environ["DCGAN_DIST_CACHE"] = str(tmp_path_factory.mktemp("cache"))


# What a launcher (torchrun, accelerate launch, Slurm's srun) sets for its workers: none of it may reach
# an in-process run, or accelerate would try to join a process group that does not exist.
LAUNCHER_ENV_PREFIXES = ("ACCELERATE_", "TORCHELASTIC_", "TORCH_NCCL_", "PET_")
LAUNCHER_ENV = ("WORLD_SIZE", "RANK", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "GROUP_RANK", "ROLE_RANK", "ROLE_WORLD_SIZE",
                "NODE_RANK", "MASTER_ADDR", "MASTER_PORT")
LOGGERS = ("dcgan_dist", "dcgan_dist.metrics")
SIGNALS = (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT)


def _reset_accelerate() -> None:
    from accelerate.state import AcceleratorState, PartialState

    AcceleratorState._reset_state(True)
    PartialState._reset_state()
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


@contextlib.contextmanager
def in_process(threads: Optional[int] = 1) -> Iterator[None]:
    """Isolate one in-process run of a CLI main from the tests before and after it: run in the
    repository (as the subprocesses are), accelerate's state singletons reset on entry and exit, no
    launcher variable in os.environ (and os.environ as it was afterwards), the dcgan_dist loggers'
    handlers, level and propagation, the stop-signal handlers, the global RNGs and torch's thread
    count (1, as OMP_NUM_THREADS=1 gives the launched runs) restored."""
    cwd = os.getcwd()
    os.chdir(REPO)
    environ = dict(os.environ)
    for k in list(os.environ):
        if k in LAUNCHER_ENV or k.startswith(LAUNCHER_ENV_PREFIXES):
            del os.environ[k]
    loggers = {name: logging.getLogger(name) for name in LOGGERS}
    saved_loggers = {name: (list(lg.handlers), lg.level, lg.propagate) for name, lg in loggers.items()}
    handlers = {s: signal.getsignal(s) for s in SIGNALS}
    rng = (torch.get_rng_state(), np.random.get_state(), random.getstate())
    num_threads = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    _reset_accelerate()
    try:
        yield
    finally:
        _reset_accelerate()
        torch.set_num_threads(num_threads)
        torch.set_rng_state(rng[0])
        np.random.set_state(rng[1])
        random.setstate(rng[2])
        for s, h in handlers.items():
            signal.signal(s, h)
        for name, lg in loggers.items():
            old, level, propagate = saved_loggers[name]
            for h in lg.handlers:
                if h not in old:
                    h.close()  # log.txt's file handler of the run
            lg.handlers[:] = old
            lg.setLevel(level)
            lg.propagate = propagate
        os.environ.clear()
        os.environ.update(environ)
        os.chdir(cwd)


def run_main(main: Callable[[list[str]], int], argv: list) -> int:
    """A CLI's `main(argv)` in this process (one CPU process), its exit status as the shell would see it
    (argparse's --help and usage errors exit through SystemExit). Output goes to sys.stdout/sys.stderr:
    read it with capsys."""
    with in_process():
        try:
            return main([str(a) for a in argv])
        except SystemExit as e:
            return e.code if isinstance(e.code, int) else (0 if e.code is None else 1)


def train_inproc(config: str, overrides: list[str]) -> int:
    """`python -m dcgan_dist.train CONFIG OVERRIDES...` in this process: one CPU process, world size 1."""
    from dcgan_dist import train

    return run_main(train.main, [config, *overrides])


def evaluate_inproc(argv: list) -> int:
    """`python -m dcgan_dist.evaluate ARGS...` in this process (one CPU process)."""
    from dcgan_dist import evaluate

    return run_main(evaluate.main, list(argv))


@pytest.fixture
def accelerator():
    """`Accelerator(cpu=True)` of world size 1, with accelerate's state reset before and after."""
    from accelerate import Accelerator

    with in_process(threads=None):
        yield Accelerator(cpu=True)


def launch(config: str, overrides: list[str], timeout: float = 300) -> subprocess.CompletedProcess:
    """Run the trainer through the real launcher with 2 CPU processes; fail with its output on error."""
    proc = subprocess.run(launch_cmd(config, overrides), cwd=REPO, env=env(), capture_output=True, text=True,
                          timeout=timeout)
    if proc.returncode != 0:
        pytest.fail(f"accelerate launch exited {proc.returncode}\n--- stdout\n{proc.stdout[-4000:]}\n"
                    f"--- stderr\n{proc.stderr[-8000:]}")
    return proc


def read_json(path: Path) -> dict:
    return json.loads(Path(path).read_text())


def rank_exit_codes(launcher_output: str) -> dict[int, str]:
    """The exit code torchrun reports for each failed rank: "2", "1", "-15" (SIGTERM), "-9"."""
    import re

    return {int(r): code for r, code in
            re.findall(r"rank\s+: (\d+) \(local_rank: \d+\)\s+exitcode\s+: (-?\d+)", launcher_output)}


@pytest.fixture(scope="session")
def two_process_run(tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    """One plain 2-process training through the real launcher, shared by the tests that read it and
    never write to it: 10 steps of TINY (train.kimg=0.16) on configs/quickstart.yaml, with a diversity
    threshold no G can meet (the collapse warning only logs: training is the same without it)."""
    run_dir = tmp_path_factory.mktemp("two_process") / "run"
    proc = launch("configs/quickstart.yaml",
                  TINY + [f"run.dir={run_dir}", "train.kimg=0.16", "train.collapse_threshold=50"])
    assert "world size 2" in proc.stderr, proc.stderr[-4000:]
    return run_dir, proc
