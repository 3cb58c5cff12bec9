"""`python -m dcgan_dist.evaluate`: a real checkpoint of the trainer against its training data, one
process (in-process) and two through the real launcher; two image sets; precomputed reference
statistics; FID during a 2-process training.

Needs the real Inception weights in ../shared (skips without them); downloads nothing.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import CPU_LAUNCH, REPO, SHARED, TINY, env, evaluate_inproc, read_json, train_inproc

from dcgan_dist.data.errors import SourceError
from dcgan_dist.data.imagesets import iter_range, open_image_set

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
    cmd = [str(Path(sys.executable).with_name("accelerate")), "launch", "--config_file", str(CPU_LAUNCH),
           "-m", "dcgan_dist.evaluate", *args]
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
    assert Path(npz).is_file() and "reference statistics in" in pre
    with np.load(npz) as z:  # pytorch-fid's stats layout
        assert z["mu"].shape == (2048,) and z["sigma"].shape == (2048, 2048) and int(z["count"]) == 30
    evaluate(["--real", npz, "--fake", str(face_folder), "--out", str(tmp_path / "from_npz.json"), *base], capsys)
    evaluate(["--real", "embedded:digits", "--num", "30", "--fake", str(face_folder),
              "--out", str(tmp_path / "direct.json"), *base], capsys)
    from_npz, direct = read_json(tmp_path / "from_npz.json"), read_json(tmp_path / "direct.json")
    assert from_npz["fid"] > 50  # digits vs faces: far apart
    assert from_npz["fid"] == pytest.approx(direct["fid"], rel=1e-9)
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
