"""Unit tests for the data layer: shard writing (`shards`), the stream's shard assignment and raw
samples (`stream`), the embedded digits (`digits`), the `prepare` CLI and the tar reader (`tario`).
The loader and its exact resume are in test_stream.py, shard resolution and the start-up checks in
test_locate.py; both reuse this file's writers.

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
from pathlib import Path

import numpy as np
import pytest
import torch
import webdataset as wds

from dcgan_dist.data import locate, stream, tario
from dcgan_dist.data.digits import iter_digits
from dcgan_dist.data.shards import INDEX_NAME, DatasetIndex, write_shards
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
