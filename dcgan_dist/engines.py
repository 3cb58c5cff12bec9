"""How G and D are wrapped and updated: DDP (the default) or DeepSpeed ZeRO stage 1/2.

DeepSpeed is chosen by the launch config (`distributed_type: DEEPSPEED`, see
launch/deepspeed_zero2.yaml). Two models with two optimizers need one DeepSpeed engine each:
accelerate supports that with two named plugins, selected before each model is prepared, and
each engine does its own backward and step (`accelerator.backward` always drives the first
engine). D is frozen during the G step: otherwise ZeRO-2 fails ("Gradient computed twice for
this partition") and ZeRO-1 silently adds the G step's gradients to D's next update.
"""

from __future__ import annotations

import copy
import os

import torch
from accelerate.utils import DistributedType

from .config import Config, ConfigError

# Launcher variables that describe the DeepSpeed config; we build the config ourselves (one per
# model), and accelerate refuses explicit configs while these are set.
_LAUNCHER_DS_VARS = ("ACCELERATE_DEEPSPEED_ZERO_STAGE", "ACCELERATE_GRADIENT_ACCUMULATION_STEPS",
                     "ACCELERATE_GRADIENT_CLIPPING", "ACCELERATE_CONFIG_DS_FIELDS",
                     "ACCELERATE_DEEPSPEED_OFFLOAD_OPTIMIZER_DEVICE", "ACCELERATE_DEEPSPEED_OFFLOAD_PARAM_DEVICE",
                     "ACCELERATE_DEEPSPEED_ZERO3_INIT", "ACCELERATE_DEEPSPEED_ZERO3_SAVE_16BIT_MODEL")


def deepspeed_requested() -> bool:
    return os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() == "true"


def deepspeed_plugins(cfg: Config, precision: str | None) -> dict:
    """One DeepSpeed plugin per model, from the launcher's ZeRO stage and the run's batch/precision."""
    stage = int(os.environ.get("ACCELERATE_DEEPSPEED_ZERO_STAGE", "2"))
    if stage not in (1, 2):
        raise ConfigError(f"DeepSpeed ZeRO stage {stage} is not supported: stage 3 shards parameters, which the "
                          "per-step sample grid and parameter digests read whole. Use zero_stage 1 or 2.")
    world = int(os.environ.get("WORLD_SIZE", "1"))  # runtime.make_accelerator checked that train.batch divides
    for var in _LAUNCHER_DS_VARS:
        os.environ.pop(var, None)
    try:
        from accelerate.utils import DeepSpeedPlugin

        ds_config = {
            "train_micro_batch_size_per_gpu": cfg.train.batch // world,
            "gradient_accumulation_steps": 1,
            "gradient_clipping": 0.0,
            "zero_optimization": {"stage": stage},
            "bf16": {"enabled": precision == "bf16"},
            "fp16": {"enabled": precision == "fp16", "initial_scale_power": 16},
            "steps_per_print": 1 << 62,  # our own logging reports progress
        }
        return {"gen": DeepSpeedPlugin(hf_ds_config=ds_config), "disc": DeepSpeedPlugin(hf_ds_config=copy.deepcopy(ds_config))}
    except ImportError as e:  # includes PackageNotFoundError for transformers' metadata
        raise ConfigError(f"DeepSpeed through accelerate needs the deepspeed extra ({e}): "
                          "pip install -c constraints.txt -e '.[deepspeed]'") from e


def is_deepspeed(accelerator) -> bool:
    return accelerator.distributed_type == DistributedType.DEEPSPEED


def graph_module(accelerator, model):
    """The module to run for a gradient that is not a training backward (the WGAN-GP input gradient).

    A DeepSpeed engine's forward hooks its outputs so that *any* backward through them ends with the
    engine's gradient reduction; an input-gradient `autograd.grad` would trigger it halfway through
    the D step (ZeRO then fails with an IndexError in its buckets). The engine's inner module builds
    the same graph without the hooks, and the step's one `engine.backward` still reduces every
    weight gradient, the penalty's included. DDP needs no such detour (its reducer hooks the weights'
    gradient accumulation, which `autograd.grad` with respect to the input never reaches)."""
    return model.module if is_deepspeed(accelerator) else model


def prepare(accelerator, G, D, opt_g, opt_d, precision: str | None):
    """Wrap the models for the chosen backend; returns (G, D, opt_g, opt_d, compute dtype of inputs)."""
    if not is_deepspeed(accelerator):
        G, D, opt_g, opt_d = accelerator.prepare(G, D, opt_g, opt_d)
        return G, D, opt_g, opt_d, torch.float32  # autocast (if any) casts inside the forward
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision or "", torch.float32)
    # DeepSpeed casts parameters but not BatchNorm buffers; cast the whole model first so they match.
    G, D = G.to(dtype), D.to(dtype)
    accelerator.state.select_deepspeed_plugin("gen")
    G, opt_g = accelerator.prepare(G, opt_g)
    accelerator.state.select_deepspeed_plugin("disc")
    D, opt_d = accelerator.prepare(D, opt_d)
    return G, D, opt_g, opt_d, dtype


def update(accelerator, model, optimizer, loss: torch.Tensor) -> None:
    """Backward and step for one model, by whichever engine owns it."""
    if is_deepspeed(accelerator):
        model.backward(loss)  # this model's engine, not accelerate's first one
        model.step()  # steps the optimizer and zeroes the gradients
        return
    if accelerator.scaler is not None:  # fp16: accelerate's GradScaler (its inf check reads the device: a sync)
        accelerator.backward(loss)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return
    # The same as accelerator.backward + the wrapped optimizer without gradient accumulation, minus
    # their per-call checks for optional packages (importlib metadata lookups, ~1 ms each on the host).
    loss.backward()
    inner = getattr(optimizer, "optimizer", optimizer)
    inner.step()
    inner.zero_grad(set_to_none=True)
