"""Image sets to measure (FID's real and generated sets): webdataset shard sets (what `prepare`
writes, or any tar of images) and folders of image files, in one fixed global order, of which each
rank reads one contiguous range.

Not prepare's sources (`sources.open_source`): those are inputs to convert, listed with their class
names and shuffled before any decoding; an image set is read as it is stored, in its own order.

Order: shards sorted by URL (as `locate.resolve` returns them), samples in tar order; files sorted
by path. Every rank gets the same global index for the same image whatever the world size, so the
statistics of 1 and of N processes cover exactly the same images. Images are decoded by
`images.decode_image` as stored (gray stays gray, anything else becomes RGB).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional

import numpy as np

from . import locate
from .errors import DataError, SourceError
from .images import IMAGE_EXTS, decode_image, image_files, image_member
from .shards import DatasetIndex
from .tario import ShardReadError, tar_samples

log = logging.getLogger("dcgan_dist.metrics")


@dataclass
class ImageSet:
    """An ordered image set: `kind` 'shards' (urls are tar shards) or 'files' (urls are image files)."""

    spec: str
    kind: str
    urls: list[str]
    counts: Optional[list[int]]  # images per shard when dataset.json covers every shard
    index: Optional[DatasetIndex]
    counted: Optional[int] = None  # set by count_images() after reading shards without an index

    @classmethod
    def from_shard_set(cls, spec: str, shards: "locate.ShardSet") -> "ImageSet":
        """The shards the trainer already resolved (`locate.resolve`), as an image set."""
        return cls(spec, "shards", list(shards.urls), shards.counts, shards.index)

    @property
    def count(self) -> Optional[int]:
        """Number of images, when known without reading the data (again)."""
        if self.kind == "files":
            return len(self.urls)
        return sum(self.counts) if self.counts is not None else self.counted

    @property
    def content_sha256(self) -> Optional[str]:
        """The content hash of dataset.json (None without one): what reference caches are keyed by."""
        return self.index.content_sha256 if self.index is not None and self.counts is not None else None


def open_image_set(spec: str, resolution: int = 32, channels: int = 1, origin: str = "data.shards") -> ImageSet:
    """A shard set (directory of .tar, glob, brace pattern, URL, single .tar, `embedded:digits`) or a
    folder of image files (searched recursively). `resolution`/`channels` only choose which
    embedded data set to write; other sources are read as they are. `origin` is where `spec` came
    from (a config key or a command-line option such as `--real`), for the error messages."""
    path = Path(spec).expanduser()
    if path.is_dir() and not any(path.glob("*.tar")):
        files = [str(path / f) for f in image_files(path)]
        if not files:
            raise SourceError(f"{locate.named(origin, spec)}: a folder with neither .tar shards nor image files "
                              f"({', '.join(IMAGE_EXTS)})")
        return ImageSet(spec, "files", files, None, None)
    try:
        shards = locate.resolve(str(path) if path.exists() else spec, resolution, channels, origin=origin)
    except DataError as e:
        raise SourceError(str(e)) from None
    return ImageSet(spec, "shards", shards.urls, shards.counts, shards.index)


def _decode(data: bytes, where: str) -> np.ndarray:
    try:
        return decode_image(data)
    except Exception as e:
        raise SourceError(f"cannot decode image {where}: {e}. Remove it or re-create the data set.") from None


def _samples(urls: list[str]) -> Iterator[dict]:
    """The shards' samples through the training stream's tar reader, its errors as SourceError."""
    try:
        yield from tar_samples(list(urls))
    except ShardReadError as e:
        raise SourceError(str(e)) from e


def _shard_images(urls: list[str], skip: int) -> Iterator[np.ndarray]:
    """Images of the shards in order, the first `skip` of them passed over without decoding."""
    for sample in _samples(urls):
        key = image_member(sample)
        if key is None:
            continue  # members without an image (e.g. a stray .json) are not samples
        if skip > 0:
            skip -= 1
            continue
        yield _decode(sample[key], f"{sample.get('__url__')}:{sample.get('__key__')}.{key}")


def count_images(source: ImageSet, quiet: bool = False) -> int:
    """Images in the set; reads the shards when there is no dataset.json that counts them."""
    if source.count is not None:
        return source.count
    if not quiet:
        log.warning("%s has no dataset.json: counting its images by reading every shard (write shards with "
                    "`python -m dcgan_dist.prepare` to skip this)", source.spec)
    source.counted = sum(1 for s in _samples(source.urls) if image_member(s) is not None)
    return source.counted


def iter_range(source: ImageSet, start: int, stop: int) -> Iterator[np.ndarray]:
    """uint8 C x H x W arrays of the images with global index start..stop-1, in order. Shards before
    the range are not opened when their counts are known."""
    if stop <= start:
        return
    if source.kind == "files":
        for path in source.urls[start:stop]:
            with open(path, "rb") as f:
                yield _decode(f.read(), path)
        return
    urls, skip = list(source.urls), start
    if source.counts is not None:
        first = 0
        while first < len(urls) and skip >= source.counts[first]:
            skip -= source.counts[first]
            first += 1
        urls = urls[first:]
    produced = 0
    for image in _shard_images(urls, skip):
        yield image
        produced += 1
        if produced == stop - start:
            return
    raise SourceError(f"{source.spec}: expected images up to index {stop - 1} but the shards ended after "
                      f"{start + produced}; dataset.json does not match the shards (re-create them with prepare)")


def describe(source: ImageSet) -> str:
    what = f"{len(source.urls)} shard(s)" if source.kind == "shards" else f"{len(source.urls)} image file(s)"
    where = os.path.commonpath(source.urls) if source.urls and "://" not in source.urls[0] else source.spec
    return f"{where} ({what})"
