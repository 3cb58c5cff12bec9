"""Launched by tests/test_losses.py with 2 CPU processes: is D's gradient under DDP, with the WGAN-GP
penalty in the loss, the all-reduced mean of the per-rank gradients?

Each rank computes the same loss twice: through the DDP-wrapped D (what training does) and through a
plain copy of D (the reference). The wrapped gradients must equal the mean over ranks of the plain
ones, on every rank. Prints one JSON line from rank zero per D normalisation named on the command
line (default: layer).
"""

import copy
import json
import sys

import torch
from accelerate import Accelerator

from dcgan_dist.losses import d_wasserstein, gradient_penalty
from dcgan_dist.models import Discriminator
from dcgan_dist.runtime import shutdown


def loss_of(D, real, fake, seed):
    gp = gradient_penalty(D, real, fake, generator=torch.Generator().manual_seed(seed))
    return d_wasserstein(D(real), D(fake)) + 10.0 * gp, gp


def main():
    acc = Accelerator(cpu=True)
    for norm in sys.argv[1:] or ["layer"]:
        check(acc, norm)
    shutdown(acc)  # leaving without ending the gloo group sometimes aborts a rank at interpreter exit


def check(acc, norm: str) -> None:
    rank, world = acc.process_index, acc.num_processes
    torch.manual_seed(0)
    D = Discriminator(32, 1, 8, norm=norm)
    plain = copy.deepcopy(D)
    wrapped = acc.prepare(D)
    gen = torch.Generator().manual_seed(100 + rank)  # different data on each rank
    real, fake = torch.randn(6, 1, 32, 32, generator=gen), torch.randn(6, 1, 32, 32, generator=gen)

    loss, gp = loss_of(wrapped, real, fake, seed=7 + rank)
    acc.backward(loss)
    reduced = torch.cat([p.grad.flatten() for p in acc.unwrap_model(wrapped).parameters()])

    ref_loss, _ = loss_of(plain, real, fake, seed=7 + rank)
    local = torch.cat([g.flatten() for g in torch.autograd.grad(ref_loss, list(plain.parameters()))])
    no_gp = torch.cat([g.flatten() for g in torch.autograd.grad(d_wasserstein(plain(real), plain(fake)),
                                                                list(plain.parameters()))])
    locals_ = acc.gather(local[None])  # (world, n)
    reduced_all = acc.gather(reduced[None])
    if acc.is_main_process:
        mean = locals_.mean(0)
        print(json.dumps({
            "norm": norm,
            "world_size": world,
            "gp": gp.item(),
            "max_err_vs_mean_of_ranks": (reduced_all - mean).abs().max().item(),
            "ranks_equal": bool(torch.equal(reduced_all[0], reduced_all[1])),
            "rank_grads_differ": (locals_[0] - locals_[1]).abs().max().item(),
            "gp_share_of_grad": ((local - no_gp).norm() / local.norm()).item(),
            "grad_scale": mean.abs().max().item(),
        }), flush=True)
    acc.wait_for_everyone()


if __name__ == "__main__":
    main()
