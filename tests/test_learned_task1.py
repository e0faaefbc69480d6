"""A learned task 1 (two tasks): the stopping rule, task 2 from the chosen model, the stored summaries."""
import numpy as np
import pytest

from rank1lib import learned_task1 as lt
from rank1lib.profiles import load_profile


def test_task1_points_are_the_tier_length_then_half_and_all_of_the_cap():
    assert lt.task1_points(load_profile("cpu"), 917) == [917, 2048, 4096]
    assert lt.task1_points(load_profile("cpu", task1_max_steps=500), 917) == [917]


@pytest.mark.parametrize("joint, chosen, learned", [(1e9, 4, True), (0.0, 8, False)])
def test_task1_stops_at_the_first_learned_point_and_task2_trains_as_long(tmp_store, monkeypatch, joint, chosen,
                                                                         learned):
    """ci: points 4 and 8. A joint FID no model can miss by 1.5x stops at the first point; a joint FID of 0
    is never met, so task 1 runs to the cap and is marked not learned. Task 2 trains as many steps."""
    monkeypatch.setattr(lt, "_joint_fid1", lambda cfg, ds, seed, progress: joint)
    cfg = load_profile("ci")
    t1 = lt.learned_task1(cfg, "mnist-5k", 0, progress=False).values
    assert t1["steps"] == chosen and t1["learned"] is learned
    assert [p["step"] for p in t1["curve"]] == [4, 8][:[4, 8].index(chosen) + 1]
    assert all(len(p["fid"]) == len(lt.FID_SEEDS) for p in t1["curve"])
    import torch  # a final task 1 keeps no optimiser state (the methods start from its snapshot, fresh Adam)
    last = torch.load(lt.root(cfg, "mnist-5k", 0) / "task1" / "ckpt" / "last" / "trainer.pt", weights_only=False)
    assert last["opt"] is None and last["step"] == chosen
    r = lt.learned_task1(cfg, "mnist-5k", 0, "gd", progress=False).values
    assert r["steps"] == chosen and r["fid_task1_before"] == t1["curve"][-1]["fid"]
    after, second = np.array(r["fid_task1_after"]), np.array(r["fid_task2"])
    assert r["forgetting"] == pytest.approx(float(np.mean(after - np.array(r["fid_task1_before"]))))
    assert r["a_fid"] == pytest.approx(float(np.mean((after + second) / 2)))
    rows = lt.table(lt.stored_runs(cfg, "mnist-5k", runs=(("gd", None),)))
    assert [x["method"] for x in rows] == ["gd"]


def test_summary_by_hand():
    t1 = {"steps": 10, "learned": True, "curve": [{"step": 10, "fid": [10.0, 12.0, 14.0], "kid": [0.1] * 3}]}
    rows2 = {"fid": [[13.0, 20.0], [15.0, 22.0], [17.0, 24.0]], "kid": [[0.1, 0.2]] * 3}
    s = lt.summary(t1, rows2, "gd", None, 1.0)
    assert s["forgetting"] == pytest.approx(3.0) and s["forgetting_se"] == pytest.approx(0.0)
    assert s["task2_fid"] == pytest.approx(22.0) and s["task2_fid_se"] == pytest.approx(2 / np.sqrt(3))
    assert s["a_fid"] == pytest.approx((15 + 22) / 2)


def test_every_lambda_scores_task1_against_the_same_stored_joint_model(tmp_store, monkeypatch):
    """The joint model has no penalty: a two-task run at another lambda reads the joint result stored at the
    profile's own lambda (the same FID) and trains no joint model of its own."""
    from rank1lib import continual
    from rank1lib.profiles import Config
    cfg = load_profile("ci", model="small1", train_per_class=8, batch_size=8, fid_per_class=2, ddim_steps=1,
                       fid_extractor="pixels", sample_batch=64)
    first = lt._joint_fid1(cfg, "mnist-5k", 0, False)
    real, calls = continual.run, []
    monkeypatch.setattr(continual, "run", lambda *a, **k: calls.append(a) or real(*a, **k))
    assert lt._joint_fid1(Config(cfg, lam=cfg.lam / 10), "mnist-5k", 0, False) == first
    assert calls == []


def test_rank1_gd_at_lambda_zero_is_gd_and_at_the_profile_lambda_is_not(tmp_store, monkeypatch):
    """The two-task comparison of GD and Rank-1 + GD changes only the penalty: at lambda = 0 the rank-1
    statistics, replay pool and training draws leave task 2 exactly as GD trains it, and at the profile's
    lambda the penalty moves it."""
    from rank1lib.profiles import Config
    monkeypatch.setattr(lt, "_joint_fid1", lambda cfg, ds, seed, progress: 1e9)
    cfg = load_profile("ci")
    gd = lt.learned_task1(cfg, "mnist-5k", 0, "gd", progress=False).values
    zero = lt.learned_task1(Config(cfg, lam=0.0), "mnist-5k", 0, "rank1-gd", progress=False).values
    full = lt.learned_task1(cfg, "mnist-5k", 0, "rank1-gd", progress=False).values
    for k in ("fid_task1_after", "fid_task2"):
        np.testing.assert_allclose(zero[k], gd[k], rtol=1e-6)
        assert not np.allclose(full[k], gd[k], rtol=1e-6), k
