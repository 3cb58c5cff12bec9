"""Soak: does a long run's memory stay flat? And do short runs exit cleanly, every time?

    python -m benchmarks.soak memory [--minutes 30] [--json PATH]     # RSS of every rank, every tick
    python -m benchmarks.soak exits  [--runs 100]   [--json PATH]     # N short runs back to back

memory: one 2-process training (`accelerate launch --config_file launch/cpu.yaml`, the quickstart
model on the embedded digits, `train.kimg` large enough never to finish) for `--minutes`; at every
tick (a new line in stats.jsonl) the resident memory of each rank and of each rank's loader
workers is sampled. The first 20 % of the time is warm-up (allocator pools, page cache, the first
checkpoints); growth = median RSS of the last 10 samples / median of the first 10 after warm-up
- 1, per rank (ranks + their workers). Target: < 5 %. The run is then stopped with SIGTERM (a
checkpoint, `status.json` = stopped).

exits: `--runs` consecutive 2-process runs of a tiny model (~10 s each); a run counts as a crash
when the launcher exits non-zero, `status.json` is not `complete`, or the output shows an abort
at interpreter exit ("terminate called", "core dumped", "Segmentation fault", a traceback).
Target: 0.
"""

from __future__ import annotations

import argparse
import json
import re
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path

import psutil  # a dependency of accelerate

from .faults_lib import Start, overrides, say
from .launcher import gone_within, kill_tree

CRASH = re.compile(r"terminate called|core dumped|Segmentation fault|Traceback|Aborted")


def rss_by_rank(start: Start) -> dict[int, int]:
    """Resident bytes of each rank plus its loader workers."""
    out = {}
    for p in start.tree()[1:]:
        try:
            if p.ppid() != start.proc.pid:
                continue
            rank = int(p.environ().get("RANK", "-1"))
            out[rank] = p.memory_info().rss + sum(c.memory_info().rss for c in p.children(recursive=True))
        except (psutil.Error, ValueError):
            continue
    return out


def memory(args, work: Path) -> dict:
    run = work / "soak"
    cfg = [o for o in overrides(run, 100_000) if not o.startswith(("model.g_width", "model.d_width", "train.tick"))]
    cfg += ["model.g_width=32", "model.d_width=32", "train.batch=64", "train.tick_kimg=1",
            "checkpoint.every_kimg=50", "train.sample_every_kimg=20"]
    start = Start(cfg, work / "soak.log")
    if not start.wait_training(300):
        raise SystemExit(f"the soak run did not start:\n{start.error_lines()}")
    samples, seen, t0 = [], 0, time.monotonic()
    end = t0 + args.minutes * 60
    while time.monotonic() < end and start.rc is None:
        n = sum(1 for _ in open(run / "stats.jsonl"))
        if n > seen:
            seen = n
            samples.append((time.monotonic() - t0, rss_by_rank(start)))
        time.sleep(0.5)
    tree = start.tree()
    start.proc.send_signal(signal.SIGTERM)
    kill_tree(gone_within(tree, 60))
    start.finish()
    warm = [s for s in samples if s[0] >= 0.2 * args.minutes * 60]
    if len(warm) < 20:
        raise SystemExit(f"only {len(warm)} ticks after warm-up: run longer (--minutes)")
    rows = {}
    for rank in sorted(warm[0][1]):
        series = [s[1].get(rank) for s in warm if s[1].get(rank)]
        first, last = statistics.median(series[:10]), statistics.median(series[-10:])
        rows[rank] = {"first_mb": first / 2**20, "last_mb": last / 2**20, "peak_mb": max(series) / 2**20,
                      "growth": last / first - 1}
    say(f"\n{len(samples)} ticks in {samples[-1][0] / 60:.1f} min ({len(warm)} after warm-up); status "
        f"{start.status().get('state')}")
    say("| rank (+ workers) | RSS after warm-up | RSS at the end | peak | growth | target < 5 % |")
    say("|---:|---:|---:|---:|---:|---|")
    for rank, r in rows.items():
        say(f"| {rank} | {r['first_mb']:.0f} MB | {r['last_mb']:.0f} MB | {r['peak_mb']:.0f} MB | "
            f"{100 * r['growth']:+.1f} % | {'PASS' if r['growth'] < 0.05 else 'FAIL'} |")
    return {"minutes": samples[-1][0] / 60, "ticks": len(samples), "ranks": rows,
            "ok": all(r["growth"] < 0.05 for r in rows.values()),
            "samples": [[t, {str(k): v for k, v in s.items()}] for t, s in samples]}


def exits(args, work: Path) -> dict:
    crashes, times = [], []
    for i in range(args.runs):
        run = work / f"exit{i:03d}"
        start = Start(overrides(run, 0.16), work / "logs" / f"exit{i:03d}.log")
        rc = start.finish(300)
        times.append(time.monotonic() - start.t0)
        state = start.status().get("state")
        crash = CRASH.search(start.output())
        if rc != 0 or state != "complete" or crash:
            crashes.append({"run": i, "rc": rc, "state": state, "seen": crash.group(0) if crash else None,
                            "log": str(start.log_path)})
            say(f"  run {i:3d}: CRASH rc {rc}, state {state}, {crash.group(0) if crash else ''}  ({start.log_path})")
        elif (i + 1) % 10 == 0:
            say(f"  {i + 1} runs, {len(crashes)} crashes, {statistics.median(times):.1f} s each")
    say(f"\n{args.runs} consecutive 2-process runs: {len(crashes)} crashed at exit or failed "
        f"({'PASS' if not crashes else 'FAIL'}, target 0); median {statistics.median(times):.1f} s per run")
    return {"runs": args.runs, "crashes": crashes, "median_s": statistics.median(times), "ok": not crashes}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.soak", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("mode", choices=("memory", "exits"))
    p.add_argument("--minutes", type=float, default=30.0)
    p.add_argument("--runs", type=int, default=100)
    p.add_argument("--json", type=Path)
    p.add_argument("--workdir", type=Path)
    args = p.parse_args(argv)
    work = args.workdir or Path(tempfile.mkdtemp(prefix=f"dcgan-soak-{args.mode}-"))
    work.mkdir(parents=True, exist_ok=True)
    result = memory(args, work) if args.mode == "memory" else exits(args, work)
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
