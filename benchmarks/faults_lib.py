"""The fault harness's tools: a trainer start through the real launcher (launcher.Child with the run's
files), the checks after a fault (checkpoints intact, final state) and the tally."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Callable, Optional

import psutil  # a dependency of accelerate

from dcgan_dist import checkpoint, integrity

from .launcher import REPO, Child, train_cmd

CONFIG = REPO / "configs" / "quickstart.yaml"


def say(msg: str) -> None:
    print(msg, flush=True)


def overrides(run_dir: Path, kimg: float) -> list[str]:
    """The harness's run: a tiny model on the embedded digits, a checkpoint every 10 steps."""
    return ["data.shards=embedded:digits", "data.workers=2", "data.shuffle_buffer=64", "model.resolution=32",
            "model.channels=1", "model.g_width=8", "model.d_width=8", "model.z_dim=16", "train.batch=16",
            "train.tick_kimg=0.08", "train.sample_every_kimg=1000", "checkpoint.every_kimg=0.16",
            "checkpoint.keep=3", f"train.kimg={kimg}", f"run.dir={run_dir}"]


class Start(Child):
    """One `accelerate launch` of the trainer (the quickstart config with `overrides`), its output in a
    log file."""

    def __init__(self, overrides: list[str], log_path: Path, cmd: Optional[list[str]] = None):
        self.run_dir = Path(next(o.split("=", 1)[1] for o in overrides if o.startswith("run.dir=")))
        self.stats_at_start = _lines(self.run_dir / "stats.jsonl")
        super().__init__(cmd or train_cmd(CONFIG, overrides), log_path, cwd=REPO)

    def wait_training(self, timeout: float) -> bool:
        """True once this start has written a tick (it trains); False if it exited or hung first."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if _lines(self.run_dir / "stats.jsonl") > self.stats_at_start:
                return True
            if self.rc is not None:
                return False
            time.sleep(0.05)
        return False

    def resumed(self) -> bool:
        return "resumed from" in self.output()

    def rank_pid(self, rank: int) -> Optional[int]:
        for p in self.tree()[1:]:
            try:
                if p.environ().get("RANK") == str(rank) and p.ppid() == self.proc.pid:
                    return p.pid
            except psutil.Error:
                continue
        return None

    def status(self) -> dict:
        try:
            return json.loads((self.run_dir / "status.json").read_text())
        except (OSError, ValueError):
            return {}


def _lines(path: Path) -> int:
    try:
        with open(path, "rb") as f:
            return sum(1 for _ in f)
    except OSError:
        return 0


def tmp_save_appeared(run_dir: Path, timeout: float, ends: Callable[[], bool]) -> bool:
    """Wait (polling every 2 ms) until a checkpoint save is in progress."""
    root, end = run_dir / checkpoint.CKPT_DIR, time.monotonic() + timeout
    while time.monotonic() < end and not ends():
        try:
            if any(n.startswith(".tmp-") for n in os.listdir(root)):
                return True
        except OSError:
            pass
        time.sleep(0.002)
    return False


def checkpoints_ok(run_dir: Path) -> tuple[int, list[str]]:
    """(complete checkpoints, problems): every one must verify against its file records and load."""
    import torch
    from safetensors.torch import load_file

    found = checkpoint.complete_checkpoints(run_dir)
    problems = []
    for path in found:
        wrong = integrity.problem(path, checkpoint.FORMAT)
        if wrong is None:
            try:
                for f in path.rglob("*"):
                    if f.suffix == ".safetensors":
                        load_file(str(f))
                    elif f.suffix in (".pt", ".bin", ".pkl"):
                        torch.load(f, weights_only=False)
            except Exception as e:  # noqa: BLE001 - any failure to load is what is counted
                wrong = f"does not load: {type(e).__name__}: {e}"
        if wrong:
            problems.append(f"{path.name}: {wrong}")
    return len(found), problems


def final_fingerprint(run_dir: Path) -> Optional[tuple]:
    """Every rank's parameter digest and the generator file's hash, of the newest checkpoint."""
    found = checkpoint.complete_checkpoints(run_dir)
    if not found:
        return None
    meta = json.loads((found[-1] / checkpoint.META).read_text())
    return (meta["nimg"], tuple(meta["param_digests"]), integrity.sha256(found[-1] / checkpoint.GENERATOR))


class Tally:
    """Rows and totals; printed as one table."""

    def __init__(self):
        self.rows, self.episodes, self.scenarios, self.final = [], [], [], None

    def trial(self, row: dict) -> None:
        self.rows.append(row)
        flags = [f for f, bad in (("HANG", row["hang"]), ("FAILED RESUME", row["failed_resume"]),
                                  (f"{row['left']} LEFT", row["left"]), (f"{row['corrupt']} CORRUPT", row["corrupt"]),
                                  ("NOT STOPPED", row.get("stopped_cleanly") is False)) if bad]
        say(f"  trial {row['trial']:3d}  {row['kind']:<18} {'in a save' if row['in_save'] else 'mid-training':<13}"
            f" resumed={row['resumed']!s:<5} state={row['state']!s:<9} {'completed ' if row['completed'] else ''}"
            f"{' '.join(flags) or 'ok'}" + (f"\n{row['error']}" if row.get("error") else ""))

    def episode(self, identical: bool, run_dir: Path) -> None:
        self.episodes.append({"run": str(run_dir), "identical": identical})
        say(f"  run {run_dir.name} complete: final state {'BIT-IDENTICAL to' if identical else 'DIFFERS from'} "
            "the uninterrupted run")

    def final_resume(self, start: Start) -> None:
        self.final = {"rc": start.rc}
        if start.rc != 0:
            say(f"  the final resume failed (rc {start.rc}):\n{start.error_lines()}")

    def scenario(self, name: str, ok: bool, seen: str) -> None:
        self.scenarios.append({"name": name, "ok": ok, "seen": seen})
        say(f"  {'PASS' if ok else 'FAIL'} {name}: {seen}")

    def totals(self) -> dict:
        r = self.rows
        return {"trials": len(r), "in_save": sum(x["in_save"] for x in r),
                "hangs": sum(x["hang"] for x in r), "processes_left": sum(x["left"] for x in r),
                "corrupt_checkpoints": sum(x["corrupt"] for x in r),
                "failed_resumes": sum(x["failed_resume"] for x in r) + int(bool(self.final and self.final["rc"])),
                "not_stopped_cleanly": sum(x.get("stopped_cleanly") is False for x in r),
                "runs_completed": len(self.episodes),
                "bit_identical": sum(e["identical"] for e in self.episodes),
                "scenarios_passed": sum(s["ok"] for s in self.scenarios), "scenarios": len(self.scenarios)}

    def ok(self) -> bool:
        t = self.totals()
        return (t["hangs"] == t["processes_left"] == t["corrupt_checkpoints"] == t["failed_resumes"]
                == t["not_stopped_cleanly"] == 0 and t["bit_identical"] == t["runs_completed"]
                and t["scenarios_passed"] == t["scenarios"] and (not self.rows or t["runs_completed"] > 0))

    def print_summary(self, seconds: float, work: Path) -> None:
        t = self.totals()
        say("\n| trials | in a save | hangs | processes left | corrupt checkpoints | failed resumes | "
            "runs completed | bit-identical | scenarios |")
        say("|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
        say(f"| {t['trials']} | {t['in_save']} | {t['hangs']} | {t['processes_left']} | {t['corrupt_checkpoints']} | "
            f"{t['failed_resumes']} | {t['runs_completed']} | {t['bit_identical']}/{t['runs_completed']} | "
            f"{t['scenarios_passed']}/{t['scenarios']} |")
        say(f"\n{'PASS' if self.ok() else 'FAIL'} in {seconds:.0f} s; runs and logs in {work}")

    def to_json(self) -> dict:
        return {"rows": self.rows, "episodes": self.episodes, "scenarios": self.scenarios, "final": self.final,
                "totals": self.totals(), "ok": self.ok()}
