"""What a checkpoint is: its directory names, its meta.json, its error type and the training position."""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import UserError
from ..layout import CKPT_DIR, META

FORMAT = "dcgan-dist-checkpoint/1"
_NAME = re.compile(r"^\d{6}\.\d{3}$")


class CheckpointError(UserError, RuntimeError):
    """A checkpoint that cannot be used, with a message that says why and what to do."""


@dataclass
class Progress:
    """The training position: images shown to D (all ranks) and optimizer steps taken."""

    nimg: int = 0
    step: int = 0  # == batches each rank has consumed: the data position
    seconds: float = 0.0  # training time so far, summed over launches (train.minutes counts it)


def name_for(nimg: int) -> str:
    """Directory name of the checkpoint at `nimg` images: kimg, zero-padded, sortable."""
    return f"{nimg / 1000:010.3f}"


def complete_checkpoints(run_dir: str | os.PathLike) -> list[Path]:
    """Complete checkpoints of a run, oldest first."""
    root = Path(run_dir) / CKPT_DIR
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if _NAME.match(p.name) and (p / META).is_file()]
    return sorted(found, key=lambda p: float(p.name))


def read_meta(path: str | os.PathLike) -> dict:
    meta_path = Path(path) / META
    if not meta_path.is_file():
        raise CheckpointError(f"{path} is not a complete checkpoint (no {META}); an interrupted save leaves such "
                              "directories. Use resume=auto to pick the newest complete one.")
    try:
        meta = json.loads(meta_path.read_text())
    except ValueError as e:
        raise CheckpointError(f"{meta_path} is unreadable ({e}): the checkpoint is damaged. Use resume=auto to take "
                              "the newest intact checkpoint, or pick another one.") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise CheckpointError(f"{path}: unknown checkpoint format {meta.get('format')!r} (expected {FORMAT})")
    return meta


def params_digest(*modules: torch.nn.Module) -> str:
    """SHA-256 of the modules' parameters (not buffers: BatchNorm statistics differ across ranks by design)."""
    h = hashlib.sha256()
    for module in modules:
        for name, p in module.named_parameters():
            h.update(name.encode())
            h.update(p.detach().float().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()
