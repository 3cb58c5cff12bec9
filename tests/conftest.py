"""Shared helpers: tiny configs and the real `accelerate launch` with 2 CPU processes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
CPU_LAUNCH = REPO / "launch" / "cpu.yaml"
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


def env() -> dict:
    e = dict(os.environ)
    e.update(PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1", DS_ACCELERATOR="cpu")
    e.pop("ACCELERATE_USE_CPU", None)
    return e


def launch_cmd(config: str, overrides: list[str]) -> list[str]:
    return [str(Path(sys.executable).with_name("accelerate")), "launch", "--config_file", str(CPU_LAUNCH),
            "-m", "dcgan_dist.train", config, *overrides]


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
