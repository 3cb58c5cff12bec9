"""Unit tests of the training stream (`data.stream`) through the real DataLoader: batch shapes and
labels, the rank's share, exact resume (with and without worker processes, across epochs),
determinism, flips, and corrupt samples replaced within their batch.

Every test makes its own tiny shard set in tmp_path with test_data's writer, so nothing needs
../shared or the network.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
import webdataset as wds

from dcgan_dist.data import stream
from dcgan_dist.data.locate import DataError
from dcgan_dist.data.shards import encode_png
from test_data import RES, all_labels, assert_same_batches, chw, make_shards, spec_for, take_batches

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
