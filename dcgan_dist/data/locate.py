"""Finding the shards that `data.shards` names, and the start-up checks that fail fast and clearly.

`data.shards` may be a directory (all its .tar files), a glob, a brace pattern
(`faces-{000000..000099}.tar`), any URL webdataset opens (`pipe:curl -s URL`, `s3://`, ...), or
`embedded:digits`, the bundled digits written once as shards into a local cache.
"""

from __future__ import annotations

import glob
import os
import shutil
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import braceexpand

from .shards import INDEX_NAME, DatasetIndex

EMBEDDED = "embedded:"


class DataError(ValueError):
    """A data problem with a message that names the key or file and the fix."""


@dataclass
class ShardSet:
    urls: list[str]
    index: Optional[DatasetIndex]  # the dataset.json beside local shards, if present

    @property
    def counts(self) -> Optional[list[int]]:
        """Samples per shard, in `urls` order, when the index covers every shard."""
        if self.index is None:
            return None
        by_name = {s.name: s.count for s in self.index.shards}
        names = [os.path.basename(u) for u in self.urls]
        return [by_name[n] for n in names] if all(n in by_name for n in names) else None


def _is_url(path: str) -> bool:
    return "://" in path or path.startswith("pipe:")


def cache_dir() -> Path:
    return Path(os.environ.get("DCGAN_DIST_CACHE", Path.home() / ".cache" / "dcgan_dist"))


def embedded_shards(name: str, resolution: int, channels: int, num_shards: int = 8) -> Path:
    """Write the embedded data set as shards once (atomically) and return their directory.

    Safe when several processes race: each writes a private temp directory and renames it; the
    first rename wins and the others discard their copy.
    """
    if name != "digits":
        raise DataError(f"data.shards={EMBEDDED}{name}: unknown embedded data set (available: {EMBEDDED}digits)")
    from .digits import CLASSES, iter_digits
    from .shards import write_shards

    target = cache_dir() / f"{name}{resolution}c{channels}"
    if (target / INDEX_NAME).is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    write_shards(iter_digits(resolution, channels), tmp, name=name, resolution=resolution, channels=channels,
                 classes=CLASSES, num_shards=num_shards, sources=["sklearn.datasets.load_digits"], progress=False)
    try:
        os.rename(tmp, target)
    except OSError:  # another process finished first
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def resolve(spec: str, resolution: int, channels: int) -> ShardSet:
    """Expand `data.shards` into a sorted list of shard URLs plus their index."""
    if spec.startswith(EMBEDDED):
        spec = str(embedded_shards(spec[len(EMBEDDED):], resolution, channels))
    if not _is_url(spec) and os.path.isdir(spec):
        spec = os.path.join(spec, "*.tar")
    urls: list[str] = []
    for pattern in braceexpand.braceexpand(spec):
        if _is_url(pattern):
            urls.append(pattern)
        elif glob.has_magic(pattern):
            urls.extend(sorted(glob.glob(pattern)))
        elif os.path.exists(pattern):
            urls.append(pattern)
    if not urls:
        raise DataError(f"data.shards={spec!r}: no shards matched. Point it at a directory of .tar shards, a glob or a "
                        "brace pattern; make shards with `python -m dcgan_dist.prepare SOURCE --out DIR`.")
    urls = sorted(dict.fromkeys(urls))
    index = None
    local = [u for u in urls if not _is_url(u)]
    if local:
        index_path = Path(local[0]).parent / INDEX_NAME
        if index_path.is_file():
            try:
                index = DatasetIndex.load(index_path)
            except (ValueError, KeyError, TypeError) as e:
                raise DataError(f"{index_path} is unreadable ({e}); re-create the shards with prepare") from e
    return ShardSet(urls, index)


def check(shards: ShardSet, *, resolution: int, channels: int, ranks: int, workers: int) -> None:
    """Start-up checks: readable shards, enough of them for every rank and worker, matching images."""
    for url in shards.urls:
        if _is_url(url):
            continue
        try:
            with tarfile.open(url, mode="r|*") as tar:
                if tar.next() is None:
                    raise tarfile.ReadError("no members")
        except (tarfile.TarError, OSError) as e:
            raise DataError(f"shard {url} is unreadable ({e}); re-create it with `python -m dcgan_dist.prepare` "
                            "or exclude it from data.shards") from None
    slots = ranks * max(1, workers)
    if len(shards.urls) < slots:
        raise DataError(
            f"data.shards matched {len(shards.urls)} shard(s) but {ranks} rank(s) x {max(1, workers)} worker(s) need at "
            f"least {slots} (each reads its own shards). Lower data.workers, or write more, smaller shards "
            "(`python -m dcgan_dist.prepare ... --shards N`).")
    idx = shards.index
    if idx is not None and (idx.resolution != resolution or idx.channels != channels):
        raise DataError(
            f"the shards hold {idx.resolution}x{idx.resolution} images with {idx.channels} channel(s) but the model "
            f"expects {resolution}x{resolution} with {channels}: set model.resolution={idx.resolution} "
            f"model.channels={idx.channels}, or prepare the data at the model's size.")
