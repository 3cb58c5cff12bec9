"""Faults caused for real through the launcher (2 CPU processes): the fault harness's short mode,
and a user error found by one rank reaching every rank as one message."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest

from conftest import REPO, TINY, env, launch_cmd, rank_exit_codes

pytestmark = pytest.mark.slow


def test_fault_harness_short_mode(tmp_path):
    """Kills of ranks and launchers (some inside a save), then exact completion; and the scenarios:
    two starts, damaged checkpoints, a cut shard, full disks, rank 0 killed and report."""
    out = tmp_path / "faults.json"
    proc = subprocess.run([sys.executable, "-m", "benchmarks.faults", "--short", "--json", str(out),
                           "--workdir", str(tmp_path / "work")], cwd=REPO, env=env(), capture_output=True,
                          text=True, timeout=1200)
    assert out.is_file(), proc.stdout[-4000:] + proc.stderr[-4000:]
    result = json.loads(out.read_text())
    t = result["totals"]
    assert proc.returncode == 0 and result["ok"], proc.stdout[-6000:]
    assert "world size 2" in (tmp_path / "work" / "logs" / "reference.log").read_text()  # 2 ranks, one group
    assert t["trials"] == 3 and t["hangs"] == t["processes_left"] == t["corrupt_checkpoints"] == 0
    assert t["failed_resumes"] == 0 and t["runs_completed"] >= 1 and t["bit_identical"] == t["runs_completed"]
    assert t["scenarios"] == 6 and t["scenarios_passed"] == 6  # two run in the full mode only (FULL_ONLY)


def test_a_user_error_on_one_rank_is_one_message_on_every_rank(tmp_path):
    proc = subprocess.run(launch_cmd("configs/quickstart.yaml", TINY[1:] + [
        f"data.shards={tmp_path}/missing-*.tar", f"run.dir={tmp_path / 'run'}"]),
        cwd=REPO, env=env(), capture_output=True, text=True, timeout=300)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert "world size 2" in out  # both ranks formed one group before the error
    errors = [ln for ln in out.splitlines() if " ERROR " in ln]
    assert len(errors) == 1 and "[rank 0]" in errors[0] and "missing-*.tar" in errors[0], out[-3000:]
    assert "gloo" not in out.lower() and "Connection closed" not in out, out[-3000:]
    assert not re.search(r'File ".*dcgan_dist/', out), out[-3000:]  # no traceback of the trainer's (torchrun adds its own)
    assert set(rank_exit_codes(out).values()) <= {"2", "-15"} and "2" in rank_exit_codes(out).values()
