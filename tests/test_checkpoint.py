"""Checkpoints: atomic saves, rotation, resume selection, refusing other architectures; NaN and fp16 guards."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from conftest import TINY, train_inproc
from dcgan_dist import checkpoint, config, step
from dcgan_dist.checkpoint import CheckpointError, Progress
from dcgan_dist.config import ConfigError
from dcgan_dist.config import ModelCfg
from dcgan_dist.models import arch_signature, build_models


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


def test_a_rotation_cut_short_never_leaves_a_checkpoint_that_looks_complete(tmp_path, accelerator, monkeypatch):
    """A kill while rotation deletes the oldest checkpoint: what is left is hidden (not a complete
    checkpoint with files missing, which resume and the integrity check would trip on) and the next
    start-up removes it."""
    from dcgan_dist.checkpoint import store

    tiny_training(accelerator)
    for nimg in (16, 32):
        save(accelerator, tmp_path, nimg, keep=2)
    real_rmtree = store.shutil.rmtree

    def killed_part_way(path, ignore_errors=False):
        path = Path(path)
        if path.name.startswith(".old-") and path.is_dir():
            (path / "optimizer_1.bin").unlink(missing_ok=True)  # one file gone, then the "kill"
            raise KeyboardInterrupt
        real_rmtree(path, ignore_errors=ignore_errors)

    monkeypatch.setattr(store.shutil, "rmtree", killed_part_way)
    with pytest.raises(KeyboardInterrupt):
        save(accelerator, tmp_path, 48, keep=2)
    monkeypatch.setattr(store.shutil, "rmtree", real_rmtree)
    ckpts = tmp_path / checkpoint.CKPT_DIR
    assert [p.name for p in checkpoint.complete_checkpoints(tmp_path)] == ["000000.032", "000000.048"]
    assert (ckpts / ".old-000000.016").is_dir()  # the interrupted deletion, out of sight
    assert [p.name for p in store.clean_partial(tmp_path)] == [".old-000000.016"]
    assert sorted(p.name for p in ckpts.iterdir()) == ["000000.032", "000000.048"]


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


def reporting(monkeypatch, value_at) -> None:
    """Make every training step report Loss/D = value_at(step number from 1) where that is not None:
    what the loop's checks read, while the step itself trains as usual."""
    real_call, calls = step.GANStep.__call__, [0]

    def call(self, *args, **kwargs):
        stats = real_call(self, *args, **kwargs)
        calls[0] += 1
        value = value_at(calls[0])
        if value is None:
            return stats
        stats = stats.clone()
        stats[step.STEP_STATS.index("Loss/D")] = value
        return stats

    monkeypatch.setattr(step.GANStep, "__call__", call)


def test_non_finite_losses_stop_training_without_saving(tmp_path, monkeypatch, capsys):
    """A real run (in-process): checkpoints every 4 steps (2 ticks), Loss/D NaN from step 5 on: the
    tick at step 6 stops the run, exit 1, naming the last checkpoint; nothing after it is saved."""
    run_dir = tmp_path / "run"
    reporting(monkeypatch, lambda n: math.nan if n >= 5 else None)
    rc = train_inproc("configs/quickstart.yaml", TINY + [f"run.dir={run_dir}", "train.kimg=1",
                                                         "checkpoint.every_kimg=0.064"])
    err = capsys.readouterr().err
    assert rc == 1, err[-3000:]
    assert "losses became non-finite between kimg 0.064 and 0.096" in err
    last = run_dir / "checkpoints" / "000000.064"
    assert "Loss/D=nan" in err and f"Nothing after the last checkpoint ({last}) is saved" in err
    assert "resume=auto" in err and "Traceback" not in err
    assert checkpoint.complete_checkpoints(run_dir) == [last]
    status = json.loads((run_dir / "status.json").read_text())
    assert status["state"] == "failed" and "non-finite" in status["error"]


def test_cli_refuses_checkpoint_of_another_architecture(tmp_path, capsys):
    """A real (in-process, single-process) run, then a resume with a wider G: exit 2, a clear message, nothing lost."""
    run_dir = tmp_path / "run"
    base = ["configs/quickstart.yaml", *TINY, "data.workers=1", f"run.dir={run_dir}", "train.kimg=0.032"]
    assert train_inproc(base[0], base[1:]) == 0, capsys.readouterr().err[-3000:]
    ckpts = checkpoint.complete_checkpoints(run_dir)
    assert len(ckpts) == 1

    records = {n: (run_dir / n).read_bytes() for n in ("config.yaml", "status.json")}
    capsys.readouterr()
    assert train_inproc(base[0], base[1:-1] + ["train.kimg=0.064", "model.g_width=16"]) == 2
    err = capsys.readouterr().err
    assert "model.g_width: checkpoint 8 vs config 16" in err and "Traceback" not in err
    assert checkpoint.complete_checkpoints(run_dir) == ckpts
    # A refused start leaves the finished run's records as they were: still complete, its own config.
    assert {n: (run_dir / n).read_bytes() for n in records} == records
    assert json.loads((run_dir / "status.json").read_text())["state"] == "complete"
