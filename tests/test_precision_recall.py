"""Improved precision and recall (k-NN balls, k = 3 by default): hand-built sets, a direct loop,
block-size and dtype invariance, bad input."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dcgan_dist.metrics.precision_recall import (PRResult, count_inside, knn_sq_radii, precision_recall,
                                                 sq_distances, sq_norms)


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


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
