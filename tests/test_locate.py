"""Unit tests of shard resolution and the start-up checks (`data.locate`): directories, globs, brace
patterns and the embedded digits resolve to the same shards; missing, empty, unreadable or
mismatched shards are refused with a message naming the file and the fix.

Every test makes its own tiny shard set in tmp_path with test_data's writer.
"""

from __future__ import annotations

import json
import os
import tarfile
from pathlib import Path

import pytest

from dcgan_dist.data import locate
from dcgan_dist.data import shards as shards_module
from dcgan_dist.data.locate import DataError, ShardSet
from dcgan_dist.data.shards import INDEX_NAME
from test_data import RES, make_shards

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
