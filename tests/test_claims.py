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
    monkeypatch.setattr(claims, "_spec", lambda cfg, arch=None, seed=0: fake(spectrum_values(paper_like)))
    ours, checks, _ = claims._c4(None)
    assert claims._verdict(checks) == "agree" and "0.022 at t = 700" in ours
    # r_100 fine and the gap >= 10, but the minimum sits at t = 900 and is 0.09: 2 of 3 checks
    late_min = [0.3, 0.095, 0.095, 0.095, 0.095, 0.095, 0.095, 0.095, 0.09]
    monkeypatch.setattr(claims, "_spec", lambda cfg, arch=None, seed=0: fake(spectrum_values(late_min)))
    assert claims._verdict(claims._c4(None)[1]) == "partial"
    flat = [0.7] * 9
    monkeypatch.setattr(claims, "_spec", lambda cfg, arch=None, seed=0: fake(spectrum_values(flat)))
    assert claims._verdict(claims._c4(None)[1]) == "disagree"


def test_c5_and_c7_rules(monkeypatch):
    v = spectrum_values([0.05] * 9, err_diag=[0.99] * 9, err_rank1=[0.9] * 4 + [0.3] * 5)
    monkeypatch.setattr(claims, "_spec", lambda cfg, arch=None, seed=0: fake(v))
    assert claims._verdict(claims._c5(None)[1]) == "agree"
    v = spectrum_values([0.05] * 9, err_diag=[0.9] * 9, err_rank1=[0.95] * 9)
    monkeypatch.setattr(claims, "_spec", lambda cfg, arch=None, seed=0: fake(v))
    assert claims._verdict(claims._c5(None)[1]) == "disagree"
    meds = {"small1": 0.09, "small3": 0.05, "base": 0.02}
    monkeypatch.setattr(claims, "_spec", lambda cfg, arch=None, seed=0: fake(spectrum_values([meds[arch]] * 9)))
    assert claims._verdict(claims._c7(None)[1]) == "agree"
    meds = {"small1": 0.02, "small3": 0.3, "base": 0.05}
    assert claims._verdict(claims._c7(None)[1]) == "disagree"


def test_rules_apply_to_every_stored_seed(monkeypatch):
    """claims.by_seed: each spectrum claim's rule on each seed's run; a seed not in the store is left out."""
    runs = {0: spectrum_values([0.3, 0.1, 0.08, 0.06, 0.04, 0.03, 0.022, 0.03, 0.05]),  # C4 agrees
            1: spectrum_values([0.7] * 9)}  # C4 disagrees; seed 2 not stored
    monkeypatch.setattr(claims, "_spec", lambda cfg, arch=None, seed=0: fake(runs[seed]) if seed in runs else None)
    rows = claims.by_seed("cpu", ids=("C4",))
    assert [(r["seed"], r["outcome"]) for r in rows] == [(0, "agree"), (1, "disagree")]
    assert "r_100 = 0.700" in rows[1]["ours"]


def test_seed_spread_is_mean_and_standard_error():
    from scipy.stats import sem
    from rank1lib.analysis import seed_spread
    rng = np.random.default_rng(0)
    vals = [{"t": T, "r": rng.random(9).tolist(), "err_rank1": rng.random(9).tolist(), "err_diag": [1.0] * 9}
            for _ in range(3)]
    sp = seed_spread(vals)
    a = np.array([v["r"] for v in vals])
    assert sp["n_seeds"] == 3 and sp["t"] == T
    assert np.allclose(sp["r"], a.mean(0)) and np.allclose(sp["r_se"], sem(a, axis=0))
    assert np.allclose(sp["err_diag_se"], 0.0)
    assert np.allclose(seed_spread(vals[:1])["r_se"], 0.0)  # one seed: no spread


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
    assert rows["C8"]["why_pending"].startswith("waits for ") and "cl-study-" in rows["C8"]["why_pending"]
    assert "learned-task1" not in rows["C8"]["why_pending"] and "l1-mnist-5k-s0-gd" in rows["C8b"]["why_pending"]
    pend = rows["C8b"]["why_pending"]  # the pair GD / Rank-1 + GD, not the whole lambda sweep
    assert "l1-mnist-5k-s0-rank1-gd " in pend + " " and "diag-gd" not in pend and "lam150" not in pend
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
    from rank1lib.trajectory import mechanism_text
    init = _traj([(0, v) for v in (0.10, 0.12, 0.08, 0.11, 0.09)])  # 0.100 +- 0.016
    grown = mechanism_text(_traj([(0, 0.1), (400, 0.6), (6400, 0.02)]), init)
    assert "0.020 after 6400 steps" in grown and "training made the structure stronger" in grown
    assert "early training weakened the structure (the peak at step 400)" in grown
    assert "further from rank 1 than its own initialisation" not in grown
    same = mechanism_text(_traj([(0, 0.1), (100, 0.11), (6400, 0.09)]), init)
    assert "what the network had at initialisation" in same and "peak" not in same.split("steps;")[1]
    worse = mechanism_text(_traj([(0, 0.1), (6400, 0.4)]), init)
    assert "weakened the structure in this run" in worse and "its own initialisation (0.100)" in worse


def cl_records(table, seeds=(0,)):
    """Fake stored continual runs: table[dataset][method] = (a_fid_at_k list, forgetting)."""
    def stored(cfg, dataset, methods, seeds_=None):
        out = {}
        for m in methods:
            if m in table.get(dataset, {}):
                afk, f = table[dataset][m]
                out[m] = [fake({"a_fid_at_k": afk, "a_fid": afk[-1], "forgetting": f, "params": 1},
                               method=m, dataset=dataset, seed=s, model="base", epochs=200)
                          for s in (seeds_ or seeds)]
        return out
    return stored


class Cfg(dict):
    __getattr__ = dict.__getitem__


def paper_like_table():
    flat = lambda a: [a] * 5  # noqa: E731
    return {"mnist-5k": {"joint": (flat(3.0), None), "finetune": (flat(100.0), 90.0),
                         "diag": (flat(60.0), 50.0), "rank1": (flat(65.0), 58.0), "gd": (flat(10.0), 2.3),
                         "diag-gd": (flat(14.0), 5.0), "rank1-gd": ([12.0, 10.0, 9.0, 8.0, 7.6], 0.6),
                         "rankk-gd": (flat(9.0), 3.0)}}


def test_continual_claims_follow_their_rules(monkeypatch):
    from rank1lib import runs
    cfg = Cfg(seeds=[0, 1, 2], rank_k=5, name="cpu", cl_datasets=["mnist-5k", "fmnist"])
    table = paper_like_table()
    monkeypatch.setattr(runs, "stored_runs", cl_records(table))
    for ev in (claims._c8, claims._c9, claims._c10, claims._c11, claims._c12):
        ours, checks, recs, gate = ev(cfg)
        assert gate is None and claims._verdict(checks) == "agree", (ev.__name__, ours, checks)
    # hand-derived failures: rank-k clearly better than rank-1 (9.0 < 0.95 x 7.6 is false -> check (i) fails)
    table["mnist-5k"]["rankk-gd"] = ([5.0] * 5, 0.1)
    assert claims._verdict(claims._c11(cfg)[1]) == "disagree"
    # GD alone forgets less but has a higher A-FID than Rank-1 + GD: C8 agrees only in part
    table["mnist-5k"]["gd"] = ([10.0] * 5, 0.1)
    checks = claims._c8(cfg)[1]
    assert [h for _, h in checks] == [True, False, True] and claims._verdict(checks) == "partial"
    # A-FID@k rising at every task: C10 disagrees
    table["mnist-5k"]["rank1-gd"] = ([5.0, 6.0, 7.0, 8.0, 9.0], 0.6)
    assert claims._verdict(claims._c10(cfg)[1]) == "disagree"


def test_continual_claims_gate_and_pending(monkeypatch):
    from rank1lib import runs
    cfg = Cfg(seeds=[0, 1, 2], rank_k=5, name="cpu", cl_datasets=["mnist-5k", "fmnist"])
    table = paper_like_table()
    table["mnist-5k"]["joint"] = ([150.0] * 5, None)  # joint worse than fine-tune: the tier is noise
    monkeypatch.setattr(runs, "stored_runs", cl_records(table))
    assert "does not beat fine-tuning" in claims._c9(cfg)[3]
    del table["mnist-5k"]["gd"]
    assert claims._c9(cfg) is None  # a method it needs is not stored: pending


def test_markdown_settings_name_every_seed_and_device():
    base = {"id": "C8", "where": "Table 1", "claim": "c", "profile": "cpu", "verdict": "disagree",
            "paper": "p", "rule": "r", "ours": "o", "checks": [{"check": "x", "holds": False}]}
    run = {"method": "gd", "model": "mid", "params": 1114081, "epochs": 131, "commit": "abc1234"}
    settings = [dict(run, dataset="mnist-5k", seed=1, device="CPU (AMD EPYC, 2 cores)", date="2026-12-04 18:10:41 UTC"),
                dict(run, dataset="mnist-5k", seed=0, device="NVIDIA H100", date="2026-11-27 03:39:55 UTC"),
                dict(run, dataset="fmnist", seed=0, device="NVIDIA H100", date="2026-11-28 02:11:38 UTC")]
    several = claims.markdown(dict(base, settings=settings)).splitlines()[-1]
    assert several == ("- settings: mid UNet (1,114,081 parameters), 131 epochs per task, 3 stored results: "
                       "mnist-5k seeds 0, 1; fmnist seed 0; devices: CPU (AMD EPYC, 2 cores), NVIDIA H100; "
                       "dates 2026-11-27 to 2026-12-04")
    seedless = dict(run, dataset="mnist-5k", device="NVIDIA H100", date="2026-11-27 03:39:55 UTC")  # e.g. a trajectory
    mixed = claims.markdown(dict(base, settings=settings + [seedless])).splitlines()[-1]
    assert "4 stored results: mnist-5k seeds 0, 1; fmnist seed 0;" in mixed
    one = claims.markdown(dict(base, settings=settings[:1])).splitlines()[-1]
    assert one.endswith("dataset mnist-5k, seed 1, CPU (AMD EPYC, 2 cores), commit abc1234, 2026-12-04 18:10:41 UTC")
