"""Generation quality on a fixed budget: train a config, pick the best checkpoint by FID, report it.

    python benchmarks/quality.py CONFIG (--minutes M | --kimg K) [options] [key=value ...]

    python benchmarks/quality.py configs/fashion28.yaml --minutes 30 data.shards=/tmp/prep/fashion28
    python benchmarks/quality.py configs/banana64.yaml --minutes 30 data.shards=/tmp/prep/banana64
    python benchmarks/quality.py configs/quickstart.yaml --kimg 30 --fid-num 5000
    options: [--checkpoints 10] [--every-kimg E] [--launch launch/cpu.yaml] [--name NAME]
             [--run-dir runs/quality/NAME] [--reuse] [--select-num 1000] [--fid-num 10000]
             [--ref-num 10000] [--inception PATH] [--docs docs/quality] [--progress-every 30]

Everything runs through the project's real command lines, as subprocesses, in this order:

1. Train: `accelerate launch --config_file LAUNCH -m dcgan_dist.train CONFIG [key=value ...]
   run.dir=RUN train.kimg=K checkpoint.every_kimg=E checkpoint.keep=1000 eval.every_kimg=0` (no
   FID during training: the wall time is training alone). The budget `--minutes` counts from the
   launch: when it is spent the launcher gets SIGTERM, every rank saves a checkpoint and exits, and
   status.json must then say "stopped" (anything else is an error). The stop comes at the trainer's
   first tick at the earliest (before that it may not yet handle the signal). `--kimg` stops by
   image count instead (train.kimg; 1,000,000 when only --minutes is given); with both, whichever
   comes first.
   Checkpoint spacing E aims at `--checkpoints` N (10) checkpoints and is rounded to whole ticks
   (train.tick_kimg; checkpoints happen at tick boundaries). With --kimg, E = K / N. With --minutes
   alone the speed is not known in advance, so the run is *calibrated*: it starts with no periodic
   checkpoints, is stopped by SIGTERM after three ticks (or two ticks and 10% of the budget) and
   resumed (resume=auto continues an interrupted run exactly) with
   E = img/s x max(time left - start-up, time left / 2) / (N - 1); img/s is the calibration's median
   tick speed after the first tick, start-up its time to the first tick. `--every-kimg E` sets the
   spacing and skips the calibration. The trainer's output goes to RUN/quality_train.log; the
   script echoes its warnings and checkpoints, and prints a progress line every 30 s.
2. Select: FID of the kept checkpoints from `--select-num` samples each (`accelerate launch ... -m
   dcgan_dist.evaluate CKPT --num S --ref-num R`, same launch config): the learning curve, FID vs
   kimg. Should a speed estimate have been off and more than N + 1 checkpoints been kept, N + 1 of
   them are scored, spread evenly over the list, the first and the newest always included. The
   evaluate CLI caches the reference statistics on disk: only the first evaluation computes them.
3. Final: FID of the best checkpoint (lowest selection FID; the earliest on a tie) from `--fid-num`
   samples (5,000-10,000 for reported numbers; when it equals --select-num the selection's result
   is reused: the same samples).
4. Report: prints one Markdown row `| config | kimg | train wall time | img/s | best FID (N samples) |
   at kimg |` and writes into `--docs` (docs/quality): NAME.json (every number, the command lines,
   the curve, the machine), NAME_curve.svg (FID vs kimg, the best point marked), NAME_grid.png (a
   sample grid of the best checkpoint from `python -m dcgan_dist.sample CKPT --grid`, or, in a
   checkout without that CLI, the run's samples/fakes_<kimg>.png nearest the best kimg), and the
   row in results.md (one row per NAME, replaced on a rerun, with links to the three files).

img/s is the median of the trainer's per-tick `Speed/img_per_sec` (stats.jsonl: training steps
only). The train wall time is the launcher's wall time, start-up and checkpoint saves included
(both launches when calibrated). NAME is the run name (the config file's name) unless --name.

Cost on a 2-core CPU (Inception ~12 img/s): reference statistics of 10,000 real images ~14 min
(once per data set and --ref-num, then cached), each 1,000-sample selection FID ~1.5-2 min,
a 10,000-sample final FID ~14 min: a 30-minute budget takes about 75 minutes in all (the first
time on a data set). On a GPU the evaluations take seconds.

Run directory (default runs/quality/NAME): a directory that already holds a run is refused
unless `--reuse`: then nothing is trained (the run must have been trained by this script, with
the same config and overrides: RUN/quality_train.json) and evaluations already done with the same
sample counts (RUN/quality/fid_*.json) are reused, e.g. after an interrupted evaluation or to
report a larger --fid-num. Ctrl-C (or SIGTERM) stops the running child cleanly (a trainer saves a
checkpoint first) and exits 130.
Exit status: 0 done, 1 a step failed (the message names the step and its log), 2 bad arguments.
"""

from __future__ import annotations

import argparse
import math
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Optional

# The steps live in sibling modules (benchmarks/ is not a package). `python benchmarks/quality.py` puts
# this directory on sys.path; runpy or an import from elsewhere may not.
HERE = str(Path(__file__).resolve().parent)
if HERE not in sys.path:
    sys.path.insert(0, HERE)

from quality_common import REPO, BenchError, Interrupted, say  # noqa: E402
from quality_eval import Evaluator, best_of, final_fid, select  # noqa: E402
from quality_proc import child_env, stop_running  # noqa: E402
from quality_report import TABLE_HEAD, write_report  # noqa: E402
from quality_train import DEFAULT_KIMG, Trainer, load_training  # noqa: E402

DEFAULT_INCEPTION = REPO.parent / "shared" / "data" / "fid_inception" / "default_1.pt"
# Keys the benchmark sets itself (each has its own flag, or is fixed by the benchmark).
RESERVED = {"run.dir": "--run-dir", "train.kimg": "--kimg", "checkpoint.every_kimg": "--every-kimg",
            "checkpoint.keep": None, "eval.every_kimg": None, "resume": "--reuse"}


# ---- arguments and config ------------------------------------------------------------------------

def parse_args(argv: Optional[list[str]]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python benchmarks/quality.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("config", help="training config (YAML), e.g. configs/fashion28.yaml")
    p.add_argument("overrides", nargs="*", help="key=value config overrides, e.g. data.shards=/tmp/prep/fashion28")
    p.add_argument("--minutes", type=float, help="training time budget (wall time from the launch)")
    p.add_argument("--kimg", type=float, help="train.kimg (default %g with --minutes)" % DEFAULT_KIMG)
    p.add_argument("--checkpoints", type=int, default=10, help="checkpoints to aim for (default 10)")
    p.add_argument("--every-kimg", type=float, help="checkpoint spacing in kimg (default: from --checkpoints)")
    p.add_argument("--launch", default=str(REPO / "launch" / "cpu.yaml"),
                   help="accelerate config file for training and evaluation (default launch/cpu.yaml)")
    p.add_argument("--name", help="name in the table and of the docs files (default: the run name, i.e. the "
                   "config file name)")
    p.add_argument("--run-dir", help="run directory (default runs/quality/NAME)")
    p.add_argument("--reuse", action="store_true",
                   help="use the training already in --run-dir and any evaluations done there; train nothing")
    p.add_argument("--select-num", type=int, default=1000, help="samples per checkpoint FID (default 1000)")
    p.add_argument("--fid-num", type=int, default=10_000, help="samples for the best checkpoint's FID (default 10000)")
    p.add_argument("--ref-num", type=int, default=10_000,
                   help="real images for the reference statistics (default 10000; all when the set is smaller)")
    p.add_argument("--inception", help="FID Inception weights (default $DCGAN_DIST_INCEPTION, else ../shared's "
                   "TorchScript file when present, else what the evaluate CLI finds)")
    p.add_argument("--docs", default="docs/quality", help="output folder for the report (default docs/quality)")
    p.add_argument("--progress-every", type=float, default=30.0, help="seconds between progress lines (default 30)")
    args = p.parse_intermixed_args(argv)  # overrides may come before, between or after the options
    if args.minutes is None and args.kimg is None:
        p.error("give --minutes (a time budget) and/or --kimg (an image count)")
    for flag in ("minutes", "kimg", "every_kimg"):
        v = getattr(args, flag)
        if v is not None and not (v > 0 and math.isfinite(v)):
            p.error(f"--{flag.replace('_', '-')} must be a positive number")
    for flag in ("checkpoints", "select_num", "fid_num", "ref_num"):
        if getattr(args, flag) < 1:
            p.error(f"--{flag.replace('_', '-')} must be >= 1")
    for o in args.overrides:
        if "=" not in o:
            p.error(f"{o!r}: overrides are key=value")
        key = o.split("=", 1)[0]
        if key in RESERVED:
            how = f"use {RESERVED[key]}" if RESERVED[key] else "the benchmark sets it"
            p.error(f"{key} cannot be overridden here ({how})")
    if not Path(args.config).is_file():
        p.error(f"no config file {args.config}")
    if not Path(args.launch).is_file():
        p.error(f"no accelerate config file {args.launch}")
    if args.inception is None:
        env = os.environ.get("DCGAN_DIST_INCEPTION")
        args.inception = env or (str(DEFAULT_INCEPTION) if DEFAULT_INCEPTION.is_file() else None)
    if args.inception is not None:
        if not Path(args.inception).is_file():
            p.error(f"no Inception weights at {args.inception}")
        args.inception = str(Path(args.inception).resolve())
    return args


def resolve_config(args) -> dict:
    """The resolved config through the trainer's own --dry-run (a bad key fails here, before anything runs)."""
    import yaml  # a dependency of accelerate and omegaconf

    cmd = [sys.executable, "-m", "dcgan_dist.train", args.config, *args.overrides, "--dry-run"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=child_env())
    if proc.returncode != 0:
        raise BenchError(f"the config does not resolve ({shlex.join(cmd)}):\n{proc.stderr.strip()[-2000:]}")
    return yaml.safe_load(proc.stdout)


# ---- main ----------------------------------------------------------------------------------------

def check_run_dir(run_dir: Path, reuse: bool) -> None:
    """A run directory with a run in it is only used with --reuse, and --reuse needs one trained here."""
    if reuse:
        if not (run_dir / "quality_train.json").is_file():
            raise BenchError(f"--reuse: {run_dir} holds no training finished by this script (no quality_train.json); "
                             "drop --reuse to train (in an empty or new --run-dir)")
    elif (run_dir / "status.json").exists() or (run_dir / "checkpoints").is_dir():
        raise BenchError(f"{run_dir} already holds a run: pass --reuse to evaluate its checkpoints again, "
                         "or delete it / choose another --run-dir to train anew")


def run(args) -> int:
    if args.run_dir:  # checked before anything slow
        check_run_dir(Path(args.run_dir).resolve(), args.reuse)
    cfg = resolve_config(args)
    name = args.name or cfg["run"]["name"]
    if not re.fullmatch(r"[A-Za-z0-9._+-]+", name):
        raise BenchError(f"--name {name!r}: use letters, digits and . _ + - only (it names files)")
    run_dir = Path(args.run_dir or Path("runs") / "quality" / name).resolve()
    if not args.run_dir:  # the default one, known only now
        check_run_dir(run_dir, args.reuse)
    run_dir.mkdir(parents=True, exist_ok=True)
    say(f"{name}: config {args.config} {' '.join(args.overrides)}; run directory {run_dir}")

    # The steps of the docstring; `seconds` is this invocation's time in each, for the report.
    t = time.monotonic()  # 1. train (or read back the training --reuse names)
    train = load_training(args, run_dir) if args.reuse else Trainer(args, cfg, run_dir).train()
    seconds = {"train": None if args.reuse else time.monotonic() - t}

    t = time.monotonic()  # 2. select: the learning curve and its best checkpoint
    evaluator = Evaluator(args, run_dir)
    selection = select(evaluator, args, run_dir)
    best = best_of(selection["points"])
    seconds["selection"] = time.monotonic() - t

    t = time.monotonic()  # 3. final: the best checkpoint's FID from --fid-num samples
    final = final_fid(evaluator, best, args.fid_num)
    seconds["final"] = time.monotonic() - t

    # 4. report
    row = write_report(args, cfg, name, run_dir, Path(args.docs).resolve(), train, selection, best, final, seconds)
    print("\n".join(TABLE_HEAD))
    print(row, flush=True)
    return 0


def main(argv: Optional[list[str]] = None) -> int:
    args = parse_args(argv)

    def on_term(signum, frame):
        raise Interrupted(signal.Signals(signum).name)

    signal.signal(signal.SIGTERM, on_term)
    try:
        return run(args)
    except BenchError as e:
        print(f"error: {e}", file=sys.stderr, flush=True)
        return 1
    except (KeyboardInterrupt, Interrupted) as e:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not abandon the cleanup
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        what = "interrupted" + (f" ({e})" if str(e) else "")
        stop_running(what)
        print(f"error: {what}. A rerun with --reuse reuses a finished training and every finished evaluation; "
              "an interrupted training cannot be continued by the benchmark (delete the run directory).",
              file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
