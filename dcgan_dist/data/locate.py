"""Finding the shards that `data.shards` names, and the start-up checks that fail fast and clearly.

`data.shards` may be a directory (all its .tar files), a glob, a brace pattern
(`faces-{000000..000099}.tar`), any URL webdataset opens (`pipe:curl -s URL`, `s3://`, ...), or
`embedded:digits`, the bundled digits written once as shards into a local cache.

The start-up check walks the tar structure of every local shard (headers only, seeking over the
images; see `tario.walk_tar`) and compares it with dataset.json, so a truncated or damaged copy is
refused by name before training starts. Remote shards (`pipe:`, `s3://`, ...) cannot be walked
without downloading them; a failure while streaming one is reported by the reader instead.
"""

from __future__ import annotations

import glob
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import braceexpand

from .errors import DataError  # re-exported: the trainer and the tools import it from here
from .shards import INDEX_NAME, DatasetIndex
from .tario import TarLayoutError, is_remote, read_fix, walk_tar

EMBEDDED = "embedded:"
log = logging.getLogger("dcgan_dist")


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


def cache_dir(*parts: str) -> Path:
    """`$DCGAN_DIST_CACHE` (default ~/.cache/dcgan_dist), or the folder `parts` in it: the one home of
    every cache (embedded data sets here, Inception weights in `inception/`, FID statistics in `fid/`)."""
    return Path(os.environ.get("DCGAN_DIST_CACHE", Path.home() / ".cache" / "dcgan_dist")).joinpath(*parts)


def embedded_shards(name: str, resolution: int, channels: int, num_shards: int = 8,
                    origin: str = "data.shards") -> Path:
    """Write the embedded data set as shards once (atomically) and return their directory.

    Safe when several processes race: each writes a private temp directory and renames it; the
    first rename wins and the others discard their copy.
    """
    if name != "digits":
        raise DataError(f"{named(origin, EMBEDDED + name)}: unknown embedded data set (available: {EMBEDDED}digits)")
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


def named(origin: str, value: str) -> str:
    """How a message names where a path came from: `data.shards='x'` (a config key), `--real x` (an option)."""
    return f"{origin} {value}" if origin.startswith("-") else f"{origin}={value!r}"


def resolve(spec: str, resolution: int, channels: int, origin: str = "data.shards") -> ShardSet:
    """Expand `data.shards` (or the command-line option `origin`) into a sorted list of shard URLs
    plus their index."""
    given = spec
    if spec.startswith(EMBEDDED):
        spec = str(embedded_shards(spec[len(EMBEDDED):], resolution, channels, origin=origin))
    if not is_remote(spec) and os.path.isdir(spec):
        spec = os.path.join(spec, "*.tar")
    urls: list[str] = []
    for pattern in braceexpand.braceexpand(spec):
        if is_remote(pattern):
            urls.append(pattern)
        elif glob.has_magic(pattern):
            urls.extend(sorted(glob.glob(pattern)))
        elif os.path.exists(pattern):
            urls.append(pattern)
    if not urls:
        missing = not glob.has_magic(spec) and "{" not in spec and not is_remote(spec)
        raise DataError(f"{named(origin, given)}: {'no such file or directory' if missing else 'no shards matched'}. "
                        "Point it at a directory of .tar shards, a glob or a "
                        "brace pattern; make shards with `python -m dcgan_dist.prepare SOURCE --out DIR`.")
    urls = sorted(dict.fromkeys(urls))
    index = None
    local = [u for u in urls if not is_remote(u)]
    if local:
        index_path = Path(local[0]).parent / INDEX_NAME
        if index_path.is_file():
            try:
                index = DatasetIndex.load(index_path)
            except (ValueError, KeyError, TypeError) as e:
                raise DataError(f"{index_path} is unreadable ({e}); re-create the shards with prepare") from e
    return ShardSet(urls, index)


def _samples(n: int) -> str:
    return f"{n} sample" if n == 1 else f"{n} samples"


def check_shard(url: str, index: Optional[DatasetIndex]) -> None:
    """Walk one local shard's tar structure and compare it with what dataset.json recorded for it."""
    try:
        layout = walk_tar(url)
    except TarLayoutError as e:
        raise DataError(f"shard {url} {e}. {read_fix(url)}") from None
    except OSError as e:
        raise DataError(f"shard {url} is unreadable ({e.strerror or e}). {read_fix(url)}") from None
    if layout.samples == 0:
        raise DataError(f"shard {url} holds no samples. {read_fix(url)}")
    recorded = next((s for s in index.shards if s.name == os.path.basename(url)), None) if index else None
    size = os.path.getsize(url)
    if recorded is not None and recorded.size_bytes is not None and size != recorded.size_bytes:
        raise DataError(f"shard {url} is {size:,} bytes but {INDEX_NAME} records {recorded.size_bytes:,} "
                        f"({_samples(layout.samples)} found, {recorded.count} recorded): a partial or altered "
                        f"copy. {read_fix(url)}")
    if recorded is not None and layout.samples != recorded.count:
        raise DataError(f"shard {url} holds {_samples(layout.samples)} but {INDEX_NAME} records {recorded.count}: "
                        f"a partial or altered copy. {read_fix(url)}")
    if not layout.end_blocks and (recorded is None or recorded.size_bytes is None):
        # A cut exactly at a member boundary looks like this, and nothing recorded can tell.
        log.warning("shard %s has no end-of-archive blocks, so it may have been cut short at a member boundary; "
                    "re-copy it if it came from elsewhere", url)


def check(shards: ShardSet, *, resolution: int, channels: int, ranks: int, workers: int) -> None:
    """Start-up checks: every local shard's tar structure intact and as dataset.json recorded it,
    enough shards for every rank and worker, images of the model's size."""
    for url in shards.urls:
        if not is_remote(url):  # remote shards cannot be walked without reading them whole
            check_shard(url, shards.index)
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
