"""`python -m dcgan_dist.sample` in-process on tiny hand-made checkpoints (32x32 gray, z_dim 16, width 8):
pixels equal the generator's own output, layouts, the progress GIF, and exit-2 errors."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageSequence
from safetensors.torch import save_file

from dcgan_dist import checkpoint, config, models
from dcgan_dist.data.images import to_uint8
from dcgan_dist.metrics.evaluation import latents
from dcgan_dist.sample import main, slerp

SEED = 7  # not the default 0: --seed must default to the run's
CELL = 32 + 2  # a grid cell: the image plus make_grid's 2-pixel padding


def make_run(root: Path, num_classes: int = 0) -> tuple[Path, models.Generator]:
    """RUN/checkpoints/000001.000/{meta.json,generator.safetensors} as the trainer lays them out."""
    cfg = config.load(None, ["model.resolution=32", "model.channels=1", "model.z_dim=16", "model.g_width=8",
                             "model.d_width=8", f"model.num_classes={num_classes}", f"seed={SEED}"])
    torch.manual_seed(num_classes)
    G = models.Generator(32, 1, z_dim=16, width=8, num_classes=num_classes)
    with torch.no_grad():  # DCGAN init gives near-constant gray images: spread them so comparisons mean something
        for p in G.parameters():
            p.normal_(0, 0.3)
        for m in G.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.normal_(0, 0.2)
                m.running_var.uniform_(0.5, 2.0)
    G.eval()
    ckpt = root / "run" / checkpoint.CKPT_DIR / checkpoint.name_for(1000)
    ckpt.mkdir(parents=True)
    save_file({k: v.contiguous() for k, v in G.state_dict().items()}, str(ckpt / checkpoint.GENERATOR))
    m = cfg.model
    meta = {"format": checkpoint.FORMAT, "nimg": 1000, "kimg": 1.0, "step": 10,
            "arch": models.arch_signature(m),
            "config": config.to_dict(cfg)}
    (ckpt / checkpoint.META).write_text(json.dumps(meta))
    return root / "run", G


@pytest.fixture
def uncond(tmp_path):
    return make_run(tmp_path / "u")


@pytest.fixture
def cond(tmp_path):
    return make_run(tmp_path / "c", num_classes=3)


@torch.no_grad()
def expected(G, z: torch.Tensor, label: int | None = None) -> np.ndarray:
    """G's image(s) as the PNGs store them: uint8 (N, 32, 32) of the single channel."""
    labels = None if label is None else torch.full((len(z),), label, dtype=torch.long)
    return to_uint8(G(z, labels))[:, 0].numpy()


def load(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path)).astype(np.int16)


def close(a: np.ndarray, b: np.ndarray) -> bool:
    return int(np.abs(a.astype(np.int16) - b.astype(np.int16)).max()) <= 1


def cell(grid: np.ndarray, row: int, col: int) -> np.ndarray:
    """Image (row, col) of a make_grid PNG (RGB; gray replicated), channel 0."""
    y, x = 2 + row * CELL, 2 + col * CELL
    return grid[y:y + 32, x:x + 32, 0]


def run_main(args: list[str], capsys) -> tuple[int, str, str]:
    rc = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return rc, out, err


def test_num_images_are_the_generators_output_whatever_the_batch(uncond, tmp_path, capsys):
    run, G = uncond
    rc, out, _ = run_main([run, "--num", 5, "--out", tmp_path / "a", "--batch", 2, "--no-progress"], capsys)
    assert rc == 0 and f"seed {SEED}" in out and "wrote 5 images" in out
    files = sorted(p.name for p in (tmp_path / "a").iterdir())
    assert files == [f"{i:06d}.png" for i in range(5)]  # no labels.csv: unconditional
    for i in range(5):
        img = Image.open(tmp_path / "a" / f"{i:06d}.png")
        assert img.size == (32, 32) and img.mode == "L"
        assert close(np.asarray(img), expected(G, latents(SEED, i, i + 1, 16))[0])
    assert len({load(tmp_path / "a" / f).tobytes() for f in files}) == 5
    # another batch size and a shorter --num: the same first images
    assert main([str(run), "--num", "3", "--out", str(tmp_path / "b"), "--batch", "3", "--no-progress"]) == 0
    for i in range(3):
        assert close(load(tmp_path / "a" / f"{i:06d}.png"), load(tmp_path / "b" / f"{i:06d}.png"))
    # an explicit --seed changes them
    assert main([str(run), "--num", "1", "--out", str(tmp_path / "c"), "--seed", "8", "--no-progress"]) == 0
    assert close(load(tmp_path / "c" / "000000.png"), expected(G, latents(8, 0, 1, 16))[0])
    assert not close(load(tmp_path / "c" / "000000.png"), load(tmp_path / "a" / "000000.png"))


def test_run_dir_means_its_newest_checkpoint_and_best_is_accepted(uncond, tmp_path, capsys):
    run, G = uncond
    old = run / "checkpoints" / "000001.000"
    newer, best = run / "checkpoints" / "000002.000", run / "checkpoints" / "best"
    shutil.copytree(old, newer)
    shutil.copytree(old, best)
    with torch.no_grad():
        G.main[-2].weight.neg_()  # the last conv: other images
    save_file({k: v.contiguous() for k, v in G.state_dict().items()}, str(newer / checkpoint.GENERATOR))
    rc, out, _ = run_main([run, "--num", 1, "--out", tmp_path / "a"], capsys)
    assert rc == 0 and str(newer / checkpoint.GENERATOR) in out
    assert close(load(tmp_path / "a" / "000000.png"), expected(G, latents(SEED, 0, 1, 16))[0])
    rc, out, _ = run_main([best, "--num", 1, "--out", tmp_path / "b"], capsys)
    assert rc == 0 and str(best / checkpoint.GENERATOR) in out
    assert not close(load(tmp_path / "b" / "000000.png"), load(tmp_path / "a" / "000000.png"))


def test_conditional_num_records_each_class(cond, tmp_path, capsys):
    run, G = cond
    rc, out, _ = run_main([run, "--num", 5, "--out", tmp_path / "a", "--no-progress"], capsys)
    assert rc == 0 and "labels.csv" in out
    rows = (tmp_path / "a" / "labels.csv").read_text().splitlines()
    assert rows == ["file,class"] + [f"{i:06d}.png,{i % 3}" for i in range(5)]
    for i in range(5):
        assert close(load(tmp_path / "a" / f"{i:06d}.png"), expected(G, latents(SEED, i, i + 1, 16), i % 3)[0])
    assert main([str(run), "--num", "2", "--out", str(tmp_path / "b"), "--class", "2", "--no-progress"]) == 0
    assert (tmp_path / "b" / "labels.csv").read_text().splitlines()[1:] == ["000000.png,2", "000001.png,2"]
    assert close(load(tmp_path / "b" / "000001.png"), expected(G, latents(SEED, 1, 2, 16), 2)[0])


def test_grid_unconditional_is_square_ish(uncond, tmp_path, capsys):
    run, G = uncond
    rc, out, _ = run_main([run, "--grid", tmp_path / "g.png", "--grid-size", 6], capsys)
    assert rc == 0 and "6 images" in out
    grid = load(tmp_path / "g.png")
    assert grid.shape == (3 * CELL + 2, 2 * CELL + 2, 3)  # nrow = floor(sqrt(6)) = 2 columns, as the trainer's
    want = expected(G, latents(SEED, 0, 6, 16))
    assert main([str(run), "--num", "6", "--out", str(tmp_path / "n"), "--batch", "6", "--no-progress"]) == 0
    for i in range(6):
        assert close(cell(grid, i // 2, i % 2), want[i])
        # grid image i == --num image i, pixel for pixel: one conversion (data.images.to_uint8) for both
        assert np.array_equal(cell(grid, i // 2, i % 2), load(tmp_path / "n" / f"{i:06d}.png"))


def test_conditional_grid_has_one_row_per_class(cond, tmp_path, capsys):
    run, G = cond
    rc, out, _ = run_main([run, "--grid", tmp_path / "g.png", "--per-class", 4], capsys)
    assert rc == 0 and "3 class rows" in out
    grid = load(tmp_path / "g.png")
    assert grid.shape == (3 * CELL + 2, 4 * CELL + 2, 3)
    z = latents(SEED, 0, 4, 16)
    for r in range(3):
        want = expected(G, z, r)
        for j in range(4):
            assert close(cell(grid, r, j), want[j])
    assert not close(cell(grid, 0, 0), cell(grid, 1, 0))  # same latent, another class
    # --class K: --grid-size images of that class
    assert main([str(run), "--grid", str(tmp_path / "k.png"), "--grid-size", "4", "--class", "1"]) == 0
    k = load(tmp_path / "k.png")
    assert k.shape == (2 * CELL + 2, 2 * CELL + 2, 3)
    assert close(cell(k, 1, 1), expected(G, latents(SEED, 3, 4, 16), 1)[0])


def test_interpolation_walks_between_two_latents(uncond, tmp_path, capsys):
    run, G = uncond
    rc, out, _ = run_main([run, "--interp", tmp_path / "i.png", "--steps", 5, "--pairs", 2], capsys)
    assert rc == 0 and "2 rows x 5 steps" in out
    grid = load(tmp_path / "i.png")
    assert grid.shape == (2 * CELL + 2, 5 * CELL + 2, 3)
    ends = expected(G, latents(SEED, 0, 4, 16))
    for p in range(2):
        start, end, mid = cell(grid, p, 0), cell(grid, p, 4), cell(grid, p, 2)
        assert close(start, ends[2 * p]) and close(end, ends[2 * p + 1])
        assert np.abs(mid - start).mean() > 2 and np.abs(mid - end).mean() > 2


def test_conditional_interpolation_keeps_the_class(cond, tmp_path, capsys):
    run, G = cond
    assert main([str(run), "--interp", str(tmp_path / "i.png"), "--steps", "3", "--pairs", "2", "--class", "2"]) == 0
    grid = load(tmp_path / "i.png")
    ends = latents(SEED, 0, 4, 16)
    assert close(cell(grid, 1, 0), expected(G, ends[2:3], 2)[0])
    assert close(cell(grid, 1, 2), expected(G, ends[3:4], 2)[0])
    assert main([str(run), "--interp", str(tmp_path / "r.png"), "--steps", "3", "--pairs", "2"]) == 0
    assert close(cell(load(tmp_path / "r.png"), 1, 0), expected(G, ends[2:3], 1)[0])  # row p: class p mod 3


def test_slerp_stays_on_the_sphere():
    a, b = torch.randn(16), torch.randn(16)
    b = b * a.norm() / b.norm()
    path = slerp(a, b, torch.linspace(0, 1, 7))
    assert torch.equal(path[0], a) and torch.allclose(path[-1], b)
    assert torch.allclose(path.norm(dim=1), a.norm().expand(7), rtol=1e-5)
    assert torch.allclose(slerp(a, a, torch.linspace(0, 1, 3)), a.expand(3, 16))  # degenerate: no NaN


COLOURS = {"000002.000": (0, 0, 255), "000000.500": (255, 0, 0), "000010.000": (0, 255, 0)}


def test_gif_animates_the_fakes_in_kimg_order(uncond, tmp_path, capsys):
    run, _ = uncond
    (run / "samples").mkdir()
    for kimg, rgb in COLOURS.items():
        Image.new("RGB", (70, 70), rgb).save(run / "samples" / f"fakes_{kimg}.png")
    Image.new("RGB", (70, 70)).save(run / "samples" / "reals.png")  # not a frame
    for target in (run, run / "checkpoints" / "000001.000"):  # the run dir, or a checkpoint inside it
        rc, out, _ = run_main([target, "--gif", tmp_path / "p.gif", "--fps", 5], capsys)
        assert rc == 0 and "3 frames" in out
        gif = Image.open(tmp_path / "p.gif")
        frames = [f.convert("RGB") for f in ImageSequence.Iterator(gif)]
        assert len(frames) == 3 and gif.info["duration"] == 200
        assert [f.getpixel((65, 65)) for f in frames] == [(255, 0, 0), (0, 0, 255), (0, 255, 0)]  # 0.5, 2, 10
        assert all(f.getpixel((1, 1)) == (0, 0, 0) for f in frames)  # the caption's box


def test_gif_without_fakes_is_a_clear_error(uncond, tmp_path, capsys):
    run, _ = uncond
    rc, _, err = run_main([run, "--gif", tmp_path / "p.gif"], capsys)
    assert rc == 2 and "fakes_" in err and str(run / "samples") in err and "Traceback" not in err


def test_missing_checkpoint_names_the_path(tmp_path, capsys):
    rc, _, err = run_main([tmp_path / "nowhere", "--grid", tmp_path / "g.png"], capsys)
    assert rc == 2 and str(tmp_path / "nowhere") in err and "Traceback" not in err


def test_class_on_an_unconditional_generator_or_out_of_range(uncond, cond, tmp_path, capsys):
    rc, _, err = run_main([uncond[0], "--grid", tmp_path / "g.png", "--class", 5], capsys)
    assert rc == 2 and "--class 5" in err and "unconditional" in err
    rc, _, err = run_main([cond[0], "--num", 1, "--out", tmp_path / "o", "--class", 3], capsys)
    assert rc == 2 and "--class 3" in err and "0 .. 2" in err
    assert not (tmp_path / "g.png").exists() and not (tmp_path / "o").exists()


@pytest.mark.parametrize("damage", ["garbage", "truncated", "missing"])
def test_damaged_generator_weights(uncond, tmp_path, capsys, damage):
    run, _ = uncond
    weights = run / "checkpoints" / "000001.000" / checkpoint.GENERATOR
    if damage == "garbage":
        weights.write_bytes(b"\x00not safetensors" * 8)
    elif damage == "truncated":
        weights.write_bytes(weights.read_bytes()[:-100])
    else:
        weights.unlink()
    rc, _, err = run_main([run, "--grid", tmp_path / "g.png"], capsys)
    assert rc == 2 and "generator.safetensors" in err and "Traceback" not in err


def test_nothing_to_write_is_a_usage_error(uncond, capsys):
    with pytest.raises(SystemExit) as e:
        main([str(uncond[0])])
    assert e.value.code == 2 and "--num" in capsys.readouterr().err
