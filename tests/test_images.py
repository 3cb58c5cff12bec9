"""data/images.py: the one decoder (libspng fast path and PIL give the same arrays, one gray/RGB rule),
the one extension list, and the one [-1, 1] -> uint8 rounding rule every writer of pixels uses."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.utils import make_grid

from dcgan_dist.data import images, imagesets, stream
from dcgan_dist.data.images import (IMAGE_EXTS, color_mode, decode_image, image_files, image_grid, is_image_file,
                                    open_image, save_png, to_uint8)
from dcgan_dist.data.sources import FolderSource

RNG = np.random.default_rng(0)
GRAY = RNG.integers(0, 256, (12, 10), dtype=np.uint8)
RGB = RNG.integers(0, 256, (12, 10, 3), dtype=np.uint8)
RGBA = np.concatenate([RGB, RNG.integers(0, 256, (12, 10, 1), dtype=np.uint8)], axis=2)


def encoded(kind: str) -> bytes:
    """One 10 x 12 image of each kind a reader meets, encoded."""
    fmt = "JPEG" if kind.startswith("jpeg") else "PNG"
    img = {
        "gray": lambda: Image.fromarray(GRAY),
        "rgb": lambda: Image.fromarray(RGB),
        "rgba": lambda: Image.fromarray(RGBA),
        "gray_alpha": lambda: Image.fromarray(np.ascontiguousarray(RGBA[:, :, [0, 3]])),
        "palette": lambda: Image.fromarray(RGB).quantize(16),
        "gray16": lambda: Image.fromarray(GRAY.astype(np.uint16) * 3),
        "jpeg_gray": lambda: Image.fromarray(GRAY),
        "jpeg_rgb": lambda: Image.fromarray(RGB),
    }[kind]()
    buf = io.BytesIO()
    img.save(buf, format=fmt)
    return buf.getvalue()


KINDS = ("gray", "rgb", "rgba", "gray_alpha", "palette", "gray16", "jpeg_gray", "jpeg_rgb")
STORED_GRAY = {"gray", "gray16", "jpeg_gray"}  # the kinds that stay gray when no channel count is asked for
FAST = {("gray", None), ("gray", 1), ("rgb", None), ("rgb", 3)}  # 8-bit PNGs already in the wanted mode


def pil_reference(data: bytes, channels) -> np.ndarray:
    """What PIL alone makes of `data`, written out independently of the module."""
    img = Image.open(io.BytesIO(data))
    mode = {1: "L", 3: "RGB"}.get(channels) or ("L" if img.mode in ("1", "L", "I", "I;16") else "RGB")
    arr = np.asarray(img.convert(mode))
    return arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)


@pytest.mark.parametrize("channels", [None, 1, 3])
@pytest.mark.parametrize("kind", KINDS)
def test_fast_path_and_pil_give_the_same_arrays(kind, channels, monkeypatch):
    data = encoded(kind)
    want = pil_reference(data, channels)
    with_fast = decode_image(data, channels)
    monkeypatch.setattr(images, "pyspng", None)  # PIL only
    without = decode_image(data, channels)
    for arr in (with_fast, without):
        assert arr.dtype == np.uint8 and arr.flags.c_contiguous and arr.flags.writeable
        assert np.array_equal(arr, want)
    assert arr.shape[0] == (channels or (1 if kind in STORED_GRAY else 3))


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("channels", [None, 1, 3])
def test_libspng_decodes_exactly_the_pngs_it_matches_pil_on(kind, channels, monkeypatch):
    pyspng = pytest.importorskip("pyspng")
    calls = []

    def load(data, fmt):
        calls.append(fmt)
        return pyspng.load(data, fmt)

    monkeypatch.setattr(images, "pyspng", type("Spy", (), {"load": staticmethod(load)}))
    decode_image(encoded(kind), channels)
    assert bool(calls) == ((kind, channels) in FAST)


def test_a_png_libspng_refuses_goes_to_pil(monkeypatch):
    def refuse(data, fmt):
        raise RuntimeError("libspng says no")

    monkeypatch.setattr(images, "pyspng", type("Refuses", (), {"load": staticmethod(refuse)}))
    assert np.array_equal(decode_image(encoded("rgb")), RGB.transpose(2, 0, 1))


def test_unreadable_data_raises_pils_error():
    with pytest.raises(Exception, match="cannot identify image file"):
        decode_image(b"not an image at all, but long enough to look at its header")
    with pytest.raises(Exception):
        decode_image(encoded("rgb")[:60])  # truncated


def test_one_gray_or_rgb_rule_for_every_reader():
    assert [color_mode(m) for m in ("1", "L", "I", "I;16")] == ["L"] * 4
    assert [color_mode(m) for m in ("RGB", "RGBA", "P", "LA", "CMYK")] == ["RGB"] * 5
    assert color_mode("RGBA", 1) == "L" and color_mode("L", 3) == "RGB"
    # prepare's PIL image (before its crop and resize) holds the pixels every other reader decodes
    for kind in ("gray", "rgb", "palette", "jpeg_rgb"):
        data = encoded(kind)
        for channels in (1, 3):
            image = open_image(data)
            prepared = np.asarray(image.convert(color_mode(image.mode, channels)))
            assert np.array_equal(decode_image(data, channels),
                                  prepared[None] if prepared.ndim == 2 else prepared.transpose(2, 0, 1))
    idx_image = GRAY  # an idx/digits source hands prepare a decoded array
    assert np.array_equal(np.asarray(open_image(idx_image)), idx_image)


def test_stream_decode_is_decode_image_with_size_check_and_flip():
    img = RNG.integers(0, 256, (8, 8, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="PNG")
    data = buf.getvalue()
    assert np.array_equal(stream.decode({"png": data}, 8, 3), decode_image(data, 3))
    flipped = stream.decode({"png": data, "__flip__": True}, 8, 3)
    assert np.array_equal(flipped, decode_image(data, 3)[:, :, ::-1]) and flipped.flags.c_contiguous
    assert stream.decode({"png": data}, 16, 3) is None and stream.decode({"cls": b"1"}, 8, 3) is None
    assert stream.decode({"png": b"garbage"}, 8, 3) is None


def test_one_extension_list_for_folders_archives_and_shards(tmp_path):
    assert all(is_image_file(f"a/b{e}") and is_image_file(f"B{e.upper()}") for e in IMAGE_EXTS)
    assert not is_image_file("notes.txt") and not is_image_file("x/.hidden.png") and not is_image_file("png")
    assert images.IMAGE_KEYS[0] == "png" and len(images.IMAGE_KEYS) == len(IMAGE_EXTS)
    for name in ("b/2.jpg", "a/1.png", "c.gif", "d.PGM", "e.txt", ".f.png", "g/.h.jpg"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(encoded("gray"))
    listed = image_files(tmp_path)
    assert listed == ["a/1.png", "b/2.jpg", "c.gif", "d.PGM"]
    # prepare's folder source and FID's image set list the same files in the same order
    assert [ref for ref, _ in FolderSource(str(tmp_path)).list()] == listed
    assert imagesets.open_image_set(str(tmp_path)).urls == [str(tmp_path / f) for f in listed]


def test_shard_samples_pick_their_image_member_by_one_preference():
    assert images.image_member({"__key__": "k", "cls": b"1", "jpg": b"", "png": b""}) == "png"
    assert images.image_member({"tiff": b""}) == "tiff" and images.image_member({"json": b""}) is None


# ---- generator output -> pixels -----------------------------------------------------------------

def test_to_uint8_inverts_the_loaders_mapping_exactly():
    u = torch.arange(256, dtype=torch.uint8)
    assert torch.equal(to_uint8(u.float() / 127.5 - 1), u)  # StyleGAN's rule is round-half-up
    assert to_uint8(torch.tensor([-1.7, 1.7, 0.0])).tolist() == [0, 255, 128]


def test_to_uint8_rounds_half_up_of_x_plus_1_times_127_5():
    x = torch.linspace(-1, 1, 100_001, dtype=torch.float64)
    want = torch.floor((x + 1) * 127.5 + 0.5).clamp(0, 255).to(torch.uint8)
    got = to_uint8(x.float())
    # float32 moves only inputs within a few ulps of a half-way point, by one level
    assert (got.int() - want.int()).abs().max() <= 1 and (got != want).sum() <= 10
    assert to_uint8(torch.tensor([0.0])).tolist() == [128]  # (x + 1) * 127.5 = 127.5, a tie: rounded up
    assert to_uint8(torch.tensor([1.0, -1.0, float("inf"), -float("inf")])).tolist() == [255, 0, 255, 0]
    assert to_uint8(torch.zeros(2, dtype=torch.bfloat16)).tolist() == [128, 128]


def test_to_uint8_equals_the_old_grid_arithmetic_away_from_float32_ties():
    x = torch.rand(200_000, generator=torch.Generator().manual_seed(0)) * 2.2 - 1.1
    old = ((x.clamp(-1, 1) + 1) / 2).mul(255).add(0.5).clamp(0, 255).to(torch.uint8)  # torchvision's save_image
    assert torch.equal(to_uint8(x), old)


def test_grid_cells_are_to_uint8_of_each_image_and_save_png_round_trips(tmp_path):
    x = torch.rand(6, 1, 5, 4, generator=torch.Generator().manual_seed(1)) * 2 - 1
    grid = image_grid(x, nrow=2)
    assert grid.dtype == torch.uint8 and grid.shape == (3, 3 * 7 + 2, 2 * 6 + 2)
    assert torch.equal(grid, make_grid(to_uint8(x), nrow=2, padding=2))
    for i in range(6):
        r, c = divmod(i, 2)
        cell = grid[:, 2 + r * 7:2 + r * 7 + 5, 2 + c * 6:2 + c * 6 + 4]
        assert torch.equal(cell, to_uint8(x[i]).expand(3, -1, -1))  # gray repeated to RGB
    assert int(grid[:, :2].max()) == 0  # black padding
    save_png(grid, tmp_path / "g.png")
    assert np.array_equal(np.asarray(Image.open(tmp_path / "g.png")), grid.permute(1, 2, 0).numpy())
    save_png(to_uint8(x[0]), tmp_path / "one.png")
    one = Image.open(tmp_path / "one.png")
    assert one.mode == "L" and np.array_equal(np.asarray(one), to_uint8(x[0])[0].numpy())
