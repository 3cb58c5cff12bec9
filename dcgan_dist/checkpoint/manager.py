"""The run's checkpoints as the training loop sees them: what each meta.json records, the rotation,
`best/` (the lowest FID so far, kept beside the rotation and across resumes) and the check that
every rank holds the same parameters."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Optional

from accelerate.utils import gather_object

from .. import config
from ..config import Config
from ..layout import BEST, CKPT_DIR, META
from .format import Progress, params_digest
from .store import save

log = logging.getLogger("dcgan_dist")


class CheckpointManager:
    def __init__(self, cfg: Config, accelerator, arch: dict, generator_kind: str):
        self.accelerator = accelerator
        self.run_dir = Path(cfg.run.dir)
        self.keep, self.make_room = cfg.checkpoint.keep, cfg.checkpoint.make_room
        # Stored in every checkpoint: what a resume must match (arch) or warns about (the data layout).
        self.meta = {"arch": arch, "config": config.to_dict(cfg), "workers": max(1, cfg.data.workers),
                     "batch": cfg.train.batch, "generator": generator_kind}
        self.last: Optional[str] = None  # the newest checkpoint of the rotation this run saved
        best = self.run_dir / CKPT_DIR / BEST / META
        self.best_fid: Optional[float] = json.loads(best.read_text()).get("fid") if best.is_file() else None

    def save(self, progress: Progress, rank_state: dict, G, D, generator, name: Optional[str] = None,
             extra: Optional[dict] = None) -> Path:
        """Collective. `rank_state` is this rank's own state (its noise generator, ...). Also proves the
        ranks agree: each rank's parameter digest goes into meta.json."""
        digests = gather_object([params_digest(G, D)])
        if len(set(digests)) > 1:
            log.error("ranks hold different parameters at kimg %.3f (digests %s): the processes are not "
                      "training in sync", progress.nimg / 1000, digests)
        meta = {**self.meta, "world_size": self.accelerator.num_processes, "param_digests": digests, **(extra or {})}
        path = save(self.accelerator, self.run_dir, progress, rank_state, meta, keep=self.keep,
                    generator=generator, name=name, make_room=self.make_room)
        if name is None:
            self.last = str(path)
            log.info("checkpoint %s", path)
        else:
            log.info("checkpoint %s (%s)", path, ", ".join(f"{k} {v:.4g}" for k, v in (extra or {}).items()))
        return path

    def is_best(self, fid: float) -> bool:
        """Whether `fid` beats every earlier evaluation of the run (every rank has the same number)."""
        return self.best_fid is None or fid < self.best_fid

    def save_best(self, progress: Progress, rank_state: dict, G, D, generator, fid: float, num: int) -> Path:
        """Collective: checkpoints/best/, beside the rotation (resume=auto and checkpoint.keep ignore it)."""
        self.best_fid = fid
        return self.save(progress, rank_state, G, D, generator, name=BEST, extra={"fid": fid, "fid_num": num})
