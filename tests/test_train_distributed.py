"""End-to-end: the real `accelerate launch` with 2 CPU processes (gloo), on the embedded digits, for
what only several processes show: one world of 2, ranks that agree, exact resume across ranks,
signals to the launcher or to one rank. What one process shows is in test_train.py, in-process.

Each launch asserts world size 2: on CPU the failure mode is two silent world-size-1 runs.
"""

from __future__ import annotations

import json
import math
import os
import re
import signal
import subprocess
import time
from pathlib import Path

import psutil
import pytest
import torch
from safetensors.torch import load_file
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from conftest import REPO, TINY, env, launch, launch_cmd, read_json, train_inproc

pytestmark = pytest.mark.slow
CONFIG = "configs/quickstart.yaml"


def newest_checkpoint(run_dir: Path) -> Path:
    ckpts = sorted((run_dir / "checkpoints").iterdir(), key=lambda p: p.name)
    return [c for c in ckpts if not c.name.startswith(".")][-1]


def test_two_processes_form_one_world_and_their_ranks_agree(two_process_run):
    """What a run directory holds beyond one process's (test_train.py checks the rest in-process):
    status and checkpoint of a world of 2, both ranks' files, bitwise equal parameters on both, and
    rank zero alone writing the logs and said-once warnings."""
    run_dir, proc = two_process_run
    assert "world size 2" in proc.stderr
    assert proc.stderr.count("possible mode collapse") == 1, proc.stderr[-3000:]
    assert len((run_dir / "stats.jsonl").read_text().splitlines()) == 5  # one line per tick, not per rank
    events = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
    events.Reload()
    assert len(events.Scalars("Loss/D")) == 5
    status = read_json(run_dir / "status.json")
    assert status["state"] == "complete" and status["world_size"] == 2
    assert status["kimg"] == pytest.approx(0.16)

    ckpt = newest_checkpoint(run_dir)
    meta = read_json(ckpt / "meta.json")
    assert meta["world_size"] == 2 and meta["nimg"] == 160 and meta["step"] == 10
    # G's and D's parameters are bitwise identical on both ranks after training.
    assert len(meta["param_digests"]) == 2 and meta["param_digests"][0] == meta["param_digests"][1]
    for name in ("model.safetensors", "model_1.safetensors", "optimizer.bin", "optimizer_1.bin",
                 "random_states_0.pkl", "random_states_1.pkl", "dcgan_rank0.pt", "dcgan_rank1.pt",
                 "generator.safetensors"):
        assert (ckpt / name).is_file(), name


def _final_state(run_dir: Path) -> dict:
    ckpt = newest_checkpoint(run_dir)
    state = {f"G.{k}": v for k, v in load_file(ckpt / "model.safetensors").items()}
    state.update({f"D.{k}": v for k, v in load_file(ckpt / "model_1.safetensors").items()})
    for i, name in enumerate(("optimizer.bin", "optimizer_1.bin")):
        opt = torch.load(ckpt / name, weights_only=False)
        for pid, st in opt["state"].items():
            for k, v in st.items():
                state[f"opt{i}.{pid}.{k}"] = torch.as_tensor(v)
    for rank in (0, 1):
        own = torch.load(ckpt / f"dcgan_rank{rank}.pt", weights_only=False)
        state[f"noise{rank}"] = own["noise"]
        state.update({f"augment{rank}.{k}": v for k, v in own.get("augment", {}).items()})
    if (ckpt / "custom_checkpoint_0.pkl").is_file():  # the EMA of G
        ema = torch.load(ckpt / "custom_checkpoint_0.pkl", weights_only=False)
        state.update({f"ema.{k}": v for k, v in ema.items() if ".num_batches_tracked" not in k})
    state.update({f"sampler.{k}": v for k, v in load_file(ckpt / "generator.safetensors").items()})
    state["meta"] = read_json(ckpt / "meta.json")
    return state


# Every stabiliser that draws random numbers or keeps state: DiffAugment and label noise draw from
# the checkpointed noise generator, the EMA is checkpointed, the schedule follows the image count,
# the adaptive augmentation's p and running sum are in each rank's file (resumed between updates:
# 5 steps, updates every 4).
# (Not cosine here: it decays towards train.kimg, which the first half of the split run sets lower.)
STABILISERS = ["augment.policy=color,translation,cutout", "loss.kind=lsgan", "loss.real_label=0.9",
               "loss.label_flip=0.2", "optim.schedule=exp", "optim.half_life_kimg=0.05", "model.num_classes=10", "model.d_spectral=true",
               "augment.adaptive=true", "augment.speed_kimg=0.5", "augment.target=0.2"]


@pytest.mark.parametrize("extra", [[], STABILISERS, ["train.compile=default", "augment.policy=translation,cutout"]],
                         ids=["default", "stabilisers+conditional", "compiled"])
def test_golden_resume_is_bit_identical(tmp_path, extra, request):
    """10 steps straight == 5 steps, stop, resume, 5 more: parameters, BN buffers, Adam state, noise,
    the EMA of G and the sampled generator.

    5 is odd on purpose: with 2 data workers the resumed loader must start at the second worker.
    """
    straight, split = tmp_path / "straight", tmp_path / "split"
    if extra:
        proc = launch(CONFIG, TINY + extra + [f"run.dir={straight}", "train.kimg=0.16"])
    else:  # the plain 10 steps are the shared run's
        straight, proc = request.getfixturevalue("two_process_run")
    assert "world size 2" in proc.stderr
    proc = launch(CONFIG, TINY + extra + [f"run.dir={split}", "train.kimg=0.08"])
    assert "world size 2" in proc.stderr
    proc = launch(CONFIG, TINY + extra + [f"run.dir={split}", "train.kimg=0.16", "resume=auto"])
    assert "resumed from" in proc.stderr and "world size 2" in proc.stderr

    a, b = _final_state(straight), _final_state(split)
    assert a["meta"]["nimg"] == b["meta"]["nimg"] == 160 and a["meta"]["step"] == b["meta"]["step"] == 10
    assert a["meta"]["param_digests"] == b["meta"]["param_digests"]
    assert len(a["meta"]["param_digests"]) == 2 and len(set(a["meta"]["param_digests"])) == 1  # ranks agree
    if "train.compile=default" in extra:
        assert "compiled G and D (torch.compile mode default)" in proc.stderr
    tensors = [k for k in a if k != "meta"]
    assert set(tensors) == {k for k in b if k != "meta"} and len(tensors) > 40
    assert any(k.startswith("ema.") for k in tensors)  # EMA is on by default
    mismatched = [k for k in tensors if not torch.equal(a[k], b[k])]
    assert not mismatched, f"differ after resume: {mismatched[:10]}"
    if "augment.adaptive=true" in extra:  # p moved (LSGAN's early D is sure of the reals) and resumed exactly
        assert "augment0.p" in tensors and 0 < float(a["augment0.p"]) == float(a["augment1.p"]) < 1


def _wait_for(predicate, timeout: float, what: str) -> None:
    t0 = time.time()
    while not predicate():
        if time.time() - t0 > timeout:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.2)


def _ticks(run_dir: Path) -> int:
    stats = run_dir / "stats.jsonl"
    return len(stats.read_text().splitlines()) if stats.is_file() else 0


@pytest.mark.parametrize("how", ["SIGTERM to the launcher", "SIGUSR1 to rank 1 only"])
def test_signal_checkpoints_then_resume_continues(tmp_path, how, capsys):
    run_dir = tmp_path / "run"
    overrides = TINY + [f"run.dir={run_dir}", "train.kimg=100"]
    launcher = subprocess.Popen(launch_cmd(CONFIG, overrides), cwd=REPO, env=env(),
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        _wait_for(lambda: _ticks(run_dir) >= 2, 120, "two ticks of training")
        if how.startswith("SIGTERM"):
            launcher.send_signal(signal.SIGTERM)
        else:
            workers = [p for p in psutil.Process(launcher.pid).children()
                       if p.environ().get("RANK") == "1"]
            assert len(workers) == 1, "expected exactly one rank-1 worker process"
            os.kill(workers[0].pid, signal.SIGUSR1)
        out, _ = launcher.communicate(timeout=120)
    finally:
        if launcher.poll() is None:
            launcher.kill()
    status = read_json(run_dir / "status.json")
    assert status["state"] == "stopped", out[-3000:]
    assert status["world_size"] == 2
    if how.startswith("SIGUSR1"):
        assert launcher.returncode == 0, out[-3000:]  # the whole job exits cleanly
    ckpt = newest_checkpoint(run_dir)
    meta = read_json(ckpt / "meta.json")
    stopped_at = meta["nimg"]
    assert 0 < stopped_at < 100_000 and meta["param_digests"][0] == meta["param_digests"][1]
    assert "stop requested" in out

    # Resume continues from exactly there and runs to the (new) end. In this process: that a resume
    # across ranks replays an uninterrupted run exactly is test_golden_resume_is_bit_identical's.
    target = stopped_at + 64
    assert train_inproc(CONFIG, overrides[:-1] + [f"train.kimg={target / 1000}"]) == 0
    err = capsys.readouterr().err
    assert f"resumed from {ckpt} at kimg {stopped_at / 1000:.3f}" in err
    final = read_json(newest_checkpoint(run_dir) / "meta.json")
    assert final["nimg"] == target and final["step"] == meta["step"] + 4
    assert read_json(run_dir / "status.json")["state"] == "complete"


def test_bf16_autocast_on_two_cpu_processes(tmp_path):
    run_dir = tmp_path / "run"
    proc = launch(CONFIG, TINY + [f"run.dir={run_dir}", "train.kimg=0.064", "train.mixed_precision=bf16"])
    assert "world size 2" in proc.stderr and "mixed precision bf16" in proc.stderr
    meta = read_json(newest_checkpoint(run_dir) / "meta.json")
    assert meta["world_size"] == 2 and meta["param_digests"][0] == meta["param_digests"][1]
    stats = [json.loads(line) for line in (run_dir / "stats.jsonl").read_text().splitlines()]
    assert stats and all(math.isfinite(s["Loss/D"]) and math.isfinite(s["Loss/G"]) for s in stats)


def test_time_budget_ends_the_run_on_every_rank_and_more_time_continues_it(tmp_path, capsys):
    """train.minutes through the real launcher: both ranks stop at the first tick past the budget with a
    final checkpoint, the time is saved in it, a re-run has nothing to do and a larger budget trains on."""
    run_dir = tmp_path / "run"
    overrides = TINY + [f"run.dir={run_dir}", "train.kimg=100", "train.minutes=0.1"]  # 6 s; 100 kimg: hours
    proc = launch(CONFIG, overrides, timeout=300)
    assert "world size 2" in proc.stderr and "time budget spent" in proc.stderr, proc.stderr[-3000:]
    status = read_json(run_dir / "status.json")
    assert status["state"] == "complete" and status["world_size"] == 2
    # status.json's (and the progress bar's) end is where the budget ended the run, not train.kimg.
    assert status["total_kimg"] < 100
    # So is each tick's log line ("kimg  x/END | ... | M of 0.1 min left"), not x/100.000.
    ends = [float(e) for e in re.findall(r"kimg +[0-9.]+/([0-9.]+) \|.* of 0\.1 min left", proc.stderr)]
    assert ends and all(e < 100 for e in ends), proc.stderr[-3000:]
    minutes = [json.loads(line)["Progress/minutes"] for line in (run_dir / "stats.jsonl").read_text().splitlines()]
    assert all(m < 0.1 for m in minutes[:-1]) and minutes[-1] >= 0.1, minutes  # the first tick past it
    ckpt = newest_checkpoint(run_dir)
    meta = read_json(ckpt / "meta.json")
    assert meta["world_size"] == 2 and meta["param_digests"][0] == meta["param_digests"][1]
    assert 6.0 <= meta["train_seconds"] < 60 and 0 < meta["nimg"] < 100_000
    assert meta["nimg"] == round(status["kimg"] * 1000)

    # The same command again: the budget is spent, nothing is trained and nothing is written.
    assert train_inproc(CONFIG, overrides) == 0
    assert "the time budget is spent" in capsys.readouterr().err
    assert newest_checkpoint(run_dir) == ckpt

    # A larger budget continues the run; the time keeps adding up across launches.
    assert train_inproc(CONFIG, overrides[:-1] + ["train.minutes=0.15"]) == 0
    err = capsys.readouterr().err
    assert f"resumed from {ckpt}" in err and "time budget spent" in err
    again = read_json(newest_checkpoint(run_dir) / "meta.json")
    assert again["nimg"] > meta["nimg"] and again["train_seconds"] >= 9.0
