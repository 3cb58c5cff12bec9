"""Writing images into webdataset tar shards plus the `dataset.json` index that describes them.

Layout of a shard set (what `prepare` writes and `stream` reads):

    DIR/<name>-000000.tar ...   members <key>.png (the image) and <key>.cls (class index, text)
    DIR/dataset.json            count, resolution, channels, classes, per-shard counts, content hash

Per-shard counts let a resumed run skip whole epochs and shards without reading them; the
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


def write_shards(
    samples: Iterable[tuple[np.ndarray, int]],
    out_dir: str | os.PathLike,
    *,
    name: str,
    resolution: int,
    channels: int,
    classes: Optional[list[str]] = None,
    num_shards: Optional[int] = None,
    shard_size: int = 1000,
    seed: int = 0,
    sources: Optional[list[str]] = None,
    progress: bool = True,
) -> DatasetIndex:
    """Encode `samples` (HxWxC uint8 image, label) and write them as shuffled, evenly sized shards.

    The samples are shuffled with `seed` before sharding so every shard holds a mix of classes
    (sources often arrive sorted by class). Either `num_shards` or `shard_size` sets the split.
    """
    if num_shards is not None and num_shards < 1:
        raise ValueError(f"the number of shards must be >= 1 (got {num_shards})")
    if shard_size < 1:
        raise ValueError(f"the shard size must be >= 1 (got {shard_size})")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    encoded: list[tuple[bytes, int]] = []
    for image, label in tqdm(samples, desc=f"encode {name}", unit="img", disable=not progress):
        if image.shape != (resolution, resolution, channels):
            raise ValueError(f"sample of shape {image.shape} does not match {resolution}x{resolution}x{channels}")
        encoded.append((encode_png(image), int(label)))
    if not encoded:
        raise ValueError(f"no images to write for {name!r}: the sources were empty or unreadable")

    order = np.random.default_rng(seed).permutation(len(encoded))
    n_shards = num_shards if num_shards is not None else -(-len(encoded) // shard_size)
    if n_shards > len(encoded):  # an empty shard would be unreadable for the trainer
        raise ValueError(f"{n_shards} shards asked for but only {len(encoded)} images: ask for at most "
                         f"{len(encoded)} shards")
    sizes = split_evenly(len(encoded), n_shards)
    sample_hashes, shards, start = [], [], 0
    class_counts = [0] * len(classes or [])
    for s, size in enumerate(tqdm(sizes, desc=f"write {name}", unit="shard", disable=not progress)):
        shard_name = f"{name}-{s:06d}.tar"
        with wds.TarWriter(str(out / shard_name), encoder=False, mtime=0.0) as sink:
            for idx in order[start:start + size]:
                png, label = encoded[idx]
                sink.write({"__key__": f"{idx:08d}", "png": png, "cls": str(label).encode()})
                sample_hashes.append(hashlib.sha256(png + b"|" + str(label).encode()).hexdigest())
                if 0 <= label < len(class_counts):
                    class_counts[label] += 1
        shards.append(ShardInfo(shard_name, size))
        start += size
    # Order-free hash: the same images and labels give the same hash whatever the shuffle seed.
    content = hashlib.sha256("".join(sorted(sample_hashes)).encode()).hexdigest()
    index = DatasetIndex(
        name=name, count=len(encoded), resolution=resolution, channels=channels, encoding="png",
        classes=list(classes or []), class_counts=class_counts, shards=shards,
        content_sha256=content, sources=list(sources or []),
    )
    index.save(out)
    return index
