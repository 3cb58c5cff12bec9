"""Hyperparameter sweeps as Slurm job arrays: a sweep file names a base config and the overrides to vary.

    python -m dcgan_dist.sweep SPEC                    # list the combinations, submit the array
    python -m dcgan_dist.sweep SPEC --dry-run          # list them and print the sbatch command only
    python -m dcgan_dist.sweep SPEC -- --partition=gpu --time=2:00:00   # extra sbatch options after --
    python -m dcgan_dist.sweep SPEC --index I          # the overrides of combination I (what slurm/sweep.sh runs)

A sweep file (YAML; relative paths are relative to the file, like `extends:` in configs):

    name: lr                          # default: the file's name; runs go to runs/<name>/<combination>
    config: ../quickstart.yaml        # the base config
    overrides: [train.kimg=10]        # given to every combination
    grid:                             # every combination of these values (the first key varies slowest)
      optim.g_lr: [1.0e-4, 2.0e-4]
      loss.real_label: [1.0, 0.9]
    list:                             # and/or explicit combinations (each crossed with the grid)
      - {model.d_dropout: 0.0}
      - {model.d_dropout: 0.2, optim.d_lr: 1.0e-4}

Combination i trains in `<root>/<overrides>` (root: `runs/<name>` unless the file sets `root:`),
e.g. `runs/lr/optim.g_lr=0.0001,loss.real_label=0.9`, and slurm/sweep.sh records its overrides
there in `sweep.json` for `python -m dcgan_dist.report runs/<name>`.
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import json
import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import yaml

from . import config as config_mod
from . import errors
from .config import ConfigError
from .errors import UserError
from .layout import SWEEP_RECORD as RECORD

SWEEP_SCRIPT = "slurm/sweep.sh"
_UNSAFE = re.compile(r"[^A-Za-z0-9._=,+-]+")
_MAX_NAME = 120


class SweepError(UserError, ValueError):
    """A problem with a sweep file or an array index, worth a one-line message."""


@dataclass
class Combination:
    index: int
    params: dict[str, Any]  # the swept keys and this combination's values
    overrides: list[str]  # everything passed to the trainer after the base config
    run_dir: str


@dataclass
class Sweep:
    name: str
    spec: str
    config: str  # the base config, as a path usable from the current directory
    fixed: list[str]
    combinations: list[Combination]


def _value(v: Any) -> str:
    """A YAML scalar as the right-hand side of a key=value override."""
    if isinstance(v, bool):
        return "true" if v else "false"
    if v is None:
        return "null"
    if isinstance(v, (int, float, str)):
        return str(v)
    raise SweepError(f"sweep values must be scalars (numbers, strings, booleans), got {v!r}")


def _dirname(params: dict[str, Any]) -> str:
    """A file-system-safe directory name that says which overrides a run has."""
    if not params:
        return "base"
    name = _UNSAFE.sub("-", ",".join(f"{k}={_value(v)}" for k, v in params.items())).strip(".-") or "run"
    if len(name) > _MAX_NAME:
        name = f"{name[:_MAX_NAME - 9]}-{hashlib.sha1(name.encode()).hexdigest()[:8]}"
    return name


def _relative(path: Path) -> str:
    """`path` relative to the current directory when it lies below it (shorter commands), else absolute."""
    path = Path(os.path.normpath(path.absolute()))
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def load(spec_path: str | os.PathLike) -> Sweep:
    """Read a sweep file and expand it into its combinations, in array-index order."""
    spec_file = Path(spec_path)
    if not spec_file.is_file():
        raise SweepError(f"sweep file not found: {spec_path}")
    try:
        spec = yaml.safe_load(spec_file.read_text())
    except yaml.YAMLError as e:
        raise SweepError(f"cannot parse {spec_path}: {e}") from None
    if not isinstance(spec, dict):
        raise SweepError(f"{spec_path} must hold a mapping with config: and grid: and/or list:")
    unknown = set(spec) - {"name", "config", "overrides", "grid", "list", "root"}
    if unknown:
        raise SweepError(f"{spec_path}: unknown sweep keys {sorted(unknown)} "
                         "(known: name, config, overrides, grid, list, root)")
    if not spec.get("config"):
        raise SweepError(f"{spec_path}: `config:` must name the base config (relative to the sweep file)")
    name = str(spec.get("name") or spec_file.stem)
    if _UNSAFE.search(name) or name.startswith("."):
        raise SweepError(f"{spec_path}: name {name!r} must be a plain directory name (letters, digits, . _ = , + -)")
    base = _relative(spec_file.parent / str(spec["config"]))
    root = str(spec.get("root") or Path("runs") / name)

    fixed = spec.get("overrides") or []
    if not isinstance(fixed, list) or not all(isinstance(o, str) and "=" in o for o in fixed):
        raise SweepError(f"{spec_path}: `overrides:` must be a list of key=value strings")
    grid = spec.get("grid") or {}
    if not isinstance(grid, dict) or not all(isinstance(v, list) and v for v in grid.values()):
        raise SweepError(f"{spec_path}: `grid:` must map each key to a non-empty list of values")
    listed = spec.get("list") or [{}]
    if not isinstance(listed, list) or not all(isinstance(e, dict) for e in listed):
        raise SweepError(f"{spec_path}: `list:` must be a list of mappings, e.g. - {{optim.g_lr: 1.0e-4}}")
    if not grid and listed == [{}]:
        raise SweepError(f"{spec_path}: nothing to sweep: give `grid:` and/or `list:`")

    combinations: list[Combination] = []
    seen: dict[str, int] = {}
    for entry in listed:
        for values in itertools.product(*grid.values()):
            params = {**entry, **dict(zip(grid, values))}
            for key in params:
                if key.startswith("run."):
                    raise SweepError(f"{spec_path}: {key} cannot be swept: every combination gets its own run.dir")
            index = len(combinations)
            run_dir = str(Path(root) / _dirname(params))
            if run_dir in seen:
                raise SweepError(f"{spec_path}: combinations {seen[run_dir]} and {index} have the same overrides "
                                 f"(run directory {run_dir})")
            seen[run_dir] = index
            overrides = [*fixed, *(f"{k}={_value(v)}" for k, v in params.items()),
                         f"run.dir={run_dir}", f"run.name={name}/{Path(run_dir).name}"]
            combinations.append(Combination(index, params, overrides, run_dir))
    return Sweep(name, str(spec_path), base, list(fixed), combinations)


def check(sweep: Sweep) -> None:
    """Resolve every combination's config: a typo fails here, before anything is queued."""
    for c in sweep.combinations:
        try:
            config_mod.load(sweep.config, c.overrides)
        except ConfigError as e:
            raise SweepError(f"combination {c.index} ({' '.join(c.overrides)}): {e}") from None


def combination(sweep: Sweep, index: int) -> Combination:
    n = len(sweep.combinations)
    if not 0 <= index < n:
        raise SweepError(f"array index {index} is outside sweep {sweep.name!r}: it has {n} combination(s), "
                         f"indices 0-{n - 1}. Submit with --array=0-{n - 1} (python -m dcgan_dist.sweep {sweep.spec} "
                         "does that).")
    return sweep.combinations[index]


def record(sweep: Sweep, c: Combination) -> Path:
    """Write `sweep.json` into the combination's run directory (what the report reads)."""
    run_dir = Path(c.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    env = os.environ
    job = (f"{env['SLURM_ARRAY_JOB_ID']}_{env.get('SLURM_ARRAY_TASK_ID')}" if env.get("SLURM_ARRAY_JOB_ID")
           else env.get("SLURM_JOB_ID"))
    doc = {"sweep": sweep.name, "spec": sweep.spec, "index": c.index, "config": sweep.config,
           "params": c.params, "overrides": c.overrides, "slurm_job": job}
    path = run_dir / RECORD
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(doc, indent=2) + "\n")
    os.replace(tmp, path)
    return path


def sbatch_command(sweep: Sweep, extra: list[str], max_parallel: Optional[int] = None,
                   script: str = SWEEP_SCRIPT) -> list[str]:
    array = f"0-{len(sweep.combinations) - 1}" + (f"%{max_parallel}" if max_parallel else "")
    return ["sbatch", f"--array={array}", f"--job-name={sweep.name}", *extra, script, sweep.spec]


def describe(sweep: Sweep) -> str:
    lines = [f"sweep {sweep.name}: {len(sweep.combinations)} combination(s) of {sweep.config}"
             + (f" {' '.join(sweep.fixed)}" if sweep.fixed else "")]
    width = max(len(c.run_dir) for c in sweep.combinations)
    for c in sweep.combinations:
        params = " ".join(f"{k}={_value(v)}" for k, v in c.params.items())
        lines.append(f"  {c.index:>3}  {c.run_dir:<{width}}  {params}")
    return "\n".join(lines)


def parse_args(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    extra: list[str] = []
    if "--" in argv:
        at = argv.index("--")
        argv, extra = argv[:at], argv[at + 1:]
    p = argparse.ArgumentParser(prog="python -m dcgan_dist.sweep", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("spec", help="sweep file (YAML)")
    p.add_argument("--index", type=int, help="print the trainer overrides of this combination, one per line")
    p.add_argument("--with-config", action="store_true", help="with --index: print the base config first")
    p.add_argument("--record", action="store_true", help=f"with --index: also write {RECORD} into its run directory")
    p.add_argument("--dry-run", action="store_true", help="list the combinations and the sbatch command; submit nothing")
    p.add_argument("--max-parallel", type=int, help="run at most this many array tasks at once (--array=...%%N)")
    p.add_argument("--script", default=SWEEP_SCRIPT, help=f"the array job script (default {SWEEP_SCRIPT})")
    return p.parse_args(argv), extra


def main(argv: Optional[list[str]] = None) -> int:
    args, extra = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        sweep = load(args.spec)
        if args.index is not None:
            c = combination(sweep, args.index)
            if args.record:
                record(sweep, c)
            print("\n".join(([sweep.config] if args.with_config else []) + c.overrides))
            return 0
        check(sweep)
    except UserError as e:
        return errors.report(e)
    print(describe(sweep))
    cmd = sbatch_command(sweep, extra, args.max_parallel, args.script)
    print(shlex.join(cmd))
    if args.dry_run:
        return 0
    if not Path(args.script).is_file():
        print(f"error: {args.script} not found: run from the repository root (or pass --script)", file=sys.stderr)
        return 2
    return subprocess.run(cmd).returncode


if __name__ == "__main__":
    sys.exit(main())
