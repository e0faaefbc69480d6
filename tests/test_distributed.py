"""Data-parallel runs (distributed.py): two gloo processes under torchrun against one plain process."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from rank1lib import distributed

WORKER = Path(__file__).with_name("ddp_worker.py")
REPO = Path(__file__).resolve().parents[1]


def launch(out, nproc, *args, check=True):
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    for k in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(k, None)
    head = [sys.executable] if nproc == 1 else \
        [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"]
    res = subprocess.run([*head, str(WORKER), "--out", str(out), *args], env=env, capture_output=True,
                         text=True, timeout=600)
    if check and res.returncode:
        raise AssertionError(f"worker failed ({res.returncode}):\n{res.stderr[-3000:]}")
    return res


@pytest.fixture(scope="module")
def single(tmp_path_factory):
    out = tmp_path_factory.mktemp("single") / "r.pt"
    launch(out, 1)
    return torch.load(out)


def close(a, b, tol):
    """max |a - b| / max |b| <= tol."""
    a, b = torch.as_tensor(a, dtype=torch.float64), torch.as_tensor(b, dtype=torch.float64)
    return float((a - b).abs().max() / b.abs().max()) <= tol


def test_two_processes_equal_one(single, tmp_path):
    two = launch(tmp_path / "r.pt", 2) and torch.load(tmp_path / "r.pt")
    assert single["world"] == 1 and two["world"] == 2
    # statistics: sums over the same samples, split over ranks and all-reduced
    assert close(two["mu"], single["mu"], 1e-6)
    assert abs(two["c_star"] - single["c_star"]) <= 1e-6 * single["c_star"]
    assert close(two["diag"], single["diag"], 1e-6)
    # training: each rank takes half of the same global batch and noise; DDP averages the gradients
    assert len(two["losses"]) == len(single["losses"]) == 6
    assert close(two["losses"], single["losses"], 1e-5)
    assert close(two["theta"], single["theta"], 1e-4)


def test_resume_after_one_rank_is_killed(single, tmp_path):
    ckpt = tmp_path / "ckpt"
    dead = launch(tmp_path / "dead.pt", 2, "--ckpt", str(ckpt), "--die-at", "3", check=False)
    assert dead.returncode != 0 and not (tmp_path / "dead.pt").exists()
    assert (ckpt / "last" / "trainer.pt").exists()  # rank 0 checkpointed the steps before the loss
    launch(tmp_path / "r.pt", 2, "--ckpt", str(ckpt))
    resumed = torch.load(tmp_path / "r.pt")
    assert resumed["resumed_from"] and 1 <= resumed["resumed_from"] <= 3  # it went on from the checkpoint
    assert close(resumed["losses"], single["losses"], 1e-5)
    assert close(resumed["theta"], single["theta"], 1e-4)


def test_continual_run_on_two_processes_equals_one(tmp_path, monkeypatch):
    """rank1-gd at ci: statistics all-reduced, replay pool and FID samples sampled in shards and gathered,
    rank 0 writes the state; the FIDs, samples and losses equal a one-process run's."""
    got = {}
    for n in (1, 2):
        monkeypatch.setenv("RANK1_CKPT", str(tmp_path / f"ckpt{n}"))
        monkeypatch.setenv("RANK1_RESULTS", str(tmp_path / f"res{n}"))
        launch(tmp_path / f"c{n}.pt", n, "--continual", "rank1-gd")
        got[n] = torch.load(tmp_path / f"c{n}.pt", weights_only=False)
    assert got[2]["world"] == 2
    # Task 1 is plain training: equal up to float rounding. Later tasks add the rank-1 penalty at
    # lambda = 15000 on top of Adam, which turns rounding-level differences of the all-reduced
    # gradients into ~0.1-1% differences of the loss; a missing or doubled term (a bug) would not be small.
    l1, l2 = got[1]["final_losses"], got[2]["final_losses"]
    assert abs(l2[0] - l1[0]) <= 1e-5 * l1[0]
    assert close(l2, l1, 0.02)
    diff = got[2]["samples"].astype(int) - got[1]["samples"].astype(int)
    assert abs(diff[0]).max() <= 2  # task-1 samples (same weights up to rounding, same noise)
    assert close(got[2]["fid"][-1], got[1]["fid"][-1], 0.02)


def test_cli_train_runs_data_parallel_and_refuses_the_rest(tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO), RANK1_RESULTS=str(tmp_path / "res"),
               RANK1_CKPT=str(tmp_path / "ckpt"))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           "-m", "rank1lib", "run", "train", "--profile", "ci"]
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    assert res.stdout.count("train/mnist-5k-tiny-s0:") == 1  # rank 0 alone reports (and writes)
    rec = json.loads((tmp_path / "res" / "ci" / "train" / "mnist-5k-tiny-s0.json").read_text())
    assert rec["provenance"]["processes"] == 2 and rec["values"]["steps"] == 4
    # an experiment that is not data-parallel yet: a one-line refusal, nothing run
    res = subprocess.run([sys.executable, "-m", "rank1lib", "run", "vae", "--profile", "ci"],
                         env=dict(env, WORLD_SIZE="2", RANK="0"), capture_output=True, text=True, timeout=300)
    assert res.returncode != 0 and "does not run data-parallel yet" in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1


def test_single_process_helpers_are_no_ops(monkeypatch):
    for k in ("WORLD_SIZE", "RANK"):
        monkeypatch.delenv(k, raising=False)
    assert not distributed.active() and distributed.is_main()
    t = torch.ones(3)
    assert distributed.all_sum(t) is t and torch.equal(t, torch.ones(3))
    assert distributed.shard(8) == slice(0, 8) and distributed.mine([1, 2, 3]) == [1, 2, 3]
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    assert distributed.shard(8) == slice(4, 8) and distributed.mine([1, 2, 3]) == [2]
    with pytest.raises(ValueError, match="does not split evenly over 2"):
        distributed.shard(7)
