"""One row per run of a sweep (or any directory of runs): overrides, progress, state, best FID (with KID and
precision/recall there), speed.

    python -m dcgan_dist.report runs/<sweep>            # a table
    python -m dcgan_dist.report runs/<sweep> --json     # the same rows as a JSON list
    python -m dcgan_dist.report runs/<sweep> --plot runs/<sweep>.png   # the table, and a figure (plot.py)

A run is a directory holding status.json (written by the trainer) or sweep.json (written by
slurm/sweep.sh before the run starts; a run without status.json yet is `pending`). The columns:
its sweep overrides (sweep.json), the kimg reached (status.json, or the last tick in stats.jsonl
when that is further) and asked for, the state (status.json), the best FID and the kimg it was
measured at (the lowest "fid" in metrics.jsonl, when there is one), the KID (x 10^3, mean ± std)
and, when any run has them, precision and recall of that same evaluation, and the training speed
(the median "Speed/img_per_sec" of stats.jsonl's ticks). `--json` rows carry them as `kid`
({"mean", "std"} x 10^3), `precision`, `recall` (null when that evaluation did not compute them).

A run whose status.json says `running` but whose trainer is gone (killed, its node lost) is shown
as `dead`: judged by `runlock.run_dead_reason` by the same rules as a start that finds the run
directory locked (the PID on the same machine, the heartbeat from another host).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path
from typing import Any, Iterator, Optional

from .errors import UserError, report as report_error
from .layout import METRICS, STATS, STATUS
from .runlock import run_dead_reason
from .sweep import RECORD


def _json(path: Path) -> Optional[dict]:
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return doc if isinstance(doc, dict) else None


def read_jsonl(path: Path) -> Iterator[dict]:
    """The JSON objects of a .jsonl file; a line cut short by a running writer is skipped."""
    try:
        text = path.read_text()
    except OSError:
        return
    for line in text.splitlines():
        try:
            doc = json.loads(line)
        except ValueError:
            continue
        if isinstance(doc, dict):
            yield doc


def number(v: Any) -> Optional[float]:
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None


def find_runs(root: Path) -> list[Path]:
    """`root` itself when it is a run, else the runs below it (any depth), sorted by path."""
    def is_run(p: Path) -> bool:
        return (p / STATUS).is_file() or (p / RECORD).is_file()
    if is_run(root):
        return [root]
    found = {p.parent for name in (STATUS, RECORD) for p in root.rglob(name)}
    return sorted(p for p in found if "checkpoints" not in p.parts)


def summarize(run: Path, root: Path) -> dict:
    status = _json(run / STATUS) or {}
    record = _json(run / RECORD) or {}
    records = list(read_jsonl(run / METRICS))
    evals = [m for m in records if number(m.get("fid")) is not None]
    best = min(evals, key=lambda m: number(m["fid"])) if evals else {}  # the first of equal FIDs
    # KID of the best FID's evaluation; else of a later KID-only evaluation of that checkpoint (the quality
    # benchmark scores its best checkpoint's KID with more samples than its FID curve).
    later = [m["kid"] for m in records if best and isinstance(m.get("kid"), dict) and m.get("fid") is None
             and m.get("kimg") == best.get("kimg")]
    kid = best["kid"] if isinstance(best.get("kid"), dict) else later[-1] if later else {}
    ticks = list(read_jsonl(run / STATS))
    speeds = [s for t in ticks if (s := number(t.get("Speed/img_per_sec"))) and s > 0]
    # status.json moves at checkpoints, stats.jsonl every tick: a running run is as far as its last tick.
    last_tick = number(ticks[-1].get("kimg")) if ticks else None
    reached = [k for k in (number(status.get("kimg")), last_tick) if k is not None]
    params = record.get("params") or {}
    state = status.get("state", "pending" if record else "unknown")
    dead = run_dead_reason(run, status) if state == "running" else None
    return {
        "run": str(run.relative_to(root)) if run != root else run.name,
        "run_dir": str(run),
        "index": record.get("index"),
        "overrides": [f"{k}={v}" for k, v in params.items()],
        "state": "dead" if dead else state,
        "kimg": max(reached) if reached else None,
        "total_kimg": number(status.get("total_kimg")),
        "best_fid": number(best.get("fid")),
        "best_fid_kimg": number(best.get("kimg")),
        "kid": {"mean": number(kid.get("mean")), "std": number(kid.get("std"))} if kid else None,
        "precision": number(best.get("precision")),
        "recall": number(best.get("recall")),
        "img_per_sec": statistics.median(speeds) if speeds else None,
        "world_size": status.get("world_size"),
        "slurm_job": record.get("slurm_job"),
        "error": status.get("error") or (f"status.json says running, but {dead}; the same command resumes it "
                                         "from its newest checkpoint" if dead else None),
    }


def label(row: dict) -> str:
    """What names a run to a reader: its sweep overrides, else its directory."""
    return " ".join(row["overrides"]) or row["run"]


def collect(root: Path) -> list[dict]:
    rows = [summarize(run, root) for run in find_runs(root)]
    return sorted(rows, key=lambda r: (r["index"] is None, r["index"] if r["index"] is not None else 0, r["run"]))


def _fmt(v: Optional[float], spec: str) -> str:
    return "-" if v is None else format(v, spec)


def _kid(kid: Optional[dict]) -> str:
    return "-" if not kid or kid["mean"] is None else f"{kid['mean']:.2f}±{_fmt(kid['std'], '.2f')}"


def table(rows: list[dict]) -> str:
    with_pr = any(r["precision"] is not None for r in rows)  # P/R columns only when some run measured them
    head = ("#", "state", "kimg", "best FID", "KID x1e3", *(("P", "R") if with_pr else ()), "img/s", "overrides")
    body = [(
        "-" if r["index"] is None else str(r["index"]),
        r["state"],
        f"{_fmt(r['kimg'], '.3f')}/{_fmt(r['total_kimg'], 'g')}",
        _fmt(r["best_fid"], ".2f") + (f" @{r['best_fid_kimg']:g}" if r["best_fid_kimg"] is not None else ""),
        _kid(r["kid"]),
        *((_fmt(r["precision"], ".3f"), _fmt(r["recall"], ".3f")) if with_pr else ()),
        _fmt(r["img_per_sec"], ".1f"),
        label(r),
    ) for r in rows]
    widths = [max(len(row[i]) for row in (head, *body)) for i in range(len(head))]
    right = set(range(len(head) - 1)) - {1}  # every column but the state and the overrides
    lines = ["  ".join(c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths))).rstrip()
             for row in (head, *body)]
    errors = [f"{r['run']}: {r['error']}" for r in rows if r["error"]]
    return "\n".join(lines + ([""] + errors if errors else []))


def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m dcgan_dist.report", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("root", help="a sweep's directory (runs/<sweep>), any directory of runs, or one run")
    p.add_argument("--json", action="store_true", help="print the rows as a JSON list")
    p.add_argument("--plot", metavar="OUT.png|OUT.svg",
                   help="also draw the runs' losses, D outputs, diversity and evaluations against kimg into this "
                        "file, every run overlaid (PNG or SVG, chosen by the suffix)")
    args = p.parse_args(argv)
    root = Path(args.root)
    if not root.is_dir():
        print(f"error: {root} is not a directory", file=sys.stderr)
        return 2
    try:
        return _run(root, args)
    except UserError as e:
        return report_error(e)


def _run(root: Path, args: argparse.Namespace) -> int:
    out = None
    if args.plot:
        from . import plot as plotting  # matplotlib itself is imported only when drawing

        out = plotting.output_path(args.plot)  # a bad name fails before any run is read
    rows = collect(root)
    if args.json:
        print(json.dumps(rows, indent=2))
    elif rows:
        print(table(rows))
    else:
        print(f"no runs under {root} (a run directory holds {STATUS} or {RECORD})", file=sys.stderr)
        return 1
    if out is not None and not rows:
        print(f"no runs under {root}: no figure written to {out}", file=sys.stderr)
        return 1
    if out is not None:
        print(f"wrote {plotting.save(rows, str(root), out)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
