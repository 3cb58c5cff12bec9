"""data.cache=memory: the decoded set in RAM gives exactly the shard stream's batches."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from conftest import TINY, launch
from dcgan_dist import config
from dcgan_dist.config import ConfigError
from dcgan_dist.data import cache
from dcgan_dist.data.locate import DataError
from dcgan_dist.data.shards import encode_png
from test_data import RES, make_shards, spec_for, take_batches
from test_stream import write_tar


def cached_batches(spec, n):
    it = iter(cache.make_memory_loader(spec, pin_memory=False, progress=False))
    return [next(it) for _ in range(n)]


def assert_equal_batches(got, want):
    assert len(got) == len(want)
    for k, (a, b) in enumerate(zip(got, want)):
        assert torch.equal(a["image"], b["image"]), f"batch {k}: images differ"
        assert torch.equal(a["label"], b["label"]), f"batch {k}: labels differ"
        assert a["bad"] == b["bad"], f"batch {k}: bad counts differ"
        assert a["image"].is_contiguous() and a["image"].dtype == torch.uint8


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    out = tmp_path_factory.mktemp("toy_cache")
    _, _, index, urls = make_shards(out, n=40, shards=8)
    return urls, [s.count for s in index.shards]


@pytest.mark.parametrize("workers", [1, 2])
@pytest.mark.parametrize("counts_known", [True, False])
def test_cache_equals_the_stream_over_epochs_with_flips(toy, workers, counts_known):
    urls, counts = toy
    # rank 1 of 2, 20 samples per epoch per rank: 16 batches of 4 span more than 3 epochs
    spec = spec_for(urls, counts if counts_known else None, world_size=2, rank=1, workers=workers, hflip=True)
    assert_equal_batches(cached_batches(spec, 16), take_batches(spec, 16))


@pytest.mark.parametrize("start", [1, 4, 5, 9])
def test_cache_resumes_like_the_stream(toy, start):
    urls, counts = toy
    spec = spec_for(urls, counts, world_size=2, workers=2, hflip=True)
    ref = take_batches(spec, 12)
    assert_equal_batches(cached_batches(replace(spec, start_batch=start), 12 - start), ref[start:])


def test_cache_replaces_unreadable_samples_like_the_stream(tmp_path):
    images = np.random.default_rng(3).integers(0, 256, (12, RES, RES, 3), dtype=np.uint8)
    pngs = [encode_png(im) for im in images]
    pngs[2] = b"this is not a png" * 10
    pngs[7] = encode_png(np.zeros((RES * 2, RES * 2, 3), np.uint8))  # wrong size
    write_tar(tmp_path / "c-000000.tar", pngs[:6])
    write_tar(tmp_path / "c-000001.tar", pngs[6:])
    spec = spec_for([str(tmp_path / f"c-00000{i}.tar") for i in range(2)], [6, 6], batch=4, hflip=True)
    got, want = cached_batches(spec, 6), take_batches(spec, 6)
    assert_equal_batches(got, want)
    assert sum(b["bad"] for b in got[:3]) == 2  # the first epoch holds both bad samples once


def test_cache_refuses_a_set_larger_than_memory(toy, monkeypatch):
    urls, counts = toy
    monkeypatch.setattr(cache, "available_memory", lambda: 1000)  # bytes
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "8")
    with pytest.raises(DataError, match=r"data\.cache=memory.*8 rank\(s\).*data\.cache=none"):
        cache.make_memory_loader(spec_for(urls, counts), pin_memory=False, progress=False)
    with pytest.raises(DataError, match=r"data\.cache=memory"):  # counts unknown: checked as it grows
        cache.make_memory_loader(spec_for(urls, None), pin_memory=False, progress=False)


def test_cache_key_is_validated():
    assert config.load(None, ["data.cache=memory"]).data.cache == "memory"
    with pytest.raises(ConfigError, match="data.cache must be one of none, memory"):
        config.load(None, ["data.cache=ram"])


@pytest.mark.slow
def test_cached_two_process_run_resumes_exactly_and_matches_the_stream(tmp_path, two_process_run):
    """Through the real launcher: 10 steps straight with the cache == 5 with the cache, resume, 5 more
    without it (the order is the stream's), and == 10 straight without the cache (the shared run)."""
    from test_train_distributed import CONFIG, _final_state

    runs = {k: tmp_path / k for k in ("cached", "split")}
    proc = launch(CONFIG, TINY + ["data.cache=memory", f"run.dir={runs['cached']}", "train.kimg=0.16"])
    assert "world size 2" in proc.stderr and "data.cache=memory: " in proc.stderr
    proc = launch(CONFIG, TINY + ["data.cache=memory", f"run.dir={runs['split']}", "train.kimg=0.08"])
    assert "world size 2" in proc.stderr
    proc = launch(CONFIG, TINY + [f"run.dir={runs['split']}", "train.kimg=0.16", "resume=auto"])
    assert "resumed from" in proc.stderr and "world size 2" in proc.stderr
    runs["stream"] = two_process_run[0]
    states = {k: _final_state(v) for k, v in runs.items()}
    a = states["cached"]
    for other in ("split", "stream"):
        b = states[other]
        assert a["meta"]["param_digests"] == b["meta"]["param_digests"], other
        mismatched = [k for k in a if k != "meta" and not torch.equal(a[k], b[k])]
        assert not mismatched, f"{other} differs: {mismatched[:8]}"
