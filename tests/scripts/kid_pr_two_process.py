"""Launched by tests/test_kid_pr.py with 2 CPU processes: do KID and precision/recall computed
collectively (features gathered from unequal per-rank shares, the work split over the ranks) equal
the single-process numbers on the full sets, exactly?

Every rank builds the same full sets (`sets()`, also imported by the test), keeps a different,
unequal share of each, gathers, and computes KID and PR with the accelerator; it also computes the
single-process reference (accelerator=None) on the full sets. Prints one JSON line from rank zero.

With arguments `REF_CACHE_DIR CLI_ARGS...` it then also checks the reference features' cache on 2
ranks (a miss: each rank extracts its share, gathered; then a hit: rank zero reads, broadcast) and
last runs `python -m dcgan_dist.evaluate CLI_ARGS...` (which ends the process group) with the
stand-in extractor of tests/standins.py.
"""

import json
import sys

import torch
from accelerate import Accelerator

from dcgan_dist.data.imagesets import iter_range, open_image_set
from dcgan_dist.metrics.features import gather_features
from dcgan_dist.metrics.kid import kid
from dcgan_dist.metrics.precision_recall import knn_sq_radii, precision_recall
from dcgan_dist.metrics.reference import reference_stats
from dcgan_dist.runtime import shutdown

import standins  # tests/standins.py: the test puts tests/ on PYTHONPATH

N_REAL, N_FAKE, DIM = 203, 150, 32
KID_ARGS = dict(num_subsets=7, subset_size=60, seed=11)  # 7 subsets: an uneven split over 2 ranks
PR_ARGS = dict(k=3, row_batch=16)
SPLIT = {"real": 60, "fake": 100}  # rank 0's rows; rank 1 holds the rest


def sets():
    """The full real and generated feature sets: overlapping, not identical, distributions."""
    g = torch.Generator().manual_seed(1234)
    real = torch.randn(N_REAL, DIM, generator=g).relu()
    fake = (torch.randn(N_FAKE, DIM, generator=g) * 1.2 + 0.15).relu()
    return real, fake


def reference():
    real, fake = sets()
    return kid(real, fake, **KID_ARGS), precision_recall(real, fake, **PR_ARGS)


def reference_features(acc, cache_dir: str) -> dict:
    """reference_stats(features=True) twice on every rank: cached? equal to the stand-in's own features?"""
    src = open_image_set("embedded:digits", 32, 1)
    direct = standins.Float64Extractor()([torch.from_numpy(a) for a in iter_range(src, 0, 45)])[0].float()
    refs = [reference_stats(acc, src, num=45, extractor=standins.Float64Extractor(), cache_dir=cache_dir, batch=8,
                            progress=False, features=True) for _ in range(2)]
    mine = torch.tensor([[int(r.cached) for r in refs] + [int(torch.equal(r.features, direct)) for r in refs]])
    per_rank = acc.gather(mine).tolist()
    return {"ref_cached": [row[:2] for row in per_rank], "ref_features_equal": [row[2:] for row in per_rank]}


def main(argv):
    acc = Accelerator(cpu=True)
    rank, world = acc.process_index, acc.num_processes
    assert world == 2, f"expected 2 processes, got {world}"
    real, fake = sets()
    mine = {name: (x[:SPLIT[name]] if rank == 0 else x[SPLIT[name]:]) for name, x in (("real", real), ("fake", fake))}
    real_g = gather_features(acc, mine["real"])
    fake_g = gather_features(acc, mine["fake"])
    empty_share = gather_features(acc, real[:5] if rank == 0 else real[:0])  # a rank with nothing to give

    kid_dist = kid(real_g, fake_g, **KID_ARGS, accelerator=acc)
    pr_dist = precision_recall(real_g, fake_g, **PR_ARGS, accelerator=acc)
    radii_dist = knn_sq_radii(real_g, k=3, row_batch=16, accelerator=acc)
    kid_one, pr_one = reference()
    radii_one = knn_sq_radii(real, k=3, row_batch=16)

    # every rank's numbers, to check that all ranks return the same
    mine_t = torch.tensor([[kid_dist.mean, kid_dist.std, pr_dist.precision, pr_dist.recall]], dtype=torch.float64)
    all_ranks = acc.gather(mine_t)
    ref = reference_features(acc, argv[0]) if argv else {}
    if acc.is_main_process:
        print(json.dumps({
            "world_size": world,
            "shares": {"real": [SPLIT["real"], N_REAL - SPLIT["real"]],
                       "fake": [SPLIT["fake"], N_FAKE - SPLIT["fake"]]},
            "gathered_equal": bool(torch.equal(real_g, real) and torch.equal(fake_g, fake)),
            "empty_share_gather_equal": bool(torch.equal(empty_share, real[:5])),
            "kid": {"mean": kid_dist.mean, "std": kid_dist.std, "values": list(kid_dist.values),
                    "subset_size": kid_dist.subset_size},
            "kid_single": {"mean": kid_one.mean, "std": kid_one.std, "values": list(kid_one.values)},
            "pr": {"precision": pr_dist.precision, "recall": pr_dist.recall,
                   "fakes_in_real": pr_dist.fakes_in_real, "reals_in_fake": pr_dist.reals_in_fake},
            "pr_single": {"precision": pr_one.precision, "recall": pr_one.recall,
                          "fakes_in_real": pr_one.fakes_in_real, "reals_in_fake": pr_one.reals_in_fake},
            "radii_max_rel_diff": ((radii_dist - radii_one).abs() / radii_one).max().item(),
            "ranks_agree": bool(torch.equal(all_ranks[0], all_ranks[1])),
            **ref,
        }), flush=True)
    acc.wait_for_everyone()
    if argv:
        from dcgan_dist import evaluate

        standins.install(setattr)
        sys.exit(evaluate.main(argv[1:]))
    shutdown(acc)  # leaving without ending the gloo group sometimes aborts a rank at interpreter exit


if __name__ == "__main__":
    main(sys.argv[1:])
