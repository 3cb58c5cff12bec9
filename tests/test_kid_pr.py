"""KID and precision/recall across processes: the collective helpers on one process, and 2 processes
through the real launcher against 1 (the functions, the reference-feature cache and the evaluate CLI).
The math of each metric: tests/test_kid.py, tests/test_precision_recall.py."""

from __future__ import annotations

import json
import os
import runpy
import subprocess

import pytest
import torch

from dcgan_dist.metrics.features import all_reduce_sum, check_features, gather_features, local_rows, share

import standins
from conftest import REPO, TINY, env, evaluate_inproc, launcher_cmd, read_json, run_main, train_inproc


# ---- the collective helpers on one process ---------------------------------------------------------

def test_one_process_gather_and_reduce_are_identities():
    x = torch.randn(7, 3)
    assert gather_features(None, x) is x
    t = torch.tensor(5)
    assert all_reduce_sum(None, t) is t
    assert local_rows(10, None) == (0, 10)
    assert [share(10, r, 3) for r in range(3)] == [(0, 3), (3, 6), (6, 10)]
    with pytest.raises(ValueError):
        check_features("x", torch.randn(3))


# ---- 2 processes through the real launcher ---------------------------------------------------------

@pytest.mark.slow
def test_two_processes_gather_and_compute_the_single_process_numbers_exactly(tmp_path, monkeypatch):
    """accelerate launch, 2 CPU ranks (gloo), each holding a different, unequal share of the same
    features: the gathered sets are the full sets, and the collectively computed KID (subsets split
    3 + 4 over the ranks) and precision/recall (rows split over the ranks) equal the one-process
    numbers exactly, those computed in the ranks and those computed here. In the same launch: the
    reference features cached on 2 ranks (a miss, then a hit read by rank zero and broadcast), and
    the evaluate CLI on a trained checkpoint giving the KID / PR of the CLI run here on 1 process."""
    from dcgan_dist import sample

    run_dir = tmp_path / "run"
    assert train_inproc("configs/quickstart.yaml", TINY + [f"run.dir={run_dir}", "train.kimg=0.032"]) == 0
    # the reference: 40 samples of the same G from another seed (after 32 images G is far from the digits,
    # and precision/recall against them would be 0; against its own samples they are not)
    assert run_main(sample.main, [run_dir, "--num", 40, "--out", tmp_path / "ref", "--seed", 99, "--no-progress"]) == 0
    cli = [str(run_dir), "--data", str(tmp_path / "ref"), "--num", "26", "--batch", "8", "--metrics", "fid,kid,pr",
           "--kid-subsets", "5", "--kid-subset-size", "16", "--no-progress"]
    standins.install(monkeypatch.setattr)
    assert evaluate_inproc(cli + ["--out", tmp_path / "one.json", "--cache-dir", tmp_path / "cache1"]) == 0

    script = REPO / "tests" / "scripts" / "kid_pr_two_process.py"
    e = env()  # this checkout's package first on PYTHONPATH, and tests/ for the script's stand-in extractor
    e["PYTHONPATH"] = os.pathsep.join([str(REPO / "tests"), e["PYTHONPATH"]])
    args = [str(script), str(tmp_path / "ref2"), *cli, "--out", str(tmp_path / "two.json"),
            "--cache-dir", str(tmp_path / "cache2")]
    proc = subprocess.run(launcher_cmd(args), cwd=REPO, env=e, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    out = json.loads([line for line in proc.stdout.splitlines() if line.startswith("{")][-1])
    assert out["world_size"] == 2
    assert out["gathered_equal"] and out["empty_share_gather_equal"]
    assert out["ranks_agree"]
    assert out["kid"]["values"] == out["kid_single"]["values"] and len(out["kid"]["values"]) == 7
    assert (out["kid"]["mean"], out["kid"]["std"]) == (out["kid_single"]["mean"], out["kid_single"]["std"])
    assert out["pr"] == out["pr_single"]
    assert out["radii_max_rel_diff"] <= 1e-13

    kid_here, pr_here = runpy.run_path(str(script))["reference"]()  # the script's own numbers, computed here
    assert out["kid"]["values"] == list(kid_here.values)
    assert out["kid"]["mean"] == kid_here.mean
    assert out["pr"]["fakes_in_real"] == pr_here.fakes_in_real and out["pr"]["reals_in_fake"] == pr_here.reals_in_fake
    assert (out["pr"]["precision"], out["pr"]["recall"]) == (pr_here.precision, pr_here.recall)
    assert 0 < pr_here.precision < 1 and 0 < pr_here.recall < 1  # not a degenerate case

    # the reference cache: rank zero decided miss then hit for both ranks; both held the whole set both times
    assert out["ref_cached"] == [[0, 1], [0, 1]] and out["ref_features_equal"] == [[1, 1], [1, 1]]
    # the CLI: 13 samples per rank, gathered; the numbers of one process
    one, two = read_json(tmp_path / "one.json"), read_json(tmp_path / "two.json")
    assert (one["world_size"], two["world_size"]) == (1, 2) and one["num"] == two["num"] == 26
    assert one["kid"]["std"] > 0 and 0 < one["precision"] < 1 and 0 < one["recall"] < 1 and one["ref_num"] == 40
    assert two["kid"] == pytest.approx(one["kid"], rel=1e-9)
    assert (two["precision"], two["recall"]) == (one["precision"], one["recall"])
    assert two["fid"] == pytest.approx(one["fid"], rel=1e-6)
