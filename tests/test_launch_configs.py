"""Every accelerate config in launch/ parses and asks for the process layout its comment promises."""

from __future__ import annotations

import pytest
from accelerate.commands.config.config_args import load_config_from_file

from conftest import REPO

EXPECTED = {  # file: (distributed_type, machines, processes, mixed precision)
    "cpu.yaml": ("MULTI_GPU", 1, 2, "no"),
    "gpu1.yaml": ("NO", 1, 1, "bf16"),
    "node8_bf16.yaml": ("MULTI_GPU", 1, 8, "bf16"),
    "multinode.yaml": ("MULTI_GPU", 2, 16, "bf16"),
    "deepspeed_zero1.yaml": ("DEEPSPEED", 1, 8, "bf16"),
    "deepspeed_zero2.yaml": ("DEEPSPEED", 1, 8, "bf16"),
}


def test_every_launch_config_is_covered():
    assert sorted(p.name for p in (REPO / "launch").glob("*.yaml")) == sorted(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_launch_config_parses(name):
    cfg = load_config_from_file(str(REPO / "launch" / name))
    dist, machines, procs, precision = EXPECTED[name]
    assert str(cfg.distributed_type).split(".")[-1] == dist
    assert (cfg.num_machines, cfg.num_processes, str(cfg.mixed_precision).split(".")[-1]) == (machines, procs, precision)
    # use_cpu in a launch config makes accelerate start ONE process on CPU; the trainer picks the CPU itself.
    assert not cfg.use_cpu


@pytest.mark.parametrize("stage", [1, 2])
def test_deepspeed_configs_name_their_stage(stage):
    cfg = load_config_from_file(str(REPO / "launch" / f"deepspeed_zero{stage}.yaml"))
    assert cfg.deepspeed_config["zero_stage"] == stage
