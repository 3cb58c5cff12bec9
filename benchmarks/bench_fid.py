"""FID throughput on this machine: the project's feature pipeline against bare inference of the
same network, and the wall time of a whole FID evaluation of a generator.

    python -m benchmarks.bench_fid [--inception PATH] [--num 10000] [--batch 64] [--rounds 3]

1. Feature extraction, measured in alternating rounds in one process (so machine load hits both
   alike), median img/s of each:
     bare      the weights file's own network (TorchScript module, or the unfused FIDInceptionV3 for a
               state dict) on inputs already resized and scaled: network time only;
     pipeline  InceptionExtractor on uint8 generator-sized images: quantised input -> TF1 resize ->
               scaling -> BN-folded, channels-last network: everything FID needs per image.
   The target is pipeline / bare >= 1.0 although the pipeline does more work.
2. FID of `--num` samples of a 64x64 DCGAN generator (random weights: the cost does not depend on
   them) against reference statistics of real images: generation + extraction, the one reduction,
   the Frechet distance; extrapolated to 10,000 samples when `--num` is smaller.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import torch

from dcgan_dist.data.images import to_uint8
from dcgan_dist.metrics import evaluation
from dcgan_dist.metrics.reference import RefStats
from dcgan_dist.metrics.inception import (load_torchscript, detect_format, load_extractor, load_network,
                                          to_network_input)
from dcgan_dist.models import Generator

from .launcher import REPO

DEFAULT_WEIGHTS = REPO.parent / "shared" / "data" / "fid_inception" / "default_1.pt"


def rate(fn, n: int) -> float:
    t0 = time.perf_counter()
    fn()
    return n / (time.perf_counter() - t0)


def bench_extraction(path: Path, batch: int, rounds: int, resolution: int) -> dict:
    extractor = load_extractor(path)
    if detect_format(path) == "torchscript":
        bare_net = load_torchscript(path)
        bare_name = "TorchScript module"
    else:
        bare_net = load_network(path)[0]
        bare_name = "FIDInceptionV3 (unfused)"
    gen = torch.Generator().manual_seed(0)
    fakes = torch.rand(batch, 3, resolution, resolution, generator=gen) * 2 - 1  # generator output in [-1, 1]
    prepared = to_network_input(to_uint8(fakes))  # what the bare network is handed, ready-made
    with torch.inference_mode():
        bare_net(prepared[:2])  # warm-up: oneDNN primitive creation
    extractor(to_uint8(fakes[:2]))

    def bare():
        with torch.inference_mode():
            bare_net(prepared)

    def pipeline():
        extractor(to_uint8(fakes))

    bare_rates, pipe_rates = [], []
    for r in range(rounds):
        bare_rates.append(rate(bare, batch))
        pipe_rates.append(rate(pipeline, batch))
        print(f"  round {r + 1}/{rounds}: bare {bare_rates[-1]:6.2f} img/s | pipeline {pipe_rates[-1]:6.2f} img/s",
              flush=True)
    b, p = statistics.median(bare_rates), statistics.median(pipe_rates)
    return {"bare_name": bare_name, "bare": b, "pipeline": p, "ratio": p / b, "extractor": extractor}


def bench_fid(extractor, num: int, batch: int, ref_num: int) -> dict:
    faces = REPO.parent / "shared" / "data" / "faces" / "fairface_val_1-3000.tar"
    t0 = time.perf_counter()
    if faces.is_file():
        ref_stats = evaluation.image_stats(None, str(faces), num=ref_num, batch=batch, extractor=extractor,
                                           progress=False)
        ref_what = f"{ref_stats.n} FairFace crops"
    else:  # no shared data: the generator's own statistics stand in (the cost is the same)
        ref_stats = evaluation.generator_stats(None, Generator(64, 3, 100, 64), num=ref_num, batch=batch, z_dim=100,
                                               seed=1, extractor=extractor, progress=False)
        ref_what = f"{ref_stats.n} generated images"
    mu, sigma = ref_stats.mean_cov()
    t_ref = time.perf_counter() - t0
    torch.manual_seed(0)
    G = Generator(64, 3, 100, 64)  # the standard 64x64 DCGAN generator (3.6 M parameters)
    t0 = time.perf_counter()
    stats = evaluation.generator_stats(None, G, num=num, batch=batch, z_dim=100, seed=0, extractor=extractor,
                                       progress=False)
    t_gen = time.perf_counter() - t0
    t0 = time.perf_counter()
    result = evaluation.summarize(None, stats, RefStats(count=ref_stats.n, key={}, mu=mu, sigma=sigma), False)
    t_fid = time.perf_counter() - t0
    return {"num": num, "ref_what": ref_what, "t_ref": t_ref, "t_gen": t_gen, "t_fid": t_fid, "fid": result["fid"]}


def main() -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.bench_fid", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--inception", default=os.environ.get("DCGAN_DIST_INCEPTION", str(DEFAULT_WEIGHTS)),
                   help="FID Inception weights (default: ../shared's TorchScript file or $DCGAN_DIST_INCEPTION)")
    p.add_argument("--num", type=int, default=10_000, help="generated samples for the FID timing (default 10000)")
    p.add_argument("--ref-num", type=int, default=256, help="real images for the reference statistics (default 256)")
    p.add_argument("--batch", type=int, default=64, help="images per batch (default 64)")
    p.add_argument("--rounds", type=int, default=3, help="alternating extraction rounds (default 3)")
    p.add_argument("--resolution", type=int, default=64, help="generated image size for part 1 (default 64)")
    p.add_argument("--skip-fid", action="store_true", help="only part 1")
    args = p.parse_args()
    path = Path(args.inception)
    if not path.is_file():
        print(f"error: no Inception weights at {path}; pass --inception PATH or set DCGAN_DIST_INCEPTION",
              file=sys.stderr)
        return 2
    load = os.getloadavg()[0]
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), {os.cpu_count()} CPU(s), load average "
          f"{load:.2f} at start; weights {path.name}")

    print(f"\n1. feature extraction, batch {args.batch}, {args.resolution}x{args.resolution} generator images")
    ext = bench_extraction(path, args.batch, args.rounds, args.resolution)
    print(f"   bare {ext['bare_name']}: {ext['bare']:.2f} img/s (median of {args.rounds})")
    print(f"   project pipeline (uint8 -> resize -> folded channels-last net): {ext['pipeline']:.2f} img/s")
    print(f"   ratio pipeline / bare: {ext['ratio']:.2f}x  (target >= 1.0x)")
    if args.skip_fid:
        return 0

    print(f"\n2. FID of {args.num} samples of a 64x64 DCGAN generator, batch {args.batch}")
    fid = bench_fid(ext["extractor"], args.num, args.batch, args.ref_num)
    total = fid["t_gen"] + fid["t_fid"]
    print(f"   reference statistics ({fid['ref_what']}): {fid['t_ref']:.1f} s (cached on disk in training runs)")
    print(f"   generate + extract + reduce: {fid['t_gen']:.1f} s ({args.num / fid['t_gen']:.2f} img/s)")
    print(f"   Frechet distance (2048x2048 eigenvalues, float64): {fid['t_fid']:.2f} s")
    print(f"   FID (random G vs reference): {fid['fid']:.2f}; wall time {total:.1f} s for {args.num} samples")
    if args.num < 10_000:
        est = fid["t_gen"] * 10_000 / args.num + fid["t_fid"]
        print(f"   extrapolated to 10,000 samples: {est:.0f} s ({est / 60:.1f} min) on this machine")
    print(f"load average {os.getloadavg()[0]:.2f} at the end (other processes share these cores: figures are noisy)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
