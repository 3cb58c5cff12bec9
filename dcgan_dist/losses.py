"""Non-saturating GAN losses on discriminator logits.

Logits are cast to float32 and the loss is taken with
``binary_cross_entropy_with_logits`` / ``softplus`` rather than sigmoid + log:
that form stays finite for large logits and is not computed in bf16/fp16 when
the forward pass ran under autocast.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def d_loss_nonsaturating(real_logits: Tensor, fake_logits: Tensor, real_label: float = 1.0) -> Tensor:
    """Discriminator loss: mean BCE(real, ``real_label``) + mean BCE(fake, 0), float32 scalar.

    ``real_label < 1`` is one-sided label smoothing (Salimans et al., 2016):
    only the real target is softened; the fake target stays 0 so D is not
    rewarded for assigning probability to generator samples.

    Raises:
        ValueError: if ``real_label`` is not in (0, 1].
    """
    if not 0.0 < real_label <= 1.0:
        raise ValueError(f"loss.real_label must be in (0, 1], got {real_label!r}")
    # Half-precision logits lose too much accuracy inside log/exp. Autocast keeps
    # both loss ops in float32 (CPU and CUDA policies), so the cast sticks.
    real = real_logits.float()
    fake = fake_logits.float()
    real_term = F.binary_cross_entropy_with_logits(real, torch.full_like(real, real_label))
    fake_term = F.binary_cross_entropy_with_logits(fake, torch.zeros_like(fake))
    return real_term + fake_term


def g_loss_nonsaturating(fake_logits: Tensor) -> Tensor:
    """Generator loss: mean softplus(-fake_logits) == mean BCE(fake, 1), float32 scalar.

    The non-saturating form (maximise log D(G(z))) keeps gradients large early
    in training, when D confidently rejects the generator's samples.
    """
    return F.softplus(-fake_logits.float()).mean()


__all__ = ["d_loss_nonsaturating", "g_loss_nonsaturating"]
