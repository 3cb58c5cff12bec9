"""Steps 2 and 3: FID of the kept checkpoints (the learning curve, which picks the best one) and
FID and KID of the best checkpoint again with more samples, each through the evaluate CLI
(`--metrics fid`, then `--metrics fid,kid`) and cached in RUN/quality/ so that --reuse does not
compute it twice."""

from __future__ import annotations

import math
import shlex
from pathlib import Path
from typing import Optional

from dcgan_dist import checkpoint, layout

from ..launcher import launch_cmd
from .common import BenchError, fmt_duration, fmt_kimg, read_json, say, write_json
from .proc import Child
from .train import LOG as TRAIN_LOG

SELECT_METRICS = ("fid",)  # the selection ranks by FID: no KID cost, no reference features kept
FINAL_METRICS = ("fid", "kid")


def kid_of(doc: dict) -> Optional[dict]:
    """The evaluation's KID x10^3 {"mean", "std"}, None when it has none."""
    kid = doc.get("kid")
    if not isinstance(kid, dict) or not all(isinstance(kid.get(k), (int, float)) for k in ("mean", "std")):
        return None
    return {"mean": float(kid["mean"]), "std": float(kid["std"])}


def fmt_kid(kid: Optional[dict]) -> str:
    return "n/a" if kid is None else f"{kid['mean']:.2f} ± {kid['std']:.2f}"


def checkpoints_of(run: Path) -> list[tuple[float, Path]]:
    """The run's complete checkpoints, by kimg."""
    return sorted(((float(checkpoint.read_meta(p)["kimg"]), p) for p in checkpoint.complete_checkpoints(run)),
                  key=lambda kp: kp[0])


def thin(ckpts: list, cap: int) -> list:
    """At most `cap` checkpoints, evenly spread over the list, the first and the newest always included
    (a speed estimate that was too low leaves more checkpoints than asked for)."""
    m = len(ckpts)
    if m <= cap:
        return ckpts
    return [ckpts[i] for i in sorted({round(j * (m - 1) / (cap - 1)) for j in range(cap)})]


class Evaluator:
    def __init__(self, args, run: Path):
        self.args, self.run = args, run
        self.dir = run / "quality"

    def score(self, ckpt: Path, num: int, what: str, metrics: tuple[str, ...]) -> dict:
        """The metrics of one checkpoint (cached in RUN/quality/ by checkpoint, sample and reference counts;
        a cached result that lacks one of `metrics` is computed again)."""
        a = self.args
        key = f"{ckpt.name}_n{num}_r{a.ref_num}"
        out, log_path = self.dir / f"fid_{key}.json", self.dir / f"fid_{key}.log"
        if out.is_file():
            doc = read_json(out)
            # Other Inception weights give other numbers: such a result is computed again.
            same_weights = a.inception is None or doc.get("inception", {}).get("path") == a.inception
            if same_weights and "fid" in doc and ("kid" not in metrics or kid_of(doc)):
                doc["cached"] = True
                return doc
        args = ["-m", "dcgan_dist.evaluate", str(ckpt), "--num", str(num), "--ref-num", str(a.ref_num),
                "--metrics", ",".join(metrics), "--no-progress", "--out", str(out)]
        if a.inception:
            args += ["--inception", a.inception]
        cmd = launch_cmd(args, a.launch)
        out.unlink(missing_ok=True)  # a result left from before must not pass for this run's
        child = Child(cmd, log_path, f"evaluation of {ckpt.name}")
        rc = child.wait()
        if rc != 0 or not out.is_file():
            raise BenchError(f"{what}: evaluation of {ckpt} failed (evaluate exit {rc}); log: {log_path}\n"
                             f"{child.error_lines()}")
        doc = read_json(out)
        if not (isinstance(doc.get("fid"), (int, float)) and math.isfinite(doc["fid"])):
            raise BenchError(f"{what}: FID of {ckpt} is not a finite number ({doc.get('fid')}); log: {log_path}")
        if "kid" in metrics and not (kid_of(doc) and all(map(math.isfinite, kid_of(doc).values()))):
            raise BenchError(f"{what}: KID of {ckpt} is missing or not finite ({doc.get('kid')}); log: {log_path}")
        doc["wall_s"] = child.wall
        doc["command"] = shlex.join(cmd)
        write_json(out, doc)
        doc["cached"] = False
        return doc


def select(evaluator: Evaluator, args, run_dir: Path) -> dict:
    """Step 2: the learning curve, FID vs kimg of the kept checkpoints (at most --checkpoints + 1)."""
    kept = checkpoints_of(run_dir)
    if not kept:
        raise BenchError(f"no complete checkpoint in {run_dir / layout.CKPT_DIR}; log: {run_dir / TRAIN_LOG}")
    ckpts = thin(kept, args.checkpoints + 1)
    skipped = [k for k, _ in kept if all(k != c for c, _ in ckpts)]
    say(f"selection: FID of {len(ckpts)} checkpoint(s) from {args.select_num} samples each "
        f"(reference: up to {args.ref_num} real images)"
        + (f"; {len(skipped)} of the {len(kept)} kept skipped (more than --checkpoints + 1)" if skipped else ""))
    points = []
    for i, (kimg, ckpt) in enumerate(ckpts, 1):
        doc = evaluator.score(ckpt, args.select_num, f"selection {i}/{len(ckpts)}", SELECT_METRICS)
        points.append({"kimg": kimg, "fid": doc["fid"], "checkpoint": str(ckpt), "num": doc.get("num"),
                       "ref_num": doc.get("ref_num"), "seconds": doc.get("wall_s"), "command": doc.get("command")})
        how = "cached" if doc["cached"] else fmt_duration(doc.get("wall_s") or 0)
        say(f"selection {i}/{len(ckpts)}: kimg {fmt_kimg(kimg)}: FID {doc['fid']:.3f} ({how})")
    return {"num": args.select_num, "ref_num": args.ref_num, "points": points,
            "checkpoints_kept": len(kept), "skipped_kimg": skipped}


def best_of(points: list[dict]) -> dict:
    """The lowest FID; min() keeps the first, i.e. the earliest checkpoint, on a tie."""
    return min(points, key=lambda p: p["fid"])


def final(evaluator: Evaluator, best: dict, num: int) -> dict:
    """Step 3: the best checkpoint's FID (and KID) from `num` samples (the selection's samples again
    when num is the same)."""
    say(f"final: FID and KID of the best checkpoint (kimg {fmt_kimg(best['kimg'])}) "
        f"from {num} samples")
    doc = evaluator.score(Path(best["checkpoint"]), num, "final", FINAL_METRICS)
    doc["kid"] = kid_of(doc)
    say(f"final: FID {doc['fid']:.3f}, KID x10^3 {fmt_kid(doc['kid'])} ({doc.get('num')} samples, ref "
        f"{doc.get('ref_num')} images, world size {doc.get('world_size')})")
    return doc
