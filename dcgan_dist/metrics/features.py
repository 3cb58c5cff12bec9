"""Collective helpers for the metrics that need every sample's features (KID, precision/recall).

FID needs only sums, which the ranks add up in one all-reduce. KID and precision/recall need the
features themselves, so each rank's share is gathered onto every rank (`gather_features`); then
each rank computes its part of the O(N^2) work (its KID subsets, its rows of the distance matrix)
and the parts are combined with one small collective (`gather_features` on the per-subset values
or radii, `all_reduce_sum` on the counts). No rank does more than its share; no rank waits on a
rank zero that does everything.

Typical use, in a collective evaluation function (every rank calls it alike):

    real = gather_features(accelerator, local_real)     # (N_real, 2048) on every rank
    fake = gather_features(accelerator, local_fake)
    kid_result = kid(real, fake, seed=seed, accelerator=accelerator)
    pr_result = precision_recall(real, fake, accelerator=accelerator)

Memory per rank of the gathered features (float32, 2048 per sample): N x 2048 x 4 bytes, i.e.
82 MB at 10k and 410 MB at 50k samples per set (164 MB / 819 MB for real and fake together),
plus, during the gather only, one padded share (N / world_size rows) of the set being gathered.
Communication: each rank receives the whole set once, (world_size - 1) / world_size x that size.

`accelerator=None` means one process (nothing is communicated, even inside a distributed job),
as in `evaluation.py`. Collectives run on `accelerator.device` (NCCL needs CUDA tensors; gloo
takes CPU ones), so what comes back lives there.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.distributed as dist
from torch import Tensor

# dtypes a gather can carry; the index travels in the header so that ranks can check they agree
_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16, torch.int64, torch.int32, torch.uint8,
           torch.bool)


def world(accelerator) -> tuple[int, int]:
    """(rank, world size); (0, 1) for accelerator=None."""
    if accelerator is None:
        return 0, 1
    return accelerator.process_index, accelerator.num_processes


def distributed(accelerator) -> bool:
    """Whether to communicate: only with an accelerator of several processes."""
    return (accelerator is not None and accelerator.num_processes > 1 and dist.is_available()
            and dist.is_initialized())


def share(total: int, rank: int, world_size: int) -> tuple[int, int]:
    """The contiguous share [start, stop) of `total` items that `rank` handles; sizes differ by <= 1
    (generated samples and real images are split the same way)."""
    return total * rank // world_size, total * (rank + 1) // world_size


def _comm_device(accelerator, t: Tensor) -> torch.device:
    return accelerator.device if accelerator is not None else t.device


def _all_gather_equal(out: Tensor, inp: Tensor) -> None:
    """All-gather equally sized `inp` into `out` (world_size x inp rows), without an intermediate list."""
    gather_single = getattr(dist, "all_gather_single", None)  # torch >= 2.14; the older name is deprecated there
    if gather_single is not None:
        gather_single(out, inp)
    else:
        dist.all_gather_into_tensor(out, inp)


def gather_features(accelerator, local: Tensor) -> Tensor:
    """Collective: every rank's `local` rows (N_r x ...), concatenated in rank order, on every rank.

    The shares may differ in size (N_r = 0 included): the row counts are all-gathered first, each
    share is padded to the largest, gathered in one all-gather, and the padding is squeezed out in
    place. Ranks must agree on the trailing shape and the dtype (checked on every rank alike, from
    the gathered headers, so all raise together rather than hang). Returns `local` itself when
    nothing is to be communicated. The result is on `accelerator.device`.

    Memory: the gathered set (sum of N_r rows) plus one padded share; for 2048 float32 features,
    410 MB at 50k rows and 82 MB at 10k rows.
    """
    if local.dim() < 1:
        raise ValueError("gather_features needs a tensor with a leading row dimension")
    if not distributed(accelerator):
        return local
    _, world_size = world(accelerator)
    device = _comm_device(accelerator, local)
    local = local.to(device).contiguous()
    rest = tuple(local.shape[1:])
    # [rows, ndim, dtype, *trailing shape padded to 8]; what one rank cannot send travels as -1, so
    # that every rank raises, after this first collective, rather than one raising and the others hanging
    dtype_code = _DTYPES.index(local.dtype) if local.dtype in _DTYPES and len(rest) <= 8 else -1
    header = torch.tensor([local.shape[0], local.dim(), dtype_code, *rest[:8], *([0] * (8 - len(rest[:8])))],
                          dtype=torch.int64, device=device)
    headers = torch.empty(world_size * header.numel(), dtype=torch.int64, device=device)
    _all_gather_equal(headers, header)
    headers = headers.view(world_size, -1).cpu()
    if (headers[:, 2] < 0).any() or not (headers[:, 1:] == headers[0, 1:]).all():
        raise ValueError("gather_features: the ranks' tensors differ in trailing shape or dtype, or one cannot "
                         f"be carried (per rank [rows, ndim, dtype index, *shape]: {headers.tolist()}; "
                         f"dtypes {[str(d) for d in _DTYPES]}, at most 8 trailing dimensions)")
    sizes = [int(n) for n in headers[:, 0]]
    biggest = max(sizes)
    if biggest == 0:
        return local
    padded = local
    if local.shape[0] < biggest:
        padded = torch.cat([local, local.new_zeros((biggest - local.shape[0], *rest))])
    out = local.new_empty((world_size * biggest, *rest))
    _all_gather_equal(out, padded)
    del padded
    offset = 0
    for r, n in enumerate(sizes):  # squeeze the padding out: rank r's rows move down to `offset` <= r * biggest
        src = r * biggest
        if n and src != offset:
            out[offset:offset + n] = out[src:src + n].clone()  # the slices may overlap: copy through a temporary
        offset += n
    return out[:offset]


def broadcast_rows(accelerator, t: Optional[Tensor], shape: tuple[int, ...],
                   dtype: torch.dtype = torch.float32) -> Tensor:
    """Collective: rank zero's `t` (of `shape` and `dtype`; the other ranks pass None) on every rank,
    on `accelerator.device`; `t` itself when nothing is to be communicated. For what only rank zero
    read (a cache file on a disk the other nodes may not see); every rank must know `shape`."""
    if not distributed(accelerator):
        if t is None:
            raise ValueError("broadcast_rows: one process and no tensor")
        return t
    out = t.to(accelerator.device, dtype).contiguous() if t is not None else torch.empty(
        shape, dtype=dtype, device=accelerator.device)
    if tuple(out.shape) != tuple(shape):
        raise ValueError(f"broadcast_rows: rank zero's tensor is {tuple(out.shape)}, the ranks expect {shape}")
    dist.broadcast(out, src=0)
    return out


def all_reduce_sum(accelerator, t: Tensor) -> Tensor:
    """Collective: the sum over ranks of `t` (a new tensor on `accelerator.device`; `t` itself when
    nothing is to be communicated). For counts use an integer dtype: the sum is then exact."""
    if not distributed(accelerator):
        return t
    out = t.to(_comm_device(accelerator, t), copy=True)
    dist.all_reduce(out, op=dist.ReduceOp.SUM)
    return out


def local_rows(total: int, accelerator) -> tuple[int, int]:
    """The rows [start, stop) of a `total`-row computation that this rank does; all of them on one process."""
    rank, world_size = world(accelerator) if distributed(accelerator) else (0, 1)
    return share(total, rank, world_size)


def check_features(name: str, x: Tensor, dim: Optional[int] = None) -> None:
    """A 2-D, finite feature matrix (of `dim` columns when given). Every rank calls this on the same
    gathered set, so all raise alike."""
    if x.dim() != 2:
        raise ValueError(f"{name}: expected a 2-D (samples x features) tensor, got shape {tuple(x.shape)}")
    if dim is not None and x.shape[1] != dim:
        raise ValueError(f"{name}: {x.shape[1]} features per sample, expected {dim}")
    if not x.is_floating_point():
        raise ValueError(f"{name}: expected floating-point features, got {x.dtype}")
    if x.numel() and not torch.isfinite(x).all():
        raise ValueError(f"{name}: the features hold NaN or infinite values")
