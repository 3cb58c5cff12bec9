"""Unit tests for dcgan_dist.losses against hand-computed closed forms."""

from __future__ import annotations

import math

import pytest
import torch

from dcgan_dist.losses import d_loss_nonsaturating, g_loss_nonsaturating

REAL = [-3.0, -0.5, 0.0, 0.7, 2.5, 6.0]
FAKE = [-4.0, -1.2, 0.0, 0.3, 1.5]


def _mean(values):
    return sum(values) / len(values)


def _log_sigmoid(x):
    return -math.log1p(math.exp(-x))


def _log_one_minus_sigmoid(x):
    return -math.log1p(math.exp(x))


def _t(values, dtype=torch.float32):
    return torch.tensor(values, dtype=dtype)


def test_d_loss_closed_form():
    expected = _mean([math.log(1 + math.exp(-x)) for x in REAL]) + _mean(
        [math.log(1 + math.exp(x)) for x in FAKE]
    )
    loss = d_loss_nonsaturating(_t(REAL), _t(FAKE), real_label=1.0)
    assert loss.shape == ()
    assert loss.item() == pytest.approx(expected, rel=1e-6)


def test_d_loss_one_sided_label_smoothing():
    real_term = _mean([-(0.9 * _log_sigmoid(x) + 0.1 * _log_one_minus_sigmoid(x)) for x in REAL])
    # The fake target stays 0: its term is unchanged by smoothing.
    fake_term = _mean([-_log_one_minus_sigmoid(x) for x in FAKE])
    loss = d_loss_nonsaturating(_t(REAL), _t(FAKE), real_label=0.9)
    assert loss.item() == pytest.approx(real_term + fake_term, rel=1e-6)


def test_g_loss_closed_form():
    expected = _mean([math.log(1 + math.exp(-x)) for x in FAKE])
    loss = g_loss_nonsaturating(_t(FAKE))
    assert loss.shape == ()
    assert loss.item() == pytest.approx(expected, rel=1e-6)


def test_losses_at_zero_logits():
    zeros = torch.zeros(8)
    assert g_loss_nonsaturating(zeros).item() == pytest.approx(math.log(2), rel=1e-6)
    assert d_loss_nonsaturating(zeros, zeros).item() == pytest.approx(2 * math.log(2), rel=1e-6)


def test_large_logits_stay_finite():
    big = _t([-100.0, 100.0])
    for loss in (d_loss_nonsaturating(big, big), d_loss_nonsaturating(big, big, 0.9), g_loss_nonsaturating(big)):
        assert torch.isfinite(loss)
    # Confidently right discriminator: loss ~ 0, not nan from log(0) * 0.
    assert d_loss_nonsaturating(_t([100.0]), _t([-100.0])).item() == pytest.approx(0.0, abs=1e-6)
    # Confidently fooled generator side: loss ~ 100, not inf.
    assert g_loss_nonsaturating(_t([-100.0])).item() == pytest.approx(100.0, rel=1e-6)


def test_gradients_finite_at_large_logits():
    real = _t([100.0, -100.0]).requires_grad_()
    fake = _t([100.0, -100.0]).requires_grad_()
    (d_loss_nonsaturating(real, fake, 0.9) + g_loss_nonsaturating(fake)).backward()
    assert torch.isfinite(real.grad).all() and torch.isfinite(fake.grad).all()


def test_bf16_logits_give_float32_loss():
    real, fake = _t(REAL, torch.bfloat16), _t(FAKE, torch.bfloat16)
    d = d_loss_nonsaturating(real, fake)
    g = g_loss_nonsaturating(fake)
    assert d.dtype == torch.float32 and g.dtype == torch.float32
    # Same value as the float32 loss on the (bf16-rounded) logits.
    assert d.item() == pytest.approx(d_loss_nonsaturating(real.float(), fake.float()).item(), rel=1e-6)


def test_loss_under_autocast_is_float32():
    torch.manual_seed(0)
    layer = torch.nn.Linear(4, 1)
    x = torch.randn(6, 4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = layer(x).squeeze(1)
        assert logits.dtype == torch.bfloat16  # autocast is really active
        d = d_loss_nonsaturating(logits, -logits, real_label=0.9)
        g = g_loss_nonsaturating(logits)
    for loss in (d, g):
        assert loss.dtype == torch.float32
        assert torch.isfinite(loss)
    (d + g).backward()
    assert torch.isfinite(layer.weight.grad).all()


@pytest.mark.parametrize("bad", [0.0, 1.5, -0.1])
def test_invalid_real_label_raises(bad):
    with pytest.raises(ValueError, match=r"loss\.real_label"):
        d_loss_nonsaturating(torch.zeros(2), torch.zeros(2), real_label=bad)


# ---- hinge, least squares, Wasserstein + gradient penalty, label noise --------------------------

from dcgan_dist.losses import (  # noqa: E402
    D_LOSSES, G_LOSSES, d_hinge, d_lsgan, d_targets, d_wasserstein, g_lsgan, g_wasserstein, gradient_penalty,
)


def test_hinge_closed_form():
    expected_d = _mean([max(0.0, 1 - x) for x in REAL]) + _mean([max(0.0, 1 + x) for x in FAKE])
    assert d_hinge(_t(REAL), _t(FAKE)).item() == pytest.approx(expected_d, rel=1e-6)
    assert G_LOSSES["hinge"](_t(FAKE)).item() == pytest.approx(-_mean(FAKE), rel=1e-6)


def test_lsgan_closed_form_with_smoothing():
    real_t, fake_t = d_targets(len(REAL), len(FAKE), real_label=0.9)
    expected_d = 0.5 * (_mean([(x - 0.9) ** 2 for x in REAL]) + _mean([x ** 2 for x in FAKE]))
    assert d_lsgan(_t(REAL), _t(FAKE), real_t, fake_t).item() == pytest.approx(expected_d, rel=1e-6)
    assert g_lsgan(_t(FAKE)).item() == pytest.approx(0.5 * _mean([(x - 1) ** 2 for x in FAKE]), rel=1e-6)


def test_wasserstein_closed_form():
    assert d_wasserstein(_t(REAL), _t(FAKE)).item() == pytest.approx(_mean(FAKE) - _mean(REAL), rel=1e-6)
    assert g_wasserstein(_t(FAKE)).item() == pytest.approx(-_mean(FAKE), rel=1e-6)
    assert D_LOSSES["wgan-gp"] is d_wasserstein and G_LOSSES["wgan-gp"] is g_wasserstein


def test_gradient_penalty_closed_form_for_a_linear_critic():
    """D(x) = <w, x>: the input gradient is w everywhere, so the penalty is exactly (|w| - 1)^2, and
    its gradient with respect to w is 2 (|w| - 1) w / |w|."""
    w = torch.tensor([[[[0.5, -1.0], [2.0, 0.25]]]], requires_grad=True)  # |w| = sqrt(5.3125)

    def critic(x):
        return (x * w).flatten(1).sum(1)

    real, fake = torch.randn(5, 1, 2, 2), torch.randn(5, 1, 2, 2)
    gp = gradient_penalty(critic, real, fake, generator=torch.Generator().manual_seed(0))
    norm = math.sqrt(5.3125)
    assert gp.item() == pytest.approx((norm - 1) ** 2, rel=1e-6)
    gp.backward()  # the penalty reaches the critic's weights (create_graph=True)
    assert torch.allclose(w.grad, 2 * (norm - 1) * w.detach() / norm, rtol=1e-5)


def test_r1_penalty_closed_form():
    """D(x) = <w, x^2>/2: grad = w * x per sample, so the penalty is the mean over samples of |w x|^2;
    its gradient with respect to w is 2 w x^2 averaged."""
    from dcgan_dist.losses import r1_penalty

    w = torch.tensor([[[[0.5, -1.0], [2.0, 0.25]]]], requires_grad=True)

    def critic(x):
        return (0.5 * x * x * w).flatten(1).sum(1)

    real = torch.randn(6, 1, 2, 2, generator=torch.Generator().manual_seed(2))
    r1 = r1_penalty(critic, real)
    expected = (w.detach() * real).pow(2).flatten(1).sum(1).mean()
    assert r1.item() == pytest.approx(expected.item(), rel=1e-6)
    r1.backward()
    assert torch.allclose(w.grad, (2 * w.detach() * real.pow(2)).mean(0, keepdim=True), rtol=1e-5)
    assert not real.requires_grad  # the caller's batch is left alone


def test_gradient_penalty_interpolates_between_real_and_fake():
    seen = []

    def critic(x):
        seen.append(x.detach().clone())
        return x.flatten(1).sum(1)

    real, fake = torch.ones(64, 1, 2, 2), -torch.ones(64, 1, 2, 2)
    gradient_penalty(critic, real, fake, generator=torch.Generator().manual_seed(1))
    x_hat = seen[0][:, 0, 0, 0]
    assert ((x_hat > -1) & (x_hat < 1)).all() and x_hat.std() > 0.3  # e ~ U[0, 1] per sample
    assert torch.equal(seen[0][:, 0], seen[0][:, 0, :1, :1].expand(-1, 2, 2))  # one e per sample


def test_label_noise_flips_with_the_given_probability():
    gen = torch.Generator().manual_seed(0)
    real_t, fake_t = d_targets(20_000, 20_000, real_label=0.9, flip=0.1, generator=gen)
    assert torch.allclose(real_t[real_t > 0], torch.tensor(0.9))
    assert (real_t == 0).float().mean().item() == pytest.approx(0.1, abs=0.01)
    assert (fake_t > 0).float().mean().item() == pytest.approx(0.1, abs=0.01)
    assert torch.allclose(fake_t[fake_t > 0], torch.tensor(0.9))
    # No noise: no random numbers are drawn, targets are exact.
    gen2 = torch.Generator().manual_seed(5)
    state = gen2.get_state()
    real_t, fake_t = d_targets(4, 3, real_label=1.0, flip=0.0, generator=gen2)
    assert torch.equal(gen2.get_state(), state)
    assert real_t.tolist() == [1.0] * 4 and fake_t.tolist() == [0.0] * 3


GP_NORMS = ["layer", "none"]


@pytest.fixture(scope="module")
def ddp_gradient_penalty() -> dict:
    """One launch of tests/scripts/ddp_gradient_penalty.py with 2 CPU processes: its result per D norm."""
    import json
    import subprocess

    from conftest import REPO, env, launcher_cmd

    proc = subprocess.run(launcher_cmd([str(REPO / "tests" / "scripts" / "ddp_gradient_penalty.py"), *GP_NORMS]),
                          cwd=REPO, env=env(), capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-4000:]
    results = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    return {r["norm"]: r for r in results}


@pytest.mark.slow
@pytest.mark.parametrize("norm", GP_NORMS)
def test_gradient_penalty_gradients_are_all_reduced_under_two_process_ddp(norm, ddp_gradient_penalty):
    """Through the real launcher with 2 CPU processes: D's gradient with the penalty in the loss equals
    the mean of the ranks' own gradients (DDP's all-reduce saw the penalty's backward)."""
    result = ddp_gradient_penalty[norm]
    assert result["world_size"] == 2
    assert result["rank_grads_differ"] > 1e-3  # the ranks really saw different data
    assert result["gp_share_of_grad"] > 0.05  # and the penalty really contributes to the gradient
    assert result["ranks_equal"]
    assert result["max_err_vs_mean_of_ranks"] <= 1e-6 * max(1.0, result["grad_scale"])
