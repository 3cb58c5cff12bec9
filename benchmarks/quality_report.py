"""Step 4 of benchmarks/quality.py, the report: the Markdown row, and in the docs folder NAME.json
(every number, the command lines, the curve, the machine), NAME_curve.svg (FID vs kimg, the best point
marked), NAME_grid.png (samples of the best checkpoint) and the row in results.md."""

from __future__ import annotations

import math
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
from typing import Optional
from xml.sax.saxutils import escape

from quality_common import REPO, T0, BenchError, fmt_duration, fmt_kimg, say, write_json
from quality_proc import Child

TABLE_HEAD = ("| config | kimg | train wall time | img/s | best FID (N samples) | at kimg |",
              "|---|---:|---:|---:|---:|---:|")
# results.md: the printed table plus links to the files
RESULTS_HEAD = (TABLE_HEAD[0] + " details |", TABLE_HEAD[1] + "---|")


def md_row(cells: list[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def nice_ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    """Round tick values (1, 2, 5 x 10^k steps) covering [lo, hi]."""
    if hi <= lo:
        hi = lo + (abs(lo) or 1.0)
    raw = (hi - lo) / n
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    start = math.floor(lo / step) * step
    ticks, v = [], start
    while v < hi + step * 0.999:
        ticks.append(round(v, 10))
        v += step
    return ticks


def curve_svg(name: str, points: list[dict], best_kimg: float, select_num: int, final: Optional[dict]) -> str:
    """FID vs kimg as a standalone SVG: axes, ticks, labels, the curve, the best point ringed."""
    W, H, L, R, T, B = 640, 400, 70, 20, 40, 55
    xs = [p["kimg"] for p in points]
    ys = [p["fid"] for p in points]
    xt = nice_ticks(0.0, max(xs) if max(xs) > 0 else 1.0)
    lo, hi = min(ys), max(ys)
    pad = (hi - lo) * 0.05 or max(abs(hi) * 0.05, 1.0)
    yt = nice_ticks(max(lo - pad, 0.0), hi + pad)
    x0, x1, y0, y1 = xt[0], xt[-1], yt[0], yt[-1]

    def X(v: float) -> float:
        return L + (v - x0) / (x1 - x0) * (W - L - R)

    def Y(v: float) -> float:
        return H - B - (v - y0) / (y1 - y0) * (H - T - B)

    def num(v: float) -> str:
        return f"{v:g}"

    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" viewBox="0 0 {W} {H}" '
           f'font-family="sans-serif" font-size="12">',
           f'<title>{escape(name)}: FID ({select_num} samples) vs kimg</title>',
           f'<rect x="0" y="0" width="{W}" height="{H}" fill="white"/>',
           f'<text x="{W / 2}" y="22" text-anchor="middle" font-size="15">{escape(name)}: FID vs training '
           f'progress</text>']
    for v in xt:
        out.append(f'<line class="grid" x1="{X(v):.1f}" y1="{T}" x2="{X(v):.1f}" y2="{H - B}" stroke="#e4e4e4"/>')
        out.append(f'<text x="{X(v):.1f}" y="{H - B + 17}" text-anchor="middle">{num(v)}</text>')
    for v in yt:
        out.append(f'<line class="grid" x1="{L}" y1="{Y(v):.1f}" x2="{W - R}" y2="{Y(v):.1f}" stroke="#e4e4e4"/>')
        out.append(f'<text x="{L - 7}" y="{Y(v) + 4:.1f}" text-anchor="end">{num(v)}</text>')
    out += [f'<line class="axis" x1="{L}" y1="{H - B}" x2="{W - R}" y2="{H - B}" stroke="black"/>',
            f'<line class="axis" x1="{L}" y1="{T}" x2="{L}" y2="{H - B}" stroke="black"/>',
            f'<text x="{(L + W - R) / 2}" y="{H - 14}" text-anchor="middle">kimg (thousands of real images '
            f'shown to D)</text>',
            f'<text x="18" y="{(T + H - B) / 2}" text-anchor="middle" transform="rotate(-90 18 '
            f'{(T + H - B) / 2})">FID, {select_num} samples (lower is better)</text>',
            '<polyline fill="none" stroke="#1f77b4" stroke-width="2" points="'
            + " ".join(f"{X(x):.1f},{Y(y):.1f}" for x, y in zip(xs, ys)) + '"/>']
    for p in points:
        best = p["kimg"] == best_kimg
        out.append(f'<circle class="point" cx="{X(p["kimg"]):.1f}" cy="{Y(p["fid"]):.1f}" r="{5 if best else 3.5}" '
                   f'fill="{"#d62728" if best else "#1f77b4"}"><title>kimg {fmt_kimg(p["kimg"])}: FID '
                   f'{p["fid"]:.2f}</title></circle>')
    bp = next(p for p in points if p["kimg"] == best_kimg)
    bx, by = X(bp["kimg"]), Y(bp["fid"])
    label = f"best: FID {bp['fid']:.2f} at kimg {fmt_kimg(bp['kimg'])}"
    if final is not None:
        label += f" ({final['fid']:.2f} from {final['num']:,} samples)"
    anchor = "end" if bx > (L + W - R) / 2 else "start"
    dx = -10 if anchor == "end" else 10
    ly = by - 14 if by - 14 > T + 10 else by + 22
    out += [f'<circle class="best" cx="{bx:.1f}" cy="{by:.1f}" r="10" fill="none" stroke="#d62728" '
            f'stroke-width="2"/>',
            f'<text class="best-label" x="{bx + dx:.1f}" y="{ly:.1f}" text-anchor="{anchor}" fill="#d62728" '
            f'stroke="white" stroke-width="4" paint-order="stroke">'
            f'{escape(label)}</text>',
            "</svg>"]
    return "\n".join(out) + "\n"


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
    for p in (run / "samples").glob("fakes_*.png"):
        try:
            grids.append((float(p.stem.split("_", 1)[1]), p))
        except ValueError:
            pass
    if not grids:
        raise BenchError(f"no sample grid: the sample CLI is unavailable and {run / 'samples'} has no fakes_*.png")
    kimg, src = min(grids, key=lambda kp: abs(kp[0] - best_kimg))
    shutil.copyfile(src, dest)
    return {"source": str(src), "kimg": kimg}


def update_results(path: Path, name: str, row: str) -> None:
    """Replace NAME's row in results.md (or add it); everything else in the file stays."""
    lines = path.read_text().splitlines() if path.is_file() else [
        "# Generation quality", "",
        "Written by `benchmarks/quality.py` (one row per config name; a rerun replaces its row). "
        "FID: the best checkpoint by a smaller-sample FID, then measured again with N samples.", ""]
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


def write_report(args, cfg: dict, name: str, run_dir: Path, docs: Path, train: dict, selection: dict, best: dict,
                 final: dict, seconds: dict) -> str:
    """Writes the docs files and returns the table row. `seconds`: this invocation's time per step."""
    docs.mkdir(parents=True, exist_ok=True)
    grid_path = docs / f"{name}_grid.png"
    grid = make_grid(run_dir, Path(best["checkpoint"]), best["kimg"], grid_path)
    svg_path = docs / f"{name}_curve.svg"
    points = selection["points"]
    svg_path.write_text(curve_svg(name, points, best["kimg"], args.select_num, final))

    wall, ips = train["wall_s"], train["img_per_sec_median"]
    cells = [name, fmt_kimg(train["kimg"]), fmt_duration(wall), f"{ips:.0f}" if ips else "-",
             f"{final['fid']:.2f} ({final['num']:,})", fmt_kimg(best["kimg"])]
    row = md_row(cells)
    details = f"[curve]({svg_path.name}), [grid]({grid_path.name}), [json]({name}.json)"
    update_results(docs / "results.md", name, md_row([*cells, details]))
    report = {
        "name": name, "row": row, "config": args.config, "config_path": str(Path(args.config).resolve()),
        "overrides": args.overrides, "launch_config": args.launch,
        "run_dir": str(run_dir), "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "train": train,
        "selection": selection,
        "best": {"kimg": best["kimg"], "checkpoint": best["checkpoint"], "select_fid": best["fid"]},
        "final": {k: final.get(k) for k in ("fid", "num", "ref_num", "world_size", "inception", "seed", "ref_cache",
                                            "checkpoint", "seconds", "wall_s", "command", "cached")},
        "grid": {"path": str(grid_path), **grid},
        "files": {"json": str(docs / f"{name}.json"), "curve": str(svg_path), "grid": str(grid_path),
                  "results": str(docs / "results.md")},
        "commands": {"benchmark": shlex.join([sys.executable, *sys.argv]), "train": train.get("commands", []),
                     "evaluate": [*(p["command"] for p in points), final.get("command")]},
        "this_invocation_s": {**seconds, "total": time.monotonic() - T0},
        "machine": machine(),
        "resolved_config": cfg,
    }
    write_json(docs / f"{name}.json", report)
    say(f"wrote {docs / (name + '.json')}, {svg_path.name}, {grid_path.name}, results.md")
    return row
