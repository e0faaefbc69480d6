"""Network study for the continual-learning tier: joint A-FID at every study point, the choice rule."""
import numpy as np
import pytest

from rank1lib import store, study
from rank1lib.profiles import load_profile


class Rec(dict):
    @property
    def values(self):
        return self["values"]


def rec(params, rows):
    return Rec(values={"params": params, "fid_floor": 1.0,
                       "rows": [{"step": s, "train_seconds": t, "a_fid": a, "epochs": s / 10} for s, t, a in rows]})


def test_choose_takes_the_cheapest_point_within_the_threshold():
    recs = {"a": rec(1_000, [(100, 60.0, 30.0), (200, 120.0, 12.0)]),
            "b": rec(5_000, [(100, 200.0, 10.0), (200, 400.0, 8.0)])}
    pick = study.choose(recs)  # best 8.0 -> threshold 12.0; eligible a@200, b@100, b@200; cheapest a@200
    assert (pick["model"], pick["step"], pick["threshold"], pick["eligible"]) == ("a", 200, 12.0, 3)
    recs["c"] = rec(500, [(200, 120.0, 11.0)])  # same time as a@200, fewer parameters
    assert study.choose(recs)["model"] == "c"
    with pytest.raises(ValueError, match="no study results"):
        study.choose({})


def test_projected_hours_from_the_chosen_point():
    cfg = load_profile("cpu")
    pick = {"train_seconds": 100.0, "step": 100, "epochs": 10.0}
    # 800 images per task, batch 128 -> 7 steps per epoch -> 70 steps per task; joint 10 x 32 = 320 steps;
    # 1 shared task + 12 plain tasks + 2.3 x 16 distillation tasks = 49.8 task-equivalents -> 3486 + 320 s
    assert study.projected_hours(cfg, pick, 800, 5) == pytest.approx((70 * 49.8 + 320) / 3600)


def test_study_runs_and_stores_every_point(tmp_path, monkeypatch):
    monkeypatch.setenv("RANK1_RESULTS", str(tmp_path / "results"))
    monkeypatch.setenv("RANK1_CKPT", str(tmp_path / "ckpt"))
    cfg = load_profile("ci", fid_extractor="pixels", ddim_steps=2, train_per_class=8, batch_size=8)
    r = study.cl_study(cfg, "mnist-5k", 0, progress=False)
    rows = r.values["rows"]
    assert [x["step"] for x in rows] == cfg.study_steps
    t = [x["train_seconds"] for x in rows]
    assert 0 < t[0] < t[1]
    for x in rows:  # A-FID of the joint model = mean FID over the 5 tasks
        assert x["a_fid"] == pytest.approx(np.mean(x["fid_per_task"])) and len(x["fid_per_task"]) == 5
        assert x["epochs"] == pytest.approx(x["step"] * 8 / 80)
    assert r.arrays["samples"].shape == (5, 4, 1, 32, 32)
    assert set(study.stored_candidates(cfg, "mnist-5k", ("tiny", "base"))) == {"tiny"}
    again = study.cl_study(cfg, "mnist-5k", 0, progress=False)  # loaded from the store
    assert again.values["rows"] == rows and store.load("ci", "cl_study", "mnist-5k-tiny-s0") is not None


def test_choose_lam_rule():
    pts = {lam: Rec(values={"a_fid": a}) for lam, a in zip(study.LAMBDAS, (9.0, 7.0, 7.0))}
    assert study.choose_lam({"rank1-gd": pts}) == study.LAMBDAS[1]  # tie at 7.0 -> the smaller lambda
    with pytest.raises(ValueError, match="incomplete"):
        study.choose_lam({"rank1-gd": {study.LAMBDAS[0]: pts[study.LAMBDAS[0]]}})
    assert study.LAMBDAS[2] == 15000 * 512 and "15000 x D/2" in study.convention(study.LAMBDAS[2])


def test_sweep_edge_says_when_the_choice_is_an_end_of_the_range():
    pts = {lam: Rec(values={"a_fid": a}) for lam, a in zip(study.LAMBDAS, (20.0, 30.0, 40.0))}
    lo, mid = study.LAMBDAS[0], study.LAMBDAS[1]
    text = study.sweep_edge({"rank1-gd": pts}, lo, gd=Rec(values={"a_fid": 10.0}))
    assert "smallest swept lambda" in text and "weaker" in text and "A-FID 10.0" in text
    assert "at every swept lambda the rank-1 penalty made A-FID worse" in text
    assert "made A-FID worse" not in study.sweep_edge({"rank1-gd": pts}, lo, gd=Rec(values={"a_fid": 25.0}))
    assert "largest" in study.sweep_edge({"rank1-gd": pts}, study.LAMBDAS[2])
    assert study.sweep_edge({"rank1-gd": pts}, mid) == ""  # bracketed: nothing to say


def test_lambda_points_put_gd_alone_at_lambda_zero_of_every_penalty():
    from rank1lib import study

    class R:
        def __init__(self, a):
            self.values = {"a_fid": a, "forgetting": -a}
    swept = {"rank1-gd": {15000.0: R(2.0)}, "diag-gd": {15000.0: R(3.0)}}
    pts = study.lambda_points(swept, R(1.0), {("rank1-gd", 150.0): R(4.0)})
    assert {m: sorted(p) for m, p in pts.items()} == {"rank1-gd": [0.0, 150.0, 15000.0], "diag-gd": [0.0, 15000.0]}
    assert pts["rank1-gd"][0.0]["a_fid"] == 1.0 and pts["rank1-gd"][150.0]["forgetting"] == -4.0
