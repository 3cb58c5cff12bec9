"""`python -m dcgan_dist.report RUN --plot out.png|out.svg`: the figure of a run and of a sweep, built from
stats.jsonl / metrics.jsonl records of the trainer's shape, and from a real (tiny, in-process) training run."""

from __future__ import annotations

import json
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from PIL import Image

from conftest import REPO, TINY, run_main, train_inproc

from dcgan_dist import plot, report

STAT_KEYS = ("Loss/D", "Loss/G", "D/real", "D/fake", "Diversity/fake", "Diversity/real", "Diversity/ratio")


def tick(nimg: int, seed: float) -> dict:
    """One stats.jsonl line as Tracker.tick writes it: {"kimg": nimg / 1000, **values}."""
    values = {k: seed + i / 10 + nimg / 1e5 for i, k in enumerate(STAT_KEYS)}
    values.update({"Loss/GP": 0.0, "Augment/p": 0.0, "Speed/img_per_sec": 100.0, "Speed/sec_per_kimg": 10.0,
                   "LR/G": 2e-4, "LR/D": 2e-4, "Progress/kimg": nimg / 1000})
    return {"kimg": nimg / 1000, **values}


def evaluation(nimg: int, fid: float, extra: bool) -> dict:
    """One metrics.jsonl line as Tracker.metrics writes it: {"kimg": nimg / 1000, **evaluate_generator's dict},
    with KID (x10^3, mean and std), precision and recall when `extra`."""
    line = {"kimg": nimg / 1000, "fid": fid, "is_mean": None, "is_std": None, "num": 256, "seconds": 3.5}
    if extra:
        line.update({"kid": {"mean": fid / 10, "std": fid / 100}, "precision": 0.5 + nimg / 1e4, "recall": 0.25})
    return line


def fake_run(path: Path, fids: list[tuple[int, float]], seed: float = 0.0, extra: bool = True,
             index=None) -> Path:
    path.mkdir(parents=True)
    (path / "status.json").write_text(json.dumps({"state": "complete", "kimg": 0.4, "total_kimg": 0.4}))
    if index is not None:
        (path / "sweep.json").write_text(json.dumps({"index": index, "params": {"seed": index}}))
    (path / "stats.jsonl").write_text("".join(json.dumps(tick(n, seed)) + "\n" for n in (100, 200, 300, 400)))
    if fids:
        (path / "metrics.jsonl").write_text("".join(json.dumps(evaluation(n, f, extra)) + "\n" for n, f in fids))
    return path


def panels(fig) -> dict:
    return {ax.get_title(): ax for ax in fig.axes}


def lines(ax) -> dict:
    return {ln.get_label(): ln for ln in ax.get_lines()}


def texts(ax) -> list[str]:
    return [t.get_text() for t in ax.texts]


def test_one_run_draws_every_panel_from_its_files(tmp_path):
    run = fake_run(tmp_path / "solo", [(200, 80.0), (400, 60.5)])
    fig = plot.figure(report.collect(run), str(run))
    p = panels(fig)
    assert list(p) == ["Losses", "D outputs", "Diversity", "FID", "KID ×10³", "Precision / recall"]
    assert set(lines(p["Losses"])) == {"solo D", "solo G"}
    assert set(lines(p["D outputs"])) == {"solo D(real)", "solo D(fake)"}
    assert set(lines(p["Diversity"])) == {"solo fake/real", "solo fake", "solo real"}
    loss_d = lines(p["Losses"])["solo D"]
    assert list(loss_d.get_xdata()) == [0.1, 0.2, 0.3, 0.4]
    assert list(loss_d.get_ydata()) == [tick(n, 0.0)["Loss/D"] for n in (100, 200, 300, 400)]
    fid = lines(p["FID"])
    assert list(fid["solo FID"].get_xdata()) == [0.2, 0.4] and list(fid["solo FID"].get_ydata()) == [80.0, 60.5]
    assert (list(fid["solo best FID"].get_xdata()), list(fid["solo best FID"].get_ydata())) == ([0.4], [60.5])
    assert list(lines(p["KID ×10³"])["solo KID"].get_ydata()) == [8.0, 6.05]
    assert len(p["KID ×10³"].collections) == 1  # the std band
    pr = lines(p["Precision / recall"])
    assert list(pr["solo precision"].get_ydata()) == [0.52, 0.54] and list(pr["solo recall"].get_ydata()) == [0.25] * 2
    assert not any(texts(ax) for ax in fig.axes)  # no panel says it is empty
    assert fig.get_suptitle() == f"{run} — 1 run"
    assert [t.get_text() for t in fig.legends[0].get_texts()] == ["solo"]


def test_a_sweep_overlays_its_runs_in_one_colour_each(tmp_path):
    root = tmp_path / "sweep"
    fake_run(root / "seed=1", [(200, 90.0), (400, 70.0)], seed=1.0, index=1)
    fake_run(root / "seed=0", [(200, 50.0), (400, 55.0)], seed=0.0, index=0, extra=False)
    fig = plot.figure(report.collect(root), str(root))
    p = panels(fig)
    assert fig.get_suptitle() == f"{root} — 2 runs"
    assert [t.get_text() for t in fig.legends[0].get_texts()] == ["seed=0", "seed=1"]  # report's order
    for title in ("Losses", "D outputs", "Diversity", "FID"):
        assert {label.split(" ")[0] for label in lines(p[title])} == {"seed=0", "seed=1"}, title
    # one colour per run, the same in every panel and in the legend
    legend = {t.get_text(): h.get_color() for t, h in zip(fig.legends[0].get_texts(), fig.legends[0].legend_handles)}
    for ax in fig.axes:
        for label, ln in lines(ax).items():
            assert ln.get_color() == legend[label.split(" ")[0]], (ax.get_title(), label)
    assert legend["seed=0"] != legend["seed=1"]
    best = {k: (list(v.get_xdata()), list(v.get_ydata())) for k, v in lines(p["FID"]).items() if "best" in k}
    assert best == {"seed=0 best FID": ([0.2], [50.0]), "seed=1 best FID": ([0.4], [70.0])}
    # only seed=1 measured KID and precision/recall: only it is drawn there
    assert set(lines(p["KID ×10³"])) == {"seed=1 KID"}
    assert set(lines(p["Precision / recall"])) == {"seed=1 precision", "seed=1 recall"}


def test_a_run_without_metrics_says_so_in_its_evaluation_panels(tmp_path):
    run = fake_run(tmp_path / "r", fids=[])
    assert not (run / "metrics.jsonl").exists()
    p = panels(plot.figure(report.collect(run), str(run)))
    assert texts(p["FID"]) == ["no FID evaluations (metrics.jsonl)"] and not p["FID"].get_lines()
    assert texts(p["KID ×10³"]) == ["no KID evaluations (metrics.jsonl)"]
    assert texts(p["Precision / recall"]) == ["no precision/recall evaluations (metrics.jsonl)"]
    assert len(lines(p["Losses"])) == 2 and not texts(p["Losses"])


def test_cli_writes_a_png_and_still_prints_the_table(tmp_path, capsys):
    root = tmp_path / "sweep"
    fake_run(root / "a", [(200, 80.0)], index=0)
    fake_run(root / "b", [(400, 60.0)], index=1)
    out = tmp_path / "report.png"
    assert run_main(report.main, [root, "--plot", out]) == 0
    stdout, stderr = capsys.readouterr()
    assert stdout.splitlines()[0].split()[:2] == ["#", "state"] and len(stdout.splitlines()) == 3
    assert f"wrote {out}" in stderr
    with Image.open(out) as im:
        im.verify()
    with Image.open(out) as im:
        assert im.format == "PNG" and im.mode == "RGBA"
        assert 1000 <= im.width <= 1600 and 900 <= im.height <= 1400, im.size


def test_cli_writes_svg_by_the_suffix(tmp_path, capsys):
    run = fake_run(tmp_path / "solo", [(200, 80.0)])
    out = tmp_path / "report.svg"
    assert run_main(report.main, [run, "--json", "--plot", out]) == 0
    assert json.loads(capsys.readouterr().out)[0]["best_fid"] == 80.0
    root = ET.parse(out).getroot()
    assert root.tag == "{http://www.w3.org/2000/svg}svg"
    assert "no FID evaluations" not in out.read_text()


@pytest.mark.parametrize("name", ["report.pdf", "report", "report.png.txt"])
def test_a_bad_suffix_is_refused_naming_the_flag(tmp_path, capsys, name):
    run = fake_run(tmp_path / "solo", [])
    assert run_main(report.main, [run, "--plot", tmp_path / name]) == 2
    out, err = capsys.readouterr()
    assert out == ""  # refused before anything is read or printed
    assert f"--plot {tmp_path / name}: the figure is written as PNG or SVG" in err and ".png or .svg" in err
    assert not (tmp_path / name).exists()


def test_report_without_plot_does_not_import_matplotlib(tmp_path):
    run = fake_run(tmp_path / "solo", [])
    code = ("import sys; from dcgan_dist import report; rc = report.main([sys.argv[1]]); "
            "assert 'matplotlib' not in sys.modules, 'imported'; sys.exit(rc)")
    proc = subprocess.run([sys.executable, "-c", code, str(run)], cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


def test_the_figure_of_a_real_training_run(tmp_path):
    """The trainer's own stats.jsonl, read back: the reader and the writer cannot drift apart."""
    run_dir = tmp_path / "run"
    assert train_inproc("configs/quickstart.yaml", TINY + [f"run.dir={run_dir}", "train.kimg=0.096"]) == 0
    ticks = [json.loads(line) for line in (run_dir / "stats.jsonl").read_text().splitlines()]
    p = panels(plot.figure(report.collect(run_dir), str(run_dir)))
    for title, key, name in (("Losses", "Loss/D", "D"), ("Losses", "Loss/G", "G"), ("D outputs", "D/real", "D(real)"),
                             ("D outputs", "D/fake", "D(fake)"), ("Diversity", "Diversity/ratio", "fake/real")):
        ln = lines(p[title])[f"run {name}"]
        assert list(ln.get_xdata()) == [t["kimg"] for t in ticks] == pytest.approx([0.032, 0.064, 0.096])
        assert list(ln.get_ydata()) == [t[key] for t in ticks], key
    assert texts(p["FID"]) == ["no FID evaluations (metrics.jsonl)"]


def test_report_takes_kid_from_a_later_kid_only_evaluation_of_the_best_checkpoint(tmp_path):
    """The quality benchmark records its FID curve, then the best checkpoint's KID alone (more samples):
    the table's KID is that one, not one of another checkpoint."""
    run = fake_run(tmp_path / "run", [(100, 90.0), (200, 70.0), (300, 80.0)], extra=False)
    with (run / "metrics.jsonl").open("a") as f:
        f.write(json.dumps({"kimg": 0.3, "kid": {"mean": 9.0, "std": 1.0}}) + "\n")  # not the best kimg
        f.write(json.dumps({"kimg": 0.2, "kid": {"mean": 5.5, "std": 0.5}}) + "\n")
    (row,) = report.collect(run)
    assert row["best_fid"] == 70.0 and row["best_fid_kimg"] == 0.2
    assert row["kid"] == {"mean": 5.5, "std": 0.5}
    # A KID measured with the best FID itself wins.
    run2 = fake_run(tmp_path / "run2", [(100, 90.0), (200, 70.0)], extra=True)
    assert report.collect(run2)[0]["kid"] == {"mean": 7.0, "std": 0.7}
