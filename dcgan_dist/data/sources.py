"""Image sources the prepare tool reads: folders, .zip, .tar, MNIST-format idx files, the embedded digits.

These are inputs to convert, not image sets to measure (FID's shard sets and folders are
`imagesets.open_image_set`). What counts as an image file, and how one is decoded, is `images`'.

Each source lists its images as cheap references with a class name (or None) first, then reads
one reference at a time. Listing first lets prepare shuffle and parallelise before any decoding.
A class name comes from the folder an image sits in (Fruits-360's `Training/Apple Braeburn/x.jpg`
-> `Apple Braeburn`; a flat folder has no classes).
"""

from __future__ import annotations

import gzip
import os
import tarfile
import zipfile
from pathlib import Path, PurePosixPath
from typing import Optional

import numpy as np

from .images import Payload, image_files, is_image_file

FASHION_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                   "Ankle boot"]


def _parent_class(name: str) -> Optional[str]:
    parent = PurePosixPath(name).parent.name
    return parent or None


class Source:
    """Base: `describe()` for dataset.json, `list()` -> [(ref, class name or None)], `read(ref)`."""

    gray = False  # True when every image is single-channel by nature (idx, digits)

    def describe(self) -> str:
        raise NotImplementedError

    def list(self) -> list[tuple[object, Optional[str]]]:
        raise NotImplementedError

    def read(self, ref) -> Payload:
        raise NotImplementedError


class FolderSource(Source):
    def __init__(self, root: str):
        self.root = Path(root)

    def describe(self) -> str:
        return f"folder:{self.root}"

    def list(self):
        return [(f, _parent_class(f)) for f in image_files(self.root)]

    def read(self, ref) -> bytes:
        return (self.root / ref).read_bytes()


class ZipSource(Source):
    def __init__(self, path: str):
        self.path = path
        self._zip: Optional[zipfile.ZipFile] = None  # opened lazily: once per worker process

    def describe(self) -> str:
        return f"zip:{self.path}"

    def list(self):
        with zipfile.ZipFile(self.path) as zf:
            names = sorted(n for n in zf.namelist() if not n.endswith("/") and is_image_file(n))
        return [(n, _parent_class(n)) for n in names]

    def read(self, ref) -> bytes:
        if self._zip is None:
            self._zip = zipfile.ZipFile(self.path)
        return self._zip.read(ref)


class TarSource(Source):
    """A plain tar is read by random access (one header scan, then seeks). A compressed tar cannot
    seek, so its images are read into memory during listing."""

    def __init__(self, path: str):
        self.path = path
        self._offsets: dict[str, tuple[int, int]] = {}
        self._data: dict[str, bytes] = {}
        self._file = None

    def describe(self) -> str:
        return f"tar:{self.path}"

    def list(self):
        compressed = self._is_compressed()
        with tarfile.open(self.path, "r:*") as tar:
            members = [m for m in tar if m.isreg() and is_image_file(m.name)]
            for m in members:
                if compressed:
                    self._data[m.name] = tar.extractfile(m).read()
                else:
                    self._offsets[m.name] = (m.offset_data, m.size)
        return [(n, _parent_class(n)) for n in sorted(m.name for m in members)]

    def _is_compressed(self) -> bool:
        with open(self.path, "rb") as f:
            magic = f.read(6)
        return magic[:2] == b"\x1f\x8b" or magic[:3] == b"BZh" or magic == b"\xfd7zXZ\x00"

    def read(self, ref) -> bytes:
        if ref in self._data:
            return self._data[ref]
        if self._file is None:
            self._file = open(self.path, "rb")
        offset, size = self._offsets[ref]
        self._file.seek(offset)
        return self._file.read(size)


def _read_idx(path: str) -> np.ndarray:
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rb") as f:
        raw = f.read()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise ValueError(f"{path} is not an idx file of unsigned bytes (MNIST format)")
    ndim = raw[3]
    dims = [int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if data.size != int(np.prod(dims)):
        raise ValueError(f"{path} is truncated: {data.size} bytes of data for shape {dims}")
    return data.reshape(dims)


class IdxSource(Source):
    """MNIST / Fashion-MNIST: `*-images-idx3-ubyte[.gz]`, labels from the matching `*-labels-idx1-ubyte[.gz]`."""

    gray = True

    def __init__(self, path: str):
        self.path = path
        self.images = _read_idx(path)
        if self.images.ndim != 3:
            raise ValueError(f"{path}: expected an idx3 image file (N x H x W), got {self.images.ndim} dimensions")
        labels_path = path.replace("images-idx3", "labels-idx1")
        self.labels = _read_idx(labels_path) if labels_path != path and os.path.exists(labels_path) else None
        names = FASHION_CLASSES if "fashion" in path.lower() else [str(d) for d in range(10)]
        self.names = names

    def describe(self) -> str:
        return f"idx:{self.path}"

    def list(self):
        if self.labels is None:
            return [(i, None) for i in range(len(self.images))]
        return [(i, self.names[int(c)] if int(c) < len(self.names) else str(int(c))) for i, c in enumerate(self.labels)]

    def read(self, ref) -> np.ndarray:
        return self.images[ref]


class DigitsSource(Source):
    """scikit-learn's bundled 8x8 digits (17 gray levels stretched to 0..255)."""

    gray = True

    def __init__(self):
        from sklearn.datasets import load_digits  # only this source needs scikit-learn

        digits = load_digits()
        self.images = np.round(digits.images * (255.0 / 16.0)).astype(np.uint8)
        self.labels = digits.target

    def describe(self) -> str:
        return "embedded:digits (sklearn.datasets.load_digits)"

    def list(self):
        return [(i, str(int(c))) for i, c in enumerate(self.labels)]

    def read(self, ref) -> np.ndarray:
        return self.images[ref]


def open_source(spec: str) -> Source:
    """A source from a command-line argument: `digits`, a folder, a .zip, a .tar[.gz], an idx file."""
    if spec in ("digits", "embedded:digits"):
        return DigitsSource()
    if os.path.isdir(spec):
        return FolderSource(spec)
    if not os.path.exists(spec):
        raise FileNotFoundError(f"source {spec!r} does not exist (expected a folder, .zip, .tar, idx file or 'digits')")
    if "idx3" in os.path.basename(spec):
        return IdxSource(spec)
    if zipfile.is_zipfile(spec):
        return ZipSource(spec)
    if tarfile.is_tarfile(spec):
        return TarSource(spec)
    raise ValueError(f"source {spec!r}: unknown kind; expected a folder, .zip, .tar[.gz], an MNIST idx3 file or 'digits'")
