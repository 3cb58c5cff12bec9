"""One training per run directory: an exclusive lock file, and telling a live holder from a dead one.

Rank zero takes `RUN/lock.json` before it writes anything into the run directory and removes it on
every exit it lives through (normal end, exception, the stop on SIGTERM/SIGUSR1, interpreter exit).
A second start on the same `run.dir` fails at once with a message naming the holder. A lock whose
holder has died (SIGKILL, a node crash, an earlier run of a requeued Slurm job) is taken over by the
next start, with a warning naming the old holder.

Why a file and not flock/fcntl: run directories live on NFS or Lustre, where advisory locks are not
coherent across nodes on every mount. What this relies on instead:

- `open(O_CREAT | O_EXCL)` is atomic: of two creators of one name exactly one succeeds. True on
  local file systems, NFSv3 and later (exclusive create), Lustre; not on NFSv2.
- `rename` of one name succeeds for exactly one caller (the others find no file).
- A holder on another host is judged by its heartbeat: the lock file's mtime, touched every
  HEARTBEAT_S seconds by a daemon thread. It is read after an `open`, which on NFS revalidates the
  cached attributes (close-to-open consistency). Clocks of the nodes and the file server must agree
  to well within STALE_AFTER_S - HEARTBEAT_S (NTP gives milliseconds).
- On the holder's own machine (same host name, boot and PID namespace) the PID decides, at once:
  gone, a zombie, or a different process (its start time in /proc differs: the PID was reused).
- Slurm kills every process of a job before it requeues it: a lock left by an earlier run of the
  same job (same SLURM_JOB_ID, lower SLURM_RESTART_COUNT) is dead whatever its heartbeat says.

Taking over a dead lock must not let two starters both win. Each lock holds a random token; a
starter that judged token T dead first creates `lock.json.takeover-T.<n>` with O_EXCL (one winner),
checks that lock.json still holds T, renames it away and then competes for lock.json with O_EXCL
like any starter. Only the holder of T or a takeover winner removes T, so the check cannot be
outdated by the time of the rename. A takeover mark older than TAKEOVER_TIMEOUT_S (its creator
died mid-takeover, which takes milliseconds) makes way for the next generation <n+1>.

The same liveness rules (`dead_reason`) tell `report` whether a run whose status.json says
`running` is alive (see `run_dead_reason`).
"""

from __future__ import annotations

import atexit
import json
import logging
import os
import socket
import threading
import time
import uuid
from pathlib import Path
from typing import Optional

from .errors import UserError
from .layout import LOCK

log = logging.getLogger("dcgan_dist")

HEARTBEAT_S = 15.0  # how often a holder touches its lock file
# A holder on another host whose heartbeat is older than this is dead: eight missed heartbeats,
# enough for a node under heavy I/O or a short NFS stall, short enough that a crashed node's run can
# be restarted by hand after two minutes.
STALE_AFTER_S = 120.0
TAKEOVER_TIMEOUT_S = 30.0  # a takeover mark this old belongs to a starter that died mid-takeover
START_PATIENCE_S = 5.0  # how long a starter waits for a concurrent takeover to finish before refusing


class RunLockedError(UserError, RuntimeError):
    """run.dir is in use by another training (the message names it and says what to do)."""


def _read(path: str) -> Optional[str]:
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return None


def process_start(pid: int) -> Optional[int]:
    """The process's start time (clock ticks since boot, /proc/PID/stat field 22); None if unknown."""
    stat = _read(f"/proc/{pid}/stat")
    if not stat:
        return None
    fields = stat.rsplit(")", 1)[-1].split()  # the command name, in parentheses, may hold spaces
    return int(fields[19]) if len(fields) > 19 else None


def _zombie(pid: int) -> bool:
    stat = _read(f"/proc/{pid}/stat")
    return bool(stat) and stat.rsplit(")", 1)[-1].split()[:1] in (["Z"], ["X"])


_IDENTITY: dict[int, dict] = {}


def identity() -> dict:
    """Who this process is, in the terms `dead_reason` judges: host, PID (and its start time, the
    boot and PID namespace that make the PID meaningful), the launcher's PID, the Slurm job and its
    restart count. Computed once per process (so `launcher_pid` is the parent at start)."""
    pid = os.getpid()
    if pid not in _IDENTITY:
        job = os.environ.get("SLURM_JOB_ID") or None
        restart = os.environ.get("SLURM_RESTART_COUNT", "0" if job else "")  # unset until the first requeue
        try:
            pid_ns = os.readlink("/proc/self/ns/pid")
        except OSError:
            pid_ns = None
        _IDENTITY[pid] = {
            "host": socket.gethostname(), "pid": pid, "launcher_pid": os.getppid(), "pid_start": process_start(pid),
            "boot_id": _read("/proc/sys/kernel/random/boot_id"), "pid_ns": pid_ns,
            "slurm_job_id": job,
            "slurm_restart_count": int(restart) if restart and restart.isdigit() else None,
        }
    return dict(_IDENTITY[pid])


def same_machine(info: dict, me: dict) -> bool:
    """True when `info`'s PID can be checked from here: the same host name and, where both are known,
    the same boot and PID namespace (two containers may share a host name but not their PIDs)."""
    if not info.get("host") or info.get("host") != me.get("host"):
        return False
    return all(info.get(k) is None or me.get(k) is None or info[k] == me[k] for k in ("boot_id", "pid_ns"))


def pid_alive(pid: int, start: Optional[int] = None) -> bool:
    """Is process `pid` (started at `start` ticks, when known) running on this machine?"""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # another user's process: it exists
    if _zombie(pid):  # killed, not yet reaped by its parent: it will never heartbeat again
        return False
    now_start = process_start(pid)
    return start is None or now_start is None or now_start == start


def _int(v) -> Optional[int]:
    return v if isinstance(v, int) and not isinstance(v, bool) else None


def dead_reason(info: dict, heartbeat: Optional[float], *, now: Optional[float] = None,
                me: Optional[dict] = None) -> Optional[str]:
    """Why the process described by `info` (an `identity()`) is dead, or None when it is alive or
    cannot be judged. `heartbeat` is its last sign of life (Unix time)."""
    me = identity() if me is None else me
    now = time.time() if now is None else now
    job, restart, my_restart = info.get("slurm_job_id"), _int(info.get("slurm_restart_count")), \
        _int(me.get("slurm_restart_count"))
    if job and job == me.get("slurm_job_id") and restart is not None and my_restart is not None \
            and restart < my_restart:
        return (f"it is from restart {restart} of Slurm job {job}, now at restart {my_restart} "
                "(Slurm stops a job's processes before requeueing it)")
    pid = _int(info.get("pid"))
    if pid is not None and same_machine(info, me):  # the PID decides, whatever the heartbeat says
        if pid_alive(pid, _int(info.get("pid_start"))):
            return None
        return f"PID {pid} is no longer running on {me['host']}"
    if heartbeat is not None and now - heartbeat > STALE_AFTER_S:
        return f"no heartbeat for {now - heartbeat:.0f} s (a live holder beats every {HEARTBEAT_S:.0f} s)"
    return None


def holder_alive(info: dict, heartbeat: Optional[float], **kw) -> bool:
    return dead_reason(info, heartbeat, **kw) is None


def describe(info: dict, heartbeat: Optional[float], now: Optional[float] = None) -> str:
    """'host H, PID P (launcher L), Slurm job J (restart R), since S, last heartbeat N s ago'."""
    now = time.time() if now is None else now
    if not info:
        return (f"an empty or unreadable lock file (its creator may have died while writing it), "
                f"touched {max(now - (heartbeat or now), 0):.0f} s ago")
    parts = [f"host {info.get('host', '?')}", f"PID {info.get('pid', '?')}"
             + (f" (launcher {info['launcher_pid']})" if info.get("launcher_pid") else "")]
    if info.get("slurm_job_id"):
        parts.append(f"Slurm job {info['slurm_job_id']} (restart {info.get('slurm_restart_count') or 0})")
    parts.append(f"since {info.get('started', '?')}")
    parts.append("no heartbeat yet" if heartbeat is None else f"last heartbeat {max(now - heartbeat, 0):.0f} s ago")
    return ", ".join(parts)


def run_dead_reason(run_dir: str | os.PathLike, status: dict, *, now: Optional[float] = None) -> Optional[str]:
    """Why a run whose status.json says `running` has no live trainer, or None. Its heartbeat is the
    newer of status.json's (every tick) and its lock file's mtime (every HEARTBEAT_S, also during a
    long evaluation) when the lock is the same process's."""
    heartbeat = status.get("heartbeat") if isinstance(status.get("heartbeat"), (int, float)) else None
    try:
        lock = _load(Path(run_dir) / LOCK)
    except OSError:  # unreadable here (permissions): judge by status.json alone
        lock = None
    if lock is not None and lock[0].get("host") == status.get("host") and lock[0].get("pid") == status.get("pid"):
        heartbeat = max(heartbeat or 0.0, lock[1])
    if heartbeat is None and _int(status.get("pid")) is None:
        return None  # written before heartbeats existed: nothing to judge by
    return dead_reason(status, heartbeat, now=now)


def _load(path: Path) -> Optional[tuple[dict, float, str]]:
    """(info, heartbeat, key) of the lock at `path`, or None when there is none. `key` names this
    very lock (its token; the inode for a file its creator left empty)."""
    for attempt in range(20):
        try:
            with open(path, "rb") as f:  # open, then fstat: on NFS the open revalidates the mtime
                st = os.fstat(f.fileno())
                raw = f.read()
        except FileNotFoundError:
            return None
        try:
            info = json.loads(raw)
            if isinstance(info, dict):
                return info, st.st_mtime, str(info.get("token") or f"inode-{st.st_ino}")
        except ValueError:
            pass
        if time.time() - st.st_mtime > 2.0 or attempt == 19:  # not a creator about to write it
            return {}, st.st_mtime, f"inode-{st.st_ino}"
        time.sleep(0.05)
    return None


def _create_exclusive(path: Path) -> Optional[int]:
    try:
        return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except FileExistsError:
        return None


def _take_over(path: Path, key: str) -> bool:
    """Remove the lock named `key` at `path`, when this caller wins the right to; True if it did."""
    for gen in range(1, 1000):
        mark = path.with_name(f"{LOCK}.takeover-{key}.{gen}")
        fd = _create_exclusive(mark)
        if fd is not None:
            os.close(fd)
            break
        try:
            if time.time() - mark.stat().st_mtime < TAKEOVER_TIMEOUT_S:
                return False  # another starter is taking it over right now
        except FileNotFoundError:
            return False  # it finished: lock.json holds someone else's lock or none
    else:
        return False
    try:
        current = _load(path)
        if current is None or current[2] != key:
            return False  # replaced since we read it
        grave = path.with_name(f"{LOCK}.dead-{uuid.uuid4().hex}")
        try:
            os.rename(path, grave)
        except FileNotFoundError:
            return False
        moved = _load(grave)
        if moved is not None and moved[2] != key:
            # Only possible when a holder judged dead was alive after all and released, and a new lock
            # appeared in between: put that one back (unless yet another start created one meanwhile).
            try:
                os.link(grave, path)
            except OSError:
                log.error("moved a live lock of %s away while taking over a dead one; two trainings may now "
                          "write this run directory", path.parent)
            os.unlink(grave)
            return False
        os.unlink(grave)
        return True
    finally:
        for m in path.parent.glob(f"{LOCK}.takeover-{key}.*"):
            m.unlink(missing_ok=True)


class RunLock:
    """The lock on one run directory, held by this process. `RunLock.acquire(run_dir)` or
    `with RunLock.acquire(run_dir): ...`; `release()` is also called at interpreter exit."""

    def __init__(self, path: Path, fd: int, info: dict, replaced: Optional[str]):
        self.path, self.info = path, info
        self.replaced = replaced  # the dead holder this lock was taken over from, described; or None
        self._fd: Optional[int] = fd
        self._stop = threading.Event()
        self._lost_warned = False
        self._beat = threading.Thread(target=self._heartbeat, name="run-lock-heartbeat", daemon=True)
        self._beat.start()
        atexit.register(self.release)

    @classmethod
    def acquire(cls, run_dir: str | os.PathLike) -> "RunLock":
        """Take the lock on `run_dir` (created if missing), or raise RunLockedError naming its live holder."""
        run_dir = Path(run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        path = run_dir / LOCK
        replaced = None
        deadline = time.monotonic() + START_PATIENCE_S
        while True:
            fd = _create_exclusive(path)
            if fd is not None:
                info = {**identity(), "token": uuid.uuid4().hex, "run_dir": str(run_dir.resolve()),
                        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "started_unix": time.time()}
                try:
                    os.write(fd, (json.dumps(info, indent=2) + "\n").encode())
                    os.fsync(fd)
                except OSError:  # a full disk, say: leave no empty lock behind
                    os.close(fd)
                    path.unlink(missing_ok=True)
                    raise
                if replaced:
                    log.warning("took over the lock on %s from a training that is gone (%s)", run_dir, replaced)
                return cls(path, fd, info, replaced)
            seen = _load(path)
            if seen is None:
                continue  # released or taken over since our create: compete again
            info, heartbeat, key = seen
            reason = dead_reason(info, heartbeat)
            if reason is None:
                raise RunLockedError(locked_message(run_dir, info, heartbeat))
            if _take_over(path, key):
                replaced = f"{describe(info, heartbeat)}: {reason}"
                continue
            if time.monotonic() > deadline:
                raise RunLockedError(f"run.dir {run_dir} is being taken over from a dead training by another start "
                                     f"({describe(info, heartbeat)}: {reason}); try again in a minute, or use "
                                     "another run.dir")
            time.sleep(0.1)

    def _heartbeat(self) -> None:
        while not self._stop.wait(HEARTBEAT_S):
            fd = self._fd
            if fd is None:
                return
            try:
                os.utime(fd)  # our own file, by descriptor: never refreshes a lock that replaced ours
                lost = os.stat(self.path).st_ino != os.fstat(fd).st_ino
            except FileNotFoundError:
                lost = True
            except OSError as e:  # a file server hiccup: the next beat may succeed
                log.warning("could not refresh the run lock %s: %s", self.path, e)
                continue
            if lost and not self._lost_warned:
                self._lost_warned = True
                log.error("the lock %s was removed or taken over by another start (this process was judged dead): "
                          "two trainings may now write this run directory", self.path)

    def release(self) -> None:
        """Remove the lock if it is still ours; idempotent, and a no-op in forked children."""
        if self._fd is None or os.getpid() != self.info["pid"]:
            return
        self._stop.set()
        if self._beat is not threading.current_thread():
            self._beat.join(timeout=5)
        fd, self._fd = self._fd, None
        os.close(fd)  # before the unlink: NFS would keep an open, deleted file as a .nfs* entry
        current = _load(self.path)
        if current is not None and current[2] == self.info["token"]:
            self.path.unlink(missing_ok=True)
        atexit.unregister(self.release)

    def __enter__(self) -> "RunLock":
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def locked_message(run_dir: Path, info: dict, heartbeat: Optional[float]) -> str:
    """What a second start on a locked run.dir is told: who holds it and what to do."""
    if not info:
        return (f"run.dir {run_dir} is locked by {describe(info, heartbeat)}: another start may be writing it "
                f"right now. Try again in a moment; if no training uses this run.dir, it is taken over "
                f"{STALE_AFTER_S:.0f} s after it was last touched (or remove {Path(run_dir) / LOCK}).")
    host, pid = info.get("host", "?"), info.get("pid", "?")
    job = info.get("slurm_job_id")
    stop = f"`kill {pid}` on {host}" + (f", or `scancel {job}`" if job else "")
    return (f"run.dir {run_dir} is in use by another training: {describe(info, heartbeat)} (lock file "
            f"{Path(run_dir) / LOCK}). Wait for it to finish, stop it ({stop}: it saves a checkpoint and exits; "
            f"then the same command resumes), or use another run.dir. A lock whose holder has died is taken "
            f"over automatically: at once on the same host, after {STALE_AFTER_S:.0f} s without heartbeat from "
            "another host, at once by a requeued run of the same Slurm job.")
