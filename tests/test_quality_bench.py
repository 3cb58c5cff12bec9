"""`python -m benchmarks.quality` end to end in tiny mode: the real benchmark, the real trainer under
`accelerate launch` with 2 CPU processes, the real evaluate CLI with the shared Inception weights.

A time-budget run is stopped by its budget (SIGTERM to the launcher), after a calibration launch that
is itself stopped by SIGTERM and resumed; then every checkpoint is scored, the best one scored again
with more samples, and the report written. An image-budget run with --baseline trains and scores the
config and the Radford recipe on the same data. Second invocations with --reuse train nothing and
reuse every evaluation. These skip without ../shared (the Inception weights); nothing is downloaded.
In-process: the baseline's overrides against the config schema, and the report's pieces.
"""

from __future__ import annotations

import dataclasses
import json
import math
import operator
import re
import signal
import subprocess
import sys
import xml.etree.ElementTree as ET

import pytest
import yaml
from PIL import Image

from benchmarks.quality import baseline, cli
from benchmarks.quality.common import BenchError
from benchmarks.quality.report import RESULTS_HEAD, record_evaluations, update_results
from conftest import REPO, SHARED, TINY, env, read_json
from dcgan_dist import config
from dcgan_dist.report import summarize

TS_WEIGHTS = SHARED / "data" / "fid_inception" / "default_1.pt"
needs_shared = pytest.mark.skipif(not TS_WEIGHTS.is_file(),
                                  reason=f"needs the real Inception weights {TS_WEIGHTS} (absent)")
# The tiny model and data of the other tests; checkpoint.* is the benchmark's to set.
OVERRIDES = [o for o in TINY if not o.startswith("checkpoint.")]
SVG = "{http://www.w3.org/2000/svg}"


def bench(args: list[str], timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "benchmarks.quality", *args], cwd=REPO, env=env(),
                          capture_output=True, text=True, timeout=timeout)


def test_bad_invocations_are_refused_before_anything_runs(tmp_path, monkeypatch, capsys):
    # Once through the real command line (argparse's usage error, exit status 2) ...
    proc = bench(["configs/quickstart.yaml", *OVERRIDES])
    assert proc.returncode == 2 and "give --minutes" in proc.stderr

    # ... the rest in-process (main() is the command line's body; each refusal comes before anything runs).
    monkeypatch.chdir(REPO)
    monkeypatch.setattr(signal, "signal", lambda signum, handler: None)  # main() would take over SIGTERM

    def refused(args: list[str]) -> tuple[int, str]:
        try:
            code = cli.main(args)
        except SystemExit as e:
            code = e.code
        return code, capsys.readouterr().err

    code, err = refused(["configs/quickstart.yaml", "--kimg", "1", "run.dir=x"])
    assert code == 2 and "use --run-dir" in err
    code, err = refused(["configs/quickstart.yaml", "--kimg", "1", "checkpoint.keep=3"])
    assert code == 2 and "checkpoint.keep cannot be overridden" in err
    # A run directory that already holds a run is not trained into (nor deleted) without --reuse ...
    used = tmp_path / "used"
    (used / "checkpoints" / "000001.000").mkdir(parents=True)
    code, err = refused(["configs/quickstart.yaml", "--kimg", "1", "--run-dir", str(used)])
    assert code == 1 and "already holds a run" in err and "--reuse" in err
    assert (used / "checkpoints" / "000001.000").is_dir()
    # ... and --reuse needs a training the benchmark finished.
    code, err = refused(["configs/quickstart.yaml", "--kimg", "1", "--run-dir", str(used), "--reuse"])
    assert code == 1 and "quality_train.json" in err
    # --baseline: its run directory RUN_baseline is checked as well, before anything trains.
    fresh = tmp_path / "fresh"
    (tmp_path / "fresh_baseline" / "checkpoints").mkdir(parents=True)
    code, err = refused(["configs/quickstart.yaml", "--kimg", "1", "--run-dir", str(fresh), "--baseline"])
    assert code == 1 and f"{fresh}_baseline already holds a run" in err
    assert not fresh.exists()
    # --baseline-only compares with the project's report in --docs, which must exist before anything trains.
    other = tmp_path / "other"
    code, err = refused(["configs/quickstart.yaml", "--kimg", "1", "--run-dir", str(other), "--baseline-only",
                         "--docs", str(tmp_path / "docs")])
    assert code == 1 and f"{tmp_path / 'docs' / 'quickstart.json'}, which does not exist" in err
    assert not (tmp_path / "other_baseline").exists()


def assert_kid_cell(cell: str) -> None:
    m = re.fullmatch(r"(-?[0-9.]+) ± ([0-9.]+)", cell)
    assert m and all(math.isfinite(float(v)) for v in m.groups()), cell


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

    # The printed row: config name, kimg, wall time, img/s, FID (N), KID, at kimg.
    cells = table_row(proc.stdout, "quickstart")
    assert len(cells) == 7
    fid_cell = re.fullmatch(r"([0-9.]+) \(64\)", cells[4])
    assert fid_cell and math.isfinite(float(fid_cell.group(1))) and float(fid_cell.group(1)) > 0
    assert_kid_cell(cells[5])

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
    assert cells[6] == report["row"].strip("|").split("|")[6].strip()
    assert report["machine"]["nproc"] >= 1 and report["machine"]["torch"]
    assert any("-m dcgan_dist.train" in c for c in report["commands"]["train"])
    *selecting, finishing = report["commands"]["evaluate"]
    assert len(selecting) == len(points) and all("--metrics fid " in c for c in selecting)  # FID alone
    assert "--metrics fid,kid " in finishing

    # The evaluations are the run's metrics.jsonl lines, so report reads the best FID, and its --plot drew
    # the curve (an SVG document).
    recorded = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [(m["kimg"], m["fid"]) for m in recorded if m["step"] == "selection"] == [(p["kimg"], p["fid"])
                                                                                      for p in points]
    assert all(m["source"] == "benchmarks.quality" for m in recorded)
    assert [m["kimg"] for m in recorded if m["step"] == "final"] == [best["kimg"]]
    row = summarize(run_dir, run_dir)
    assert (row["best_fid"], row["best_fid_kimg"]) == (best["fid"], best["kimg"])
    assert ET.parse(docs / "quickstart_curve.svg").getroot().tag == f"{SVG}svg"
    assert "--plot" in report["curve"]["command"]
    with Image.open(docs / "quickstart_grid.png") as grid:
        assert grid.format == "PNG" and min(grid.size) >= 32
    results = (docs / "results.md").read_text()
    assert len([line for line in results.splitlines() if line.startswith("| quickstart |")]) == 1

    # --reuse: no training, every FID read back from the run directory, the results row and the recorded
    # evaluations replaced.
    again = bench(args + ["--reuse"])
    assert again.returncode == 0, (again.stdout + again.stderr)[-4000:]
    assert "training (" not in again.stdout and again.stdout.count("(cached)") == len(points)
    assert table_row(again.stdout, "quickstart") == cells
    assert [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()] == recorded
    assert read_json(docs / "quickstart.json")["final"]["fid"] == final["fid"]
    results = (docs / "results.md").read_text()
    assert len([line for line in results.splitlines() if line.startswith("| quickstart |")]) == 1


# ---- --baseline ---------------------------------------------------------------------------------

CONFIGS = sorted((REPO / "configs").glob("*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_the_baseline_overrides_are_schema_keys_and_give_the_radford_recipe_on_every_config(path):
    plain = config.load(path)
    base = config.load(path, baseline.overrides())  # an unknown key or a bad value raises ConfigError
    for key, value in baseline.RADFORD.items():
        assert operator.attrgetter(key)(base) == value, key
    # Only the recipe changes: the data, the image shape, batch, precision, cadences and seed stay the config's.
    assert (base.data, base.train, base.seed) == (plain.data, plain.train, plain.seed)
    assert (base.model.resolution, base.model.channels) == (plain.model.resolution, plain.model.channels)


def test_the_baseline_decides_every_key_of_the_recipe_sections():
    """Each key of model, loss, optim, augment and ema is set by the baseline, kept (the data's shape), or
    inert under it: a stabiliser added to the schema must be placed in one of the three."""
    sections = {f.name: f.default_factory for f in dataclasses.fields(config.Config)}
    keys = {f"{s}.{f.name}" for s in baseline.SECTIONS for f in dataclasses.fields(sections[s])}
    decided = [*baseline.RADFORD, *baseline.KEPT, *baseline.INERT]
    assert len(decided) == len(set(decided)) and set(decided) == keys, set(decided) ^ keys


def test_results_md_gains_the_kid_column_and_keeps_older_rows(tmp_path):
    results = tmp_path / "results.md"
    results.write_text("# Generation quality\n\nintro\n\n"
                       "| config | kimg | train wall time | img/s | best FID (N samples) | at kimg | details |\n"
                       "|---|---:|---:|---:|---:|---:|---|\n| old | 880 | 45 min | 314 | 15.83 (5,000) | 880 | x |\n\nend\n")
    update_results(results, "new", "| new | 1 | 2 s | 3 | 4.00 (64) | 1.00 ± 0.10 | 1 | y |")
    lines = results.read_text().splitlines()
    at = lines.index(RESULTS_HEAD[0])
    assert lines[at + 1] == RESULTS_HEAD[1] and lines[:3] == ["# Generation quality", "", "intro"]
    assert lines[at + 2:] == ["| old | 880 | 45 min | 314 | 15.83 (5,000) | n/a | 880 | x |",
                              "| new | 1 | 2 s | 3 | 4.00 (64) | 1.00 ± 0.10 | 1 | y |", "", "end"]


def test_the_evaluations_replace_the_benchmarks_earlier_lines_in_metrics_jsonl_and_keep_the_trainers(tmp_path):
    trainer = {"kimg": 0.5, "fid": 90.0, "num": 100}
    (tmp_path / "metrics.jsonl").write_text(json.dumps(trainer) + "\n"
                                            + json.dumps({"kimg": 1.0, "fid": 1.0, "source": "benchmarks.quality"}) + "\n")
    selection = {"points": [{"kimg": k, "fid": f, "num": 32, "ref_num": 64} for k, f in ((1.0, 80.0), (2.0, 70.0))]}
    record_evaluations(tmp_path, selection, {"kimg": 2.0, "kid": {"mean": 3.0, "std": 0.5}, "num": 64, "ref_num": 64})
    lines = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert lines[0] == trainer and [m.get("step") for m in lines] == [None, "selection", "selection", "final"]
    assert [(m["kimg"], m.get("fid")) for m in lines[1:]] == [(1.0, 80.0), (2.0, 70.0), (2.0, None)]
    row = summarize(tmp_path, tmp_path)  # report's view: the best FID of the trainer's and the benchmark's
    assert (row["best_fid"], row["best_fid_kimg"]) == (70.0, 2.0)


def test_the_ratio_of_a_non_positive_baseline_kid_is_not_a_number():
    def rep(name, fid, kid):
        return {"name": name, "final": {"fid": fid, "kid": kid}}
    c = baseline.comparison(rep("a", 20.0, {"mean": 2.0, "std": 0.1}), rep("b", 40.0, {"mean": -0.1, "std": 0.2}))
    assert c["fid_ratio"] == 0.5 and c["kid_ratio"] is None
    assert baseline.ratio_line(c).endswith("FID 20.00 / 40.00 = 0.500; KID x10^3 2.00 ± 0.10 / -0.10 ± 0.20 = n/a")


def test_baseline_only_refuses_a_project_report_measured_otherwise(tmp_path):
    path = tmp_path / "apple.json"
    path.write_text(json.dumps({"config": "configs/apple64.yaml", "overrides": ["data.shards=data/apple64"],
                                "train": {"minutes": 45.0, "target_kimg": 1e6}, "final": {"num": 5000}}))
    args = dataclasses.make_dataclass("Args", ["config", "overrides", "minutes", "kimg", "fid_num"])
    same = args("configs/apple64.yaml", ["data.shards=data/apple64"], 45.0, None, 5000)
    assert baseline.project_report(path, same)["final"]["num"] == 5000
    for field, value, what in (("minutes", 30.0, "--minutes 45.0"), ("fid_num", 1000, "--fid-num 5000"),
                               ("overrides", [], "overrides ['data.shards=data/apple64']"),
                               ("kimg", 100.0, "--kimg 1000000.0")):
        with pytest.raises(BenchError, match=re.escape(f"{path} was measured with {what}")):
            baseline.project_report(path, dataclasses.replace(same, **{field: value}))
    proj = {"final": {"inception": {"sha256": "a"}, "ref_num": 4844}}
    baseline.check_same_evaluation(path, proj, proj)
    with pytest.raises(BenchError, match="reference images 4844, the baseline with 1000"):
        baseline.check_same_evaluation(path, proj, {"final": {"inception": {"sha256": "a"}, "ref_num": 1000}})


@needs_shared
@pytest.mark.slow
def test_baseline_trains_the_radford_recipe_on_the_same_data_and_budget(tmp_path):
    run_dir, docs = tmp_path / "run", tmp_path / "docs"
    # The project's side is conditional, smoothed, averaged and augmented: the baseline must undo all of it.
    recipe = ["model.num_classes=10", "loss.real_label=0.9", "ema.half_life_kimg=1", "augment.policy=translation"]
    args = ["configs/quickstart.yaml", "--kimg", "0.128", "--checkpoints", "1", "--select-num", "32",
            "--fid-num", "32", "--ref-num", "64", "--inception", str(TS_WEIGHTS), "--run-dir", str(run_dir),
            "--docs", str(docs), "--baseline", *OVERRIDES, *recipe]
    proc = bench(args)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-6000:]
    base_dir = tmp_path / "run_baseline"
    for name, d in (("quickstart", run_dir), ("quickstart_baseline", base_dir)):
        assert "world size 2" in (d / "log.txt").read_text(), name
        status, report = read_json(d / "status.json"), read_json(docs / f"{name}.json")
        assert status["state"] == "complete" and status["world_size"] == 2 and report["train"]["world_size"] == 2
        assert status["kimg"] == pytest.approx(0.128) and report["train"]["stopped_by"] == "kimg"
        cells = table_row(proc.stdout, name)
        assert len(cells) == 7 and cells[1] == "0.128"
        fid = re.fullmatch(r"([0-9.]+) \(32\)", cells[4])
        assert fid and math.isfinite(float(fid.group(1))) and float(fid.group(1)) > 0
        assert_kid_cell(cells[5])
        assert (docs / f"{name}_curve.svg").is_file() and (docs / f"{name}_grid.png").is_file()

    # The baseline's resolved config: the Radford recipe over the project's data, shape, batch and precision.
    proj, base = (yaml.safe_load((d / "config.yaml").read_text()) for d in (run_dir, base_dir))
    assert (base["model"]["g_width"], base["model"]["d_width"], base["model"]["z_dim"]) == (64, 64, 100)
    assert base["model"]["num_classes"] == 0 and base["model"]["d_norm"] == "batch"
    assert not base["model"]["d_spectral"] and base["model"]["d_dropout"] == 0
    assert base["loss"] == {**proj["loss"], "kind": "nonsaturating", "real_label": 1.0, "label_flip": 0.0,
                            "r1_gamma": 0.0}
    assert base["ema"]["half_life_kimg"] == 0 and base["augment"]["policy"] == "" and not base["augment"]["adaptive"]
    assert (base["optim"]["g_lr"], base["optim"]["d_lr"], base["optim"]["schedule"]) == (2e-4, 2e-4, "constant")
    assert (base["optim"]["g_beta1"], base["optim"]["d_beta1"], base["optim"]["g_beta2"]) == (0.5, 0.5, 0.999)
    assert (proj["model"]["num_classes"], proj["loss"]["real_label"], proj["augment"]["policy"]) == (
        10, 0.9, "translation")  # the project's own recipe is untouched
    for key in ("data", "train", "seed"):
        assert base[key] == proj[key], key
    assert (base["model"]["resolution"], base["model"]["channels"]) == (proj["model"]["resolution"],
                                                                        proj["model"]["channels"])
    changed = read_json(docs / "quickstart_baseline.json")["recipe"]["changed"]
    assert changed["model.g_width"] == [8, 64] and changed["loss.real_label"] == [0.9, 1.0]

    # The ratio line, and the same comparison in the project's report.
    m = re.search(r"^quickstart / quickstart_baseline .*: FID ([0-9.]+) / ([0-9.]+) = ([0-9.]+); "
                  r"KID x10\^3 (.+) / (.+) = (\S+)$", proc.stdout, re.M)
    assert m, proc.stdout[-3000:]
    fid_p, fid_b, ratio = map(float, m.group(1, 2, 3))
    assert math.isfinite(ratio) and ratio == pytest.approx(fid_p / fid_b, abs=2e-3)
    comparison = read_json(docs / "quickstart.json")["baseline"]
    assert comparison["fid_ratio"] == pytest.approx(ratio, abs=1e-3)
    kid_p, kid_b = (k["mean"] for k in comparison["kid"])
    assert math.isfinite(kid_p) and math.isfinite(kid_b)
    if kid_b > 0:  # KID's unbiased estimate can be <= 0 for a tiny sample: then there is no ratio
        assert comparison["kid_ratio"] == pytest.approx(kid_p / kid_b) and float(m.group(6)) == pytest.approx(
            kid_p / kid_b, abs=2e-3)
    else:
        assert m.group(6) == "n/a" and comparison["kid_ratio"] is None
    rows = [line for line in (docs / "results.md").read_text().splitlines() if line.startswith("| quickstart")]
    assert [r.split("|")[1].strip() for r in rows] == ["quickstart", "quickstart_baseline"]

    # --reuse: neither run is trained again, every evaluation is read back, the same rows come out.
    again = bench(args + ["--reuse"])
    assert again.returncode == 0, (again.stdout + again.stderr)[-4000:]
    assert "training (" not in again.stdout and again.stdout.count("(cached)") == 2
    for name in ("quickstart", "quickstart_baseline"):
        assert table_row(again.stdout, name) == table_row(proc.stdout, name)
    # --baseline-only: the project's side is its report, the baseline's is measured (here reused), same ratio.
    only = bench([a for a in args if a != "--baseline"] + ["--baseline-only", "--reuse"])
    assert only.returncode == 0, (only.stdout + only.stderr)[-4000:]
    assert f"read from {docs / 'quickstart.json'}" in only.stdout and only.stdout.count("(cached)") == 1
    assert table_row(only.stdout, "quickstart") == table_row(proc.stdout, "quickstart")
    assert re.search(r"^quickstart / quickstart_baseline .*$", only.stdout, re.M).group(0) == m.group(0)
