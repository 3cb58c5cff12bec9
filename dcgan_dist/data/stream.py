"""The training stream: webdataset shards -> per-rank, per-worker batches, endless and deterministic.

What the stream is after each stage (per logical worker, see below):

    shard list      the epoch's seeded permutation of all shards, this slot's share (slot = rank * W + worker)
    raw samples     {__key__, png, cls} dicts read from those tars (`tar_samples`, webdataset's layout)
    shuffled        a seeded shuffle buffer, flushed at every epoch's end
    batches         `batch` raw samples, then decoded to uint8 C x H x W, with flips and labels

Within one epoch the slots read disjoint shards that together cover the data set once, so no
sample is lost or duplicated across ranks and workers. Every random choice comes from
(seed, epoch, slot), never from process state, so the stream is a pure function of its spec.

Exact resume: the DataLoader takes batches from its W workers in turn, so the rank's k-th batch is
batch k // W of worker k % W. A resumed loader that already consumed `start_batch` batches makes
physical worker p play logical worker (p + start_batch) % W and skip the batches that worker had
produced; the first batch it yields is then batch `start_batch` of the uninterrupted run.
Skipping needs no decoding, and whole epochs are skipped by arithmetic when the per-shard counts
of `dataset.json` are known.
"""

from __future__ import annotations

import random
import signal
from dataclasses import dataclass
from typing import Callable, Iterator, Optional

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from .errors import DataError
from .images import decode_image, image_member
from .tario import tar_samples


@dataclass(frozen=True)
class StreamSpec:
    """Everything that determines a rank's batch sequence."""

    urls: tuple[str, ...]
    counts: Optional[tuple[int, ...]]  # samples per shard (from dataset.json), None if unknown
    batch: int  # per rank
    rank: int
    world_size: int
    workers: int  # logical workers per rank (>= 1; 1 when the DataLoader has no worker processes)
    resolution: int
    channels: int
    seed: int
    shuffle_buffer: int = 512
    hflip: bool = False
    start_batch: int = 0  # batches this rank consumed before (resume)

    @property
    def slots(self) -> int:
        return self.world_size * self.workers


def epoch_shards(spec: StreamSpec, epoch: int, slot: int) -> list[int]:
    """Indices of the shards `slot` reads in `epoch`: every slots-th entry of a seeded permutation."""
    order = np.random.default_rng([spec.seed, epoch]).permutation(len(spec.urls))
    return [int(i) for i in order[slot::spec.slots]]


def _shuffled(samples: Iterator[dict], size: int, rng: random.Random) -> Iterator[dict]:
    """Reservoir shuffle with a seeded RNG; drains completely when the input ends."""
    buf: list[dict] = []
    for sample in samples:
        if len(buf) < size:
            buf.append(sample)
            continue
        j = rng.randrange(size)
        buf[j], sample = sample, buf[j]
        yield sample
    rng.shuffle(buf)
    yield from buf


def raw_samples(spec: StreamSpec, slot: int, skip: int = 0,
                read: Callable[[list[str]], Iterator[dict]] = tar_samples) -> Iterator[dict]:
    """The endless raw sample stream of one slot, with its first `skip` samples dropped unread
    where the per-shard counts allow, read-and-dropped otherwise. Each sample carries its flip bit.
    `read(urls)` yields the shards' samples in order: their bytes from the tars, or (data.cache=memory)
    light records pointing into the decoded set, which then follow exactly the same order."""
    epoch = 0
    if spec.counts is not None:  # skip whole epochs by arithmetic
        while True:
            n = sum(spec.counts[i] for i in epoch_shards(spec, epoch, slot))
            if n == 0:
                raise RuntimeError(f"slot {slot} has no samples in epoch {epoch}; too few shards for the ranks x workers")
            if skip < n:
                break
            skip -= n
            epoch += 1
    while True:
        rng = random.Random(f"{spec.seed}/{epoch}/{slot}")
        urls = [spec.urls[i] for i in epoch_shards(spec, epoch, slot)]
        stream = read(urls)
        seen = 0
        for sample in _shuffled(stream, spec.shuffle_buffer, rng):
            seen += 1
            # Drawn for every sample, skipped or not, so the RNG stays in step on resume.
            sample["__flip__"] = spec.hflip and rng.random() < 0.5
            if skip > 0:
                skip -= 1
                continue
            yield sample
        if seen == 0:  # would otherwise spin forever over empty shards
            raise RuntimeError(f"the shards of slot {slot} in epoch {epoch} hold no samples: {urls}")
        epoch += 1


def decode(sample: dict, resolution: int, channels: int) -> Optional[np.ndarray]:
    """uint8 C x H x W array of a raw sample (`images.decode_image`, flipped when its flip bit is set),
    or None if it is unreadable or the wrong size."""
    key = image_member(sample)
    if key is None:
        return None
    try:
        arr = decode_image(sample[key], channels)
    except Exception:
        return None
    if arr.shape[1:] != (resolution, resolution):
        return None
    return np.ascontiguousarray(arr[:, :, ::-1]) if sample.get("__flip__") else arr


def _label(sample: dict) -> int:
    try:
        return int(sample["cls"])
    except (KeyError, ValueError):
        return -1


def replacements(ok: list[bool], raw: list[dict], resolution: int) -> list[int]:
    """For each position of a batch, the position whose image it takes: itself when readable, else a
    readable one of the same batch (the batch keeps its size and its place in the order)."""
    good = [i for i, g in enumerate(ok) if g]
    if not good:
        keys = ", ".join(f"{s.get('__url__')}:{s.get('__key__')}" for s in raw[:4])
        raise DataError(f"a whole batch of {len(raw)} samples is unreadable (e.g. {keys}); the shards "
                        f"are corrupt or not {resolution}x{resolution} images: re-create them with prepare")
    return [i if ok[i] else good[i % len(good)] for i in range(len(ok))]


def collate(raw: list[dict], resolution: int, channels: int) -> dict:
    """Decode a batch; an unreadable sample is counted and replaced (see `replacements`)."""
    images = [decode(s, resolution, channels) for s in raw]
    fixed = replacements([im is not None for im in images], raw, resolution)
    return {
        "image": torch.from_numpy(np.stack([images[i] for i in fixed])),
        "label": torch.tensor([_label(raw[i]) for i in fixed], dtype=torch.int64),
        "bad": sum(im is None for im in images),
    }


def worker_position(spec: StreamSpec, physical: int) -> tuple[int, int, int]:
    """(logical worker, slot, samples to skip) of physical worker `physical` of a loader that resumes
    after `spec.start_batch` batches (see the module docstring)."""
    logical = (physical + spec.start_batch) % spec.workers
    done_batches = max(0, -(-(spec.start_batch - logical) // spec.workers))
    return logical, spec.rank * spec.workers + logical, done_batches * spec.batch


_ERROR = "__data_error__"  # the key of the one-entry batch that carries a worker's DataError


class ShardStream(IterableDataset):
    """Endless batches for one rank; see the module docstring for the order and resume rules."""

    def __init__(self, spec: StreamSpec):
        self.spec = spec

    def __iter__(self) -> Iterator[dict]:
        spec = self.spec
        info = get_worker_info()
        logical, slot, skip = worker_position(spec, info.id if info is not None else 0)
        samples = raw_samples(spec, slot, skip=skip)
        try:
            while True:
                raw = [next(samples) for _ in range(spec.batch)]
                yield collate(raw, spec.resolution, spec.channels)
        except DataError as e:
            if info is None:
                raise
            # Raised here, the DataLoader would re-raise it in the training process as a new
            # exception whose message is this worker's whole traceback. Sent in place of the batch,
            # it is raised there with its own one-line message (see `_Batches`), in stream order.
            yield {_ERROR: str(e)}


class _Batches:
    """The DataLoader's iterator, raising a worker's DataError (see ShardStream) in this process."""

    def __init__(self, it):
        self._it = it

    def __iter__(self):
        return self

    def __next__(self) -> dict:
        batch = next(self._it)
        if _ERROR in batch:
            raise DataError(batch[_ERROR])
        return batch

    def _shutdown_workers(self) -> None:  # the trainer stops the workers on every exit path
        shutdown = getattr(self._it, "_shutdown_workers", None)
        if shutdown is not None:
            shutdown()


class ShardLoader(DataLoader):
    """A DataLoader whose iterators raise a worker's DataError as a plain DataError."""

    def __iter__(self) -> _Batches:
        return _Batches(super().__iter__())


def _worker_init(_: int) -> None:
    # Each worker decodes on one thread; the training process owns the cores.
    torch.set_num_threads(1)
    # Launchers and schedulers signal whole process groups (torchrun's SIGTERM, `scancel --full`).
    # The training process turns those signals into a checkpoint; a worker dying of them would
    # instead crash its parent's DataLoader mid-save.
    for sig in (signal.SIGTERM, signal.SIGUSR1):
        signal.signal(sig, signal.SIG_IGN)


def make_loader(spec: StreamSpec, num_workers: int, prefetch: int, pin_memory: bool) -> ShardLoader:
    """A DataLoader over the stream. Not meant for `accelerator.prepare`: the stream already splits
    itself by rank, and accelerate would re-shard or broadcast it."""
    assert spec.workers == max(1, num_workers), "spec.workers must match the DataLoader's workers"
    return ShardLoader(
        ShardStream(spec),
        batch_size=None,  # the stream batches itself
        num_workers=num_workers,
        prefetch_factor=prefetch if num_workers > 0 else None,
        persistent_workers=num_workers > 0,
        pin_memory=pin_memory,
        worker_init_fn=_worker_init if num_workers > 0 else None,
        # A private generator: creating the iterator must not draw from the global RNG (exact resume).
        generator=torch.Generator().manual_seed(spec.seed),
    )


def preview(urls: list[str] | tuple[str, ...], n: int, resolution: int, channels: int) -> torch.Tensor:
    """The first `n` images of the first shards as floats in [-1, 1] (the `reals.png` grid); reads
    its own copy of the data, so the training stream is untouched."""
    images = []
    for sample in tar_samples(list(urls)):
        arr = decode(sample, resolution, channels)
        if arr is not None:
            images.append(torch.from_numpy(arr))
        if len(images) == n:
            break
    return torch.stack(images).float().div(127.5).sub(1.0)
