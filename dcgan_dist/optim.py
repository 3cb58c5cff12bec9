"""Optimizers for G and D (separate learning rates and betas: TTUR) and learning-rate schedules.

Schedules are functions of the image counter, not of a stateful scheduler object: the rate at
any point follows from `nimg` alone, so resumes, world-size changes and DeepSpeed need nothing
extra in the checkpoint.

    constant  lr
    exp       lr * max(min_lr_ratio, 0.5 ** ((kimg - decay_start_kimg) / half_life_kimg))
    cosine    lr * (min_lr_ratio + (1 - min_lr_ratio) * (1 + cos(pi * t)) / 2),
              t = (kimg - decay_start_kimg) / (train.kimg - decay_start_kimg), clamped to [0, 1]
"""

from __future__ import annotations

import math

import torch

from .config import Config

# optim.schedule's values (config.validate checks against this list).
SCHEDULES = ("constant", "exp", "cosine")


def build_optimizers(cfg: Config, G: torch.nn.Module, D: torch.nn.Module):
    o = cfg.optim
    # fused: one kernel per step for all of a model's tensors (CPU and CUDA), instead of torch's default
    # foreach (CUDA) or a Python loop over every tensor (CPU): 64 vs 182 vs 211 us of host time per
    # step for a small D on this project's CPU, which is most of the step when the device is fast.
    opt_g = torch.optim.Adam(G.parameters(), lr=o.g_lr, betas=(o.g_beta1, o.g_beta2), fused=True)
    opt_d = torch.optim.Adam(D.parameters(), lr=o.d_lr, betas=(o.d_beta1, o.d_beta2), fused=True)
    return opt_g, opt_d


def lr_scale(cfg: Config, nimg: int) -> float:
    """The factor on optim.g_lr and optim.d_lr at image count `nimg`."""
    o = cfg.optim
    kimg = nimg / 1000.0
    if o.schedule == "constant" or kimg <= o.decay_start_kimg:
        return 1.0
    if o.schedule == "exp":
        return max(o.min_lr_ratio, 0.5 ** ((kimg - o.decay_start_kimg) / o.half_life_kimg))
    span = max(cfg.train.kimg - o.decay_start_kimg, 1e-9)
    t = min(1.0, (kimg - o.decay_start_kimg) / span)
    return o.min_lr_ratio + (1.0 - o.min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * t))


def apply_schedule(cfg: Config, opt_g, opt_d, nimg: int) -> None:
    """Set both optimizers' rates for the step about to run (a no-op write for `constant`)."""
    if cfg.optim.schedule == "constant":
        return
    scale = lr_scale(cfg, nimg)
    for opt, base in ((opt_g, cfg.optim.g_lr), (opt_d, cfg.optim.d_lr)):
        for group in opt.param_groups:
            group["lr"] = base * scale


__all__ = ["apply_schedule", "build_optimizers", "lr_scale"]
