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
