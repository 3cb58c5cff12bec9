"""Fault injection through the real launcher: kill ranks and launchers at random moments, break
disks, checkpoints and shards, start runs twice, and check that nothing is lost.

    python -m benchmarks.faults [--trials 50] [--short] [--seed 0] [--json PATH] [--workdir DIR]

Kill trials (2 CPU processes, `accelerate launch --config_file launch/cpu.yaml`, a tiny model on
the embedded digits). One run directory is interrupted over and over: each trial starts the same
command (resume=auto), waits until it trains, and then deals one fault at a random moment, some
timed to land inside a checkpoint save (the moment `checkpoints/.tmp-*` appears):

  kill -9 rank 0 | kill -9 rank 1 | kill -9 the launcher | SIGTERM to the launcher (as Slurm does)

After each: every process of the tree (launcher, ranks, loader workers) must be gone within 30 s;
every checkpoint that looks complete must verify (its file records) and load; the next start must
resume. When the run completes, its final parameters (every rank's digest) and its
generator.safetensors must be bit-identical to an uninterrupted run of the same command: exact
resume makes the result independent of where the faults landed. Then a new run directory begins.

Scenarios (each through the launcher): two starts on one run.dir; the newest checkpoint cut short,
its meta.json cut short, a rank file deleted, resume=<damaged path>; a refused resume (another
architecture) leaves the run's records alone; a shard cut short; a full disk before and during a
save (a small tmpfs; skipped unless root); the launcher killed, then `report` shows the run state.

Prints one line per trial and scenario and a summary table; exits 1 on any failure.
`--short` (3 trials and the scenarios, fewer variants; ~3 minutes) is what the test suite runs.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import sys
import tempfile
import time
from pathlib import Path

from dcgan_dist import checkpoint

from .faults_lib import Start, Tally, checkpoints_ok, final_fingerprint, overrides, say, tmp_save_appeared
from .faults_scenarios import FULL_ONLY, SCENARIOS
from .launcher import gone_within, kill_tree

KINDS = ("kill -9 rank 0", "kill -9 rank 1", "kill -9 launcher", "SIGTERM launcher")


def trial(rng: random.Random, kind: str, in_save: bool, run_dir: Path, kimg: float, logs: Path, n: int) -> dict:
    """One start of the run and one fault dealt to it; the start may also complete first."""
    had_checkpoint = bool(checkpoint.complete_checkpoints(run_dir))
    start = Start(overrides(run_dir, kimg), logs / f"trial{n:03d}.log")
    row = {"trial": n, "kind": kind, "in_save": in_save, "resumed": None, "left": 0, "corrupt": 0,
           "failed_resume": False, "hang": False, "completed": False, "state": None}
    if not start.wait_training(timeout=180):
        row.update(failed_resume=start.rc not in (None, 0), hang=start.rc is None, completed=start.rc == 0,
                   error=start.error_lines())
        kill_tree(start.tree())
        return row
    row["resumed"] = start.resumed()
    row["failed_resume"] = had_checkpoint and not row["resumed"]
    time.sleep(rng.uniform(0.0, 3.0))
    if in_save and not tmp_save_appeared(run_dir, timeout=20, ends=lambda: start.rc is not None):
        in_save = row["in_save"] = False  # the run ended first
    if in_save:
        time.sleep(rng.uniform(0.0, 0.03))  # somewhere inside the save (they take ~0.1-0.3 s here)
    tree = start.tree()
    if start.rc is None:
        if kind == "kill -9 launcher":
            os.kill(start.proc.pid, signal.SIGKILL)
        elif kind == "SIGTERM launcher":
            start.proc.send_signal(signal.SIGTERM)
        else:
            rank = start.rank_pid(int(kind[-1]))
            if rank is not None:
                os.kill(rank, signal.SIGKILL)
    else:
        row["completed"] = start.rc == 0
    row["left"] = len(gone_within(tree, 30))
    kill_tree(tree)  # whatever is left: counted above, not allowed to disturb the next trial
    start.finish()
    row["rc"] = start.rc
    row["state"] = start.status().get("state")
    row["completed"] = row["completed"] or row["state"] == "complete"
    row["corrupt"] = len(checkpoints_ok(run_dir)[1])
    if kind in ("kill -9 launcher", "SIGTERM launcher") and not row["completed"]:
        row["stopped_cleanly"] = row["state"] == "stopped"
    return row


def kill_trials(args, work: Path, tally: Tally) -> None:
    rng = random.Random(args.seed)
    kimg = 1.2 if args.short else 2.4  # 75 / 150 steps: ~4 / 8 s of training on 2 cores, a save every 10
    say("uninterrupted reference run ...")
    ref_dir = work / "reference"
    ref = Start(overrides(ref_dir, kimg), work / "logs" / "reference.log")
    ref.finish(timeout=600)
    if ref.rc != 0:
        raise SystemExit(f"the uninterrupted reference run failed (rc {ref.rc}):\n{ref.error_lines()}")
    reference = final_fingerprint(ref_dir)
    episode, run_dir = 0, work / "run000"
    for n in range(args.trials):
        kind = KINDS[n % len(KINDS)] if args.short else rng.choice(KINDS)
        in_save = (n % 3 == 0) if args.short else rng.random() < 0.35
        row = trial(rng, kind, in_save, run_dir, kimg, work / "logs", n)
        tally.trial(row)
        if row["completed"]:
            tally.episode(final_fingerprint(run_dir) == reference, run_dir)
            episode += 1
            run_dir = work / f"run{episode:03d}"
    say("finishing the interrupted run without faults ...")
    last = Start(overrides(run_dir, kimg), work / "logs" / "final.log")
    last.finish(timeout=600)
    tally.final_resume(last)
    if last.rc == 0:
        tally.episode(final_fingerprint(run_dir) == reference, run_dir)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.faults", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--trials", type=int, default=None, help="kill trials (default 50, --short 3)")
    p.add_argument("--short", action="store_true", help="3 trials and every scenario (the test suite's mode)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", type=Path, help="write every row and the totals here")
    p.add_argument("--workdir", type=Path, help="keep the runs and logs here (default: a temporary directory)")
    p.add_argument("--only", default="", help="comma list: trials and/or scenario names (default: all)")
    args = p.parse_args(argv)
    args.trials = args.trials if args.trials is not None else (3 if args.short else 50)
    work = args.workdir or Path(tempfile.mkdtemp(prefix="dcgan-faults-"))
    work.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("DCGAN_DIST_CACHE", str(work / "cache"))
    only = {s for s in args.only.split(",") if s}
    tally = Tally()
    t0 = time.time()
    if not only or "trials" in only:
        kill_trials(args, work, tally)
    for name, scenario in SCENARIOS.items():
        if (not only or name in only) and not (args.short and name in FULL_ONLY):
            say(f"scenario: {name} ...")
            tally.scenario(name, *scenario(work / "scenarios" / name, args.short))
    tally.print_summary(time.time() - t0, work)
    if args.json:
        args.json.write_text(json.dumps(tally.to_json(), indent=2) + "\n")
    return 0 if tally.ok() else 1


if __name__ == "__main__":
    sys.exit(main())
