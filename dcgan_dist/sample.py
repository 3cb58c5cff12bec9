"""Images from a trained generator: single PNGs, a grid, latent interpolations, the training-progress GIF.

    python -m dcgan_dist.sample RUN_OR_CHECKPOINT --num 1000 --out DIR     # DIR/000000.png ...
    python -m dcgan_dist.sample RUN_OR_CHECKPOINT --grid grid.png [--grid-size 64] [--per-class 8]
    python -m dcgan_dist.sample RUN_OR_CHECKPOINT --interp interp.png [--steps 10] [--pairs 8]
    python -m dcgan_dist.sample RUN_OR_CHECKPOINT --gif progress.gif [--fps 4]
    options: [--class K] [--seed S] [--device cpu|cuda[:i]] [--batch 64] [--no-progress]

RUN_OR_CHECKPOINT is a checkpoint directory (e.g. RUN/checkpoints/best) or a run directory (its
newest complete checkpoint). The generator is rebuilt from the config in its meta.json and loaded
from generator.safetensors (the EMA weights when the run averaged G). Several outputs may be asked
for at once. Sample i's latent is seeded by (--seed, i) alone (default seed: the run's), so image i
is the same whatever --batch or --num (and an unconditional grid image i is --num image i).

Conditional generators: --num gives image i the class i mod num_classes and writes DIR/labels.csv
(file,class); --grid has one row per class (class 0 on top), column j using the same latent in every
row, so rows differ only by class (--grid-size is then unused); --interp row p is class
p mod num_classes. --class K gives every image class K (and --grid then --grid-size images).

--interp row p walks by spherical interpolation (slerp) from latent 2p to latent 2p+1.
--gif needs no generator: it animates RUN/samples/fakes_<kimg>.png, the fixed-noise grids the
trainer wrote, in kimg order, each frame captioned with its kimg.
Bad input prints one paragraph (what, where, how to fix it) and exits with status 2.
"""

from __future__ import annotations

import argparse
import logging
import math
import sys
from pathlib import Path
from typing import Optional

import torch
from PIL import Image, ImageDraw
from tqdm import tqdm

from . import checkpoint, errors, layout, tracking
from .errors import UserError
from .data.images import image_grid, save_png, to_uint8
from .metrics.evaluation import latents

log = logging.getLogger("dcgan_dist")


class SampleError(UserError, ValueError):
    """Bad input worth a one-paragraph message, not a traceback."""


def parse_args(argv: Optional[list[str]]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m dcgan_dist.sample", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("target", help="run directory (newest complete checkpoint) or checkpoint directory")
    p.add_argument("--num", type=int, help="write this many single PNG images into --out")
    p.add_argument("--out", metavar="DIR", help="folder for --num's images")
    p.add_argument("--grid", metavar="PATH", help="write one image grid PNG")
    p.add_argument("--grid-size", type=int, default=64, help="images in --grid (default 64)")
    p.add_argument("--per-class", type=int, default=8, help="conditional --grid: columns per class row (default 8)")
    p.add_argument("--interp", metavar="PATH", help="write a latent interpolation grid PNG (rows = pairs)")
    p.add_argument("--steps", type=int, default=10, help="--interp: images per row, endpoints included (default 10)")
    p.add_argument("--pairs", type=int, default=8, help="--interp: rows, one latent pair each (default 8)")
    p.add_argument("--gif", metavar="PATH", help="animate the run's samples/fakes_<kimg>.png into a GIF")
    p.add_argument("--fps", type=float, default=4.0, help="--gif frames per second (default 4)")
    p.add_argument("--class", dest="cls", type=int, metavar="K", help="conditional G: only class K")
    p.add_argument("--seed", type=int, help="latent seed (default: the run's seed from the checkpoint config)")
    p.add_argument("--device", help="torch device (default cuda if available, else cpu)")
    p.add_argument("--batch", type=int, default=64, help="images per generator call (default 64)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = p.parse_args(argv)
    args.sampling = args.num is not None or bool(args.grid or args.interp)  # needs the generator
    if not (args.sampling or args.gif):
        p.error("nothing to write: give at least one of --num N --out DIR, --grid PATH, --interp PATH, --gif PATH")
    if (args.num is None) != (args.out is None):
        p.error("--num and --out go together: --num N --out DIR")
    counts = (1 if args.num is None else args.num, args.grid_size, args.per_class, args.pairs, args.batch)
    if min(counts) < 1 or args.steps < 2:
        p.error("--num, --grid-size, --per-class, --pairs and --batch must be >= 1, --steps >= 2")
    if args.fps <= 0:
        p.error("--fps must be > 0")
    if args.cls is not None and not args.sampling:
        p.error("--class applies to --num, --grid and --interp (the --gif frames are the run's own grids)")
    return args


def pick_device(spec: Optional[str]) -> torch.device:
    if spec is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(spec)
    except RuntimeError:
        raise SampleError(f"--device {spec}: not a torch device; use cpu, cuda or cuda:<index>") from None
    if device.type == "cuda" and (not torch.cuda.is_available() or (device.index or 0) >= torch.cuda.device_count()):
        raise SampleError(f"--device {spec}: no such CUDA device here ({torch.cuda.device_count()} visible); "
                          "use --device cpu or leave --device out")
    return device


def check_class(cls: Optional[int], num_classes: int, ckpt: Path) -> None:
    """Refuse --class before any weight is loaded: the config already says whether G is conditional."""
    if cls is None:
        return
    if num_classes == 0:
        raise SampleError(f"--class {cls}: the generator of {ckpt} is unconditional (model.num_classes=0), so it "
                          "has no classes; leave --class out")
    if not 0 <= cls < num_classes:
        raise SampleError(f"--class {cls}: out of range, the generator of {ckpt} has {num_classes} classes; "
                          f"use --class 0 .. {num_classes - 1}")


@torch.no_grad()
def generate(G, z: torch.Tensor, labels: Optional[torch.Tensor], batch: int, device: torch.device) -> torch.Tensor:
    """G's images for latents z (and labels), in batches, on the CPU as float32 in [-1, 1]."""
    out = []
    for s in range(0, len(z), batch):
        lb = labels[s:s + batch].to(device) if labels is not None else None
        out.append(G(z[s:s + batch].to(device), lb).float().cpu())
    return torch.cat(out)


def row_labels(n: int, cls: Optional[int], num_classes: int) -> Optional[torch.Tensor]:
    """Labels of images 0..n-1: none (unconditional), all --class, or i mod num_classes (balanced, seed-free)."""
    if not num_classes:
        return None
    return torch.full((n,), cls, dtype=torch.long) if cls is not None else torch.arange(n) % num_classes


def write_images(G, args, seed: int, device: torch.device) -> None:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    all_labels = row_labels(args.num, args.cls, G.num_classes)
    bar = tqdm(total=args.num, desc="sampling", unit="img", disable=args.no_progress, dynamic_ncols=True)
    for s in range(0, args.num, args.batch):
        e = min(s + args.batch, args.num)
        labels = all_labels[s:e] if all_labels is not None else None
        pixels = to_uint8(generate(G, latents(seed, s, e, G.z_dim), labels, args.batch, device))
        for i, img in zip(range(s, e), pixels):
            save_png(img, out / f"{i:06d}.png")
        bar.update(e - s)
    bar.close()
    note = ""
    if all_labels is not None:  # the class of each file, for class-wise evaluation or data sets
        rows = "".join(f"{i:06d}.png,{int(c)}\n" for i, c in enumerate(all_labels))
        (out / "labels.csv").write_text("file,class\n" + rows)
        note = f", classes in {out / 'labels.csv'}"
    print(f"wrote {args.num} images {out / '000000.png'} .. {out / f'{args.num - 1:06d}.png'}{note}")


def save_grid(images: torch.Tensor, nrow: int, path: str) -> None:
    """The same grid as the trainer's fakes_*.png (tracking.py): `data.images.image_grid`, the pixels of --num."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    save_png(image_grid(images, nrow), path)


def write_grid(G, args, seed: int, device: torch.device) -> None:
    if G.num_classes and args.cls is None:  # row r = class r; column j = latent j in every row
        k, c = args.per_class, G.num_classes
        z = latents(seed, 0, k, G.z_dim).repeat(c, 1)
        labels = torch.arange(c).repeat_interleave(k)
        save_grid(generate(G, z, labels, args.batch, device), k, args.grid)
        print(f"wrote grid {args.grid}: {c} class rows (0 .. {c - 1}, top to bottom) x {k} images")
        return
    n = args.grid_size
    nrow = max(1, int(math.sqrt(n)))  # as the trainer's grids
    save_grid(generate(G, latents(seed, 0, n, G.z_dim), row_labels(n, args.cls, G.num_classes), args.batch, device),
              nrow, args.grid)
    print(f"wrote grid {args.grid}: {n} images" + (f" of class {args.cls}" if args.cls is not None else ""))


def slerp(a: torch.Tensor, b: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Spherical interpolation from a (t=0) to b (t=1), one row per t. Gaussian latents lie near the sphere
    of radius sqrt(z_dim); the straight line between two dips inside it, to norms G rarely saw in training."""
    omega = torch.acos(torch.dot(a / a.norm(), b / b.norm()).clamp(-1, 1))
    if omega < 1e-4:  # (anti)parallel: sin(omega) ~ 0, the line is as good and well defined
        return torch.lerp(a[None], b[None], t[:, None])
    return (torch.sin((1 - t) * omega) / torch.sin(omega))[:, None] * a + \
        (torch.sin(t * omega) / torch.sin(omega))[:, None] * b


def write_interp(G, args, seed: int, device: torch.device) -> None:
    pairs, steps = args.pairs, args.steps
    ends = latents(seed, 0, 2 * pairs, G.z_dim).view(pairs, 2, G.z_dim)
    t = torch.linspace(0, 1, steps)
    z = torch.cat([slerp(a, b, t) for a, b in ends])
    per_row = row_labels(pairs, args.cls, G.num_classes)
    labels = per_row.repeat_interleave(steps) if per_row is not None else None
    save_grid(generate(G, z, labels, args.batch, device), steps, args.interp)
    print(f"wrote interpolation {args.interp}: {pairs} rows x {steps} steps")


def run_dir_of(target: str) -> Path:
    """--gif accepts the run directory or any checkpoint in it (RUN/checkpoints/<name>)."""
    path = Path(target)
    return path.parent.parent if (path / checkpoint.META).is_file() else path


def fakes_frames(samples: Path) -> list[tuple[float, Path]]:
    """(kimg, path) of samples/fakes_<kimg>.png, by kimg (numerically: names are zero-padded, but be safe)."""
    found = []
    for p in samples.glob("fakes_*.png"):
        try:
            found.append((float(p.stem[len("fakes_"):]), p))
        except ValueError:  # fakes_foo.png: not the trainer's
            continue
    return sorted(found)


def write_gif(target: str, path: str, fps: float) -> None:
    samples = run_dir_of(target) / layout.SAMPLES
    frames = fakes_frames(samples)
    if not frames:
        raise SampleError(f"--gif: no fakes_<kimg>.png in {samples}. --gif needs the run directory (or a checkpoint "
                          "in it) of a run that wrote sample grids; the trainer writes one every "
                          "train.sample_every_kimg")
    images, size = [], None
    for kimg, p in frames:
        img = Image.open(p).convert("RGB")
        size = size or img.size
        img = img if img.size == size else img.resize(size)  # a resumed run may have changed train.sample_grid
        draw = ImageDraw.Draw(img)
        text = f"{kimg:g} kimg"
        box = draw.textbbox((2, 1), text)
        draw.rectangle((0, 0, box[2] + 2, box[3] + 2), fill="black")  # legible over any image
        draw.text((2, 1), text, fill="white")
        images.append(img)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    images[0].save(path, save_all=True, append_images=images[1:], duration=round(1000 / fps), loop=0)
    print(f"wrote GIF {path}: {len(images)} frames ({frames[0][0]:g} .. {frames[-1][0]:g} kimg) at {fps:g} fps")


def run(args: argparse.Namespace) -> None:
    if args.sampling:
        device = pick_device(args.device)
        opened = checkpoint.open_checkpoint(args.target)
        meta, cfg = opened.meta, opened.cfg
        check_class(args.cls, cfg.model.num_classes, opened.path)
        G, weights = checkpoint.load_generator(opened, device)
        seed = cfg.seed if args.seed is None else args.seed
        kind = f"{G.num_classes} classes" if G.num_classes else "unconditional"
        what = {"ema": "EMA of G", "G": "G"}.get(meta.get("generator"), "generator")  # the trainer says which
        print(f"loaded {weights} ({what} weights, kimg {meta.get('kimg')}, {kind}) "
              f"on {device}, seed {seed}")
        if args.num is not None:
            write_images(G, args, seed, device)
        if args.grid:
            write_grid(G, args, seed, device)
        if args.interp:
            write_interp(G, args, seed, device)
    if args.gif:
        write_gif(args.target, args.gif, args.fps)


def main(argv: Optional[list[str]] = None) -> int:
    args = parse_args(argv)
    tracking.setup_logging(None, True, 0)
    try:
        run(args)
    except UserError as e:
        return errors.report(e)
    except OSError as e:  # an output that cannot be written: one line, not a traceback
        log.error("cannot write %s: %s", e.filename or "the output", e.strerror or e)
        return errors.EXIT_USER_ERROR
    return 0


if __name__ == "__main__":
    sys.exit(main())
