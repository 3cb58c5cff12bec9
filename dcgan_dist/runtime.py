"""Process-level concerns: the accelerator, the world-size guard, stop signals and a clean exit."""

from __future__ import annotations

import gc
import logging
import os
import signal
import warnings
from typing import Optional

import torch
import torch.distributed as dist
from accelerate import Accelerator
from accelerate.utils import DistributedDataParallelKwargs, InitProcessGroupKwargs

from . import engines
from .config import Config, ConfigError

log = logging.getLogger("dcgan_dist")

# torch deprecates `broadcast_buffers` for `forward_sync_buffers`, which accelerate cannot pass yet;
# the old flag still means exactly what we want (see make_accelerator), so its notice is noise.
warnings.filterwarnings("ignore", message="`broadcast_buffers` is deprecated", category=FutureWarning)


def make_accelerator(cfg: Config) -> tuple[Accelerator, str]:
    """The accelerator for this process and its precision (no | bf16 | fp16), refusing the set-ups
    that silently do the wrong thing."""
    on_cpu = not torch.cuda.is_available()
    if on_cpu:  # DeepSpeed (imported by accelerate's checkpointing) would warn that it fell back to CPU
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    precision = None if cfg.train.mixed_precision == "auto" else cfg.train.mixed_precision
    if on_cpu and (precision or os.environ.get("ACCELERATE_MIXED_PRECISION")) == "fp16":
        raise ConfigError("train.mixed_precision=fp16 needs a GPU: on CPU accelerate silently trains in fp32. "
                          "Use train.mixed_precision=bf16 (CPU autocast) or no.")
    if engines.deepspeed_requested():
        precision = precision or os.environ.get("ACCELERATE_MIXED_PRECISION", "no")
        os.environ.pop("ACCELERATE_MIXED_PRECISION", None)  # carried by the DeepSpeed config instead
        accelerator = Accelerator(
            # Not cpu=True: that silently turns DeepSpeed off. DeepSpeed finds the CPU by itself, but
            # without an explicit gloo group every rank believes it is rank 0.
            deepspeed_plugins=engines.deepspeed_plugins(cfg, precision),
            kwargs_handlers=[InitProcessGroupKwargs(backend="gloo")] if on_cpu else [],
        )
    else:
        accelerator = Accelerator(
            # Without cpu=True, a 2-process CPU launch runs two independent world-size-1 trainings.
            cpu=on_cpu,
            mixed_precision=precision,
            # BatchNorm statistics stay per rank: re-broadcasting rank 0's buffers every forward costs
            # a collective per forward and is not what Radford's per-GPU BatchNorm does.
            kwargs_handlers=[DistributedDataParallelKwargs(broadcast_buffers=False)],
        )
        precision = str(accelerator.mixed_precision)
    expected = int(os.environ.get("WORLD_SIZE", "1"))
    if accelerator.num_processes != expected:
        raise RuntimeError(
            f"accelerate started {accelerator.num_processes} process(es) in this group but the launcher set "
            f"WORLD_SIZE={expected}: the processes are not training together. On CPU use "
            "`accelerate launch --config_file launch/cpu.yaml` (MULTI_GPU + num_processes), not --cpu/--multi_gpu flags.")
    return accelerator, precision


def noise_generator(seed: int, accelerator) -> torch.Generator:
    """This rank's generator for every per-step draw (latents, DiffAugment, label noise, the penalty's
    interpolation), on the training device so that no draw is made on the host and copied over.
    Seeded per rank (set_seed seeds every rank alike); its state goes into each checkpoint per rank."""
    return torch.Generator(device=accelerator.device).manual_seed(seed * 65_536 + 1 + accelerator.process_index)


def restore_noise(noise: torch.Generator, state: torch.Tensor, checkpoint) -> None:
    """Set the rank's generator from a checkpoint. A state from another kind of device (a CPU run
    resumed on a GPU: Mersenne Twister vs Philox) cannot be set; training then continues correctly
    with the freshly seeded generator, which only loses the bit-exact replay of the noise."""
    try:
        noise.set_state(state)
    except RuntimeError as e:
        log.warning("the noise generator state in %s is for another device than %s (%s): continuing with a "
                    "freshly seeded one, so the resumed run draws different noise than an uninterrupted one",
                    checkpoint, noise.device, e)


class StopRequest:
    """SIGTERM / SIGUSR1 ask for a checkpoint at the next step boundary and a clean exit.

    Signals can reach some ranks and not others, so ranks agree through a small all-reduce on a
    CPU (gloo) group: it never syncs the GPU, and it is started one step and waited on the next,
    so its latency hides behind a training step. Every rank sees the same answer at the same step.
    """

    SIGNALS = (signal.SIGTERM, signal.SIGUSR1)

    def __init__(self, world_size: int):
        self.local = False
        self.signame: Optional[str] = None
        self._group = dist.new_group(backend="gloo") if world_size > 1 and dist.is_initialized() else None
        self._pending = None
        self._previous = {s: signal.signal(s, self._handle) for s in self.SIGNALS}

    def _handle(self, signum, _frame) -> None:
        self.local = True
        self.signame = signal.Signals(signum).name

    def poll(self) -> bool:
        """Call once per step on every rank; True on all ranks at once when any rank was signalled."""
        if self._group is None:
            return self.local
        stop = False
        if self._pending is not None:
            work, flag = self._pending
            work.wait()
            stop = bool(flag.item())  # a CPU tensor: no device sync
        if not stop:
            flag = torch.tensor([int(self.local)], dtype=torch.int32)
            self._pending = (dist.all_reduce(flag, op=dist.ReduceOp.MAX, group=self._group, async_op=True), flag)
        else:
            self._pending = None
        return stop

    def close(self) -> None:
        if self._pending is not None:
            self._pending[0].wait()
            self._pending = None
        for s, handler in self._previous.items():
            signal.signal(s, handler)


def shutdown(accelerator: Accelerator) -> None:
    """End the process group without the gloo crash at interpreter exit.

    Rank 0 sometimes aborts after training ("terminate called without an active exception") when
    a gloo thread frees a tensor during interpreter shutdown. Freeing everything the accelerator
    holds and collecting garbage before ending the process group avoids it; the caller must have
    dropped its own references to the prepared models, optimizers and loaders first.
    """
    accelerator.wait_for_everyone()
    accelerator.free_memory()  # before end_training: under DeepSpeed it fails afterwards
    gc.collect()
    accelerator.end_training()
    if dist.is_initialized():
        dist.destroy_process_group()
