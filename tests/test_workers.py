"""`data.workers=auto` (data/workers.py) and the warning that says the loader, not the GPU, sets the speed."""

from __future__ import annotations

import logging

import pytest

from dcgan_dist import config
from dcgan_dist.data import workers
from dcgan_dist.monitors import LoaderMonitor


@pytest.mark.parametrize("device, cpus, ranks_on_node, shards, ranks, expected", [
    ("cuda", 16, 1, 64, 1, 8),     # one GPU on a 16-core box: capped at 8
    ("cuda", 64, 8, 64, 8, 7),     # 8 GPUs sharing 64 cores: 8 each, one left to the training process
    ("cuda", 16, 8, 64, 8, 1),     # 8 GPUs on 16 cores: 2 each, 1 worker (never 0)
    ("cuda", 4, 1, 64, 1, 3),
    ("cuda", 16, 1, 16, 4, 4),     # 16 shards for 4 ranks: 4 workers each at most
    ("cuda", 16, 1, 2, 4, 1),      # fewer shards than ranks: 1, and locate.check says what to do
    ("cpu", 16, 1, 64, 1, 2),      # on a CPU the training threads own the cores
    ("cpu", 2, 2, 64, 2, 2),
    ("cpu", 2, 2, 2, 2, 1),
])
def test_auto_resolves_from_the_device_the_cores_and_the_shards(device, cpus, ranks_on_node, shards, ranks, expected):
    assert workers.resolve("auto", device_type=device, shards=shards, ranks=ranks, cpus=cpus,
                           ranks_on_node=ranks_on_node) == expected


def test_auto_reads_the_affinity_and_the_launchers_local_world_size(monkeypatch):
    monkeypatch.setattr(workers.os, "sched_getaffinity", lambda pid: set(range(12)), raising=False)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    assert workers.usable_cpus() == 12 and workers.local_ranks() == 2
    assert workers.resolve("auto", device_type="cuda", shards=64, ranks=2) == 5  # 12 / 2 - 1


def test_a_number_is_kept_as_given():
    assert workers.resolve(0, device_type="cuda", shards=64, ranks=1) == 0
    assert workers.resolve(12, device_type="cpu", shards=4, ranks=1) == 12  # locate.check refuses it, naming the key


def test_config_accepts_auto_and_numbers():
    assert config.load(None).data.workers == "auto"  # the default
    assert config.load(None, ["data.workers=3"]).data.workers == 3
    assert config.load(None, ["data.workers=auto"]).data.workers == "auto"


class _Cfg:
    class data:
        workers, cache = 2, "none"


def test_loader_warning_fires_once_on_a_gpu_after_the_first_tick(caplog):
    monitor = LoaderMonitor(_Cfg, "cuda", is_main=True)
    with caplog.at_level(logging.WARNING, logger="dcgan_dist"):
        monitor.check(0.9, 1000)   # the first tick: workers starting up, exempt
        monitor.check(0.1, 2000)   # the step sets the pace
        assert caplog.text == ""
        monitor.check(0.6, 3000)
        monitor.check(0.7, 4000)   # said once
    assert caplog.text.count("waited for batches") == 1
    assert "60% of the tick to kimg 3.000" in caplog.text
    assert "data.workers=2" in caplog.text and "data.cache=memory" in caplog.text


@pytest.mark.parametrize("device, is_main", [("cpu", True), ("cuda", False)])
def test_loader_warning_is_for_rank_zero_of_gpu_runs(caplog, device, is_main):
    monitor = LoaderMonitor(_Cfg, device, is_main=is_main)
    with caplog.at_level(logging.WARNING, logger="dcgan_dist"):
        for k in range(4):
            monitor.check(0.9, 1000 * k)
    assert caplog.text == ""
