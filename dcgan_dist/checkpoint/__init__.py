"""Checkpoints: save (atomic, every rank), find the newest complete one, verify, load, rotate.

A checkpoint is `RUN/checkpoints/<kimg>/` (e.g. `000012.800/`) holding what
`accelerator.save_state` writes (both models, both optimizers, the grad scaler, each rank's RNG
states, and the EMA of G as `custom_checkpoint_0.pkl` when enabled) plus one `dcgan_rank<r>.pt`
per rank (its noise generator), `generator.safetensors` (the generator to sample from — the EMA
when enabled, else G — alone, for sampling and evaluation) and `meta.json` (image counter, data
position, architecture, config, a digest of each rank's parameters, and the size and SHA-256 of
every other file: see integrity.py). `RUN/checkpoints/best/` is the same for the lowest FID.

    format.py    names, meta.json, the training position, CheckpointError
    store.py     the atomic collective save, with the disk checked first
    restore.py   which checkpoint to resume, whether it fits, restoring every rank
    open.py      a checkpoint's generator and config, for evaluate and sample
    manager.py   the training loop's view: meta, rotation, best/, the ranks' digests
"""

from ..layout import BEST, CKPT_DIR, GENERATOR, META
from .format import FORMAT, CheckpointError, Progress, complete_checkpoints, name_for, params_digest, read_meta
from .manager import CheckpointManager
from .open import OpenedCheckpoint, config_from_meta, find_checkpoint, load_generator, open_checkpoint
from .restore import find_resume, load, verify_compatible
from .store import WRITE_ERRORS, clean_partial, ensure_space, expected_size, save

__all__ = [
    "BEST", "CKPT_DIR", "FORMAT", "GENERATOR", "META", "WRITE_ERRORS", "CheckpointError", "CheckpointManager",
    "OpenedCheckpoint", "Progress", "clean_partial", "complete_checkpoints", "config_from_meta", "ensure_space",
    "expected_size", "find_checkpoint", "find_resume", "load", "load_generator", "name_for", "open_checkpoint",
    "params_digest", "read_meta", "save", "verify_compatible",
]
