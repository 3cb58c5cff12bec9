"""Writing a checkpoint: atomically, collectively, with the disk checked first.

Every rank writes into `checkpoints/.tmp-<kimg>/`; only after all ranks are done does rank zero
write `meta.json`, flush everything to disk and rename the directory into place. A crash mid-save
leaves a `.tmp-*` directory, which resume ignores and the next run deletes; a directory with a
plain `<kimg>` name therefore always held a complete checkpoint when it was written; what happens
to it later (a failed copy, a full disk, bit rot) is caught by the file records (integrity.py).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from pathlib import Path
from typing import Any, Optional

import torch
from safetensors import SafetensorError
from safetensors.torch import save_file

from .. import integrity, runtime
from ..layout import CKPT_DIR, GENERATOR, META
from .format import FORMAT, CheckpointError, Progress, complete_checkpoints, name_for

log = logging.getLogger("dcgan_dist")


def _fsync_tree(root: Path) -> None:
    for dirpath, _, files in os.walk(root):
        for f in files:
            fd = os.open(os.path.join(dirpath, f), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
    _fsync_dir(root)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def clean_partial(run_dir: str | os.PathLike) -> list[Path]:
    """Delete leftovers of interrupted saves (rank zero, at start-up). Returns what was removed."""
    root = Path(run_dir) / CKPT_DIR
    stale = [*root.glob(".tmp-*"), *root.glob(".old-*")]
    for p in stale:
        shutil.rmtree(p, ignore_errors=True)
    return stale


def remove(checkpoint: Path) -> None:
    """Delete a checkpoint so that a kill part-way never leaves a half-deleted one that still looks
    complete (meta.json beside missing files): first renamed out of sight (one atomic rename; the
    next start-up's clean_partial finishes a deletion that was cut short), then deleted."""
    hidden = checkpoint.with_name(f".old-{checkpoint.name}")
    shutil.rmtree(hidden, ignore_errors=True)  # a leftover of an earlier cut-short deletion
    os.replace(checkpoint, hidden)
    shutil.rmtree(hidden, ignore_errors=True)


# torch.save reports a full disk as RuntimeError ("file write failed"), safetensors as its own error.
WRITE_ERRORS = (OSError, RuntimeError, SafetensorError)


def save(accelerator, run_dir: str | os.PathLike, progress: Progress, rank_state: dict, meta: dict[str, Any],
         keep: int, generator: Optional[torch.nn.Module] = None, name: Optional[str] = None,
         make_room: bool = False) -> Path:
    """Collective: every rank must call it at the same point. Returns the final directory.

    `name` (e.g. "best") saves beside the rotation: resume=auto and `keep` only see <kimg> names.

    `generator` (the unwrapped G) is also written as `generator.safetensors`, the same under DDP and
    DeepSpeed, so sampling and evaluation never need the training backend's file layout.

    A save that cannot complete (disk full, permissions, I/O error) raises the same CheckpointError
    on every rank, naming the directory, the space needed and free; the partial save is removed and
    older checkpoints are untouched. Each phase ends in an agreement instead of a barrier, so a rank
    that failed never leaves the others waiting."""
    root = Path(run_dir) / CKPT_DIR
    final = root / (name or name_for(progress.nimg))
    tmp = root / f".tmp-{final.name}"
    needed = [0]

    def phase(fn, only_main: bool):
        try:
            return runtime.agree(accelerator, fn, WRITE_ERRORS, only_main=only_main)
        except CheckpointError:
            raise
        except WRITE_ERRORS as e:
            if accelerator.is_main_process:
                shutil.rmtree(tmp, ignore_errors=True)
            raise CheckpointError(_write_failure(root, final, e, needed[0])) from None

    def start() -> int:
        root.mkdir(parents=True, exist_ok=True)
        needed[0] = expected_size(root, accelerator)
        if name is None:
            ensure_space(root, needed[0], make_room)
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        return needed[0]

    needed[0] = phase(start, only_main=True)  # every rank's error message can then name the size

    def write_rank_files() -> None:
        accelerator.save_state(str(tmp))
        torch.save(rank_state, tmp / f"dcgan_rank{accelerator.process_index}.pt")

    phase(write_rank_files, only_main=False)

    def finish() -> None:
        if generator is not None:
            save_file({k: v.detach().float().cpu().contiguous() for k, v in generator.state_dict().items()},
                      str(tmp / GENERATOR))
        full_meta = {"format": FORMAT, "nimg": progress.nimg, "kimg": progress.nimg / 1000, "step": progress.step,
                     "train_seconds": progress.seconds,  # unrounded: rounding could put a spent budget under it
                     "saved_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"), **meta,
                     "files": integrity.file_records(tmp)}  # every rank's files: all are written by now
        (tmp / META).write_text(json.dumps(full_meta, indent=2) + "\n")
        _fsync_tree(tmp)
        if final.exists():  # saving the same kimg again (e.g. a stop right after a save): swap, then drop
            old = root / f".old-{final.name}"
            shutil.rmtree(old, ignore_errors=True)
            os.replace(final, old)
            os.replace(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, final)
        _fsync_dir(root)
        for stale in (complete_checkpoints(run_dir)[:-keep] if name is None else []):
            remove(stale)

    phase(finish, only_main=True)
    return final


def expected_size(root: Path, accelerator) -> int:
    """Bytes the next checkpoint will take: the newest one's size, or before the first a lower bound,
    3x the models' parameter bytes (weights and Adam's two moments; EMA and generator file add more)."""
    existing = complete_checkpoints(root.parent)
    if existing:
        return integrity.size_of(existing[-1])
    return 3 * sum(p.numel() * p.element_size() for m in accelerator._models for p in m.parameters())


def ensure_space(root: Path, needed: int, make_room: bool) -> None:
    """Before a save: refuse (or, with checkpoint.make_room, delete the oldest kept checkpoints) when the
    disk clearly cannot hold one more; rotation alone frees space only after a save succeeded."""
    free = integrity.free_bytes(root)
    existing = complete_checkpoints(root.parent)
    while make_room and free < needed and len(existing) > 1:
        oldest = existing.pop(0)
        log.warning("checkpoint.make_room: deleting the oldest checkpoint %s to make room (%s free, the next "
                    "checkpoint needs about %s)", oldest, integrity.human(free), integrity.human(needed))
        remove(oldest)
        free = integrity.free_bytes(root)
    if free < needed:
        newest = existing[-1] if existing else "none"
        raise CheckpointError(
            f"not enough disk space for the next checkpoint in {root}: it needs about {integrity.human(needed)}, "
            f"{integrity.human(free)} is free. Nothing was written; the newest checkpoint is {newest}. Free space "
            "there (or lower checkpoint.keep, set checkpoint.make_room=true to delete the oldest kept checkpoints "
            "before a save, or move run.dir to a larger disk), then run the same command again (resume=auto).")


def _write_failure(root: Path, final: Path, error: BaseException, needed: int) -> str:
    try:
        free = integrity.human(integrity.free_bytes(root))
    except OSError:
        free = "unknown"
    existing = complete_checkpoints(root.parent)
    return (f"cannot save checkpoint {final}: {error}. It needs about {integrity.human(needed)}; {free} is free in "
            f"{root}. The partial save was removed and older checkpoints are untouched (newest: "
            f"{existing[-1] if existing else 'none'}). Fix the disk (free space, permissions), then run the same "
            "command again: resume=auto continues from the newest checkpoint.")
