"""`benchmarks/quality.py` end to end in tiny mode: the real script, the real trainer under
`accelerate launch` with 2 CPU processes, the real evaluate CLI with the shared Inception weights.

The run is stopped by its time budget (SIGTERM to the launcher), after a calibration launch that is
itself stopped by SIGTERM and resumed; then every checkpoint is scored, the best one scored again
with more samples, and the report written. A second invocation with --reuse trains nothing and
reuses every evaluation. Skips without ../shared (the Inception weights); downloads nothing.
"""

from __future__ import annotations

import math
import re
import subprocess
import sys
import xml.etree.ElementTree as ET

import pytest
from PIL import Image

from conftest import REPO, SHARED, TINY, env, read_json

SCRIPT = REPO / "benchmarks" / "quality.py"
TS_WEIGHTS = SHARED / "data" / "fid_inception" / "default_1.pt"
needs_shared = pytest.mark.skipif(not TS_WEIGHTS.is_file(),
                                  reason=f"needs the real Inception weights {TS_WEIGHTS} (absent)")
# The tiny model and data of the other tests; checkpoint.* is the benchmark's to set.
OVERRIDES = [o for o in TINY if not o.startswith("checkpoint.")]
SVG = "{http://www.w3.org/2000/svg}"


def bench(args: list[str], timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *args], cwd=REPO, env=env(), capture_output=True, text=True,
                          timeout=timeout)


def test_bad_invocations_are_refused_before_anything_runs(tmp_path):
    proc = bench(["configs/quickstart.yaml", *OVERRIDES])
    assert proc.returncode == 2 and "give --minutes" in proc.stderr
    proc = bench(["configs/quickstart.yaml", "--kimg", "1", "run.dir=x"])
    assert proc.returncode == 2 and "use --run-dir" in proc.stderr
    proc = bench(["configs/quickstart.yaml", "--kimg", "1", "checkpoint.keep=3"])
    assert proc.returncode == 2 and "checkpoint.keep cannot be overridden" in proc.stderr
    # A run directory that already holds a run is not trained into (nor deleted) without --reuse ...
    used = tmp_path / "used"
    (used / "checkpoints" / "000001.000").mkdir(parents=True)
    proc = bench(["configs/quickstart.yaml", "--kimg", "1", "--run-dir", str(used)])
    assert proc.returncode == 1 and "already holds a run" in proc.stderr and "--reuse" in proc.stderr
    assert (used / "checkpoints" / "000001.000").is_dir()
    # ... and --reuse needs a training this script finished.
    proc = bench(["configs/quickstart.yaml", "--kimg", "1", "--run-dir", str(used), "--reuse"])
    assert proc.returncode == 1 and "quality_train.json" in proc.stderr


def table_row(stdout: str, name: str) -> list[str]:
    rows = [line for line in stdout.splitlines() if line.startswith(f"| {name} |")]
    assert len(rows) == 1, stdout[-3000:]
    return [c.strip() for c in rows[0].strip("|").split("|")]


@needs_shared
@pytest.mark.slow
def test_time_budget_run_selects_the_best_checkpoint_and_writes_the_report(tmp_path):
    run_dir, docs = tmp_path / "run", tmp_path / "docs"
    args = ["configs/quickstart.yaml", "--minutes", "1", "--checkpoints", "1", "--select-num", "32",
            "--fid-num", "64", "--ref-num", "64", "--inception", str(TS_WEIGHTS), "--run-dir", str(run_dir),
            "--docs", str(docs), *OVERRIDES]
    proc = bench(args)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-6000:]

    # The printed row: config name, kimg, wall time, img/s, FID (N), at kimg.
    cells = table_row(proc.stdout, "quickstart")
    assert len(cells) == 6
    fid_cell = re.fullmatch(r"([0-9.]+) \(64\)", cells[4])
    assert fid_cell and math.isfinite(float(fid_cell.group(1))) and float(fid_cell.group(1)) > 0

    report = read_json(docs / "quickstart.json")
    train = report["train"]
    # Stopped by the budget: the calibration launch and the resumed one both ended by SIGTERM -> "stopped".
    assert train["stopped_by"] == "budget" and train["state"] == "stopped", out[-4000:]
    assert [p["phase"] for p in train["launches"]] == ["calibrate", "train"]
    assert all(p["state"] == "stopped" and p["signal_after_s"] is not None for p in train["launches"])
    status = read_json(run_dir / "status.json")
    assert status["state"] == "stopped" and status["world_size"] == 2 and train["world_size"] == 2
    log = (run_dir / "log.txt").read_text()
    assert "world size 2" in log and "stop requested (SIGTERM)" in log and "resumed from" in log
    assert train["wall_s"] > 0 and train["img_per_sec_median"] > 0
    assert train["wall_s"] < 60 + 120  # the budget, plus one start-up and the stop's checkpoint

    # The learning curve: kept checkpoints in kimg order (at most --checkpoints + 1 = 2: the first and the
    # newest, here the calibration's stop and the budget's stop); the best is its argmin.
    points = report["selection"]["points"]
    kimgs = [p["kimg"] for p in points]
    kept = sorted(float(p.name) for p in (run_dir / "checkpoints").iterdir())
    assert len(points) == 2 and kimgs == sorted(set(kimgs)) and set(kimgs) <= set(kept), points
    assert kimgs[-1] == pytest.approx(status["kimg"]) == kept[-1]
    assert all(math.isfinite(p["fid"]) and p["num"] == 32 for p in points)
    assert kimgs[0] == pytest.approx(train["launches"][0]["kimg"])
    best = min(points, key=lambda p: p["fid"])
    assert report["best"]["kimg"] == best["kimg"] and report["best"]["checkpoint"] == best["checkpoint"]
    final = report["final"]
    assert final["num"] == 64 and final["world_size"] == 2 and math.isfinite(final["fid"]) and final["fid"] > 0
    assert final["checkpoint"] == best["checkpoint"] and float(fid_cell.group(1)) == pytest.approx(final["fid"],
                                                                                                    abs=0.01)
    assert cells[5] == report["row"].strip("|").split("|")[5].strip()
    assert report["machine"]["nproc"] >= 1 and report["machine"]["torch"]
    assert any("-m dcgan_dist.train" in c for c in report["commands"]["train"])
    assert len(report["commands"]["evaluate"]) == len(points) + 1

    # The curve: valid SVG, one point element per curve point, the best one marked.
    root = ET.parse(docs / "quickstart_curve.svg").getroot()
    circles = list(root.iter(f"{SVG}circle"))
    assert len([c for c in circles if c.get("class") == "point"]) == len(points)
    assert len([c for c in circles if c.get("class") == "best"]) == 1
    with Image.open(docs / "quickstart_grid.png") as grid:
        assert grid.format == "PNG" and min(grid.size) >= 32
    results = (docs / "results.md").read_text()
    assert len([line for line in results.splitlines() if line.startswith("| quickstart |")]) == 1

    # --reuse: no training, every FID read back from the run directory, the results row replaced.
    again = bench(args + ["--reuse"])
    assert again.returncode == 0, (again.stdout + again.stderr)[-4000:]
    assert "training (" not in again.stdout and again.stdout.count("(cached)") == len(points)
    assert table_row(again.stdout, "quickstart") == cells
    assert read_json(docs / "quickstart.json")["final"]["fid"] == final["fid"]
    results = (docs / "results.md").read_text()
    assert len([line for line in results.splitlines() if line.startswith("| quickstart |")]) == 1
