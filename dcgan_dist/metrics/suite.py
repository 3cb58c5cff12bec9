"""Which metrics an evaluation computes (`--metrics`, `eval.metrics`), and KID and precision/recall
from the per-sample features the evaluation kept for them.

    fid  Frechet distance from float64 moments (fid.py); needs no per-sample features
    kid  Kernel Inception Distance (kid.py): by default 100 subsets of 1,000 (StyleGAN, torch-fidelity), reported
         x 10^3 as {"mean", "std"} (mean and population std over the subsets)
    pr   improved precision and recall, k = 3 (precision_recall.py)

Results (`feature_metrics`, and so the evaluate CLI's --out JSON and metrics.jsonl) carry `kid`
({"mean", "std"} x 10^3), `precision` and `recall` always, None (null) when not asked for, and
`kid_subsets` / `kid_subset_size` (the size used: the smaller set's size when either set holds
fewer samples than asked for, StyleGAN's rule) when KID was computed. The subsets are drawn from a fixed
seed (2020, torch-fidelity's), so the same features give the same KID in every evaluation, on any
number of processes.

How the work is split: each rank extracts the features of its own share of the samples (as for
FID); only when KID or PR is asked for does it keep them (FID alone keeps nothing and costs what it
did before). The shares are gathered onto every rank (`features.gather_features`); then each rank
computes its share of the KID subsets and of PR's distance rows, and one small collective combines
them, so no rank does more than 1 / world_size of the O(N^2) work.

Memory per rank (2048-d float32 features; N generated and N reference samples):

                                          N = 10,000     N = 50,000
    gathered features, both sets            164 MB         819 MB
    PR: one manifold in float64             164 MB         819 MB
    PR: one 1,000-row distance block         80 MB         400 MB   (+ a boolean mask, 10 / 50 MB)
    KID: two subsets (float64) + kernel      41 MB          41 MB
    peak (features + PR), about             0.42 GB        2.1 GB

plus, during a gather, one padded share (N / world_size rows) of the set being gathered. A training
run keeps the reference features (82 / 410 MB, on the CPU) between evaluations.

CPU cost (2 busy cores, measured): KID ~0.75-1 s per subset of 1,000 (100 s for the default 100;
`--kid-subsets` / `eval.kid_subsets` lower it, and a subset of m costs ~(m / 1000)^2 of that); PR
~65 s at 10k + 10k and ~27 min at 50k + 50k (N^2 work). Both are split over the ranks; on a
data-centre GPU they take seconds.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
from torch import Tensor

from ..errors import UserError
from .features import gather_features
from .kid import KID_SUBSET_SIZE, KID_SUBSETS, kid
from .precision_recall import PR_K, precision_recall

METRICS = ("fid", "kid", "pr")  # the allowed names, in the order they are reported
DEFAULT_METRICS = "fid,kid"
FEATURE_METRICS = ("kid", "pr")  # the ones that need every sample's features
KID_SEED = 2020  # torch-fidelity's default: the same subsets in every evaluation


class MetricsError(UserError, ValueError):
    """A metric list that names no or unknown metrics, or a metric that cannot be computed as asked."""


def parse_metrics(text: str, origin: str) -> tuple[str, ...]:
    """`"fid, kid"` -> ("fid", "kid"): known names, each once, in METRICS order. `origin` names the
    flag or key in the error message."""
    names = [n.strip().lower() for n in str(text).split(",") if n.strip()]
    unknown = [n for n in names if n not in METRICS]
    if unknown or not names:
        what = f"unknown {', '.join(repr(n) for n in unknown)}" if unknown else "no metric named"
        raise MetricsError(f"{origin}={text!r}: {what}; give a comma list of {', '.join(METRICS)} "
                           f"(default {DEFAULT_METRICS})")
    return tuple(m for m in METRICS if m in names)


def training_problems(text: str, num: int, section: str = "eval") -> list[str]:
    """What is wrong with `<section>.metrics` for a training run's evaluations ([] when nothing): the
    names, fid among them (checkpoints/best/ is chosen by FID), and enough samples for PR's k-NN."""
    try:
        names = parse_metrics(text, f"{section}.metrics")
    except MetricsError as e:
        return [str(e)]
    problems = []
    if "fid" not in names:
        problems.append(f"{section}.metrics={text!r}: add fid, by which checkpoints/best/ is chosen")
    if "pr" in names and num <= PR_K:
        problems.append(f"{section}.metrics with pr (k={PR_K} nearest neighbours) needs {section}.num > {PR_K}")
    return problems


@dataclass(frozen=True)
class MetricSpec:
    """The metrics of one evaluation and their settings."""

    names: tuple[str, ...] = ("fid",)
    kid_subsets: int = KID_SUBSETS
    kid_subset_size: int = KID_SUBSET_SIZE

    @classmethod
    def parse(cls, text: str, origin: str, kid_subsets: int = KID_SUBSETS,
              kid_subset_size: int = KID_SUBSET_SIZE) -> "MetricSpec":
        """The spec of a `--metrics` / `eval.metrics` value (`origin` names it in errors); the callers
        check the KID settings (subsets >= 1, subset size >= 2) under their own flag or key names."""
        return cls(parse_metrics(text, origin), kid_subsets, kid_subset_size)

    def __contains__(self, name: str) -> bool:
        return name in self.names

    @property
    def features(self) -> bool:
        """Whether per-sample features must be kept (KID or precision/recall asked for)."""
        return any(m in self.names for m in FEATURE_METRICS)


FID_ONLY = MetricSpec()


@torch.no_grad()
def feature_metrics(accelerator, real: Optional[Tensor], local_fake: Optional[Tensor], spec: MetricSpec) -> dict:
    """Collective: KID and precision/recall of the generated features against the reference ones.

    `real`: the whole reference set (the same on every rank); `local_fake`: this rank's share of the
    generated set (contiguous, in sample order), gathered here onto every rank. Returns the same dict on
    every rank: {"kid": {"mean", "std"} x 10^3 or None, "precision", "recall", and with KID
    "kid_subsets", "kid_subset_size"}. Too few samples raise MetricsError, on every rank alike.
    """
    out: dict = {"kid": None, "precision": None, "recall": None}
    if not spec.features:
        return out
    if real is None or local_fake is None:
        raise MetricsError(f"{' and '.join(m for m in spec.names if m in FEATURE_METRICS)} need the per-sample "
                           "features of both sets (internal: the evaluation did not keep them)")
    fake = gather_features(accelerator, local_fake)
    real = real.to(fake.device)
    try:
        if "kid" in spec:
            res = kid(real, fake, num_subsets=spec.kid_subsets, subset_size=spec.kid_subset_size, seed=KID_SEED,
                      accelerator=accelerator)
            mean, std = res.scaled()
            out.update(kid={"mean": mean, "std": std}, kid_subsets=res.num_subsets, kid_subset_size=res.subset_size)
        if "pr" in spec:
            pr = precision_recall(real, fake, k=PR_K, accelerator=accelerator)
            out.update(precision=pr.precision, recall=pr.recall)
    except ValueError as e:  # too few samples: every rank holds the same sets, so every rank is here
        raise MetricsError(f"{e} ({real.shape[0]} reference, {fake.shape[0]} generated samples; ask for more "
                           "samples or leave the metric out)") from None
    return out


def format_metrics(result: dict, digits: int = 3) -> str:
    """What was computed, for logs and the console:
    `FID 12.345 | KID x10^3 1.234 ± 0.056 | precision 0.712 recall 0.431 | IS 3.210 ± 0.040`."""
    kid, f = result.get("kid"), f".{digits}f"
    parts = [f"FID {result['fid']:{f}}" if result.get("fid") is not None else None,
             f"KID x10^3 {kid['mean']:{f}} ± {kid['std']:{f}}" if kid else None,
             f"precision {result['precision']:{f}} recall {result['recall']:{f}}"
             if result.get("precision") is not None else None,
             f"IS {result['is_mean']:{f}} ± {result['is_std']:{f}}" if result.get("is_mean") is not None else None]
    return " | ".join(p for p in parts if p)


__all__ = ["DEFAULT_METRICS", "FEATURE_METRICS", "FID_ONLY", "KID_SEED", "METRICS", "MetricSpec", "MetricsError",
           "feature_metrics", "format_metrics", "parse_metrics", "training_problems"]
