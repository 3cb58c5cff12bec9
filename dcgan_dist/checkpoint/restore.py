"""Resuming training: which checkpoint (resume=auto skips damaged ones), whether it fits the
config's architecture, and restoring every rank's state from it."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Optional

import torch

from .. import integrity
from ..layout import CKPT_DIR
from .format import FORMAT, CheckpointError, Progress, complete_checkpoints, read_meta

log = logging.getLogger("dcgan_dist")


def find_resume(run_dir: str | os.PathLike, resume: str) -> Optional[Path]:
    """The checkpoint `resume` asks for: auto -> the newest intact one (or None), none -> None, else that path.

    auto skips damaged checkpoints (files missing, cut short or changed since the save) with a warning
    that names them; a named path that is damaged is refused."""
    existing = complete_checkpoints(run_dir)
    if resume == "auto":
        damaged = []
        for path in reversed(existing):
            wrong = integrity.problem(path, FORMAT)
            if wrong is None:
                if damaged:
                    log.warning("resume=auto: skipping damaged checkpoint(s) %s; resuming from %s, the newest intact one",
                                "; ".join(f"{p} ({w})" for p, w in damaged), path)
                return path
            damaged.append((path, wrong))
        if damaged:
            raise CheckpointError(
                f"every checkpoint in {Path(run_dir) / CKPT_DIR} is damaged: "
                + "; ".join(f"{p.name} ({w})" for p, w in damaged)
                + ". Restore one from a backup, or move them away and start again with resume=none.")
        return None
    if resume == "none":
        if existing:
            raise CheckpointError(
                f"run.dir {run_dir} already holds checkpoints (newest {existing[-1].name}); resume=none would train "
                "from scratch beside them and rotate them away. Use resume=auto to continue, or another run.dir.")
        return None
    path = Path(resume)
    if not path.is_dir():
        raise CheckpointError(f"resume={resume}: no such checkpoint directory")
    read_meta(path)
    wrong = integrity.problem(path, FORMAT)
    if wrong is not None:
        raise CheckpointError(f"resume={resume}: the checkpoint is damaged ({wrong}). Pick another checkpoint of "
                              f"the run, or resume=auto to take the newest intact one.")
    return path


def verify_compatible(path: Path, meta: dict, arch: dict) -> None:
    """Refuse, before loading any tensor, a checkpoint of another architecture."""
    theirs = meta.get("arch", {})
    diff = {k: (theirs.get(k), v) for k, v in arch.items() if theirs.get(k) != v}
    if diff:
        what = ", ".join(f"model.{k}: checkpoint {a!r} vs config {b!r}" for k, (a, b) in diff.items())
        fix = " ".join(f"model.{k}={a}" for k, (a, _) in diff.items())
        raise CheckpointError(f"checkpoint {path} was trained with another architecture ({what}). Resume it with "
                              f"the matching settings ({fix}), or start a new run.dir / resume=none.")


def load(accelerator, path: Path) -> tuple[Progress, Optional[dict]]:
    """Collective: restore models, optimizers, scaler and RNG states; return the progress and this rank's state."""
    meta = read_meta(path)
    accelerator.load_state(str(path))
    rank_file = path / f"dcgan_rank{accelerator.process_index}.pt"
    if rank_file.is_file():
        rank_state = torch.load(rank_file, weights_only=False)
    elif accelerator.process_index < int(meta.get("world_size", 1)):  # the rank existed: its file is lost
        raise CheckpointError(f"{rank_file} is missing: the checkpoint is damaged and cannot resume exactly. Use "
                              "resume=auto to take the newest intact checkpoint.")
    else:  # more ranks than when it was saved: they start from fresh noise (train.resume warns)
        rank_state = None
    # Checkpoints from before train.minutes have no train_seconds: their time starts at 0.
    return Progress(nimg=int(meta["nimg"]), step=int(meta["step"]),
                    seconds=float(meta.get("train_seconds", 0.0))), rank_state
