"""Convert image sources into webdataset shards plus dataset.json.

    python -m dcgan_dist.prepare digits --out data/digits32 --resolution 32

Sources so far: `digits` (scikit-learn's bundled 8x8 handwritten digits, 1,797 images).
"""

from __future__ import annotations

import argparse
import sys
import time

from .data.digits import CLASSES, iter_digits
from .data.shards import write_shards

SOURCES = ("digits",)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m dcgan_dist.prepare", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("source", choices=SOURCES, help="what to convert")
    p.add_argument("--out", required=True, help="output directory for the shards and dataset.json")
    p.add_argument("--resolution", type=int, default=32, help="image side in pixels (default 32)")
    p.add_argument("--channels", type=int, choices=(1, 3), default=1, help="1 = gray, 3 = RGB (default 1)")
    p.add_argument("--shards", type=int, default=8, help="number of shards (>= ranks x workers; default 8)")
    p.add_argument("--seed", type=int, default=0, help="seed of the shuffle before sharding")
    args = p.parse_args(argv)
    if args.resolution < 8:
        p.error("--resolution must be >= 8")
    t0 = time.time()
    try:
        index = write_shards(iter_digits(args.resolution, args.channels), args.out, name=args.source,
                             resolution=args.resolution, channels=args.channels, classes=CLASSES,
                             num_shards=args.shards, seed=args.seed, sources=["sklearn.datasets.load_digits"])
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {index.count} images in {len(index.shards)} shards to {args.out} "
          f"({args.resolution}x{args.resolution}x{args.channels}) in {time.time() - t0:.1f} s; "
          f"content sha256 {index.content_sha256[:16]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
