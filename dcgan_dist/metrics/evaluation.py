"""Collective evaluation: FID / IS / KID / precision-recall of a generator, statistics of image sets.

Every function taking an `accelerator` is collective: all ranks call it with the same arguments.
Each rank generates or reads its contiguous share of the samples, accumulates float64 statistics,
and the ranks add them up in one all-reduce. Rank zero alone then computes the Frechet distance
(one 2048 x 2048 eigendecomposition, ~3 s on CPU) and broadcasts the numbers, so every rank
returns the same result. When KID or precision/recall is asked for, each rank also keeps its
share's features, and `suite.feature_metrics` gathers them and splits that work over the ranks.
The reference set's statistics and features are cached by `reference.py`. `accelerator=None`
means one process.

Generated samples are a pure function of (seed, sample index): sample i's latent comes from its
own seeded generator, so the N samples (and the FID) are the same on any world size and batch size,
ranks never share a sample, and exactly N are made even when N does not divide by the ranks.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from pathlib import Path
from typing import TYPE_CHECKING, Optional, Sequence, Union

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor
from tqdm import tqdm

from ..errors import UserError
from .features import distributed, share
from .features import world as world_of
from .fid import FeatureStats, fid_from_stats, inception_score
from .inception import InceptionExtractor
from .inception_net import FEATURE_DIM, NUM_CLASSES
from .suite import FID_ONLY, MetricSpec, feature_metrics
from ..data.images import to_uint8
from ..data.imagesets import ImageSet, count_images, iter_range, open_image_set

if TYPE_CHECKING:
    from .reference import RefStats

log = logging.getLogger("dcgan_dist.metrics")


class EvaluationError(UserError, ValueError):
    """An evaluation that cannot be done as asked (no classifier for IS, unusable statistics, too few images)."""


LATENT_STREAM = 0x46494400  # "FID\0": keeps evaluation latents apart from every training seed stream


def _device(accelerator) -> torch.device:
    return accelerator.device if accelerator is not None else torch.device("cpu")


def _broadcast_floats(accelerator, values: list[Optional[float]]) -> list[Optional[float]]:
    """Rank zero's numbers on every rank (None travels as NaN). A few bytes; NCCL needs a device tensor."""
    t = torch.tensor([math.nan if v is None else v for v in values], dtype=torch.float64,
                     device=_device(accelerator))
    if distributed(accelerator):
        dist.broadcast(t, src=0)
    return [None if math.isnan(v) else v for v in t.tolist()]


def broadcast_flag(accelerator, flag: bool) -> bool:
    """Rank zero's yes/no on every rank."""
    return bool(_broadcast_floats(accelerator, [1.0 if flag else 0.0])[0])


def latents(seed: int, start: int, stop: int, z_dim: int) -> Tensor:
    """Latents of samples start..stop-1: sample i's from its own generator seeded by (seed, i)."""
    zs = []
    for i in range(start, stop):
        s = int(np.random.SeedSequence([LATENT_STREAM, seed, i]).generate_state(1, np.uint64)[0])
        zs.append(torch.randn(z_dim, generator=torch.Generator().manual_seed(s)))
    return torch.stack(zs) if zs else torch.zeros(0, z_dim)


def class_labels(seed: int, start: int, stop: int, class_probs: Sequence[float]) -> Tensor:
    """Labels of samples start..stop-1 for a conditional G, drawn from `class_probs` (the training set's class
    frequencies, so the generated set matches the reference set's mix); independent of the world size."""
    probs = torch.as_tensor(list(class_probs), dtype=torch.float64)
    gen = torch.Generator().manual_seed(int(np.random.SeedSequence([LATENT_STREAM + 1, seed]).generate_state(1)[0]))
    return torch.multinomial(probs, stop, replacement=True, generator=gen)[start:stop]


def _progress(total: int, desc: str, enabled: bool) -> tqdm:
    return tqdm(total=total, desc=desc, unit="img", disable=not enabled, leave=False, dynamic_ncols=True)


# ---- statistics of generated and of stored images ------------------------------------------------

@contextlib.contextmanager
def rank0_buffers(accelerator, model: torch.nn.Module):
    """Collective: lend every rank rank zero's buffers (BatchNorm running statistics) for the duration,
    then give each its own back. Buffers drift apart across ranks during DDP training (they are not
    broadcast) and checkpoints hold rank zero's, so this makes the samples those of the checkpoint.
    One broadcast of the packed buffers (a few KB for DCGAN)."""
    buffers = list(model.buffers())
    if not distributed(accelerator) or not buffers:
        yield
        return
    saved = [b.detach().clone() for b in buffers]
    flat = torch.cat([b.detach().reshape(-1).to(torch.float64) for b in buffers])  # int64 counters fit exactly
    dist.broadcast(flat, src=0)
    offset = 0
    for b in buffers:
        b.copy_(flat[offset:offset + b.numel()].view_as(b))
        offset += b.numel()
    try:
        yield
    finally:
        for b, s in zip(buffers, saved, strict=True):
            b.copy_(s)


@torch.no_grad()
def generator_stats(accelerator, G: torch.nn.Module, *, num: int, batch: int, z_dim: int, seed: int,
                    extractor: InceptionExtractor, with_is: bool = False, progress: bool = True,
                    class_probs: Optional[Sequence[float]] = None, keep_features: bool = False) -> FeatureStats:
    """Collective: statistics of `num` samples of G, reduced over all ranks. `batch` is per rank.
    `keep_features`: also keep this rank's features (its share, in sample order) for KID / PR.

    G runs as the checkpoint would: in eval mode (BatchNorm uses running statistics, as the sample
    grids do), with rank zero's buffers on every rank, in full precision (accelerate's autocast
    wrapper is bypassed), so the number equals `python -m dcgan_dist.evaluate` on that checkpoint.
    A conditional G gets labels drawn from `class_probs` (default: uniform over its classes).
    """
    (rank, world), device = world_of(accelerator), _device(accelerator)
    model = accelerator.unwrap_model(G) if accelerator is not None else G
    forward = getattr(model, "_original_forward", None) or model.forward  # accelerate keeps the fp32 one here
    param = next(model.parameters())  # latents go in G's device and dtype (bf16 under DeepSpeed mixed precision)
    g_device, g_dtype = param.device, param.dtype
    stats = FeatureStats(FEATURE_DIM, num_classes=NUM_CLASSES if with_is else None, total=num, device=device,
                         keep_features=keep_features)
    start, stop = share(num, rank, world)
    n_cls = getattr(model, "num_classes", 0)
    labels = None
    if n_cls:
        probs = class_probs if class_probs is not None else [1.0] * n_cls
        labels = class_labels(seed, start, stop, probs).to(g_device)
    was_training = model.training
    model.eval()
    try:
        desc = f"FID: generate + Inception (rank 0 of {world})"
        with rank0_buffers(accelerator, model), _progress(stop - start, desc, progress and rank == 0) as bar:
            for lo in range(start, stop, batch):
                hi = min(lo + batch, stop)
                z = latents(seed, lo, hi, z_dim).to(g_device, g_dtype)
                fake = forward(z) if labels is None else forward(z, labels[lo - start:hi - start])
                feats, logits = extractor(to_uint8(fake))
                stats.add(feats, logits, first_index=lo)
                bar.update(hi - lo)
    finally:
        model.train(was_training)
    return stats.all_reduce() if distributed(accelerator) else stats


def image_stats(accelerator, source: Union[str, ImageSet], *, num: Optional[int] = None, batch: int = 64,
                extractor: InceptionExtractor, with_is: bool = False, progress: bool = True,
                keep_features: bool = False) -> FeatureStats:
    """Collective: statistics of the first `num` images (all when None) of an image set, each rank
    reading its own contiguous range, reduced over all ranks (with `keep_features`, each rank also
    keeps its range's features)."""
    (rank, world), device = world_of(accelerator), _device(accelerator)
    src = open_image_set(source) if isinstance(source, str) else source
    available = count_images(src, quiet=rank != 0)
    total = available if num is None else min(num, available)
    if num is not None and num > available and rank == 0:
        log.warning("%s holds %d images, fewer than the %d asked for: using all of them", src.spec, available, num)
    stats = FeatureStats(FEATURE_DIM, num_classes=NUM_CLASSES if with_is else None, total=max(total, 1), device=device,
                         keep_features=keep_features)
    start, stop = share(total, rank, world)
    pending, first = [], start
    with _progress(stop - start, f"FID: {Path(src.spec).name} (rank 0 of {world})", progress and rank == 0) as bar:
        for i, image in enumerate(iter_range(src, start, stop), start):
            pending.append(torch.from_numpy(image))
            if len(pending) == batch or i == stop - 1:
                feats, logits = extractor(pending)
                stats.add(feats, logits, first_index=first)
                bar.update(len(pending))
                pending, first = [], i + 1
    return stats.all_reduce() if distributed(accelerator) else stats


def summarize(accelerator, stats: FeatureStats, ref: Optional["RefStats"], want_is: bool,
              metrics: MetricSpec = FID_ONLY) -> dict:
    """Collective: rank zero computes FID (against `ref`) and IS, all ranks together KID and
    precision/recall as `metrics` asks (`stats` then holds each rank's features, `ref` the whole
    reference set's); every rank returns the same dict."""
    rank = world_of(accelerator)[0]
    fid = is_mean = is_std = None
    error = None
    if rank == 0:
        try:
            if ref is not None and "fid" in metrics:
                fid = fid_from_stats(stats, ref.mu, ref.sigma)
            if want_is:
                is_mean, is_std = inception_score(stats)
        except ValueError as e:  # e.g. too few samples: every rank must raise, none may wait for rank zero
            error = e
    fid, is_mean, is_std, failed = _broadcast_floats(accelerator, [fid, is_mean, is_std, 1.0 if error else None])
    if failed:
        raise error if error is not None else ValueError("FID/IS failed on rank 0 (its log says why)")
    local = stats.features() if metrics.features else None
    return {"fid": fid, **feature_metrics(accelerator, ref.features if ref is not None else None, local, metrics),
            "is_mean": is_mean, "is_std": is_std, "num": stats.n, "metrics": list(metrics.names)}


def resolve_inception_score(extractor: InceptionExtractor, inception_score: Optional[bool]) -> bool:
    """Whether to compute IS: None = when the weights have logits, True = required (error without), False = no."""
    if inception_score and not extractor.has_logits:
        raise EvaluationError(f"Inception Score asked for, but {extractor.path} has no classifier (1008 logits): it is a "
                         "feature-only FID Inception. Use pytorch-fid's pt_inception-2015-12-05-6726825d.pth.")
    return extractor.has_logits if inception_score is None else bool(inception_score)


def evaluate_generator(accelerator, G: torch.nn.Module, *, num: int, batch: int, z_dim: int, seed: int,
                       extractor: InceptionExtractor, ref_stats: Optional["RefStats"],
                       inception_score: Optional[bool] = None, progress: bool = True,
                       class_probs: Optional[Sequence[float]] = None, metrics: MetricSpec = FID_ONLY) -> dict:
    """Collective: the `metrics` (FID, KID, precision/recall) of `num` samples of G against `ref_stats`
    (None: no FID; KID and PR need its `features`) and IS.

    `inception_score`: None computes IS when the weights have logits, True requires it (error
    otherwise), False skips it. Returns {fid, kid, precision, recall, is_mean, is_std, num, metrics,
    seconds} (and kid_subsets, kid_subset_size with KID) on every rank, None for what was not
    computed. G's train/eval mode is restored afterwards.
    """
    t0 = time.time()
    want_is = resolve_inception_score(extractor, inception_score)
    stats = generator_stats(accelerator, G, num=num, batch=batch, z_dim=z_dim, seed=seed, extractor=extractor,
                            with_is=want_is, progress=progress, class_probs=class_probs, keep_features=metrics.features)
    result = summarize(accelerator, stats, ref_stats, want_is, metrics)
    result["seconds"] = time.time() - t0
    return result
