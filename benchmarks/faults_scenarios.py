"""The fault harness's scenarios: each causes one fault for real through the launcher and returns
(passed, what the user saw)."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from dcgan_dist import checkpoint, integrity
from dcgan_dist.data import locate

from .faults_lib import Start, checkpoints_ok, overrides
from .launcher import REPO, child_env, gone_within, kill_tree


def _overrides(run_dir: Path, kimg: float, *extra: str) -> list[str]:
    return [*overrides(run_dir, kimg), *extra]


def _run(work: Path, name: str, run_dir: Path, kimg: float, *extra: str, timeout: float = 300) -> Start:
    start = Start(_overrides(run_dir, kimg, *extra), work / f"{name}.log")
    start.finish(timeout)
    return start


def _error(start: Start) -> str:
    """The line a user reads: the trainer's error (once), else the last line."""
    lines = [ln for ln in start.output().splitlines() if "ERROR" in ln or ln.startswith("error:")]
    line = (lines or start.output().splitlines() or ["(no output)"])[0]
    return line.split(" ERROR ", 1)[-1][:300]


def _base_run(work: Path) -> Path:
    """A finished run with 3 kept checkpoints (0.32, 0.48, 0.64 kimg), made once and copied."""
    base = work.parent / "_base"
    if not (base / "status.json").is_file():
        start = _run(work.parent, "_base", base, 0.64)
        assert start.rc == 0, start.error_lines()
    return base


def _copy(work: Path) -> Path:
    run = work / "run"
    shutil.rmtree(run, ignore_errors=True)
    shutil.copytree(_base_run(work), run)
    return run


def _refused(start: Start) -> bool:
    """Both ranks exited with the trainer's user-error status (torchrun itself then exits 1), or one of
    them while leaving: torchrun SIGTERMs the ranks left once one is gone."""
    codes = dict(re.findall(r"rank\s+: (\d) \(local_rank: \d\)\s+exitcode\s+: (-?\d+)", start.output()))
    return (start.rc not in (0, None) and set(codes) == {"0", "1"} and "2" in codes.values()
            and set(codes.values()) <= {"2", "-15"})


def two_starts(work: Path, short: bool = False) -> tuple[bool, str]:
    run = work / "run"
    first = Start(_overrides(run, 100), work / "first.log")
    if not first.wait_training(180):
        return False, f"the first start did not train: {first.error_lines()}"
    holder = first.rank_pid(0)
    second = _run(work, "second", run, 100, timeout=120)
    still_training = first.rc is None
    first.proc.send_signal(signal.SIGTERM)
    first.finish(120)
    ok = (_refused(second) and str(holder) in _error(second) and still_training
          and first.status().get("state") == "stopped")
    return ok, (f"second start rc {second.rc}: {_error(second)} | the first kept training, then stopped by SIGTERM: "
                f"{first.status().get('state')}")


def damaged_newest_checkpoint(work: Path, short: bool = False) -> tuple[bool, str]:
    seen, ok = [], True
    # --short: one damage through the launcher (tests/test_checkpoint_integrity.py covers each kind in-process)
    kinds = ("model.safetensors cut short", "meta.json cut short", "dcgan_rank1.pt deleted")
    for what in kinds[:1] if short else kinds:
        run = _copy(work)
        newest = checkpoint.complete_checkpoints(run)[-1]
        f = newest / what.split()[0]
        if what.endswith("deleted"):
            f.unlink()
        else:
            os.truncate(f, f.stat().st_size // 2)
        start = _run(work, what.split()[0], run, 0.8)
        previous = checkpoint.complete_checkpoints(run)[-3]  # 0.48, below the re-saved 0.64 and 0.80
        good = (start.rc == 0 and "skipping damaged" in start.output()
                and f"resumed from {previous}" in start.output())
        ok &= good
        warn = next((ln.split(" WARNING ", 1)[-1] for ln in start.output().splitlines() if "skipping damaged" in ln),
                    _error(start))
        seen.append(f"{what}: rc {start.rc}, {warn[:220]}")
    run = _copy(work)
    newest = checkpoint.complete_checkpoints(run)[-1]
    os.truncate(newest / "model.safetensors", 100)
    start = _run(work, "resume-path", run, 0.8, f"resume={newest}")
    ok &= _refused(start) and "damaged" in _error(start)
    seen.append(f"resume=<damaged path>: rc {start.rc}, {_error(start)}")
    return ok, " | ".join(seen)


def refused_start_keeps_records(work: Path, short: bool = False) -> tuple[bool, str]:
    run = _copy(work)
    before = {n: (run / n).read_bytes() for n in ("config.yaml", "status.json")}
    start = _run(work, "other-arch", run, 0.8, "model.g_width=16")
    after = {n: (run / n).read_bytes() for n in before}
    return _refused(start) and before == after, f"rc {start.rc}, records unchanged: {before == after}; {_error(start)}"


def truncated_shard(work: Path, short: bool = False) -> tuple[bool, str]:
    src = locate.embedded_shards("digits", 32, 1)
    shards = work / "shards"
    shutil.rmtree(shards, ignore_errors=True)
    shutil.copytree(src, shards)
    victim = sorted(shards.glob("*.tar"))[3]
    os.truncate(victim, int(victim.stat().st_size * 0.6))
    t0 = time.time()
    start = _run(work, "start", work / "run", 0.64, f"data.shards={shards}")
    took = time.time() - t0
    return (_refused(start) and victim.name in _error(start),
            f"rc {start.rc} after {took:.0f} s: {_error(start)}")


def _mounted_tmpfs(where: Path, size: int) -> bool:
    where.mkdir(parents=True, exist_ok=True)
    return subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)],
                          capture_output=True).returncode == 0


def _umount(where: Path) -> None:
    subprocess.run(["umount", "-l", str(where)], capture_output=True)


def _blocks(path: Path) -> int:
    """Bytes a tree takes on disk (whole blocks, as a filesystem counts them)."""
    return sum(f.stat().st_blocks * 512 for f in path.rglob("*") if f.is_file())


def disk_full_before_save(work: Path, short: bool = False) -> tuple[bool, str]:
    base = _base_run(work)
    one = _blocks(checkpoint.complete_checkpoints(base)[-1])
    rest = _blocks(base) - 3 * one  # logs, samples, TensorBoard: what the run writes besides checkpoints
    disk = work / "disk"
    if os.geteuid() != 0 or not _mounted_tmpfs(disk, rest + int(2.5 * one) + (16 << 10)):
        return True, "SKIP: needs root to mount a small tmpfs"
    try:
        run = disk / "run"
        start = _run(work, "full", run, 0.64)
        kept, problems = checkpoints_ok(run)
        leftovers = list((run / checkpoint.CKPT_DIR).glob(".tmp-*"))
        refused = start.rc not in (0, None) and "not enough disk space" in _error(start)
        again = _run(work, "make-room", run, 0.64, "checkpoint.make_room=true")
        ok = refused and kept >= 1 and not problems and not leftovers and again.rc == 0
        return ok, (f"rc {start.rc}: {_error(start)} | {kept} checkpoints intact, {len(leftovers)} partial left | "
                    f"re-run with checkpoint.make_room=true: rc {again.rc}, {again.status().get('state')}")
    finally:
        _umount(disk)


def disk_full_during_save(work: Path, short: bool = False) -> tuple[bool, str]:
    disk = work / "disk"
    if os.geteuid() != 0 or not _mounted_tmpfs(disk, 64 << 20):
        return True, "SKIP: needs root to mount a small tmpfs"
    try:
        run = disk / "run"
        start = Start(_overrides(run, 2.4), work / "start.log")
        deadline = time.time() + 180
        while not checkpoint.complete_checkpoints(run) and time.time() < deadline and start.rc is None:
            time.sleep(0.05)
        one = integrity.size_of(checkpoint.complete_checkpoints(run)[-1])
        free = shutil.disk_usage(disk).free
        with open(disk / "filler", "wb") as f:  # leave room for the bytes of one checkpoint, not for its blocks
            f.write(b"\0" * max(0, free - one - (8 << 10)))
        start.finish(300)
        kept, problems = checkpoints_ok(run)
        leftovers = list((run / checkpoint.CKPT_DIR).glob(".tmp-*"))
        msg = _error(start)
        ok = (start.rc not in (0, None) and ("cannot save checkpoint" in msg or "not enough disk space" in msg)
              and kept >= 1 and not problems and not leftovers)
        return ok, f"rc {start.rc}: {msg} | {kept} checkpoints intact, {len(leftovers)} partial left"
    finally:
        _umount(disk)


def launcher_killed(work: Path, short: bool = False) -> tuple[bool, str]:
    run = work / "run"
    start = Start(_overrides(run, 100), work / "start.log")
    if not start.wait_training(180):
        return False, f"did not train: {start.error_lines()}"
    tree = start.tree()
    t0 = time.time()
    os.kill(start.proc.pid, signal.SIGKILL)
    left = gone_within(tree, 30)
    took = time.time() - t0
    kill_tree(left)
    start.finish()
    state = start.status().get("state")
    shown = _report_state(run)
    ok = not left and state == "stopped" and shown == "stopped"
    return ok, f"{len(tree)} processes, all gone {took:.1f} s after the kill ({len(left)} left); status.json and report: {state}, {shown}"


def rank0_killed_report(work: Path, short: bool = False) -> tuple[bool, str]:
    run = work / "run"
    start = Start(_overrides(run, 100), work / "start.log")
    if not start.wait_training(180):
        return False, f"did not train: {start.error_lines()}"
    tree, rank0 = start.tree(), start.rank_pid(0)
    if rank0 is None:
        return False, "found no rank-0 process under the launcher"
    os.kill(rank0, signal.SIGKILL)
    left = gone_within(tree, 30)
    kill_tree(left)
    start.finish()
    status = json.loads((run / "status.json").read_text())
    shown = _report_state(run)
    return not left and shown == "dead", f"status.json says {status.get('state')}; report shows {shown}"


def _report_state(run: Path) -> str:
    out = subprocess.run([sys.executable, "-m", "dcgan_dist.report", str(run), "--json"], cwd=REPO, env=child_env(),
                         capture_output=True, text=True)
    try:
        return json.loads(out.stdout)[0]["state"]
    except (ValueError, IndexError, KeyError):
        return f"(report failed: {out.stderr.strip()[-200:]})"


# Left out of --short, where the suite covers them otherwise: the kill trials (a killed launcher must
# leave status.json = stopped) and tests/test_checkpoint.py (a refused resume leaves the records alone).
FULL_ONLY = {"launcher killed", "refused start keeps the run's records"}

SCENARIOS = {
    "two starts on one run.dir": two_starts,
    "damaged newest checkpoint": damaged_newest_checkpoint,
    "refused start keeps the run's records": refused_start_keeps_records,
    "shard cut short": truncated_shard,
    "disk full before a save": disk_full_before_save,
    "disk full during a save": disk_full_during_save,
    "launcher killed": launcher_killed,
    "rank 0 killed, report": rank0_killed_report,
}
