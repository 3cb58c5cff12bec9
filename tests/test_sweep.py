"""Sweep files (dcgan_dist.sweep) and the sweep report (dcgan_dist.report), without Slurm."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO
from dcgan_dist import report, sweep
from dcgan_dist.sweep import SweepError

EXAMPLE = REPO / "configs" / "sweeps" / "example.yaml"


def write_spec(path: Path, **spec) -> Path:
    spec.setdefault("config", str(REPO / "configs" / "quickstart.yaml"))
    path.write_text(json.dumps(spec))  # JSON is YAML
    return path


def run_cli(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "dcgan_dist.sweep", *args], cwd=cwd, capture_output=True, text=True)


def test_example_sweep_matches_the_default_array_of_sweep_sh():
    s = sweep.load(EXAMPLE.relative_to(REPO))
    assert s.name == "example" and s.config == "configs/quickstart.yaml"
    assert [c.params for c in s.combinations] == [
        {"optim.g_lr": 1e-4, "loss.real_label": 1.0}, {"optim.g_lr": 1e-4, "loss.real_label": 0.9},
        {"optim.g_lr": 2e-4, "loss.real_label": 1.0}, {"optim.g_lr": 2e-4, "loss.real_label": 0.9}]
    assert s.combinations[1].run_dir == "runs/example/optim.g_lr=0.0001,loss.real_label=0.9"
    sweep.check(s)  # every combination is a valid config
    # `sbatch slurm/sweep.sh` with no arguments runs example.yaml: its #SBATCH --array must cover it exactly.
    script = (REPO / "slurm" / "sweep.sh").read_text()
    assert re.search(r"^#SBATCH --array=0-(\d+)$", script, re.M).group(1) == str(len(s.combinations) - 1)
    assert "spec=${1:-configs/sweeps/example.yaml}" in script


def test_grid_and_list_combine_in_a_stable_order(tmp_path):
    spec = write_spec(tmp_path / "s.yaml", name="mix", overrides=["train.kimg=1"],
                      grid={"optim.g_lr": [1e-4, 2e-4]},
                      list=[{"model.d_dropout": 0.0}, {"model.d_dropout": 0.2, "data.hflip": True}])
    s = sweep.load(spec)
    assert [c.params for c in s.combinations] == [
        {"model.d_dropout": 0.0, "optim.g_lr": 1e-4}, {"model.d_dropout": 0.0, "optim.g_lr": 2e-4},
        {"model.d_dropout": 0.2, "data.hflip": True, "optim.g_lr": 1e-4},
        {"model.d_dropout": 0.2, "data.hflip": True, "optim.g_lr": 2e-4}]
    c = s.combinations[3]
    assert c.overrides == ["train.kimg=1", "model.d_dropout=0.2", "data.hflip=true", "optim.g_lr=0.0002",
                           f"run.dir={c.run_dir}", f"run.name=mix/{Path(c.run_dir).name}"]
    assert c.run_dir == "runs/mix/model.d_dropout=0.2,data.hflip=true,optim.g_lr=0.0002"
    sweep.check(s)


def test_run_directory_names_are_safe_and_bounded(tmp_path):
    spec = write_spec(tmp_path / "s.yaml", root=str(tmp_path / "out"),
                      grid={"data.shards": ["/data/a b/{000..009}.tar", "pipe:curl -s http://x/y.tar"]})
    names = [Path(c.run_dir).name for c in sweep.load(spec).combinations]
    assert names == ["data.shards=-data-a-b-000..009-.tar", "data.shards=pipe-curl--s-http-x-y.tar"]
    assert all(Path(c.run_dir).parent == tmp_path / "out" for c in sweep.load(spec).combinations)
    long = write_spec(tmp_path / "l.yaml", grid={"data.shards": ["x" * 300, "y" * 300]})
    names = [Path(c.run_dir).name for c in sweep.load(long).combinations]
    assert all(len(n) <= 120 for n in names) and len(set(names)) == 2


@pytest.mark.parametrize("spec, message", [
    ({"grid": {"optim.g_lr": [1e-4]}, "colour": 1}, "unknown sweep keys ['colour']"),
    ({"overrides": ["train.kimg=1"]}, "nothing to sweep"),
    ({"grid": {"optim.g_lr": []}}, "non-empty list"),
    ({"grid": {"run.dir": ["a", "b"]}}, "run.dir cannot be swept"),
    ({"grid": {"optim.g_lr": [[1, 2]]}}, "must be scalars"),
    ({"list": [{"optim.g_lr": 1e-4}, {"optim.g_lr": 1e-4}]}, "combinations 0 and 1 have the same overrides"),
    ({"name": "a/b", "grid": {"optim.g_lr": [1e-4]}}, "plain directory name"),
])
def test_bad_sweep_files_are_refused_with_a_reason(tmp_path, spec, message):
    with pytest.raises(SweepError, match=re.escape(message)):
        sweep.load(write_spec(tmp_path / "s.yaml", **spec))


def test_a_typo_in_a_swept_key_fails_before_submission(tmp_path):
    spec = write_spec(tmp_path / "s.yaml", grid={"optim.glr": [1e-4, 2e-4]})
    proc = run_cli(str(spec), "--dry-run")
    assert proc.returncode == 2 and "combination 0" in proc.stderr and "optim.glr" in proc.stderr
    assert "Did you mean" in proc.stderr


def test_dry_run_lists_the_combinations_and_the_sbatch_command(tmp_path):
    proc = run_cli("configs/sweeps/example.yaml", "--dry-run", "--max-parallel", "2", "--",
                   "--partition=gpu", "--time=1:00:00")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].startswith("sweep example: 4 combination(s) of configs/quickstart.yaml")
    assert "runs/example/optim.g_lr=0.0002,loss.real_label=0.9" in lines[4]
    assert lines[-1] == ("sbatch --array=0-3%2 --job-name=example --partition=gpu --time=1:00:00 "
                         "slurm/sweep.sh configs/sweeps/example.yaml")


def test_index_prints_one_combination_and_records_it(tmp_path):
    spec = write_spec(tmp_path / "s.yaml", name="lr", root=str(tmp_path / "runs"), overrides=["train.kimg=1"],
                      grid={"optim.g_lr": [1e-4, 2e-4]})
    proc = run_cli(str(spec), "--index", "1")
    run_dir = tmp_path / "runs" / "optim.g_lr=0.0002"
    assert proc.returncode == 0 and proc.stdout.splitlines() == [
        "train.kimg=1", "optim.g_lr=0.0002", f"run.dir={run_dir}", "run.name=lr/optim.g_lr=0.0002"]
    assert not run_dir.exists()  # printing has no side effect

    proc = run_cli(str(spec), "--index", "1", "--with-config", "--record")
    assert proc.stdout.splitlines()[0] == "configs/quickstart.yaml"  # relative to the current directory
    record = json.loads((run_dir / "sweep.json").read_text())
    assert record["index"] == 1 and record["params"] == {"optim.g_lr": 2e-4} and record["sweep"] == "lr"


def test_an_array_index_outside_the_sweep_fails_clearly(tmp_path):
    spec = write_spec(tmp_path / "s.yaml", name="lr", grid={"optim.g_lr": [1e-4, 2e-4]})
    proc = run_cli(str(spec), "--index", "2")
    assert proc.returncode == 2 and proc.stdout == ""
    assert "array index 2 is outside sweep 'lr': it has 2 combination(s), indices 0-1" in proc.stderr
    assert "--array=0-1" in proc.stderr


# ---- the report ---------------------------------------------------------------------------------

def fake_run(root: Path, name: str, *, index=None, params=None, status=None, speeds=(), fids=()) -> Path:
    run = root / name
    run.mkdir(parents=True)
    if index is not None:
        (run / "sweep.json").write_text(json.dumps({"index": index, "params": params or {}, "slurm_job": f"7_{index}"}))
    if status:
        (run / "status.json").write_text(json.dumps(status))
    if speeds:
        (run / "stats.jsonl").write_text("".join(json.dumps({"kimg": i, "Speed/img_per_sec": s}) + "\n"
                                                 for i, s in enumerate(speeds)) + '{"kimg": 9, "Speed/im')
    if fids:
        (run / "metrics.jsonl").write_text("".join(json.dumps({"kimg": k, "fid": f, **(more[0] if more else {})}) + "\n"
                                                   for k, f, *more in fids))
    return run


def test_report_has_one_row_per_run(tmp_path):
    root = tmp_path / "sweep"
    fake_run(root, "b", index=1, params={"optim.g_lr": 2e-4},
             status={"state": "failed", "kimg": 0.5, "total_kimg": 10, "error": "losses became non-finite"})
    fake_run(root, "a", index=0, params={"optim.g_lr": 1e-4},
             status={"state": "complete", "kimg": 10.0, "total_kimg": 10, "world_size": 2},
             speeds=[5.0, 100.0, 110.0, 0.0, 120.0], fids=[(5, 80.5), (10, 61.25)])
    fake_run(root, "c", index=2, params={"optim.g_lr": 3e-4})  # queued: no status.json yet
    (root / "a" / "checkpoints" / "000010.000").mkdir(parents=True)

    rows = report.collect(root)
    assert [(r["index"], r["run"], r["state"]) for r in rows] == [(0, "a", "complete"), (1, "b", "failed"),
                                                                   (2, "c", "pending")]
    a = rows[0]
    assert a["overrides"] == ["optim.g_lr=0.0001"] and a["kimg"] == 10.0 and a["world_size"] == 2
    assert a["best_fid"] == 61.25 and a["best_fid_kimg"] == 10
    assert a["img_per_sec"] == 105.0  # the median of the ticks that trained (a cut-off last line is skipped)
    assert rows[2]["kimg"] is None and rows[2]["img_per_sec"] is None

    text = report.table(rows)
    lines = text.splitlines()
    assert lines[0].split() == ["#", "state", "kimg", "best", "FID", "KID", "x1e3", "img/s", "overrides"]
    assert lines[1].split() == ["0", "complete", "10.000/10", "61.25", "@10", "-", "105.0", "optim.g_lr=0.0001"]
    assert lines[3].split() == ["2", "pending", "-/-", "-", "-", "-", "optim.g_lr=0.0003"]
    assert "b: losses became non-finite" in text

    out = subprocess.run([sys.executable, "-m", "dcgan_dist.report", str(root), "--json"], capture_output=True,
                         text=True, check=True).stdout
    assert [r["run"] for r in json.loads(out)] == ["a", "b", "c"]


def test_report_shows_kid_and_precision_recall_at_the_best_fid(tmp_path):
    root = tmp_path / "sweep"
    fake_run(root, "a", index=0, status={"state": "complete", "kimg": 3, "total_kimg": 3}, fids=[
        (1, 90.0, {"kid": {"mean": 1.5, "std": 0.25}, "precision": 0.5, "recall": 0.125}),
        (2, 70.0, {"kid": {"mean": 2.75, "std": 0.5}, "precision": 0.625, "recall": 0.25}),  # best FID, not best KID
        (3, 80.0, {"kid": None, "precision": None, "recall": None})])
    fake_run(root, "b", index=1, status={"state": "complete", "kimg": 3, "total_kimg": 3},
             fids=[(3, 60.0)])  # an older run: FID only
    a, b = report.collect(root)
    assert (a["best_fid"], a["kid"], a["precision"], a["recall"]) == (70.0, {"mean": 2.75, "std": 0.5}, 0.625, 0.25)
    assert (b["best_fid"], b["kid"], b["precision"], b["recall"]) == (60.0, None, None, None)
    lines = report.table([a, b]).splitlines()
    assert lines[0].split() == ["#", "state", "kimg", "best", "FID", "KID", "x1e3", "P", "R", "img/s", "overrides"]
    assert lines[1].split()[3:8] == ["70.00", "@2", "2.75±0.50", "0.625", "0.250"]
    assert lines[2].split()[3:8] == ["60.00", "@3", "-", "-", "-"]
    # without any precision/recall, no P and R columns
    assert "P" not in report.table([b]).splitlines()[0].split()


def test_report_of_one_run_and_of_nothing(tmp_path):
    run = fake_run(tmp_path, "solo", status={"state": "stopped", "kimg": 1.5, "total_kimg": 3})
    assert [(r["run"], r["state"], r["overrides"]) for r in report.collect(run)] == [("solo", "stopped", [])]
    # status.json moves at checkpoints; a running run has got as far as its last tick
    running = fake_run(tmp_path, "running", status={"state": "running", "kimg": 0.0}, speeds=[10.0, 20.0, 30.0])
    assert report.collect(running)[0]["kimg"] == 2
    assert report.table(report.collect(run)).splitlines()[1].split()[-1] == "solo"
    empty = tmp_path / "empty"
    empty.mkdir()
    proc = subprocess.run([sys.executable, "-m", "dcgan_dist.report", str(empty)], capture_output=True, text=True)
    assert proc.returncode == 1 and "no runs under" in proc.stderr


def test_submission_runs_sbatch_with_the_array_of_the_sweep(tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "sbatch"  # records its arguments instead of queueing anything
    fake.write_text(f'#!/bin/sh\necho "$@" > {tmp_path}/args\necho "Submitted batch job 42"\n')
    fake.chmod(0o755)
    e = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}
    proc = subprocess.run([sys.executable, "-m", "dcgan_dist.sweep", "configs/sweeps/example.yaml", "--",
                           "--gpus-per-node=0"], cwd=REPO, env=e, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[-1] == "Submitted batch job 42"
    assert (tmp_path / "args").read_text().split() == [
        "--array=0-3", "--job-name=example", "--gpus-per-node=0", "slurm/sweep.sh", "configs/sweeps/example.yaml"]

    elsewhere = subprocess.run([sys.executable, "-m", "dcgan_dist.sweep", str(EXAMPLE)], cwd=tmp_path, env=e,
                               capture_output=True, text=True)
    assert elsewhere.returncode == 2 and "run from the repository root" in elsewhere.stderr
