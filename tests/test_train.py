"""The trainer's CLI main in this process (one CPU process, world size 1) on the embedded digits:
what a run leaves behind, and the start-up refusals. What only several processes can show (one
world of 2, ranks that agree, exact resume across ranks, signals to ranks) is in
test_train_distributed.py, through the real launcher."""

from __future__ import annotations

import json

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from conftest import TINY, read_json, train_inproc
from test_train_distributed import CONFIG, newest_checkpoint


def test_a_run_leaves_a_complete_run_directory(tmp_path, capsys):
    run_dir = tmp_path / "run"
    # A diversity threshold no G can meet: the collapse warning must fire (once the warm-up is over).
    assert train_inproc(CONFIG, TINY + [f"run.dir={run_dir}", "train.kimg=0.128", "train.collapse_threshold=50"]) == 0
    err = capsys.readouterr().err
    assert "world size 1" in err
    assert err.count("possible mode collapse") == 1, err[-3000:]

    status = read_json(run_dir / "status.json")
    assert status["state"] == "complete" and status["world_size"] == 1
    assert status["kimg"] == pytest.approx(0.128)

    ckpt = newest_checkpoint(run_dir)
    meta = read_json(ckpt / "meta.json")
    assert meta["world_size"] == 1 and meta["nimg"] == 128 and meta["step"] == 8 and len(meta["param_digests"]) == 1
    for name in ("model.safetensors", "model_1.safetensors", "optimizer.bin", "optimizer_1.bin",
                 "random_states_0.pkl", "dcgan_rank0.pt", "generator.safetensors"):
        assert (ckpt / name).is_file(), name

    assert "train:" in (run_dir / "config.yaml").read_text()
    assert "kimg" in (run_dir / "log.txt").read_text()
    assert (run_dir / "samples" / "reals.png").is_file()
    assert sorted(p.name for p in (run_dir / "samples").glob("fakes_*.png"))[-1] == "fakes_000000.128.png"

    events = EventAccumulator(str(run_dir), size_guidance={"images": 0, "scalars": 0})
    events.Reload()
    tags = set(events.Tags()["scalars"])
    for tag in ("Loss/D", "Loss/G", "D/real", "D/fake", "Speed/img_per_sec", "Speed/data_wait", "LR/G", "LR/D",
                "Progress/epoch", "Diversity/ratio", "Diversity/fake", "Diversity/real", "Loss/GP"):
        assert tag in tags, f"missing TensorBoard scalar {tag}; have {sorted(tags)}"
    losses = [e.value for e in events.Scalars("Loss/D")]
    assert len(losses) == 4 and all(torch.isfinite(torch.tensor(losses)))
    ratios = [e.value for e in events.Scalars("Diversity/ratio")]
    assert all(0 < r < 5 for r in ratios), ratios
    assert meta["generator"] == "ema"  # generator.safetensors holds the EMA of G (the default)
    assert {"Samples/fixed_noise", "Samples/reals"} <= set(events.Tags()["images"])


def test_workers_auto_is_resolved_logged_and_recorded(tmp_path, capsys):
    """On a CPU, auto means 2 workers: the log says so, and config.yaml and the checkpoint's meta record
    the number (a resume compares it: the stream's order depends on it)."""
    run_dir = tmp_path / "run"
    assert train_inproc(CONFIG, TINY + [f"run.dir={run_dir}", "data.workers=auto", "train.kimg=0.064"]) == 0
    err = capsys.readouterr().err
    assert "data.workers=auto: 2 loader worker(s) per rank (cpu," in err
    assert "workers: 2" in (run_dir / "config.yaml").read_text()
    assert read_json(newest_checkpoint(run_dir) / "meta.json")["workers"] == 2
    waits = [json.loads(line)["Speed/data_wait"] for line in (run_dir / "stats.jsonl").read_text().splitlines()]
    assert len(waits) == 2 and all(0.0 <= w <= 1.0 for w in waits), waits


def test_conditional_model_must_match_the_data_classes(tmp_path, capsys):
    """The embedded digits have 10 classes: model.num_classes=3 stops at start-up, naming the fix."""
    assert train_inproc(CONFIG, TINY + [f"run.dir={tmp_path / 'run'}", "model.num_classes=3"]) == 2
    err = capsys.readouterr().err
    assert "model.num_classes=3 but the shards have 10 classes" in err
    # A clean exit 2 from the trainer: the message, no traceback.
    assert "set model.num_classes=10" in err and "Traceback" not in err
    assert read_json(tmp_path / "run" / "status.json")["state"] == "failed"
