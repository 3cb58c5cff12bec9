"""The fixed-noise sample grid: the same latents (and classes) for the whole run, so that the
trainer's fakes_<kimg>.png frames show one generator changing, not new noise."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import torch

from .config import Config


def grid_labels(num_classes: int, grid: int) -> tuple[Optional[torch.Tensor], int]:
    """The sample grid's class labels and images per row. Unconditional: None and sqrt(grid). Conditional:
    each class fills whole rows, classes top to bottom (10 classes in 100 images: a row each; 2 classes
    in 64: four rows of 8 each), at least one row per class."""
    cols = max(1, int(math.sqrt(grid)))
    if not num_classes:
        return None, cols
    per_class = max(cols, (grid // num_classes) // cols * cols)
    return torch.arange(num_classes).repeat_interleave(per_class), cols


@dataclass
class SampleGrid:
    z: torch.Tensor  # the grid's latents, from the run's seed
    labels: Optional[torch.Tensor]  # the grid's classes (conditional G): whole rows per class
    row: int  # images per row

    @classmethod
    def from_config(cls, cfg: Config) -> "SampleGrid":
        labels, row = grid_labels(cfg.model.num_classes, cfg.train.sample_grid)
        n = cfg.train.sample_grid if labels is None else len(labels)
        return cls(torch.randn(n, cfg.model.z_dim, generator=torch.Generator().manual_seed(cfg.seed)), labels, row)

    @torch.no_grad()
    def render(self, G: torch.nn.Module, device: torch.device) -> torch.Tensor:
        """G's images of the grid, in eval mode (no BatchNorm statistics change), values in [-1, 1]."""
        was_training = G.training
        G.eval()
        z = self.z.to(device, next(G.parameters()).dtype)
        fakes = G(z) if self.labels is None else G(z, self.labels.to(device))
        G.train(was_training)
        return fakes
