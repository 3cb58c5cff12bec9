"""Checkpoints: atomic saves, rotation, resume selection, refusing other architectures; NaN and fp16 guards."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState

from conftest import REPO, TINY
from dcgan_dist import checkpoint, config
from dcgan_dist.checkpoint import CheckpointError, Progress
from dcgan_dist.config import ConfigError
from dcgan_dist.config import ModelCfg
from dcgan_dist.models import arch_signature, build_models


@pytest.fixture
def accelerator():
    AcceleratorState._reset_state(True)
    acc = Accelerator(cpu=True)
    yield acc
    AcceleratorState._reset_state(True)


def tiny_training(accelerator):
    torch.manual_seed(0)
    G, D = build_models(ModelCfg(resolution=32, channels=1, z_dim=16, g_width=8, d_width=8))
    opt_g, opt_d = torch.optim.Adam(G.parameters()), torch.optim.Adam(D.parameters())
    return accelerator.prepare(G, D, opt_g, opt_d)


def save(accelerator, run_dir, nimg, keep=3):
    return checkpoint.save(accelerator, run_dir, Progress(nimg, nimg // 16), {"noise": torch.Generator().get_state()},
                           {"arch": {"resolution": 32}}, keep=keep)


def test_names_sort_numerically():
    names = [checkpoint.name_for(n) for n in (64, 1_000, 12_800, 999_999_936)]
    assert names == sorted(names) == ["000000.064", "000001.000", "000012.800", "999999.936"]


def test_save_load_round_trip_and_rotation(tmp_path, accelerator):
    G, D, opt_g, opt_d = tiny_training(accelerator)
    for nimg in (16, 32, 48, 64):
        save(accelerator, tmp_path, nimg, keep=2)
    assert [p.name for p in checkpoint.complete_checkpoints(tmp_path)] == ["000000.048", "000000.064"]
    newest = checkpoint.find_resume(tmp_path, "auto")
    assert newest.name == "000000.064"
    meta = checkpoint.read_meta(newest)
    assert meta["nimg"] == 64 and meta["step"] == 4 and meta["format"] == checkpoint.FORMAT

    before = {k: v.clone() for k, v in accelerator.unwrap_model(G).state_dict().items()}
    with torch.no_grad():
        for p in G.parameters():
            p.add_(1.0)
    progress, rank_state = checkpoint.load(accelerator, newest)
    assert progress == Progress(64, 4) and "noise" in rank_state
    after = accelerator.unwrap_model(G).state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_crash_mid_save_leaves_previous_checkpoint_intact(tmp_path, accelerator, monkeypatch):
    tiny_training(accelerator)
    good = save(accelerator, tmp_path, 16)

    def dies_halfway(output_dir, **_):  # writes part of a checkpoint, then the process "dies"
        (Path(output_dir) / "model.safetensors").write_bytes(b"partial")
        raise KeyboardInterrupt("killed mid-save")

    monkeypatch.setattr(accelerator, "save_state", dies_halfway)
    with pytest.raises(KeyboardInterrupt):
        save(accelerator, tmp_path, 32)
    assert (tmp_path / "checkpoints" / ".tmp-000000.032").is_dir()
    assert not (tmp_path / "checkpoints" / "000000.032").exists()
    assert checkpoint.find_resume(tmp_path, "auto") == good  # the partial save is invisible to resume
    removed = checkpoint.clean_partial(tmp_path)
    assert [p.name for p in removed] == [".tmp-000000.032"]
    assert not (tmp_path / "checkpoints" / ".tmp-000000.032").exists()


def test_directory_without_meta_is_not_a_checkpoint(tmp_path):
    (tmp_path / "checkpoints" / "000001.000").mkdir(parents=True)
    assert checkpoint.find_resume(tmp_path, "auto") is None
    with pytest.raises(CheckpointError, match="not a complete checkpoint"):
        checkpoint.find_resume(tmp_path, str(tmp_path / "checkpoints" / "000001.000"))
    with pytest.raises(CheckpointError, match="no such checkpoint"):
        checkpoint.find_resume(tmp_path, str(tmp_path / "missing"))


def test_resume_none_refuses_to_overwrite_a_run(tmp_path, accelerator):
    tiny_training(accelerator)
    save(accelerator, tmp_path, 16)
    with pytest.raises(CheckpointError, match="resume=auto"):
        checkpoint.find_resume(tmp_path, "none")
    assert checkpoint.find_resume(tmp_path / "fresh", "none") is None


def test_other_architecture_is_refused_with_the_fix():
    arch = arch_signature(ModelCfg(resolution=64, g_width=64))
    with pytest.raises(CheckpointError) as e:
        checkpoint.verify_compatible("ckpt", {"arch": arch_signature(ModelCfg(resolution=32, g_width=32))}, arch)
    msg = str(e.value)
    assert "model.resolution: checkpoint 32 vs config 64" in msg and "model.g_width=32" in msg
    checkpoint.verify_compatible("ckpt", {"arch": dict(arch)}, arch)  # same architecture: fine


def test_fp16_on_cpu_is_refused():
    from dcgan_dist.runtime import make_accelerator

    with pytest.raises(ConfigError, match="fp16 needs a GPU"):
        make_accelerator(config.load(None, ["train.mixed_precision=fp16"]))


def test_non_finite_losses_stop_training_without_saving(tmp_path):
    from dcgan_dist.monitors import TrainingDiverged
    from test_sync_free import build_loop

    loop, _ = build_loop([], run_dir=str(tmp_path))
    loop.progress.nimg = 320
    loop.checkpoints.last = "runs/x/checkpoints/000000.256"
    loop.stats.add(torch.tensor([math.nan, 1.0, 0.5, 0.5, 0.0, 0.3, 0.4, 0.0]))  # STEP_STATS order
    with pytest.raises(TrainingDiverged, match=r"Loss/D=nan.*000000\.256.*resume=auto"):
        loop.report()
    assert checkpoint.complete_checkpoints(tmp_path) == []


def test_cli_refuses_checkpoint_of_another_architecture(tmp_path):
    """A real (single-process) run, then a resume with a wider G: exit 2, a clear message, nothing lost."""
    run_dir = tmp_path / "run"
    base = [sys.executable, "-m", "dcgan_dist.train", "configs/quickstart.yaml", *TINY, "data.workers=1",
            f"run.dir={run_dir}", "train.kimg=0.032"]
    first = subprocess.run(base, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert first.returncode == 0, first.stderr[-3000:]
    ckpts = checkpoint.complete_checkpoints(run_dir)
    assert len(ckpts) == 1

    records = {n: (run_dir / n).read_bytes() for n in ("config.yaml", "status.json")}
    second = subprocess.run(base[:-1] + ["train.kimg=0.064", "model.g_width=16"], cwd=REPO, capture_output=True,
                            text=True, timeout=300)
    assert second.returncode == 2
    assert "model.g_width: checkpoint 8 vs config 16" in second.stderr and "Traceback" not in second.stderr
    assert checkpoint.complete_checkpoints(run_dir) == ckpts
    # A refused start leaves the finished run's records as they were: still complete, its own config.
    assert {n: (run_dir / n).read_bytes() for n in records} == records
    assert json.loads((run_dir / "status.json").read_text())["state"] == "complete"
