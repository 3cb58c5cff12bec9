"""Damaged shards, for real: the start-up check (`locate.check`, `tario.walk_tar`) refuses a shard
that is truncated, cut, padded with garbage or out of step with dataset.json, by name and with the
fix; and a shard that breaks *after* the check (a file cut mid-run, a failing `pipe:` command)
stops the real DataLoader, workers and all, with one clear DataError line instead of a traceback.

Every test writes its own tiny shards with the project's writer (`write_shards`) and damages them
with ordinary file operations (`os.truncate`, appends, overwrites).
"""

from __future__ import annotations

import json
import logging
import os
import tarfile
from pathlib import Path

import numpy as np
import pytest

from dcgan_dist.data import cache, locate, stream, tario
from dcgan_dist.data.locate import DataError
from dcgan_dist.data.shards import INDEX_NAME, write_shards
from dcgan_dist.data.stream import StreamSpec
from test_data import _tar_with  # the tar writer of the reader's own tests: every tar flavour

RES = 8
FIX = "python -m dcgan_dist.prepare"


def make_shards(out: Path, n: int = 24, shards: int = 4) -> list[str]:
    images = np.random.default_rng(5).integers(0, 256, (n, RES, RES, 3), dtype=np.uint8)
    write_shards(zip(images, range(n)), out, name="toy", resolution=RES, channels=3, num_shards=shards, progress=False)
    return sorted(str(p) for p in out.glob("*.tar"))


def members(path: str) -> list[tarfile.TarInfo]:
    with tarfile.open(path) as tar:
        return tar.getmembers()


def check(directory: Path, workers: int = 1) -> None:
    locate.check(locate.resolve(str(directory), RES, 3), resolution=RES, channels=3, ranks=1, workers=workers)


def refused(directory: Path, victim: str) -> str:
    """The check's message for a damaged `victim`: it must name the file and the fix."""
    with pytest.raises(DataError) as exc:
        check(directory)
    msg = str(exc.value)
    assert victim in msg and FIX in msg and "\n" not in msg, msg
    return msg


def drop_sizes(directory: Path) -> None:
    """Make dataset.json look like one written before per-shard byte sizes were recorded."""
    raw = json.loads((directory / INDEX_NAME).read_text())
    for s in raw["shards"]:
        del s["size_bytes"]
    (directory / INDEX_NAME).write_text(json.dumps(raw))


# --------------------------------------------------------------------------------------------
# the start-up check
# --------------------------------------------------------------------------------------------

def test_intact_shards_pass_and_their_sizes_are_recorded(tmp_path):
    urls = make_shards(tmp_path)
    check(tmp_path, workers=2)
    index = locate.resolve(str(tmp_path), RES, 3).index
    assert [s.size_bytes for s in index.shards] == [os.path.getsize(u) for u in urls]
    for url, info in zip(urls, index.shards):
        layout = tario.walk_tar(url)
        assert (layout.samples, layout.members, layout.end_blocks) == (info.count, 2 * info.count, True)


def test_old_dataset_json_without_sizes_still_reads_and_checks(tmp_path):
    make_shards(tmp_path)
    drop_sizes(tmp_path)
    shards = locate.resolve(str(tmp_path), RES, 3)
    assert shards.counts == [6, 6, 6, 6] and all(s.size_bytes is None for s in shards.index.shards)
    check(tmp_path)


def test_truncated_inside_a_member_names_member_and_bytes(tmp_path):
    urls = make_shards(tmp_path)
    png = next(m for m in members(urls[2]) if m.name.endswith(".png"))
    os.truncate(urls[2], png.offset_data + png.size // 2)
    msg = refused(tmp_path, urls[2])
    assert f"ends inside member {png.name} at byte {png.size // 2} of {png.size}" in msg and "truncated" in msg


def test_cut_inside_a_header(tmp_path):
    urls = make_shards(tmp_path)
    third = members(urls[1])[2]
    os.truncate(urls[1], third.offset + 100)
    assert "ends inside the tar header" in refused(tmp_path, urls[1])


@pytest.mark.parametrize("sizes_recorded", [True, False])
def test_cut_at_a_member_boundary_is_caught_by_dataset_json(tmp_path, sizes_recorded):
    """A cut exactly between members leaves a well-formed tar: only what dataset.json recorded tells."""
    urls = make_shards(tmp_path)
    if not sizes_recorded:
        drop_sizes(tmp_path)
    os.truncate(urls[3], members(urls[3])[4].offset)  # two whole samples kept
    msg = refused(tmp_path, urls[3])
    assert ("bytes but dataset.json records" if sizes_recorded else "holds 2 samples but dataset.json records 6") in msg


def test_cut_at_a_member_boundary_without_dataset_json_warns(tmp_path, caplog):
    urls = make_shards(tmp_path)
    (tmp_path / INDEX_NAME).unlink()
    os.truncate(urls[0], members(urls[0])[4].offset)
    with caplog.at_level(logging.WARNING, logger="dcgan_dist"):
        check(tmp_path)  # readable as it is: nothing recorded says otherwise
    assert urls[0] in caplog.text and "no end-of-archive blocks" in caplog.text


def test_appended_garbage(tmp_path):
    urls = make_shards(tmp_path)
    with open(urls[1], "ab") as f:
        f.write(b"not a tar member" * 10)
    assert "after its end-of-archive blocks" in refused(tmp_path, urls[1])


def test_appended_zeros_are_refused_by_the_recorded_size_only(tmp_path):
    urls = make_shards(tmp_path)
    with open(urls[1], "ab") as f:
        f.write(bytes(1024))  # tar padding: harmless to readers, but not the file prepare wrote
    assert "bytes but dataset.json records" in refused(tmp_path, urls[1])
    drop_sizes(tmp_path)
    check(tmp_path)


def test_overwritten_header(tmp_path):
    urls = make_shards(tmp_path)
    second = members(urls[2])[1]
    with open(urls[2], "r+b") as f:
        f.seek(second.offset)
        f.write(np.random.default_rng(0).integers(1, 256, 512, dtype=np.uint8).tobytes())
    assert f"no valid tar header at byte {second.offset}" in refused(tmp_path, urls[2])


def test_header_with_a_wrong_checksum(tmp_path):
    """A changed byte in a member's name leaves every field parseable: only the checksum tells."""
    urls = make_shards(tmp_path)
    third = members(urls[0])[3]
    with open(urls[0], "r+b") as f:
        f.seek(third.offset)
        f.write(b"X")
    assert f"no valid tar header at byte {third.offset} (checksum mismatch)" in refused(tmp_path, urls[0])


def test_signed_checksum_of_old_tars_is_accepted(tmp_path):
    """Some old tars summed the header bytes as signed; tarfile and the reader accept it, so does the walk."""
    path = tmp_path / "old.tar"
    _tar_with(path, {"caf\u00e9/000.png": b"x" * 100, "caf\u00e9/000.cls": b"1"}, tarfile.USTAR_FORMAT)
    data = bytearray(path.read_bytes())
    header = data[:512]
    header[148:156] = b" " * 8
    signed = sum(b - 256 if b > 127 else b for b in header)
    assert signed != sum(header)  # the name's UTF-8 bytes are > 127
    header[148:156] = f"{signed:06o}\0 ".encode()
    data[:512] = header
    path.write_bytes(bytes(data))
    assert [m.name for m in members(str(path))] == ["caf\u00e9/000.png", "caf\u00e9/000.cls"]
    assert tario.walk_tar(str(path)).samples == 1 == len(list(tario.tar_samples([str(path)])))


def test_changed_count_in_dataset_json(tmp_path):
    urls = make_shards(tmp_path)
    raw = json.loads((tmp_path / INDEX_NAME).read_text())
    raw["shards"][2]["count"] = 7
    (tmp_path / INDEX_NAME).write_text(json.dumps(raw))
    assert "holds 6 samples but dataset.json records 7" in refused(tmp_path, urls[2])


def test_remote_urls_are_not_walked(tmp_path):
    """A `pipe:` URL cannot be walked without streaming it whole: the check skips it (the reader reports it)."""
    urls = make_shards(tmp_path)
    os.truncate(urls[0], 3000)
    shards = locate.ShardSet([f"pipe:cat {u}" for u in urls], None)
    locate.check(shards, resolution=RES, channels=3, ranks=1, workers=1)


# --------------------------------------------------------------------------------------------
# walk_tar agrees with the reader on every tar flavour the reader accepts
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("fmt, mode", [(tarfile.PAX_FORMAT, "w"), (tarfile.GNU_FORMAT, "w"),
                                       (tarfile.USTAR_FORMAT, "w"), (tarfile.PAX_FORMAT, "w:gz")])
def test_walk_counts_what_the_reader_reads(tmp_path, fmt, mode):
    long_dir = "d" * 120 if fmt != tarfile.USTAR_FORMAT else "p" * 120 + "/q"  # long names, or a ustar prefix
    files = {f"{long_dir}/{i:03d}.{ext}": bytes([i]) * (700 + i) for i in range(5) for ext in ("PNG", "cls")}
    files["__meta__/x.json"] = b"{}"  # skipped by webdataset and by the reader: not a sample
    path = tmp_path / "s.tar"
    _tar_with(path, files, fmt, mode)
    layout = tario.walk_tar(str(path))
    assert layout.samples == len(list(tario.tar_samples([str(path)]))) == 5 and layout.members == 11
    if mode == "w:gz":  # compressed: read through instead of seeking, cut short all the same
        os.truncate(path, path.stat().st_size // 2)
        with pytest.raises(tario.TarLayoutError, match="truncated or corrupt"):
            tario.walk_tar(str(path))


def test_walk_reads_base256_sizes(tmp_path):
    """GNU base-256 size fields (tar's encoding for members of 8 GiB and more), written by hand into a
    real tar so that the file stays small; tarfile reads it back as the reference."""
    path = tmp_path / "b.tar"
    _tar_with(path, {"000.png": b"x" * 3000, "000.cls": b"1"}, tarfile.GNU_FORMAT)
    data = bytearray(path.read_bytes())
    first = members(str(path))[0]
    header = data[first.offset:first.offset + 512]
    header[124:136] = b"\x80" + first.size.to_bytes(11, "big")
    header[148:156] = b" " * 8
    header[148:156] = f"{sum(header):06o}\0 ".encode()
    data[first.offset:first.offset + 512] = header
    path.write_bytes(bytes(data))
    assert [m.size for m in members(str(path))] == [3000, 1]
    assert tario.walk_tar(str(path)).samples == 1
    assert [len(s["png"]) for s in tario.tar_samples([str(path)])] == [3000]
    os.truncate(path, first.offset_data + 2048)
    with pytest.raises(tario.TarLayoutError, match="ends inside member 000.png at byte 2048 of 3000"):
        tario.walk_tar(str(path))


# --------------------------------------------------------------------------------------------
# read errors after the check: one clear DataError from the real loader
# --------------------------------------------------------------------------------------------

def spec_for(urls: list[str], workers: int) -> StreamSpec:
    return StreamSpec(urls=tuple(urls), counts=None, batch=4, rank=0, world_size=1, workers=workers,
                      resolution=RES, channels=3, seed=3, shuffle_buffer=4)


def read_until_error(urls: list[str], num_workers: int = 2, batches: int = 40) -> str:
    """Batches from the real DataLoader (`num_workers` worker processes) until the DataError."""
    loader = stream.make_loader(spec_for(urls, max(1, num_workers)), num_workers=num_workers, prefetch=2,
                                pin_memory=False)
    it = iter(loader)
    try:
        with pytest.raises(DataError) as exc:
            for _ in range(batches):
                next(it)
    finally:
        it._shutdown_workers()
    return str(exc.value)


def assert_one_clear_line(msg: str, url: str, fix: str) -> None:
    assert url in msg and fix in msg, msg
    assert "\n" not in msg and "Traceback" not in msg and "worker process" not in msg, msg


def test_shard_truncated_after_the_check_stops_the_loader_with_one_line(tmp_path):
    urls = make_shards(tmp_path)
    check(tmp_path, workers=2)  # intact at start-up
    png = next(m for m in members(urls[1]) if m.name.endswith(".png"))
    os.truncate(urls[1], png.offset_data + 100)  # cut mid-run
    assert_one_clear_line(read_until_error(urls), urls[1], FIX)


def test_failing_pipe_stops_the_loader_with_one_line(tmp_path):
    urls = [f"pipe:cat {u}" for u in make_shards(tmp_path)]
    urls[2] += "; exit 3"  # the whole shard arrives, then the command reports a failure
    msg = read_until_error(urls)
    assert_one_clear_line(msg, urls[2], "Check that the stream is reachable")
    assert "exited with status 3" in msg


def test_pipe_cut_short_stops_the_loader_with_one_line(tmp_path):
    shards = make_shards(tmp_path)
    urls = [f"pipe:cat {u}" for u in shards]
    urls[0] = f"pipe:head -c 1500 {shards[0]}"  # the connection drops mid-shard, with a zero exit status
    assert_one_clear_line(read_until_error(urls), urls[0], "Check that the stream is reachable")


def test_read_error_without_workers_is_the_same_error(tmp_path):
    urls = make_shards(tmp_path)
    os.truncate(urls[0], 2000)
    assert_one_clear_line(read_until_error(urls, num_workers=0), urls[0], FIX)


def test_memory_cache_reports_a_truncated_shard_by_name(tmp_path):
    urls = make_shards(tmp_path)
    os.truncate(urls[3], 2000)
    with pytest.raises(DataError) as exc:
        cache.DecodedSet(tuple(urls), (6, 6, 6, 6), RES, 3)
    assert_one_clear_line(str(exc.value), urls[3], FIX)
