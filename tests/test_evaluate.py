"""`python -m dcgan_dist.evaluate`: a real checkpoint of the trainer against its training data, one
process (in-process) and two through the real launcher; two image sets; precomputed reference
statistics; FID during a 2-process training. KID and precision/recall (--metrics, eval.metrics):
the JSON, the reference-feature cache, metrics.jsonl, TensorBoard, the report and its plot.

The FID tests need the real Inception weights in ../shared (they skip without them); the KID / PR
tests use a tiny stand-in extractor (tests/standins.py). Nothing is downloaded.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import standins
from conftest import REPO, SHARED, TINY, env, evaluate_inproc, launcher_cmd, read_json, run_main, train_inproc

from dcgan_dist import plot, report
from dcgan_dist.data.errors import SourceError
from dcgan_dist.data.imagesets import iter_range, open_image_set
from dcgan_dist.metrics.kid import kid
from dcgan_dist.metrics.precision_recall import precision_recall
from dcgan_dist.metrics.suite import KID_SEED

TS_WEIGHTS = SHARED / "data" / "fid_inception" / "default_1.pt"
FACES = SHARED / "data" / "faces" / "fairface_val_1-3000.tar"
needs_shared = pytest.mark.skipif(not TS_WEIGHTS.is_file() or not FACES.is_file(),
                                  reason=f"needs the real Inception weights and images in {SHARED / 'data'} (absent)")


def evaluate(args: list[str], capsys, check: bool = True) -> tuple[int, str, str]:
    """The CLI in this process (one CPU process): exit status, stdout, stderr."""
    capsys.readouterr()
    rc = evaluate_inproc(args)
    out, err = capsys.readouterr()
    if check and rc != 0:
        pytest.fail(f"evaluate exited {rc}\n--- stdout\n{out[-3000:]}\n--- stderr\n{err[-6000:]}")
    return rc, out, err


def evaluate_launched(args: list[str], timeout: float = 400) -> subprocess.CompletedProcess:
    """The CLI through the real `accelerate launch` with 2 CPU processes."""
    cmd = launcher_cmd(["-m", "dcgan_dist.evaluate", *args])
    proc = subprocess.run(cmd, cwd=REPO, env=env(), capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        pytest.fail(f"evaluate exited {proc.returncode}\n--- stdout\n{proc.stdout[-3000:]}\n--- stderr\n"
                    f"{proc.stderr[-6000:]}")
    return proc


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory) -> Path:
    """A real run directory: the trainer, one process (in-process), 32 images on the embedded digits."""
    run_dir = tmp_path_factory.mktemp("trained") / "run"
    assert train_inproc("configs/quickstart.yaml", TINY + [f"run.dir={run_dir}", "train.kimg=0.032"]) == 0
    return run_dir


@pytest.fixture(scope="module")
def face_folder(tmp_path_factory) -> Path:
    """12 FairFace crops as PNG files: a folder, the two-folder mode's input."""
    folder = tmp_path_factory.mktemp("faces")
    for i, arr in enumerate(iter_range(open_image_set(str(FACES)), 0, 12)):
        Image.fromarray(arr.transpose(1, 2, 0)).save(folder / f"{i:03d}.png")
    return folder


def test_help_names_every_mode(capsys):
    _, out, _ = evaluate(["--help"], capsys)
    for flag in ("--real", "--fake", "--precompute", "--inception", "--num", "--batch", "--out",
                 "DCGAN_DIST_INCEPTION"):
        assert flag in out


def test_missing_weights_say_how_to_supply_them(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("DCGAN_DIST_INCEPTION", str(tmp_path / "missing.pth"))
    rc, _, err = evaluate(["--real", str(tmp_path), "--fake", str(tmp_path)], capsys, check=False)
    assert rc == 2
    for way in ("--inception PATH", "eval.inception", "DCGAN_DIST_INCEPTION", "missing.pth: no such file"):
        assert way in err


def test_open_image_set_names_the_option_it_came_from(tmp_path):
    """Without ../shared too: the image-set opener names `--real PATH`, not the trainer's data.shards."""
    (tmp_path / "empty").mkdir()
    for spec, what in ((tmp_path / "missing", "no such file or directory"),
                       (tmp_path / "empty", "a folder with neither"), (tmp_path / "*.tar", "no shards matched")):
        with pytest.raises(SourceError) as exc:
            open_image_set(str(spec), origin="--real")
        assert str(exc.value).startswith(f"--real {spec}: {what}") and "data.shards" not in str(exc.value)


@needs_shared
def test_bad_real_path_is_named_as_the_option(tmp_path, capsys):
    """A wrong --real is reported as `--real PATH`, not as the trainer's config key."""
    for real, what in ((tmp_path / "no-such-dir", "no such file or directory"),
                       (tmp_path / "no-such-stats.npz", "not a statistics file")):
        rc, _, err = evaluate(["--real", str(real), "--fake", str(tmp_path), "--inception", str(TS_WEIGHTS)], capsys,
                              check=False)
        assert rc == 2 and f"--real {real}: {what}" in err, err
        assert "data.shards" not in err


@needs_shared
def test_inception_score_without_logits_is_refused_up_front(face_folder, capsys):
    rc, _, err = evaluate(["--real", str(face_folder), "--fake", str(face_folder), "--inception", str(TS_WEIGHTS),
                           "--is"], capsys, check=False)
    assert rc == 2 and "no classifier" in err


@needs_shared
@pytest.mark.slow
def test_checkpoint_fid_one_process_equals_two_and_reuses_the_cache(trained_run, tmp_path, capsys):
    common = [str(trained_run), "--num", "24", "--ref-num", "40", "--batch", "16", "--inception", str(TS_WEIGHTS),
              "--no-progress"]
    _, _, one = evaluate(common + ["--out", str(tmp_path / "one.json"), "--cache-dir", str(tmp_path / "c1")], capsys)
    two = evaluate_launched(common + ["--out", str(tmp_path / "two.json"), "--cache-dir", str(tmp_path / "c2")])
    _, _, again = evaluate(common + ["--out", str(tmp_path / "again.json"), "--cache-dir", str(tmp_path / "c1")],
                           capsys)
    r1, r2, r3 = (read_json(tmp_path / f"{n}.json") for n in ("one", "two", "again"))
    assert (r1["world_size"], r2["world_size"], r3["world_size"]) == (1, 2, 1)
    assert r1["checkpoint"].endswith("checkpoints/000000.032") and r1["num"] == 24 and r1["ref_num"] == 40
    assert "is" not in r1  # the TorchScript weights have no logits
    # The same samples and images on 1 and 2 ranks: FID equal up to float32 batch effects.
    assert r1["fid"] > 1 and abs(r1["fid"] - r2["fid"]) <= 1e-4 * r1["fid"]
    # Same cache key on both world sizes; the third run read the reference and changed nothing.
    assert Path(r1["ref_cache"]).name == Path(r2["ref_cache"]).name
    assert "cached" in again and "cached" not in one and "cached" not in two.stderr
    assert r3["fid"] == pytest.approx(r1["fid"], rel=1e-9)


@needs_shared
def test_two_sets_precompute_and_npz_reference(face_folder, tmp_path, capsys):
    base = ["--inception", str(TS_WEIGHTS), "--batch", "16", "--no-progress", "--cache-dir", str(tmp_path / "cache")]
    _, same, _ = evaluate(["--real", str(face_folder), "--fake", str(face_folder), "--out", str(tmp_path / "same.json"),
                           *base], capsys)
    assert abs(read_json(tmp_path / "same.json")["fid"]) < 1e-2, same
    _, pre, _ = evaluate(["--precompute", "embedded:digits", "--num", "30", "--out", str(tmp_path / "pre.json"), *base],
                         capsys)
    npz = read_json(tmp_path / "pre.json")["ref_cache"]
    assert Path(npz).is_file() and "reference statistics and features in" in pre  # the default metrics: fid,kid
    with np.load(npz) as z:  # pytorch-fid's stats layout, plus the features KID needs
        assert z["mu"].shape == (2048,) and z["sigma"].shape == (2048, 2048) and int(z["count"]) == 30
        assert z["features"].shape == (30, 2048)
    evaluate(["--real", npz, "--fake", str(face_folder), "--out", str(tmp_path / "from_npz.json"), *base], capsys)
    evaluate(["--real", "embedded:digits", "--num", "30", "--fake", str(face_folder),
              "--out", str(tmp_path / "direct.json"), *base], capsys)
    from_npz, direct = read_json(tmp_path / "from_npz.json"), read_json(tmp_path / "direct.json")
    assert from_npz["fid"] > 50  # digits vs faces: far apart
    assert from_npz["fid"] == pytest.approx(direct["fid"], rel=1e-9)
    assert from_npz["kid"] == pytest.approx(direct["kid"], rel=1e-9) and direct["kid"]["mean"] > 0
    assert set(json.loads((tmp_path / "direct.json").read_text())) >= {"fid", "num", "inception", "world_size"}


@needs_shared
def test_fid_during_two_process_training_keeps_the_best_checkpoint(tmp_path, capsys):
    """eval.every_kimg: FID at ticks on both ranks, logged, and the best kept apart from the rotation."""
    run_dir = tmp_path / "run"
    from conftest import launch

    args = TINY + [f"run.dir={run_dir}", "train.kimg=0.128", "eval.every_kimg=0.064", "eval.num=16",
                   "eval.ref_num=32", "eval.batch=16", f"eval.inception={TS_WEIGHTS}", "checkpoint.keep=1"]
    proc = launch("configs/quickstart.yaml", args, timeout=600)
    assert "world size 2" in proc.stderr and "FID" in proc.stderr
    lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [round(m["kimg"], 3) for m in lines] == [0.064, 0.128]
    assert all(np.isfinite(m["fid"]) and m["fid"] > 0 for m in lines)
    best = run_dir / "checkpoints" / "best"
    meta = read_json(best / "meta.json")
    assert meta["world_size"] == 2 and meta["param_digests"][0] == meta["param_digests"][1]
    assert meta["fid"] == min(m["fid"] for m in lines) and (best / "generator.safetensors").is_file()
    # the rotation (keep=1) kept only the newest <kimg> checkpoint, and never deleted best/
    names = sorted(p.name for p in (run_dir / "checkpoints").iterdir())
    assert names == ["000000.128", "best"]

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run_dir))
    events.Reload()
    assert len(events.Scalars("Metrics/fid")) == 2

    # resume=auto continues from the newest <kimg> checkpoint, never from best/ (in-process: which
    # checkpoint a resume picks is the same on any number of processes)
    assert train_inproc("configs/quickstart.yaml", args + ["train.kimg=0.16"]) == 0  # later overrides win
    assert f"resumed from {run_dir / 'checkpoints' / '000000.128'}" in capsys.readouterr().err


# ---- KID and precision/recall (the stand-in extractor: no ../shared needed) ------------------------

@pytest.fixture
def stand_in(monkeypatch):
    """The evaluate CLI and the training evaluator measure with tests/standins.py's extractor."""
    standins.install(monkeypatch.setattr)


def stand_in_features(spec: str, num: int) -> torch.Tensor:
    """The stand-in's features of the first `num` images of an image set, as the CLI keeps them (float32)."""
    images = [torch.from_numpy(a) for a in iter_range(open_image_set(spec), 0, num)]
    return standins.Float64Extractor()(images)[0].float()


@pytest.fixture(scope="module")
def digit_folder(tmp_path_factory) -> Path:
    """30 PNG files: embedded digits shifted by a pixel, every third one replaced by noise (a set that
    overlaps the digits in part: precision and recall strictly between 0 and 1)."""
    folder = tmp_path_factory.mktemp("digits")
    noise = np.random.default_rng(0).integers(0, 256, (30, 32, 32), dtype=np.uint8)
    for i, arr in enumerate(iter_range(open_image_set("embedded:digits"), 100, 130)):
        Image.fromarray(noise[i] if i % 3 == 0 else np.roll(arr[0], 1, axis=1)).save(folder / f"{i:03d}.png")
    return folder


def test_metrics_flag_names_the_allowed_values(stand_in, tmp_path, capsys):
    for bad in ("fid,bogus", ",", "FID;kid"):
        rc, _, err = evaluate(["--real", "embedded:digits", "--fake", str(tmp_path), "--metrics", bad], capsys,
                              check=False)
        assert rc == 2 and f"--metrics={bad!r}" in err and "fid, kid, pr" in err, err
    rc, _, err = evaluate(["--precompute", "embedded:digits", "--kid-subsets", "0"], capsys, check=False)
    assert rc == 2 and "--kid-subsets must be >= 1 and --kid-subset-size >= 2" in err


def test_two_sets_kid_and_pr_equal_the_metric_functions_on_the_same_features(stand_in, digit_folder, tmp_path,
                                                                              capsys):
    base = ["--real", "embedded:digits", "--fake", str(digit_folder), "--num", "30", "--batch", "8",
            "--kid-subsets", "6", "--kid-subset-size", "20", "--no-progress", "--cache-dir", str(tmp_path / "cache")]
    _, out, _ = evaluate(base + ["--metrics", "fid,kid,pr", "--out", str(tmp_path / "all.json")], capsys)
    doc = read_json(tmp_path / "all.json")
    real, fake = stand_in_features("embedded:digits", 30), stand_in_features(str(digit_folder), 30)
    expect_kid = kid(real, fake, num_subsets=6, subset_size=20, seed=KID_SEED)
    expect_pr = precision_recall(real, fake)
    assert doc["kid"] == pytest.approx(dict(zip(("mean", "std"), expect_kid.scaled())), rel=1e-12, abs=1e-15)
    assert (doc["kid_subsets"], doc["kid_subset_size"]) == (6, 20) and doc["kid"]["std"] > 0
    assert (doc["precision"], doc["recall"]) == (expect_pr.precision, expect_pr.recall)
    assert 0 < doc["precision"] < 1 and 0 < doc["recall"] < 1 and doc["kid"]["mean"] > 0 and doc["fid"] > 0
    assert doc["metrics"] == ["fid", "kid", "pr"] and doc["world_size"] == 1
    assert "KID x10^3" in out and "precision" in out
    # fid only: the other keys are there, null; the default (fid,kid): no precision/recall
    evaluate(base + ["--metrics", "fid", "--out", str(tmp_path / "fid.json")], capsys)
    fid_only = read_json(tmp_path / "fid.json")
    assert (fid_only["kid"], fid_only["precision"], fid_only["recall"]) == (None, None, None)
    assert fid_only["fid"] == pytest.approx(doc["fid"], rel=1e-9)
    evaluate(base + ["--out", str(tmp_path / "default.json")], capsys)
    default = read_json(tmp_path / "default.json")
    assert default["kid"] == doc["kid"] and default["precision"] is None

    # --precompute stores the features: the npz then serves as --real for KID / PR, with the same numbers
    _, pre, _ = evaluate(["--precompute", "embedded:digits", "--num", "30", "--metrics", "kid,pr",
                          "--out", str(tmp_path / "pre.json"), *base[6:]], capsys)
    npz = read_json(tmp_path / "pre.json")["ref_cache"]
    assert "reference statistics and features in" in pre
    with np.load(npz) as z:
        assert z["features"].dtype == np.float32 and np.array_equal(z["features"], real.numpy())
    evaluate(["--real", npz, *base[2:], "--metrics", "kid,pr", "--out", str(tmp_path / "npz.json")], capsys)
    from_npz = read_json(tmp_path / "npz.json")
    assert [from_npz[k] for k in ("kid", "precision", "recall")] == [doc[k] for k in ("kid", "precision", "recall")]
    # pytorch-fid's statistics hold no features: KID from them is refused with the way out
    with np.load(npz) as z:
        np.savez(tmp_path / "theirs.npz", mu=z["mu"], sigma=z["sigma"])
    rc, _, err = evaluate(["--real", str(tmp_path / "theirs.npz"), *base[2:], "--metrics", "kid"], capsys, check=False)
    assert rc == 2 and "--real" in err and "FID statistics only" in err and "--precompute" in err


def test_reference_features_are_cached_and_an_fid_only_cache_is_completed(stand_in, trained_run, tmp_path, capsys):
    cache = tmp_path / "cache"
    common = [str(trained_run), "--num", "24", "--ref-num", "40", "--batch", "16", "--kid-subsets", "4",
              "--kid-subset-size", "16", "--no-progress", "--cache-dir", str(cache)]
    _, _, err = evaluate(common + ["--metrics", "fid", "--out", str(tmp_path / "fid.json")], capsys)
    npz = Path(read_json(tmp_path / "fid.json")["ref_cache"])
    with np.load(npz) as z:  # FID alone stores the features too, so that a later KID evaluation hits the cache
        assert z["features"].shape == (40, 2048) and z["features"].dtype == np.float32
        arrays = {k: z[k] for k in z.files}
    _, _, hit = evaluate(common + ["--metrics", "fid,kid", "--out", str(tmp_path / "hit.json")], capsys)
    assert "statistics and features of" in hit and "cached" in hit
    # An older version's cache entry held the statistics alone: KID/PR extract the set again and complete it.
    np.savez(npz, **{k: v for k, v in arrays.items() if k != "features"})
    _, _, completed = evaluate(common + ["--metrics", "fid,kid,pr", "--out", str(tmp_path / "first.json")], capsys)
    assert "holds FID statistics but no features" in completed and "cached" not in completed
    with np.load(npz) as z:
        assert z["features"].shape == (40, 2048) and z["features"].dtype == np.float32
    _, _, again = evaluate(common + ["--metrics", "fid,kid,pr", "--out", str(tmp_path / "again.json")], capsys)
    assert "statistics and features of" in again and "cached" in again
    first, second = read_json(tmp_path / "first.json"), read_json(tmp_path / "again.json")
    assert first["ref_cache"] == second["ref_cache"] == str(npz) and len(list(cache.iterdir())) == 1
    for key in ("fid", "kid", "precision", "recall"):
        assert first[key] == second[key], key  # the cached float32 features are the extracted ones, bit for bit
    assert first["kid"]["mean"] != 0 and first["precision"] is not None
    # the FID-only evaluation reads the same file, and gives the FID it gave before
    _, _, fid_again = evaluate(common + ["--metrics", "fid", "--out", str(tmp_path / "fid2.json")], capsys)
    assert "cached" in fid_again and read_json(tmp_path / "fid2.json")["fid"] == pytest.approx(
        read_json(tmp_path / "fid.json")["fid"], rel=1e-9)


def test_training_logs_kid_and_pr_and_the_report_and_its_plot_show_them(stand_in, tmp_path, capsys):
    run_dir = tmp_path / "run"
    assert train_inproc("configs/quickstart.yaml", TINY + [
        f"run.dir={run_dir}", "train.kimg=0.064", "eval.every_kimg=0.032", "eval.num=16", "eval.ref_num=32",
        "eval.batch=16", "eval.metrics=fid,kid,pr", "eval.kid_subsets=3", "eval.kid_subset_size=8"]) == 0
    assert "FID, KID, PR every" in capsys.readouterr().err
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [round(m["kimg"], 3) for m in records] == [0.032, 0.064]
    for m in records:
        assert set(m["kid"]) == {"mean", "std"} and all(np.isfinite(v) for v in m["kid"].values())
        assert 0 <= m["precision"] <= 1 and 0 <= m["recall"] <= 1 and (m["kid_subsets"], m["kid_subset_size"]) == (3, 8)
        assert m["fid"] > 0 and m["metrics"] == ["fid", "kid", "pr"]

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run_dir))
    events.Reload()
    for tag, value in (("Metrics/kid", lambda m: m["kid"]["mean"]), ("Metrics/kid_std", lambda m: m["kid"]["std"]),
                       ("Metrics/precision", lambda m: m["precision"]), ("Metrics/recall", lambda m: m["recall"]),
                       ("Metrics/fid", lambda m: m["fid"])):
        scalars = events.Scalars(tag)
        assert [s.step for s in scalars] == [32, 64], tag
        assert [s.value for s in scalars] == pytest.approx([value(m) for m in records], rel=1e-6), tag

    best = min(records, key=lambda m: m["fid"])
    capsys.readouterr()
    assert run_main(report.main, [run_dir, "--json"]) == 0
    row = json.loads(capsys.readouterr().out)[0]
    assert row["best_fid"] == best["fid"] and row["kid"] == best["kid"]
    assert (row["precision"], row["recall"]) == (best["precision"], best["recall"])
    assert run_main(report.main, [run_dir]) == 0
    head, line = capsys.readouterr().out.splitlines()[:2]
    assert head.split()[:7] == ["#", "state", "kimg", "best", "FID", "KID", "x1e3"] and "P" in head.split()
    assert f"{best['kid']['mean']:.2f}±{best['kid']['std']:.2f}" in line and f"{best['precision']:.3f}" in line
    # report --plot reads the same metrics.jsonl keys the trainer writes: KID's mean as the line, its std as the band
    kimgs = [m["kimg"] for m in records]
    p = {ax.get_title(): ax for ax in plot.figure(report.collect(run_dir), str(run_dir)).axes}
    drawn = {ln.get_label(): ln for title in ("KID ×10³", "Precision / recall") for ln in p[title].get_lines()}
    for label, value in (("run KID", lambda m: m["kid"]["mean"]), ("run precision", lambda m: m["precision"]),
                         ("run recall", lambda m: m["recall"])):
        assert list(drawn[label].get_xdata()) == kimgs and list(drawn[label].get_ydata()) == [value(m) for m in records]
    assert len(p["KID ×10³"].collections) == 1  # the ± std band
