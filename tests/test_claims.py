"""Claims ledger: verdict rules on hand-made results, pending when absent, 'not evidence' at toy profiles."""
import numpy as np

from rank1lib import claims, store


class Fake(store.Result):
    pass


def fake(values, arrays=None, **config):
    r = Fake({"profile": "cpu", "experiment": "spectrum", "name": "x", "config": config, "values": values,
              "provenance": {"device": "cpu", "commit": "abc", "date": "today"}})
    r["_arrays"] = arrays or {}
    return r


T = [100, 200, 300, 400, 500, 600, 700, 800, 900]


def spectrum_values(r, err_diag=None, err_rank1=None, share=None, mu_cos=0.95):
    r = np.asarray(r, float)
    i = int(np.argmin(r))
    m = np.full((9, 9), mu_cos)
    np.fill_diagonal(m, 1.0)
    return {"t": T, "r": r.tolist(), "min_r": float(r[i]), "min_r_t": T[i],
            "err_diag": err_diag or [0.99] * 9, "err_rank1": err_rank1 or [0.5] * 9,
            "share": share or [0.95] * 9, "mu_cos": m.tolist(), "arch": "base", "params": 1}


def test_c4_agrees_partly_or_not_by_its_rule(monkeypatch):
    paper_like = [0.3, 0.1, 0.08, 0.06, 0.04, 0.03, 0.022, 0.03, 0.05]
    monkeypatch.setattr(claims, "_spec", lambda cfg, arch=None: fake(spectrum_values(paper_like)))
    ours, checks, _ = claims._c4(None)
    assert claims._verdict(checks) == "agree" and "0.022 at t = 700" in ours
    # r_100 fine and the gap >= 10, but the minimum sits at t = 900 and is 0.09: 2 of 3 checks
    late_min = [0.3, 0.095, 0.095, 0.095, 0.095, 0.095, 0.095, 0.095, 0.09]
    monkeypatch.setattr(claims, "_spec", lambda cfg, arch=None: fake(spectrum_values(late_min)))
    assert claims._verdict(claims._c4(None)[1]) == "partial"
    flat = [0.7] * 9
    monkeypatch.setattr(claims, "_spec", lambda cfg, arch=None: fake(spectrum_values(flat)))
    assert claims._verdict(claims._c4(None)[1]) == "disagree"


def test_c5_and_c7_rules(monkeypatch):
    v = spectrum_values([0.05] * 9, err_diag=[0.99] * 9, err_rank1=[0.9] * 4 + [0.3] * 5)
    monkeypatch.setattr(claims, "_spec", lambda cfg, arch=None: fake(v))
    assert claims._verdict(claims._c5(None)[1]) == "agree"
    v = spectrum_values([0.05] * 9, err_diag=[0.9] * 9, err_rank1=[0.95] * 9)
    monkeypatch.setattr(claims, "_spec", lambda cfg, arch=None: fake(v))
    assert claims._verdict(claims._c5(None)[1]) == "disagree"
    meds = {"small1": 0.09, "small3": 0.05, "base": 0.02}
    monkeypatch.setattr(claims, "_spec", lambda cfg, arch=None: fake(spectrum_values([meds[arch]] * 9)))
    assert claims._verdict(claims._c7(None)[1]) == "agree"
    meds = {"small1": 0.02, "small3": 0.3, "base": 0.05}
    assert claims._verdict(claims._c7(None)[1]) == "disagree"


def test_c13_rule(monkeypatch):
    def rows(late_rs):
        return [{"step": s, "r": [0.5, 0.5, x, x, x]} for s, x in late_rs]
    init = fake({"t": [100, 300, 500, 700, 900], "rows": rows([(0, 0.30), (0, 0.32), (0, 0.28)])})
    conv = fake({"t": [100, 300, 500, 700, 900], "rows": rows([(0, 0.3), (100, 0.2), (3200, 0.05), (6400, 0.03)])})
    monkeypatch.setattr(claims, "_get", lambda fn, cfg, **kw: conv if fn.__name__ == "trajectory" else init)
    assert claims._verdict(claims._c13(None)[1]) == "agree"
    already = fake({"t": [100, 300, 500, 700, 900], "rows": rows([(0, 0.07), (100, 0.7), (3200, 0.1), (6400, 0.2)])})
    init_low = fake({"t": [100, 300, 500, 700, 900], "rows": rows([(0, 0.07), (0, 0.08), (0, 0.06)])})
    monkeypatch.setattr(claims, "_get", lambda fn, cfg, **kw: already if fn.__name__ == "trajectory" else init_low)
    assert claims._verdict(claims._c13(None)[1]) == "disagree"


def test_ledger_pending_without_results_and_not_evidence_at_ci(tmp_store):
    rows = {r["id"]: r for r in claims.ledger("cpu")}
    assert all(r["verdict"] == "pending" for r in rows.values())
    assert rows["C8"]["why_pending"] == "needs the continual-learning tier"
    from rank1lib.analysis import tweedie_mse
    from rank1lib.profiles import load_profile
    tweedie_mse(load_profile("ci"), progress=False)
    row = {r["id"]: r for r in claims.ledger("ci")}["C1"]
    assert row["verdict"] == "not evidence" and row["rule_outcome"] in ("agree", "partial", "disagree")
    assert row["settings"][0]["result"] == "tweedie/mnist-5k-small1-s0"
    assert "C1" in claims.markdown(row)


def _traj(late_by_step, t=(100, 300, 500, 700, 900)):
    """Trajectory values whose rows have r_t = 0.5 at t < 500 and `v` at t >= 500."""
    rows = [{"step": s, "r": [0.5 if tt < 500 else v for tt in t]} for s, v in late_by_step]
    return {"t": list(t), "rows": rows}


def test_trajectory_statement_follows_the_numbers():
    from rank1lib.trajectory import describe
    init = _traj([(0, v) for v in (0.10, 0.12, 0.08, 0.11, 0.09)])  # 0.100 +- 0.016
    grown = describe(_traj([(0, 0.1), (400, 0.6), (6400, 0.02)]), init)
    assert "0.020 after 6400 steps" in grown and "training made the structure stronger" in grown
    assert "early training weakened the structure (the peak at step 400)" in grown
    assert "further from rank 1 than its own initialisation" not in grown
    same = describe(_traj([(0, 0.1), (100, 0.11), (6400, 0.09)]), init)
    assert "what the network had at initialisation" in same and "peak" not in same.split("steps;")[1]
    worse = describe(_traj([(0, 0.1), (6400, 0.4)]), init)
    assert "weakened the structure in this run" in worse and "its own initialisation (0.100)" in worse
