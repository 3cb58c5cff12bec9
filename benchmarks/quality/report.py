"""Step 4, the report: the Markdown row, and in the docs folder NAME.json (every number, the command
lines, the curve, the machine), NAME_curve.svg (the run's curves by `python -m dcgan_dist.report RUN
--plot`, after the benchmark's evaluations are recorded in RUN/metrics.jsonl), NAME_grid.png (samples
of the best checkpoint) and the row in results.md."""

from __future__ import annotations

import json
import os
import platform
import re
import shlex
import shutil
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path

from dcgan_dist import layout
from dcgan_dist.report import read_jsonl

from ..launcher import REPO
from .common import T0, BenchError, fmt_duration, fmt_kimg, say, write_json
from .evaluate import fmt_kid
from .proc import Child

TABLE_HEAD = ("| config | kimg | train wall time | img/s | best FID (N samples) | KID x10^3 | at kimg |",
              "|---|---:|---:|---:|---:|---:|---:|")
# results.md: the printed table plus links to the files
RESULTS_HEAD = (TABLE_HEAD[0] + " details |", TABLE_HEAD[1] + "---|")
# The results.md header before the KID column; its rows get KID "n/a" (not measured) when next written.
OLD_RESULTS_HEAD = "| config | kimg | train wall time | img/s | best FID (N samples) | at kimg | details |"
KID_COLUMN = 5
SOURCE = "benchmarks.quality"  # marks the benchmark's lines in RUN/metrics.jsonl
RESULTS_INTRO = [
    "# Generation quality", "",
    "Written by `python -m benchmarks.quality` (one row per config name; a rerun replaces its row). "
    "FID: the best checkpoint by a smaller-sample FID, then measured again with N samples; KID x10^3 (mean ± std "
    "over subsets) of the same samples. NAME_baseline rows: the plain Radford DCGAN recipe on the same data and "
    "budget (`--baseline`).", ""]


def md_row(cells: list[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def make_grid(run: Path, best: Path, best_kimg: float, dest: Path) -> dict:
    """A sample grid of the best checkpoint: the sample CLI when this checkout has it, else the run's
    fixed-noise grid nearest the best kimg."""
    if (REPO / "dcgan_dist" / "sample.py").is_file():
        log_path = run / "quality" / "sample.log"
        cmd = [sys.executable, "-m", "dcgan_dist.sample", str(best), "--grid", str(dest), "--no-progress"]
        child = Child(cmd, log_path, "sample grid")
        rc = child.wait()
        if rc == 0 and dest.is_file():
            return {"source": "python -m dcgan_dist.sample", "command": shlex.join(cmd), "checkpoint": str(best)}
        say(f"warning: the sample CLI failed (exit {rc}; log {log_path}); using the run's fixed-noise grid instead")
    grids = []  # (kimg, path) of the trainer's fixed-noise grids samples/fakes_<kimg>.png
    for p in (run / layout.SAMPLES).glob(layout.fakes_name("*")):
        try:
            grids.append((float(p.stem.split("_", 1)[1]), p))
        except ValueError:
            pass
    if not grids:
        raise BenchError(f"no sample grid: the sample CLI is unavailable and {run / layout.SAMPLES} has no "
                         f"{layout.fakes_name('*')}")
    kimg, src = min(grids, key=lambda kp: abs(kp[0] - best_kimg))
    shutil.copyfile(src, dest)
    return {"source": str(src), "kimg": kimg}


def record_evaluations(run: Path, selection: dict, final: dict) -> Path:
    """The benchmark's evaluations as lines of RUN/metrics.jsonl, where report and its --plot read a run's
    evaluations: the selection's FIDs (the curve) and the final KID at the best kimg (no FID: its larger
    sample count would not belong on the curve). Lines of an earlier invocation are replaced, the
    trainer's own are kept."""
    path = run / layout.METRICS
    lines = [m for m in read_jsonl(path) if m.get("source") != SOURCE]
    lines += [{"kimg": p["kimg"], "fid": p["fid"], "num": p["num"], "ref_num": p["ref_num"],
               "source": SOURCE, "step": "selection"} for p in selection["points"]]
    if final.get("kid"):
        lines.append({"kimg": final["kimg"], "kid": final["kid"], "num": final["num"], "ref_num": final["ref_num"],
                      "source": SOURCE, "step": "final"})
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(json.dumps(m) + "\n" for m in lines))
    os.replace(tmp, path)  # a reader never sees half of it
    return path


def draw_curves(run: Path, dest: Path) -> dict:
    """The run's curves (losses, D outputs, diversity, FID with the best point starred, KID) through the
    report CLI's --plot."""
    cmd = [sys.executable, "-m", "dcgan_dist.report", str(run), "--plot", str(dest)]
    log_path = run / "quality" / "plot.log"
    child = Child(cmd, log_path, "curve figure")
    rc = child.wait()
    if rc != 0 or not dest.is_file():
        raise BenchError(f"the curve figure failed (report exit {rc}); log: {log_path}\n{child.error_lines()}")
    return {"command": shlex.join(cmd)}


def upgrade_results(lines: list[str]) -> list[str]:
    """A results.md written before the KID column: its header and rows with the column added (n/a)."""
    if OLD_RESULTS_HEAD not in lines:
        return lines
    i = lines.index(OLD_RESULTS_HEAD)
    lines[i:i + 2] = RESULTS_HEAD
    i += 2
    while i < len(lines) and lines[i].startswith("|"):
        cells = [c.strip() for c in lines[i].strip().strip("|").split("|")]
        lines[i] = md_row([*cells[:KID_COLUMN], "n/a", *cells[KID_COLUMN:]])
        i += 1
    return lines


def update_results(path: Path, name: str, row: str) -> None:
    """Replace NAME's row in results.md (or add it); everything else in the file stays."""
    lines = upgrade_results(path.read_text().splitlines()) if path.is_file() else list(RESULTS_INTRO)
    mine = re.compile(rf"^\|\s*{re.escape(name)}\s*\|")
    for i, line in enumerate(lines):
        if mine.match(line):
            lines[i] = row
            break
    else:
        if RESULTS_HEAD[0] in lines:
            i = lines.index(RESULTS_HEAD[0]) + 2
            while i < len(lines) and lines[i].startswith("|"):
                i += 1
            lines.insert(i, row)
        else:
            lines += [*RESULTS_HEAD, row]
    path.write_text("\n".join(lines) + "\n")


def machine() -> dict:
    info = {"nproc": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
            "cpu_count": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform(),
            "hostname": platform.node()}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu"] = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    for pkg in ("torch", "accelerate"):
        try:
            info[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            info[pkg] = None
    if shutil.which("nvidia-smi"):
        q = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True,
                           text=True)
        info["gpus"] = [g.strip() for g in q.stdout.splitlines() if g.strip()] if q.returncode == 0 else []
    else:
        info["gpus"] = []
    try:
        info["load_average"] = os.getloadavg()
    except OSError:
        pass
    return info


def write_report(args, subject, docs: Path, train: dict, selection: dict, best: dict, final: dict,
                 seconds: dict) -> dict:
    """Writes the docs files of one subject (cli.Subject) and returns its report (the table row under "row").
    `seconds`: this invocation's time per step."""
    name, run_dir = subject.name, subject.run_dir
    docs.mkdir(parents=True, exist_ok=True)
    grid_path = docs / f"{name}_grid.png"
    grid = make_grid(run_dir, Path(best["checkpoint"]), best["kimg"], grid_path)
    svg_path = docs / f"{name}_curve.svg"
    points = selection["points"]
    record_evaluations(run_dir, selection, {**final, "kimg": best["kimg"]})
    curve = draw_curves(run_dir, svg_path)

    wall, ips = train["wall_s"], train["img_per_sec_median"]
    cells = [name, fmt_kimg(train["kimg"]), fmt_duration(wall), f"{ips:.0f}" if ips else "-",
             f"{final['fid']:.2f} ({final['num']:,})", fmt_kid(final["kid"]), fmt_kimg(best["kimg"])]
    details = f"[curve]({svg_path.name}), [grid]({grid_path.name}), [json]({name}.json)"
    update_results(docs / "results.md", name, md_row([*cells, details]))
    report = {
        "name": name, "row": md_row(cells), "config": subject.config,
        "config_path": str(Path(subject.config).resolve()), "overrides": subject.overrides,
        "launch_config": args.launch, "run_dir": str(run_dir), "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "train": train,
        "selection": selection,
        "best": {"kimg": best["kimg"], "checkpoint": best["checkpoint"], "select_fid": best["fid"]},
        "final": {k: final.get(k) for k in ("fid", "kid", "num", "ref_num", "world_size", "inception", "seed",
                                            "ref_cache", "checkpoint", "seconds", "wall_s", "command", "cached")},
        "grid": {"path": str(grid_path), **grid},
        "curve": {"path": str(svg_path), "metrics": str(run_dir / layout.METRICS), **curve},
        "files": {"json": str(docs / f"{name}.json"), "curve": str(svg_path), "grid": str(grid_path),
                  "results": str(docs / "results.md")},
        "commands": {"benchmark": shlex.join([sys.executable, "-m", "benchmarks.quality", *sys.argv[1:]]),
                     "train": train.get("commands", []),
                     "evaluate": [*(p["command"] for p in points), final.get("command")]},
        "this_invocation_s": {**seconds, "total": time.monotonic() - T0},
        "machine": machine(),
        "resolved_config": subject.cfg,
        **({"recipe": subject.recipe} if subject.recipe else {}),
    }
    write_json(docs / f"{name}.json", report)
    say(f"wrote {docs / (name + '.json')}, {svg_path.name}, {grid_path.name}, results.md")
    return report
