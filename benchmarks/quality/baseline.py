"""`--baseline`: the plain DCGAN of Radford et al. (2016), trained as pytorch/examples' dcgan trains
it, on the compared config's data, so that the two rows differ by the recipe alone.

RADFORD is put over the config and the user's overrides. It sets every key of the model, loss,
optimizer, augmentation and EMA sections that makes a recipe differ from the plain one, whatever the
config sets. The rest stays the config's: the data and its loading (data.*, flips included), the
image shape (KEPT), the batch, mixed precision, compilation, cadences and seed (train.*, seed), and
the keys that tune only what RADFORD turns off (INERT). tests/test_quality_bench.py checks that these
three lists cover every key of those sections, so a new stabiliser cannot slip past the baseline.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Optional

from .common import BenchError, read_json
from .evaluate import fmt_kid

SUFFIX = "_baseline"  # of its name (docs files, results row) and of its run directory
SECTIONS = ("model", "loss", "optim", "augment", "ema")

RADFORD: dict[str, Any] = {
    # architecture: z 100, G and D widths 64 (ngf = ndf = 64), BatchNorm in D, no spectral norm, no
    # dropout, unconditional; the channel cap is the schema's (not reached at 64x64: 512)
    "model.z_dim": 100, "model.g_width": 64, "model.d_width": 64, "model.max_channels": 1024,
    "model.d_norm": "batch", "model.d_spectral": False, "model.d_dropout": 0.0, "model.num_classes": 0,
    # loss: non-saturating BCE with logits, real target 1.0 (no smoothing), no label flips, no R1
    "loss.kind": "nonsaturating", "loss.real_label": 1.0, "loss.label_flip": 0.0, "loss.r1_gamma": 0.0,
    # Adam, lr 2e-4 and betas (0.5, 0.999) for both nets, at a constant rate
    "optim.g_lr": 2e-4, "optim.d_lr": 2e-4, "optim.g_beta1": 0.5, "optim.g_beta2": 0.999,
    "optim.d_beta1": 0.5, "optim.d_beta2": 0.999, "optim.schedule": "constant",
    # no DiffAugment, no adaptive augmentation, no EMA of G's weights
    "augment.policy": "", "augment.adaptive": False, "ema.half_life_kimg": 0.0,
}
KEPT = ("model.resolution", "model.channels")  # the data's image shape
INERT = ("loss.gp_weight",  # wgan-gp only
         "optim.decay_start_kimg", "optim.half_life_kimg", "optim.min_lr_ratio",  # decaying schedules only
         "augment.translation", "augment.cutout", "augment.target", "augment.speed_kimg",  # augmentation only
         "ema.rampup", "ema.bn_batches")  # the EMA only


def overrides() -> list[str]:
    """RADFORD as key=value overrides (`augment.policy=` is the empty policy)."""
    def text(v: Any) -> str:
        return str(v).lower() if isinstance(v, bool) else str(v)
    return [f"{k}={text(v)}" for k, v in RADFORD.items()]


def name_of(name: str) -> str:
    return name + SUFFIX


def run_dir_of(run_dir: Path) -> Path:
    return run_dir.with_name(run_dir.name + SUFFIX)


def _get(cfg: dict, key: str) -> Any:
    for part in key.split("."):
        cfg = cfg[part]
    return cfg


def recipe(cfg: dict, base_cfg: dict) -> dict:
    """What the baseline changed: {key: [the config's value, the baseline's]} of the resolved configs."""
    return {"overrides": overrides(),
            "changed": {k: [_get(cfg, k), _get(base_cfg, k)] for k in RADFORD if _get(cfg, k) != _get(base_cfg, k)}}


def _ratio(a: Optional[float], b: Optional[float]) -> Optional[float]:
    """a / b; None when either is missing or b is not positive (KID's unbiased estimate can be <= 0)."""
    if a is None or b is None or not (b > 0 and math.isfinite(a) and math.isfinite(b)):
        return None
    return a / b


def comparison(project: dict, base: dict) -> dict:
    """project / baseline of the final FID and KID mean, from the two reports."""
    pf, bf = project["final"], base["final"]
    pk, bk = (f["kid"]["mean"] if f.get("kid") else None for f in (pf, bf))
    return {"project": project["name"], "baseline": base["name"], "fid": [pf["fid"], bf["fid"]],
            "kid": [pf.get("kid"), bf.get("kid")], "fid_ratio": _ratio(pf["fid"], bf["fid"]),
            "kid_ratio": _ratio(pk, bk)}


def project_report(path: Path, args) -> dict:
    """--baseline-only: the project's report written earlier (docs/NAME.json), refused unless it was
    measured with this invocation's config, overrides, budget and final sample count, so the ratio
    compares the recipes alone (e.g. the two sides run on two machines at once, or a baseline side
    run again after an interruption). The Inception weights and reference set are checked by
    check_same_evaluation once the baseline is scored."""
    if not path.is_file():
        raise BenchError(f"--baseline-only compares with the project's report {path}, which does not exist: run "
                         "the benchmark without --baseline-only first (same config, overrides, --name and --docs)")
    report = read_json(path)
    train = report.get("train", {})
    want = {"config": (report.get("config"), args.config),
            "overrides": (report.get("overrides"), list(args.overrides)),
            "--minutes": (train.get("minutes"), args.minutes),
            "--fid-num": (report.get("final", {}).get("num"), args.fid_num)}
    if args.kimg is not None:
        want["--kimg"] = (train.get("target_kimg"), args.kimg)
    for what, (then, now) in want.items():
        if then != now:
            raise BenchError(f"--baseline-only: {path} was measured with {what} {then!r}, this invocation has "
                             f"{now!r}; rerun with the same settings, or drop --baseline-only to measure both sides")
    return report


def check_same_evaluation(path: Path, project: dict, base: dict) -> None:
    """--baseline-only, after the baseline is scored: the same Inception weights and reference set."""
    pf, bf = project["final"], base["final"]
    for key, get in (("Inception weights (sha256)", lambda f: f.get("inception", {}).get("sha256")),
                     ("reference images", lambda f: f.get("ref_num"))):
        if get(pf) != get(bf):
            raise BenchError(f"--baseline-only: {path} was scored with {key} {get(pf)!r}, the baseline with "
                             f"{get(bf)!r}: no ratio (rerun with the same --inception and --ref-num)")


def ratio_line(c: dict) -> str:
    def r(v: Optional[float]) -> str:
        return "n/a" if v is None else f"{v:.3f}"
    return (f"{c['project']} / {c['baseline']} (Radford DCGAN, same data and budget): "
            f"FID {c['fid'][0]:.2f} / {c['fid'][1]:.2f} = {r(c['fid_ratio'])}; "
            f"KID x10^3 {fmt_kid(c['kid'][0])} / {fmt_kid(c['kid'][1])} = {r(c['kid_ratio'])}")
