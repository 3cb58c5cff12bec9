"""The trainer and the run.dir lock: refused on every rank of 2 through the real launcher; a dead
holder's lock taken over, in-process (one process)."""

from __future__ import annotations

import json
import os
import subprocess

import pytest

from conftest import REPO, TINY, env, launch_cmd, rank_exit_codes, read_json, train_inproc
from dcgan_dist import runlock
from dcgan_dist.runlock import LOCK
from test_runlock import dead_pid, holder, write_lock

CONFIG = "configs/quickstart.yaml"


@pytest.mark.slow
def test_a_second_training_on_a_locked_run_dir_exits_2_on_every_rank(tmp_path):
    run = tmp_path / "run"
    first = holder(run)  # stands in for a training in progress
    try:
        proc = subprocess.run(launch_cmd(CONFIG, TINY + [f"run.dir={run}", "train.kimg=0.032"]), cwd=REPO, env=env(),
                              capture_output=True, text=True, timeout=300)
        assert os.listdir(run) == [LOCK]  # nothing written beside the holder's lock, nothing deleted
        assert json.loads((run / LOCK).read_text())["pid"] == first.pid
    finally:
        first.communicate("\n", timeout=30)
    assert proc.returncode != 0
    # Both ranks (world size 2) exit with the user-error status; rank 0 says why, once, and neither
    # prints a traceback of its own (the launcher adds one for any non-zero child, naming exitcode 2).
    codes = rank_exit_codes(proc.stderr)
    # Each rank exited 2, or was still leaving when torchrun, seeing the other gone, SIGTERMed it.
    assert set(codes) == {0, 1} and "2" in codes.values(), proc.stderr[-4000:]
    assert set(codes.values()) <= {"2", "-15"}, codes
    assert proc.stderr.count(f"run.dir {run} is in use by another training: host") == 1, proc.stderr[-4000:]
    assert f"PID {first.pid}" in proc.stderr
    assert 'dcgan_dist/train.py", line' not in proc.stderr and "gloo" not in proc.stderr.lower(), proc.stderr[-4000:]


def test_a_training_takes_over_a_dead_lock_and_leaves_none(tmp_path, capsys):
    run = tmp_path / "run"
    write_lock(run, **{**runlock.identity(), "pid": dead_pid(), "pid_start": None})
    assert train_inproc(CONFIG, TINY + [f"run.dir={run}", "train.kimg=0.064"]) == 0
    assert f"took over the lock on {run} from a training that is gone" in capsys.readouterr().err
    assert not (run / LOCK).exists()
    status = read_json(run / "status.json")
    assert status["state"] == "complete" and status["world_size"] == 1
    # The trainer (this process here) names itself and its parent, with a heartbeat.
    assert status["host"] and status["pid"] == os.getpid() and status["launcher_pid"] == os.getppid()
    assert status["heartbeat"]
