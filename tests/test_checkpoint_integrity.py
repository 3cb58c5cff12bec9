"""Damaged checkpoints are found and skipped; saves on a full disk fail cleanly; config values
that cannot work are refused up front; exploding losses stop a run."""

from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import uuid

import pytest
import torch

from conftest import TINY, train_inproc
from dcgan_dist import checkpoint, config, integrity
from dcgan_dist.checkpoint import CheckpointError, Progress
from dcgan_dist.config import ConfigError
from test_checkpoint import reporting, save, tiny_training


def _three(tmp_path, accelerator):
    tiny_training(accelerator)
    return [save(accelerator, tmp_path, n) for n in (16, 32, 48)]


def test_meta_records_every_file_with_size_and_digest(tmp_path, accelerator):
    newest = _three(tmp_path, accelerator)[-1]
    records = checkpoint.read_meta(newest)["files"]
    on_disk = {p.relative_to(newest).as_posix() for p in newest.rglob("*") if p.is_file()} - {"meta.json"}
    assert set(records) == on_disk and {"model.safetensors", "dcgan_rank0.pt"} <= on_disk
    for rel, rec in records.items():
        assert rec["size"] == (newest / rel).stat().st_size and rec["sha256"] == integrity.sha256(newest / rel)
    assert integrity.problem(newest, checkpoint.FORMAT) is None


@pytest.mark.parametrize("damage", ["truncate model", "flip a byte", "cut meta.json", "delete rank file"])
def test_resume_auto_skips_a_damaged_newest_checkpoint(tmp_path, accelerator, caplog, damage):
    older, newest = _three(tmp_path, accelerator)[1:]
    model = newest / "model.safetensors"
    if damage == "truncate model":
        os.truncate(model, model.stat().st_size // 2)
    elif damage == "flip a byte":  # same size: only the digest can tell
        data = bytearray(model.read_bytes())
        data[len(data) // 2] ^= 0xFF
        model.write_bytes(bytes(data))
    elif damage == "cut meta.json":
        os.truncate(newest / "meta.json", 40)
    else:
        (newest / "dcgan_rank0.pt").unlink()
    with caplog.at_level(logging.WARNING, logger="dcgan_dist"):
        assert checkpoint.find_resume(tmp_path, "auto") == older
    warning = caplog.text
    assert "skipping damaged" in warning and str(newest) in warning and str(older) in warning
    expected = {"truncate model": "model.safetensors is", "flip a byte": "model.safetensors does not match",
                "cut meta.json": "meta.json is unreadable", "delete rank file": "missing dcgan_rank0.pt"}[damage]
    assert expected in warning
    with pytest.raises(CheckpointError, match="damaged"):  # named explicitly: refused, not silently replaced
        checkpoint.find_resume(tmp_path, str(newest))


def test_every_checkpoint_damaged_is_an_error_not_a_fresh_start(tmp_path, accelerator):
    for path in _three(tmp_path, accelerator):
        os.truncate(path / "model.safetensors", 10)
    with pytest.raises(CheckpointError, match="every checkpoint in .* is damaged.*resume=none"):
        checkpoint.find_resume(tmp_path, "auto")


def test_missing_rank_file_of_a_saved_rank_is_refused_at_load(tmp_path, accelerator):
    newest = _three(tmp_path, accelerator)[-1]
    (newest / "dcgan_rank0.pt").unlink()
    with pytest.raises(CheckpointError, match="dcgan_rank0.pt is missing"):
        checkpoint.load(accelerator, newest)


@pytest.fixture
def small_disk(tmp_path):
    """A real small filesystem (tmpfs), to fill for real; needs root."""
    where = tmp_path / f"disk-{uuid.uuid4().hex[:6]}"
    where.mkdir()

    def mount(size: int):
        if os.geteuid() != 0:
            pytest.skip("mounting a small tmpfs needs root")
        if subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)],
                          capture_output=True).returncode != 0:
            pytest.skip("cannot mount a tmpfs here")
        return where

    yield mount
    subprocess.run(["umount", "-l", str(where)], capture_output=True)


def test_save_on_a_full_disk_fails_cleanly_and_keeps_older_checkpoints(tmp_path, accelerator, small_disk):
    tiny_training(accelerator)
    size = integrity.size_of(save(accelerator, tmp_path / "probe", 16))
    disk = small_disk(int(size * 2.5))
    first = save(accelerator, disk, 16)
    (disk / "filler").write_bytes(b"\0" * (integrity.free_bytes(disk) - size - 4096))  # bytes fit, blocks do not
    with pytest.raises(CheckpointError) as e:
        save(accelerator, disk, 32)
    msg = str(e.value)
    assert f"cannot save checkpoint {disk / 'checkpoints' / '000000.032'}" in msg or "not enough disk space" in msg
    assert "free" in msg and str(disk / "checkpoints") in msg
    assert not list((disk / "checkpoints").glob(".tmp-*"))  # the partial save is gone
    assert checkpoint.complete_checkpoints(disk) == [first] and integrity.problem(first, checkpoint.FORMAT) is None


def test_a_disk_too_small_for_the_next_checkpoint_is_refused_or_made_room_on(tmp_path, accelerator, small_disk):
    tiny_training(accelerator)
    size = integrity.size_of(save(accelerator, tmp_path / "probe", 16))
    disk = small_disk(int(size * 2.6))
    kept = [save(accelerator, disk, 16), save(accelerator, disk, 32)]
    with pytest.raises(CheckpointError, match=r"not enough disk space .* checkpoint.make_room=true") as e:
        save(accelerator, disk, 48)
    assert "Nothing was written" in str(e.value)
    assert checkpoint.complete_checkpoints(disk) == kept  # untouched
    third = checkpoint.save(accelerator, disk, Progress(48, 3), {"noise": torch.Generator().get_state()},
                            {"arch": {}}, keep=3, make_room=True)
    assert checkpoint.complete_checkpoints(disk) == [kept[1], third]  # the oldest went first


@pytest.mark.parametrize("override, key", [("model.resolution=50", "model.resolution=50"),
                                           ("optim.g_lr=inf", "optim.g_lr"), ("loss.real_label=nan", "loss.real_label"),
                                           ("train.kimg=-inf", "train.kimg")])
def test_values_that_cannot_work_fail_validation(override, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        config.load(None, [override])


def test_exploding_finite_losses_stop_the_run(tmp_path, monkeypatch, capsys):
    """A real run (in-process), 2 steps a tick, train.loss_limit_ticks=2: Loss/D of 3e22 (finite, absurd)
    in ticks 1, 3 and 4. One tick above the limit is a spike, allowed; tick 2 is normal and resets the
    count; the run stops at tick 4, the second in a row, with exit 1 and nothing saved."""
    run_dir = tmp_path / "run"
    reporting(monkeypatch, lambda n: 3e22 if (n - 1) // 2 in (0, 2, 3) else None)
    rc = train_inproc("configs/quickstart.yaml", TINY + [f"run.dir={run_dir}", "train.kimg=1",
                                                         "train.loss_limit_ticks=2"])
    err = capsys.readouterr().err
    assert rc == 1, err[-3000:]
    assert re.search(r"exploded.*train\.loss_limit=10000 for 2 ticks in a row, up to kimg 0\.128.*optim\.g_lr", err), \
        err[-3000:]
    assert "Nothing after the last checkpoint (none yet) is saved" in err
    assert checkpoint.complete_checkpoints(run_dir) == []
    assert json.loads((run_dir / "status.json").read_text())["state"] == "failed"
