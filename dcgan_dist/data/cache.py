"""`data.cache=memory`: the decoded data set held once per rank, streamed in the training process.

The shard stream decodes PNGs in DataLoader workers and hands each batch to the training process
through shared memory: on this project's CPU that hand-over alone costs ~1.5 ms per batch, which
is several GPU steps of a 64x64 DCGAN. A set that fits in RAM (3,000 faces at 64x64 are 37 MB,
all of CelebA at 64x64 2.5 GB) can instead be decoded once at start-up into one uint8 array; a
batch is then one gather from it, with no worker processes and no hand-over.

Order: exactly the shard stream's. The same `stream.raw_samples` runs for every logical worker of
every rank (shard permutation per epoch, shuffle buffer, flip bits, resume skipping), over light
records that point into the array instead of over the tars' bytes, and the logical workers'
batches are interleaved the way a DataLoader takes them from its workers. A run can therefore
switch the cache on or off and still resume exactly, and unreadable samples are counted and
replaced by the same rule (`stream.replacements`).
"""

from __future__ import annotations

import logging
import os
import time
from typing import Iterator, Optional

import numpy as np
import torch
from tqdm import tqdm

from .locate import DataError
from .stream import StreamSpec, _label, decode, raw_samples, replacements, worker_position
from .tario import tar_samples
from .workers import local_ranks

# data.cache's values (config.validate checks against this list).
MODES = ("none", "memory")

log = logging.getLogger("dcgan_dist")
MEMORY_FRACTION = 0.5  # the cached sets of all ranks on a node may take at most this part of free memory


def available_memory() -> int:
    """Bytes of memory available for new allocations (MemAvailable), or total physical memory."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def _check_size(n_images: int, image_bytes: int, what: str) -> None:
    ranks = local_ranks()
    need, free = n_images * image_bytes * ranks, available_memory()
    if need > MEMORY_FRACTION * free:
        raise DataError(
            f"data.cache=memory: {what} {n_images:,} images x {image_bytes:,} bytes x {ranks} rank(s) on this node = "
            f"{need / 2**30:.2f} GiB, more than {MEMORY_FRACTION:.0%} of the {free / 2**30:.2f} GiB available. "
            "Use data.cache=none (stream from the shards), or fewer ranks per node.")


class DecodedSet:
    """Every sample of every shard, decoded without flips: `images[i]` (uint8 C x H x W), `labels[i]`,
    `ok[i]` (False for an unreadable sample), and per shard the indices of its samples in tar order."""

    def __init__(self, urls: tuple[str, ...], counts: Optional[tuple[int, ...]], resolution: int, channels: int,
                 progress: bool = False):
        t0 = time.time()
        image_bytes = channels * resolution * resolution
        total = sum(counts) if counts else None
        if total is not None:
            _check_size(total, image_bytes, "the set's")
        images = np.empty((total or 0, channels, resolution, resolution), dtype=np.uint8)
        labels, ok, self.members, self.keys = [], [], [], []
        bar = tqdm(total=total, unit="img", desc="data.cache=memory: decoding", disable=not progress, leave=False)
        n = 0
        for url in urls:
            members = []
            for sample in tar_samples([url]):
                if n >= images.shape[0]:  # counts unknown (or wrong): grow, checking the size as it grows
                    _check_size(2 * n + 64, image_bytes, "at least")
                    images = np.concatenate([images, np.empty((n + 64,) + images.shape[1:], np.uint8)])
                arr = decode(sample, resolution, channels)  # unflipped: flips are drawn per batch
                if arr is not None:
                    images[n] = arr
                ok.append(arr is not None)
                labels.append(_label(sample))
                self.keys.append((sample.get("__url__", url), sample.get("__key__")))
                members.append(n)
                n += 1
                bar.update(1)
            self.members.append(members)
        bar.close()
        self.images, self.labels, self.ok = images[:n], np.asarray(labels, np.int64), np.asarray(ok)
        self.url_index = {u: i for i, u in enumerate(urls)}
        log.info("data.cache=memory: %d images (%.1f MB) decoded in %.1f s; %d unreadable", n,
                 self.images.nbytes / 1e6, time.time() - t0, int((~self.ok).sum()))

    def records(self, urls: list[str]) -> Iterator[dict]:
        """What `tar_samples(urls)` yields, as records pointing into the set (the `read` of raw_samples)."""
        for url in urls:
            for i in self.members[self.url_index[url]]:
                yield {"__index__": i}


class MemoryStream:
    """This rank's endless batches from a `DecodedSet`, equal to `stream.make_loader(spec, ...)`'s."""

    def __init__(self, spec: StreamSpec, data: DecodedSet, pin_memory: bool = False):
        self.spec, self.data = spec, data
        # Pinned batches make the trainer's non_blocking copy asynchronous; torch's caching host
        # allocator reuses freed pinned blocks, so this is no cudaHostAlloc per batch.
        self.pin = pin_memory and torch.cuda.is_available()

    def _batches(self, physical: int) -> Iterator[dict]:
        spec, data = self.spec, self.data
        _, slot, skip = worker_position(spec, physical)
        samples = raw_samples(spec, slot, skip=skip, read=data.records)
        while True:
            raw = [next(samples) for _ in range(spec.batch)]
            idx = np.fromiter((r["__index__"] for r in raw), np.int64, spec.batch)
            fixed = np.asarray(replacements(data.ok[idx].tolist(), [{"__url__": data.keys[i][0], "__key__": data.keys[i][1]}
                                                                 for i in idx[:4]], spec.resolution))
            src = idx[fixed]
            images = data.images[src]  # one gather: a new C-contiguous array
            flip = np.fromiter((raw[j]["__flip__"] for j in fixed), bool, spec.batch)
            if flip.any():
                images[flip] = images[flip][..., ::-1]
            batch = {"image": torch.from_numpy(images), "label": torch.from_numpy(data.labels[src]),
                     "bad": int(spec.batch - data.ok[idx].sum())}
            if self.pin:
                batch = {**batch, "image": batch["image"].pin_memory(), "label": batch["label"].pin_memory()}
            yield batch

    def __iter__(self) -> Iterator[dict]:
        # The DataLoader takes batches from its workers in turn: physical worker p's k-th batch is the
        # rank's (k * W + p)-th (see stream.py's docstring).
        workers = [self._batches(p) for p in range(self.spec.workers)]
        while True:
            for w in workers:
                yield next(w)


def make_memory_loader(spec: StreamSpec, pin_memory: bool, progress: bool) -> MemoryStream:
    return MemoryStream(spec, DecodedSet(spec.urls, spec.counts, spec.resolution, spec.channels, progress), pin_memory)


__all__ = ["DecodedSet", "MemoryStream", "available_memory", "make_memory_loader"]
