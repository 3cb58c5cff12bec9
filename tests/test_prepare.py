"""The prepare tool: every source kind round-trips into shards the trainer streams back."""

from __future__ import annotations

import gzip
import io
import json
import tarfile
import zipfile

import numpy as np
import pytest
import torch
import webdataset as wds
from PIL import Image

from dcgan_dist import prepare
from dcgan_dist.data import locate, stream
from dcgan_dist.data.shards import INDEX_NAME

RES = 16


def make_images(n: int, size=(24, 20), seed=0) -> list[np.ndarray]:
    """Distinct RGB images (solid colours, so resizing keeps them distinguishable)."""
    rng = np.random.default_rng(seed)
    colours = rng.choice(256, size=(n, 3), replace=True)
    colours[:, 0] = np.arange(n) * (256 // max(n, 1))  # the red channel makes each one unique
    return [np.broadcast_to(c.astype(np.uint8), (size[1], size[0], 3)).copy() for c in colours]


def png_bytes(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def run_prepare(tmp_path, *args) -> tuple[int, dict]:
    out = tmp_path / "out"
    rc = prepare.main([*map(str, args), "--out", str(out), "--resolution", str(RES), "--workers", "2"])
    index = json.loads((out / INDEX_NAME).read_text()) if (out / INDEX_NAME).exists() else {}
    return rc, index


def read_back(tmp_path) -> list[tuple[np.ndarray, int]]:
    shards = locate.resolve(str(tmp_path / "out"), RES, 3)
    out = []
    for url in shards.urls:
        for sample in wds.tarfile_samples([{"url": url}]):
            out.append((stream.decode(sample, RES, shards.index.channels), int(sample["cls"])))
    return out


def class_tree(n_per_class=3) -> dict[str, bytes]:
    """{'Training/<class>/<i>.png': bytes} like Fruits-360."""
    files = {}
    for c, cls in enumerate(["Apple Red", "Apple Golden", "Banana"]):
        for i, img in enumerate(make_images(n_per_class, seed=c)):
            files[f"Training/{cls}/{i}.png"] = png_bytes(img)
    return files


def write_tar(path, files: dict[str, bytes], mode="w"):
    with tarfile.open(path, mode) as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


@pytest.mark.parametrize("kind", ["folder", "zip", "tar", "tar.gz"])
def test_class_folders_round_trip(tmp_path, kind):
    files = class_tree()
    if kind == "folder":
        src = tmp_path / "src"
        for name, data in files.items():
            (src / name).parent.mkdir(parents=True, exist_ok=True)
            (src / name).write_bytes(data)
    elif kind == "zip":
        src = tmp_path / "src.zip"
        with zipfile.ZipFile(src, "w") as zf:
            for name, data in files.items():
                zf.writestr(name, data)
    else:
        src = tmp_path / f"src.{kind}"
        write_tar(src, files, "w:gz" if kind == "tar.gz" else "w")
    rc, index = run_prepare(tmp_path, src, "--shards", "3")
    assert rc == 0
    assert index["count"] == 9 and index["skipped"] == 0 and len(index["shards"]) == 3
    assert index["classes"] == ["Apple Golden", "Apple Red", "Banana"] and index["class_counts"] == [3, 3, 3]
    assert index["resolution"] == RES and index["channels"] == 3
    samples = read_back(tmp_path)
    assert len(samples) == 9 and all(img.shape == (3, RES, RES) for img, _ in samples)
    # a solid colour survives crop + Lanczos resize exactly; each class keeps its own 3 images
    expected = {}
    for name, data in files.items():
        cls = index["classes"].index(name.split("/")[1])
        expected.setdefault(cls, set()).add(tuple(np.asarray(Image.open(io.BytesIO(data)))[0, 0]))
    got = {}
    for img, cls in samples:
        got.setdefault(cls, set()).add(tuple(img[:, 0, 0]))
    assert got == expected


def test_include_selects_a_group_and_errors_list_classes(tmp_path):
    src = tmp_path / "fruits.tar"
    write_tar(src, class_tree())
    rc, index = run_prepare(tmp_path, src, "--include", "Apple *", "--shards", "2")
    assert rc == 0 and index["count"] == 6 and index["classes"] == ["Apple Golden", "Apple Red"]
    rc, _ = run_prepare(tmp_path / "x", src, "--include", "Cherry*")
    assert rc == 2


def test_idx_source_and_gray_default(tmp_path):
    images = np.stack([np.full((28, 28), 10 * i, np.uint8) for i in range(12)])
    labels = np.arange(12, dtype=np.uint8) % 10
    img_path = tmp_path / "t10k-images-idx3-ubyte.gz"
    with gzip.open(img_path, "wb") as f:
        f.write(bytes([0, 0, 8, 3]) + (12).to_bytes(4, "big") + (28).to_bytes(4, "big") * 2 + images.tobytes())
    with gzip.open(tmp_path / "t10k-labels-idx1-ubyte.gz", "wb") as f:
        f.write(bytes([0, 0, 8, 1]) + (12).to_bytes(4, "big") + labels.tobytes())
    rc, index = run_prepare(tmp_path, img_path, "--shards", "2")
    assert rc == 0 and index["channels"] == 1 and index["count"] == 12
    assert index["classes"] == [str(d) for d in range(10)] and sum(index["class_counts"]) == 12
    shards = locate.resolve(str(tmp_path / "out"), RES, 1)
    values = sorted(int(stream.decode(s, RES, 1)[0, 0, 0]) for u in shards.urls
                    for s in wds.tarfile_samples([{"url": u}]))
    assert values == [10 * i for i in range(12)]


def test_corrupt_images_are_skipped_and_counted(tmp_path):
    files = class_tree()
    files["Training/Banana/broken.png"] = b"\x89PNG not really"
    files["Training/Banana/truncated.png"] = files["Training/Banana/0.png"][:40]
    src = tmp_path / "src.tar"
    write_tar(src, files)
    rc, index = run_prepare(tmp_path, src, "--shards", "2")
    assert rc == 0 and index["count"] == 9 and index["skipped"] == 2
    assert sum(s["count"] for s in index["shards"]) == 9 and len(read_back(tmp_path)) == 9


def test_nothing_readable_is_an_error(tmp_path):
    src = tmp_path / "src"
    (src / "a").mkdir(parents=True)
    (src / "a" / "x.png").write_bytes(b"garbage")
    rc, _ = run_prepare(tmp_path, src, "--shards", "1")
    assert rc == 2
    rc, _ = run_prepare(tmp_path, tmp_path / "does-not-exist")
    assert rc == 2


def test_sources_combine_and_jpeg_encoding(tmp_path):
    a, b = tmp_path / "a.tar", tmp_path / "b.zip"
    write_tar(a, class_tree())
    with zipfile.ZipFile(b, "w") as zf:
        for i, img in enumerate(make_images(4, seed=9)):
            zf.writestr(f"flat{i}.png", png_bytes(img))
    rc, index = run_prepare(tmp_path, a, b, "--encoding", "jpg", "--no-labels", "--shards", "4")
    assert rc == 0 and index["count"] == 13 and index["classes"] == [] and index["encoding"] == "jpg"
    assert len(index["sources"]) == 2 and all(cls == -1 for _, cls in read_back(tmp_path))


def test_pipe_urls_stream_like_local_files(tmp_path):
    src = tmp_path / "src.tar"
    write_tar(src, class_tree())
    assert run_prepare(tmp_path, src, "--shards", "3")[0] == 0
    local = locate.resolve(str(tmp_path / "out"), RES, 3)
    piped = locate.resolve(f"pipe:cat {tmp_path}/out/out-{{000000..000002}}.tar", RES, 3)
    assert piped.urls == [f"pipe:cat {u}" for u in local.urls]
    specs = [stream.StreamSpec(urls=tuple(s.urls), counts=None, batch=9, rank=0, world_size=1, workers=1,
                               resolution=RES, channels=3, seed=1) for s in (local, piped)]
    a, b = (next(iter(stream.ShardStream(spec))) for spec in specs)
    assert torch.equal(a["image"], b["image"]) and torch.equal(a["label"], b["label"])
