"""FID / IS: the math against independent references, the sharding of the work, the
reference-statistics cache, and 2 processes through the real launcher against 1 (the Inception
network itself: tests/test_inception.py).

Nothing here needs ../shared or downloads anything. Run as a script (`accelerate launch ... tests/test_metrics.py OUT`), this file
is also the worker of the 2-process test.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import scipy.linalg
import torch

from dcgan_dist.data.imagesets import open_image_set
from dcgan_dist.metrics import evaluation, reference
from dcgan_dist.metrics.evaluation import image_stats, latents
from dcgan_dist.metrics.features import share
from dcgan_dist.metrics.reference import RefStats, reference_stats
from dcgan_dist.metrics.fid import FeatureStats, fid_from_stats, frechet_distance, inception_score

from conftest import REPO, env, in_process, launcher_cmd
from standins import Float64Extractor



def rel(a: float, b: float) -> float:
    return abs(a - b) / max(abs(b), 1e-300)


def scipy_fid(a: np.ndarray, b: np.ndarray) -> float:
    """The textbook formula with scipy's sqrtm, as pytorch-fid computes it."""
    s1, s2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    diff = a.mean(0) - b.mean(0)
    covmean = scipy.linalg.sqrtm(s1 @ s2)
    return float(diff @ diff + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean).real)


# ---- Frechet distance and the statistics ---------------------------------------------------------

def test_feature_stats_equal_numpy_mean_and_cov_whatever_the_batching():
    x = np.random.default_rng(0).standard_normal((300, 64)) * 3 + 1
    stats = FeatureStats(64)
    for lo, hi in ((0, 7), (7, 150), (150, 300)):  # uneven batches, as the last batch of a rank is
        stats.add(torch.from_numpy(x[lo:hi]))
    mu, cov = stats.mean_cov()
    assert stats.n == 300
    np.testing.assert_allclose(mu.numpy(), x.mean(0), rtol=0, atol=1e-13)
    np.testing.assert_allclose(cov.numpy(), np.cov(x, rowvar=False), rtol=0, atol=1e-12)


def test_fid_of_a_set_with_itself_is_zero():
    x = np.random.default_rng(1).standard_normal((500, 64))
    stats = FeatureStats(64)
    stats.add(torch.from_numpy(x))
    mu, cov = stats.mean_cov()
    assert abs(frechet_distance(mu, cov, mu, cov)) < 1e-9 * float(torch.trace(cov))


@pytest.mark.parametrize("n_a,n_b,shift", [(400, 300, 0.3), (50, 40, 0.0), (2000, 2000, 1.0)])
def test_fid_equals_scipy_sqrtm_reference_64d(n_a, n_b, shift):
    # Includes a rank-deficient case (fewer samples than dimensions), where sqrtm is fragile.
    rng = np.random.default_rng(n_a)
    a = rng.standard_normal((n_a, 64)) @ rng.standard_normal((64, 64))
    b = rng.standard_normal((n_b, 64)) * 1.5 + shift
    sa, sb = FeatureStats(64), FeatureStats(64)
    sa.add(torch.from_numpy(a))
    sb.add(torch.from_numpy(b))
    mine = frechet_distance(*sa.mean_cov(), *sb.mean_cov())
    assert rel(mine, scipy_fid(a, b)) <= 1e-6


def test_fid_2048d_equals_the_symmetric_eigh_route():
    # sqrtm at 2048 takes ~34 s here; tr sqrt(S1 S2) = tr sqrt(S1^1/2 S2 S1^1/2) (eigh) is an
    # independent route to the same number.
    rng = np.random.default_rng(2)
    a = torch.from_numpy(np.abs(rng.standard_normal((2500, 2048))))
    b = torch.from_numpy(np.abs(rng.standard_normal((2600, 2048))) * 1.1 + 0.05)
    sa, sb = FeatureStats(), FeatureStats()
    sa.add(a)
    sb.add(b)
    (mu1, s1), (mu2, s2) = sa.mean_cov(), sb.mean_cov()
    w, v = torch.linalg.eigh(s1)
    root = (v * w.clamp(min=0).sqrt()) @ v.T
    inner = torch.linalg.eigvalsh(root @ s2 @ root).clamp(min=0).sqrt().sum()
    expected = float((mu1 - mu2) @ (mu1 - mu2) + s1.trace() + s2.trace() - 2 * inner)
    assert rel(frechet_distance(mu1, s1, mu2, s2), expected) <= 1e-6


def test_fid_below_2048_samples_warns(caplog):
    stats = FeatureStats(8)
    stats.add(torch.randn(100, 8))
    with caplog.at_level(logging.WARNING, logger="dcgan_dist.metrics"):
        fid_from_stats(stats, *stats.mean_cov())
    assert "100 samples (< 2048)" in caplog.text


def test_one_flat_buffer_round_trips_every_statistic():
    a = FeatureStats(16, num_classes=5, total=30)
    a.add(torch.randn(30, 16), torch.randn(30, 5))
    b = FeatureStats(16, num_classes=5, total=30)
    b.load_flat(a.flat())
    assert torch.equal(a.flat(), b.flat()) and a.flat().dtype == torch.float64
    # The buffer's size is fixed by the dimensions, not by the number of samples.
    assert a.flat().numel() == 1 + 16 + 16 * 16 + 10 * (5 + 2)


def test_features_are_kept_only_when_asked_and_never_reduced():
    """FID alone keeps nothing per sample; with keep_features the rank's features, float32, in order."""
    batches = [torch.randn(n, 16, dtype=torch.float64) for n in (5, 0, 7)]
    plain, keeping = FeatureStats(16), FeatureStats(16, keep_features=True)
    for x in batches:
        plain.add(x)
        keeping.add(x)
    assert plain._kept is None
    with pytest.raises(ValueError, match="keep_features"):
        plain.features()
    kept = keeping.features()
    assert kept.dtype == torch.float32 and torch.equal(kept, torch.cat(batches).float())
    assert torch.equal(keeping.flat(), plain.flat())  # the FID statistics are the same either way
    assert FeatureStats(16, keep_features=True).features().shape == (0, 16)  # a rank with no samples


# ---- Inception Score ----------------------------------------------------------------------------

def test_inception_score_balanced_soft_classifier_equals_closed_form():
    # Sample x is of class x % C with p(own class) = q, the rest spread evenly. Every split holds
    # every class equally often, so p(y) is uniform and IS = exp(q log(qC) + (1-q) log((1-q)C/(C-1))).
    C, q, n = 20, 0.7, 400
    p = torch.full((n, C), (1 - q) / (C - 1), dtype=torch.float64)
    p[torch.arange(n), torch.arange(n) % C] = q
    stats = FeatureStats(4, num_classes=C, total=n)
    for lo in range(0, n, 64):
        stats.add(torch.zeros(min(64, n - lo), 4), p[lo:lo + 64].log(), first_index=lo)
    mean, std = inception_score(stats)
    expected = np.exp(q * np.log(q * C) + (1 - q) * np.log((1 - q) * C / (C - 1)))
    assert mean == pytest.approx(expected, rel=1e-12) and std == pytest.approx(0, abs=1e-9)


def test_inception_score_per_split_confident_classifier_equals_class_entropy():
    # A one-hot classifier has H(y|x) = 0, so each split's score is exp(H(p(y))) of its label
    # histogram. Split s (samples 10s..10s+9) cycles through s + 1 labels: split 0 scores exactly
    # 1, split 9 exactly 10. Zero probabilities (logit -1e4) must not turn into NaN.
    n, C = 100, 1008
    labels = torch.tensor([(i % 10) % (i // 10 + 1) for i in range(n)])
    logits = torch.full((n, C), -1e4, dtype=torch.float64)
    logits[torch.arange(n), labels] = 0.0
    stats = FeatureStats(4, num_classes=C, total=n)
    for lo in range(0, n, 16):  # batches that straddle the split boundaries
        stats.add(torch.zeros(min(16, n - lo), 4), logits[lo:lo + 16], first_index=lo)
    expected = []
    for s in range(10):
        p_y = np.bincount(labels[10 * s:10 * s + 10].numpy()) / 10
        p_y = p_y[p_y > 0]
        expected.append(np.exp(-(p_y * np.log(p_y)).sum()))
    assert expected[0] == pytest.approx(1.0) and expected[9] == pytest.approx(10.0)
    mean, std = inception_score(stats)
    assert mean == pytest.approx(np.mean(expected), rel=1e-12)
    assert std == pytest.approx(np.std(expected), rel=1e-9)


def test_inception_score_needs_a_sample_in_every_split():
    stats = FeatureStats(4, num_classes=8, total=5)
    stats.add(torch.zeros(5, 4), torch.randn(5, 8))
    with pytest.raises(ValueError, match="at least 10 samples"):
        inception_score(stats)


def test_inception_score_without_logits_is_a_clear_error():
    stats = FeatureStats(4)
    stats.add(torch.randn(20, 4))
    with pytest.raises(ValueError, match="no classifier.*pt_inception-2015-12-05-6726825d.pth"):
        inception_score(stats)


# ---- sharding of the work -----------------------------------------------------------------------

@pytest.mark.parametrize("total,world", [(37, 2), (10_000, 3), (5, 8)])
def test_rank_ranges_cover_every_sample_once(total, world):
    ranges = [share(total, r, world) for r in range(world)]
    covered = [i for lo, hi in ranges for i in range(lo, hi)]
    assert covered == list(range(total))
    assert max(hi - lo for lo, hi in ranges) - min(hi - lo for lo, hi in ranges) <= 1


def test_latents_are_a_function_of_seed_and_index_only():
    whole = latents(7, 0, 10, 16)
    assert torch.equal(whole, torch.cat([latents(7, 0, 3, 16), latents(7, 3, 10, 16)]))
    assert not torch.equal(whole, latents(8, 0, 10, 16))
    # Not the fixed sample-grid noise of the same seed (torch.Generator().manual_seed(seed)).
    assert not torch.equal(whole[0], torch.randn(1, 16, generator=torch.Generator().manual_seed(7))[0])


# ---- the reference-statistics cache -------------------------------------------------------------

def test_reference_stats_cached_by_content_and_count(tmp_path, caplog):
    extractor = Float64Extractor()
    src = open_image_set("embedded:digits", 32, 1)
    first = reference_stats(None, src, num=50, extractor=extractor, cache_dir=tmp_path, progress=False)
    assert not first.cached and first.path.is_file() and extractor.seen == 50
    assert first.key["content_sha256"] == src.index.content_sha256 and first.key["num"] == 50
    again = reference_stats(None, src, num=50, extractor=extractor, cache_dir=tmp_path, progress=False)
    assert again.cached and extractor.seen == 50  # read from disk, nothing recomputed
    assert torch.equal(again.mu, first.mu) and torch.equal(again.sigma, first.sigma)
    other = reference_stats(None, src, num=60, extractor=extractor, cache_dir=tmp_path, progress=False)
    assert not other.cached and other.path != first.path  # the sample count is part of the key
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []  # no temp files
    first.path.write_bytes(b"truncated")  # a corrupt cache entry is recomputed, not trusted
    with caplog.at_level(logging.WARNING, logger="dcgan_dist.metrics"):
        fixed = reference_stats(None, src, num=50, extractor=extractor, cache_dir=tmp_path, progress=False)
    assert not fixed.cached and torch.allclose(fixed.mu, first.mu, rtol=0, atol=1e-12)


def test_stats_files_are_pytorch_fid_compatible(tmp_path):
    mu, sigma = torch.rand(2048, dtype=torch.float64), torch.eye(2048, dtype=torch.float64)
    np.savez(tmp_path / "theirs.npz", mu=mu.numpy(), sigma=sigma.numpy())  # pytorch-fid --save-stats
    loaded = reference.load_stats(tmp_path / "theirs.npz")
    assert isinstance(loaded, RefStats) and torch.equal(loaded.mu, mu) and torch.equal(loaded.sigma, sigma)


# ---- 2 processes through the real launcher ------------------------------------------------------

def _worker(out: str):
    """Run by `accelerate launch` (2 ranks) and in the test's process (1 rank): the same statistics.
    Returns the accelerator, for the launched script to end its process group with."""
    from accelerate import Accelerator
    from accelerate.utils import gather_object

    from dcgan_dist.models import Generator

    # bf16: the prepared G's forward is wrapped in autocast, which the evaluation must bypass.
    acc = Accelerator(cpu=True, mixed_precision="bf16")
    assert acc.num_processes == int(os.environ.get("WORLD_SIZE", "1")), "the launcher did not form one group"
    torch.manual_seed(0)
    G = Generator(32, 1, 16, 8)
    for m in G.modules():  # weights large enough that the images span 0..255: at Radford's init
        if isinstance(m, torch.nn.ConvTranspose2d):  # scale they are ~128 everywhere and quantisation
            torch.nn.init.normal_(m.weight, 0.0, 0.3)  # would hide every difference tested below
    G_plain = Generator(32, 1, 16, 8)
    G_plain.load_state_dict(G.state_dict())
    G_plain.main[1].running_mean += 0.5  # rank zero's BatchNorm statistics after some training
    G.main[1].running_mean += 0.5
    G = acc.prepare(G)  # DDP on 2 ranks (it broadcasts rank zero's buffers once, here)
    bn = acc.unwrap_model(G).main[1]
    if acc.process_index == 1:
        bn.running_mean += 1.0  # this rank's statistics drifted: DDP does not broadcast buffers in training
    own = bn.running_mean.clone()
    extractor = Float64Extractor()
    gen = evaluation.generator_stats(acc, G, num=37, batch=8, z_dim=16, seed=3, extractor=extractor,
                                     with_is=True, progress=False)
    restored = torch.equal(bn.running_mean, own)
    seen_gen = extractor.seen
    plain = evaluation.generator_stats(None, G_plain, num=37, batch=8, z_dim=16, seed=3, extractor=Float64Extractor(),
                                       with_is=True, progress=False) if acc.is_main_process else None
    src = open_image_set("embedded:digits", 32, 1)
    real = image_stats(acc, src, num=101, batch=16, extractor=extractor, with_is=True, progress=False)
    seen_real = extractor.seen - seen_gen
    cache = Path(out) / f"cache_w{acc.num_processes}"  # each world size computes its own, then hits it
    ref = reference_stats(acc, src, num=90, extractor=extractor, cache_dir=cache, progress=False)
    ref_again = reference_stats(acc, src, num=90, extractor=extractor, cache_dir=cache, progress=False)
    result = evaluation.evaluate_generator(acc, G, num=37, batch=8, z_dim=16, seed=3, extractor=extractor,
                                           ref_stats=ref_again, progress=False)
    per_rank = gather_object([{"seen_gen": seen_gen, "seen_real": seen_real, "cached": [ref.cached, ref_again.cached],
                               "result": result, "restored": restored}])
    if acc.is_main_process:
        torch.save({"world": acc.num_processes, "gen": gen.flat(), "real": real.flat(), "per_rank": per_rank,
                    "ref_mu": ref.mu, "plain": plain.flat()}, Path(out) / f"stats_w{acc.num_processes}.pt")
    acc.wait_for_everyone()
    return acc


@pytest.mark.slow
def test_two_processes_compute_the_statistics_of_one(tmp_path):
    from dcgan_dist.data.locate import embedded_shards

    embedded_shards("digits", 32, 1)  # written once here, not raced by the ranks
    with in_process():  # world size 1: this process
        _worker(str(tmp_path))
    cmd = launcher_cmd([str(Path(__file__).resolve()), str(tmp_path)])
    proc = subprocess.run(cmd, cwd=REPO, env=env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"world size 2 failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
    one, two = (torch.load(tmp_path / f"stats_w{w}.pt", weights_only=False) for w in (1, 2))
    assert one["world"] == 1 and two["world"] == 2
    # Each rank did its own contiguous share; exactly N in total although 37 and 101 are odd.
    assert [r["seen_gen"] for r in two["per_rank"]] == [18, 19]
    assert [r["seen_real"] for r in two["per_rank"]] == [50, 51]
    for key in ("gen", "real"):
        a, b = one[key], two[key]
        assert a.dtype == torch.float64 and a[0] == (37 if key == "gen" else 101)
        assert (a - b).abs().max() <= 1e-12 * a.abs().max()
    # G was evaluated as a plain fp32 module with rank zero's BatchNorm statistics, on every rank,
    # and each rank got its own statistics back afterwards.
    for run in (one, two):
        assert (run["gen"] - run["plain"]).abs().max() <= 1e-12 * run["plain"].abs().max()
    assert all(r["restored"] for r in two["per_rank"])
    # Rank zero decided the cache hit for both ranks; every rank returned the same numbers.
    assert [r["cached"] for r in two["per_rank"]] == [[False, True], [False, True]]
    r1, r2 = (r["result"] for r in two["per_rank"])
    assert [p.name for p in (tmp_path / "cache_w1").iterdir()] == [p.name for p in (tmp_path / "cache_w2").iterdir()]
    assert torch.allclose(one["ref_mu"], two["ref_mu"], rtol=0, atol=1e-12)
    assert r1["fid"] == r2["fid"] and r1["is_mean"] == r2["is_mean"]
    assert rel(r1["fid"], one["per_rank"][0]["result"]["fid"]) <= 1e-9
    assert rel(r1["is_mean"], one["per_rank"][0]["result"]["is_mean"]) <= 1e-12


if __name__ == "__main__":
    from dcgan_dist.runtime import shutdown

    # Leaving without ending the gloo group sometimes aborts a rank at interpreter exit.
    shutdown(_worker(sys.argv[1]))
