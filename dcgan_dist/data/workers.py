"""`data.workers`: how many loader worker processes each rank runs (`auto` by default).

On a GPU the loader, not the step, sets the pace once the batch is large. Measured on one H200
(README: Performance, GPU): a 64x64 DCGAN step at batch 512 runs at ~36k img/s in a bare loop,
while one worker decodes ~4.5k img/s of 64x64 PNGs, so 2 workers held the trainer to 9.1k img/s and
8 matched the bare loop (37.2k). On a CPU the training process's threads own the cores, and 2
workers per rank were the measured choice there.

`auto` is therefore, on a GPU, the cores this rank may use (the process's CPU affinity, which Slurm
and containers restrict, shared by the node's ranks) less one for the training process, at most 8;
on a CPU, 2. Either way at least 1, and no more than the shards allow (every rank's workers read
disjoint shards: ranks x workers <= shards).

The stream's order depends on the number (see stream.py), so the resolved number is what the run
records (config.yaml, checkpoint meta); a resume that resolves another number (a node with other
cores) warns that the data order is not replayed exactly. An explicit number keeps exact resume
across different machines.
"""

from __future__ import annotations

import os
from typing import Union

AUTO = "auto"
AUTO_MAX_GPU = 8  # 8 x ~4.5k img/s of 64x64 decoding: above a DCGAN step's rate at batch 512 on an H200
CPU_WORKERS = 2


def usable_cpus() -> int:
    """CPUs this process may run on: its affinity (Slurm's --cpus-per-task, a container's cpuset)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def local_ranks() -> int:
    """Ranks on this node, as the launchers (accelerate, torchrun) announce them."""
    try:
        return max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    except ValueError:
        return 1


def resolve(setting: Union[int, str], *, device_type: str, shards: int, ranks: int,
            cpus: int | None = None, ranks_on_node: int | None = None) -> int:
    """The number of worker processes per rank for `data.workers=setting` (an int is kept as is)."""
    if setting != AUTO:
        return int(setting)
    if device_type == "cuda":
        per_rank = (usable_cpus() if cpus is None else cpus) // (local_ranks() if ranks_on_node is None else ranks_on_node)
        want = min(AUTO_MAX_GPU, per_rank - 1)
    else:
        want = CPU_WORKERS
    return max(1, min(want, shards // max(1, ranks)))


def check_setting(value: Union[int, str]) -> str | None:
    """The problem with a `data.workers` value, or None."""
    if value == AUTO or (isinstance(value, int) and not isinstance(value, bool) and value >= 0):
        return None
    return f"data.workers must be auto or a number >= 0 (got {value!r})"


__all__ = ["AUTO", "check_setting", "local_ranks", "resolve", "usable_cpus"]
