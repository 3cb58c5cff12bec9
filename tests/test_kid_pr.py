"""KID and improved precision/recall: closed forms, a loop-based reference, batching invariance, the
collective feature gather, torchmetrics' KID (when importable) and 2 processes through the real
launcher against 1: the functions, the reference-feature cache and the evaluate CLI."""

from __future__ import annotations

import json
import logging
import math
import os
import runpy
import subprocess

import numpy as np
import pytest
import torch

from dcgan_dist.metrics.features import all_reduce_sum, check_features, gather_features, local_rows, share
from dcgan_dist.metrics.kid import (KID_REPORT_SCALE, KIDResult, kid, kid_subset_size, kid_subsets, kid_x1e3,
                                    mmd2_unbiased, polynomial_kernel)
from dcgan_dist.metrics.precision_recall import (PRResult, count_inside, knn_sq_radii, precision_recall,
                                                 sq_distances, sq_norms)

import standins
from conftest import REPO, TINY, env, evaluate_inproc, launcher_cmd, read_json, run_main, train_inproc


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ---- KID: references ------------------------------------------------------------------------------

def _k_loop(a, b) -> float:
    d = len(a)
    return (sum(float(ai) * float(bi) for ai, bi in zip(a, b)) / d + 1.0) ** 3


def _mmd2_loop(x: np.ndarray, y: np.ndarray) -> float:
    """The unbiased MMD^2 estimator, term by term, in Python floats (float64)."""
    n, m = len(x), len(y)
    xx = sum(_k_loop(x[i], x[j]) for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
    yy = sum(_k_loop(y[i], y[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    xy = sum(_k_loop(x[i], y[j]) for i in range(n) for j in range(m)) / (n * m)
    return xx + yy - 2 * xy


def _gaussian_mmd2(d: int, s: float) -> float:
    """Population MMD^2 under k(x, y) = (x.y / d + 1)^3 of N(0, I_d) against N(mu, I_d), |mu|^2 = s.

    With u = x.y for independent Gaussians of means a, b and identity covariance: E u = a.b,
    E u^2 = d + |a|^2 + |b|^2 + (a.b)^2, E u^3 = (a.b)^3 + 3 (a.b)(|a|^2 + |b|^2) + 3 (d + 2) a.b,
    and E k = 1 + 3 E u / d + 3 E u^2 / d^2 + E u^3 / d^3. Then E k(x, x') = 1 + 3 / d, E k(y, y')
    = 1 + 3s/d + 3(d + 2s + s^2)/d^2 + (s^3 + 6 s^2 + 3(d + 2) s)/d^3, E k(x, y) = 1 + 3(d + s)/d^2.
    """
    return 3 * s / d + 3 * s ** 2 / d ** 2 + (s ** 3 + 6 * s ** 2 + 3 * (d + 2) * s) / d ** 3


@pytest.mark.parametrize("n,m,d", [(7, 9, 5), (6, 6, 3), (2, 2, 4)])
def test_mmd2_equals_the_term_by_term_loop_to_1e10(n, m, d):
    g = _gen(n * 100 + m)
    x = torch.randn(n, d, generator=g, dtype=torch.float64) + 0.3
    y = torch.rand(m, d, generator=g, dtype=torch.float64) * 2
    ours = mmd2_unbiased(x, y)
    assert ours.dtype == torch.float64
    assert abs(ours.item() - _mmd2_loop(x.numpy(), y.numpy())) <= 1e-10 * max(1.0, abs(ours.item()))
    # float32 inputs are computed in float64: the same to rounding of the inputs only
    assert mmd2_unbiased(x.float(), y.float()).item() == pytest.approx(
        _mmd2_loop(x.float().double().numpy(), y.float().double().numpy()), abs=1e-10)


def test_kid_per_subset_values_equal_the_loop_on_the_drawn_subsets():
    g = _gen(3)
    real = torch.randn(40, 6, generator=g).relu()
    fake = (torch.randn(30, 6, generator=g) + 0.4).relu()
    res = kid(real, fake, num_subsets=5, subset_size=12, seed=9)
    real_idx, fake_idx = kid_subsets(40, 30, num_subsets=5, subset_size=12, seed=9)
    assert real_idx.shape == fake_idx.shape == (5, 12)
    for s in range(5):
        assert len(set(real_idx[s])) == 12 and len(set(fake_idx[s])) == 12  # without replacement
        ref = _mmd2_loop(fake[fake_idx[s]].double().numpy(), real[real_idx[s]].double().numpy())
        assert res.values[s] == pytest.approx(ref, abs=1e-10)
    assert res.mean == pytest.approx(float(np.mean(res.values)), abs=1e-15)
    assert res.std == pytest.approx(float(np.std(res.values)), abs=1e-15)  # population std, as torch-fidelity
    assert (res.num_subsets, res.subset_size, res.num_real, res.num_fake) == (5, 12, 40, 30)


def test_mmd2_of_point_masses_is_the_kernel_closed_form():
    """Every real sample a, every generated one b: MMD^2_u = k(a, a) + k(b, b) - 2 k(a, b) exactly."""
    a, b = torch.tensor([1.0, 2.0, 0.0, 0.5]), torch.tensor([0.0, 1.0, 1.0, 0.5])
    def k(u, v):
        return (float(u @ v) / 4 + 1) ** 3

    x, y = a.repeat(10, 1), b.repeat(7, 1)
    assert mmd2_unbiased(x, y).item() == pytest.approx(k(a, a) + k(b, b) - 2 * k(a, b), rel=1e-14)
    assert mmd2_unbiased(x, a.repeat(5, 1)).item() == 0.0


def test_polynomial_kernel_is_cubic_in_the_scaled_dot_product():
    x, y = torch.tensor([[1.0, 2.0]], dtype=torch.float64), torch.tensor([[3.0, -1.0], [0.0, 0.0]], dtype=torch.float64)
    assert polynomial_kernel(x, y).tolist() == [[(1 / 2 + 1) ** 3, 1.0]]


def test_kid_of_two_draws_of_one_distribution_is_zero_within_its_spread():
    g = _gen(5)
    real, fake = torch.randn(2000, 32, generator=g).relu(), torch.randn(2000, 32, generator=g).relu()
    res = kid(real, fake, num_subsets=30, subset_size=400, seed=1)
    assert res.std > 0
    assert abs(res.mean) < 3 * res.std
    assert min(res.values) < 0 < max(res.values)  # unbiased: single subsets go negative


@pytest.mark.parametrize("delta", [0.0, 0.125, 0.25, 0.5])
def test_kid_of_shifted_gaussians_matches_the_population_closed_form(delta):
    """Full-set unbiased MMD^2 of 2,000 vs 2,000 samples of N(0, I_16) and N(delta 1, I_16), against
    the population value: within 4 standard errors (estimated over 8 independent repetitions)."""
    d, n = 16, 2000
    pop = _gaussian_mmd2(d, d * delta ** 2)
    estimates = []
    for rep in range(8):
        g = _gen(1000 + rep)
        real, fake = torch.randn(n, d, generator=g), torch.randn(n, d, generator=g) + delta
        estimates.append(kid(real, fake, num_subsets=1, subset_size=n).mean)
    mean, sem = float(np.mean(estimates)), float(np.std(estimates, ddof=1) / math.sqrt(len(estimates)))
    assert abs(mean - pop) <= 4 * sem + 1e-12, (mean, pop, sem)
    if delta:
        assert mean > 10 * sem  # clearly above zero


def test_kid_grows_with_the_mean_shift():
    g = _gen(8)
    real = torch.randn(1000, 16, generator=g)
    base = torch.randn(1000, 16, generator=g)
    results = [kid(real, base + shift, num_subsets=10, subset_size=300, seed=2) for shift in (0.0, 0.1, 0.2, 0.4, 0.8)]
    means = [r.mean for r in results]
    assert means == sorted(means), means
    assert results[2].mean > 5 * results[2].std  # a 0.2 shift in each of 16 dimensions is far outside the noise
    assert abs(results[0].mean) < 3 * results[0].std


def test_kid_subsets_are_reproducible_and_depend_on_the_seed():
    g = _gen(4)
    real, fake = torch.randn(300, 8, generator=g), torch.randn(200, 8, generator=g) + 0.2
    a = kid(real, fake, num_subsets=6, subset_size=50, seed=7)
    assert kid(real, fake, num_subsets=6, subset_size=50, seed=7) == a
    assert kid(real, fake, num_subsets=6, subset_size=50, seed=8).values != a.values
    # a subset's draw depends on the seed and its position only: more subsets extend the sequence
    assert kid(real, fake, num_subsets=9, subset_size=50, seed=7).values[:6] == a.values


def test_kid_draw_order_is_torch_fidelitys():
    """RandomState(seed): per subset, choice(n_fake, m) then choice(n_real, m), without replacement."""
    rng = np.random.RandomState(2020)
    real_idx, fake_idx = kid_subsets(50, 40, num_subsets=3, subset_size=10, seed=2020)
    for s in range(3):
        assert fake_idx[s].tolist() == rng.choice(40, 10, replace=False).tolist()
        assert real_idx[s].tolist() == rng.choice(50, 10, replace=False).tolist()


def test_kid_uses_the_smaller_set_size_when_below_subset_size(caplog):
    g = _gen(6)
    real, fake = torch.randn(80, 8, generator=g), torch.randn(50, 8, generator=g) + 0.3
    assert kid_subset_size(80, 50, 1000) == 50
    with caplog.at_level(logging.INFO, logger="dcgan_dist.metrics"):
        res = kid(real, fake, num_subsets=4, subset_size=1000)
    assert res.subset_size == 50 and "fewer than subset_size=1000" in caplog.text
    # subsets as large as both sets are the full sets (permuted): all equal, std 0
    full = kid(real[:50], fake, num_subsets=3, subset_size=1000)
    assert full.std == pytest.approx(0.0, abs=1e-15)
    assert full.mean == pytest.approx(mmd2_unbiased(fake, real[:50]).item(), abs=1e-14)


def test_kid_scaling_helpers_and_dict():
    res = KIDResult(mean=0.00123, std=0.0004, values=(0.001, 0.0015), subset_size=1000, num_real=5, num_fake=5)
    assert KID_REPORT_SCALE == 1e3
    assert res.scaled() == pytest.approx((1.23, 0.4)) and kid_x1e3(res) == res.scaled()
    assert res.scaled(1.0) == (0.00123, 0.0004)
    assert res.as_dict() == {"kid_mean": 0.00123, "kid_std": 0.0004, "kid_subsets": 2, "kid_subset_size": 1000}


@pytest.mark.parametrize("bad", ["nan", "dims", "few", "subsets"])
def test_kid_rejects_unusable_input(bad):
    real, fake = torch.randn(20, 4), torch.randn(20, 4)
    with pytest.raises(ValueError):
        if bad == "nan":
            fake[3, 1] = float("nan")
            kid(real, fake, subset_size=10)
        elif bad == "dims":
            kid(real, torch.randn(20, 5), subset_size=10)
        elif bad == "few":
            kid(real, fake[:1], subset_size=10)
        else:
            kid(real, fake, num_subsets=0, subset_size=10)


# ---- precision / recall ----------------------------------------------------------------------------

def _pr_loop(real: np.ndarray, fake: np.ndarray, k: int) -> tuple[int, int]:
    """(fakes in the real manifold, reals in the generated manifold) from direct float64 differences."""
    def radii(x):
        return [np.sort(((x - x[i]) ** 2).sum(1))[k] for i in range(len(x))]

    def inside(probes, manifold):
        r2 = np.array(radii(manifold))
        return sum(bool((((manifold - p) ** 2).sum(1) <= r2).any()) for p in probes)

    return inside(fake, real), inside(real, fake)


def _col(values) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float32)[:, None]


def test_pr_hand_built_1d_k1():
    """Reals 0..4 (k = 1: every radius 1). Fakes -1.5, -1, 0.5, 2, 5, 5.5, 10: inside a real ball are
    -1 (on the sphere of 0), 0.5, 2 and 5 (on the sphere of 4): precision 4/7. Generated radii:
    0.5, 0.5, 1.5, 1.5, 0.5, 0.5, 4.5; reals 0, 1 (by 0.5), 2 (by 2), 3 (by 2, at 1 <= 1.5) are
    inside, 4 is not (2 from 2, 1 from 5, 1.5 from 5.5, 6 from 10): recall 4/5."""
    real, fake = _col([0, 1, 2, 3, 4]), _col([-1.5, -1, 0.5, 2, 5, 5.5, 10])
    assert knn_sq_radii(real, k=1).tolist() == [1.0] * 5
    assert knn_sq_radii(fake, k=1).sqrt().tolist() == [0.5, 0.5, 1.5, 1.5, 0.5, 0.5, 4.5]
    res = precision_recall(real, fake, k=1)
    assert (res.fakes_in_real, res.reals_in_fake) == (4, 4)
    assert (res.precision, res.recall) == (4 / 7, 4 / 5)
    assert res == PRResult(precision=4 / 7, recall=0.8, k=1, num_real=5, num_fake=7, fakes_in_real=4, reals_in_fake=4)


def test_pr_hand_built_1d_duplicates_and_k2():
    """Duplicates are neighbours (StyleGAN's kthvalue(k + 1) over distances including the sample's own):
    reals 0, 0, 3 with k = 1 have radii 0, 0, 3; fakes 0 (at a centre), -0.5 (outside), 6 and 5.5
    (inside the ball of 3) give precision 3/4. With k = 2 the radii are 3, 3, 3."""
    real = _col([0, 0, 3])
    assert knn_sq_radii(real, k=1).tolist() == [0.0, 0.0, 9.0]
    assert knn_sq_radii(real, k=2).tolist() == [9.0, 9.0, 9.0]
    fake = _col([0, -0.5, 6, 5.5])
    assert count_inside(fake, real, knn_sq_radii(real, k=1)) == 3
    assert count_inside(fake, real, knn_sq_radii(real, k=2)) == 4  # -0.5 is within 3 of 0 now


def test_pr_hand_built_2d_k2():
    """Reals: the unit square's corners and (5, 5). k = 2: each corner's radius is 1 (two adjacent
    corners at 1), (5, 5)'s is sqrt(41) (to (1, 0) and (0, 1)). Fakes: (0.5, 0.5) in; (2, 0) on the
    sphere of (1, 0): in; (2.5, 0) only in the big ball (31.25 <= 41); (-3, -3) out (18 > 1, 128 > 41);
    (9, 9) in the big ball (32); (10, 10) out (50): precision 4/6."""
    real = torch.tensor([[0, 0], [1, 0], [0, 1], [1, 1], [5, 5]], dtype=torch.float32)
    fake = torch.tensor([[0.5, 0.5], [2, 0], [2.5, 0], [-3, -3], [9, 9], [10, 10]], dtype=torch.float32)
    assert knn_sq_radii(real, k=2).tolist() == [1.0, 1.0, 1.0, 1.0, 41.0]
    res = precision_recall(real, fake, k=2)
    assert res.fakes_in_real == 4 and res.precision == 4 / 6
    assert (res.fakes_in_real, res.reals_in_fake) == _pr_loop(real.double().numpy(), fake.double().numpy(), 2)


def test_pr_of_identical_sets_is_one():
    x = torch.randn(400, 32, generator=_gen(11)).relu()
    res = precision_recall(x, x.clone())
    assert (res.precision, res.recall) == (1.0, 1.0)


def test_pr_of_far_apart_clusters_is_zero():
    g = _gen(12)
    real, fake = torch.randn(300, 16, generator=g), torch.randn(250, 16, generator=g) + 20.0
    res = precision_recall(real, fake)
    assert (res.precision, res.recall) == (0.0, 0.0)


def test_pr_equals_the_direct_loop_on_random_features():
    g = _gen(13)
    real = torch.randn(120, 8, generator=g).relu()
    fake = (torch.randn(90, 8, generator=g) * 1.3 + 0.2).relu()
    for k in (1, 3, 5):
        res = precision_recall(real, fake, k=k)
        expect = _pr_loop(real.double().numpy(), fake.double().numpy(), k)
        assert (res.fakes_in_real, res.reals_in_fake) == expect
        if k == 1:
            assert 0 < res.precision < 1 and 0 < res.recall < 1  # not a degenerate case


def test_pr_and_radii_do_not_depend_on_the_row_block_size():
    g = _gen(14)
    real = torch.randn(301, 24, generator=g).relu()
    fake = (torch.randn(257, 24, generator=g) + 0.1).relu()
    results = {b: precision_recall(real, fake, row_batch=b) for b in (1, 7, 64, 256, 301, 5000)}
    assert len(set(results.values())) == 1, results
    radii = [knn_sq_radii(real, row_batch=b) for b in (1, 7, 64, 5000)]
    for r in radii[1:]:
        assert torch.allclose(r, radii[0], rtol=1e-13, atol=0)


def test_pr_float32_distances_agree_with_float64():
    g = _gen(15)
    real = torch.randn(500, 64, generator=g).relu()
    fake = (torch.randn(400, 64, generator=g) + 0.05).relu()
    r64, r32 = precision_recall(real, fake), precision_recall(real, fake, dtype=torch.float32)
    assert abs(r64.fakes_in_real - r32.fakes_in_real) <= 1 and abs(r64.reals_in_fake - r32.reals_in_fake) <= 1
    assert knn_sq_radii(real, dtype=torch.float32).dtype == torch.float32


def test_sq_distances_and_norms():
    a = torch.tensor([[0.0, 0.0], [3.0, 4.0]], dtype=torch.float64)
    b = torch.tensor([[3.0, 0.0], [3.0, 4.0]], dtype=torch.float64)
    assert sq_distances(a, b, sq_norms(a), sq_norms(b)).tolist() == [[9.0, 25.0], [16.0, 0.0]]
    x = torch.randn(5000, 3, generator=_gen(16))  # more rows than one norm chunk
    assert torch.allclose(sq_norms(x), (x.double() ** 2).sum(1), rtol=1e-15)


@pytest.mark.parametrize("bad", ["k", "dims", "nan", "row_batch", "dtype", "radii"])
def test_pr_rejects_unusable_input(bad):
    real, fake = torch.randn(10, 4), torch.randn(10, 4)
    with pytest.raises(ValueError):
        if bad == "k":
            precision_recall(real, fake[:3], k=3)
        elif bad == "dims":
            precision_recall(real, torch.randn(10, 3))
        elif bad == "nan":
            real[0, 0] = float("inf")
            precision_recall(real, fake)
        elif bad == "row_batch":
            precision_recall(real, fake, row_batch=0)
        elif bad == "dtype":
            precision_recall(real, fake, dtype=torch.float16)
        else:
            count_inside(fake, real, torch.ones(9))


# ---- the collective helpers on one process ---------------------------------------------------------

def test_one_process_gather_and_reduce_are_identities():
    x = torch.randn(7, 3)
    assert gather_features(None, x) is x
    t = torch.tensor(5)
    assert all_reduce_sum(None, t) is t
    assert local_rows(10, None) == (0, 10)
    assert [share(10, r, 3) for r in range(3)] == [(0, 3), (3, 6), (6, 10)]
    with pytest.raises(ValueError):
        check_features("x", torch.randn(3))


# ---- torchmetrics' KernelInceptionDistance ---------------------------------------------------------

def _torchmetrics_kid(real: torch.Tensor, fake: torch.Tensor, subsets: int, subset_size: int):
    tm_kid = pytest.importorskip("torchmetrics.image.kid", reason="torchmetrics is not installed (optional: only "
                                 "this cross-check uses it)")
    metric = tm_kid.KernelInceptionDistance(feature=torch.nn.Identity(), subsets=subsets, subset_size=subset_size)
    metric.update(real, real=True)
    metric.update(fake, real=False)
    mean, std = metric.compute()
    return float(mean), float(std)


@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_kid_equals_torchmetrics_on_the_full_sets(dtype):
    """subset_size = N and one subset: torchmetrics' random permutation is the whole set, and MMD^2_u
    does not depend on the order, so both compute the same number (ours always in float64;
    torchmetrics in the features' dtype, hence the looser bound for float32 features)."""
    g = _gen(21)
    real = torch.randn(600, 2048, generator=g).relu()
    fake = (torch.randn(600, 2048, generator=g) * 1.05 + 0.02).relu()
    ours = kid(real, fake, num_subsets=1, subset_size=600)
    tm_mean, tm_std = _torchmetrics_kid(real.to(dtype), fake.to(dtype), 1, 600)
    assert ours.mean > 0
    if dtype == torch.float64:
        assert tm_mean == pytest.approx(ours.mean, rel=1e-9)
    else:  # float32 sums of ~m^2 kernel values of order 1: ~1e-7 absolute here (5e-5 relative)
        assert tm_mean == pytest.approx(ours.mean, abs=2e-6)
    assert tm_std == 0.0 and ours.std == 0.0


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_kid_equals_torchmetrics_on_its_own_subsets():
    """torchmetrics draws each subset as randperm(N_real)[:m], randperm(N_fake)[:m] from torch's
    global generator: replay those draws, and our per-subset estimator and summary equal its
    mean and (population) std."""
    g = _gen(22)
    real = torch.randn(500, 256, generator=g, dtype=torch.float64).relu()
    fake = (torch.randn(400, 256, generator=g, dtype=torch.float64) + 0.03).relu()
    state = torch.random.get_rng_state()
    try:
        torch.manual_seed(77)
        tm_mean, tm_std = _torchmetrics_kid(real, fake, 20, 100)
        torch.manual_seed(77)
        values = []
        for _ in range(20):
            r = real[torch.randperm(500)[:100]]
            f = fake[torch.randperm(400)[:100]]
            values.append(mmd2_unbiased(f, r).item())
    finally:
        torch.random.set_rng_state(state)
    assert float(np.mean(values)) == pytest.approx(tm_mean, rel=1e-9)
    assert float(np.std(values)) == pytest.approx(tm_std, rel=1e-7)


# ---- 2 processes through the real launcher ---------------------------------------------------------

@pytest.mark.slow
def test_two_processes_gather_and_compute_the_single_process_numbers_exactly(tmp_path, monkeypatch):
    """accelerate launch, 2 CPU ranks (gloo), each holding a different, unequal share of the same
    features: the gathered sets are the full sets, and the collectively computed KID (subsets split
    3 + 4 over the ranks) and precision/recall (rows split over the ranks) equal the one-process
    numbers exactly, those computed in the ranks and those computed here. In the same launch: the
    reference features cached on 2 ranks (a miss, then a hit read by rank zero and broadcast), and
    the evaluate CLI on a trained checkpoint giving the KID / PR of the CLI run here on 1 process."""
    from dcgan_dist import sample

    run_dir = tmp_path / "run"
    assert train_inproc("configs/quickstart.yaml", TINY + [f"run.dir={run_dir}", "train.kimg=0.032"]) == 0
    # the reference: 40 samples of the same G from another seed (after 32 images G is far from the digits,
    # and precision/recall against them would be 0; against its own samples they are not)
    assert run_main(sample.main, [run_dir, "--num", 40, "--out", tmp_path / "ref", "--seed", 99, "--no-progress"]) == 0
    cli = [str(run_dir), "--data", str(tmp_path / "ref"), "--num", "26", "--batch", "8", "--metrics", "fid,kid,pr",
           "--kid-subsets", "5", "--kid-subset-size", "16", "--no-progress"]
    standins.install(monkeypatch.setattr)
    assert evaluate_inproc(cli + ["--out", tmp_path / "one.json", "--cache-dir", tmp_path / "cache1"]) == 0

    script = REPO / "tests" / "scripts" / "kid_pr_two_process.py"
    e = env()  # this checkout's package first on PYTHONPATH, and tests/ for the script's stand-in extractor
    e["PYTHONPATH"] = os.pathsep.join([str(REPO / "tests"), e["PYTHONPATH"]])
    args = [str(script), str(tmp_path / "ref2"), *cli, "--out", str(tmp_path / "two.json"),
            "--cache-dir", str(tmp_path / "cache2")]
    proc = subprocess.run(launcher_cmd(args), cwd=REPO, env=e, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    out = json.loads([line for line in proc.stdout.splitlines() if line.startswith("{")][-1])
    assert out["world_size"] == 2
    assert out["gathered_equal"] and out["empty_share_gather_equal"]
    assert out["ranks_agree"]
    assert out["kid"]["values"] == out["kid_single"]["values"] and len(out["kid"]["values"]) == 7
    assert (out["kid"]["mean"], out["kid"]["std"]) == (out["kid_single"]["mean"], out["kid_single"]["std"])
    assert out["pr"] == out["pr_single"]
    assert out["radii_max_rel_diff"] <= 1e-13

    kid_here, pr_here = runpy.run_path(str(script))["reference"]()  # the script's own numbers, computed here
    assert out["kid"]["values"] == list(kid_here.values)
    assert out["kid"]["mean"] == kid_here.mean
    assert out["pr"]["fakes_in_real"] == pr_here.fakes_in_real and out["pr"]["reals_in_fake"] == pr_here.reals_in_fake
    assert (out["pr"]["precision"], out["pr"]["recall"]) == (pr_here.precision, pr_here.recall)
    assert 0 < pr_here.precision < 1 and 0 < pr_here.recall < 1  # not a degenerate case

    # the reference cache: rank zero decided miss then hit for both ranks; both held the whole set both times
    assert out["ref_cached"] == [[0, 1], [0, 1]] and out["ref_features_equal"] == [[1, 1], [1, 1]]
    # the CLI: 13 samples per rank, gathered; the numbers of one process
    one, two = read_json(tmp_path / "one.json"), read_json(tmp_path / "two.json")
    assert (one["world_size"], two["world_size"]) == (1, 2) and one["num"] == two["num"] == 26
    assert one["kid"]["std"] > 0 and 0 < one["precision"] < 1 and 0 < one["recall"] < 1 and one["ref_num"] == 40
    assert two["kid"] == pytest.approx(one["kid"], rel=1e-9)
    assert (two["precision"], two["recall"]) == (one["precision"], one["recall"])
    assert two["fid"] == pytest.approx(one["fid"], rel=1e-6)
