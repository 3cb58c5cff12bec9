"""Improved precision and recall (Kynkaanniemi et al. 2019), with StyleGAN2-ADA's semantics.

Each set of features is a manifold estimate: the union of balls, one per sample, of radius the
distance to its k-th nearest neighbour within the set (k = 3; the sample itself, at distance 0,
does not count: the radius is the (k+1)-th smallest distance to the set including the sample).

    precision = fraction of generated samples inside at least one real sample's ball
    recall    = fraction of real samples inside at least one generated sample's ball

"Inside" is `distance <= radius` (a point on the sphere is in). As in StyleGAN2-ADA's
`metrics/precision_recall.py`: duplicates within a set count as neighbours (so a sample with k
exact duplicates has radius 0), the balls are closed, and precision is computed with the real
manifold and the generated probes, recall the other way round. StyleGAN2-ADA uses VGG16 features
stored in float16; this module takes whatever features it is given (Inception pool3 here), so the
numbers are not comparable with StyleGAN's pr50k3 ones.

Distances: squared Euclidean distances |a|^2 + |b|^2 - 2 a.b in float64 by default. The Gram trick
in float32 loses ~eps32 x |a|^2 in absolute terms (Inception features have |a|^2 ~ 10^2 - 10^3,
comparable to the squared neighbour distances), so membership near a ball's surface is decided by
rounding, and on Ampere or later GPUs TF32 matmuls (10-bit mantissa) would make that ~1e-3
relative; float64 makes the comparison exact up to ~1e-13, ties of exactly representable inputs
exact, and the result independent of how the rows are blocked or split across ranks.
`dtype=torch.float32` is offered for GPUs with slow float64 (consumer cards: 1/64 rate); it runs
with TF32 off. Squared radii are compared with squared distances: no square roots, same order.

Work and memory. Two manifolds, each: N rows x N columns to find the radii, then M probe rows x N
columns to test membership, in blocks of `row_batch` rows. At 50k + 50k that is 4 x 2.5e9
distances (~4e13 flop at d = 2048). Per rank, besides the gathered float32 features:
- the current manifold in `dtype` (N x d x 8 bytes in float64: 164 MB at 10k, 819 MB at 50k;
  nothing extra in float32 for float32 features),
- one distance block, row_batch x N x 8 bytes (float64): 80 MB at N = 10k, 400 MB at 50k for
  1,000 rows (half in float32), plus a row_batch x N boolean mask (10 / 50 MB) and the top-k
  workspace.
With an `accelerator` of several processes, rank r does its contiguous share of the rows of each
pass (N^2 / world_size work); the radii (N floats) are gathered and the membership counts summed,
so every rank returns the same, single-process result.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
from torch import Tensor

from .features import all_reduce_sum, check_features, gather_features, local_rows
from .inception import full_fp32

PR_K = 3
PR_ROW_BATCH = 1000
DISTANCE_DTYPES = (torch.float64, torch.float32)
_NORM_CHUNK = 4096


@dataclass(frozen=True)
class PRResult:
    """Improved precision and recall, each in [0, 1], with the counts they come from."""

    precision: float
    recall: float
    k: int
    num_real: int
    num_fake: int
    fakes_in_real: int  # generated samples inside the real manifold (precision's numerator)
    reals_in_fake: int  # real samples inside the generated manifold (recall's numerator)

    def as_dict(self) -> dict:
        return {"precision": self.precision, "recall": self.recall}


def _precision(device: torch.device, dtype: torch.dtype):
    return full_fp32(device) if dtype == torch.float32 else contextlib.nullcontext()


def _check(row_batch: int, dtype: torch.dtype) -> None:
    if row_batch < 1:
        raise ValueError(f"row_batch must be >= 1, got {row_batch}")
    if dtype not in DISTANCE_DTYPES:
        raise ValueError(f"distances are computed in float64 or float32, not {dtype}")


def sq_distances(rows: Tensor, cols: Tensor, rows_sq: Tensor, cols_sq: Tensor) -> Tensor:
    """Squared Euclidean distances (R x C) of `rows` (R x d) to `cols` (C x d), given their squared
    norms, as |r|^2 + |c|^2 - 2 r.c clamped at 0, in the inputs' dtype. Each entry depends only on
    its own row and column (the norms are computed once per set by the callers), not on R."""
    d2 = rows @ cols.T
    d2.mul_(-2).add_(rows_sq[:, None]).add_(cols_sq[None, :])
    return d2.clamp_(min=0)


def sq_norms(x: Tensor, dtype: torch.dtype = torch.float64) -> Tensor:
    """Squared norms of the rows of `x` in `dtype`, in fixed chunks of `_NORM_CHUNK` rows counted from
    row 0, so that a row's norm is computed alike whatever the row blocks or ranks that use it."""
    out = torch.empty(x.shape[0], dtype=dtype, device=x.device)
    for start in range(0, x.shape[0], _NORM_CHUNK):
        chunk = x[start:start + _NORM_CHUNK].to(dtype)
        out[start:start + chunk.shape[0]] = (chunk * chunk).sum(1)
    return out


@torch.no_grad()
def knn_sq_radii(features: Tensor, *, k: int = PR_K, row_batch: int = PR_ROW_BATCH,
                 dtype: torch.dtype = torch.float64, accelerator=None) -> Tensor:
    """Squared distance of each sample to its k-th nearest neighbour within `features` (N x d),
    itself excluded (the (k+1)-th smallest, its own distance set to exactly 0); N values in `dtype`
    on the features' device. Collective with an accelerator of several processes (same full set on
    every rank; each computes its share of the rows, and the radii are gathered)."""
    check_features("features", features)
    _check(row_batch, dtype)
    n = features.shape[0]
    if not 1 <= k < n:
        raise ValueError(f"k-NN radii with k={k} need more than k samples, got {n}")
    x = features.to(dtype)
    x_sq = sq_norms(x, dtype)
    lo, hi = local_rows(n, accelerator)
    out = torch.empty(hi - lo, dtype=dtype, device=x.device)
    with _precision(x.device, dtype):
        for start in range(lo, hi, row_batch):
            stop = min(start + row_batch, hi)
            d2 = sq_distances(x[start:stop], x, x_sq[start:stop], x_sq)
            rows = torch.arange(stop - start, device=x.device)
            d2[rows, rows + start] = 0  # the sample itself, exactly
            out[start - lo:stop - lo] = d2.topk(k + 1, dim=1, largest=False).values[:, k]
            del d2
    return gather_features(accelerator, out).to(x.device)


@torch.no_grad()
def count_inside(probes: Tensor, manifold: Tensor, sq_radii: Tensor, *, row_batch: int = PR_ROW_BATCH,
                 dtype: torch.dtype = torch.float64, accelerator=None) -> int:
    """How many `probes` (M x d) lie inside at least one ball (centre manifold[j], squared radius
    sq_radii[j]) of the manifold (N x d). Collective with an accelerator of several processes: each
    rank tests its share of the probes and the counts are summed."""
    check_features("probes", probes)
    check_features("manifold", manifold, probes.shape[1])
    _check(row_batch, dtype)
    if sq_radii.shape != (manifold.shape[0],):
        raise ValueError(f"{tuple(sq_radii.shape)} radii for a manifold of {manifold.shape[0]} samples")
    x = manifold.to(dtype)
    x_sq = sq_norms(x, dtype)
    p_sq = sq_norms(probes, dtype).to(x.device)
    r2 = sq_radii.to(x.device, dtype)
    lo, hi = local_rows(probes.shape[0], accelerator)
    inside = torch.zeros((), dtype=torch.int64, device=x.device)
    with _precision(x.device, dtype):
        for start in range(lo, hi, row_batch):
            stop = min(start + row_batch, hi)
            p = probes[start:stop].to(x.device, dtype)
            d2 = sq_distances(p, x, p_sq[start:stop], x_sq)
            inside += (d2 <= r2[None, :]).any(1).sum()
            del d2
    return int(all_reduce_sum(accelerator, inside).item())


@torch.no_grad()
def precision_recall(real: Tensor, fake: Tensor, *, k: int = PR_K, row_batch: int = PR_ROW_BATCH,
                     dtype: torch.dtype = torch.float64, accelerator=None) -> PRResult:
    """Improved precision and recall of generated features `fake` against real features `real`
    (N x d float tensors), computed on `real`'s device in blocks of `row_batch` rows, distances in
    `dtype` (see the module doc for why float64 is the default, and for the memory).

    With an `accelerator` of several processes this is collective: every rank passes the same full
    sets (see `features.gather_features`) and arguments, does 1 / world_size of the work, and
    returns the same result as one process would.
    """
    check_features("precision/recall real features", real)
    check_features("precision/recall generated features", fake, real.shape[1])
    _check(row_batch, dtype)
    for name, x in (("real", real), ("generated", fake)):
        if x.shape[0] <= k:
            raise ValueError(f"precision/recall with k={k} needs more than {k} {name} samples, got {x.shape[0]}")
    fake = fake.to(real.device)
    counts = {}
    # one manifold at a time in `dtype`: precision (real manifold, generated probes), then recall
    for name, manifold, probes in (("precision", real, fake), ("recall", fake, real)):
        m = manifold.to(dtype)
        radii = knn_sq_radii(m, k=k, row_batch=row_batch, dtype=dtype, accelerator=accelerator)
        counts[name] = count_inside(probes, m, radii, row_batch=row_batch, dtype=dtype, accelerator=accelerator)
        del m, radii
    n_real, n_fake = real.shape[0], fake.shape[0]
    return PRResult(precision=counts["precision"] / n_fake, recall=counts["recall"] / n_real, k=k,
                    num_real=n_real, num_fake=n_fake, fakes_in_real=counts["precision"],
                    reals_in_fake=counts["recall"])


__all__ = ["PRResult", "PR_K", "PR_ROW_BATCH", "count_inside", "knn_sq_radii", "precision_recall", "sq_distances",
           "sq_norms"]
