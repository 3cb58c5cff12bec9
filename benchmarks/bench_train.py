"""Training-speed benchmark: the project's real training path against a bare PyTorch DCGAN loop.

    python -m benchmarks.bench_train [--quick] [--device cpu|cuda] [--json PATH] [--rounds N] [--modes compute,host]

Side by side in one run, in interleaved rounds (every row once per round, in the same order), each
figure the median over the rounds:

  bare      a pytorch/examples-style loop written here: the same G and D (dcgan_dist.models), Adam,
            BCE-with-logits, D on real then on fake (two backwards), G through D; batches indexed
            from a uint8 tensor already in memory (no loader at all); no .item() per step.
  project   the real trainer, `python -m dcgan_dist.train` (one process) or `accelerate launch
            --config_file launch/cpu.yaml` (two, CPU only): the real loader over real shards, GANStep, the loop
            with its statistics, EMA, monitors, stop polling and progress bar. Its speed is the
            trainer's own per-tick `Speed/img_per_sec` (training time only) from stats.jsonl, the
            first tick (start-up, compilation) left out.

Modes:
  compute   standard DCGAN 64 (z 100, widths 64), batch 64: fp32 and bf16, one process with all
            threads; plus the project on 2 processes (1 thread each) against 1 process.
  host      tiny nets (32x32, widths 8, z 16), batch 2, one thread: arithmetic is negligible, so what
            is left is the fixed cost per step that bounds a GPU. Rows: the config's defaults, the
            same with data.cache=memory, every stabiliser on, and train.compile=default.

Ratios (JSON keys): compute_fp32, compute_bf16 = project / bare img/s; two_proc_fp32, two_proc_bf16 =
2-process / 1-process project img/s; host_default, host_all, host_compiled = project / bare us per
step (host_compiled against the bare *eager* loop). Targets: compute >= 0.97, two_proc >= 0.95,
host_default <= 1.1, host_all <= 1.3, host_compiled <= 0.8; each printed with PASS or FAIL.

Data: ../shared/data/faces/fairface_val_1-3000.tar when present (prepared to shards once), otherwise
2,000 generated images; the bare loop reads the same images.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from .launcher import REPO, child_env, launch_cmd

FACES = REPO.parent / "shared" / "data" / "faces" / "fairface_val_1-3000.tar"
TARGETS = {"compute_fp32": (">=", 0.97), "compute_bf16": (">=", 0.97), "two_proc_fp32": (">=", 0.95),
           "two_proc_bf16": (">=", 0.95), "host_default": ("<=", 1.1), "host_all": ("<=", 1.3),
           "host_compiled": ("<=", 0.8)}
STANDARD = dict(res=64, width=64, z=100, batch=64)
TINY = dict(res=32, width=8, z=16, batch=2)
# Every stabiliser of the step: DiffAugment, EMA (on by default), one-sided smoothing, label noise, D dropout.
# quickstart.yaml sets nothing the overrides below do not replace: "default" rows train with the
# schema's defaults (data.workers=auto: 2 on a CPU, up to 8 on a GPU).
BASE_CONFIG = "configs/quickstart.yaml"
ALL = ["augment.policy=color,translation,cutout", "loss.real_label=0.9", "loss.label_flip=0.1", "model.d_dropout=0.2"]


# ---- the bare loop (run in its own process: --bare) ----------------------------------------------

def bare_loop(a: argparse.Namespace) -> dict:
    import torch
    import torch.nn.functional as F

    from dcgan_dist.data.stream import preview
    from dcgan_dist.config import ModelCfg
    from dcgan_dist.models import build_models

    torch.set_num_threads(a.threads)
    device = torch.device(a.device)
    torch.manual_seed(0)
    G, D = build_models(ModelCfg(resolution=a.res, channels=3, z_dim=a.z, g_width=a.width, d_width=a.width))
    G, D = G.to(device), D.to(device)
    opt_g = torch.optim.Adam(G.parameters(), lr=2e-4, betas=(0.5, 0.999))
    opt_d = torch.optim.Adam(D.parameters(), lr=2e-4, betas=(0.5, 0.999))
    shards = sorted(str(p) for p in Path(a.shards).glob("*.tar"))
    images = ((preview(shards, 512, a.res, 3) + 1) * 127.5).round().to(torch.uint8).to(device)
    idx = torch.randint(0, images.shape[0], (a.warmup + a.steps, a.batch), device=device)
    amp = torch.autocast(device.type, dtype=torch.bfloat16, enabled=a.precision == "bf16")
    ones = torch.ones(a.batch, device=device)
    zeros = torch.zeros(a.batch, device=device)

    def step(i: int) -> None:
        real = images[idx[i]].float().div_(127.5).sub_(1.0)
        D.zero_grad(set_to_none=True)
        with amp:
            err_real = F.binary_cross_entropy_with_logits(D(real).float(), ones)
        err_real.backward()
        z = torch.randn(a.batch, a.z, 1, 1, device=device)
        with amp:
            fake = G(z)
            err_fake = F.binary_cross_entropy_with_logits(D(fake.detach()).float(), zeros)
        err_fake.backward()
        opt_d.step()
        G.zero_grad(set_to_none=True)
        with amp:
            err_g = F.binary_cross_entropy_with_logits(D(fake).float(), ones)
        err_g.backward()
        opt_g.step()

    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    for i in range(a.warmup):
        step(i)
    sync()
    t0 = time.perf_counter()
    for i in range(a.warmup, a.warmup + a.steps):
        step(i)
    sync()
    seconds = time.perf_counter() - t0
    return {"img_per_s": a.steps * a.batch / seconds, "us_per_step": seconds / a.steps * 1e6}


# ---- one measurement in a fresh process ------------------------------------------------------------

def run_bare(net: dict, precision: str, threads: int, steps: int, warmup: int, a, shards: Path) -> dict:
    cmd = [sys.executable, "-m", "benchmarks.bench_train", "--bare", "--res", str(net["res"]),
           "--width", str(net["width"]), "--z", str(net["z"]), "--batch", str(net["batch"]), "--precision", precision, "--threads", str(threads),
           "--steps", str(steps), "--warmup", str(warmup), "--device", a.device, "--shards", str(shards)]
    out = subprocess.run(cmd, cwd=REPO, env=child_env(threads=threads), capture_output=True, text=True,
                         timeout=1800)
    if out.returncode != 0:
        raise RuntimeError(f"bare loop failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def run_project(net: dict, precision: str, threads: int, steps_per_tick: int, ticks: int, extra: list[str],
                a, shards: Path, procs: int = 1) -> dict:
    """The real trainer for `ticks + 1` ticks; the median of its own per-tick speed, first tick dropped."""
    with tempfile.TemporaryDirectory(prefix="bench_train_") as run_dir:
        tick_kimg = steps_per_tick * net["batch"] / 1000
        overrides = [f"data.shards={shards}", f"model.resolution={net['res']}", "model.channels=3",
                     f"model.z_dim={net['z']}", f"model.g_width={net['width']}", f"model.d_width={net['width']}",
                     f"train.batch={net['batch']}", f"train.tick_kimg={tick_kimg}", f"train.kimg={tick_kimg * (ticks + 1)}",
                     "train.sample_every_kimg=1e9", "checkpoint.every_kimg=1e9", "resume=none",
                     f"train.mixed_precision={'bf16' if precision == 'bf16' else 'auto'}", f"run.dir={run_dir}", *extra]
        if procs == 1:
            cmd = [sys.executable, "-m", "dcgan_dist.train", BASE_CONFIG, *overrides]
        else:
            cmd = launch_cmd(["--num_processes", str(procs), "-m", "dcgan_dist.train", BASE_CONFIG, *overrides])
        out = subprocess.run(cmd, cwd=REPO, env=child_env(threads=threads), capture_output=True, text=True,
                             timeout=3600)
        if out.returncode != 0:
            raise RuntimeError(f"trainer failed ({' '.join(cmd)}):\n{out.stderr[-4000:]}")
        if f"world size {procs}" not in out.stderr:
            raise RuntimeError(f"expected world size {procs} in the trainer's log:\n{out.stderr[-2000:]}")
        lines = [json.loads(x) for x in (Path(run_dir) / "stats.jsonl").read_text().splitlines()]
        speeds = [x["Speed/img_per_sec"] for x in lines[1:]]
        ips = statistics.median(speeds)
        return {"img_per_s": ips, "us_per_step": net["batch"] / ips * 1e6}


# ---- the plan --------------------------------------------------------------------------------------

def plan(a) -> list[dict]:
    """Rows: name, mode, how to run. Sizes chosen so that a row takes ~10-40 s on a 2-core CPU."""
    q = a.quick
    cores = os.cpu_count() or 1
    rows = []
    gpu = a.device == "cuda"
    if "compute" in a.modes:
        spt, ticks = (6, 2) if q else (8, 3)
        if gpu:  # a step is milliseconds: longer windows
            spt, ticks = (100, 2) if q else (200, 3)
        for batch in a.batches:
            net = {**STANDARD, "batch": batch}
            tag = "" if batch == 64 else f" b{batch}"
            for prec in ("fp32", "bf16"):
                name = f"compute {prec}{tag}"
                rows.append(dict(name=f"{name} bare", mode="compute", kind="bare", net=net, precision=prec,
                                 threads=cores, steps=spt * ticks, warmup=spt))
                rows.append(dict(name=f"{name} project", mode="compute", kind="project", net=net,
                                 precision=prec, threads=cores, spt=spt, ticks=ticks, extra=[]))
                if a.compile:
                    rows.append(dict(name=f"{name} project compiled", mode="compute", kind="project", net=net,
                                     precision=prec, threads=cores, spt=spt, ticks=ticks,
                                     extra=["train.compile=" + a.compile]))
                if not gpu and cores >= 2 and batch == 64:
                    rows.append(dict(name=f"{name} project 2 proc", mode="compute", kind="project", net=net,
                                     precision=prec, threads=1, spt=spt, ticks=ticks, extra=[], procs=2))
    if "host" in a.modes:
        spt, ticks = (150, 2) if q else (250, 3)
        if gpu:
            spt, ticks = (400, 2) if q else (800, 3)
        rows.append(dict(name="host bare", mode="host", kind="bare", net=TINY, precision="fp32", threads=1,
                         steps=spt * ticks, warmup=spt))
        for label, extra in (("default", []), ("default, data.cache=memory", ["data.cache=memory"]),
                             ("every stabiliser", ALL), ("every stabiliser, data.cache=memory", ALL + ["data.cache=memory"]),
                             ("compiled", ["train.compile=" + (a.compile or "default"), "data.cache=memory"])):
            rows.append(dict(name=f"host project {label}", mode="host", kind="project", net=TINY, precision="fp32",
                             threads=1, spt=spt, ticks=ticks, extra=extra))
    return rows


def measure(row: dict, a, shards: dict) -> dict:
    data = shards[row["net"]["res"]]
    if row["kind"] == "bare":
        return run_bare(row["net"], row["precision"], row["threads"], row["steps"], row["warmup"], a, data)
    return run_project(row["net"], row["precision"], row["threads"], row["spt"], row["ticks"], row["extra"], a, data,
                       procs=row.get("procs", 1))


def ratios(med: dict) -> dict:
    def r(num, den, key="img_per_s"):
        return med[num][key] / med[den][key] if num in med and den in med else None
    out = {"compute_fp32": r("compute fp32 project", "compute fp32 bare"),
           "compute_bf16": r("compute bf16 project", "compute bf16 bare"),
           "two_proc_fp32": r("compute fp32 project 2 proc", "compute fp32 project"),
           "two_proc_bf16": r("compute bf16 project 2 proc", "compute bf16 project"),
           "host_default": r("host project default", "host bare", "us_per_step"),
           "host_default_cache": r("host project default, data.cache=memory", "host bare", "us_per_step"),
           "host_all": r("host project every stabiliser", "host bare", "us_per_step"),
           "host_all_cache": r("host project every stabiliser, data.cache=memory", "host bare", "us_per_step"),
           "host_compiled": r("host project compiled", "host bare", "us_per_step")}
    return {k: v for k, v in out.items() if v is not None}


def prepare_shards(work: Path) -> dict:
    """Shards at 64 and 32 pixels from the FairFace crops, or from generated images without ../shared."""
    src = FACES
    if not src.is_file():
        import numpy as np
        from PIL import Image
        src = work / "generated"
        src.mkdir()
        rng = np.random.default_rng(0)
        for i in range(2000):
            Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(src / f"{i:05d}.png")
    out = {}
    for res in (64, 32):
        dest = work / f"shards{res}"
        subprocess.run([sys.executable, "-m", "dcgan_dist.prepare", str(src), "--out", str(dest), "--resolution",
                        str(res), "--no-labels", "--channels", "3", "--shards", "16"], cwd=REPO, check=True, capture_output=True)
        out[res] = dest
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.bench_train", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="2 rounds of shorter windows (~10 minutes on 2 CPU cores)")
    p.add_argument("--rounds", type=int, default=None, help="interleaved rounds (default 5, --quick 2)")
    p.add_argument("--modes", default="compute,host", help="comma list of compute, host")
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    p.add_argument("--json", type=Path, help="write the rows and ratios here")
    p.add_argument("--batches", default="64", help="compute mode: comma list of global batch sizes (default 64)")
    p.add_argument("--compile", nargs="?", const="default", default=None,
                   help="compute mode: add train.compile=MODE rows (default mode: default; host mode always has one)")
    # the bare loop's own process
    p.add_argument("--bare", action="store_true", help=argparse.SUPPRESS)
    for k, t in (("res", int), ("width", int), ("z", int), ("batch", int), ("threads", int), ("steps", int),
                 ("warmup", int)):
        p.add_argument(f"--{k}", type=t, help=argparse.SUPPRESS)
    p.add_argument("--precision", default="fp32", help=argparse.SUPPRESS)
    p.add_argument("--shards", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.bare:
        print(json.dumps(bare_loop(a)))
        return 0
    a.modes = a.modes.split(",")
    a.batches = [int(b) for b in a.batches.split(",")]
    rounds = a.rounds or (2 if a.quick else 5)
    import torch

    if a.device == "cuda" and not torch.cuda.is_available():
        print("error: --device cuda but no CUDA device is visible", file=sys.stderr)
        return 2
    t_start = time.time()
    with tempfile.TemporaryDirectory(prefix="bench_train_data_") as work:
        shards = prepare_shards(Path(work))
        rows = plan(a)
        results: dict[str, list[dict]] = {r["name"]: [] for r in rows}
        for k in range(rounds):
            for row in rows:
                res = measure(row, a, shards)
                results[row["name"]].append(res)
                print(f"round {k + 1}/{rounds}  {row['name']:<46} {res['img_per_s']:9.1f} img/s "
                      f"{res['us_per_step']:10.0f} us/step", file=sys.stderr, flush=True)
    med = {name: {"img_per_s": statistics.median(x["img_per_s"] for x in rs),
                  "us_per_step": statistics.median(x["us_per_step"] for x in rs),
                  "rounds_img_per_s": [round(x["img_per_s"], 2) for x in rs]} for name, rs in results.items()}
    rat = ratios(med)
    device = torch.cuda.get_device_name() if a.device == "cuda" else platform.processor() or platform.machine()
    print(f"\nbench_train: {device}, {os.cpu_count()} cores, torch {torch.__version__}, {rounds} rounds"
          f"{' (quick)' if a.quick else ''}, {time.time() - t_start:.0f} s\n")
    print("| row | img/s | us/step | rounds (img/s) |\n|---|---:|---:|---|")
    for name, m in med.items():
        print(f"| {name} | {m['img_per_s']:.1f} | {m['us_per_step']:.0f} | {', '.join(map(str, m['rounds_img_per_s']))} |")
    print("\n| ratio | value | target | |\n|---|---:|---|---|")
    failed = False
    for k, v in rat.items():
        if k in TARGETS:
            op, t = TARGETS[k]
            ok = v >= t if op == ">=" else v <= t
            failed |= not ok
            print(f"| {k} | {v:.3f} | {op} {t} | {'PASS' if ok else 'FAIL'} |")
        else:
            print(f"| {k} | {v:.3f} | | |")
    if a.json:
        a.json.write_text(json.dumps({"device": device, "rounds": rounds, "quick": a.quick,
                                      "rows": [{"name": n, **m} for n, m in med.items()], "ratios": rat}, indent=2) + "\n")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
