"""FID's Inception: the preprocessing against the reference rules (TF1 bilinear resize, gray
repeated, the scaling), the weights lookup and download, the formats, and the project's network
against the TorchScript FID Inception on real images.

Tests that need ../shared (real Inception weights, real images) skip when it is absent. None
downloads anything.
"""

from __future__ import annotations

import hashlib
import os
import time

import numpy as np
import pytest
import torch

from dcgan_dist.data.imagesets import iter_range, open_image_set
from dcgan_dist.metrics import inception
from dcgan_dist.metrics.evaluation import image_stats
from dcgan_dist.metrics.fid import FeatureStats, fid_from_stats
from dcgan_dist.metrics.inception import (InceptionWeightsError, detect_format, load_extractor, resize_tf1,
                                          resolve_weights, to_network_input)
from dcgan_dist.metrics.inception_net import FIDInceptionV3, from_torchscript_state

from conftest import SHARED

TS_WEIGHTS = SHARED / "data" / "fid_inception" / "default_1.pt"
FACES = SHARED / "data" / "faces" / "fairface_val_1-3000.tar"
APPLES = SHARED / "data" / "fruits360" / "apple.tar"
needs_shared = pytest.mark.skipif(not TS_WEIGHTS.is_file() or not FACES.is_file(),
                                  reason=f"needs the real Inception weights and images in {SHARED / 'data'} (absent)")

# ---- preprocessing ------------------------------------------------------------------------------

def _tf1_reference(img: np.ndarray, out: int) -> np.ndarray:
    """TensorFlow 1.x ResizeBilinear (align_corners=False) written out from its kernel."""
    h, w = img.shape
    sy, sx = np.float32(h) / np.float32(out), np.float32(w) / np.float32(out)
    res = np.zeros((out, out))
    for y in range(out):
        iy = np.float32(y) * sy
        y0 = int(np.floor(iy))
        y1, dy = min(y0 + 1, h - 1), iy - y0
        for x in range(out):
            ix = np.float32(x) * sx
            x0 = int(np.floor(ix))
            x1, dx = min(x0 + 1, w - 1), ix - x0
            top = img[y0, x0] + (img[y0, x1] - img[y0, x0]) * dx
            bottom = img[y1, x0] + (img[y1, x1] - img[y1, x0]) * dx
            res[y, x] = top + (bottom - top) * dy
    return res


def test_resize_is_tensorflow1_bilinear_not_half_pixel():
    img = np.random.default_rng(3).integers(0, 256, (13, 21)).astype(np.float64)
    mine = resize_tf1(torch.from_numpy(img).float()[None, None], 61)[0, 0].double().numpy()
    np.testing.assert_allclose(mine, _tf1_reference(img, 61), atol=2e-3)
    # pytorch-fid's half-pixel resize is a different function: the modes must not coincide.
    half = torch.nn.functional.interpolate(torch.from_numpy(img).float()[None, None], size=(61, 61),
                                           mode="bilinear", align_corners=False)[0, 0].double().numpy()
    assert np.abs(half - mine).max() > 1.0


def test_network_input_repeats_gray_and_scales_like_the_references():
    gray = torch.randint(0, 256, (2, 1, 299, 299), dtype=torch.uint8)
    x = to_network_input(gray)
    assert x.shape == (2, 3, 299, 299)
    assert torch.equal(x[:, 0], x[:, 2]) and torch.equal(x[:, 0], (gray[:, 0].float() - 128) / 128)
    y = to_network_input(gray, mode="pytorch-fid")
    assert torch.allclose(y[:, 1], gray[:, 0].float() / 255 * 2 - 1, atol=1e-6)
    # A list of differently sized images is one batch.
    assert to_network_input([gray[0, :, :40, :50], gray[1, :, :70, :30]]).shape == (2, 3, 299, 299)
    with pytest.raises(TypeError, match="to_uint8"):
        to_network_input(torch.zeros(1, 3, 8, 8))


def test_full_precision_switches_tf32_off_on_gpus_and_restores_it():
    flags = inception._precision_flags()
    before = [getattr(obj, attr) for obj, attr, _ in flags]
    with inception.full_fp32(torch.device("cuda")):  # only flips global flags: runs without a GPU
        assert [getattr(obj, attr) for obj, attr, _ in flags] == [value for _, _, value in flags]
    assert [getattr(obj, attr) for obj, attr, _ in flags] == before
    with inception.full_fp32(torch.device("cpu")):
        assert [getattr(obj, attr) for obj, attr, _ in flags] == before


# ---- weights: where they come from, which formats -----------------------------------------------

def test_weights_lookup_order_and_the_error_that_says_how(tmp_path, monkeypatch):
    explicit, from_env = tmp_path / "a.pth", tmp_path / "b.pth"
    explicit.write_bytes(b"x")
    from_env.write_bytes(b"y")
    monkeypatch.setenv("DCGAN_DIST_INCEPTION", str(from_env))
    assert resolve_weights(explicit) == explicit  # the flag / config key wins over the environment
    assert resolve_weights(None) == from_env
    monkeypatch.delenv("DCGAN_DIST_INCEPTION")
    monkeypatch.setenv("DCGAN_DIST_CACHE", str(tmp_path / "cache"))
    with pytest.raises(InceptionWeightsError) as e:
        resolve_weights(None, download=False)
    for way in ("--inception PATH", "eval.inception", "DCGAN_DIST_INCEPTION"):
        assert way in str(e.value)
    with pytest.raises(InceptionWeightsError, match="eval.inception=/no/such.pth: no such file"):
        resolve_weights("/no/such.pth", origin="eval.inception")


def test_download_is_sha256_checked_and_atomic(tmp_path, monkeypatch):
    # A file:// URL exercises the real download code without a network.
    monkeypatch.setenv("DCGAN_DIST_CACHE", str(tmp_path / "cache"))
    payload = tmp_path / "weights.pth"
    payload.write_bytes(os.urandom(3000))
    good = hashlib.sha256(payload.read_bytes()).hexdigest()
    with pytest.raises(InceptionWeightsError, match="sha256"):
        resolve_weights(None, url=payload.as_uri(), sha256="0" * 64)
    assert not any((tmp_path / "cache" / "inception").iterdir())  # no partial file left behind
    got = resolve_weights(None, url=payload.as_uri(), sha256=good)
    assert got.read_bytes() == payload.read_bytes() and got.parent == tmp_path / "cache" / "inception"
    payload.unlink()  # cached now: found again without fetching
    assert resolve_weights(None, url=payload.as_uri(), sha256=good) == got


def test_format_detection(tmp_path):
    legacy, modern, junk = tmp_path / "legacy.pth", tmp_path / "modern.pth", tmp_path / "junk.bin"
    torch.save({"a": torch.zeros(1)}, legacy, _use_new_zipfile_serialization=False)
    torch.save({"a": torch.zeros(1)}, modern)
    junk.write_bytes(b"not weights at all")
    assert detect_format(legacy) == "state_dict" and detect_format(modern) == "state_dict"
    with pytest.raises(InceptionWeightsError, match="neither a TorchScript archive"):
        detect_format(junk)
    with pytest.raises(InceptionWeightsError, match="does not hold the FID Inception"):
        load_extractor(modern)


# ---- the real network ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def real_images():
    """6 FairFace crops (224x224) and 2 Fruits-360 apples (100x100): two sizes through the resize."""
    faces = list(iter_range(open_image_set(str(FACES)), 0, 6))
    apples = list(iter_range(open_image_set(str(APPLES)), 0, 2)) if APPLES.is_file() else []
    return [torch.from_numpy(a) for a in faces + apples]


@pytest.fixture(scope="module")
def torchscript_features(real_images):
    ts = inception.load_torchscript(TS_WEIGHTS)
    with torch.inference_mode():
        return ts(to_network_input(real_images)), ts.state_dict()


@needs_shared
def test_own_inception_equals_the_torchscript_module_on_real_images(real_images, torchscript_features):
    expected, ts_state = torchscript_features
    net = FIDInceptionV3(with_fc=False)
    net.load_state_dict(from_torchscript_state(ts_state), strict=True)
    with torch.inference_mode():
        plain, logits = net.eval()(to_network_input(real_images))
    assert logits is None and plain.shape == (len(real_images), 2048)
    assert (plain - expected).abs().max() <= 1e-4
    # The extractor as used (BN folded into the convs, channels-last) gives the same features.
    extractor = load_extractor(TS_WEIGHTS)
    assert extractor.format == "torchscript" and not extractor.has_logits
    feats, _ = extractor(real_images)
    assert (feats - expected).abs().max() <= 1e-4
    assert expected.abs().max() > 1.0  # not a vacuous comparison of near-zero features


@needs_shared
def test_pytorch_fid_state_dict_format_gives_the_same_features_and_logits(tmp_path, real_images,
                                                                          torchscript_features):
    # pytorch-fid's file: a legacy-format torch.save of the pytorch-fid layout with a 1008-way fc.
    # Built here from the TorchScript tensors, so the only thing that differs is the format path.
    expected, ts_state = torchscript_features
    net = FIDInceptionV3(with_fc=True)
    state = from_torchscript_state(ts_state)
    state["fc.weight"] = torch.randn(1008, 2048, generator=torch.Generator().manual_seed(0)) * 0.05
    state["fc.bias"] = torch.full((1008,), 3.0)
    net.load_state_dict(state)
    path = tmp_path / "pt_inception-2015-12-05-6726825d.pth"
    torch.save(net.state_dict(), path, _use_new_zipfile_serialization=False)
    assert len(net.state_dict()) == 566  # as many entries as pytorch-fid's file
    extractor = load_extractor(path)
    assert extractor.format == "state_dict" and extractor.has_logits
    feats, logits = extractor(real_images)
    assert (feats - expected).abs().max() <= 1e-4
    # IS logits leave the fc bias out (original IS code, StyleGAN no_output_bias, torch-fidelity).
    torch.testing.assert_close(logits, expected @ state["fc.weight"].T, atol=1e-3, rtol=1e-4)


@needs_shared
def test_real_fid_halves_small_noise_large(capsys):
    # Two disjoint sets of 64 FairFace crops (one distribution), and 64 uniform-noise images. 64 is
    # far below 2048 (FID biased upwards) but keeps this under a minute on 2 CPU cores.
    n, batch = 64, 32
    extractor = load_extractor(TS_WEIGHTS)
    src = open_image_set(str(FACES))
    t0 = time.time()
    half_a = image_stats(None, src, num=n, batch=batch, extractor=extractor, progress=False)
    half_b = FeatureStats()
    images = [torch.from_numpy(a) for a in iter_range(src, n, 2 * n)]
    for lo in range(0, n, batch):
        half_b.add(extractor(images[lo:lo + batch])[0])
    noise = FeatureStats()
    gen = torch.Generator().manual_seed(0)
    for _ in range(n // batch):
        noise.add(extractor(torch.randint(0, 256, (batch, 3, 224, 224), dtype=torch.uint8, generator=gen))[0])
    mu_a, cov_a = half_a.mean_cov()
    fid_halves = fid_from_stats(half_b, mu_a, cov_a)
    fid_noise = fid_from_stats(noise, mu_a, cov_a)
    with capsys.disabled():
        print(f"\n[real FID, TorchScript weights, {n} vs {n} images] FairFace set A vs disjoint set B: "
              f"{fid_halves:.2f}; set A vs uniform noise: {fid_noise:.2f} "
              f"({3 * n / (time.time() - t0):.1f} img/s incl. decoding)")
    assert 0 < fid_halves < 0.4 * fid_noise
    assert fid_noise > 200
