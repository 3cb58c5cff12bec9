"""DiffAugment, the EMA of G, learning-rate schedules and the diversity monitor, against their definitions."""

from __future__ import annotations

import math

import pytest
import torch

from dcgan_dist import config
from dcgan_dist.augment import DiffAugment, color, cutout, translation
from dcgan_dist.ema import GeneratorEMA, ema_beta
from dcgan_dist.models import Generator
from dcgan_dist.optim import apply_schedule, build_optimizers, lr_scale
from dcgan_dist.step import diversity

POLICY = ("color", "translation", "cutout")


def _images(n=8, c=3, side=16, seed=0):
    return torch.rand(n, c, side, side, generator=torch.Generator().manual_seed(seed)) * 2 - 1


# ---- DiffAugment ------------------------------------------------------------------------------

def test_diffaugment_is_identical_on_the_real_and_fake_paths():
    """One object, the same code for both paths: equal inputs and equal generator states give equal
    outputs, whichever path (a plain real tensor, a fake that requires grad) it is called from."""
    real = _images()
    fake = real.clone().requires_grad_(True)
    aug_real = DiffAugment(POLICY, generator=torch.Generator().manual_seed(3))
    aug_fake = DiffAugment(POLICY, generator=torch.Generator().manual_seed(3))
    assert torch.equal(aug_real(real), aug_fake(fake).detach())
    # ...and it really transforms: fresh parameters per call and per sample.
    a, b = aug_real(real), aug_real(real)
    assert not torch.equal(a, b) and not torch.allclose(a, real)


@pytest.mark.parametrize("policy", [("color",), ("translation",), ("cutout",), POLICY])
def test_diffaugment_is_differentiable(policy):
    x = _images().requires_grad_(True)
    out = DiffAugment(policy, generator=torch.Generator().manual_seed(0))(x)
    weights = torch.randn_like(out)
    (out * weights).sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    # Gradient check in float64 on a small input (the random parameters are re-drawn identically).
    x64 = _images(n=2, side=8).double().requires_grad_(True)
    torch.autograd.gradcheck(lambda t: DiffAugment(policy, generator=torch.Generator().manual_seed(1))(t),
                             (x64,), eps=1e-6, atol=1e-5)


def test_translation_shifts_by_whole_pixels_with_zero_fill():
    x = torch.arange(64, dtype=torch.float32).reshape(1, 1, 8, 8) + 1
    gen = torch.Generator().manual_seed(0)
    for _ in range(20):
        state = gen.get_state()
        y = translation(x, ratio=0.25, gen=gen)
        g2 = torch.Generator()
        g2.set_state(state)
        ty = torch.randint(-2, 3, (1, 1, 1), generator=g2).item()
        tx = torch.randint(-2, 3, (1, 1, 1), generator=g2).item()
        expected = torch.zeros_like(x)
        src = x[0, 0]
        for i in range(8):
            for j in range(8):
                si, sj = i + ty, j + tx
                if 0 <= si < 8 and 0 <= sj < 8:
                    expected[0, 0, i, j] = src[si, sj]
        assert torch.equal(y, expected), (ty, tx)


def test_cutout_zeroes_one_square_of_the_given_size():
    x = torch.ones(32, 1, 16, 16)
    y = cutout(x, ratio=0.5, gen=torch.Generator().manual_seed(0))
    zeros = (y == 0).flatten(1).sum(1)
    assert (zeros <= 64).all() and (zeros > 0).all() and (zeros == 64).sum() > 5  # clipped at borders
    for img in y[:, 0]:
        rows, cols = torch.nonzero(img == 0, as_tuple=True)
        box = (rows.max() - rows.min() + 1) * (cols.max() - cols.min() + 1)
        assert box.item() == rows.numel()  # the erased pixels form one rectangle


def test_color_keeps_gray_images_gray_and_matches_its_definition():
    x = _images(n=4, c=1)
    gen = torch.Generator().manual_seed(0)
    state = gen.get_state()
    y = color(x, gen)
    g2 = torch.Generator()
    g2.set_state(state)
    b, s, c = (torch.rand(4, 1, 1, 1, generator=g2) for _ in range(3))
    z = x + (b - 0.5)  # brightness; saturation is the identity on one channel
    m = z.mean(dim=(1, 2, 3), keepdim=True)
    assert torch.allclose(y, (z - m) * (c + 0.5) + m, atol=1e-6)
    del s


def test_empty_policy_is_the_identity():
    aug = DiffAugment(())
    x = _images()
    assert not aug and aug(x) is x


# ---- EMA of G -----------------------------------------------------------------------------------

def test_ema_beta_half_life_and_rampup():
    # Without ramp-up: after half_life images the old weights carry exactly half the weight.
    beta = ema_beta(batch=64, nimg=10**9, half_life_kimg=10, rampup=0)
    assert beta ** (10_000 / 64) == pytest.approx(0.5, rel=1e-9)
    # With ramp-up early on the half-life is rampup * nimg.
    assert ema_beta(64, 6400, 10, 0.05) == pytest.approx(0.5 ** (64 / 320), rel=1e-12)
    assert ema_beta(64, 10**7, 10, 0.05) == pytest.approx(0.5 ** (64 / 10_000), rel=1e-12)


def test_ema_update_is_the_weighted_average():
    torch.manual_seed(0)
    G = Generator(32, 1, z_dim=8, width=4)
    ema = GeneratorEMA(G, half_life_kimg=1, rampup=0, bn_batches=0)
    start = [p.detach().clone() for p in ema.module.parameters()]
    with torch.no_grad():
        for p in G.parameters():
            p.add_(1.0)
    beta = ema.update(G, nimg=10_000, batch=100)
    assert beta == pytest.approx(0.5 ** 0.1)
    for p0, p_ema, p in zip(start, ema.module.parameters(), G.parameters()):
        assert torch.allclose(p_ema, beta * p0 + (1 - beta) * p.detach(), atol=1e-7)
    # G itself is untouched and the EMA never needs gradients.
    assert all(not p.requires_grad for p in ema.module.parameters())


def test_ema_bn_recalibration_is_deterministic_and_fits_the_averaged_weights():
    torch.manual_seed(0)
    G = Generator(32, 1, z_dim=8, width=4)
    ema = GeneratorEMA(G, 1, 0, bn_batches=4, bn_batch_size=32, seed=5)
    first = [b.clone() for b in ema.recalibrate(G).buffers()]
    second = [b.clone() for b in ema.recalibrate(G).buffers()]
    assert all(torch.equal(a, b) for a, b in zip(first, second))
    assert not ema.module.training
    # The statistics are those of the averaged G's own activations, not G's initial (0, 1) buffers.
    bn = ema.module.main[1]
    assert not torch.allclose(bn.running_var, torch.ones_like(bn.running_var))
    # bn_batches=0 copies G's statistics instead.
    copy = GeneratorEMA(G, 1, 0, bn_batches=0)
    with torch.no_grad():
        G.main[1].running_mean.fill_(0.25)
    assert torch.equal(copy.recalibrate(G).main[1].running_mean, G.main[1].running_mean)


# ---- learning-rate schedules --------------------------------------------------------------------

def _cfg(*overrides):
    return config.load(None, ["train.kimg=100", *overrides])


def test_schedules_follow_their_formulas():
    assert lr_scale(_cfg(), 50_000) == 1.0
    exp = _cfg("optim.schedule=exp", "optim.half_life_kimg=20", "optim.decay_start_kimg=10")
    assert lr_scale(exp, 10_000) == 1.0
    assert lr_scale(exp, 30_000) == pytest.approx(0.5)
    assert lr_scale(exp, 50_000) == pytest.approx(0.25)
    floored = _cfg("optim.schedule=exp", "optim.half_life_kimg=1", "optim.min_lr_ratio=0.1")
    assert lr_scale(floored, 90_000) == pytest.approx(0.1)
    cos = _cfg("optim.schedule=cosine", "optim.min_lr_ratio=0.2")
    assert lr_scale(cos, 0) == pytest.approx(1.0)
    assert lr_scale(cos, 50_000) == pytest.approx(0.2 + 0.8 * 0.5)
    assert lr_scale(cos, 100_000) == pytest.approx(0.2)
    assert lr_scale(cos, 25_000) == pytest.approx(0.2 + 0.8 * 0.5 * (1 + math.cos(math.pi / 4)))


def test_separate_rates_and_betas_and_schedule_applied_to_both():
    cfg = _cfg("optim.g_lr=1e-4", "optim.d_lr=4e-4", "optim.g_beta1=0.0", "optim.g_beta2=0.9",
               "optim.d_beta1=0.5", "optim.d_beta2=0.99", "optim.schedule=cosine")
    G, D = torch.nn.Linear(2, 2), torch.nn.Linear(2, 1)
    opt_g, opt_d = build_optimizers(cfg, G, D)
    assert opt_g.param_groups[0]["betas"] == (0.0, 0.9) and opt_d.param_groups[0]["betas"] == (0.5, 0.99)
    apply_schedule(cfg, opt_g, opt_d, 50_000)
    assert opt_g.param_groups[0]["lr"] == pytest.approx(0.5e-4) and opt_d.param_groups[0]["lr"] == pytest.approx(2e-4)


# ---- diversity monitor --------------------------------------------------------------------------

def test_diversity_falls_to_zero_for_a_collapsed_batch():
    varied = _images(n=16, side=64)
    collapsed = varied[:1].expand(16, -1, -1, -1) + 1e-3 * torch.randn(16, 3, 64, 64)
    assert diversity(varied) > 0.1
    assert diversity(collapsed) < 0.01 * diversity(varied)
    # Pixel-scale: the same images at another resolution give a similar value.
    small = torch.nn.functional.avg_pool2d(varied, 4)
    assert diversity(small) == pytest.approx(diversity(varied).item(), rel=1e-5)


def test_conditional_grid_gives_each_class_whole_rows():
    from dcgan_dist.grid import grid_labels

    labels, cols = grid_labels(10, 100)
    assert cols == 10 and labels.view(10, 10).T.eq(torch.arange(10)).all()  # row r is class r
    labels, cols = grid_labels(2, 64)
    assert cols == 8 and labels.view(8, 8)[:4].eq(0).all() and labels.view(8, 8)[4:].eq(1).all()
    labels, cols = grid_labels(10, 64)  # too few images for the classes: one row each
    assert cols == 8 and len(labels) == 80
    assert grid_labels(0, 64) == (None, 8)


# ---- adaptive augmentation (augment.adaptive) --------------------------------------------------

def test_adaptive_probability_gates_every_op():
    x = _images(64, seed=5)
    p = torch.zeros(())
    aug = DiffAugment(POLICY, generator=torch.Generator().manual_seed(0), p=p)
    assert torch.equal(aug(x), x)  # p = 0: no image touched
    p.fill_(1.0)
    changed = (aug(x) != x).flatten(1).any(1)
    assert changed.all()  # p = 1: every image
    p.fill_(0.5)
    aug1 = DiffAugment(["translation"], generator=torch.Generator().manual_seed(1), p=p)
    share = (aug1(x) != x).flatten(1).any(1).float().mean().item()
    assert 0.25 < share < 0.75  # about half (a few zero shifts leave an image as it was)


class _OneRank:
    num_processes = 1


def test_adaptive_controller_follows_the_sign_of_d_on_reals():
    from dcgan_dist.augment import AdaptiveAugment

    ada = AdaptiveAugment(target=0.6, speed_kimg=1.0, global_batch=16, device=torch.device("cpu"))
    rate = 4 * 16 / 1000
    sure = torch.full((16,), 3.0)  # D calls every real real: r = 1 > 0.6, p rises
    for step in range(1, 9):
        ada.observe(sure, step, _OneRank())
        assert ada.p.item() == pytest.approx(rate * (step // 4))  # moves only every 4 steps
    unsure = torch.tensor([1.0, -1.0] * 8)  # r = 0 < 0.6: p falls, never below 0
    for step in range(9, 9 + 4 * 4):
        ada.observe(unsure, step, _OneRank())
    assert ada.p.item() == 0.0
    for step in range(100, 100 + 4 * 40):
        ada.observe(sure, step, _OneRank())
    assert ada.p.item() == 1.0  # clamped
    # Resumed between two updates (3 steps of signs pending), it goes on exactly as without the stop.
    fresh = AdaptiveAugment(0.6, 1.0, 16, torch.device("cpu"))
    fresh.load_state_dict(ada.state_dict())
    assert fresh.p.item() == 1.0 and fresh.signs.item() == ada.signs.item() == 3 * 16
    for a in (ada, fresh):
        a.observe(-sure, 260, _OneRank())  # r = (48 - 16) / 64 = 0.5 < 0.6: down one step
    assert fresh.p.item() == ada.p.item() == pytest.approx(1 - rate)


def test_adaptive_needs_a_policy():
    from dcgan_dist import config
    from dcgan_dist.config import ConfigError

    with pytest.raises(ConfigError, match="augment.adaptive=true.*augment.policy=color,translation,cutout"):
        config.load(None, ["augment.adaptive=true"])
    assert config.load(None, ["augment.adaptive=true", "augment.policy=translation"]).augment.adaptive
