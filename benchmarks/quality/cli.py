"""The quality benchmark's command line and the order of its steps (see the package's docstring):
for each subject (the config, and with --baseline the Radford recipe on it) train, select, score the
best checkpoint and report; then the table, and with --baseline the ratio line."""

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
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from dcgan_dist import layout

from .. import quality
from ..launcher import CPU_LAUNCH, REPO, child_env
from . import baseline
from .common import BenchError, Interrupted, say, write_json
from .evaluate import Evaluator, best_of, final, select
from .proc import stop_running
from .report import TABLE_HEAD, write_report
from .train import DEFAULT_KIMG, RECORD, Trainer, load_training

DEFAULT_INCEPTION = REPO.parent / "shared" / "data" / "fid_inception" / "default_1.pt"
# Keys the benchmark sets itself (each has its own flag, or is fixed by the benchmark).
RESERVED = {"run.dir": "--run-dir", "train.kimg": "--kimg", "train.minutes": "--minutes",
            "checkpoint.every_kimg": "--every-kimg",
            "checkpoint.keep": None, "eval.every_kimg": None, "resume": "--reuse"}


@dataclass
class Subject:
    """One config trained and scored: the given one, or the baseline (its overrides end with RADFORD's)."""

    name: str
    config: str
    overrides: list[str]
    run_dir: Path
    cfg: dict  # resolved by the trainer's --dry-run
    recipe: Optional[dict] = None  # the baseline's: what it changed (baseline.recipe)


# ---- arguments and config ------------------------------------------------------------------------

def parse_args(argv: Optional[list[str]]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.quality", description=quality.__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("config", help="training config (YAML), e.g. configs/fashion28.yaml")
    p.add_argument("overrides", nargs="*", help="key=value config overrides, e.g. data.shards=/tmp/prep/fashion28")
    p.add_argument("--minutes", type=float, help="training time budget (wall time from the launch)")
    p.add_argument("--kimg", type=float, help="train.kimg (default %g with --minutes)" % DEFAULT_KIMG)
    p.add_argument("--checkpoints", type=int, default=10, help="checkpoints to aim for (default 10)")
    p.add_argument("--every-kimg", type=float, help="checkpoint spacing in kimg (default: from --checkpoints)")
    p.add_argument("--launch", default=str(CPU_LAUNCH),
                   help="accelerate config file for training and evaluation (default launch/cpu.yaml)")
    p.add_argument("--name", help="name in the table and of the docs files (default: the run name, i.e. the "
                   "config file name)")
    p.add_argument("--run-dir", help="run directory (default runs/quality/NAME)")
    p.add_argument("--reuse", action="store_true",
                   help="use the training already in --run-dir and any evaluations done there; train nothing")
    p.add_argument("--baseline", action="store_true",
                   help="also train and score the plain Radford DCGAN recipe on the same data, budget and "
                        "evaluation (NAME_baseline, in RUN_baseline), and print project / baseline FID and KID")
    p.add_argument("--baseline-only", action="store_true",
                   help="train and score only the baseline and compare it with the project's report already in "
                        "--docs (NAME.json, measured with the same config, overrides, budget and evaluation): "
                        "the two sides on two machines at once, or a baseline side run again")
    p.add_argument("--select-num", type=int, default=1000, help="samples per checkpoint FID (default 1000)")
    p.add_argument("--fid-num", type=int, default=10_000, help="samples for the best checkpoint's FID (default 10000)")
    p.add_argument("--ref-num", type=int, default=10_000,
                   help="real images for the reference statistics (default 10000; all when the set is smaller)")
    p.add_argument("--inception", help="FID Inception weights (default $DCGAN_DIST_INCEPTION, else ../shared's "
                   "TorchScript file when present, else what the evaluate CLI finds)")
    p.add_argument("--docs", default="docs/quality", help="output folder for the report (default docs/quality)")
    p.add_argument("--progress-every", type=float, default=30.0, help="seconds between progress lines (default 30)")
    args = p.parse_intermixed_args(argv)  # overrides may come before, between or after the options
    args.baseline = args.baseline or args.baseline_only
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


def resolve_config(config: str, overrides: list[str]) -> dict:
    """The resolved config through the trainer's own --dry-run (a bad key fails here, before anything runs)."""
    import yaml  # a dependency of accelerate and omegaconf

    cmd = [sys.executable, "-m", "dcgan_dist.train", config, *overrides, "--dry-run"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=child_env(cpu=False))
    if proc.returncode != 0:
        raise BenchError(f"the config does not resolve ({shlex.join(cmd)}):\n{proc.stderr.strip()[-2000:]}")
    return yaml.safe_load(proc.stdout)


def check_run_dir(run_dir: Path, reuse: bool) -> None:
    """A run directory with a run in it is only used with --reuse, and --reuse needs one trained here."""
    if reuse:
        if not (run_dir / RECORD).is_file():
            raise BenchError(f"--reuse: {run_dir} holds no training finished by this benchmark (no {RECORD}); "
                             "drop --reuse to train (in an empty or new --run-dir)")
    elif (run_dir / layout.STATUS).exists() or (run_dir / layout.CKPT_DIR).is_dir():
        raise BenchError(f"{run_dir} already holds a run: pass --reuse to evaluate its checkpoints again, "
                         "or delete it / choose another --run-dir to train anew")


def subjects_of(args) -> list[Subject]:
    """The config (and with --baseline the baseline), resolved, their run directories checked: every
    refusal comes before anything slow."""
    given = Path(args.run_dir).resolve() if args.run_dir else None
    if given:
        for d in [given, baseline.run_dir_of(given)] if args.baseline else [given]:
            if not (args.baseline_only and d == given):  # the project's run is not used, only its report
                check_run_dir(d, args.reuse)
    cfg = resolve_config(args.config, args.overrides)
    name = args.name or cfg["run"]["name"]
    if not re.fullmatch(r"[A-Za-z0-9._+-]+", name):
        raise BenchError(f"--name {name!r}: use letters, digits and . _ + - only (it names files)")
    run_dir = given or (Path("runs") / "quality" / name).resolve()
    subjects = [Subject(name, args.config, list(args.overrides), run_dir, cfg)]
    if args.baseline:
        over = [*args.overrides, *baseline.overrides()]
        base_cfg = resolve_config(args.config, over)
        subjects.append(Subject(baseline.name_of(name), args.config, over, baseline.run_dir_of(run_dir), base_cfg,
                                baseline.recipe(cfg, base_cfg)))
    if not given:  # the default directories, known only now
        for s in subjects[1:] if args.baseline_only else subjects:
            check_run_dir(s.run_dir, args.reuse)
    return subjects


# ---- main ----------------------------------------------------------------------------------------

def measure(args, subject: Subject) -> dict:
    """Steps 1-4 for one subject; returns its report."""
    subject.run_dir.mkdir(parents=True, exist_ok=True)
    given = " ".join([*args.overrides, *(["+ the Radford recipe (baseline.RADFORD)"] if subject.recipe else [])])
    say(f"{subject.name}: config {subject.config} {given}; run directory {subject.run_dir}")
    if subject.recipe:
        changed = ", ".join(f"{k} {a!r} -> {b!r}" for k, (a, b) in subject.recipe["changed"].items())
        say(f"{subject.name}: the Radford recipe changes {changed or 'nothing'}")
    t = time.monotonic()  # 1. train (or read back the training --reuse names)
    train = load_training(subject) if args.reuse else Trainer(args, subject).train()
    seconds = {"train": None if args.reuse else time.monotonic() - t}

    t = time.monotonic()  # 2. select: the learning curve and its best checkpoint
    evaluator = Evaluator(args, subject.run_dir)
    selection = select(evaluator, args, subject.run_dir)
    best = best_of(selection["points"])
    seconds["selection"] = time.monotonic() - t

    t = time.monotonic()  # 3. final: the best checkpoint's FID (and KID) from --fid-num samples
    scores = final(evaluator, best, args.fid_num)
    seconds["final"] = time.monotonic() - t

    # 4. report; `seconds` is this invocation's time in each step
    return write_report(args, subject, Path(args.docs).resolve(), train, selection, best, scores, seconds)


def run(args) -> int:
    subjects = subjects_of(args)
    if args.baseline_only:
        path = Path(args.docs).resolve() / f"{subjects[0].name}.json"
        project = baseline.project_report(path, args)  # refused before the baseline trains
        say(f"{subjects[0].name}: the project's side is read from {path} (--baseline-only)")
        reports = [project, measure(args, subjects[1])]
        baseline.check_same_evaluation(path, *reports)
        project["files"]["json"] = str(path)  # the comparison goes into the report it was made with
    else:
        reports = [measure(args, s) for s in subjects]
    print("\n".join(TABLE_HEAD))
    print("\n".join(r["row"] for r in reports), flush=True)
    if args.baseline:
        project, base = reports
        project["baseline"] = baseline.comparison(project, base)
        write_json(Path(project["files"]["json"]), project)
        print(baseline.ratio_line(project["baseline"]), flush=True)
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
