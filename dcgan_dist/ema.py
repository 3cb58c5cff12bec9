"""Exponential moving average of the generator's weights (Karras et al.; Yazici et al., 2019).

A GAN's generator oscillates around a good solution; the average of its recent weights sits
closer to it and gives clearly better samples and FID at no training cost. The average is
used for the sample grids, every FID and `generator.safetensors`; training never reads it.

Update after every G step, with the half-life counted in images so it means the same at any
batch size or world size (StyleGAN2-ADA's rule):

    half_life = min(half_life_kimg * 1000, rampup * nimg)      (no cap when rampup == 0)
    beta      = 0.5 ** (batch / half_life)
    ema       = beta * ema + (1 - beta) * G

The ramp-up keeps the early average from remembering the random initial weights.

BatchNorm: the averaged weights do not match G's running statistics, so before the average is
used its statistics are re-estimated from a few batches of fixed noise ("standing statistics",
Brock et al., 2019) — deterministic, so every rank and every resume gets the same numbers.
"""

from __future__ import annotations

import copy
from typing import Optional

import torch
from torch import nn


def ema_beta(batch: int, nimg: int, half_life_kimg: float, rampup: float) -> float:
    """The decay of one update at image count `nimg` (after the step), `batch` images per step."""
    half_life = half_life_kimg * 1000.0
    if rampup > 0:
        half_life = min(half_life, nimg * rampup)
    return 0.5 ** (batch / max(half_life, 1e-8))


class GeneratorEMA(nn.Module):
    """Holds `module`, an fp32 copy of G whose parameters follow G's by `update`."""

    def __init__(self, G: nn.Module, half_life_kimg: float, rampup: float, bn_batches: int = 8,
                 bn_batch_size: int = 64, seed: int = 0):
        super().__init__()
        self.module = copy.deepcopy(G).float().eval().requires_grad_(False)
        self.half_life_kimg, self.rampup = half_life_kimg, rampup
        self.bn_batches, self.bn_batch_size, self.seed = bn_batches, bn_batch_size, seed
        self.has_bn = any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in self.module.modules())

    @torch.no_grad()
    def update(self, G: nn.Module, nimg: int, batch: int) -> float:
        """Move the average towards G's current weights; returns the beta used."""
        beta = ema_beta(batch, nimg, self.half_life_kimg, self.rampup)
        ema_params = list(self.module.parameters())
        params = [p.detach() for p in G.parameters()]
        if len(params) != len(ema_params):
            raise ValueError(f"EMA holds {len(ema_params)} parameters but G has {len(params)}")
        if params[0].dtype != ema_params[0].dtype:  # DeepSpeed bf16/fp16 G: the average stays fp32
            params = [p.to(ema_params[0].dtype) for p in params]
        # One fused multi-tensor op instead of a Python loop of one kernel per tensor (host cost).
        torch._foreach_lerp_(ema_params, params, 1.0 - beta)
        return beta

    @torch.no_grad()
    def recalibrate(self, G: nn.Module) -> nn.Module:
        """Re-estimate BatchNorm statistics of the average (or copy G's when bn_batches is 0); returns it."""
        model = self.module
        if not self.has_bn:
            return model
        if self.bn_batches == 0:
            for b_ema, b in zip(model.buffers(), G.buffers(), strict=True):
                b_ema.copy_(b)
            return model
        bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
        saved = [m.momentum for m in bns]
        for m in bns:
            m.reset_running_stats()
            m.momentum = None  # cumulative average over the calibration batches
        device = next(model.parameters()).device
        gen = torch.Generator().manual_seed(self.seed + 0x5EED)
        n_cls = getattr(model, "num_classes", 0)
        model.train()
        try:
            for _ in range(self.bn_batches):
                z = torch.randn(self.bn_batch_size, model.z_dim, generator=gen).to(device)
                if n_cls:
                    labels = torch.randint(0, n_cls, (self.bn_batch_size,), generator=gen).to(device)
                    model(z, labels)
                else:
                    model(z)
        finally:
            model.eval()
            for m, mom in zip(bns, saved, strict=True):
                m.momentum = mom
        return model


def build_ema(G: nn.Module, cfg, batch_per_rank: int, device: Optional[torch.device] = None) -> Optional[GeneratorEMA]:
    """The EMA configured by `cfg.ema` (None when ema.half_life_kimg is 0), on G's device."""
    e = cfg.ema
    if e.half_life_kimg <= 0:
        return None
    ema = GeneratorEMA(G, e.half_life_kimg, e.rampup, e.bn_batches, max(batch_per_rank, 16), cfg.seed)
    return ema.to(device) if device is not None else ema


__all__ = ["GeneratorEMA", "build_ema", "ema_beta"]
