"""FID, KID, precision/recall (and Inception Score) of a trained generator, of two image sets, or
reference statistics.

    python -m dcgan_dist.evaluate RUN_DIR_OR_CHECKPOINT [--num 10000] [--batch 64] [--data SHARDS]
    python -m dcgan_dist.evaluate --real DIR_OR_SHARDS_OR_NPZ --fake DIR_OR_SHARDS [--num N]
    python -m dcgan_dist.evaluate --precompute SHARDS [--num N]
    accelerate launch --config_file launch/cpu.yaml -m dcgan_dist.evaluate ...   # the same, collectively

A run directory means its newest complete checkpoint. The generator is rebuilt from the config
stored in the checkpoint's meta.json and compared with its training data (`data.shards` of that
config, or --data); the reference set's statistics and features are cached
(see --cache-dir). Numbers match torch-fidelity / StyleGAN's preprocessing (--preprocess
pytorch-fid: pytorch-fid's); see dcgan_dist/metrics/inception.py. --metrics picks fid, kid, pr
(default fid,kid). Results are printed and, with --out, written as JSON with keys `fid`, `kid`
({mean, std}, x 10^3), `precision`, `recall` (each null when not in --metrics) and, when the
weights have logits, `is` ({mean, std}).

Inception weights: --inception PATH, else the checkpoint config's eval.inception, else
$DCGAN_DIST_INCEPTION, else pytorch-fid's file downloaded once into the cache.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Optional

from . import checkpoint, errors, runtime, tracking
from .errors import UserError
from .metrics import evaluation, reference
from .metrics.features import gather_features
from .metrics.inception import PREPROCESS_MODES, load_extractor
from .metrics.kid import KID_SUBSET_SIZE, KID_SUBSETS
from .metrics.reference import RefStats
from .metrics.suite import DEFAULT_METRICS, MetricSpec, MetricsError, format_metrics
from .data.errors import SourceError
from .data.imagesets import open_image_set

log = logging.getLogger("dcgan_dist")


def parse_args(argv: Optional[list[str]]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m dcgan_dist.evaluate", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("target", nargs="?", help="run directory or checkpoint directory to evaluate")
    p.add_argument("--real", help="two-set mode: reference images (folder, shards) or statistics (.npz)")
    p.add_argument("--fake", help="two-set mode: images to score (folder or shards)")
    p.add_argument("--precompute", metavar="SHARDS",
                   help="write the reference statistics of a shard set into the cache")
    p.add_argument("--data", help="reference shards for a checkpoint (default: data.shards of its config)")
    p.add_argument("--num", type=int, help="generated samples (default 10000); in --real/--fake and --precompute mode "
                   "the images used from each set (default all)")
    p.add_argument("--ref-num", type=int, help="reference images for a checkpoint (default: all of the data set)")
    p.add_argument("--batch", type=int, default=64, help="images per Inception batch on each process (default 64)")
    p.add_argument("--seed", type=int, help="latent seed for generated samples (default: the run's seed)")
    p.add_argument("--inception", metavar="PATH", help="FID Inception weights (pytorch-fid .pth or TorchScript)")
    p.add_argument("--preprocess", choices=PREPROCESS_MODES, default="tf1",
                   help="tf1: torch-fidelity / StyleGAN numbers (default); pytorch-fid: pytorch-fid's numbers")
    p.add_argument("--metrics", default=DEFAULT_METRICS,
                   help=f"comma list of fid, kid (x 10^3), pr (precision/recall, k=3) (default {DEFAULT_METRICS})")
    p.add_argument("--kid-subsets", type=int, default=KID_SUBSETS,
                   help=f"KID: random subsets (default {KID_SUBSETS}; ~1 s each of 1000 samples on 2 CPU cores)")
    p.add_argument("--kid-subset-size", type=int, default=KID_SUBSET_SIZE,
                   help=f"KID: samples per subset (default {KID_SUBSET_SIZE}; fewer samples: all of them)")
    p.add_argument("--is", dest="require_is", action="store_true",
                   help="require the Inception Score (an error if the weights have no logits)")
    p.add_argument("--cache-dir", help="reference statistics cache (default $DCGAN_DIST_CACHE/fid)")
    p.add_argument("--out", metavar="FILE", help="write the results as JSON")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    args = p.parse_args(argv)
    modes = [bool(args.target), bool(args.real or args.fake), bool(args.precompute)]
    if sum(modes) != 1 or bool(args.real) != bool(args.fake):
        p.error("give exactly one of: a run/checkpoint directory, --real A --fake B, or --precompute SHARDS")
    if args.batch < 1 or (args.num is not None and args.num < 1) or (args.ref_num is not None and args.ref_num < 1):
        p.error("--batch, --num and --ref-num must be >= 1")
    if args.kid_subsets < 1 or args.kid_subset_size < 2:
        p.error("--kid-subsets must be >= 1 and --kid-subset-size >= 2")
    try:
        args.spec = MetricSpec.parse(args.metrics, "--metrics", args.kid_subsets, args.kid_subset_size)
    except MetricsError as e:
        p.error(str(e))
    return args


def run_checkpoint(args, accelerator, ctx: dict) -> dict:
    opened = checkpoint.open_checkpoint(args.target)
    ckpt, meta, cfg = opened.path, opened.meta, opened.cfg
    inception = args.inception or cfg.eval.inception
    origin = "--inception" if args.inception else "eval.inception (checkpoint config)"
    extractor = _extractor(args, accelerator, inception, origin, ctx)
    G, weights = checkpoint.load_generator(opened, accelerator.device)
    data = args.data or cfg.data.shards
    try:
        source = open_image_set(data, cfg.model.resolution, cfg.model.channels,
                                origin="--data" if args.data else "data.shards")
    except SourceError as e:
        raise SourceError(f"{e}\n(the reference data of {ckpt}; point --data at the training shards)") from None
    ref = reference.reference_stats(accelerator, source, num=args.ref_num, extractor=extractor,
                                    cache_dir=args.cache_dir, batch=args.batch, progress=not args.no_progress,
                                    features=args.spec.features)
    seed = cfg.seed if args.seed is None else args.seed
    result = evaluation.evaluate_generator(
        accelerator, G, num=args.num or 10_000, batch=args.batch, z_dim=cfg.model.z_dim, seed=seed,
        extractor=extractor, ref_stats=ref, inception_score=True if args.require_is else None,
        progress=not args.no_progress, metrics=args.spec)
    ctx.update(mode="checkpoint", checkpoint=str(ckpt), generator=weights.name, kimg=meta.get("kimg"), data=data,
               ref_num=ref.count, ref_cache=str(ref.path) if ref.path else None, seed=seed)
    return result


def _set_stats(args, accelerator, spec: str, extractor, with_is: bool, origin: str):
    src = open_image_set(spec, origin=origin)
    return evaluation.image_stats(accelerator, src, num=args.num, batch=args.batch, extractor=extractor,
                                  with_is=with_is, progress=not args.no_progress, keep_features=args.spec.features)


def run_two_sets(args, accelerator, ctx: dict) -> dict:
    extractor = _extractor(args, accelerator, args.inception, "--inception", ctx)
    if args.real.endswith(".npz"):  # precomputed statistics, ours or pytorch-fid's (read by every rank: one outcome)
        try:
            ref = reference.load_stats(args.real, features=args.spec.features)
        except ValueError as e:  # its message starts with the path: say which option gave it
            raise SourceError(f"--real {e}") from None
    else:
        real = _set_stats(args, accelerator, args.real, extractor, with_is=False, origin="--real")
        if real.n < 2:  # every rank sees the reduced count: they all stop here together
            raise SourceError(f"--real {args.real}: FID needs at least 2 images, got {real.n}")
        ref = RefStats(count=real.n, key={})
        if args.spec.features:
            ref.features = gather_features(accelerator, real.features()).cpu()
        if accelerator.is_main_process:
            ref.mu, ref.sigma = real.mean_cov()
    want_is = evaluation.resolve_inception_score(extractor, True if args.require_is else None)
    fake = _set_stats(args, accelerator, args.fake, extractor, with_is=want_is, origin="--fake")
    result = evaluation.summarize(accelerator, fake, ref, want_is, args.spec)
    ctx.update(mode="two-sets", real=args.real, fake=args.fake, ref_num=ref.count)
    return result


def run_precompute(args, accelerator, ctx: dict) -> dict:
    extractor = _extractor(args, accelerator, args.inception, "--inception", ctx)
    source = open_image_set(args.precompute, origin="--precompute")
    # features=True whatever --metrics says: the entry written is complete, so any later metric hits it
    ref = reference.reference_stats(accelerator, source, num=args.num, extractor=extractor,
                                    cache_dir=args.cache_dir, batch=args.batch, progress=not args.no_progress,
                                    features=True)
    ctx.update(mode="precompute", data=args.precompute, ref_cache=str(ref.path) if ref.path else None,
               ref_features=ref.features is not None)
    if ref.path is None:
        raise SourceError(f"{args.precompute} has no dataset.json content hash, so its statistics cannot be cached; "
                          "write the shards with `python -m dcgan_dist.prepare`, or use --real/--fake directly")
    return {"num": ref.count}


def _extractor(args, accelerator, path, origin, ctx):
    extractor = load_extractor(path, origin=origin, device=accelerator.device, preprocess=args.preprocess)
    if args.require_is:  # fail before any image is read, not after the reference statistics
        evaluation.resolve_inception_score(extractor, True)
    ctx["inception"] = {"path": str(extractor.path), "sha256": extractor.sha256, "format": extractor.format,
                        "preprocess": extractor.mode, "logits": extractor.has_logits}
    log.info("%s", extractor)
    return extractor


def report(result: dict, ctx: dict) -> dict:
    """The JSON document: `fid`, `kid` (x 10^3), `precision`, `recall` (null when not asked for), `is`
    (when computed) and what they were computed from."""
    doc = {k: result.get(k) for k in ("fid", "kid", "precision", "recall")}
    if result.get("is_mean") is not None:
        doc["is"] = {"mean": result["is_mean"], "std": result["is_std"]}
    doc.update({k: v for k, v in result.items() if k not in (*doc, "is_mean", "is_std")}, **ctx)
    return doc


def summary_line(result: dict, doc: dict, world_size: int) -> str:
    """The printed result: `FID 12.3456 | KID x10^3 1.2340 ± 0.0560 | ...  (N images, W process(es))`."""
    parts = [format_metrics(result, digits=4)]
    if doc.get("mode") == "precompute":
        parts.append(f"reference statistics{' and features' if doc.get('ref_features') else ''} in {doc['ref_cache']}")
    return " | ".join(p for p in parts if p) + f"  ({doc.get('num')} images, {world_size} process(es))"


def main(argv: Optional[list[str]] = None) -> int:
    args = parse_args(argv)
    accelerator, _ = runtime.make_accelerator()
    tracking.setup_logging(None, accelerator.is_main_process, accelerator.process_index)
    logging.getLogger("dcgan_dist.metrics").setLevel(logging.INFO if accelerator.is_main_process else logging.WARNING)
    ctx: dict = {"world_size": accelerator.num_processes}
    try:
        if args.target:
            result = run_checkpoint(args, accelerator, ctx)
        elif args.real:
            result = run_two_sets(args, accelerator, ctx)
        else:
            result = run_precompute(args, accelerator, ctx)
    except UserError as e:
        return errors.report(e)
    doc = report(result, ctx)
    if accelerator.is_main_process:
        print(summary_line(result, doc, accelerator.num_processes))
        if args.out:
            Path(args.out).parent.mkdir(parents=True, exist_ok=True)
            Path(args.out).write_text(json.dumps(doc, indent=2) + "\n")
    runtime.shutdown(accelerator)
    return 0


if __name__ == "__main__":
    sys.exit(main())
