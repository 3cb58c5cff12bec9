"""The embedded default data set: scikit-learn's bundled 8x8 handwritten digits (1,797 real images).

It ships inside an installed package, so the quickstart and the tests need no download.
"""

from __future__ import annotations

from typing import Iterator

import numpy as np
from PIL import Image

CLASSES = [str(d) for d in range(10)]


def iter_digits(resolution: int, channels: int = 1) -> Iterator[tuple[np.ndarray, int]]:
    """Yield (uint8 HxWxC image, label) for every digit, upsampled to `resolution`.

    The originals hold 17 gray levels (0..16); they are stretched to 0..255 and upsampled with
    bicubic interpolation, which gives smooth strokes instead of 8x8 blocks.
    """
    from .sources import DigitsSource  # the prepare tool's reader of the same data

    source = DigitsSource()
    for ref, label in source.list():
        img = Image.fromarray(source.read(ref), mode="L")
        img = img.resize((resolution, resolution), Image.Resampling.BICUBIC)
        if channels == 3:
            img = img.convert("RGB")
        arr = np.asarray(img)
        yield (arr[:, :, None] if arr.ndim == 2 else arr), int(label)
