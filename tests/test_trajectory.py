"""The Fisher along training: points computed while a run still trains are the trajectory's own points."""
import time

import pytest

from rank1lib import store, trajectory
from rank1lib.profiles import load_profile, reading
from rank1lib.train import DeadlineReached


def _cfg():
    return load_profile("ci", analysis_model="tiny", analysis_epochs=6, analysis_max_steps=0, train_per_class=4,
                        batch_size=8, fisher_samples=8, ckpt_every=10)


def _rows(rec):
    return [{k: r[k] for k in ("step", "r", "err_rank1", "c_star", "cos_median")} for r in rec.values["rows"]]


def test_points_stored_mid_run_are_reused_and_equal_a_run_from_scratch(tmp_store, monkeypatch):
    cfg = _cfg()
    monkeypatch.setenv("RANK1_DEADLINE", str(time.time() - 1))  # the run stops after its first step
    with pytest.raises(DeadlineReached):
        trajectory.trajectory(cfg, "mnist-5k", 0, "tiny", progress=False)
    so_far = trajectory.trajectory_so_far(cfg, "mnist-5k", 0, "tiny", progress=False)
    assert [r["config"]["step"] for r in so_far] == [0]  # only the initialisation's snapshot exists yet

    part = trajectory.partial_trajectory(cfg, "mnist-5k", 0, "tiny")
    assert part.values["partial"] and part.values["step"] == 1 and part.values["steps"] == 30
    assert [r["step"] for r in part.values["rows"]] == [0]
    assert "step 1 of 30" in trajectory.partial_text({("mnist-5k", "tiny", 0): part})

    monkeypatch.delenv("RANK1_DEADLINE")
    calls = []
    real = trajectory.spectrum_compute
    monkeypatch.setattr(trajectory, "spectrum_compute", lambda *a, **k: calls.append(1) or real(*a, **k))
    resumed = trajectory.trajectory(cfg, "mnist-5k", 0, "tiny", progress=False)
    assert [r["step"] for r in resumed.values["rows"]] == [0, 25, 30]
    assert len(calls) == 2  # step 0 was read back, not recomputed

    monkeypatch.setenv("RANK1_RESULTS", str(tmp_store / "fresh-results"))  # the same run, uninterrupted
    monkeypatch.setenv("RANK1_CKPT", str(tmp_store / "fresh-ckpt"))
    scratch = trajectory.trajectory(cfg, "mnist-5k", 0, "tiny", progress=False)
    assert _rows(scratch) == _rows(resumed)


def test_a_reader_sees_stored_points_only_and_never_computes(tmp_store, monkeypatch):
    cfg = _cfg()
    monkeypatch.setenv("RANK1_DEADLINE", str(time.time() - 1))
    with pytest.raises(DeadlineReached):
        trajectory.trajectory(cfg, "mnist-5k", 0, "tiny", progress=False)
    assert trajectory.partial_trajectory(cfg, "mnist-5k", 0, "tiny") is None  # a snapshot, no statistics yet
    monkeypatch.setattr(trajectory, "analysis_data", lambda *a: pytest.fail("a reader loaded data"))
    assert trajectory.trajectory_so_far(reading(cfg), "mnist-5k", 0, "tiny", progress=False) == []
    with pytest.raises(store.ResultPending):
        trajectory.trajectory(reading(cfg), "mnist-5k", 0, "tiny", progress=False)
