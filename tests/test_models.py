"""Unit tests for dcgan_dist.models: shapes, parameter counts, init, determinism."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from dcgan_dist.config import ModelCfg
from dcgan_dist.models import (
    ARCH_KEYS,
    Discriminator,
    Generator,
    arch_signature,
    build_generator,
    build_models,
    count_params,
    stage_plan,
)

# Narrow widths keep the shape tests fast; the architecture is width-independent.
SMALL = dict(z_dim=16, width=8)


def M(resolution, channels, z_dim, g_width, d_width, **more) -> ModelCfg:
    """A config's model section."""
    return ModelCfg(resolution=resolution, channels=channels, z_dim=z_dim, g_width=g_width, d_width=d_width, **more)


@pytest.mark.parametrize(
    "resolution, expected",
    [(16, (4, 2)), (28, (7, 2)), (32, (4, 3)), (48, (6, 3)), (64, (4, 4)), (128, (4, 5)), (256, (4, 6))],
)
def test_stage_plan(resolution, expected):
    assert stage_plan(resolution) == expected


@pytest.mark.parametrize("resolution", [30, 8, 100, 12, 0, -64])
def test_unsupported_resolution_raises(resolution):
    with pytest.raises(ValueError, match=str(resolution)) as excinfo:
        stage_plan(resolution)
    assert "64" in str(excinfo.value)  # lists supported examples
    with pytest.raises(ValueError, match=str(resolution)):
        Generator(resolution=resolution)
    with pytest.raises(ValueError, match=str(resolution)):
        Discriminator(resolution=resolution)


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("resolution", [28, 32, 48, 64, 128])
def test_output_shapes(resolution, channels):
    torch.manual_seed(0)
    g = Generator(resolution, channels, SMALL["z_dim"], SMALL["width"])
    d = Discriminator(resolution, channels, SMALL["width"])
    n = 3
    z = torch.randn(n, SMALL["z_dim"])
    with torch.no_grad():
        images = g(z)
        assert images.shape == (n, channels, resolution, resolution)
        assert images.min() >= -1.0 and images.max() <= 1.0
        # The 4-D latent layout gives the same images as the flat one.
        g.eval()
        torch.testing.assert_close(g(z), g(z[:, :, None, None]))
        logits = d(images)
    assert logits.shape == (n,)
    assert logits.dtype == torch.float32


def test_generator_rejects_wrong_latent_size():
    g = Generator(32, 1, z_dim=16, width=8)
    with pytest.raises(ValueError, match="16"):
        g(torch.randn(2, 15))


def test_parameter_counts_match_pytorch_dcgan_example():
    g, d = build_models(M(64, 3, 100, 64, 64))
    assert count_params(g) == 3_576_704
    assert count_params(d) == 2_765_568


def _params_of(models, kind):
    return [m for model in models for m in model.modules() if isinstance(m, kind)]


def test_init_statistics():
    torch.manual_seed(0)
    models = build_models(M(64, 3, 100, 64, 64))
    conv = torch.cat(
        [m.weight.flatten() for m in _params_of(models, (nn.Conv2d, nn.ConvTranspose2d))]
    ).double()
    assert abs(conv.mean().item()) < 1e-3
    assert abs(conv.std().item() - 0.02) < 0.02 * 0.02

    bns = _params_of(models, nn.BatchNorm2d)
    bn_weight = torch.cat([m.weight.flatten() for m in bns]).double()
    # ~1.8k BN weights: the sample std is only known to a few percent, hence the looser bound.
    assert abs(bn_weight.mean().item() - 1.0) < 3e-3
    assert abs(bn_weight.std().item() - 0.02) < 0.02 * 0.1
    for m in bns:
        assert torch.count_nonzero(m.bias) == 0


def test_same_seed_same_weights():
    def build(seed):
        torch.manual_seed(seed)
        return build_models(M(32, 3, 16, 8, 8))

    for a, b in zip(build(1), build(1)):
        for (name, pa), (_, pb) in zip(a.state_dict().items(), b.state_dict().items()):
            assert torch.equal(pa, pb), name
    g1, _ = build(1)
    g2, _ = build(2)
    assert not torch.equal(g1.main[0].weight, g2.main[0].weight)


def test_dropout_only_when_positive():
    plain = Discriminator(64, 3, 8, dropout=0.0)
    assert not any(isinstance(m, nn.Dropout) for m in plain.modules())
    dropped = Discriminator(64, 3, 8, dropout=0.3)
    dropouts = [m for m in dropped.modules() if isinstance(m, nn.Dropout)]
    leaky = [m for m in dropped.modules() if isinstance(m, nn.LeakyReLU)]
    assert len(dropouts) == len(leaky) == 4
    assert all(m.p == 0.3 for m in dropouts)
    # Dropout adds no parameters, so checkpoints stay compatible.
    assert count_params(dropped) == count_params(plain)


def test_max_channels_caps_widest_layer():
    g = Generator(128, 3, z_dim=32, width=64, max_channels=256)
    d = Discriminator(128, 3, width=64, max_channels=256)
    g_widths = [m.out_channels for m in g.modules() if isinstance(m, nn.ConvTranspose2d)]
    d_widths = [m.out_channels for m in d.modules() if isinstance(m, nn.Conv2d)]
    # Uncapped, 128x128 with width 64 would reach 1024 channels.
    assert g_widths == [256, 256, 256, 128, 64, 3]
    assert d_widths == [64, 128, 256, 256, 256, 1]
    with torch.no_grad():
        assert d(g(torch.randn(2, 32))).shape == (2,)


def test_gradients_reach_every_parameter():
    torch.manual_seed(0)
    g, d = build_models(M(32, 3, 16, 8, 8, d_dropout=0.2))
    logits = d(g(torch.randn(4, 16)))
    logits.sum().backward()
    for model in (g, d):
        for name, p in model.named_parameters():
            assert p.grad is not None, name
            assert torch.isfinite(p.grad).all(), name
            assert p.grad.abs().sum() > 0, name


def test_arch_signature():
    base = dict(resolution=64, channels=3, z_dim=100, g_width=64, d_width=64, max_channels=1024)
    sig = arch_signature(ModelCfg(**base))
    assert sig == {**base, "num_classes": 0, "d_norm": "batch", "d_spectral": False}
    assert type(sig) is dict and set(sig) == set(ARCH_KEYS)
    changed = dict(resolution=32, channels=1, z_dim=128, g_width=32, d_width=128, max_channels=512,
                   num_classes=10, d_norm="none", d_spectral=True)
    for key, value in changed.items():
        assert arch_signature(ModelCfg(**{**base, key: value})) != sig, key
    # Dropout does not change tensor shapes, so it must not block loading a checkpoint.
    assert arch_signature(ModelCfg(**base, d_dropout=0.3)) == sig


def test_models_of_the_config_model_section():
    """build_models reads every model.* key from the config's section: no argument list to keep in step."""
    m = ModelCfg(resolution=32, channels=1, z_dim=16, g_width=8, d_width=12, d_dropout=0.1, d_norm="layer",
                 d_spectral=True, num_classes=3)
    g, d = build_models(m)
    assert (g.z_dim, g.num_classes, d.num_classes) == (16, 3, 3)
    assert any(isinstance(x, nn.GroupNorm) for x in d.modules())  # "layer": GroupNorm(1, C)
    assert any(isinstance(x, nn.Dropout) and x.p == 0.1 for x in d.modules())
    assert build_generator(m).state_dict().keys() == g.state_dict().keys()


# ---- conditional models, D normalisation, spectral normalisation ---------------------------------

@pytest.mark.parametrize("resolution,channels", [(28, 1), (64, 3)])
def test_conditional_shapes_and_labels_matter(resolution, channels):
    torch.manual_seed(0)
    g, d = build_models(M(resolution, channels, 16, 8, 8, num_classes=10))
    z = torch.randn(5, 16)
    y = torch.tensor([0, 3, 9, 3, 1])
    x = g(z, y)
    assert x.shape == (5, channels, resolution, resolution)
    assert d(x, y).shape == (5,)
    # G reads z and a one-hot label: first layer takes z_dim + classes channels.
    assert g.main[0].in_channels == 16 + 10
    # The label changes both networks' outputs.
    other = torch.tensor([1, 4, 0, 5, 2])
    assert not torch.allclose(g(z, other), x)
    g.eval()
    d.eval()
    assert not torch.allclose(d(x, other), d(x, y))
    # The projection term is <embed(y), sum_hw features(x)>.
    h = d.features(x)
    plain = d.main[-1](h).reshape(5)
    assert torch.allclose(d(x, y), plain + (d.embed(y) * h.sum(dim=(2, 3))).sum(1), atol=1e-6)


def test_conditional_models_refuse_missing_or_bad_labels():
    g, d = build_models(M(32, 1, 16, 8, 8, num_classes=3))
    with pytest.raises(ValueError, match="needs class labels"):
        g(torch.randn(2, 16))
    with pytest.raises(ValueError, match="labels of shape"):
        d(torch.randn(2, 1, 32, 32), torch.tensor([0, 1, 2]))
    g0, d0 = build_models(M(32, 1, 16, 8, 8))
    with pytest.raises(ValueError, match="unconditional"):
        g0(torch.randn(2, 16), torch.tensor([0, 1]))


@pytest.mark.parametrize("norm,layer", [("batch", torch.nn.BatchNorm2d), ("layer", torch.nn.GroupNorm), ("none", None)])
def test_discriminator_norm_options(norm, layer):
    d = Discriminator(64, 3, 8, norm=norm)
    kinds = {type(m) for m in d.modules()}
    norms = {torch.nn.BatchNorm2d, torch.nn.GroupNorm} & kinds
    assert norms == ({layer} if layer else set())
    # A per-sample D (no BN): each sample's logit does not depend on the rest of the batch.
    if norm != "batch":
        x = torch.randn(4, 3, 64, 64)
        d.train()
        assert torch.allclose(d(x)[:2], d(x[:2]), atol=1e-6)
    with pytest.raises(ValueError, match="norm"):
        Discriminator(64, 3, 8, norm="instance")


def test_spectral_norm_bounds_every_weight():
    torch.manual_seed(0)
    d = Discriminator(32, 3, 8, norm="none", spectral=True, num_classes=4)
    d.train()
    x = torch.randn(8, 3, 32, 32)
    for _ in range(30):  # power iterations converge over forward passes
        d(x, torch.zeros(8, dtype=torch.long))
    d.eval()
    convs = [m for m in d.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Embedding))]
    assert len(convs) == 5 and all(hasattr(m, "parametrizations") for m in convs)
    for m in convs:
        w = m.weight.flatten(1) if isinstance(m, torch.nn.Conv2d) else m.weight
        assert torch.linalg.matrix_norm(w, ord=2).item() == pytest.approx(1.0, rel=0.02)
