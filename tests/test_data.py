"""Unit tests for the data layer: shard writing (`shards`), the deterministic per-rank/per-worker
stream and its exact resume (`stream`), shard resolution and start-up checks (`locate`), the
embedded digits (`digits`) and the `prepare` CLI.

Every test makes its own tiny data set in tmp_path (random 8x8 uint8 images), so nothing needs
../shared or the network.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import tarfile
from collections import Counter
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
import webdataset as wds

from dcgan_dist.data import locate, stream, tario
from dcgan_dist.data import shards as shards_module
from dcgan_dist.data.digits import iter_digits
from dcgan_dist.data.locate import DataError, ShardSet
from dcgan_dist.data.shards import INDEX_NAME, DatasetIndex, encode_png, write_shards
from dcgan_dist.data.stream import StreamSpec

REPO = Path(__file__).resolve().parents[1]
RES = 8


def make_shards(out, n=40, shards=8, *, channels=3, labels=None, classes=None, seed=0, name="toy"):
    """Write `n` random RES x RES images as `shards` shards into `out`.

    Labels default to 0..n-1, so a label identifies its image. Returns (images HxWxC, labels,
    index, sorted shard paths).
    """
    images = np.random.default_rng(1234).integers(0, 256, (n, RES, RES, channels), dtype=np.uint8)
    labels = list(range(n)) if labels is None else list(labels)
    index = write_shards(zip(images, labels), out, name=name, resolution=RES, channels=channels,
                         classes=classes, num_shards=shards, seed=seed, progress=False)
    urls = sorted(str(p) for p in Path(out).glob("*.tar"))
    return images, labels, index, urls


def spec_for(urls, counts, **kw) -> StreamSpec:
    """A StreamSpec over tiny shards with small defaults; keyword args override."""
    base = dict(urls=tuple(urls), counts=None if counts is None else tuple(counts), batch=4, rank=0,
                world_size=1, workers=1, resolution=RES, channels=3, seed=7, shuffle_buffer=6)
    base.update(kw)
    return StreamSpec(**base)


def take_batches(spec: StreamSpec, n: int) -> list[dict]:
    """The first `n` batches of a real DataLoader over `spec` (spec.workers worker processes, or none if 1)."""
    num_workers = spec.workers if spec.workers > 1 else 0
    loader = stream.make_loader(spec, num_workers=num_workers, prefetch=2, pin_memory=False)
    it = iter(loader)
    try:
        return [next(it) for _ in range(n)]
    finally:
        del it  # shuts the persistent workers down


def assert_same_batches(got: list[dict], want: list[dict]) -> None:
    assert len(got) == len(want)
    for k, (a, b) in enumerate(zip(got, want)):
        assert torch.equal(a["label"], b["label"]), f"batch {k}: labels differ"
        assert torch.equal(a["image"], b["image"]), f"batch {k}: images differ"
        assert a["bad"] == b["bad"] == 0


def all_labels(batches: list[dict]) -> list[int]:
    return [int(x) for b in batches for x in b["label"]]


def chw(image_hwc: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(image_hwc.transpose(2, 0, 1))


def shard_keys(url: str) -> list[str]:
    return [s["__key__"] for s in wds.tarfile_samples([{"url": url}])]


# --------------------------------------------------------------------------------------------
# shards.write_shards
# --------------------------------------------------------------------------------------------

def test_write_shards_round_trip_names_index_and_contents(tmp_path):
    n, k = 23, 4
    labels = [i % 3 for i in range(n)]
    images, labels, index, urls = make_shards(tmp_path, n=n, shards=k, labels=labels, classes=["a", "b", "c"])

    assert [os.path.basename(u) for u in urls] == [f"toy-{s:06d}.tar" for s in range(k)]
    raw = json.loads((tmp_path / INDEX_NAME).read_text())
    assert raw["count"] == n and raw["resolution"] == RES and raw["channels"] == 3
    assert [s["name"] for s in raw["shards"]] == [os.path.basename(u) for u in urls]
    counts = [s["count"] for s in raw["shards"]]
    assert sum(counts) == n and max(counts) - min(counts) <= 1
    assert raw["class_counts"] == [8, 8, 7]
    assert DatasetIndex.load(tmp_path / INDEX_NAME) == index

    # Members are <key>.png and <key>.cls.
    with tarfile.open(urls[0]) as tar:
        names = tar.getnames()
    assert len(names) == 2 * counts[0]
    assert sorted({n.rsplit(".", 1)[1] for n in names}) == ["cls", "png"]

    # Reading every shard back gives exactly the original (image, label) multiset.
    got = Counter()
    for url, count in zip(urls, counts):
        samples = list(wds.tarfile_samples([{"url": url}]))
        assert len(samples) == count
        for s in samples:
            arr = stream.decode(s, RES, 3)
            assert arr is not None and arr.dtype == np.uint8 and arr.shape == (3, RES, RES)
            got[(arr.tobytes(), int(s["cls"]))] += 1
    want = Counter((chw(im).tobytes(), lab) for im, lab in zip(images, labels))
    assert got == want


def test_write_shards_gray_images_round_trip(tmp_path):
    images, labels, _, urls = make_shards(tmp_path, n=6, shards=2, channels=1)
    got = {int(s["cls"]): stream.decode(s, RES, 1) for u in urls for s in wds.tarfile_samples([{"url": u}])}
    assert sorted(got) == labels
    for lab, arr in got.items():
        assert arr.shape == (1, RES, RES)
        assert np.array_equal(arr, chw(images[lab]))


def test_write_shards_is_deterministic_and_shuffle_seed_changes_sharding(tmp_path):
    _, _, _, urls_a = make_shards(tmp_path / "a", n=20, shards=4, seed=0)
    _, _, _, urls_b = make_shards(tmp_path / "b", n=20, shards=4, seed=0)
    _, _, _, urls_c = make_shards(tmp_path / "c", n=20, shards=4, seed=1)
    for a, b in zip(urls_a, urls_b):
        assert Path(a).read_bytes() == Path(b).read_bytes()  # mtime=0: byte-identical shards
    assert [shard_keys(u) for u in urls_a] != [shard_keys(u) for u in urls_c]


def test_content_hash_ignores_shuffle_seed_but_sees_one_pixel(tmp_path):
    images = np.random.default_rng(0).integers(0, 256, (10, RES, RES, 3), dtype=np.uint8)
    labels = list(range(10))

    def content(imgs, labs, seed, sub):
        return write_shards(zip(imgs, labs), tmp_path / sub, name="h", resolution=RES, channels=3,
                            num_shards=3, seed=seed, progress=False).content_sha256

    h0 = content(images, labels, 0, "s0")
    assert content(images, labels, 99, "s99") == h0
    changed = images.copy()
    changed[4, 3, 5, 1] ^= 1
    assert content(changed, labels, 0, "pixel") != h0
    assert content(images, labels[:-1] + [0], 0, "label") != h0


def test_write_shards_rejects_empty_input(tmp_path):
    with pytest.raises(ValueError, match="no images"):
        write_shards(iter(()), tmp_path, name="empty", resolution=RES, channels=3, progress=False)


@pytest.mark.parametrize("shape", [(RES, RES, 1), (RES, RES + 1, 3), (RES * 2, RES * 2, 3)])
def test_write_shards_rejects_wrong_shape(tmp_path, shape):
    good = np.zeros((RES, RES, 3), np.uint8)
    bad = np.zeros(shape, np.uint8)
    with pytest.raises(ValueError, match="does not match"):
        write_shards([(good, 0), (bad, 1)], tmp_path, name="x", resolution=RES, channels=3, progress=False)


def test_write_shards_more_shards_than_images_gives_usable_shards(tmp_path):
    images = np.zeros((3, RES, RES, 3), np.uint8)
    try:
        index = write_shards(zip(images, range(3)), tmp_path, name="few", resolution=RES, channels=3,
                             num_shards=5, progress=False)
    except ValueError:
        return  # refusing is fine too
    assert all(s.count > 0 for s in index.shards)
    locate.check(locate.resolve(str(tmp_path), RES, 3), resolution=RES, channels=3, ranks=1, workers=1)


def test_write_shards_rejects_negative_num_shards(tmp_path):
    images = np.zeros((3, RES, RES, 3), np.uint8)
    with pytest.raises(ValueError):
        write_shards(zip(images, range(3)), tmp_path, name="neg", resolution=RES, channels=3, num_shards=-1,
                     progress=False)


# --------------------------------------------------------------------------------------------
# stream: shard assignment, raw samples
# --------------------------------------------------------------------------------------------

def test_epoch_shards_partition_all_shards_per_epoch():
    spec = spec_for([f"s{i}.tar" for i in range(10)], None, world_size=2, workers=2)
    for epoch in range(3):
        parts = [stream.epoch_shards(spec, epoch, slot) for slot in range(spec.slots)]
        assert sorted(i for p in parts for i in p) == list(range(10))
        assert sorted(len(p) for p in parts) == [2, 2, 3, 3]


@pytest.mark.parametrize("counts_known", [True, False])
def test_slots_read_disjoint_complete_samples_every_epoch(tmp_path, counts_known):
    _, _, index, urls = make_shards(tmp_path, n=40, shards=8)
    counts = [s.count for s in index.shards]
    assert counts == [5] * 8
    key_shard = {key: i for i, u in enumerate(urls) for key in shard_keys(u)}
    assert len(key_shard) == 40

    def spec_at(seed):
        return spec_for(urls, counts if counts_known else None, seed=seed, world_size=2, workers=2)

    def deal(spec, epoch):
        return [stream.epoch_shards(spec, epoch, slot) for slot in range(spec.slots)]

    # A seed whose epoch 1 deals the shards differently from epoch 0.
    seed = next(s for s in range(20) if deal(spec_at(s), 0) != deal(spec_at(s), 1))
    spec = spec_at(seed)

    per_epoch = {0: [], 1: []}
    iters = [stream.raw_samples(spec, slot) for slot in range(spec.slots)]
    for epoch in (0, 1):
        for slot, it in enumerate(iters):
            mine = stream.epoch_shards(spec, epoch, slot)
            n = sum(counts[i] for i in mine)
            keys = [next(it)["__key__"] for _ in range(n)]
            assert {key_shard[k] for k in keys} == set(mine), f"epoch {epoch} slot {slot} read foreign shards"
            per_epoch[epoch] += keys
    for epoch, keys in per_epoch.items():
        assert len(keys) == 40 and set(keys) == set(key_shard), f"epoch {epoch} is not exactly one pass"


def test_raw_samples_skip_equals_dropping(tmp_path):
    _, _, index, urls = make_shards(tmp_path, n=40, shards=8)
    counts = [s.count for s in index.shards]
    for counts_arg in (counts, None):
        spec = spec_for(urls, counts_arg, world_size=2, workers=2, hflip=True)
        full = stream.raw_samples(spec, 3)
        ref = [next(full) for _ in range(40)]
        for skip in (0, 3, 10, 21, 30):  # a slot reads 10 samples per epoch
            it = stream.raw_samples(spec, 3, skip=skip)
            got = [next(it) for _ in range(40 - skip)]
            assert [(s["__key__"], s["__flip__"]) for s in got] == [(s["__key__"], s["__flip__"]) for s in ref[skip:]]


def test_raw_samples_skips_whole_epochs_without_reading_them(tmp_path, monkeypatch):
    _, _, index, urls = make_shards(tmp_path, n=40, shards=8)
    spec = spec_for(urls, [s.count for s in index.shards], world_size=2, workers=2)
    opened = []
    real = tario.wds.gopen

    def recording(url, *args, **kw):
        opened.append(url)
        return real(url, *args, **kw)

    monkeypatch.setattr(tario.wds, "gopen", recording)
    it = stream.raw_samples(spec, 1, skip=20)  # slot 1 reads 10 samples per epoch: skip epochs 0 and 1
    next(it)
    assert opened == [urls[i] for i in stream.epoch_shards(spec, 2, 1)]


def test_raw_samples_shuffle_within_shard_depends_on_seed(tmp_path):
    _, _, _, urls = make_shards(tmp_path, n=12, shards=1)
    stored = shard_keys(urls[0])

    def first_pass(seed, buffer):
        it = stream.raw_samples(spec_for(urls, [12], seed=seed, shuffle_buffer=buffer), 0)
        return [next(it)["__key__"] for _ in range(12)]

    for buffer in (4, 64):  # smaller and larger than the shard
        orders = [first_pass(seed, buffer) for seed in (0, 1)]
        assert all(sorted(o) == sorted(stored) for o in orders)
        assert orders[0] != stored and orders[1] != stored, "samples come out in tar order"
        assert orders[0] != orders[1], "the shuffle ignores the seed"
        assert first_pass(0, buffer) == orders[0]


def test_raw_samples_reports_slot_without_shards(tmp_path):
    _, _, index, urls = make_shards(tmp_path, n=6, shards=2)
    spec = spec_for(urls, [s.count for s in index.shards], world_size=1, workers=3)
    with pytest.raises(RuntimeError, match="too few shards"):
        next(stream.raw_samples(spec, 2))


# --------------------------------------------------------------------------------------------
# stream: batches through the real DataLoader, exact resume, determinism
# --------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def toy40(tmp_path_factory):
    """40 unique-labelled images in 8 shards of 5, shared by the loader tests (read-only)."""
    out = tmp_path_factory.mktemp("toy40")
    images, labels, index, urls = make_shards(out, n=40, shards=8)
    return images, urls, [s.count for s in index.shards]


@pytest.fixture(scope="module")
def rank0_two_workers(toy40):
    """Rank 0 of 2, 2 worker processes, batch 4 (5 batches per epoch): the uninterrupted streams."""
    _, urls, counts = toy40
    return {hflip: take_batches(spec_for(urls, counts, world_size=2, workers=2, hflip=hflip), 12)
            for hflip in (False, True)}


def test_loader_batches_have_shape_labels_and_cover_the_rank_share(toy40, rank0_two_workers):
    images, urls, counts = toy40
    batches = rank0_two_workers[False]
    for b in batches:
        assert b["image"].shape == (4, 3, RES, RES) and b["image"].dtype == torch.uint8
        assert b["label"].shape == (4,) and b["label"].dtype == torch.int64
        assert b["bad"] == 0
        for img, lab in zip(b["image"], b["label"]):
            assert np.array_equal(img.numpy(), chw(images[int(lab)]))
    # Rank 0 owns slots 0 and 1, each reading 10 samples (2.5 batches) per epoch, so a worker's
    # batches straddle epochs; its first 10 batches are exactly both slots' epochs 0 and 1.
    spec = spec_for(urls, counts, world_size=2, workers=2)
    shard_labels = [[int(s["cls"]) for s in wds.tarfile_samples([{"url": u}])] for u in urls]
    want = Counter(lab for epoch in (0, 1) for slot in (0, 1)
                   for i in stream.epoch_shards(spec, epoch, slot) for lab in shard_labels[i])
    got = Counter(all_labels(batches[:10]))
    assert sum(got.values()) == 40 and got == want


@pytest.mark.parametrize("hflip", [False, True])
@pytest.mark.parametrize("start", [0, 4, 5])
def test_resume_two_workers_continues_the_uninterrupted_stream(toy40, rank0_two_workers, hflip, start):
    _, urls, counts = toy40
    ref = rank0_two_workers[hflip]
    got = take_batches(spec_for(urls, counts, world_size=2, workers=2, hflip=hflip, start_batch=start), 12 - start)
    assert_same_batches(got, ref[start:])


@pytest.mark.parametrize("counts_known", [True, False])
def test_resume_skipping_more_than_an_epoch(toy40, rank0_two_workers, counts_known):
    # start 9: logical worker 1 skips 4 batches (16 samples > its 10 per epoch), worker 0 skips
    # 5 batches (exactly 2 epochs).
    _, urls, counts = toy40
    spec = spec_for(urls, counts if counts_known else None, world_size=2, workers=2, hflip=True, start_batch=9)
    assert_same_batches(take_batches(spec, 3), rank0_two_workers[True][9:12])


@pytest.mark.parametrize("counts_known", [True, False])
def test_resume_without_worker_processes(toy40, counts_known):
    _, urls, counts = toy40
    spec = spec_for(urls, counts if counts_known else None, world_size=2, workers=1, hflip=True)
    ref = take_batches(spec, 14)  # 20 samples per epoch = 5 batches: spans almost 3 epochs
    for start in (1, 5, 11):
        assert_same_batches(take_batches(replace(spec, start_batch=start), 14 - start), ref[start:])


def test_shard_stream_without_dataloader_matches_loader(toy40):
    _, urls, counts = toy40
    spec = spec_for(urls, counts, world_size=2, workers=1, rank=1)
    it = iter(stream.ShardStream(spec))
    direct = [next(it) for _ in range(6)]
    assert_same_batches(direct, take_batches(spec, 6))


def test_same_spec_gives_identical_batches_and_seed_changes_order(toy40, rank0_two_workers):
    _, urls, counts = toy40
    spec = spec_for(urls, counts, world_size=2, workers=2)
    assert_same_batches(take_batches(spec, 12), rank0_two_workers[False])
    other = take_batches(replace(spec, seed=spec.seed + 1), 12)
    assert all_labels(other) != all_labels(rank0_two_workers[False])


def test_ranks_get_different_samples(toy40):
    _, urls, counts = toy40
    r0 = take_batches(spec_for(urls, counts, world_size=2, workers=1, rank=0), 5)
    r1 = take_batches(spec_for(urls, counts, world_size=2, workers=1, rank=1), 5)
    l0 = {int(x) for b in r0 for x in b["label"]}
    l1 = {int(x) for b in r1 for x in b["label"]}
    assert len(l0) == len(l1) == 20 and l0.isdisjoint(l1)


def test_make_loader_rejects_mismatched_workers(toy40):
    _, urls, counts = toy40
    with pytest.raises(AssertionError):
        stream.make_loader(spec_for(urls, counts, workers=2), num_workers=0, prefetch=2, pin_memory=False)


# --------------------------------------------------------------------------------------------
# stream: hflip and unreadable samples
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("hflip", [False, True])
def test_hflip_mirrors_about_half(toy40, hflip):
    images, urls, counts = toy40
    spec = spec_for(urls, counts, world_size=1, workers=1, batch=8, hflip=hflip)
    batches = take_batches(spec, 10)  # 80 images = two epochs
    flipped = 0
    for b in batches:
        for img, lab in zip(b["image"].numpy(), b["label"]):
            orig = chw(images[int(lab)])
            if np.array_equal(img, orig[:, :, ::-1]):
                flipped += 1
            else:
                assert np.array_equal(img, orig)
    if hflip:
        assert 20 <= flipped <= 60, f"{flipped} of 80 mirrored"
    else:
        assert flipped == 0


def write_tar(path: Path, pngs: list[bytes]) -> None:
    with wds.TarWriter(str(path), encoder=False) as sink:
        for i, png in enumerate(pngs):
            sink.write({"__key__": f"{i:08d}", "png": png, "cls": str(i).encode()})


def test_corrupt_sample_is_replaced_within_its_batch(tmp_path):
    images = np.random.default_rng(3).integers(0, 256, (6, RES, RES, 3), dtype=np.uint8)
    pngs = [encode_png(im) for im in images]
    pngs[2] = b"this is not a png" * 10
    write_tar(tmp_path / "c-000000.tar", pngs)
    spec = spec_for([str(tmp_path / "c-000000.tar")], [6], batch=6)
    (batch,) = take_batches(spec, 1)
    assert batch["image"].shape == (6, 3, RES, RES)
    assert batch["bad"] == 1
    valid = {chw(images[i]).tobytes(): i for i in range(6) if i != 2}
    got = [img.numpy().tobytes() for img in batch["image"]]
    assert all(g in valid for g in got), "a batch image is not one of the valid images"
    assert set(got) == set(valid) and len(got) - len(set(got)) == 1  # one valid image appears twice
    assert [valid[g] for g in got] == batch["label"].tolist()  # the replacement carries its own label


def test_wrong_size_sample_counts_as_bad(tmp_path):
    images = np.random.default_rng(3).integers(0, 256, (4, RES, RES, 3), dtype=np.uint8)
    pngs = [encode_png(im) for im in images[:3]] + [encode_png(np.zeros((RES * 2, RES * 2, 3), np.uint8))]
    write_tar(tmp_path / "w-000000.tar", pngs)
    batch = next(iter(stream.ShardStream(spec_for([str(tmp_path / "w-000000.tar")], [4], batch=4))))
    assert batch["bad"] == 1 and batch["image"].shape == (4, 3, RES, RES)


def test_all_unreadable_batch_raises(tmp_path):
    write_tar(tmp_path / "g-000000.tar", [b"garbage"] * 4)
    loader = stream.make_loader(spec_for([str(tmp_path / "g-000000.tar")], [4], batch=4),
                                num_workers=0, prefetch=2, pin_memory=False)
    with pytest.raises(DataError, match="unreadable"):  # a data problem: the trainer reports it in one line
        next(iter(loader))


# --------------------------------------------------------------------------------------------
# locate.resolve
# --------------------------------------------------------------------------------------------

def test_resolve_directory_glob_and_brace_pattern_agree(tmp_path):
    _, _, index, urls = make_shards(tmp_path, n=8, shards=4)
    (tmp_path / "notes.txt").write_text("not a shard")
    forms = [str(tmp_path), str(tmp_path / "toy-*.tar"), str(tmp_path / "toy-{000000..000003}.tar"),
             str(tmp_path / "toy-{000003,000001,000000,000002}.tar")]
    for form in forms:
        got = locate.resolve(form, RES, 3)
        assert got.urls == urls, form
        assert got.index == index
        assert got.counts == [2, 2, 2, 2]


def test_resolve_brace_pattern_subset(tmp_path):
    _, _, _, urls = make_shards(tmp_path, n=8, shards=4)
    got = locate.resolve(str(tmp_path / "toy-{000001..000002}.tar"), RES, 3)
    assert got.urls == urls[1:3] and got.counts == [2, 2]


@pytest.mark.parametrize("pattern", ["missing-*.tar", "missing-{000000..000003}.tar", "nodir"])
def test_resolve_no_match_names_spec_and_prepare(tmp_path, pattern):
    spec = str(tmp_path / pattern)
    with pytest.raises(DataError) as exc:
        locate.resolve(spec, RES, 3)
    assert spec in str(exc.value) and "prepare" in str(exc.value)


def test_resolve_empty_directory_fails(tmp_path):
    with pytest.raises(DataError, match="prepare"):
        locate.resolve(str(tmp_path), RES, 3)


def test_resolve_embedded_digits_writes_cache_once(tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    monkeypatch.setenv("DCGAN_DIST_CACHE", str(cache))
    writes = []
    real_write = shards_module.write_shards

    def counting_write(*args, **kwargs):
        writes.append(1)
        return real_write(*args, **kwargs)

    monkeypatch.setattr(shards_module, "write_shards", counting_write)
    first = locate.resolve("embedded:digits", RES, 1)
    assert first.urls and all(Path(u).parent == cache / f"digits{RES}c1" for u in first.urls)
    assert first.index.count == 1797 and sum(first.counts) == 1797
    assert first.index.resolution == RES and first.index.channels == 1
    mtimes = {p.name: p.stat().st_mtime_ns for p in (cache / f"digits{RES}c1").iterdir()}
    assert INDEX_NAME in mtimes
    second = locate.resolve("embedded:digits", RES, 1)
    assert second.urls == first.urls
    assert len(writes) == 1, "the cached shards were written again"
    assert {p.name: p.stat().st_mtime_ns for p in (cache / f"digits{RES}c1").iterdir()} == mtimes
    assert sorted(p.name for p in cache.iterdir()) == [f"digits{RES}c1"]  # no temp dirs left behind


def test_resolve_unknown_embedded_raises(tmp_path, monkeypatch):
    monkeypatch.setenv("DCGAN_DIST_CACHE", str(tmp_path))
    with pytest.raises(DataError, match="nope"):
        locate.resolve("embedded:nope", RES, 1)


def test_resolve_unreadable_index_raises(tmp_path):
    make_shards(tmp_path, n=8, shards=4)
    (tmp_path / INDEX_NAME).write_text('{"format": "something-else/9"}')
    with pytest.raises(DataError, match=INDEX_NAME):
        locate.resolve(str(tmp_path), RES, 3)


# --------------------------------------------------------------------------------------------
# locate.check and ShardSet.counts
# --------------------------------------------------------------------------------------------

def test_check_accepts_good_shards(tmp_path):
    make_shards(tmp_path, n=8, shards=4)
    locate.check(locate.resolve(str(tmp_path), RES, 3), resolution=RES, channels=3, ranks=2, workers=2)
    locate.check(locate.resolve(str(tmp_path), RES, 3), resolution=RES, channels=3, ranks=4, workers=0)


def test_check_too_few_shards_names_numbers_and_workers_key(tmp_path):
    make_shards(tmp_path, n=8, shards=4)
    shards = locate.resolve(str(tmp_path), RES, 3)
    with pytest.raises(DataError) as exc:
        locate.check(shards, resolution=RES, channels=3, ranks=2, workers=3)
    msg = str(exc.value)
    assert "4 shard" in msg and "6" in msg and "data.workers" in msg


@pytest.mark.parametrize("damage", ["garbage", "truncated_header", "empty_file", "no_members"])
def test_check_unreadable_shard_names_file(tmp_path, damage):
    _, _, _, urls = make_shards(tmp_path, n=8, shards=4)
    victim = Path(urls[2])
    data = victim.read_bytes()
    if damage == "no_members":
        tarfile.open(victim, "w").close()  # a valid tar without members
    else:
        victim.write_bytes({"garbage": os.urandom(4096), "truncated_header": data[:200], "empty_file": b""}[damage])
    with pytest.raises(DataError) as exc:
        locate.check(locate.resolve(str(tmp_path), RES, 3), resolution=RES, channels=3, ranks=1, workers=1)
    assert str(victim) in str(exc.value)


@pytest.mark.parametrize("resolution, channels", [(RES * 2, 3), (RES, 1)])
def test_check_image_mismatch_suggests_model_settings(tmp_path, resolution, channels):
    make_shards(tmp_path, n=8, shards=4)
    shards = locate.resolve(str(tmp_path), resolution, channels)
    with pytest.raises(DataError) as exc:
        locate.check(shards, resolution=resolution, channels=channels, ranks=1, workers=1)
    assert f"model.resolution={RES}" in str(exc.value) and "model.channels=3" in str(exc.value)


def test_counts_none_when_index_misses_a_shard(tmp_path):
    _, _, _, urls = make_shards(tmp_path, n=8, shards=4)
    assert locate.resolve(str(tmp_path), RES, 3).counts == [2, 2, 2, 2]
    raw = json.loads((tmp_path / INDEX_NAME).read_text())
    raw["shards"] = raw["shards"][:-1]
    (tmp_path / INDEX_NAME).write_text(json.dumps(raw))
    got = locate.resolve(str(tmp_path), RES, 3)
    assert got.index is not None and got.counts is None
    assert ShardSet(urls, None).counts is None


def test_counts_follow_url_order(tmp_path):
    _, _, index, urls = make_shards(tmp_path, n=10, shards=4)  # counts 3, 3, 2, 2
    assert ShardSet(urls[::-1], index).counts == [2, 2, 3, 3]


# --------------------------------------------------------------------------------------------
# digits and the prepare CLI
# --------------------------------------------------------------------------------------------

def test_iter_digits_gray_and_rgb():
    gray = list(iter_digits(32))
    assert len(gray) == 1797
    assert all(im.shape == (32, 32, 1) and im.dtype == np.uint8 for im, _ in gray)
    assert sorted({lab for _, lab in gray}) == list(range(10))
    assert max(int(im.max()) for im, _ in gray) > 200  # stretched from 0..16 towards 0..255
    im3, lab3 = next(iter_digits(32, channels=3))
    assert im3.shape == (32, 32, 3) and im3.dtype == np.uint8 and lab3 == gray[0][1]
    assert np.array_equal(im3[:, :, 0], gray[0][0][:, :, 0])


def test_prepare_cli_writes_digits(tmp_path):
    out = tmp_path / "digits16"
    proc = subprocess.run([sys.executable, "-m", "dcgan_dist.prepare", "digits", "--out", str(out),
                           "--resolution", "16", "--shards", "4"], cwd=REPO, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "1797" in proc.stdout
    assert sorted(p.name for p in out.glob("*.tar")) == [f"digits16-{i:06d}.tar" for i in range(4)]
    raw = json.loads((out / INDEX_NAME).read_text())
    assert raw["count"] == 1797 and raw["resolution"] == 16 and raw["channels"] == 1
    assert sum(raw["class_counts"]) == 1797 and len(raw["class_counts"]) == 10


def test_prepare_cli_help_and_bad_args(tmp_path):
    def run(*args):
        return subprocess.run([sys.executable, "-m", "dcgan_dist.prepare", *args], cwd=REPO,
                              capture_output=True, text=True, timeout=60)

    helped = run("--help")
    assert helped.returncode == 0 and "--shards" in helped.stdout
    too_small = run("digits", "--out", str(tmp_path / "x"), "--resolution", "4")
    assert too_small.returncode == 2 and "resolution" in too_small.stderr
    assert not (tmp_path / "x").exists()


# --------------------------------------------------------------------------------------------
# tario: the fast tar reader yields exactly what webdataset's reader yields
# --------------------------------------------------------------------------------------------

def _tar_with(path, members: dict, fmt=tarfile.PAX_FORMAT, mode="w"):
    with tarfile.open(path, mode, format=fmt) as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size, info.mtime = len(data), 1.5  # a float mtime forces pax records in PAX_FORMAT
            tar.addfile(info, io.BytesIO(data))


@pytest.mark.parametrize("fmt, mode", [(tarfile.PAX_FORMAT, "w"), (tarfile.GNU_FORMAT, "w"),
                                       (tarfile.USTAR_FORMAT, "w:gz")])
def test_tar_samples_equal_webdataset(tmp_path, fmt, mode):
    long_dir = "d" * 120  # longer than the 100-byte ustar name field: GNU long names / pax path / prefix
    members = {}
    for i in range(5):
        members[f"{long_dir if fmt != tarfile.USTAR_FORMAT else 'x'}/{i:03d}.PNG"] = bytes([i]) * (700 + i)
        members[f"{long_dir if fmt != tarfile.USTAR_FORMAT else 'x'}/{i:03d}.cls"] = str(i).encode()
    members["__skipped__/x.json"] = b"{}"  # webdataset skips __name__/ members
    path = tmp_path / "s.tar"
    _tar_with(path, members, fmt, mode)
    for url in (str(path), f"pipe:cat {path}"):
        ours = list(tario.tar_samples([url]))
        theirs = [{k: v for k, v in s.items() if not k.startswith("__local")}
                  for s in wds.tarfile_samples([{"url": url}])]
        assert ours == theirs and sum("cls" in s for s in ours) == 5


def test_tar_samples_truncated_shard_is_a_clear_error(tmp_path):
    path = tmp_path / "s.tar"
    _tar_with(path, {f"{i}.png": b"x" * 2000 for i in range(3)})
    path.write_bytes(path.read_bytes()[:3000])
    with pytest.raises(tario.ShardReadError, match="cannot read shard.*prepare"):
        list(tario.tar_samples([str(path)]))
