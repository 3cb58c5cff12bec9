"""One `GANStep` in this process on a tiny model (32x32 gray, width 8): both models learn, nothing
becomes non-finite, the statistics are the ones the loop reads, the rank's noise generator is what
the stabilisers draw from, and a step is a function of the seeds."""

from __future__ import annotations

import pytest
import torch

from dcgan_dist import config
from dcgan_dist.ema import build_ema
from dcgan_dist.models import build_models
from dcgan_dist.optim import build_optimizers
from dcgan_dist.step import STEP_STATS, GANStep

BASE = ["model.resolution=32", "model.channels=1", "model.g_width=8", "model.d_width=8", "model.z_dim=16",
        "train.batch=8", "ema.half_life_kimg=0.01", "ema.rampup=0", "run.dir=unused"]
# The stabilisers that draw from the noise generator (DiffAugment, label noise, the penalty's interpolation).
CASES = {
    "default": [],
    "stabilisers+conditional": ["augment.policy=color,translation,cutout", "loss.kind=lsgan", "loss.real_label=0.9",
                                "loss.label_flip=0.2", "model.num_classes=10", "model.d_spectral=true",
                                "model.d_dropout=0.2"],
    "wgan-gp+augment": ["loss.kind=wgan-gp", "model.d_norm=layer", "augment.policy=translation,cutout"],
}
DRAWS_NOISE = {"default": False, "stabilisers+conditional": True, "wgan-gp+augment": True}


def build(accelerator, overrides: list[str], seed: int = 0):
    """The step with its models, optimizers, EMA and noise generator, as the trainer wires them (world size 1)."""
    cfg = config.load(None, BASE + overrides)
    torch.manual_seed(seed)
    G, D = build_models(cfg.model)
    opt_g, opt_d = build_optimizers(cfg, G, D)
    G, D, opt_g, opt_d = accelerator.prepare(G, D, opt_g, opt_d)
    ema = build_ema(accelerator.unwrap_model(G), cfg, cfg.train.batch, accelerator.device)
    noise = torch.Generator(device=accelerator.device).manual_seed(seed + 1)
    return cfg, GANStep(cfg, accelerator, G, D, opt_g, opt_d, noise, ema), (G, D, ema), noise


def inputs(cfg, seed: int = 0):
    gen = torch.Generator().manual_seed(100 + seed)
    n = cfg.train.batch
    real = torch.rand(n, 1, 32, 32, generator=gen) * 2 - 1
    z = torch.randn(n, cfg.model.z_dim, generator=gen)
    labels = torch.randint(0, 10, (n,), generator=gen) if cfg.model.num_classes else None
    return real, z, labels


def snapshot(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


@pytest.mark.parametrize("case", list(CASES))
def test_one_step_trains_both_models_and_reports_its_statistics(accelerator, case):
    cfg, step, (G, D, ema), noise = build(accelerator, CASES[case])
    real, z, labels = inputs(cfg)
    g0, d0, e0 = (snapshot(accelerator.unwrap_model(m)) for m in (G, D, ema))
    noise0 = noise.get_state()

    stats = step(real, z, labels, cfg.train.batch)

    assert stats.shape == (len(STEP_STATS),) and not stats.requires_grad
    assert torch.isfinite(stats).all(), dict(zip(STEP_STATS, stats.tolist()))
    values = dict(zip(STEP_STATS, stats.tolist()))
    assert (values["Loss/GP"] > 0) == (cfg.loss.kind == "wgan-gp")
    if cfg.loss.kind == "nonsaturating":  # D's outputs reported as probabilities
        assert 0 < values["D/real"] < 1 and 0 < values["D/fake"] < 1
    assert values["Diversity/real"] > 0 and values["Diversity/fake"] > 0

    for name, model, before in (("G", G, g0), ("D", D, d0), ("EMA of G", ema, e0)):
        after = accelerator.unwrap_model(model).state_dict()
        assert all(torch.isfinite(v).all() for v in after.values() if v.is_floating_point()), name
        changed = [k for k in before if not torch.equal(before[k], after[k])]
        assert changed, f"{name} did not change in a training step"
    # Every weight of G and D that took part in the step moved (the frozen D of the G step is unfrozen again).
    params_g = dict(accelerator.unwrap_model(G).named_parameters())
    params_d = dict(accelerator.unwrap_model(D).named_parameters())
    assert all(p.requires_grad for p in params_d.values())
    unchanged = [k for k, p in params_d.items() if torch.equal(p.detach(), d0[k])]
    unchanged += [k for k, p in params_g.items() if torch.equal(p.detach(), g0[k])]
    assert not unchanged, unchanged
    # The stabilisers draw from the rank's noise generator (and nothing else does: the latents come in).
    assert (not torch.equal(noise.get_state(), noise0)) == DRAWS_NOISE[case]


@pytest.mark.parametrize("case", ["default", "stabilisers+conditional"])
def test_steps_are_a_function_of_the_seeds(accelerator, case):
    runs = []
    for seed in (0, 0, 1):
        cfg, step, (G, D, ema), noise = build(accelerator, CASES[case], seed=seed)
        stats = [step(*inputs(cfg, i), cfg.train.batch * (i + 1)) for i in range(3)]
        runs.append((torch.stack(stats), {**{f"G.{k}": v for k, v in snapshot(accelerator.unwrap_model(G)).items()},
                                          **{f"D.{k}": v for k, v in snapshot(accelerator.unwrap_model(D)).items()},
                                          **{f"ema.{k}": v for k, v in snapshot(ema).items()}},
                     noise.get_state()))
    (s_a, w_a, n_a), (s_b, w_b, n_b), (s_c, w_c, _) = runs
    assert torch.equal(s_a, s_b) and torch.equal(n_a, n_b)
    assert w_a.keys() == w_b.keys() and all(torch.equal(w_a[k], w_b[k]) for k in w_a)
    assert not torch.equal(s_a, s_c) and any(not torch.equal(w_a[k], w_c[k]) for k in w_a)


@pytest.mark.parametrize("mode", ["reduce-overhead", "max-autotune"])
def test_cuda_graph_compile_modes_are_refused_on_a_gpu_with_the_working_modes(mode):
    """On a GPU these modes fail in the first step (CUDA-graph outputs overwritten between G's forward and
    its update; seen on an H200): refused before any step, naming the key and the modes that work."""
    from types import SimpleNamespace

    from dcgan_dist.config import ConfigError
    from dcgan_dist.step import compiled

    gpu = SimpleNamespace(device=torch.device("cuda"), distributed_type=None)
    with pytest.raises(ConfigError, match=f"train.compile={mode}.*train.compile=default or max-autotune-no-cudagraphs"):
        compiled(gpu, torch.nn.Identity(), torch.nn.Identity(), mode)
    cpu = SimpleNamespace(device=torch.device("cpu"), distributed_type=None)
    G, D = compiled(cpu, torch.nn.Identity(), torch.nn.Identity(), mode)  # no CUDA graphs on a CPU: allowed
    assert G is not None and D is not None
