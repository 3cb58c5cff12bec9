"""The run-directory lock (dcgan_dist.runlock) and `report`'s dead runs, with real processes.

Holders are separate Python processes (they import only the standard library and runlock, so each
starts in a fraction of a second); they are killed for real, and stale or foreign locks are real
files whose mtime is set with os.utime.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from conftest import REPO
from dcgan_dist import report, runlock, tracking
from dcgan_dist.runlock import LOCK, RunLock, RunLockedError

# A starter: takes the lock on argv[1], says so, then holds it until its stdin gets a line (or closes).
# With argv[2] it first waits for that file to appear, so that many starters go at the same moment.
STARTER = r"""
import os, sys, time
from dcgan_dist.runlock import RunLock, RunLockedError
if len(sys.argv) > 2:
    print("READY", flush=True)
    while not os.path.exists(sys.argv[2]):
        time.sleep(0.001)
try:
    lock = RunLock.acquire(sys.argv[1])
except RunLockedError as e:
    print("LOCKED", e, flush=True)
    sys.exit(3)
print("ACQUIRED", os.getpid(), flush=True)
sys.stdin.readline()
lock.release()
"""


def child_env(**extra) -> dict:
    e = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    e.update(PYTHONPATH=str(REPO), PYTHONUNBUFFERED="1", **extra)
    return e


def start(run_dir: Path, *args: str, **env) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", STARTER, str(run_dir), *args], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=child_env(**env))


def holder(run_dir: Path, **env) -> subprocess.Popen:
    """A process that holds the lock on `run_dir` (asserted) until it is told to release or killed."""
    proc = start(run_dir, **env)
    line = proc.stdout.readline()
    assert line.startswith("ACQUIRED"), line + proc.stderr.read()
    return proc


def starts(run_dir: Path, **env) -> subprocess.CompletedProcess:
    """One start that gives the lock back at once: rc 0 if it got it, 3 if refused."""
    return subprocess.run([sys.executable, "-c", STARTER, str(run_dir)], input="\n", capture_output=True,
                          text=True, env=child_env(**env), timeout=60)


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def write_lock(run_dir: Path, age: float = 0.0, **info) -> Path:
    """A lock file as another holder would have left it, its heartbeat `age` seconds old."""
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / LOCK
    doc = {"host": "node-elsewhere", "pid": 4242, "started": "2026-01-01T00:00:00+0000", "token": uuid.uuid4().hex,
           **info}
    path.write_text(json.dumps(doc))
    t = time.time() - age
    os.utime(path, (t, t))
    return path


def test_a_second_start_is_refused_naming_the_holder_and_release_removes_the_lock(tmp_path):
    run = tmp_path / "run"
    first = holder(run)
    try:
        info = json.loads((run / LOCK).read_text())
        assert info["pid"] == first.pid and info["host"] == socket.gethostname()
        second = starts(run)
        assert second.returncode == 3, second.stdout + second.stderr
        msg = second.stdout
        assert f"run.dir {run} is in use by another training" in msg
        assert f"host {socket.gethostname()}" in msg and f"PID {first.pid}" in msg
        assert f"since {info['started']}" in msg and "last heartbeat 0 s ago" in msg
        assert f"`kill {first.pid}`" in msg and "another run.dir" in msg and "taken over automatically" in msg
    finally:
        first.communicate("\n", timeout=30)
    assert first.returncode == 0
    assert not (run / LOCK).exists()
    assert starts(run).returncode == 0  # free again


def test_a_killed_holder_is_taken_over_with_a_warning(tmp_path):
    run = tmp_path / "run"
    first = holder(run)
    first.kill()
    # Not reaped yet (a zombie), as when the launcher that started it is itself stuck.
    for _ in range(500):
        if Path(f"/proc/{first.pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z":
            break
        time.sleep(0.01)
    assert (run / LOCK).exists()
    second = starts(run)
    first.wait()
    assert second.returncode == 0, second.stdout + second.stderr
    assert f"took over the lock on {run} from a training that is gone (host {socket.gethostname()}, " \
           f"PID {first.pid}" in second.stderr
    assert f"PID {first.pid} is no longer running" in second.stderr
    assert not (run / LOCK).exists() and os.listdir(run) == []  # released, and no takeover leftovers


def test_a_reused_pid_is_not_the_holder(tmp_path):
    # The holder's PID now belongs to another process (this one): its start time gives it away.
    me = runlock.identity()
    write_lock(tmp_path, **{**me, "pid_start": me["pid_start"] - 1})
    with RunLock.acquire(tmp_path) as lock:
        assert f"PID {me['pid']} is no longer running" in lock.replaced
    with pytest.raises(RunLockedError, match=f"PID {me['pid']}"):  # its real start time: alive
        write_lock(tmp_path, **me)
        RunLock.acquire(tmp_path)


def test_another_hosts_lock_is_taken_over_only_when_its_heartbeat_is_stale(tmp_path, caplog):
    write_lock(tmp_path, age=runlock.STALE_AFTER_S - 30)
    with pytest.raises(RunLockedError) as e:
        RunLock.acquire(tmp_path)
    assert "host node-elsewhere, PID 4242" in str(e.value) and "last heartbeat 90 s ago" in str(e.value)

    write_lock(tmp_path, age=runlock.STALE_AFTER_S + 30)
    with RunLock.acquire(tmp_path) as lock:
        assert json.loads((tmp_path / LOCK).read_text())["pid"] == os.getpid()
    assert "took over the lock" in caplog.text and "host node-elsewhere, PID 4242" in caplog.text
    assert "no heartbeat for 150 s" in lock.replaced
    assert not (tmp_path / LOCK).exists()


def test_an_empty_lock_file_is_judged_by_its_age(tmp_path):
    # What a starter that died between creating the file and writing it leaves behind.
    path = write_lock(tmp_path)
    path.write_text("")
    old = time.time() - 10
    os.utime(path, (old, old))
    with pytest.raises(RunLockedError, match="an empty or unreadable lock file"):
        RunLock.acquire(tmp_path)
    old = time.time() - runlock.STALE_AFTER_S - 10
    os.utime(path, (old, old))
    with RunLock.acquire(tmp_path) as lock:
        assert "an empty or unreadable lock file" in lock.replaced and "no heartbeat for" in lock.replaced


def test_a_requeued_slurm_job_takes_over_its_earlier_run(tmp_path):
    run = tmp_path / "run"
    # The first run of job 77 (no SLURM_RESTART_COUNT before a requeue), on another node, heartbeat fresh.
    write_lock(run, slurm_job_id="77", slurm_restart_count=0)
    other_job = starts(run, SLURM_JOB_ID="78")
    assert other_job.returncode == 3 and "Slurm job 77 (restart 0)" in other_job.stdout
    assert "`scancel 77`" in other_job.stdout
    assert starts(run, SLURM_JOB_ID="77").returncode == 3  # the same run of the job: not a requeue

    requeued = starts(run, SLURM_JOB_ID="77", SLURM_RESTART_COUNT="1")
    assert requeued.returncode == 0, requeued.stdout
    assert "it is from restart 0 of Slurm job 77, now at restart 1" in requeued.stderr

    # The same from a real first-run process that is still alive (Slurm would have killed it): the
    # requeued run takes over, and the old process's exit leaves the new lock alone.
    old = holder(run, SLURM_JOB_ID="77")
    new = holder(run, SLURM_JOB_ID="77", SLURM_RESTART_COUNT="1")
    old.communicate("\n", timeout=30)
    assert json.loads((run / LOCK).read_text())["pid"] == new.pid
    new.communicate("\n", timeout=30)
    assert not (run / LOCK).exists()


@pytest.mark.parametrize("round_", range(3))
def test_of_many_starters_taking_over_one_dead_lock_exactly_one_wins(tmp_path, round_):
    run = tmp_path / "run"
    write_lock(run, age=runlock.STALE_AFTER_S + 60)
    go = tmp_path / "go"
    procs = [start(run, str(go)) for _ in range(8)]
    try:
        for p in procs:
            assert p.stdout.readline() == "READY\n"
        go.touch()
        first_lines = {p.pid: p.stdout.readline() for p in procs}
        winners = [pid for pid, line in first_lines.items() if line.startswith("ACQUIRED")]
        assert len(winners) == 1, first_lines
        losers = [line for pid, line in first_lines.items() if pid not in winners]
        assert all(line.startswith("LOCKED") and f"PID {winners[0]}" in line for line in losers), losers
        assert json.loads((run / LOCK).read_text())["pid"] == winners[0]
        assert sorted(os.listdir(run)) == [LOCK]  # no takeover marks or moved locks left
    finally:
        for p in procs:
            p.communicate("\n", timeout=30)
    assert not (run / LOCK).exists()


@pytest.mark.parametrize("ending", ["normal exit without release", "exception in with", "SIGTERM handled"])
def test_the_lock_goes_with_the_process(tmp_path, ending):
    code = {
        "normal exit without release": "RunLock.acquire(sys.argv[1]); print('HELD', flush=True)",
        "exception in with": "with RunLock.acquire(sys.argv[1]):\n    print('HELD', flush=True); 1 / 0",
        # As the trainer does: the signal handler turns SIGTERM into an orderly return.
        "SIGTERM handled": "signal.signal(signal.SIGTERM, lambda *a: sys.exit(0)); RunLock.acquire(sys.argv[1]); "
                           "print('HELD', flush=True); time.sleep(60)",
    }[ending]
    proc = subprocess.Popen([sys.executable, "-c", f"import signal, sys, time\nfrom dcgan_dist.runlock import "
                             f"RunLock\n{code}", str(tmp_path)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=child_env())
    assert proc.stdout.readline() == "HELD\n"
    if ending == "SIGTERM handled":
        assert (tmp_path / LOCK).exists()
        proc.send_signal(signal.SIGTERM)
    proc.communicate(timeout=30)
    assert not (tmp_path / LOCK).exists()


def test_the_heartbeat_refreshes_the_lock_files_mtime(tmp_path, monkeypatch):
    monkeypatch.setattr(runlock, "HEARTBEAT_S", 0.05)
    with RunLock.acquire(tmp_path):
        old = time.time() - 1000
        os.utime(tmp_path / LOCK, (old, old))
        time.sleep(0.5)
        assert time.time() - (tmp_path / LOCK).stat().st_mtime < 5


# ---- status.json heartbeat and report's dead runs ----------------------------------------------------

def fake_run(root: Path, name: str, **status) -> Path:
    run = root / name
    run.mkdir(parents=True)
    (run / "status.json").write_text(json.dumps({"state": "running", "kimg": 1.0, "total_kimg": 10, **status}))
    return run


def test_status_names_its_writer_and_beats(tmp_path):
    tracking.write_status(tmp_path, "running", kimg=0.5)
    status = json.loads((tmp_path / "status.json").read_text())
    me = runlock.identity()
    assert status["state"] == "running" and status["kimg"] == 0.5
    assert status["host"] == me["host"] and status["pid"] == os.getpid() and status["launcher_pid"] == os.getppid()
    assert abs(status["heartbeat"] - time.time()) < 5


def test_tracker_heartbeat_keeps_the_state_and_checkpoint(tmp_path):
    from dcgan_dist import config
    cfg = config.load(REPO / "configs" / "quickstart.yaml", [f"run.dir={tmp_path}"])
    tracker = tracking.Tracker(cfg, tmp_path, 0, 1000, 2)
    try:
        tracker.status("running", 64, checkpoint="ckpt/000000.064")
        first = json.loads((tmp_path / "status.json").read_text())
        time.sleep(0.01)
        tracker.heartbeat(128)
        status = json.loads((tmp_path / "status.json").read_text())
    finally:
        tracker.close()
    assert status["state"] == "running" and status["kimg"] == 0.128 and status["checkpoint"] == "ckpt/000000.064"
    assert status["world_size"] == 2 and status["heartbeat"] > first["heartbeat"]


def test_report_shows_a_running_run_whose_trainer_is_gone_as_dead(tmp_path):
    me, now = runlock.identity(), time.time()
    pid = dead_pid()
    fake_run(tmp_path, "killed", **{**me, "pid": pid, "pid_start": None, "heartbeat": now - 1000})
    fake_run(tmp_path, "lost-node", host="node-elsewhere", pid=4242, heartbeat=now - 1000)
    fake_run(tmp_path, "alive", **{**me, "heartbeat": now - 5})
    fake_run(tmp_path, "busy-elsewhere", host="node-elsewhere", pid=4242, heartbeat=now - 60)
    # A long evaluation: no tick for a while, but the lock's heartbeat thread keeps beating.
    long_eval = fake_run(tmp_path, "long-eval", host="node-elsewhere", pid=4243, heartbeat=now - 1000)
    write_lock(long_eval, host="node-elsewhere", pid=4243, age=10)
    fake_run(tmp_path, "old-format")  # written before heartbeats: nothing to judge by
    (tmp_path / "written").mkdir()
    tracking.write_status(tmp_path / "written", "running", kimg=2.0)  # by this (live) process

    rows = {r["run"]: r for r in report.collect(tmp_path)}
    assert {k: r["state"] for k, r in rows.items()} == {
        "killed": "dead", "lost-node": "dead", "alive": "running", "busy-elsewhere": "running",
        "long-eval": "running", "old-format": "running", "written": "running"}
    assert f"status.json says running, but PID {pid} is no longer running" in rows["killed"]["error"]
    assert "no heartbeat for 1000 s" in rows["lost-node"]["error"]

    out = subprocess.run([sys.executable, "-m", "dcgan_dist.report", str(tmp_path)], capture_output=True, text=True,
                         env=child_env(), check=True).stdout
    lines = {line.split()[-1]: line.split()[1] for line in out.splitlines()[1:8]}
    assert lines["killed"] == "dead" and lines["alive"] == "running"
    assert "the same command resumes it" in out
