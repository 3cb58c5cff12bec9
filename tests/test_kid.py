"""KID (the unbiased polynomial-kernel MMD, x10^3 like StyleGAN's kid50k): closed forms, a loop-based
reference, subset drawing, bad input, and torchmetrics' KernelInceptionDistance on the same features
(the dev extra installs it)."""

from __future__ import annotations

import logging
import math

import numpy as np
import pytest
import torch

from dcgan_dist.metrics.kid import (KID_REPORT_SCALE, KIDResult, kid, kid_subset_size, kid_subsets, kid_x1e3,
                                    mmd2_unbiased, polynomial_kernel)


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
