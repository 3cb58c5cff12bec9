"""The names of the files a run directory holds: written by the trainer, read by report, sample,
evaluate, the sweep tools and the benchmarks. Spelled here once.

    config.yaml       the resolved config (every key, after extends and overrides)
    log.txt           the text log (rank zero), appended across resumes
    lock.json         while a training runs: who holds the run directory (see runlock.py)
    status.json       state (running / stopped / complete / failed), kimg, world size, last checkpoint,
                      who writes it (host, PIDs, Slurm job) and a heartbeat
    stats.jsonl       one JSON line per tick
    metrics.jsonl     one JSON line per evaluation (FID, KID, precision/recall, IS)
    sweep.json        a sweep task's settings, written before its run starts (see sweep.py)
    events.out.tfevents.*   TensorBoard scalars and sample images
    samples/          reals.png and fakes_<kimg>.png fixed-noise grids
    checkpoints/      <kimg>/ (the rotation) and best/ (see checkpoint.py); each holds meta.json
"""

CONFIG = "config.yaml"
LOG = "log.txt"
LOCK = "lock.json"
STATUS = "status.json"
STATS = "stats.jsonl"
METRICS = "metrics.jsonl"
SWEEP_RECORD = "sweep.json"
SAMPLES = "samples"
REALS = "reals.png"
CKPT_DIR = "checkpoints"
BEST = "best"
META = "meta.json"
GENERATOR = "generator.safetensors"


def fakes_name(kimg_name: str) -> str:
    """The fixed-noise grid of the checkpoint-style kimg name (e.g. fakes_000012.800.png)."""
    return f"fakes_{kimg_name}.png"
