"""The reference set's statistics (FID's mean and covariance) and, for KID and precision/recall, its
per-sample features, cached on disk.

One npz file per key (see `reference_key`), written atomically by rank zero: `mu`, `sigma` (float64,
pytorch-fid's names, so the file also works as pytorch-fid statistics), `count`, `key` and, when
`features` (N x 2048 float32). Float32 is what the extractor produces,
so a cache hit gives bit-identical features and the same KID/PR as a fresh extraction; float16
would halve the file (41 / 205 MB instead of 82 / 410 MB at 10k / 50k images) but round each
feature by up to ~5e-4 relative, which moves points across the k-NN ball surfaces of precision/recall
and makes cached and fresh numbers differ. Every extraction stores the features, even for an FID-only
evaluation: extracting the reference set is the expensive part (minutes for a few thousand images on
a CPU), keeping its features costs one gather and a larger file, and a later KID or PR evaluation of
the same set (the quality benchmark selects by FID, then scores KID) then hits the cache. An FID-only
evaluation does not read them (np.load reads only the arrays asked for). A file without them (from
an older version) counts as a miss for KID/PR: the set is extracted again and the file rewritten
with them.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Union

import numpy as np
import torch
from torch import Tensor

from ..data import locate
from ..data.imagesets import ImageSet, count_images, describe, open_image_set
from .evaluation import EvaluationError, broadcast_flag, image_stats
from .features import broadcast_rows, gather_features, world
from .inception import InceptionExtractor, publish
from .inception_net import FEATURE_DIM

log = logging.getLogger("dcgan_dist.metrics")

REF_FORMAT = "dcgan-dist-fid-ref/1"


@dataclass
class RefStats:
    """A reference image set's statistics. `mu`/`sigma` are held by rank zero only (the rank that
    computes FID); `features` (N x 2048 float32, CPU), when asked for, by every rank (every rank
    computes its share of KID and PR on the whole set); the other ranks keep the key and count."""

    count: int
    key: dict
    mu: Optional[Tensor] = None
    sigma: Optional[Tensor] = None
    path: Optional[Path] = None
    cached: bool = field(default=False)
    features: Optional[Tensor] = None


def reference_key(source: ImageSet, num: int, extractor: InceptionExtractor) -> Optional[dict]:
    """Everything the statistics depend on; None when the set has no content hash (not cacheable)."""
    if source.content_sha256 is None:
        return None
    idx = source.index
    return {"format": REF_FORMAT, "content_sha256": source.content_sha256, "resolution": idx.resolution,
            "channels": idx.channels, "extractor": extractor.identity, "num": num}


def cache_path(cache_dir: Path, key: dict, name: str) -> Path:
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    return Path(cache_dir) / f"{name}-{key['resolution']}px-n{key['num']}-{digest}.npz"


def save_stats(path: Path, mu: Tensor, sigma: Tensor, count: int, key: Optional[dict],
               features: Optional[Tensor] = None) -> Path:
    """Write mean/covariance (pytorch-fid's `mu`/`sigma` npz keys) and, when given, the features
    (float32) atomically: temp file + rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}-", suffix=".npz", dir=path.parent)
    extra = {} if features is None else {"features": features.detach().cpu().to(torch.float32).numpy()}
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, mu=mu.numpy(), sigma=sigma.numpy(), count=np.int64(count), key=json.dumps(key or {}), **extra)
        publish(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def load_stats(path: Union[str, Path], key: Optional[dict] = None, features: bool = False) -> Optional[RefStats]:
    """Statistics from an npz with `mu` and `sigma` (ours or pytorch-fid's) and, with `features`, its
    per-sample features. With `key`, None unless the stored key matches and (with `features`) the file
    has them (a stale, foreign or FID-only file is recomputed, never trusted); without `key`, a file
    without features is an EvaluationError saying so."""
    try:
        with np.load(path, allow_pickle=False) as z:
            stored = json.loads(str(z["key"])) if "key" in z.files else {}
            if key is not None and stored != key:
                return None
            if key is not None and features and "features" not in z.files:
                log.info("%s holds FID statistics but no features (an FID-only or older cache entry): extracting "
                         "the reference set again for KID / precision-recall", path)
                return None
            mu, sigma = torch.from_numpy(z["mu"].astype(np.float64)), torch.from_numpy(z["sigma"].astype(np.float64))
            count = int(z["count"]) if "count" in z.files else -1
            feats = torch.from_numpy(z["features"].astype(np.float32)) if features and "features" in z.files else None
    except (OSError, ValueError, KeyError) as e:
        if key is not None:
            log.warning("ignoring unreadable reference statistics %s (%s); recomputing", path, e)
            return None
        raise EvaluationError(f"{path}: not a statistics file with 'mu' and 'sigma' arrays ({e})") from None
    if mu.shape != (FEATURE_DIM,) or sigma.shape != (FEATURE_DIM, FEATURE_DIM):
        raise EvaluationError(f"{path}: expected mu (2048,) and sigma (2048, 2048), "
                              f"got {tuple(mu.shape)} {tuple(sigma.shape)}")
    if features and feats is None:
        raise EvaluationError(f"{path}: holds FID statistics only (mu, sigma), not the per-sample features KID and "
                              "precision/recall need; write it with `--precompute SHARDS --metrics fid,kid` (or "
                              "pr), give the image set itself, or ask for fid only")
    if feats is not None and (feats.dim() != 2 or feats.shape[1] != FEATURE_DIM or feats.shape[0] < 2):
        raise EvaluationError(f"{path}: expected features (N, 2048), got {tuple(feats.shape)}")
    return RefStats(count=count, key=stored, mu=mu, sigma=sigma, path=Path(path), cached=True, features=feats)


def _cached(accelerator, path: Optional[Path], key: Optional[dict], n: int, features: bool) -> Optional[RefStats]:
    """Collective: rank zero reads the cache entry; every rank learns hit or miss, and on a hit with
    `features` receives rank zero's features (the other nodes may not see rank zero's disk)."""
    hit = None
    if world(accelerator)[0] == 0 and path is not None and path.is_file():
        try:
            hit = load_stats(path, key, features=features)
        except ValueError as e:  # wrong shapes under the right key: recompute (rank zero must not fail alone)
            log.warning("ignoring %s (%s); recomputing", path, e)
        if hit is not None and features and tuple(hit.features.shape) != (n, FEATURE_DIM):
            log.warning("ignoring %s (features %s, expected (%d, %d)); recomputing", path,
                        tuple(hit.features.shape), n, FEATURE_DIM)
            hit = None
    if not broadcast_flag(accelerator, hit is not None):
        return None
    ref = hit if hit is not None else RefStats(count=n, key=key or {}, path=path, cached=True)
    if features:
        ref.features = broadcast_rows(accelerator, hit.features if hit is not None else None, (n, FEATURE_DIM)).cpu()
    return ref


def reference_stats(accelerator, source: Union[str, ImageSet], *, num: Optional[int] = None,
                    extractor: InceptionExtractor, cache_dir: Optional[Union[str, Path]] = None, batch: int = 64,
                    progress: bool = True, features: bool = False) -> RefStats:
    """Collective: the reference statistics of the first `num` images (all when None) of a shard set,
    with `features` also every image's features on every rank (for KID and precision/recall).

    Cached in `cache_dir` (default $DCGAN_DIST_CACHE/fid) under a key of the data set's content hash
    (dataset.json), resolution, extractor identity (weights sha256, preprocessing) and sample count.
    Rank zero decides hit or miss and tells the others, so ranks on nodes without a shared file
    system still agree; on a miss all ranks compute (each its own share of the images, the features
    gathered onto every rank) and rank zero writes the file atomically.
    """
    rank = world(accelerator)[0]
    src = open_image_set(source) if isinstance(source, str) else source
    available = count_images(src, quiet=rank != 0)
    n = available if num is None else min(num, available)
    if n < 2:  # decided on every rank alike, before any collective
        raise EvaluationError(f"{src.spec}: reference statistics need at least 2 images, got {n}")
    key = reference_key(src, n, extractor)
    path = cache_path(Path(cache_dir or locate.cache_dir("fid")), key, src.index.name) if key else None
    hit = _cached(accelerator, path, key, n, features)
    if hit is not None:
        log.info("FID reference statistics%s of %s: cached %s", " and features" if features else "", describe(src),
                 path)
        return hit
    if key is None:
        log.info("FID reference statistics of %s are not cached: no dataset.json content hash", describe(src))
    t0 = time.time()
    # Features are kept whenever the file will be written, so that it serves KID/PR later too.
    keep = features or path is not None
    stats = image_stats(accelerator, src, num=n, batch=batch, extractor=extractor, progress=progress,
                        keep_features=keep)
    ref = RefStats(count=stats.n, key=key or {}, path=path)
    gathered = gather_features(accelerator, stats.features()).cpu() if keep else None
    if features:
        ref.features = gathered
    if rank == 0:
        ref.mu, ref.sigma = stats.mean_cov()
        if path is not None:
            try:
                save_stats(path, ref.mu, ref.sigma, stats.n, key, gathered)
            except OSError as e:  # a cache is an optimisation: warn, and do not leave rank zero failing alone
                log.warning("could not write the FID reference cache %s (%s); it will be recomputed next time",
                            path, e)
                ref.path = None
        log.info("FID reference statistics%s of %d images of %s in %.1f s%s", " and features" if features else "",
                 stats.n, describe(src), time.time() - t0, f" -> {path}" if path else "")
    return ref
