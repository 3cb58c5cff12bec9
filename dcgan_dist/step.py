"""One training step: a D update on real and fake images, then a G update through a frozen D.

Everything a step needs that the config decides — the loss pair, targets with smoothing and
label noise, the gradient penalty, DiffAugment, the EMA of G — is fixed once in `GANStep`, so
the step itself reads as the algorithm. It returns detached statistics (no host sync) that the
loop sums on the device and reduces once per tick.

Written for a GPU, where a 64x64 DCGAN step is far under a millisecond of arithmetic and the host
sets the pace: nothing in the step waits for the device. Every random draw (DiffAugment, label
noise, the penalty's interpolation) comes from the rank's noise generator on the training device,
targets are built there (once, when they do not change), and there is no `.item()`, no `.cpu()`
and no Python branch on a device value. tests/test_sync_free.py proves it on CPU (and under
`torch.cuda.set_sync_debug_mode("error")` where a GPU is present).
"""

from __future__ import annotations

import logging
from typing import Optional

import torch
import torch.nn.functional as F

from . import engines
from .augment import AdaptiveAugment, DiffAugment
from .config import Config, ConfigError, augment_policy
from .ema import GeneratorEMA
from .losses import D_LOSSES, G_LOSSES, d_targets, gradient_penalty, r1_penalty

log = logging.getLogger("dcgan_dist")

# Names of the statistics a step returns, in order (the loop adds Diversity/ratio per tick).
STEP_STATS = ("Loss/D", "Loss/G", "D/real", "D/fake", "Loss/GP", "Diversity/fake", "Diversity/real", "Augment/p")
DIVERSITY_SIDE = 16  # images are average-pooled to at most this side before measuring diversity


def diversity(images: torch.Tensor) -> torch.Tensor:
    """Mean pairwise L2 distance between the (downsampled) images of a batch: a cheap mode-collapse
    signal. A collapsed G draws near-identical images, so its value falls towards 0 while the
    real batches' stays put; the ratio of the two is `Diversity/ratio`."""
    x = images.detach().float()
    if x.shape[-1] > DIVERSITY_SIDE:
        x = F.adaptive_avg_pool2d(x, DIVERSITY_SIDE)
    x = x.flatten(1)
    if x.shape[0] < 2:
        return x.new_zeros(())
    return torch.pdist(x).mean() / x.shape[1] ** 0.5  # per-pixel scale: comparable across resolutions


# train.compile's values (config.validate checks against this list).
COMPILE_MODES = ("off", "default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
# The modes that capture CUDA graphs on a GPU. torch's CUDA-graph trees start a new replay when a
# forward follows a backward, which frees the outputs of the step's first G forward while the G
# update still needs them (D's real and fake passes sit between): on an H200 (torch 2.11) the first
# step fails with "accessing tensor output of CUDAGraphs that has been overwritten by a subsequent
# run". Refused there at start-up instead, with the modes that work.
CUDAGRAPH_MODES = ("reduce-overhead", "max-autotune")


def compiled(accelerator, G, D, mode: str):
    """torch.compile wrappers of the (DDP-wrapped) G and D for train.compile=MODE, or the modules.

    Compiling the DDP module is what torch supports for DDP (its DDPOptimizer splits the graph at
    gradient-bucket boundaries so the all-reduce still overlaps the backward). Shapes are static
    (dynamic=False): the step always sees one batch size. D runs with and without gradients (the G
    step freezes it), so it holds two graphs."""
    if mode == "off":
        return G, D
    if accelerator.device.type == "cuda" and mode in CUDAGRAPH_MODES:
        raise ConfigError(f"train.compile={mode} captures CUDA graphs, which this training step does not support on a "
                          "GPU yet (the G update reuses outputs that a later graph replay overwrites): use "
                          "train.compile=default or max-autotune-no-cudagraphs, or off")
    if engines.is_deepspeed(accelerator):
        raise ConfigError(f"train.compile={mode} is not supported with DeepSpeed engines: use train.compile=off "
                          "or a DDP launch config")
    log.info("compiled G and D (torch.compile mode %s): the first steps of a run include compilation", mode)
    return torch.compile(G, mode=mode, dynamic=False), torch.compile(D, mode=mode, dynamic=False)


class GANStep:
    def __init__(self, cfg: Config, accelerator, G, D, opt_g, opt_d, noise: torch.Generator,
                 ema: Optional[GeneratorEMA] = None):
        self.accelerator, self.G, self.D, self.opt_g, self.opt_d = accelerator, G, D, opt_g, opt_d
        self.noise, self.ema = noise, ema
        loss = cfg.loss
        self.kind = loss.kind
        self.d_loss, self.g_loss = D_LOSSES[loss.kind], G_LOSSES[loss.kind]
        self.real_label, self.flip = loss.real_label, loss.label_flip
        self.gp_weight = loss.gp_weight if loss.kind == "wgan-gp" else 0.0
        self.r1_gamma = loss.r1_gamma
        self.conditional = cfg.model.num_classes > 0
        a = cfg.augment
        self.ada = AdaptiveAugment(a.target, a.speed_kimg, cfg.train.batch, accelerator.device) if a.adaptive else None
        self.augment = DiffAugment(augment_policy(a.policy), a.translation, a.cutout, generator=noise,
                                   p=self.ada.p if self.ada else None)
        # Augment/p: how often an op reaches an image (adaptive: p; else 1 with a policy, 0 without).
        self.p_stat = self.ada.p if self.ada else torch.full((), float(bool(self.augment)), device=accelerator.device)
        self.global_batch = cfg.train.batch
        self._targets: dict = {}  # (n_real, n_fake, device) -> constant targets, when there is no label noise
        # The modules the training forwards run: compiled wrappers when train.compile is on; the
        # penalty's double backward (which compiled graphs do not support), sampling, FID and the
        # checkpoints use the plain modules, whose parameters the wrappers share.
        self.G_plain = accelerator.unwrap_model(G)  # once: unwrap_model checks installed packages per call
        self.G_run, self.D_run = compiled(accelerator, G, D, cfg.train.compile)

    def targets(self, n_real: int, n_fake: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        if self.flip > 0:  # label noise: fresh targets every step, drawn on the device
            return d_targets(n_real, n_fake, self.real_label, self.flip, self.noise, device=device)
        key = (n_real, n_fake, device)
        if key not in self._targets:
            self._targets[key] = d_targets(n_real, n_fake, self.real_label, device=device)
        return self._targets[key]

    def __call__(self, real: torch.Tensor, z: torch.Tensor, labels: Optional[torch.Tensor], nimg_after: int) -> torch.Tensor:
        G, D = self.G_run, self.D_run
        y = labels if self.conditional else None  # fakes are drawn for the real batch's classes
        cond = () if y is None else (y,)

        # D step: two forwards (each batch gets its own BatchNorm statistics), one backward, so DDP
        # reduces D's gradients once for all terms, the gradient penalty included.
        fake = G(z, *cond)
        if self.augment:  # one call for both halves: fresh parameters per sample, half the kernel launches
            real_in, fake_in = self.augment(torch.cat([real, fake.detach()])).split([real.shape[0], fake.shape[0]])
        else:
            real_in, fake_in = real, fake.detach()
        real_out = D(real_in, *cond)
        fake_out = D(fake_in, *cond)
        real_t = fake_t = None
        if self.kind in ("nonsaturating", "lsgan"):
            real_t, fake_t = self.targets(real.shape[0], fake.shape[0], real_out.device)
        loss_d = self.d_loss(real_out, fake_out, real_t, fake_t)
        gp = loss_d.new_zeros(())
        if self.gp_weight > 0:  # double backward: through the plain (not compiled) D
            gp = gradient_penalty(engines.graph_module(self.accelerator, self.D), real_in, fake_in, y, self.noise)
            loss_d = loss_d + self.gp_weight * gp
        if self.r1_gamma > 0:  # the same double backward, on the reals alone
            gp = r1_penalty(engines.graph_module(self.accelerator, self.D), real_in, y)
            loss_d = loss_d + 0.5 * self.r1_gamma * gp
        engines.update(self.accelerator, self.D, self.opt_d, loss_d)
        if self.ada is not None:  # the step's number from the image count: the same grid after a resume
            self.ada.observe(real_out, nimg_after // self.global_batch, self.accelerator)

        # G step through a frozen D: no gradients for D's weights, hence no all-reduce of them.
        self.D.requires_grad_(False)
        loss_g = self.g_loss(D(self.augment(fake), *cond))
        engines.update(self.accelerator, self.G, self.opt_g, loss_g)
        self.D.requires_grad_(True)
        if self.ema is not None:
            self.ema.update(self.G_plain, nimg_after, self.global_batch)

        real_o, fake_o = real_out.detach().float(), fake_out.detach().float()
        if self.kind == "nonsaturating":  # D/real, D/fake: probabilities for BCE, raw outputs otherwise
            real_o, fake_o = torch.sigmoid(real_o), torch.sigmoid(fake_o)
        return torch.stack([loss_d.detach(), loss_g.detach(), real_o.mean(), fake_o.mean(), gp.detach().float(),
                            diversity(fake), diversity(real), self.p_stat.clone()])


__all__ = ["GANStep", "STEP_STATS", "diversity"]
