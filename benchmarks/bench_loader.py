"""Data-loader capacity benchmark: can the shard stream keep the trainer fed, and does it beat a folder?

    python -m benchmarks.bench_loader [--images N] [--resolution 64] [--workers 2] [--batch 64] [--source PATH]

Side by side in one run, on the same images (written once as PNG at RES x RES: the very bytes the
shards hold) and the same decode result (uint8 C x H x W):

    loader    img/s of `stream.make_loader` over shards written with `shards.write_shards`
    folder    img/s of a map-style Dataset over a folder of the same PNG files + DataLoader (same
              workers, batch and prefetch; shuffle=True), decoded with PIL exactly as `stream.decode` does
    train     img/s of `step.GANStep` (the plain DCGAN step: no EMA, no DiffAugment) for the standard DCGAN at RES (z 100, widths 64) under a
              single-process `Accelerator(cpu=True)`, fed one fixed batch (no data loading);
              fp32, plus bf16 with --bf16

The measurements run one at a time, never concurrently, in interleaved rounds (loader, folder,
train, loader, ...); each figure is the median over the rounds, so all of them see the same drift
of a shared machine's background load. Next to the wall-clock rates it reports images per
CPU-second (this process and its DataLoader workers together), which other processes' load
disturbs much less, as a cross-check of the ratios.

It is a capacity comparison: in a real run on a 2-core machine the loader's workers and the
trainer share the cores, so loader / train says how little of the CPU feeding the trainer takes.

Default source: ../shared/data/faces/fairface_val_1-3000.tar (224x224 JPEG face crops), center
cropped and resized with Lanczos. Without ../shared and without --source it prints SKIP and exits 0.
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import io
import os
import platform
import shutil
import statistics
import sys
import tarfile
import tempfile
import time
import warnings
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import psutil
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from dcgan_dist.data import stream
from dcgan_dist.data.images import IMAGE_EXTS
from dcgan_dist.data.shards import encode_png, write_shards
from dcgan_dist import config as config_mod
from dcgan_dist.loop import to_unit_range
from dcgan_dist.step import GANStep
from dcgan_dist.config import ModelCfg
from dcgan_dist.models import build_models, count_params, stage_plan

from .launcher import REPO

DEFAULT_SOURCE = REPO.parent / "shared" / "data" / "faces" / "fairface_val_1-3000.tar"
TARGET_LOADER_VS_TRAIN = 5.0
TARGET_LOADER_VS_FOLDER = 1.5
Z_DIM, WIDTH = 100, 64  # the standard DCGAN

# torch deprecates a DDP flag accelerate still passes; noise for a benchmark.
warnings.filterwarnings("ignore", message="`broadcast_buffers` is deprecated", category=FutureWarning)


# ---- source images -> RES x RES uint8 arrays -----------------------------------------------------

def iter_source(path: Path, limit: int) -> Iterator[bytes]:
    """Encoded bytes of the first `limit` images of a tar file or a folder (sorted, recursive)."""
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_EXTS and p.is_file())
        for p in files[:limit]:
            yield p.read_bytes()
        return
    n = 0
    with tarfile.open(path) as tar:
        for member in tar:
            if n >= limit:
                break
            if member.isfile() and Path(member.name).suffix.lower() in IMAGE_EXTS:
                n += 1
                yield tar.extractfile(member).read()


def to_square(data: bytes, resolution: int) -> np.ndarray:
    """Center crop to a square, then resize to resolution x resolution with Lanczos: H x W x 3 uint8."""
    img = Image.open(io.BytesIO(data)).convert("RGB")
    w, h = img.size
    side = min(w, h)
    left, top = (w - side) // 2, (h - side) // 2
    img = img.crop((left, top, left + side, top + side))
    return np.asarray(img.resize((resolution, resolution), Image.Resampling.LANCZOS))


# ---- the folder reader (the baseline) ------------------------------------------------------------

def pil_decode(data: bytes, resolution: int, channels: int) -> np.ndarray:
    """PNG bytes -> uint8 C x H x W with PIL, as `stream.decode` does it (checked equal at start-up).
    A copy rather than a call, so the baseline stays a plain PIL reader if the stream's decoder changes."""
    img = Image.open(io.BytesIO(data)).convert("L" if channels == 1 else "RGB")
    assert img.size == (resolution, resolution)
    arr = np.asarray(img)
    arr = arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)
    return np.array(arr, order="C")


class PngFolder(Dataset):
    """Map-style dataset over a folder of PNG files."""

    def __init__(self, files: list[Path], resolution: int, channels: int):
        self.files, self.resolution, self.channels = files, resolution, channels

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> torch.Tensor:
        return torch.from_numpy(pil_decode(self.files[i].read_bytes(), self.resolution, self.channels))


def endless(loader: DataLoader) -> Iterator[torch.Tensor]:
    """Epoch after epoch of a finite DataLoader (its workers are persistent: no re-forking)."""
    while True:
        yield from loader


# ---- timing ----------------------------------------------------------------------------------------

def cpu_seconds() -> float:
    """CPU time (user + system) of this process and its live children (the DataLoader workers).
    Idle workers of the loader not being measured sit blocked on a full queue and add ~nothing."""
    me = psutil.Process()
    total = 0.0
    for proc in [me] + me.children(recursive=True):
        try:
            t = proc.cpu_times()
            total += t.user + t.system
        except psutil.Error:
            pass
    return total


def measure(next_batch: Callable[[], int], warmup: int, seconds: float, min_batches: int) -> tuple[float, float]:
    """(img/s, img per CPU-second) over whole batches after `warmup` untimed ones; the window lasts
    at least `seconds` and `min_batches`."""
    for _ in range(warmup):
        next_batch()
    n_img, n_batches = 0, 0
    c0, t0 = cpu_seconds(), time.perf_counter()
    while True:
        n_img += next_batch()
        n_batches += 1
        elapsed = time.perf_counter() - t0
        if elapsed >= seconds and n_batches >= min_batches:
            return n_img / elapsed, n_img / max(cpu_seconds() - c0, 1e-9)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.bench_loader", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=int, default=3000, help="images taken from the source (default 3000)")
    p.add_argument("--resolution", type=int, default=64, help="image side in pixels (default 64)")
    p.add_argument("--workers", type=int, default=2, help="DataLoader workers of both readers (default 2)")
    p.add_argument("--batch", type=int, default=64, help="batch size of all three measurements (default 64)")
    p.add_argument("--source", type=Path, default=None, help=f"tar file or folder of images (default {DEFAULT_SOURCE})")
    p.add_argument("--shards", type=int, default=8, help="shards to write (default 8)")
    p.add_argument("--prefetch", type=int, default=4,
                   help="prefetch_factor of both loaders (default 4, like data.prefetch)")
    p.add_argument("--shuffle-buffer", type=int, default=512,
                   help="the stream's shuffle buffer (default 512, like data.shuffle_buffer)")
    p.add_argument("--rounds", type=int, default=5, help="interleaved rounds; figures are medians (default 5)")
    p.add_argument("--seconds", type=float, default=2.5, help="minimum timed seconds per measurement (default 2.5)")
    p.add_argument("--bf16", action="store_true", help="also time the training step under bf16 autocast")
    p.add_argument("--workdir", type=Path, default=None,
                   help="where to write the shards and PNGs (default: a temp dir, removed at the end)")
    args = p.parse_args(argv)
    if args.rounds < 1 or args.images < 1 or args.batch < 1 or args.workers < 0 or args.shards < 1:
        p.error("--rounds, --images, --batch and --shards must be >= 1 and --workers >= 0")
    try:
        stage_plan(args.resolution)  # fail early on a resolution the DCGAN cannot build
    except ValueError as e:
        p.error(str(e))

    source = args.source
    if source is None:
        if not DEFAULT_SOURCE.exists():
            print(f"SKIP: the default source {DEFAULT_SOURCE} is absent (no ../shared checkout); "
                  "pass --source PATH (a tar file or a folder of images) to run the benchmark.")
            return 0
        source = DEFAULT_SOURCE
    if not source.exists():
        print(f"error: --source {source} does not exist", file=sys.stderr)
        return 2

    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    os.environ.setdefault("DS_ACCELERATOR", "cpu")  # accelerate imports deepspeed, which would warn
    res, channels, workers, batch = args.resolution, 3, args.workers, args.batch
    tmp = Path(tempfile.mkdtemp(prefix="bench_loader-")) if args.workdir is None else args.workdir
    tmp.mkdir(parents=True, exist_ok=True)
    try:
        # ---- the data: the same PNG bytes as shards and as a folder --------------------------------
        t0 = time.perf_counter()
        images = [to_square(data, res) for data in iter_source(source, args.images)]
        if len(images) < batch:
            print(f"error: {len(images)} images in {source}, fewer than one batch of {batch}", file=sys.stderr)
            return 2
        n_shards = min(args.shards, len(images))
        if n_shards < max(1, workers):
            p.error(f"{n_shards} shards for {workers} workers: each worker needs a shard of its own")
        index = write_shards(((im, 0) for im in images), tmp / "shards", name="bench", resolution=res,
                             channels=channels, num_shards=n_shards, seed=0, progress=False)
        (tmp / "folder").mkdir(exist_ok=True)
        files = [tmp / "folder" / f"{i:08d}.png" for i in range(len(images))]
        for f, im in zip(files, images):
            f.write_bytes(encode_png(im))  # what write_shards stores (PNG encoding is deterministic)
        # dataset.json's content hash is over (png | label) per sample: equal hashes, equal bytes.
        folder_hash = hashlib.sha256("".join(sorted(
            hashlib.sha256(f.read_bytes() + b"|0").hexdigest() for f in files)).encode()).hexdigest()
        assert folder_hash == index.content_sha256, "the folder's PNGs differ from the shards' PNGs"
        for f in files[:batch]:  # and both readers turn them into the same pixels
            data = f.read_bytes()
            assert np.array_equal(pil_decode(data, res, channels), stream.decode({"png": data}, res, channels))
        png_kib = sum(f.stat().st_size for f in files) / len(files) / 1024
        prep_s = time.perf_counter() - t0

        # ---- 1. the shard stream, as train.py builds it ----------------------------------------------
        spec = stream.StreamSpec(
            urls=tuple(str(tmp / "shards" / s.name) for s in index.shards), counts=tuple(s.count for s in index.shards),
            batch=batch, rank=0, world_size=1, workers=max(1, workers), resolution=res, channels=channels, seed=0,
            shuffle_buffer=args.shuffle_buffer)
        shard_batches = iter(stream.make_loader(spec, workers, args.prefetch, pin_memory=False))

        def next_shard_batch() -> int:
            b = next(shard_batches)
            assert b["bad"] == 0
            return b["image"].shape[0]

        # ---- 2. the folder reader ----------------------------------------------------------------------
        folder_loader = DataLoader(
            PngFolder(files, res, channels), batch_size=batch, shuffle=True, drop_last=True,
            num_workers=workers, prefetch_factor=args.prefetch if workers > 0 else None,
            persistent_workers=workers > 0, generator=torch.Generator().manual_seed(0))
        folder_batches = endless(folder_loader)

        def next_folder_batch() -> int:
            return next(folder_batches).shape[0]

        # ---- 3. the training step, fed one fixed batch --------------------------------------------------
        fixed_u8 = next(shard_batches)["image"].clone()
        trainers: dict[str, tuple[Callable[[], int], torch.dtype]] = {}
        for name, precision in [("train fp32", "no")] + ([("train bf16", "bf16")] if args.bf16 else []):
            AcceleratorState._reset_state(reset_partial_state=True)  # a second precision in one process
            acc = Accelerator(cpu=True, mixed_precision=precision)
            torch.manual_seed(0)
            G, D = build_models(ModelCfg(resolution=res, channels=channels, z_dim=Z_DIM, g_width=WIDTH, d_width=WIDTH))
            n_params = (count_params(G), count_params(D))
            opt_g = torch.optim.Adam(G.parameters(), lr=2e-4, betas=(0.5, 0.999))
            opt_d = torch.optim.Adam(D.parameters(), lr=2e-4, betas=(0.5, 0.999))
            G, D, opt_g, opt_d = acc.prepare(G, D, opt_g, opt_d)
            noise = torch.Generator().manual_seed(0)
            # The plain DCGAN step (no EMA, no DiffAugment): what every configuration pays at least.
            cfg = config_mod.load(None, [f"train.batch={batch}", "loss.real_label=0.9", "ema.half_life_kimg=0"])
            gan_step = GANStep(cfg, acc, G, D, opt_g, opt_d, noise)

            def step(acc=acc, gan_step=gan_step, noise=noise) -> int:
                # One iteration of Loop.run without `next(batches)`.
                z = torch.randn(batch, Z_DIM, generator=noise).to(acc.device)
                stats = gan_step(to_unit_range(fixed_u8, acc.device), z, None, batch)
                assert torch.isfinite(stats).all()
                return batch

            # The dtype the convolutions really run in (accelerate casts the outputs back to fp32).
            seen: list[torch.dtype] = []
            hook = acc.unwrap_model(G).main[0].register_forward_hook(lambda m, i, o: seen.append(o.dtype))
            with torch.no_grad():
                G(torch.zeros(2, Z_DIM))
            hook.remove()
            trainers[name] = (step, seen[0])

        # ---- interleaved rounds -------------------------------------------------------------------------
        runs: dict[str, Callable[[int], tuple[float, float]]] = {}
        queued = max(1, workers) * args.prefetch  # batches a loader has ready after a pause
        # A loader's warm-up first drains what it prefetched while the others ran; the first round
        # also absorbs worker start-up and the first pass over the files.
        def warmup(r: int) -> int:
            return queued + 4 + (2 * queued if r == 0 else 0)

        runs["loader"] = lambda r: measure(next_shard_batch, warmup(r), args.seconds, 3)
        runs["folder"] = lambda r: measure(next_folder_batch, warmup(r), args.seconds, 3)
        for name, (step, _) in trainers.items():
            runs[name] = lambda r, step=step: measure(step, 2 if r == 0 else 1, args.seconds, 2)
        rows: dict[str, list[tuple[float, float]]] = {name: [] for name in runs}
        load_avg = os.getloadavg()
        t_meas = time.perf_counter()
        for r in range(args.rounds):
            for name, run in runs.items():
                rows[name].append(run(r))
        meas_s = time.perf_counter() - t_meas
        shard_batches = folder_batches = folder_loader = None  # unreferenced, the persistent workers stop
    finally:
        if args.workdir is None:
            shutil.rmtree(tmp, ignore_errors=True)

    # ---- report ---------------------------------------------------------------------------------------
    wall = {k: statistics.median(x for x, _ in v) for k, v in rows.items()}
    per_cpu = {k: statistics.median(c for _, c in v) for k, v in rows.items()}
    now = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
    print(f"bench_loader  {now}  host {platform.node()}  {_cpu_name()} x {os.cpu_count()} cores  "
          f"load average at start {load_avg[0]:.2f} / {load_avg[1]:.2f} / {load_avg[2]:.2f} (1/5/15 min)")
    print(f"torch {torch.__version__}, pillow {Image.__version__}, python {platform.python_version()}; "
          f"trainer on {torch.get_num_threads()} threads, loader workers on 1 thread each")
    print(f"data: {len(images)} images from {source}, center crop + Lanczos to {res}x{res}x{channels}, "
          f"PNG {png_kib:.1f} KiB/img; {len(index.shards)} shards and a folder of {len(files)} PNG files "
          f"with identical bytes (prepared in {prep_s:.0f} s)")
    print(f"stream: {stream.__name__} ({stream.__file__})")
    print(f"settings: batch {batch}, workers {workers}, prefetch {args.prefetch}, shuffle buffer "
          f"{args.shuffle_buffer}; {args.rounds} interleaved rounds of >= {args.seconds:g} s per measurement "
          f"({meas_s:.0f} s in all)")
    print(f"model: DCGAN {res}x{res}, z {Z_DIM}, widths {WIDTH} (G {n_params[0] / 1e6:.2f} M, "
          f"D {n_params[1] / 1e6:.2f} M parameters), Adam, single-process Accelerator(cpu=True), "
          "one fixed batch (no data loading)")
    print()
    print(f"{'':12} {'img/s':>9} {'img/CPU-s':>10}   img/s per round")
    for k, v in rows.items():
        note = f"   (convolutions in {trainers[k][1]})" if k in trainers else ""
        print(f"{k:12} {wall[k]:9.1f} {per_cpu[k]:10.1f}   {'  '.join(f'{x:.1f}' for x, _ in v)}{note}")
    print("(medians over the rounds; img/CPU-s counts this process and its DataLoader workers together)")
    print()
    print(f"{'ratio':24} {'img/s':>8}  {'per round':>13}  {'img/CPU-s':>9}  target")

    def ratio(num: str, den: str, target: float) -> None:
        rounds = [a[0] / b[0] for a, b in zip(rows[num], rows[den])]
        value = wall[num] / wall[den]
        print(f"{num + ' / ' + den:24} {value:7.2f}x  {min(rounds):5.2f}-{max(rounds):<6.2f}  "
              f"{per_cpu[num] / per_cpu[den]:8.2f}x  >= {target:g}x  {'PASS' if value >= target else 'FAIL'}")

    for name in trainers:
        ratio("loader", name, TARGET_LOADER_VS_TRAIN)
    ratio("loader", "folder", TARGET_LOADER_VS_FOLDER)
    print("(PASS/FAIL judges the img/s ratio of the medians; the img/CPU-s ratio is the load-robust cross-check)")
    print()
    who = f"the loader's {workers} worker process(es)" if workers else "the loader (inside the training process)"
    print(f"Each figure was measured alone: a capacity comparison. In a real run on this {os.cpu_count()}-core "
          f"machine {who} and the trainer share the cores, so keeping the fp32 trainer fed would take "
          f"about train/loader = {wall['train fp32'] / wall['loader']:.1%} of the CPU.")
    return 0


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


if __name__ == "__main__":
    sys.exit(main())
