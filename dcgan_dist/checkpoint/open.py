"""Opening a checkpoint to use its generator (evaluate, sample): the directory a target names, the
training config stored in its meta.json, and the generator rebuilt from that config."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException
from safetensors import SafetensorError
from safetensors.torch import load_file

from ..config import Config
from ..layout import CKPT_DIR, GENERATOR, META
from ..models import Generator, build_generator
from .format import CheckpointError, complete_checkpoints, read_meta

# Checkpoints written before generator.safetensors existed hold G as the first prepared model.
_OLD_GENERATOR = "model.safetensors"


@dataclass
class OpenedCheckpoint:
    path: Path
    meta: dict
    cfg: Config  # the training config stored in meta.json


def find_checkpoint(target: str | Path) -> Path:
    """The checkpoint directory itself, or the newest complete checkpoint of a run directory."""
    path = Path(target)
    if (path / META).is_file():
        return path
    found = complete_checkpoints(path)
    if not found:
        raise CheckpointError(f"{target}: neither a checkpoint (no {META}) nor a run directory with "
                              f"complete checkpoints under {path / CKPT_DIR}")
    return found[-1]


def config_from_meta(ckpt: Path, meta: dict) -> Config:
    """The training config stored in meta.json ("config"), checked against today's schema."""
    if "config" not in meta:
        raise CheckpointError(f"{ckpt / META} holds no 'config': it was not written by dcgan_dist.train")
    stored = {k: v for k, v in meta["config"].items() if k in Config.__dataclass_fields__}
    try:
        return OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(Config), stored))  # type: ignore[return-value]
    except OmegaConfBaseException as e:
        raise CheckpointError(f"the config in {ckpt / META} does not fit this version's schema: "
                              f"{str(e).splitlines()[0]}") from None


def open_checkpoint(target: str | Path) -> OpenedCheckpoint:
    """The checkpoint a run or checkpoint directory names, its meta.json and its training config."""
    path = find_checkpoint(target)
    meta = read_meta(path)
    return OpenedCheckpoint(path, meta, config_from_meta(path, meta))


def load_generator(ckpt: OpenedCheckpoint, device: torch.device) -> tuple[Generator, Path]:
    """G rebuilt from the checkpoint's config and loaded from `generator.safetensors` (G alone, the
    same under DDP and DeepSpeed), in eval mode on `device`; and the weights file it came from."""
    path = ckpt.path
    weights = next((path / n for n in (GENERATOR, _OLD_GENERATOR) if (path / n).is_file()), None)
    if weights is None:
        raise CheckpointError(f"{path} has neither {GENERATOR} nor {_OLD_GENERATOR} (the generator's weights); it "
                              "is not a dcgan_dist.train checkpoint or it was damaged")
    G = build_generator(ckpt.cfg.model)
    try:
        state = load_file(str(weights))
    except SafetensorError as e:
        raise CheckpointError(f"{weights} is damaged and cannot be read ({e}); use an older checkpoint of the run: "
                              f"pass RUN/{CKPT_DIR}/<kimg> instead") from None
    try:
        G.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise CheckpointError(f"{weights} does not fit the generator of its config's model section: "
                              f"{str(e).splitlines()[0]}") from None
    return G.to(device).eval(), weights
