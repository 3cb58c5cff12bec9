"""Convert image sources into webdataset shards plus dataset.json, the format training streams.

    python -m dcgan_dist.prepare SOURCE [SOURCE ...] --out DIR --resolution R [options]

Sources (several may be combined): a folder of images (recursive), a .zip, a .tar or .tar.gz
(class = the folder an image sits in, e.g. Fruits-360's Training/<class>/<file>.jpg), an MNIST /
Fashion-MNIST `*-images-idx3-ubyte.gz` file (labels from the matching labels file), or `digits`
(the embedded scikit-learn digits).

Examples:
    python -m dcgan_dist.prepare fruits360/apple.tar --include 'Apple *' --out data/apple64 --resolution 64
    python -m dcgan_dist.prepare train-images-idx3-ubyte.gz --out data/fashion28 --resolution 28
    python -m dcgan_dist.prepare faces/ --out data/faces64 --resolution 64 --no-labels

Images are centre-cropped to a square (--crop none stretches instead), resized with an
antialiasing filter (Lanczos by default), converted to gray or RGB and stored losslessly as PNG
(or JPEG). Unreadable images are skipped and counted. The images are shuffled (--seed) before
sharding so that every shard mixes all classes.
"""

from __future__ import annotations

import argparse
import fnmatch
import io
import multiprocessing as mp
import sys
import time
from typing import Optional

import numpy as np
from PIL import Image
from tqdm import tqdm

from . import errors
from .errors import UserError
from .data.images import color_mode, open_image
from .data.shards import ShardSink, plan_shards
from .data.sources import Source, open_source

FILTERS = {"lanczos": Image.Resampling.LANCZOS, "box": Image.Resampling.BOX, "bicubic": Image.Resampling.BICUBIC,
           "bilinear": Image.Resampling.BILINEAR, "nearest": Image.Resampling.NEAREST}

# Set in each worker process (inherited through fork; sources hold open files and in-memory data).
_SOURCES: list[Source] = []
_OPTS: Optional[argparse.Namespace] = None


def convert(image: Image.Image, resolution: int, channels: int, resize: str, crop: str) -> Image.Image:
    """Centre-crop (optional), resize and set the colour mode of one image."""
    image = image.convert(color_mode(image.mode, channels))
    if crop == "center" and image.width != image.height:
        side = min(image.size)
        left, top = (image.width - side) // 2, (image.height - side) // 2
        image = image.crop((left, top, left + side, top + side))
    if image.size != (resolution, resolution):
        image = image.resize((resolution, resolution), FILTERS[resize])
    return image


def encode(image: Image.Image, encoding: str, quality: int) -> bytes:
    buf = io.BytesIO()
    if encoding == "png":
        image.save(buf, format="PNG", compress_level=6)
    else:
        image.save(buf, format="JPEG", quality=quality, subsampling=0)
    return buf.getvalue()


def _init_worker(sources: list[Source], opts: argparse.Namespace) -> None:
    global _SOURCES, _OPTS
    _SOURCES, _OPTS = sources, opts


def _process(task: tuple[int, object]) -> Optional[bytes]:
    """Read, convert and encode one image; None when it cannot be read."""
    src, ref = task
    o = _OPTS
    try:
        image = convert(open_image(_SOURCES[src].read(ref)), o.resolution, o.channels, o.resize, o.crop)
        return encode(image, o.encoding, o.quality)
    except Exception:  # any decoder error means "unreadable": counted, not fatal
        return None


def parse_args(argv: Optional[list[str]]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m dcgan_dist.prepare", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("sources", nargs="+", metavar="SOURCE", help="folder, .zip, .tar[.gz], idx3 file, or digits")
    p.add_argument("--out", required=True, help="output directory for the shards and dataset.json")
    p.add_argument("--resolution", type=int, required=True, help="image side in pixels (e.g. 28, 32, 64, 128)")
    p.add_argument("--channels", choices=("auto", "1", "3"), default="auto",
                   help="1 = gray, 3 = RGB; auto = gray for idx/digits sources, RGB otherwise")
    p.add_argument("--resize", choices=sorted(FILTERS), default="lanczos", help="resize filter (default lanczos)")
    p.add_argument("--crop", choices=("center", "none"), default="center",
                   help="centre-crop non-square images to a square first (default), or stretch (none)")
    p.add_argument("--include", action="append", default=[], metavar="PATTERN",
                   help="keep only classes matching this glob (repeatable), e.g. --include 'Apple *'")
    p.add_argument("--no-labels", action="store_true", help="store no class labels")
    p.add_argument("--shards", type=int, default=None, help="number of shards (default: >= 64, ~2000 images each)")
    p.add_argument("--shard-size", type=int, default=2000, help="images per shard when --shards is not given")
    p.add_argument("--encoding", choices=("png", "jpg"), default="png", help="png = lossless (default)")
    p.add_argument("--quality", type=int, default=95, help="JPEG quality with --encoding jpg")
    p.add_argument("--seed", type=int, default=0, help="seed of the shuffle before sharding")
    p.add_argument("--workers", type=int, default=mp.cpu_count(), help="parallel encoder processes")
    p.add_argument("--name", default=None, help="shard file prefix (default: the --out folder's name)")
    args = p.parse_args(argv)
    if args.resolution < 8:
        p.error("--resolution must be >= 8")
    return args


def gather(sources: list[Source], include: list[str], no_labels: bool):
    """All (source index, ref, class name) items, filtered by --include, and the sorted class names."""
    items = [(i, ref, cls) for i, s in enumerate(sources) for ref, cls in s.list()]
    if not items:
        raise ValueError("the sources hold no images (looked for " + ", ".join(s.describe() for s in sources) + ")")
    if include:
        available = sorted({c for _, _, c in items if c is not None})
        items = [it for it in items if it[2] is not None and any(fnmatch.fnmatch(it[2], p) for p in include)]
        if not items:
            raise ValueError(f"--include {include} matches no class; classes are: {available[:30]}"
                             f"{' ...' if len(available) > 30 else ''}")
    classes = [] if no_labels else sorted({c for _, _, c in items if c is not None})
    return items, classes


def main(argv: Optional[list[str]] = None) -> int:
    args = parse_args(argv)
    t0 = time.time()
    try:
        sources = [open_source(s) for s in args.sources]
        items, classes = gather(sources, args.include, args.no_labels)
        if args.channels == "auto":
            args.channels = "1" if all(s.gray for s in sources) else "3"
        args.channels = int(args.channels)
        sizes = plan_shards(len(items), args.shards, args.shard_size)
    except (UserError, OSError, ValueError) as e:  # a missing file is the user's to fix too
        return errors.report(e)
    label_of = {c: i for i, c in enumerate(classes)}
    order = np.random.default_rng(args.seed).permutation(len(items))
    name = args.name or (args.out.rstrip("/").split("/")[-1] or "data")
    sink = ShardSink(args.out, name, sizes, encoding=args.encoding)
    tasks = [(items[i][0], items[i][1]) for i in order]
    print(f"{len(items)} images from {len(sources)} source(s), {len(classes)} classes -> {len(sizes)} shards "
          f"in {args.out} at {args.resolution}x{args.resolution}x{args.channels}", file=sys.stderr)
    with mp.get_context("fork").Pool(max(1, args.workers), initializer=_init_worker, initargs=(sources, args)) as pool:
        results = pool.imap(_process, tasks, chunksize=32)
        for i, encoded in zip(order, tqdm(results, total=len(tasks), desc=f"prepare {name}", unit="img")):
            cls = items[i][2]
            sink.add(f"{i:08d}", encoded, label_of.get(cls, -1) if cls is not None else -1)
    try:
        index = sink.finish(resolution=args.resolution, channels=args.channels, classes=classes,
                            sources=[s.describe() for s in sources],
                            extra={"resize": args.resize, "crop": args.crop, "include": args.include,
                                   "seed": args.seed, "quality": args.quality if args.encoding == "jpg" else None})
    except (UserError, ValueError) as e:
        return errors.report(e)
    dt = time.time() - t0
    print(f"wrote {index.count} images ({index.skipped} unreadable, skipped) in {len(index.shards)} shards to "
          f"{args.out} in {dt:.1f} s ({index.count / dt:.0f} img/s); {len(classes)} classes; "
          f"content sha256 {index.content_sha256[:16]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
