"""The training step never makes the host wait for the device.

On a GPU a 64x64 DCGAN step is far under a millisecond of arithmetic, so one `.item()` or one
blocking host->device copy per step (the host then waits for the whole queue to drain) costs more
than the step. These tests run real training steps (`Loop.train_step`: latents, the batch's
hand-over, GANStep with its losses, DiffAugment, label noise, penalty, EMA, statistics) under
`SyncGuard`, which fails on:

- a synchronising op: `aten._local_scalar_dense` (`.item()`, `float()`, `bool()`), `nonzero`,
  `masked_select`, `unique`, ... (except torch.optim's host-side step counters, which are CPU
  tensors by design and never touch the device);
- a tensor built on the host: the guard makes `meta` the default device, so any factory call that
  does not name the training device (the `torch.full(...)` later copied `.to(device)` pattern)
  yields a meta tensor, which the guard reports by op name;
- a blocking transfer: `.to(<device>)` without `non_blocking=True`, `.cpu()`, `.numpy()`, `.tolist()`.

On a CPU-only machine host and device are the same, so these rules are what can be checked; where
CUDA is present the same steps also run under `torch.cuda.set_sync_debug_mode("error")`, which
catches every synchronisation the driver sees. Negative controls prove the guard can fail.
"""

from __future__ import annotations

import sys

import pytest
import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode

from dcgan_dist import config, runtime
from dcgan_dist.checkpoint import CheckpointManager, Progress
from dcgan_dist.grid import SampleGrid
from dcgan_dist.loop import Loop
from dcgan_dist.models import arch_signature
from dcgan_dist.losses import d_targets
from dcgan_dist.train import build_training

aten = torch.ops.aten
SYNC_OPS = {aten._local_scalar_dense, aten.nonzero, aten.masked_select, aten.unique_consecutive,
            aten._unique2, aten.unique_dim, aten.is_nonzero, aten.equal, aten.bincount}
HOST_METHODS = {torch.Tensor.cpu, torch.Tensor.numpy, torch.Tensor.tolist, torch.Tensor.item}


class SyncViolation(AssertionError):
    pass


def _in_optimizer() -> bool:
    """torch.optim keeps Adam's step counters on the host (non-capturable): their .item() reads host memory."""
    f = sys._getframe(2)
    while f is not None:
        if "/torch/optim/" in f.f_code.co_filename:
            return True
        f = f.f_back
    return False


class _Dispatch(TorchDispatchMode):
    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func.overloadpacket in SYNC_OPS and not _in_optimizer():
            raise SyncViolation(f"synchronising op {func} in the training step")
        if func.overloadpacket in (aten.index, aten.index_put, aten.index_put_) and any(
                isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in args[1]):
            raise SyncViolation(f"boolean-mask indexing ({func}): its output size depends on device values (nonzero)")
        if func.overloadpacket in (aten._to_copy, aten.copy_):
            src = args[1] if func.overloadpacket is aten.copy_ else args[0]
            dst = args[0].device if func.overloadpacket is aten.copy_ else kwargs.get("device", src.device)
            if isinstance(src, torch.Tensor) and torch.device(dst) != src.device and src.dim() > 0 or (
                    isinstance(src, torch.Tensor) and src.device.type == "meta"):
                raise SyncViolation(f"{func} moves a tensor from {src.device} to {dst} in the training step")
        out = func(*args, **kwargs)
        outs = out if isinstance(out, (tuple, list)) else (out,)
        if any(isinstance(o, torch.Tensor) and o.device.type == "meta" for o in outs):
            raise SyncViolation(f"{func} built a tensor without naming the training device (it would be built "
                                "on the host and copied to the GPU every step)")
        return out


class _Function(TorchFunctionMode):
    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in HOST_METHODS and not _in_optimizer():
            raise SyncViolation(f"Tensor.{func.__name__}() in the training step")
        if func is torch.Tensor.to and not kwargs.get("non_blocking", False):
            named = [a for a in (*args[1:], kwargs.get("device")) if isinstance(a, (torch.device, str))]
            if named:
                raise SyncViolation(f"blocking Tensor.to({named[0]}) in the training step: use non_blocking=True "
                                    "from pinned memory, or create the tensor on the device")
        return func(*args, **kwargs)


class SyncGuard:
    """`with SyncGuard(): ...` fails with SyncViolation at the first host<->device synchronisation."""

    def __enter__(self):
        self._modes = [_Function(), torch.device("meta"), _Dispatch()]
        for m in self._modes:
            m.__enter__()
        return self

    def __exit__(self, *exc):
        for m in reversed(self._modes):
            m.__exit__(*exc)
        return False


# Every stabiliser that draws random numbers or keeps state, and the penalty (a double backward).
CASES = {
    "default": [],
    "stabilisers+conditional": ["augment.policy=color,translation,cutout", "loss.kind=lsgan", "loss.real_label=0.9",
                                "loss.label_flip=0.2", "optim.schedule=exp", "model.num_classes=10",
                                "model.d_spectral=true", "model.d_dropout=0.2"],
    "wgan-gp+augment": ["loss.kind=wgan-gp", "model.d_norm=layer", "augment.policy=color,translation,cutout"],
    "adaptive": ["augment.policy=color,translation,cutout", "augment.adaptive=true", "augment.speed_kimg=0.1"],
    "hinge+r1+sn": ["loss.kind=hinge", "loss.r1_gamma=1", "model.d_norm=none", "model.d_spectral=true",
                    "optim.d_beta1=0", "optim.g_beta1=0"],
    "bf16": ["train.mixed_precision=bf16", "augment.policy=translation,cutout", "loss.real_label=0.9"],
}
# data.workers as the trainer resolves it before anything records it (build_loop skips the loader).
BASE = ["model.resolution=32", "model.channels=1", "model.g_width=8", "model.d_width=8", "model.z_dim=16",
        "train.batch=8", "ema.half_life_kimg=1", "ema.bn_batches=1", "data.workers=2"]


def build_loop(overrides: list[str], device: str = "cpu", run_dir: str = "unused") -> tuple[Loop, list[dict]]:
    """The trainer's real objects (models, optimizers, EMA, noise generator, GANStep, stats) in this
    process, world size 1, with a few host batches as the loader would hand them over."""
    cfg = config.load(None, BASE + overrides + [f"run.dir={run_dir}"])
    AcceleratorState._reset_state(True)
    accelerator, precision = runtime.make_accelerator(cfg) if device == "cpu" else (
        Accelerator(mixed_precision=None if cfg.train.mixed_precision == "auto" else cfg.train.mixed_precision), None)
    models = build_training(cfg, accelerator, precision or "no")
    gen = torch.Generator().manual_seed(0)
    pin = accelerator.device.type == "cuda"
    batches = [{"image": torch.randint(0, 256, (cfg.train.batch, 1, 32, 32), dtype=torch.uint8, generator=gen),
                "label": torch.randint(0, 10, (cfg.train.batch,), generator=gen), "bad": 0} for _ in range(4)]
    if pin:
        batches = [{**b, "image": b["image"].pin_memory(), "label": b["label"].pin_memory()} for b in batches]
    checkpoints = CheckpointManager(cfg, accelerator, arch_signature(cfg.model), "ema" if models.ema else "G")
    loop = Loop(cfg, accelerator, models, iter(()), runtime.noise_generator(cfg.seed, accelerator), Progress(),
                stop=None, tracker=None, checkpoints=checkpoints, grid=SampleGrid.from_config(cfg))
    return loop, batches


@pytest.fixture(autouse=True)
def _fresh_accelerator():
    yield
    AcceleratorState._reset_state(True)


@pytest.mark.parametrize("case", list(CASES))
def test_training_steps_make_no_host_device_sync(case):
    loop, batches = build_loop(CASES[case])
    for b in batches[:2]:  # the first steps create Adam's state lazily (outside the hot path)
        loop.train_step(b)
    with SyncGuard():
        for b in batches[2:] * 3:
            loop.train_step(b)
    assert loop.progress.step == 8 and loop.stats.steps == 8
    values, _ = loop.stats.reduce(loop.accelerator)  # the tick's one sync, outside the guard
    assert all(torch.isfinite(torch.tensor(v)) for v in values.values()), values


def test_guard_catches_an_item_call():
    x = torch.ones(3)
    with pytest.raises(SyncViolation, match="_local_scalar_dense|item"), SyncGuard():
        float(x.sum().item())


def test_guard_catches_a_tensor_built_on_the_host():
    # The pre-fix target construction: built on the host, then copied to the device each step.
    with pytest.raises(SyncViolation, match="without naming the training device"), SyncGuard():
        torch.full((4,), 0.9).to("cpu", non_blocking=True)


def test_guard_catches_a_blocking_copy_and_a_data_dependent_shape():
    x = torch.ones(3)
    with pytest.raises(SyncViolation, match="blocking Tensor.to"), SyncGuard():
        x.to("cpu")
    with pytest.raises(SyncViolation, match="nonzero"), SyncGuard():
        torch.nonzero(x)
    with pytest.raises(SyncViolation, match="nonzero"), SyncGuard():
        x[x > 0]  # boolean indexing: the output size depends on device values


def test_guard_accepts_device_targets():
    with SyncGuard():
        real_t, fake_t = d_targets(4, 4, 0.9, 0.2, torch.Generator(), device=torch.device("cpu"))
    assert real_t.shape == fake_t.shape == (4,)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (benchmarks/gpu_check.sh runs it)")
@pytest.mark.parametrize("case", list(CASES))
def test_training_steps_do_not_sync_a_cuda_device(case):
    loop, batches = build_loop(CASES[case], device="cuda")
    assert loop.accelerator.device.type == "cuda" and loop.noise.device.type == "cuda"
    for b in batches[:2]:
        loop.train_step(b)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for b in batches[2:] * 3:
            loop.train_step(b)
    finally:
        torch.cuda.set_sync_debug_mode(0)
    values, _ = loop.stats.reduce(loop.accelerator)
    assert all(torch.isfinite(torch.tensor(v)) for v in values.values()), values
