"""slurm/train.sbatch and slurm/sweep.sh under a real Slurm on this machine (CPU only).

tests/slurm/start-local-slurm.sh installs (apt-get, when missing), configures and starts munged,
slurmctld and one slurmd per emulated node; these tests skip when Slurm cannot be installed. The
daemons use their own directory and ports (not the shared script's defaults), run jobs as root in
the repository, and are stopped at the end of the session. Tests run in file order: the one-node
tests first, then the two-node one (switching costs a daemon restart).
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Optional

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from conftest import REPO, TINY, env, read_json
from dcgan_dist import tracking

SCRIPTS = [REPO / "slurm" / "train.sbatch", REPO / "slurm" / "sweep.sh", *sorted((REPO / "tests" / "slurm").glob("*.sh"))]
START = REPO / "tests" / "slurm" / "start-local-slurm.sh"
SLURM_ROOT = Path(tempfile.gettempdir()) / "dcgan-dist-test-slurm"
SLURM_PORT = 6917  # the shared script's instance (6817) may run beside this one
CONFIG = "configs/quickstart.yaml"
FINAL_STATES = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "BOOT_FAIL",
                "DEADLINE", "PREEMPTED"}
# Each job asks for one CPU and no GPU (the scripts' defaults are for GPU clusters).
CPU_JOB = ["--gpus-per-node=0", "--cpus-per-task=1"]


def test_scripts_are_shellcheck_clean():
    shellcheck = shutil.which("shellcheck")
    if shellcheck is None:
        pytest.skip("shellcheck is not installed (Debian: apt-get install shellcheck)")
    proc = subprocess.run([shellcheck, "--shell=bash", *map(str, SCRIPTS)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


class LocalSlurm:
    def __init__(self):
        self.conf = SLURM_ROOT / "etc" / "slurm.conf"
        self.nodes: Optional[int] = None
        self.unavailable: Optional[str] = None  # why Slurm cannot be installed: skip without retrying

    def _script(self, action: str, nodes: int = 1) -> subprocess.CompletedProcess:
        e = {**os.environ, "SLURM_LOCAL_ROOT": str(SLURM_ROOT), "SLURM_LOCAL_PORT": str(SLURM_PORT),
             "SLURM_LOCAL_NODES": str(nodes)}
        return subprocess.run(["bash", str(START), action], env=e, capture_output=True, text=True, timeout=600)

    def ensure(self, nodes: int) -> None:
        """Daemons up with `nodes` emulated nodes (restarts them when the count changes)."""
        if self.unavailable:
            pytest.skip(self.unavailable)
        if self.nodes == nodes:
            return
        proc = self._script("start", nodes)
        if proc.returncode != 0:
            if not (shutil.which("slurmctld") and shutil.which("sbatch")):
                self.unavailable = f"cannot install Slurm (apt-get): {proc.stderr.strip()[-500:]}"
                pytest.skip(self.unavailable)
            pytest.fail(f"local Slurm did not start:\n{proc.stderr[-3000:]}")
        self.nodes = nodes

    def stop(self) -> None:
        if self.nodes is not None:
            self._script("stop")

    def env(self) -> dict:
        """The job's environment: the venv's python and accelerate first on PATH, the session's data cache."""
        e = env()
        e["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{e.get('PATH', '')}"
        e["SLURM_CONF"] = str(self.conf)
        return e

    def run(self, *cmd: str) -> subprocess.CompletedProcess:
        return subprocess.run(list(cmd), cwd=REPO, env=self.env(), capture_output=True, text=True, timeout=60)

    def sbatch(self, *args: str) -> str:
        proc = self.run("sbatch", "--parsable", "--export=ALL", *args)
        assert proc.returncode == 0, proc.stderr
        return proc.stdout.strip().split(";")[0]

    def jobs(self, job: str) -> list[dict]:
        """`scontrol show job` records (one per array task once they started) as dicts."""
        out = self.run("scontrol", "-o", "show", "job", job).stdout
        return [dict(f.split("=", 1) for f in line.split() if "=" in f) for line in out.splitlines() if line.strip()]

    def wait(self, job: str, timeout: float, log: Optional[Path] = None,
             done: Callable[[list[dict]], bool] = lambda recs: all(r["JobState"] in FINAL_STATES for r in recs)
             ) -> list[dict]:
        t0 = time.time()
        while True:
            recs = self.jobs(job)
            if recs and done(recs):
                return recs
            if time.time() - t0 > timeout:
                pytest.fail(f"job {job} not done after {timeout:.0f} s: {recs}\n{self.diagnostics(log)}")
            time.sleep(1)

    def diagnostics(self, log: Optional[Path] = None) -> str:
        parts = []
        for p in [log, SLURM_ROOT / "log" / "slurmctld.log"]:
            if p is not None and p.is_file():
                parts.append(f"--- {p} (tail)\n{p.read_text(errors='replace')[-4000:]}")
        return "\n".join(parts)


@pytest.fixture(scope="session")
def slurm():
    if os.geteuid() != 0:
        pytest.skip("the local Slurm needs root (it installs packages and runs the daemons as root)")
    from dcgan_dist.data.locate import embedded_shards

    embedded_shards("digits", 32, 1)  # written once here rather than raced for by the first jobs
    s = LocalSlurm()
    yield s
    s.stop()


def _log_text(path: Path) -> str:
    return path.read_text(errors="replace") if path.is_file() else ""


def _scalars(run_dir: Path, tag: str) -> list[float]:
    events = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
    events.Reload()
    return [e.value for e in events.Scalars(tag)] if tag in events.Tags()["scalars"] else []


def _hparams(run_dir: Path) -> dict:
    from tensorboard.plugins.hparams import plugin_data_pb2

    events = EventAccumulator(str(run_dir))
    events.Reload()
    content = events.PluginTagToContent("hparams").get("_hparams_/session_start_info")
    assert content, f"no TensorBoard hparams in {run_dir}"
    start = plugin_data_pb2.HParamsPluginData.FromString(content).session_start_info
    return {k: v.number_value if v.HasField("number_value") else v.string_value for k, v in start.hparams.items()}


def _wait_for_ticks(slurm: LocalSlurm, job: str, stats: Path, log: Path, ticks: int = 2) -> None:
    """Until the job's run has logged `ticks` ticks: it is training, with its stop handler installed."""
    t0 = time.time()
    while not (stats.is_file() and len(stats.read_text().splitlines()) >= ticks):
        if time.time() - t0 > 180 or not any(r["JobState"] in ("PENDING", "RUNNING") for r in slurm.jobs(job)):
            pytest.fail(f"no training ticks from job {job}\n{slurm.diagnostics(log)}")
        time.sleep(0.2)


def _newest_checkpoint(run_dir: Path) -> Path:
    return sorted(p for p in (run_dir / "checkpoints").iterdir() if not p.name.startswith("."))[-1]


@pytest.mark.slow
def test_sweep_array_trains_every_combination_and_the_report_lists_them(slurm, tmp_path):
    slurm.ensure(1)
    root = tmp_path / "runs" / "tiny"
    spec = tmp_path / "tiny.yaml"
    spec.write_text(json.dumps({  # JSON is YAML
        "name": "tiny", "config": str(REPO / CONFIG), "root": str(root),
        "overrides": [*TINY, "train.kimg=0.064"],
        "grid": {"optim.g_lr": [1.0e-4, 2.0e-4]},
    }))
    # Index 2 is outside the 2-combination grid: that task must fail, saying so.
    job = slurm.sbatch("--array=0-2", *CPU_JOB, f"--output={tmp_path}/%A_%a.out", "slurm/sweep.sh", str(spec))
    recs = slurm.wait(job, 240, tmp_path / f"{job}_0.out")
    by_task = {r["ArrayTaskId"]: r for r in recs}
    logs = {i: _log_text(tmp_path / f"{job}_{i}.out") for i in "012"}
    assert set(by_task) == {"0", "1", "2"}, recs
    for i in "01":
        assert by_task[i]["JobState"] == "COMPLETED" and by_task[i]["ExitCode"] == "0:0", \
            f"task {i}: {by_task[i]}\n{logs[i][-4000:]}"
    assert by_task["2"]["JobState"] == "FAILED", by_task["2"]
    assert "array index 2 is outside sweep 'tiny': it has 2 combination(s), indices 0-1" in logs["2"]

    for i, lr in enumerate(("0.0001", "0.0002")):
        run_dir = root / f"optim.g_lr={lr}"
        status = read_json(run_dir / "status.json")
        assert status["state"] == "complete" and status["world_size"] == 1, status
        assert status["kimg"] == pytest.approx(0.064)
        meta = read_json(_newest_checkpoint(run_dir) / "meta.json")
        assert meta["nimg"] == 64 and meta["config"]["optim"]["g_lr"] == float(lr)
        assert meta["config"]["run"]["dir"] == str(run_dir)
        assert len(_scalars(run_dir, "Loss/D")) == 2
        record = read_json(run_dir / "sweep.json")
        assert record["index"] == i and record["params"] == {"optim.g_lr": float(lr)}
        assert record["slurm_job"] == f"{job}_{i}"
        if hasattr(tracking.Tracker, "hparams"):  # runs record their overrides for TensorBoard's HParams tab
            assert _hparams(run_dir)["optim.g_lr"] == pytest.approx(float(lr))

    report = subprocess.run([sys.executable, "-m", "dcgan_dist.report", str(root), "--json"],
                            capture_output=True, text=True, check=True)
    rows = json.loads(report.stdout)
    assert [(r["index"], r["state"], r["kimg"], r["overrides"]) for r in rows] == [
        (0, "complete", 0.064, ["optim.g_lr=0.0001"]), (1, "complete", 0.064, ["optim.g_lr=0.0002"])]
    assert all(r["img_per_sec"] > 0 for r in rows)
    text = subprocess.run([sys.executable, "-m", "dcgan_dist.report", str(root)],
                          capture_output=True, text=True, check=True).stdout
    assert "optim.g_lr=0.0001" in text and "optim.g_lr=0.0002" in text and text.count("complete") == 2


@pytest.mark.slow
def test_stop_signal_checkpoints_requeues_and_the_rerun_completes(slurm, tmp_path):
    slurm.ensure(1)
    run_dir, log = tmp_path / "run", tmp_path / "job.out"
    kimg, batch = 1.5, 16
    job = slurm.sbatch(*CPU_JOB, f"--output={log}", "slurm/train.sbatch", CONFIG,
                       *TINY, f"run.dir={run_dir}", f"train.kimg={kimg}")
    stats = run_dir / "stats.jsonl"
    _wait_for_ticks(slurm, job, stats, log)
    # What the time-limit warning (--signal=B:USR1@120) does, now: USR1 to the batch shell only.
    assert slurm.run("scancel", "--batch", "--signal=USR1", job).returncode == 0

    recs = slurm.wait(job, 300, log, done=lambda recs: recs[0]["JobState"] in FINAL_STATES
                      and int(recs[0].get("Restarts", 0)) >= 1)
    text = _log_text(log)
    assert recs[0]["JobState"] == "COMPLETED" and recs[0]["Restarts"] == "1", f"{recs}\n{text[-6000:]}"
    assert "stop requested (SIGUSR1)" in text and f"requeueing job {job}" in text
    first, rerun = text.split("SLURM_RESTART_COUNT=1", 1)  # --open-mode=append: both attempts in one log
    assert "SLURM_RESTART_COUNT=0" in first and "resumed from" not in first
    m = re.search(r"resumed from (\S+) at kimg ([\d.]+) \(step (\d+)\)", rerun)
    assert m, rerun[-4000:]

    # The stop checkpoint: where the rerun picked up.
    stopped = read_json(Path(m.group(1)) / "meta.json")
    total = math.ceil(kimg * 1000 / batch) * batch  # the loop ends at the first batch boundary >= train.kimg
    assert 0 < stopped["nimg"] < total and stopped["nimg"] == stopped["step"] * batch
    assert float(m.group(2)) == pytest.approx(stopped["nimg"] / 1000) and int(m.group(3)) == stopped["step"]
    # The end: the requested length, steps continuous across the restart.
    final = read_json(_newest_checkpoint(run_dir) / "meta.json")
    assert final["nimg"] == total and final["step"] == total // batch and final["world_size"] == 1
    status = read_json(run_dir / "status.json")
    assert status["state"] == "complete" and status["kimg"] == pytest.approx(total / 1000)
    ticks = [json.loads(line)["kimg"] for line in stats.read_text().splitlines()]
    steps = [round(b - a, 6) for a, b in zip(ticks, ticks[1:])]
    assert ticks[-1] == pytest.approx(total / 1000) and all(0 <= s <= 0.032 + 1e-9 for s in steps), ticks
    assert min(ticks) < stopped["nimg"] / 1000 < max(ticks)


@pytest.mark.slow
def test_a_stopped_sweep_task_requeues_as_its_array_element(slurm, tmp_path):
    slurm.ensure(1)
    root = tmp_path / "runs"
    spec = tmp_path / "long.yaml"
    spec.write_text(json.dumps({"name": "long", "config": str(REPO / CONFIG), "root": str(root),
                                "overrides": [*TINY, "train.kimg=1.0"], "grid": {"optim.g_lr": [1.0e-4]}}))
    job = slurm.sbatch("--array=0", *CPU_JOB, f"--output={tmp_path}/%A_%a.out", "slurm/sweep.sh", str(spec))
    run_dir, log = root / "optim.g_lr=0.0001", tmp_path / f"{job}_0.out"
    _wait_for_ticks(slurm, job, run_dir / "stats.jsonl", log)
    assert slurm.run("scancel", "--batch", "--signal=USR1", f"{job}_0").returncode == 0
    recs = slurm.wait(job, 300, log, done=lambda recs: recs[0]["JobState"] in FINAL_STATES
                      and int(recs[0].get("Restarts", 0)) >= 1)
    text = _log_text(log)
    assert recs[0]["JobState"] == "COMPLETED" and recs[0]["Restarts"] == "1", f"{recs}\n{text[-6000:]}"
    assert f"requeueing job {job}_0" in text and "SLURM_RESTART_COUNT=1" in text and "resumed from" in text
    assert read_json(_newest_checkpoint(run_dir) / "meta.json")["nimg"] == 1008  # 63 batches of 16
    rows = json.loads(subprocess.run([sys.executable, "-m", "dcgan_dist.report", str(root), "--json"],
                                     capture_output=True, text=True, check=True).stdout)
    assert [(r["state"], r["kimg"], r["slurm_job"]) for r in rows] == [("complete", 1.008, f"{job}_0")]


@pytest.mark.slow
def test_a_bad_config_fails_before_the_training_step(slurm, tmp_path):
    slurm.ensure(1)
    log = tmp_path / "job.out"
    job = slurm.sbatch(*CPU_JOB, f"--output={log}", "slurm/train.sbatch", CONFIG, "train.kimgg=1")
    recs = slurm.wait(job, 120, log)
    text = _log_text(log)
    assert recs[0]["JobState"] == "FAILED" and recs[0]["ExitCode"] == "2:0", f"{recs}\n{text}"
    assert "bad config key 'train.kimgg'" in text and "world size" not in text


@pytest.mark.slow
def test_two_nodes_form_one_world_of_two(slurm, tmp_path):
    slurm.ensure(2)
    run_dir, log = tmp_path / "run", tmp_path / "job.out"
    # run.dir from a config file this time: the batch script finds it by resolving the config.
    config = tmp_path / "two.yaml"
    config.write_text(json.dumps({"extends": str(REPO / CONFIG), "run": {"dir": str(run_dir)}}))
    job = slurm.sbatch("-N2", *CPU_JOB, f"--output={log}", "slurm/train.sbatch", str(config),
                       *TINY, "train.kimg=0.064")
    recs = slurm.wait(job, 240, log)
    text = _log_text(log)
    assert recs[0]["JobState"] == "COMPLETED" and recs[0]["NumNodes"] == "2", f"{recs}\n{text[-6000:]}"
    assert "2 node(s) x 1 process(es) = world size 2" in text and "world size 2 (" in text
    status = read_json(run_dir / "status.json")
    assert status["state"] == "complete" and status["world_size"] == 2
    meta = read_json(_newest_checkpoint(run_dir) / "meta.json")
    assert meta["world_size"] == 2 and meta["nimg"] == 64
    # Both ranks hold identical parameters: they trained as one DDP group across the two nodes.
    assert len(meta["param_digests"]) == 2 and meta["param_digests"][0] == meta["param_digests"][1]
