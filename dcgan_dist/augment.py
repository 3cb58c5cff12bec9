"""DiffAugment (Zhao et al., 2020): differentiable augmentations of every image D sees.

On small sets (a few thousand fruits or faces) D memorises the training images and its
feedback to G collapses. Augmenting only the reals would teach G to produce augmented images;
DiffAugment applies the same family of random transforms to reals and fakes, in the D step and
in the G step, and since each transform is differentiable G still gets gradients through it.

Policies, as in the reference implementation (images in [-1, 1], N x C x H x W):
  color        random brightness (+-0.5), saturation (x0..2), contrast (x0.5..1.5), per sample
  translation  random shift of up to `translation` x side in x and y, zero (mid-grey) filled
  cutout       one zeroed square of `cutout` x side at a random place

Random parameters are drawn on the images' device from a `torch.Generator` on that device (the
rank's noise generator, which checkpoints save), so an augmented run is reproducible and resumes
exactly, and nothing is built on the host: a host-drawn parameter copied to a GPU would make the
host wait for the device, three times per step. Translation and cutout are written as gathers and
comparisons against index grids cached per shape, with no data-dependent shapes.
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

# The names augment.policy accepts (config.validate checks against this list).
POLICIES = ("color", "translation", "cutout")


def _uniform(n: int, gen: Optional[torch.Generator], like: Tensor) -> Tensor:
    return torch.rand(n, 1, 1, 1, generator=gen, device=like.device).to(like.dtype)


def _randint(low: int, high: int, n: int, gen: Optional[torch.Generator], like: Tensor) -> Tensor:
    return torch.randint(low, high, (n, 1, 1), generator=gen, device=like.device)


def color(x: Tensor, gen: Optional[torch.Generator] = None) -> Tensor:
    n = x.shape[0]
    x = x + (_uniform(n, gen, x) - 0.5)  # brightness
    mean = x.mean(dim=1, keepdim=True)
    x = (x - mean) * (_uniform(n, gen, x) * 2) + mean  # saturation (a no-op on gray images)
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    return (x - mean) * (_uniform(n, gen, x) + 0.5) + mean  # contrast


_GRIDS: dict = {}  # (n, h, w, device) -> index grids; a training run uses one or two shapes


def _grids(x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    n, _, h, w = x.shape
    key = (n, h, w, x.device)
    if key not in _GRIDS:
        if len(_GRIDS) > 16:
            _GRIDS.clear()
        _GRIDS[key] = torch.meshgrid(torch.arange(n, device=x.device), torch.arange(h, device=x.device),
                                     torch.arange(w, device=x.device), indexing="ij")
    return _GRIDS[key]


def translation(x: Tensor, ratio: float = 0.125, gen: Optional[torch.Generator] = None) -> Tensor:
    n, _, h, w = x.shape
    sh, sw = int(h * ratio + 0.5), int(w * ratio + 0.5)
    ty = _randint(-sh, sh + 1, n, gen, x)
    tx = _randint(-sw, sw + 1, n, gen, x)
    _, gy, gx = _grids(x)
    c = x.shape[1]
    # Read from a 1-pixel zero border: shifted-out positions clamp onto it. Two gathers (rows, then
    # columns) give exactly the pixels of one 3-D advanced index, and their backward is a plain
    # scatter-add instead of the sorting index_put that advanced indexing differentiates into.
    rows = torch.clamp(gy[:, :, :1] + ty + 1, 0, h + 1)  # n x h x 1
    cols = torch.clamp(gx[:, :1, :] + tx + 1, 0, w + 1)  # n x 1 x w
    padded = F.pad(x, [1, 1, 1, 1])
    x = padded.gather(2, rows.unsqueeze(1).expand(n, c, h, w + 2))
    return x.gather(3, cols.unsqueeze(1).expand(n, c, h, w))


def cutout(x: Tensor, ratio: float = 0.5, gen: Optional[torch.Generator] = None) -> Tensor:
    """Zero a `ratio` x side square centred at a random pixel, clipped at the borders. The square's
    rows are the interval [oy - ch//2, oy - ch//2 + ch - 1] intersected with the image (the
    reference implementation clamps indices onto the border, which zeroes the same pixels), so
    the mask is two interval comparisons: no index_put, no host round trip."""
    n, _, h, w = x.shape
    ch, cw = int(h * ratio + 0.5), int(w * ratio + 0.5)
    oy = _randint(0, h + (1 - ch % 2), n, gen, x).view(n, 1)
    ox = _randint(0, w + (1 - cw % 2), n, gen, x).view(n, 1)
    _, gy, gx = _grids(x)
    ys, xs = gy[0, :, 0].view(1, h), gx[0, 0, :].view(1, w)
    top, left = oy - ch // 2, ox - cw // 2
    in_y = (ys >= top) & (ys < top + ch)  # n x h
    in_x = (xs >= left) & (xs < left + cw)  # n x w
    keep = ~(in_y.unsqueeze(2) & in_x.unsqueeze(1))  # n x h x w
    return x * keep.unsqueeze(1).to(x.dtype)


class DiffAugment:
    """`aug(images)` applies the policy's transforms in order; an empty policy returns the input.

    One object serves the real and the fake path: both run exactly the same code with fresh
    random parameters per sample, as in the paper."""

    def __init__(self, policy: Sequence[str], translation: float = 0.125, cutout: float = 0.5,
                 generator: Optional[torch.Generator] = None, p: Optional[Tensor] = None):
        unknown = [p for p in policy if p not in POLICIES]
        if unknown:
            raise ValueError(f"unknown DiffAugment policy {unknown}; choose from {', '.join(POLICIES)}")
        self.policy = tuple(policy)
        self.translation, self.cutout, self.generator = translation, cutout, generator
        # With `p` (a 0-d tensor on the device, steered by AdaptiveAugment), each op reaches each image
        # with probability p; without it, always. The draws do not depend on p's value.
        self.p = p

    def __bool__(self) -> bool:
        return bool(self.policy)

    def __call__(self, x: Tensor) -> Tensor:
        for p in self.policy:
            if p == "color":
                y = color(x, self.generator)
            elif p == "translation":
                y = translation(x, self.translation, self.generator)
            else:
                y = cutout(x, self.cutout, self.generator)
            x = y if self.p is None else torch.where(_uniform(x.shape[0], self.generator, x) < self.p, y, x)
        return x

    def __repr__(self) -> str:
        return f"DiffAugment({','.join(self.policy) or 'off'})"


class AdaptiveAugment:
    """augment.adaptive: the probability p of every DiffAugment op steered by how sure D is of the
    reals, as StyleGAN2-ADA (Karras et al., 2020) does. The overfitting signal is r = E[sign(D(real))]
    over every rank's last `interval` steps; p moves by sign(r - augment.target) x the images of
    those steps / (augment.speed_kimg x 1000), clamped to [0, 1].

    Everything stays on the device (no host sync): the signs are summed per step, and every
    `interval` steps one small all-reduce (a collective, not a host round trip) feeds the update.
    Its state (p and the running sums) goes into each rank's checkpoint file, and the update falls
    on a grid of steps, not of ticks, so a resumed run steers p exactly as an uninterrupted one."""

    interval = 4  # steps between updates (ADA's default)

    def __init__(self, target: float, speed_kimg: float, global_batch: int, device: torch.device):
        self.target = target
        self.rate = self.interval * global_batch / (speed_kimg * 1000)
        self.global_batch = global_batch
        self.p = torch.zeros((), device=device)
        self.signs = torch.zeros((), dtype=torch.float64, device=device)  # this rank's sum since the last update

    def observe(self, real_out: Tensor, step: int, accelerator) -> None:
        """After step `step` (1-based): add the signs of D's outputs on this step's reals; every
        `interval` steps, update p from every rank's sum (all ranks see the same sum: the same p)."""
        self.signs += real_out.detach().float().sign().sum().to(torch.float64)
        if step % self.interval == 0:
            total = accelerator.reduce(self.signs, reduction="sum") if accelerator.num_processes > 1 else self.signs
            r = total / (self.interval * self.global_batch)  # over the reals of those steps, all ranks (on the device)
            self.p.add_(torch.sign(r - self.target).float() * self.rate).clamp_(0.0, 1.0)
            self.signs.zero_()

    def state_dict(self) -> dict:
        return {"p": self.p.clone(), "signs": self.signs.clone()}

    def load_state_dict(self, state: dict) -> None:
        self.p.copy_(state["p"])
        self.signs.copy_(state["signs"])


__all__ = ["AdaptiveAugment", "DiffAugment", "POLICIES", "color", "cutout", "translation"]
