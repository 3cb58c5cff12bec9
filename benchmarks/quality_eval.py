"""Steps 2 and 3 of benchmarks/quality.py: FID of the kept checkpoints (the learning curve, which picks
the best one) and of the best checkpoint again with more samples, each through the evaluate CLI and
cached in RUN/quality/ so that --reuse does not compute it twice."""

from __future__ import annotations

import math
import re
import shlex
from pathlib import Path

from quality_common import BenchError, fmt_duration, fmt_kimg, read_json, say, write_json
from quality_proc import Child, accelerate_cmd, tail

CKPT_NAME = re.compile(r"^\d{6}\.\d{3}$")


def checkpoints_of(run: Path) -> list[tuple[float, Path]]:
    """The run's complete checkpoints (meta.json is written last), by kimg."""
    root = run / "checkpoints"
    found = [p for p in root.iterdir() if CKPT_NAME.match(p.name) and (p / "meta.json").is_file()] \
        if root.is_dir() else []
    return sorted(((float(read_json(p / "meta.json")["kimg"]), p) for p in found), key=lambda kp: kp[0])


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

    def fid(self, ckpt: Path, num: int, what: str) -> dict:
        """FID of one checkpoint (cached in RUN/quality/ by checkpoint, sample and reference counts)."""
        a = self.args
        key = f"{ckpt.name}_n{num}_r{a.ref_num}"
        out, log_path = self.dir / f"fid_{key}.json", self.dir / f"fid_{key}.log"
        if out.is_file():
            doc = read_json(out)
            # Other Inception weights give other numbers: such a result is computed again.
            if a.inception is None or doc.get("inception", {}).get("path") == a.inception:
                doc["cached"] = True
                return doc
        cmd = [*accelerate_cmd(), "launch", "--config_file", a.launch, "-m", "dcgan_dist.evaluate", str(ckpt),
               "--num", str(num), "--ref-num", str(a.ref_num), "--no-progress", "--out", str(out),
               "--metrics", "fid"]  # this benchmark selects and reports by FID: no KID cost, no reference features
        if a.inception:
            cmd += ["--inception", a.inception]
        out.unlink(missing_ok=True)  # a result left from before must not pass for this run's
        child = Child(cmd, log_path, f"evaluation of {ckpt.name}")
        rc = child.wait()
        if rc != 0 or not out.is_file():
            raise BenchError(f"{what}: FID of {ckpt} failed (evaluate exit {rc}); log: {log_path}\n"
                             f"{tail(log_path, child.log_start)}")
        doc = read_json(out)
        if not (isinstance(doc.get("fid"), (int, float)) and math.isfinite(doc["fid"])):
            raise BenchError(f"{what}: FID of {ckpt} is not a finite number ({doc.get('fid')}); log: {log_path}")
        doc["wall_s"] = child.wall
        doc["command"] = shlex.join(cmd)
        write_json(out, doc)
        doc["cached"] = False
        return doc


def select(evaluator: Evaluator, args, run_dir: Path) -> dict:
    """Step 2: the learning curve, FID vs kimg of the kept checkpoints (at most --checkpoints + 1)."""
    kept = checkpoints_of(run_dir)
    if not kept:
        raise BenchError(f"no complete checkpoint in {run_dir / 'checkpoints'}; log: {run_dir / 'quality_train.log'}")
    ckpts = thin(kept, args.checkpoints + 1)
    skipped = [k for k, _ in kept if all(k != c for c, _ in ckpts)]
    say(f"selection: FID of {len(ckpts)} checkpoint(s) from {args.select_num} samples each "
        f"(reference: up to {args.ref_num} real images)"
        + (f"; {len(skipped)} of the {len(kept)} kept skipped (more than --checkpoints + 1)" if skipped else ""))
    points = []
    for i, (kimg, ckpt) in enumerate(ckpts, 1):
        doc = evaluator.fid(ckpt, args.select_num, f"selection {i}/{len(ckpts)}")
        points.append({"kimg": kimg, "fid": doc["fid"], "checkpoint": str(ckpt), "num": doc.get("num"),
                       "ref_num": doc.get("ref_num"), "seconds": doc.get("wall_s"), "command": doc.get("command")})
        how = "cached" if doc["cached"] else fmt_duration(doc.get("wall_s") or 0)
        say(f"selection {i}/{len(ckpts)}: kimg {fmt_kimg(kimg)}: FID {doc['fid']:.3f} ({how})")
    return {"num": args.select_num, "ref_num": args.ref_num, "points": points,
            "checkpoints_kept": len(kept), "skipped_kimg": skipped}


def best_of(points: list[dict]) -> dict:
    """The lowest FID; min() keeps the first, i.e. the earliest checkpoint, on a tie."""
    return min(points, key=lambda p: p["fid"])


def final_fid(evaluator: Evaluator, best: dict, num: int) -> dict:
    """Step 3: the best checkpoint's FID from `num` samples (the selection's own result when num is the same)."""
    say(f"final: FID of the best checkpoint (kimg {fmt_kimg(best['kimg'])}) from {num} samples")
    final = evaluator.fid(Path(best["checkpoint"]), num, "final")
    say(f"final: FID {final['fid']:.3f} ({final.get('num')} samples, ref {final.get('ref_num')} images, "
        f"world size {final.get('world_size')})")
    return final
