"""Writing images into webdataset tar shards plus the `dataset.json` index that describes them.

Layout of a shard set (what `prepare` writes and `stream` reads):

    DIR/<name>-000000.tar ...   members <key>.png (the image) and <key>.cls (class index, text)
    DIR/dataset.json            count, resolution, channels, classes, per-shard counts and byte sizes,
                                content hash

Per-shard counts let a resumed run skip whole epochs and shards without reading them; with the
byte sizes the start-up check (`locate.check`) refuses a partial copy of a shard by name; the
content hash keys caches (e.g. FID reference statistics) to exactly these images.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterable, Optional

import numpy as np
import webdataset as wds
from PIL import Image
from tqdm import tqdm

FORMAT = "dcgan-dist-shards/1"
INDEX_NAME = "dataset.json"


@dataclass
class ShardInfo:
    name: str
    count: int
    size_bytes: Optional[int] = None  # the tar file's size; None in dataset.json files written before it was recorded


@dataclass
class DatasetIndex:
    """The contents of `dataset.json`."""

    name: str
    count: int
    resolution: int
    channels: int
    encoding: str
    classes: list[str]
    class_counts: list[int]
    shards: list[ShardInfo]
    content_sha256: str
    skipped: int = 0
    format: str = FORMAT
    sources: list[str] = field(default_factory=list)
    options: dict = field(default_factory=dict)  # how the images were made (resize filter, crop, ...)

    def save(self, directory: Path) -> Path:
        path = Path(directory) / INDEX_NAME
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(asdict(self), indent=2) + "\n")
        os.replace(tmp, path)
        return path

    @staticmethod
    def load(path: Path) -> "DatasetIndex":
        raw = json.loads(Path(path).read_text())
        if raw.get("format") != FORMAT:
            raise ValueError(f"{path}: unknown shard index format {raw.get('format')!r} (expected {FORMAT})")
        raw["shards"] = [ShardInfo(**s) for s in raw["shards"]]
        return DatasetIndex(**raw)


def encode_png(image: np.ndarray) -> bytes:
    """Lossless PNG bytes of an HxWxC (C = 1 or 3) uint8 array."""
    mode = "L" if image.shape[2] == 1 else "RGB"
    buf = io.BytesIO()
    Image.fromarray(image[:, :, 0] if mode == "L" else image, mode=mode).save(buf, format="PNG", compress_level=6)
    return buf.getvalue()


def split_evenly(n: int, parts: int) -> list[int]:
    """Sizes of `parts` consecutive chunks of `n` items that differ by at most one."""
    return [n // parts + (1 if i < n % parts else 0) for i in range(parts)]


def plan_shards(n: int, num_shards: Optional[int] = None, shard_size: int = 2000, min_shards: int = 64) -> list[int]:
    """Planned sizes of the shards for `n` images.

    By default at least `min_shards` shards (when there are that many images): every rank x worker
    must own at least one shard, and 64 covers e.g. 8 GPUs x 8 workers. Otherwise `shard_size` each.
    """
    if num_shards is not None and num_shards < 1:
        raise ValueError(f"the number of shards must be >= 1 (got {num_shards})")
    if shard_size < 1:
        raise ValueError(f"the shard size must be >= 1 (got {shard_size})")
    if n < 1:
        raise ValueError("no images to write")
    count = num_shards if num_shards is not None else max(-(-n // shard_size), min(min_shards, n))
    if count > n:  # an empty shard would be unreadable for the trainer
        raise ValueError(f"{count} shards asked for but only {n} images: ask for at most {n} shards")
    return split_evenly(n, count)


class ShardSink:
    """Writes encoded samples, in the order given, into shards of planned sizes, and the index.

    A sample that turned out unreadable (`None`) is counted as skipped; its shard is one smaller.
    """

    def __init__(self, out_dir: str | os.PathLike, name: str, sizes: list[int], encoding: str = "png"):
        self.out = Path(out_dir)
        self.out.mkdir(parents=True, exist_ok=True)
        self.name, self.sizes, self.encoding = name, sizes, encoding
        self.shards: list[ShardInfo] = []
        self.hashes: list[str] = []
        self.labels: list[int] = []
        self.skipped = 0
        self._shard = -1
        self._left = 0
        self._writer: Optional[wds.TarWriter] = None
        self._in_shard = 0

    def _next_shard(self) -> None:
        self._close_shard()
        self._shard += 1
        self._left = self.sizes[self._shard]
        shard_name = f"{self.name}-{len(self.shards):06d}.tar"
        self._writer = wds.TarWriter(str(self.out / shard_name), encoder=False, mtime=0)  # int: a float adds a pax header per member
        self.shards.append(ShardInfo(shard_name, 0))

    def _close_shard(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None
            path = self.out / self.shards[-1].name
            if self.shards[-1].count == 0:  # every sample of this shard was unreadable
                path.unlink()
                self.shards.pop()
            else:
                self.shards[-1].size_bytes = path.stat().st_size

    def add(self, key: str, encoded: Optional[bytes], label: int) -> None:
        if self._left == 0:
            self._next_shard()
        self._left -= 1
        if encoded is None:
            self.skipped += 1
            return
        cls = str(label).encode()
        self._writer.write({"__key__": key, self.encoding: encoded, "cls": cls})
        self.shards[-1].count += 1
        self.hashes.append(hashlib.sha256(encoded + b"|" + cls).hexdigest())
        self.labels.append(label)

    def finish(self, *, resolution: int, channels: int, classes: list[str], sources: list[str],
               extra: Optional[dict] = None) -> DatasetIndex:
        self._close_shard()
        if not self.hashes:
            raise ValueError(f"no readable images for {self.name!r} ({self.skipped} unreadable): nothing written")
        class_counts = [0] * len(classes)
        for label in self.labels:
            if 0 <= label < len(classes):
                class_counts[label] += 1
        # Order-free hash: the same images and labels give the same hash whatever the shuffle seed.
        content = hashlib.sha256("".join(sorted(self.hashes)).encode()).hexdigest()
        index = DatasetIndex(
            name=self.name, count=len(self.hashes), resolution=resolution, channels=channels,
            encoding=self.encoding, classes=list(classes), class_counts=class_counts, shards=self.shards,
            content_sha256=content, skipped=self.skipped, sources=list(sources), options=dict(extra or {}))
        index.save(self.out)
        return index


def write_shards(
    samples: Iterable[tuple[np.ndarray, int]],
    out_dir: str | os.PathLike,
    *,
    name: str,
    resolution: int,
    channels: int,
    classes: Optional[list[str]] = None,
    num_shards: Optional[int] = None,
    shard_size: int = 2000,
    seed: int = 0,
    sources: Optional[list[str]] = None,
    progress: bool = True,
) -> DatasetIndex:
    """Encode in-memory `samples` (HxWxC uint8 image, label) and write them as shuffled, evenly sized
    shards. (The prepare tool streams large sources through `ShardSink` instead.)

    The samples are shuffled with `seed` before sharding so every shard holds a mix of classes
    (sources often arrive sorted by class). Either `num_shards` or `shard_size` sets the split.
    """
    if num_shards is not None and num_shards < 1:
        raise ValueError(f"the number of shards must be >= 1 (got {num_shards})")
    encoded: list[tuple[bytes, int]] = []
    for image, label in tqdm(samples, desc=f"encode {name}", unit="img", disable=not progress):
        if image.shape != (resolution, resolution, channels):
            raise ValueError(f"sample of shape {image.shape} does not match {resolution}x{resolution}x{channels}")
        encoded.append((encode_png(image), int(label)))
    if not encoded:
        raise ValueError(f"no images to write for {name!r}: the sources were empty or unreadable")
    sizes = plan_shards(len(encoded), num_shards, shard_size, min_shards=1)
    sink = ShardSink(out_dir, name, sizes)
    for idx in np.random.default_rng(seed).permutation(len(encoded)):
        png, label = encoded[idx]
        sink.add(f"{idx:08d}", png, label)
    return sink.finish(resolution=resolution, channels=channels, classes=list(classes or []),
                       sources=list(sources or []))
