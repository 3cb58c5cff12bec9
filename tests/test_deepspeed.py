"""DeepSpeed ZeRO-1/2 through the real launcher on 2 CPU processes: world size, equal parameters, exact resume.

Only the CPU path (gloo, fp32) is exercised here; bf16 and NCCL are the GPU path of the same code.
The first DeepSpeed start on a machine compiles a small communication extension (about a minute).
"""

from __future__ import annotations

import json
import math
import subprocess

import pytest
import torch

from conftest import REPO, TINY, env, launch_cmd, read_json
from test_train_distributed import newest_checkpoint

pytestmark = pytest.mark.slow
CONFIG = "configs/quickstart.yaml"


def ds_launch(stage: int, overrides: list[str]) -> subprocess.CompletedProcess:
    cmd = launch_cmd(CONFIG, TINY + overrides)
    i = cmd.index("--config_file")
    cmd[i + 1:i + 2] = [str(REPO / "launch" / f"deepspeed_zero{stage}.yaml"), "--num_processes", "2",
                        "--mixed_precision", "no"]
    proc = subprocess.run(cmd, cwd=REPO, env=env(), capture_output=True, text=True, timeout=600)
    if proc.returncode != 0:
        pytest.fail(f"deepspeed launch exited {proc.returncode}\n{proc.stderr[-6000:]}")
    return proc


def engine_states(ckpt) -> dict:
    """Both engines' module weights and every rank's ZeRO optimizer partition."""
    out = {}
    for engine in ("pytorch_model", "pytorch_model_1"):
        for f in sorted((ckpt / engine).glob("*.pt")):
            state = torch.load(f, weights_only=False)
            tensors = state["module"] if "module" in state else state["optimizer_state_dict"]
            out[f"{engine}/{f.name}"] = tensors
    return out


def assert_same(a, b, where=""):
    if isinstance(a, torch.Tensor):
        assert torch.equal(a, b), where
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for k in a:
            assert_same(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same(x, y, f"{where}[{i}]")


def test_zero2_trains_on_two_processes_and_resumes_exactly(tmp_path):
    straight, split = tmp_path / "straight", tmp_path / "split"
    proc = ds_launch(2, [f"run.dir={straight}", "train.kimg=0.128"])
    assert "world size 2 (DistributedType.DEEPSPEED)" in proc.stderr
    ds_launch(2, [f"run.dir={split}", "train.kimg=0.08"])
    proc = ds_launch(2, [f"run.dir={split}", "train.kimg=0.128"])
    assert "resumed from" in proc.stderr

    a, b = newest_checkpoint(straight), newest_checkpoint(split)
    meta_a, meta_b = read_json(a / "meta.json"), read_json(b / "meta.json")
    assert meta_a["world_size"] == meta_b["world_size"] == 2 and meta_a["nimg"] == meta_b["nimg"] == 128
    assert meta_a["param_digests"][0] == meta_a["param_digests"][1]  # equal across ranks
    assert meta_a["param_digests"] == meta_b["param_digests"]  # resume reproduces the straight run
    states_a, states_b = engine_states(a), engine_states(b)
    assert len(states_a) == 6  # 2 engines x (model states + 2 ZeRO partitions)
    assert_same(states_a, states_b)
    stats = [json.loads(line) for line in (straight / "stats.jsonl").read_text().splitlines()]
    assert stats and all(math.isfinite(s["Loss/D"]) and math.isfinite(s["Loss/G"]) for s in stats)
    assert (straight / "samples" / "fakes_000000.128.png").is_file()


def test_zero1_trains_wgan_gp_on_two_processes(tmp_path):
    # WGAN-GP is the hardest case for an engine: the penalty's double backward runs through D's
    # engine, and D's gradients must still be reduced across ranks (else the ranks' D would drift apart).
    proc = ds_launch(1, [f"run.dir={tmp_path}", "train.kimg=0.064", "loss.kind=wgan-gp", "model.d_norm=layer",
                         "loss.real_label=1.0"])
    assert "world size 2 (DistributedType.DEEPSPEED)" in proc.stderr
    meta = read_json(newest_checkpoint(tmp_path) / "meta.json")
    assert meta["world_size"] == 2 and meta["param_digests"][0] == meta["param_digests"][1]
    assert read_json(tmp_path / "status.json")["state"] == "complete"
    stats = [json.loads(line) for line in (tmp_path / "stats.jsonl").read_text().splitlines()]
    assert stats and all(math.isfinite(s["Loss/GP"]) and s["Loss/GP"] > 0 for s in stats)
