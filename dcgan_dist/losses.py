"""GAN losses on discriminator outputs: non-saturating, hinge, least squares, WGAN-GP.

Every loss takes raw D outputs (logits / critic values), casts them to float32 and returns a
float32 scalar: bf16/fp16 outputs of an autocast forward lose too much accuracy inside log/exp.
The non-saturating loss uses ``binary_cross_entropy_with_logits`` / ``softplus`` rather than
sigmoid + log, which stays finite for large logits.

Targets (nonsaturating, lsgan) are per-sample tensors so that one-sided label smoothing
(real target < 1) and label noise (some targets swapped) are the same code path: see
`d_targets`.
"""

from __future__ import annotations

from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch import Tensor

def d_targets(n_real: int, n_fake: int, real_label: float = 1.0, flip: float = 0.0,
              generator: Optional[torch.Generator] = None, device=None) -> tuple[Tensor, Tensor]:
    """Per-sample D targets: `real_label` for reals (< 1 is one-sided smoothing, Salimans et al. 2016),
    0 for fakes; each target is swapped with probability `flip` (label noise).

    Built on `device` (the generator's device when not given), never on the host: a host-built
    target copied to a GPU every step would make the host wait for the device. Draws from
    `generator` only when `flip > 0`, so runs without label noise use no extra randomness."""
    if not 0.0 < real_label <= 1.0:
        raise ValueError(f"loss.real_label must be in (0, 1], got {real_label!r}")
    if device is None:
        device = generator.device if generator is not None else torch.device("cpu")
    real_t = torch.full((n_real,), float(real_label), device=device)
    fake_t = torch.zeros(n_fake, device=device)
    if flip > 0:
        swap_real = torch.rand(n_real, generator=generator, device=device) < flip
        swap_fake = torch.rand(n_fake, generator=generator, device=device) < flip
        real_t = torch.where(swap_real, 0.0, real_t)
        fake_t = torch.where(swap_fake, float(real_label), fake_t)
    return real_t, fake_t


# ---- discriminator losses: (real outputs, fake outputs, real targets, fake targets) -> scalar ----------

def d_nonsaturating(real: Tensor, fake: Tensor, real_t: Tensor, fake_t: Tensor) -> Tensor:
    """mean BCE(real, real_t) + mean BCE(fake, fake_t): -log D(x) - log(1 - D(G(z))) for targets 1, 0."""
    return (F.binary_cross_entropy_with_logits(real.float(), real_t.float())
            + F.binary_cross_entropy_with_logits(fake.float(), fake_t.float()))


def d_lsgan(real: Tensor, fake: Tensor, real_t: Tensor, fake_t: Tensor) -> Tensor:
    """Least squares (Mao et al., 2017), a=0 b=c=1: 1/2 E[(D(x) - 1)^2] + 1/2 E[D(G(z))^2] for targets 1, 0."""
    return 0.5 * ((real.float() - real_t.float()).pow(2).mean() + (fake.float() - fake_t.float()).pow(2).mean())


def d_hinge(real: Tensor, fake: Tensor, real_t: Tensor = None, fake_t: Tensor = None) -> Tensor:
    """Hinge (Lim & Ye 2017; Miyato et al. 2018): E[relu(1 - D(x))] + E[relu(1 + D(G(z)))]."""
    return F.relu(1.0 - real.float()).mean() + F.relu(1.0 + fake.float()).mean()


def d_wasserstein(real: Tensor, fake: Tensor, real_t: Tensor = None, fake_t: Tensor = None) -> Tensor:
    """Critic loss without its penalty: E[D(G(z))] - E[D(x)] (the penalty is `gradient_penalty`)."""
    return fake.float().mean() - real.float().mean()


# ---- generator losses: fake outputs -> scalar -------------------------------------------------------

def g_nonsaturating(fake: Tensor) -> Tensor:
    """mean softplus(-D(G(z))) == mean BCE(fake, 1) == -E[log D(G(z))]: large gradients early, when
    D confidently rejects the generator's samples."""
    return F.softplus(-fake.float()).mean()


def g_lsgan(fake: Tensor) -> Tensor:
    """1/2 E[(D(G(z)) - 1)^2]."""
    return 0.5 * (fake.float() - 1.0).pow(2).mean()


def g_wasserstein(fake: Tensor) -> Tensor:
    """-E[D(G(z))]: the generator loss of both hinge and WGAN."""
    return -fake.float().mean()


# Keyed by the loss.kind values (LOSSES, which config.validate checks against).
D_LOSSES: dict[str, Callable[..., Tensor]] = {
    "nonsaturating": d_nonsaturating, "lsgan": d_lsgan, "hinge": d_hinge, "wgan-gp": d_wasserstein}
G_LOSSES: dict[str, Callable[[Tensor], Tensor]] = {
    "nonsaturating": g_nonsaturating, "lsgan": g_lsgan, "hinge": g_wasserstein, "wgan-gp": g_wasserstein}
LOSSES = tuple(D_LOSSES)


def gradient_penalty(D: Callable[..., Tensor], real: Tensor, fake: Tensor, labels: Optional[Tensor] = None,
                     generator: Optional[torch.Generator] = None) -> Tensor:
    """WGAN-GP penalty (Gulrajani et al., 2017): E[(||grad_x D(x_hat)||_2 - 1)^2] on random
    interpolates x_hat = e x + (1 - e) G(z), e ~ U[0, 1] per sample, drawn from `generator` on the
    images' device (the rank's noise generator lives on the training device).

    The input gradient is taken with `create_graph=True`, so the penalty's own backward reaches D's
    weights. Under DDP that backward runs through the wrapped D's autograd graph, whose gradient
    hooks all-reduce D's weight gradients like any other loss term (tests/test_losses.py checks it
    with two processes); under DeepSpeed pass the engine's inner module (`engines.graph_module`)."""
    eps = torch.rand(real.shape[0], 1, 1, 1, generator=generator, device=real.device).to(real.dtype)
    x_hat = (eps * real.detach() + (1 - eps) * fake.detach()).requires_grad_(True)
    out = D(x_hat) if labels is None else D(x_hat, labels)
    (grad,) = torch.autograd.grad(out.float().sum(), x_hat, create_graph=True)
    return (grad.float().flatten(1).norm(2, dim=1) - 1.0).pow(2).mean()


def r1_penalty(D: Callable[..., Tensor], real: Tensor, labels: Optional[Tensor] = None) -> Tensor:
    """R1 penalty (Mescheder et al., 2018): E[||grad_x D(x)||_2^2] on the real images D sees (the
    augmented ones under DiffAugment). The caller weights it by loss.r1_gamma / 2. Like
    `gradient_penalty`, a double backward through D (pass `engines.graph_module(D)`)."""
    x = real.detach().requires_grad_(True)
    out = D(x) if labels is None else D(x, labels)
    (grad,) = torch.autograd.grad(out.float().sum(), x, create_graph=True)
    return grad.float().flatten(1).pow(2).sum(1).mean()


# ---- the original non-saturating pair, kept as the simple entry points -----------------------------

def d_loss_nonsaturating(real_logits: Tensor, fake_logits: Tensor, real_label: float = 1.0) -> Tensor:
    """Discriminator loss: mean BCE(real, ``real_label``) + mean BCE(fake, 0), float32 scalar.

    ``real_label < 1`` is one-sided label smoothing: only the real target is softened; the fake
    target stays 0 so D is not rewarded for assigning probability to generator samples.

    Raises:
        ValueError: if ``real_label`` is not in (0, 1].
    """
    real_t, fake_t = d_targets(real_logits.shape[0], fake_logits.shape[0], real_label, device=real_logits.device)
    return d_nonsaturating(real_logits, fake_logits, real_t, fake_t)


def g_loss_nonsaturating(fake_logits: Tensor) -> Tensor:
    """Generator loss: mean softplus(-fake_logits) == mean BCE(fake, 1), float32 scalar."""
    return g_nonsaturating(fake_logits)


__all__ = ["D_LOSSES", "G_LOSSES", "LOSSES", "d_targets", "gradient_penalty", "r1_penalty", "d_nonsaturating", "d_lsgan",
           "d_hinge", "d_wasserstein", "g_nonsaturating", "g_lsgan", "g_wasserstein",
           "d_loss_nonsaturating", "g_loss_nonsaturating"]
