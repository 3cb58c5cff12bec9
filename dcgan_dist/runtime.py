"""Process-level concerns: the accelerator, the world-size guard, stop signals and a clean exit."""

from __future__ import annotations

import gc
import logging
import os
import signal
import warnings
from typing import Callable, Optional, TypeVar

import torch
import torch.distributed as dist
from accelerate import Accelerator
from accelerate.utils import DistributedDataParallelKwargs, InitProcessGroupKwargs, broadcast_object_list, gather_object

from . import engines
from .config import Config, ConfigError

log = logging.getLogger("dcgan_dist")
T = TypeVar("T")

# torch deprecates `broadcast_buffers` for `forward_sync_buffers`, which accelerate cannot pass yet;
# the old flag still means exactly what we want (see make_accelerator), so its notice is noise.
warnings.filterwarnings("ignore", message="`broadcast_buffers` is deprecated", category=FutureWarning)


# train.mixed_precision's values; "auto" defers to the accelerate launch config.
MIXED_PRECISION = ("auto", "no", "bf16", "fp16")


def make_accelerator(cfg: Optional[Config] = None) -> tuple[Accelerator, str]:
    """The accelerator for this process and its precision (no | bf16 | fp16), refusing the set-ups
    that silently do the wrong thing. Without a config (evaluation): DDP's defaults, the launch
    config's precision, no DeepSpeed."""
    on_cpu = not torch.cuda.is_available()
    if on_cpu:  # DeepSpeed (imported by accelerate's checkpointing) would warn that it fell back to CPU
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    if cfg is None:
        accelerator = Accelerator(cpu=on_cpu)
        _check_world_size(accelerator)
        return accelerator, str(accelerator.mixed_precision)
    precision = None if cfg.train.mixed_precision == "auto" else cfg.train.mixed_precision
    if on_cpu and (precision or os.environ.get("ACCELERATE_MIXED_PRECISION")) == "fp16":
        raise ConfigError("train.mixed_precision=fp16 needs a GPU: on CPU accelerate silently trains in fp32. "
                          "Use train.mixed_precision=bf16 (CPU autocast) or no.")
    batch_per_rank(cfg, int(os.environ.get("WORLD_SIZE", "1")))  # before any process group work
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
    _check_world_size(accelerator)
    return accelerator, precision


def _check_world_size(accelerator: Accelerator) -> None:
    expected = int(os.environ.get("WORLD_SIZE", "1"))
    if accelerator.num_processes != expected:
        raise RuntimeError(
            f"accelerate started {accelerator.num_processes} process(es) in this group but the launcher set "
            f"WORLD_SIZE={expected}: the processes are not working together. On CPU use "
            "`accelerate launch --config_file launch/cpu.yaml` (MULTI_GPU + num_processes), not --cpu/--multi_gpu flags.")


def batch_per_rank(cfg: Config, world_size: int) -> int:
    """Each rank's share of the global `train.batch`; a batch that does not divide is a ConfigError."""
    if cfg.train.batch % world_size:
        raise ConfigError(f"train.batch={cfg.train.batch} is the global batch and must divide by the "
                          f"{world_size} processes")
    return cfg.train.batch // world_size


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
    """SIGTERM / SIGUSR1, or the death of the launcher, ask for a checkpoint at the next step boundary
    and a clean exit.

    The launcher (`accelerate launch`, torchrun) is each rank's parent. When it is killed (OOM
    killer, `kill -9`, a lost login shell) nobody would ever stop the ranks: they would train on as
    orphans, and a re-run would put a second training on the same run.dir. A changed parent PID
    (the orphan is re-parented) is noticed at the next step, for the price of one getppid() call,
    and handled like SIGTERM. Only under a launcher: a plain `python -m dcgan_dist.train` may
    outlive its shell (nohup) on purpose.

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
        self._parent = os.getppid() if launched_by_launcher() else None

    def _check_parent(self) -> None:
        if self._parent is not None and not self.local and os.getppid() != self._parent:
            log.warning("the launcher (PID %d) is gone: stopping as for SIGTERM", self._parent)
            self.local, self.signame = True, "launcher exited"

    def _handle(self, signum, _frame) -> None:
        self.local = True
        self.signame = signal.Signals(signum).name

    def poll(self) -> bool:
        """Call once per step on every rank; True on all ranks at once when any rank was signalled."""
        self._check_parent()
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


def peer_lost(error: BaseException) -> bool:
    """A collective that failed because another rank is gone (gloo: "Connection closed by peer")."""
    text = str(error)
    return isinstance(error, getattr(dist, "DistError", ())) or any(
        s in text for s in ("Connection closed by peer", "Connection reset by peer", "Broken pipe"))


def launched_by_launcher() -> bool:
    """torchrun sets the first two for its workers (its agent is their parent); `accelerate launch`
    sets the third also for a single process, which it starts as its child."""
    return any(k in os.environ for k in ("TORCHELASTIC_RUN_ID", "LOCAL_RANK", "ACCELERATE_DYNAMO_BACKEND"))


def shutdown(accelerator: Accelerator, together: bool = True) -> None:
    """End the process group without the gloo crash at interpreter exit.

    Rank 0 sometimes aborts after training ("terminate called without an active exception") when
    a gloo thread frees a tensor during interpreter shutdown. Freeing everything the accelerator
    holds and collecting garbage before ending the process group avoids it; the caller must have
    dropped its own references to the prepared models, optimizers and loaders first. `together`:
    every rank leaves through here at the same point (a barrier first); a rank leaving alone on its
    own error must not wait for the others.
    """
    if together:
        accelerator.wait_for_everyone()
    accelerator.free_memory()  # before end_training: under DeepSpeed it fails afterwards
    gc.collect()
    accelerator.end_training()
    if dist.is_initialized():
        dist.destroy_process_group()


def agree(accelerator, fn: Callable[[], T], errors: tuple[type[BaseException], ...], only_main: bool = False) -> T:
    """Run `fn` (on every rank, or on the main process only), then make every rank agree on the outcome.

    A user error raised on one rank must not leave the others waiting in the next collective until
    a gloo timeout or a "connection closed" traceback: every rank raises the same error, with the
    same message, at the same point. With `only_main`, fn's result is shared with every rank (e.g.
    the checkpoint rank zero chose after verifying it). The raised errors carry `.shared = True`:
    the trainer then reports them once, on rank zero.
    """
    result, failure = None, None
    if accelerator.is_main_process or not only_main:
        try:
            result = fn()
        except errors as e:
            failure = (type(e), str(e))
    if accelerator.num_processes > 1:
        payload = [(failure, result if only_main else None)]
        if only_main:
            broadcast_object_list(payload, from_process=0)
            failures = [payload[0][0]]
            result = payload[0][1]
        else:
            failures = gather_object([failure])
        failure = next((f for f in failures if f is not None), None)
    if failure is not None:
        cls, message = failure
        try:
            error = cls(message)
        except Exception:  # an exception class with another constructor: keep the message
            error = RuntimeError(message)
        error.shared = True
        raise error
    return result
