"""Pixels in and out: the one image decoder every reader uses (prepare, the training stream, FID's
image sets) and the one conversion of generator output to uint8 pixels (FID's generated images,
sample PNGs, the sample grids of the trainer and of `sample`).

    IMAGE_EXTS     the file extensions that count as images, everywhere (folders, archives, shard members)
    open_image     encoded bytes (or a decoded array) -> a loaded PIL image: prepare crops and resizes it
    decode_image   encoded bytes -> uint8 C x H x W array, gray or RGB by one rule (`color_mode`)
    to_uint8       generator output in [-1, 1] -> uint8 pixels, one rounding rule
    image_grid     a batch in [-1, 1] -> one uint8 grid image (make_grid's layout), `save_png` writes it

Gray or RGB (`color_mode`): asked for `channels` (1 or 3), an image is converted to that; asked
for nothing (`channels=None`, FID's image sets, which are measured as stored), a gray image stays
gray (PIL modes 1, L, I, I;16) and every other becomes RGB (alpha dropped, palettes expanded).
"""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Optional, Union

import numpy as np
import torch
from PIL import Image
from torchvision.utils import make_grid

try:  # libspng: PIL's pixels for 8-bit gray and RGB PNGs at half the CPU time (as in StyleGAN2-ADA's loader)
    import pyspng
except ImportError:  # optional: PIL decodes everything, only slower
    pyspng = None

# In order of preference: a shard sample holding several image members is read from the first.
IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff", ".gif", ".ppm", ".pgm")
IMAGE_KEYS = tuple(e[1:] for e in IMAGE_EXTS)  # the same as webdataset sample keys (`<key>.png` -> "png")
GRAY_MODES = ("1", "L", "I", "I;16")  # PIL modes kept gray when no channel count is asked for
_MODES = {1: "L", 3: "RGB"}
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

Payload = Union[bytes, np.ndarray]  # encoded file bytes, or a decoded H x W / H x W x C uint8 array


def is_image_file(name: str) -> bool:
    """Whether a file or archive member name is an image: a known extension, not a hidden file."""
    return os.path.splitext(name)[1].lower() in IMAGE_EXTS and not os.path.basename(name).startswith(".")


def image_files(root: Union[str, os.PathLike]) -> list[str]:
    """The image files under `root` (recursively) as sorted relative POSIX paths."""
    root = Path(root)
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file() and is_image_file(p.name))


def image_member(sample: dict) -> Optional[str]:
    """The key of a shard sample's image member (the first of IMAGE_KEYS it holds), or None."""
    return next((k for k in IMAGE_KEYS if k in sample), None)


def color_mode(mode: str, channels: Optional[int] = None) -> str:
    """'L' or 'RGB', the mode an image of PIL mode `mode` is decoded to (see the module docstring)."""
    if channels is not None:
        return _MODES[channels]
    return "L" if mode in GRAY_MODES else "RGB"


def open_image(payload: Payload) -> Image.Image:
    """A PIL image of encoded bytes or of a decoded array, loaded (a truncated file fails here)."""
    if isinstance(payload, np.ndarray):
        return Image.fromarray(payload)
    img = Image.open(io.BytesIO(payload))
    img.load()
    return img


def _png_mode(data: bytes) -> Optional[str]:
    """'L' or 'RGB' for an 8-bit gray or RGB PNG (what libspng decodes exactly as PIL does), else None."""
    if len(data) > 33 and data[:8] == _PNG_SIGNATURE and data[12:16] == b"IHDR" and data[24] == 8:
        return {0: "L", 2: "RGB"}.get(data[25])
    return None


def _chw(arr: np.ndarray) -> np.ndarray:
    return arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)


def decode_image(data: bytes, channels: Optional[int] = None) -> np.ndarray:
    """Encoded image bytes -> a writable, C-contiguous uint8 C x H x W array in `color_mode`.

    Fast path: an 8-bit PNG already stored in the wanted mode (what `prepare` writes) is decoded by
    libspng, which then gives exactly PIL's pixels, no conversion involved. Anything else, or a PNG
    libspng refuses, goes through PIL. Raises PIL's error for unreadable data."""
    stored = _png_mode(data) if pyspng is not None else None
    if stored is not None and (channels is None or _MODES[channels] == stored):
        try:
            return np.ascontiguousarray(_chw(pyspng.load(data, stored)))
        except Exception:  # e.g. a damaged chunk libspng checks more strictly: PIL decides
            pass
    img = Image.open(io.BytesIO(data))
    img = img.convert(color_mode(img.mode, channels))
    return np.array(_chw(np.asarray(img)), order="C")  # a writable, contiguous copy


# ---- generator output -> pixels -----------------------------------------------------------------

def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """Generator output in [-1, 1] -> uint8 pixels: `(x * 127.5 + 128).clamp(0, 255)` truncated.

    The one rounding rule of the project, for FID's generated images, the PNGs of `sample --num` and
    every sample grid (`image_grid`), so all three hold the same pixels for the same output.
    Why this one:
    - It is StyleGAN's (and torch-fidelity's) rule: truncating x * 127.5 + 128 is round-half-up of
      (x + 1) * 127.5, the exact inverse of the loader's u / 127.5 - 1, so a real image pushed through
      the loader's mapping comes back bit-identical and fakes are quantised like the reals they are
      compared with.
    - FID really needs this uint8 step: the extractor takes uint8 images only (`to_network_input`)
      and the 256 levels are what it measures, so leaving it out (feeding floats) would change FID.
    - The grids used torchvision's `save_image` arithmetic, ((x + 1) / 2) * 255 + 0.5 truncated:
      the same rule on paper, but float32 rounds the two differently within a few ulps of the
      half-way points (190 of 1,018,255 float32 inputs taken there; none of 10^7 uniform draws).
      Of the two, FID's arithmetic was kept, so FID numbers are unchanged to the last digit; the
      grids and sample PNGs moved to it (they differ from before only at such inputs, by one level).
    """
    return (images.float() * 127.5 + 128).clamp_(0, 255).to(torch.uint8)


def image_grid(images: torch.Tensor, nrow: int) -> torch.Tensor:
    """A batch in [-1, 1] (N x C x H x W) -> one uint8 3 x H' x W' grid: `nrow` images per row,
    2-pixel black padding, gray repeated to RGB (torchvision's make_grid layout)."""
    return make_grid(to_uint8(images.detach().cpu()), nrow=nrow, padding=2)


def save_png(image: torch.Tensor, path: Union[str, os.PathLike]) -> None:
    """Write a uint8 C x H x W tensor (C = 1 or 3) as a PNG file."""
    arr = image.cpu().numpy()
    Image.fromarray(arr[0] if arr.shape[0] == 1 else arr.transpose(1, 2, 0)).save(path)
