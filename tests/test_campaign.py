"""Campaign plumbing: deadline stop and resume, NaN guard, snapshots, torn results, readers, status."""
import json
import os
import time

import numpy as np
import pytest
import torch

from rank1lib import store
from rank1lib.models import build_unet
from rank1lib.profiles import load_profile, reading
from rank1lib.train import (DeadlineReached, NonFiniteLoss, load_checkpoint, snapshot_steps, snapshots,
                            train)


def _data():
    g = torch.Generator().manual_seed(0)
    return torch.randint(0, 256, (24, 1, 32, 32), generator=g, dtype=torch.uint8), torch.arange(24) % 10


def _net(seed=0):
    torch.manual_seed(seed)
    return build_unet("tiny", 10)


def test_snapshot_steps_are_log_spaced():
    assert snapshot_steps(6400) == [0, 25, 50, 100, 200, 400, 800, 1600, 3200, 6400]
    assert snapshot_steps(4) == [0, 4]


def test_deadline_saves_checkpoint_and_resume_matches(tmp_path, monkeypatch):
    cfg = load_profile("ci", batch_size=8, ckpt_every=0)
    x, y = _data()
    ref = _net()
    out_ref = train(ref, x, y, cfg, steps=6, seed=1, progress=False)
    monkeypatch.setenv("RANK1_DEADLINE", str(time.time() - 1))  # already passed: stop after one step
    with pytest.raises(DeadlineReached, match="step 1/6"):
        train(_net(), x, y, cfg, steps=6, seed=1, ckpt_dir=tmp_path, progress=False)
    monkeypatch.delenv("RANK1_DEADLINE")
    net = _net(seed=5)
    out = train(net, x, y, cfg, steps=6, seed=1, ckpt_dir=tmp_path, progress=False)
    assert out["losses"] == out_ref["losses"]
    assert all(torch.equal(a, b) for a, b in zip(ref.state_dict().values(), net.state_dict().values()))


def test_training_seconds_are_split_by_the_device_that_spent_them(tmp_path, monkeypatch):
    """A run stopped on one machine and finished on another keeps each one's share of its optimiser time;
    seconds of a checkpoint saved before the split existed are 'unrecorded'; Table 3 shows the shares."""
    from rank1lib import runs, train as tr
    cfg = load_profile("ci", batch_size=8, ckpt_every=0)
    x, y = _data()
    monkeypatch.setattr(tr, "device_name", lambda device=None: "GPU-A")
    train(_net(), x, y, cfg, steps=4, seed=0, ckpt_dir=tmp_path, progress=False, stop_after=2)
    first = torch.load(tmp_path / "last" / "trainer.pt", weights_only=False)
    a = "GPU-A, fp32"  # keyed by device and the precision its steps ran in (ci: amp off)
    assert list(first["by_device"]) == [a] and first["by_device"][a] == first["seconds"] > 0
    monkeypatch.setattr(tr, "device_name", lambda device=None: "CPU-B")
    out = train(_net(), x, y, cfg, steps=4, seed=0, ckpt_dir=tmp_path, progress=False)
    split = out["train_seconds_by_device"]
    assert split[a] == first["seconds"] and split["CPU-B, fp32"] > 0
    assert sum(split.values()) == pytest.approx(out["train_seconds"], abs=1e-9)
    last = torch.load(tmp_path / "last" / "trainer.pt", weights_only=False)
    assert last["by_device"] == split and last["seconds"] == out["train_seconds"]
    assert set(split) == {a, "CPU-B, fp32"}
    # steps are split the same way: the campaign's estimate uses the rate of the machine it runs on
    assert first["steps_by_device"] == {a: 2} and last["steps_by_device"] == {a: 2, "CPU-B, fp32": 2}
    assert tr.measured_rate(tmp_path, cfg.amp) == (4, pytest.approx(split["CPU-B, fp32"] / 2, rel=1e-12))
    monkeypatch.setattr(tr, "device_name", lambda device=None: "GPU-A")
    assert tr.measured_rate(tmp_path, cfg.amp) == (4, pytest.approx(split[a] / 2, rel=1e-12))
    monkeypatch.setattr(tr, "device_name", lambda device=None: "CPU-C")  # never trained here: the run's mean
    assert tr.measured_rate(tmp_path, cfg.amp) == (4, pytest.approx(out["train_seconds"] / 4, rel=1e-12))
    assert tr.measured_rate(tmp_path / "nothing", cfg.amp) == (0, None)
    # resumed from an old checkpoint (seconds split, steps not): the seconds here include untimed steps
    old = tmp_path / "old" / "last"
    old.mkdir(parents=True)
    torch.save({"step": 30, "seconds": 90.0, "by_device": {"CPU-C, fp32": 80.0, "X": 10.0},
                "steps_by_device": {"CPU-C, fp32": 10}}, old / "trainer.pt")
    assert tr.measured_rate(old.parent, cfg.amp) == (30, pytest.approx(3.0))
    torch.save({"step": 30, "seconds": 0.0}, old / "trainer.pt")  # saved before seconds were kept: no rate
    assert tr.measured_rate(old.parent, cfg.amp) == (30, None)
    assert tr.device_seconds({"seconds": 10.0}) == {tr.UNRECORDED: 10.0}  # an old checkpoint
    assert tr.device_seconds({"seconds": 10.0, "by_device": {"CPU-B": 4.0}}) == {"CPU-B": 4.0, tr.UNRECORDED: 6.0}

    class Rec(dict):
        values = property(lambda self: self["values"])
    rec = lambda per: Rec(values={"task_train_seconds_by_device": per}, provenance={"device": "CPU-B"})  # noqa: E731
    assert runs.devices_text([rec([{"GPU-A": 1.0}, {"CPU-B": 199.0}])]) == "99.5% CPU-B + 0.5% GPU-A"
    assert runs.devices_text([rec([{"GPU-A": 5.0}, {"GPU-A": 5.0}])]) == "GPU-A"
    assert runs.devices_text([rec([{tr.UNRECORDED: 5.0}]), rec(None)]) == "CPU-B"


def test_finished_checkpoint_without_optimiser_loads_as_done_and_refuses_more_steps(tmp_path):
    from rank1lib.train import drop_optimiser
    cfg = load_profile("ci", batch_size=8, ckpt_every=2)
    x, y = _data()
    a, b = tmp_path / "a", tmp_path / "b"
    ref = _net()
    train(ref, x, y, cfg, steps=4, seed=0, ckpt_dir=a, progress=False)
    net = _net()
    train(net, x, y, cfg, steps=4, seed=0, ckpt_dir=b, progress=False, final_opt=False)
    assert all(torch.equal(u, v) for u, v in zip(ref.state_dict().values(), net.state_dict().values()))
    st_a = torch.load(a / "last" / "trainer.pt", weights_only=False)
    st_b = torch.load(b / "last" / "trainer.pt", weights_only=False)
    assert st_a["opt"] is not None and st_b["opt"] is None and st_a["step"] == st_b["step"] == 4
    assert (b / "last" / "trainer.pt").stat().st_size < (a / "last" / "trainer.pt").stat().st_size / 2
    again = _net(seed=3)  # loaded as finished: the stored weights, no training
    out = train(again, x, y, cfg, steps=4, seed=0, ckpt_dir=b, progress=False)
    assert out["losses"] == st_b["losses"]
    assert all(torch.equal(u, v) for u, v in zip(net.state_dict().values(), again.state_dict().values()))
    with pytest.raises(ValueError, match="no optimiser state"):
        train(_net(), x, y, cfg, steps=6, seed=0, ckpt_dir=b, progress=False)
    assert drop_optimiser(a) and not drop_optimiser(a)  # an existing finished checkpoint, once
    assert torch.load(a / "last" / "trainer.pt", weights_only=False)["opt"] is None
    assert load_checkpoint(_net(), None, a)[0] == 4
    c = tmp_path / "c"  # finished with its Adam state, then loaded by a run that keeps none: dropped
    train(_net(), x, y, cfg, steps=4, seed=0, ckpt_dir=c, progress=False)
    train(_net(), x, y, cfg, steps=4, seed=0, ckpt_dir=c, progress=False, final_opt=False)
    assert torch.load(c / "last" / "trainer.pt", weights_only=False)["opt"] is None


def test_non_finite_loss_stops_with_one_line(tmp_path):
    cfg = load_profile("ci", batch_size=8, ckpt_every=0, lr=1e9)
    x, y = _data()
    with pytest.raises(NonFiniteLoss, match=r"non-finite loss .* at step \d+ .*learning rate 1e\+09"):
        train(_net(), x, y, cfg, steps=60, seed=0, ckpt_dir=tmp_path, progress=False)


def test_snapshots_hold_the_weights_of_their_step(tmp_path):
    from safetensors.torch import load_file
    cfg = load_profile("ci", batch_size=8, ckpt_every=0)
    x, y = _data()
    init = {k: v.clone() for k, v in _net().state_dict().items()}
    net = _net()
    train(net, x, y, cfg, steps=3, seed=0, progress=False, snapshot_dir=tmp_path, snapshot_at=[0, 3])
    snaps = snapshots(tmp_path)
    assert sorted(snaps) == [0, 3]
    s0, s3 = load_file(str(snaps[0])), load_file(str(snaps[3]))
    assert all(torch.equal(s0[k], init[k]) for k in init)
    assert all(torch.equal(s3[k], v) for k, v in net.state_dict().items())


def test_corrupt_checkpoint_is_set_aside_and_old_one_used(tmp_path, capsys):
    cfg = load_profile("ci", batch_size=8, ckpt_every=2)
    x, y = _data()
    train(_net(), x, y, cfg, steps=4, seed=0, ckpt_dir=tmp_path, progress=False)
    (tmp_path / "last" / "trainer.pt").write_bytes(b"truncated")
    step, losses, _ = load_checkpoint(_net(), None, tmp_path)
    assert step == 0 and losses == []
    assert "unreadable" in capsys.readouterr().err
    assert list(tmp_path.glob("last.bad-*"))  # moved aside, not deleted


def test_torn_result_is_detected_and_set_aside(tmp_store):
    store.save("ci", "e", "n", {"k": 1}, {"v": 1.0}, {"a": np.arange(3)})
    assert store.load("ci", "e", "n", {"k": 1}) is not None
    d = store.result_dir("ci", "e")
    with open(d / "n.npz", "wb") as f:  # a newer array file beside the old record: torn
        np.savez(f, a=np.arange(5))
    assert store.load("ci", "e", "n", {"k": 1}) is None  # a reader: reported, left in place
    assert not list(d.glob("*.bad-*")) and (d / "n.json").exists()
    assert store.load("ci", "e", "n", {"k": 1}, owner=True) is None  # about to recompute: set aside
    assert list(d.glob("n.json.bad-*")) and list(d.glob("n.npz.bad-*"))


def test_reading_a_torn_result_never_changes_the_store(tmp_store, capsys):
    """A reader config or a cli_only reader shows the result pending and leaves a torn record where it is; the
    command that computes it moves it aside first."""
    cfg = {"k": 1}
    store.save("cpu", "e", "n", cfg, {"v": 1.0}, {"a": np.arange(3)})
    d = store.result_dir("cpu", "e")
    (d / "n.npz").write_bytes(b"torn")
    before = sorted(p.name for p in d.iterdir())
    with pytest.raises(store.ResultPending):
        store.load_or_compute("cpu", "e", "n", cfg, lambda: ({"v": 2.0}, None), cli_only=True)
    with pytest.raises(store.ResultPending):
        store.load_or_compute("cpu", "e", "n", cfg, lambda: ({"v": 2.0}, None), read_only=True)
    assert sorted(p.name for p in d.iterdir()) == before
    assert "left in place" in capsys.readouterr().err
    rec = store.load_or_compute("cpu", "e", "n", cfg, lambda: ({"v": 2.0}, None))  # computes: sets aside
    assert rec.values == {"v": 2.0} and list(d.glob("n.json.bad-*")) and list(d.glob("n.npz.bad-*"))


def test_results_never_hold_nan_tokens(tmp_store):
    store.save("ci", "e", "nan", {}, {"x": float("nan"), "y": [1.0, float("inf")], "z": np.float32(2)})
    text = (store.result_dir("ci", "e") / "nan.json").read_text()
    assert "NaN" not in text and "Infinity" not in text
    assert json.loads(text)["values"] == {"x": None, "y": [1.0, None], "z": 2.0}


def test_cli_only_profile_is_pending_in_notebooks(tmp_store):
    with pytest.raises(store.ResultPending, match="campaign --profile cpu"):
        store.load_or_compute("cpu", "e", "n", {}, lambda: ({}, None), cli_only=True)
    with pytest.raises(store.ResultPending):
        store.load_or_compute("ci", "e", "n", {}, lambda: ({}, None), **store.policy(reading(load_profile("ci"))))
    store.allow_cli_only(True)
    try:
        assert store.load_or_compute("cpu", "e", "n", {}, lambda: ({"v": 1}, None), cli_only=True).values == {"v": 1}
    finally:
        store.allow_cli_only(False)


def test_campaign_status_follows_the_store(tmp_store):
    from rank1lib import campaign
    cfg = load_profile("ci")
    items = {i.key: i for i in campaign.fisher_items(cfg)}
    vae = items["vae"]
    assert campaign.item_status(cfg, vae)["state"] == "pending"
    from rank1lib.analysis import vae_share
    vae_share(cfg, progress=False)
    assert campaign.item_status(cfg, vae)["state"] == "done"
    base = items["base-s0"]
    st = campaign.item_status(cfg, base)
    assert st["state"] == "pending" and st["missing"] == ["spectrum", "tweedie", "trajectory", "train"]


def test_campaign_runs_an_item_in_a_child_process_and_logs_it(tmp_store):
    from rank1lib import campaign
    assert campaign.campaign("ci", hours=0.2, jobs=1, threads=1, only=["vae"], log_dir=tmp_store / "logs") == 0
    cfg = load_profile("ci")
    vae = [i for i in campaign.fisher_items(cfg) if i.key == "vae"][0]
    assert campaign.item_status(cfg, vae)["state"] == "done"
    ledger = json.loads((store.results_root() / "ci" / "campaign.json").read_text())
    assert ledger[-1]["item"] == "vae" and ledger[-1]["result"] == "done" and ledger[-1]["threads"] == 1
    assert ledger[-1]["cpu"] == store.cpu_model()  # which processor, not only how many cores
    assert "run vae --profile ci" in (tmp_store / "logs" / "ci-vae.log").read_text()


def test_ctrl_c_ends_on_a_complete_step_with_a_checkpoint(tmp_path):
    import signal
    cfg = load_profile("ci", batch_size=8, ckpt_every=0)
    x, y = _data()
    ref = _net()
    out_ref = train(ref, x, y, cfg, steps=6, seed=2, progress=False)

    def interrupt_at_step_2(model, step):
        if step == 2:
            os.kill(os.getpid(), signal.SIGINT)
        return 0.0

    with pytest.raises(KeyboardInterrupt):
        train(_net(), x, y, cfg, steps=6, seed=2, ckpt_dir=tmp_path, progress=False, extra_loss=interrupt_at_step_2)
    step, losses, _ = load_checkpoint(_net(), None, tmp_path)
    assert step == 3 and losses == out_ref["losses"][:3]
    net = _net()
    out = train(net, x, y, cfg, steps=6, seed=2, ckpt_dir=tmp_path, progress=False)
    assert out["losses"] == out_ref["losses"]
    assert all(torch.equal(a, b) for a, b in zip(ref.state_dict().values(), net.state_dict().values()))


def test_longer_run_continues_a_shorter_one_exactly(tmp_store, monkeypatch):
    from rank1lib.analysis import analysis_net
    short = load_profile("ci", analysis_max_steps=0, analysis_epochs=1, train_per_class=4, batch_size=8)
    long_ = load_profile("ci", analysis_max_steps=0, analysis_epochs=3, train_per_class=4, batch_size=8)
    analysis_net(short, "mnist-5k", 0, "tiny", progress=False)
    seeded, info, _, _ = analysis_net(long_, "mnist-5k", 0, "tiny", progress=False)
    monkeypatch.setenv("RANK1_CKPT", str(tmp_store / "other"))  # a fresh place: the same run from scratch
    scratch, info2, _, _ = analysis_net(long_, "mnist-5k", 0, "tiny", progress=False)
    assert info["train_steps"] == info2["train_steps"] == 15
    assert seeded.losses == scratch.losses
    assert all(torch.equal(a, b) for a, b in zip(seeded.state_dict().values(), scratch.state_dict().values()))


def record_item_commands(monkeypatch, on_item):
    """Item commands go to on_item(argv, kw) instead of running (it returns nothing); anything else
    the campaign starts (git) runs."""
    from rank1lib import campaign
    real_popen = campaign.subprocess.Popen

    class FakeProc:
        returncode = 0

        def poll(self):
            return 0

    def popen(argv, **kw):
        if "rank1lib" not in argv:
            return real_popen(argv, **kw)
        on_item(argv, kw)
        return FakeProc()
    monkeypatch.setattr(campaign.subprocess, "Popen", popen)


def test_devices_give_one_worker_per_gpu_each_item_on_its_own(tmp_store, monkeypatch):
    """`campaign --devices 0,1`: two workers, and every child process of an item sees only its GPU."""
    from rank1lib import campaign
    seen = []

    def on_item(argv, kw):
        seen.append((argv[argv.index("run") + 1], kw["env"].get("CUDA_VISIBLE_DEVICES")))
        time.sleep(1.5)  # keep this worker busy so that the other one takes the next item
    record_item_commands(monkeypatch, on_item)
    assert campaign.campaign("ci", hours=0.2, only=["vae", "init-spread"], log_dir=tmp_store / "logs",
                             devices=["0", "1"]) == 0
    assert sorted(d for _, d in seen) == ["0", "1"] and sorted(e for e, _ in seen) == ["init_spread", "vae"]
    ledger = json.loads((store.results_root() / "ci" / "campaign.json").read_text())
    assert sorted(e["device"] for e in ledger) == ["0", "1"]


def campaign_methods():
    from rank1lib.continual import METHODS
    return list(METHODS)


def test_table1_items_wait_for_the_network_study_and_its_choice(tmp_store, monkeypatch):
    from rank1lib import campaign, study
    cfg = load_profile("ci")
    items = campaign.table1_items(cfg)
    # ci has seed 0 only and one continual-learning dataset: 8 methods on mnist-5k, 2 methods x 2 other lambdas
    assert len(items) == 8 + 4 and all("network study" in i.blocked for i in items)
    # a further dataset in cl_datasets adds its methods at its tier seeds (cl_other_seeds of the profile's)
    two = campaign.table1_items(load_profile("ci", cl_datasets=["mnist-5k", "fmnist"], seeds=[0, 1], cl_other_seeds=1))
    fm = [i.key for i in two if i.dataset == "fmnist"]
    assert fm == [f"cl-fmnist-s0-{m}" for m in campaign_methods()] and len(two) == 8 + 4 + 8 + 6
    assert campaign.item_status(cfg, items[0])["state"] == "blocked"

    class Rec(dict):
        values = property(lambda self: self["values"])
    fake = {m: Rec(values={"params": p, "rows": [{"step": 8, "train_seconds": t, "a_fid": a, "epochs": 3.2}]})
            for m, p, t, a in (("small3", 1, 10.0, 90.0), ("base", 2, 20.0, 50.0), ("mid", 3, 99.0, 40.0))}
    monkeypatch.setattr(study, "stored_candidates", lambda cfg, ds, models=study.CANDIDATES, seed=0: fake)
    # best 40 -> within 60: base (20 s) and mid (99 s); base is cheaper -> model base, 3 epochs per task
    blocked = campaign.table1_items(cfg)[0].blocked
    assert "model=base, epochs=3" in blocked and "now tiny, 1" in blocked
    ok = load_profile("ci", model="base", epochs=3, cl_datasets=["mnist-5k", "fmnist"])
    items = campaign.table1_items(ok)
    # mnist-5k (8), the Rank-1 + GD sweep that chooses lambda (2), fmnist (8, waiting), Diag + GD's sweep (2)
    assert not any(i.blocked for i in items[:10] + items[18:])
    assert all("lambda sweep" in i.blocked for i in items[10:18])
    assert items[0].cmds[0].argv("ci")[-2:] == ["--method", "joint"]
    assert items[8].key == "cl-mnist-5k-s0-rank1-gd-lam340000" and items[8].cmds[0].sets == {"lam": 340000.0}
    assert items[10].key == "cl-fmnist-s0-joint" and items[-1].key == "cl-mnist-5k-s0-diag-gd-lam7.68e+06"
    # the sweep: Rank-1 + GD is best at 340000 -> the later items wait for the profile to say so
    a_fid = {15000.0: 20.0, 340000.0: 12.0, study.PAPER_LAM * 512: 30.0}
    swept = {"rank1-gd": {lam: Rec(values={"a_fid": a}) for lam, a in a_fid.items()}}
    monkeypatch.setattr(study, "sweep", lambda cfg, ds="mnist-5k", seed=0: swept)
    assert "chose lam=340000" in campaign.table1_items(ok)[12].blocked
    assert not any(i.blocked for i in campaign.table1_items(load_profile("ci", model="base", epochs=3, lam=340000.0)))


def test_gpu_tier_runs_in_short_steps_and_skips_what_does_not_fit(tmp_store, monkeypatch, capsys):
    """`campaign --profile gpu --minutes M`: an item whose measured time exceeds M is not started; one
    that fits is run (its command recorded here, not executed: no GPU in the tests)."""
    from rank1lib import campaign
    cfg = load_profile("gpu")
    items = campaign.all_items(cfg)
    assert items and all(i.minutes and len(i.cmds) == 1 for i in items)
    assert all(c.sets.get("analysis_model") == "cl" for i in items for c in i.cmds)
    started = []
    record_item_commands(monkeypatch, lambda argv, kw: started.append(argv))
    assert campaign.campaign("gpu", hours=4 / 60, jobs=1, only=["cl-mnist-5k-s1"], log_dir=tmp_store / "l") == 0
    assert started == [] and "more than is left; not started" in capsys.readouterr().out
    assert campaign.campaign("gpu", hours=7 / 60, jobs=1, only=["cl-mnist-5k-s1"], log_dir=tmp_store / "l") == 0
    assert len(started) == 1 and started[0][started[0].index("run"):started[0].index("run") + 2] == ["run", "spectrum"]
    assert "analysis_model=cl" in started[0] and "--seed" in started[0] and "1" in started[0]


def _unit_costs(monkeypatch, step=0.0, image=0.0, study_eval=0.0, setup=0.0, gd=2.0):
    """Estimates with chosen unit costs, so that a test counts the work left instead of copying rates."""
    from rank1lib import estimates
    monkeypatch.setattr(estimates, "SEC_PER_STEP_1T", {})
    monkeypatch.setattr(estimates, "sec_per_step", lambda model: step)
    for name, v in (("SEC_PER_IMAGE_1T", image), ("SEC_PER_STUDY_EVAL_1T", study_eval), ("SETUP_S", setup),
                    ("GD_COST", gd)):
        monkeypatch.setattr(estimates, name, v)


def test_a_study_item_with_committed_state_is_partial_with_what_is_left(tmp_store, monkeypatch):
    """A network-study item that trained part-way and evaluated one A-FID point shows as partial; its
    estimate counts the steps left at the run's own measured rate and the points not yet evaluated."""
    from rank1lib import campaign
    from rank1lib.continual import eval_tag
    from rank1lib.study import study_dir
    cfg = load_profile("cpu")
    item = next(i for i in campaign.all_items(cfg) if i.key == "cl-study-small3")
    icfg = campaign.item_cfg(cfg, item)
    steps, points = max(icfg.study_steps), len(icfg.study_steps)
    _unit_costs(monkeypatch, step=9.0, study_eval=1.0)
    fresh = campaign.item_status(cfg, item)
    assert (fresh["state"], fresh["step"], fresh["steps"]) == ("pending", 0, steps)
    assert fresh["eta_s"] == pytest.approx(steps * 9.0 + points)  # the estimated rate before any step
    d = study_dir(icfg, icfg.dataset, 0)
    (d / "ckpt" / "last").mkdir(parents=True)
    torch.save({"step": 1000, "seconds": 500.0}, d / "ckpt" / "last" / "trainer.pt")  # its own rate: 0.5 s
    (d / f"eval-{icfg.study_steps[0]}-{eval_tag(icfg)}.json").write_text("[1, 2, [3]]")
    st = campaign.item_status(cfg, item)
    assert st["state"] == "partial" and st["step"] == 1000
    assert st["eta_s"] == pytest.approx((steps - 1000) * 0.5 + points - 1)


def test_a_continual_item_counts_only_the_task_steps_still_to_run(tmp_store, monkeypatch):
    """A Table-1 item resumes from its task folders: the status shows the steps done over all tasks, and
    the estimate counts the steps still to run (a distillation step as GD_COST plain ones), the FID
    images and the replay images still to make (hand-counted: mnist-5k has 100 held-out images per
    class, the tier samples 500 replay images per class)."""
    from rank1lib import campaign
    from rank1lib.continual import eval_tag, task_dirs
    cfg = load_profile("cpu")
    items = {i.key: i for i in campaign.table1_items(cfg)}
    n = cfg.epochs * 7  # 800 images per two-class task of mnist-5k, ceil(800 / 128) = 7 steps per epoch
    fid = 200 * (1 + 2 + 3 + 4 + 5)  # FID images of the evaluations after tasks 1..5
    pools = 1000 * (1 + 2 + 3 + 4)  # replay pools after tasks 1..4: 500 per class seen
    item = items["cl-mnist-5k-s0-rank1-gd"]
    _unit_costs(monkeypatch, step=1.0)  # count steps
    fresh = campaign.item_status(cfg, item)
    assert (fresh["step"], fresh["steps"]) == (0, 5 * n)
    assert fresh["eta_s"] == pytest.approx(n + 4 * n * 2.0)
    _unit_costs(monkeypatch, image=1.0)  # count images
    assert campaign.item_status(cfg, item)["eta_s"] == fid + pools
    dirs = task_dirs(cfg, "mnist-5k", "rank1-gd", 0)
    for d, step in ((dirs[0], n), (dirs[1], n // 2)):
        (d / "ckpt" / "last").mkdir(parents=True)
        torch.save({"step": step, "seconds": 1.0}, d / "ckpt" / "last" / "trainer.pt")
    (dirs[0] / f"eval-{eval_tag(cfg)}.json").write_text("{}")
    (dirs[0] / "pool-500-50-b1000.pt").write_bytes(b"")
    st = campaign.item_status(cfg, item)
    assert (st["step"], st["steps"]) == (n + n // 2, 5 * n)
    assert st["eta_s"] == fid - 200 + pools - 1000
    _unit_costs(monkeypatch, step=1.0)
    assert campaign.item_status(cfg, item)["eta_s"] == pytest.approx(((n - n // 2) + 3 * n) * 2.0)
    # task 1 is shared: Rank-1 without distillation has it done too; its steps count one each
    st = campaign.item_status(cfg, items["cl-mnist-5k-s0-rank1"])
    assert st["step"] == n and st["eta_s"] == pytest.approx(4 * n)
    # joint trains the five tasks at once (ceil(4000 / 128) = 32 steps per epoch), one evaluation of all five
    st = campaign.item_status(cfg, items["cl-mnist-5k-s0-joint"])
    assert (st["step"], st["steps"], st["eta_s"]) == (0, cfg.epochs * 32, cfg.epochs * 32)
    _unit_costs(monkeypatch, image=1.0)
    assert campaign.item_status(cfg, items["cl-mnist-5k-s0-joint"])["eta_s"] == 1000


def test_a_learned_task1_item_reports_its_task2_steps_and_what_is_left(tmp_store, monkeypatch):
    """A two-task item after a stored task 1 of L steps: its task 2 runs L steps (a distillation step as
    GD_COST plain ones); a committed task-2 checkpoint makes it partial with the steps left at its own
    measured rate; the replay pool (1,000 images) and the FID evaluations (3 seeds x 2 tasks x 200 images)
    count until made."""
    from rank1lib import campaign, continual, store
    from rank1lib.learned_task1 import name_of, root
    from rank1lib.runs import dataset_cfg
    cfg = load_profile("cpu")
    items = {i.key: i for i in campaign.learned_items(cfg)}
    L = 1000
    store.save("cpu", "learned_task1", name_of("mnist-5k", None, 0, None), {}, {"steps": L})
    _unit_costs(monkeypatch, step=1.0)
    st = campaign.item_status(cfg, items["l1-mnist-5k-s0-gd"])
    assert (st["state"], st["step"], st["steps"], st["eta_s"]) == ("pending", 0, L, pytest.approx(2.0 * L))
    icfg = dataset_cfg(campaign.item_cfg(cfg, items["l1-mnist-5k-s0-finetune"]), "mnist-5k")
    d2 = root(icfg, "mnist-5k", 0) / continual.lineage(icfg, "finetune", 1) / "task2" / "ckpt" / "last"
    d2.mkdir(parents=True)
    torch.save({"step": 600, "seconds": 1800.0}, d2 / "trainer.pt")  # its own rate, 3 s/step, counts
    st = campaign.item_status(cfg, items["l1-mnist-5k-s0-finetune"])
    assert (st["state"], st["step"], st["eta_s"]) == ("partial", 600, pytest.approx(3.0 * (L - 600)))
    _unit_costs(monkeypatch, image=1.0)
    assert campaign.item_status(cfg, items["l1-mnist-5k-s0-gd"])["eta_s"] == 1000 + 3 * 2 * 200
    torch.save({"step": 600, "seconds": 0.0}, d2 / "trainer.pt")
    assert campaign.item_status(cfg, items["l1-mnist-5k-s0-finetune"])["eta_s"] == 3 * 2 * 200


def test_a_pending_lambda_borrows_the_task2_rate_a_sibling_measured_on_this_machine(tmp_store, monkeypatch):
    """A two-task run at a new lambda has no checkpoint: its task 2 is estimated at the rate another lambda of
    the same method measured here (same network, same step), not at the reference rate; a sibling's rate
    measured on another machine, or a sibling of another method, does not count."""
    from rank1lib import campaign, continual, store, train as tr
    from rank1lib.learned_task1 import name_of, root
    from rank1lib.profiles import Config
    from rank1lib.runs import dataset_cfg
    cfg = load_profile("cpu")
    items = {i.key: i for i in campaign.learned_items(cfg)}
    L = 1000
    store.save("cpu", "learned_task1", name_of("mnist-5k", None, 0, None), {}, {"steps": L})
    _unit_costs(monkeypatch, step=1.0)  # reference: 2 s per distillation step
    monkeypatch.setattr(tr, "device_name", lambda device=None: "CPU-HERE")
    here = tr.precision_label("cpu", tr.amp_on(cfg.amp, "cpu", warn=False))
    pending = items["l1-mnist-5k-s0-rank1-gd-lam150"]
    assert campaign.item_status(cfg, pending)["eta_s"] == pytest.approx(2.0 * L)

    def sibling(method, lam, by_device, steps_by_device):
        icfg = dataset_cfg(Config(cfg, lam=lam), "mnist-5k")
        d = root(icfg, "mnist-5k", 0) / continual.lineage(icfg, method, 1) / "task2" / "ckpt" / "last"
        d.mkdir(parents=True, exist_ok=True)
        n = sum(steps_by_device.values())
        torch.save({"step": n, "seconds": sum(by_device.values()), "by_device": by_device,
                    "steps_by_device": steps_by_device}, d / "trainer.pt")
        return d

    sibling("diag-gd", 15000.0, {here: 4000.0}, {here: 100})  # another method: not a sibling
    other = sibling("rank1-gd", 1500.0, {"CPU-ELSEWHERE, fp32": 500.0}, {"CPU-ELSEWHERE, fp32": 100})
    assert campaign.item_status(cfg, pending)["eta_s"] == pytest.approx(2.0 * L)
    torch.save({"step": 300, "seconds": 3000.0, "by_device": {"CPU-ELSEWHERE, fp32": 500.0, here: 2500.0},
                "steps_by_device": {"CPU-ELSEWHERE, fp32": 100, here: 200}}, other / "trainer.pt")
    st = campaign.item_status(cfg, pending)
    assert (st["state"], st["step"], st["eta_s"]) == ("pending", 0, pytest.approx(12.5 * L))
    # the sibling itself keeps its own rate here (12.5 s/step) for its own steps left
    assert campaign.item_status(cfg, items["l1-mnist-5k-s0-rank1-gd-lam1500"])["eta_s"] == pytest.approx(12.5 * 700)


def test_only_and_skip_select_items_by_glob():
    """--skip '*-gd*' leaves exactly the Table-1 runs without distillation (checked against each item's
    --method); --only takes globs and exact names; a pattern that matches nothing is an error."""
    from rank1lib import campaign
    items = campaign.all_items(load_profile("cpu"))
    method = {i.key: i.cmds[0].method for i in items}
    kept = {i.key for i in campaign.select_items(items, skip=["*-gd*"])}
    gd = {k for k, m in method.items() if m in ("gd", "diag-gd", "rank1-gd", "rankk-gd")}
    assert gd and not kept & gd and kept | gd == set(method)
    fm = campaign.select_items(items, only=["cl-fmnist-s0-*"], skip=["*-s0-gd"])
    assert [i.key for i in fm] == [f"cl-fmnist-s0-{m}" for m in
                                    ("joint", "finetune", "diag", "rank1", "diag-gd", "rank1-gd", "rankk-gd")]
    assert [i.key for i in campaign.select_items(items, only=["base-s1"])] == ["base-s1"]
    with pytest.raises(ValueError, match="no campaign item matches 'cl-fmnist-s0-jont'"):
        campaign.select_items(items, only=["cl-fmnist-s0-jont"])


def test_bf16_autocast_only_where_the_device_does_bf16_in_hardware(tmp_path, monkeypatch, capsys, cpu_without_bf16):
    """amp=on trains with bf16 autocast on a CPU with AVX512-BF16/AMX; on one without, it trains exactly as
    amp=off (fp32, same losses and weights), warns once, and keys its seconds 'fp32'."""
    from rank1lib import train as tr
    x, y = _data()
    monkeypatch.setattr(tr, "_WARNED", set())  # warned once per process: an earlier test may have warned
    assert not tr.native_bf16("cpu") and not tr.amp_on("on", "cpu") and not tr.amp_on("auto", "cpu")
    assert "no native bf16" in capsys.readouterr().err
    monkeypatch.setattr(tr, "_WARNED", set())
    assert not tr.amp_on("on", "cpu", warn=False) and capsys.readouterr().err == ""  # estimates stay quiet
    ref_net, net = _net(seed=3), _net(seed=3)
    ref = train(ref_net, x, y, load_profile("ci", batch_size=8, amp="off", ckpt_every=0), steps=3, progress=False)
    out = train(net, x, y, load_profile("ci", batch_size=8, amp="on", ckpt_every=0), steps=3, seed=0,
                ckpt_dir=tmp_path, progress=False)
    assert out["losses"] == ref["losses"]
    assert all(torch.equal(p, q) for p, q in zip(ref_net.state_dict().values(), net.state_dict().values()))
    assert list(out["train_seconds_by_device"]) == [tr.precision_label("cpu", False)]
    assert tr.precision_label("cpu", False).endswith(", fp32")
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: True, raising=False)
    assert tr.native_bf16("cpu") and tr.amp_on("on", "cpu") and not tr.amp_on("off", "cpu")
    assert tr.precision_label("cpu", True).endswith(", bf16 autocast")


def test_the_continual_chapters_show_every_dataset_and_seed_the_campaign_runs(tmp_store):
    """runs.tier_datasets / tier_seeds (what chapters 5 and 6 show) against the campaign's own Table-1
    items: at cpu, mnist-5k on seeds 0-2 and Fashion-MNIST on seed 0; at ci, only the profile's dataset."""
    from rank1lib import campaign, runs
    from rank1lib.continual import TABLE1
    cfg = load_profile("cpu")
    planned = {(i.dataset, i.seed) for i in campaign.table1_items(cfg)
               if not i.sets and i.cmds[0].method in TABLE1}
    shown = {(d, s) for d in runs.tier_datasets(cfg) for s in runs.tier_seeds(cfg, d)}
    assert shown == planned == {("mnist-5k", 0), ("mnist-5k", 1), ("mnist-5k", 2), ("fmnist", 0)}
    ci = load_profile("ci")
    assert runs.tier_datasets(ci) == [ci.dataset] and runs.tier_seeds(ci, "fmnist") == list(ci.seeds)


def test_a_partial_table1_says_what_is_stored_and_what_is_pending():
    """The line over a partial Table 1, hand-written: mnist-5k at cpu still owes seeds 1 and 2; Fashion-MNIST
    runs seed 0 only, so with all six methods nothing but the seed-0 label remains."""
    from rank1lib import runs
    from rank1lib.continual import TABLE1
    cfg = load_profile("cpu")
    tail = ". The verdicts below use the seeds stored for every method they compare."
    assert runs.partial_note(cfg, "mnist-5k", {"joint": [], "gd": []}) == (
        "**mnist-5k, partial** (profile `cpu`, seed 0 only): 2 of 6 methods stored; pending: Diag w/o GD, "
        "Rank-1 w/o GD, Diag + GD, Rank-1 + GD (paper's method); seeds 1, 2 pending" + tail)
    assert runs.partial_note(cfg, "fmnist", dict.fromkeys(TABLE1)) == (
        "**fmnist, partial** (profile `cpu`, seed 0 only): 6 of 6 methods stored" + tail)
    later = {1: ["joint", "diag", "rank1", "gd"], 2: ["joint"]}
    assert runs.partial_note(cfg, "mnist-5k", dict.fromkeys(TABLE1), later) == (
        "**mnist-5k, partial** (profile `cpu`, seed 0 only): 6 of 6 methods stored; seed 1: 4 of 6 methods "
        "stored; seed 2: 1 of 6 methods stored" + tail)


def test_stored_later_lists_each_later_seeds_stored_methods(monkeypatch):
    """runs.stored_later asks the store once per later seed of the tier (mnist-5k at cpu: seeds 1, 2;
    Fashion-MNIST: none) and keeps the methods found, in Table-1 order."""
    from rank1lib import runs
    in_store = {1: {"gd", "joint", "rank1"}, 2: set()}
    asked = []

    def fake_stored(c, d, methods, seeds=None):
        asked.append((d, tuple(seeds)))
        return {m: ["rec"] for m in methods if m in in_store[seeds[0]]}
    monkeypatch.setattr(runs, "stored_runs", fake_stored)
    cfg = load_profile("cpu")
    assert runs.stored_later(cfg, "mnist-5k") == {1: ["joint", "rank1", "gd"], 2: []}
    assert asked == [("mnist-5k", (1,)), ("mnist-5k", (2,))]
    assert runs.stored_later(cfg, "fmnist") == {} and len(asked) == 2


def test_paper_budget_items_follow_the_issue_order_and_train_200_epochs_of_full_mnist():
    """The paper's budget: base-resnet on mnist-5k first, then base and base-resnet on full MNIST (60,000
    images, 200 epochs at batch 128 = 200 x ceil(60000 / 128) steps, snapshots meeting the mnist-5k run at
    6,400 steps), then Small-3 and Small-1; all before the lowest-priority base-s0-x4."""
    from rank1lib import campaign
    from rank1lib.analysis import analysis_dir
    from rank1lib.train import steps_for
    cfg = load_profile("cpu")
    keys = [i.key for i in campaign.all_items(cfg)]
    want = ["base-resnet-s0", "mnist-base-s0", "mnist-base-resnet-s0", "mnist-small3-s0", "mnist-small1-s0"]
    assert [k for k in keys if k in want] == want
    assert keys.index("mnist-small1-s0") < keys.index("base-s0-x4") == len(keys) - 1
    item = next(i for i in campaign.all_items(cfg) if i.key == "mnist-base-s0")
    assert item.dataset == "mnist" and item.arch == "base"
    assert [c.experiment for c in item.cmds] == ["spectrum", "tweedie", "trajectory"]
    acfg, ckpt = analysis_dir(campaign.item_cfg(cfg, item), "mnist", 0, "base")
    n = steps_for(acfg, 60_000)
    assert n == 200 * 469 and ckpt.name.startswith("mnist-base-s0-")
    assert {6400, 12800, 25600, 51200, n} <= set(snapshot_steps(n))


def test_analysis_amp_models_train_in_bf16_and_say_so_in_their_config():
    """A model listed in analysis_amp_models gets amp=on in its training folder's settings and in its
    results' config (a different folder from the fp32 run); the other models keep the profile's amp."""
    from rank1lib.analysis import analysis_dir, train_cfg
    cfg = load_profile("cpu", analysis_amp_models=["base-resnet"])
    assert train_cfg(cfg, "base-resnet").amp == "on" and train_cfg(cfg, "base").amp == cfg.amp == "off"
    a, da = analysis_dir(cfg, "mnist-5k", 0, "base-resnet")
    b, db = analysis_dir(load_profile("cpu", analysis_amp_models=[]), "mnist-5k", 0, "base-resnet")
    assert a.amp == "on" and b.amp == "off" and da != db


def test_prune_removes_only_what_finished_items_no_longer_need(tmp_store, monkeypatch):
    from rank1lib import campaign, runs
    from rank1lib.analysis import analysis_dir
    from rank1lib.continual import run_root
    from rank1lib.runs import dataset_cfg
    cfg = load_profile("ci")
    done_a = campaign.analysis_item(cfg, "a-s0", "done analysis", "tiny")
    part_a = campaign.analysis_item(cfg, "a-s1", "partial analysis", "tiny", seed=1)
    cl = [campaign.Item(runs.cl_item("mnist-5k", 0, m), m, [campaign.Cmd("continual", "mnist-5k", 0, method=m)],
                        None, "mnist-5k", 0) for m in ("joint", "rank1")]
    dirs = {}
    for it in (done_a, part_a):
        icfg = campaign.item_cfg(cfg, it)
        d = analysis_dir(icfg, icfg.dataset, it.seed, it.arch)[1]
        (d / "snapshots").mkdir(parents=True)
        (d / "snapshots" / "step-000000.safetensors").write_bytes(b"0" * 100)
        (d / "last").mkdir()
        (d / "last" / "diffusion_pytorch_model.safetensors").write_bytes(b"w" * 100)
        torch.save({"step": 4, "losses": [1.0], "opt": {"m": torch.zeros(10_000)}}, d / "last" / "trainer.pt")
        dirs[it.key] = d
    task1 = run_root(dataset_cfg(campaign.item_cfg(cfg, cl[0]), "mnist-5k"), "mnist-5k", 0) / "shared" / "task1"
    (task1 / "ckpt" / "last").mkdir(parents=True)
    for name in ("stats-rank1-n8.pt", "pool-1.pt", "samples-x.pt", "ckpt/last/diffusion_pytorch_model.safetensors",
                 "train.json", "eval-x.json"):
        (task1 / name).write_bytes(b"x" * 50)
    state = {"a-s0": "done", "a-s1": "partial", cl[0].key: "done", cl[1].key: "partial"}
    monkeypatch.setattr(campaign, "item_status", lambda cfg, it: {"state": state[it.key]})
    items = [done_a, part_a] + cl
    campaign.prune_finished(cfg, items)
    assert not (dirs["a-s0"] / "snapshots").exists()
    assert torch.load(dirs["a-s0"] / "last" / "trainer.pt", weights_only=False) == {"step": 4, "losses": [1.0],
                                                                                     "opt": None}
    assert (dirs["a-s0"] / "last" / "diffusion_pytorch_model.safetensors").read_bytes() == b"w" * 100
    assert (dirs["a-s1"] / "snapshots" / "step-000000.safetensors").exists()  # partial: untouched
    assert torch.load(dirs["a-s1"] / "last" / "trainer.pt", weights_only=False)["opt"] is not None
    assert (task1 / "stats-rank1-n8.pt").exists()  # one method of the run folder still runs
    state[cl[1].key] = "done"
    rows = campaign.prune_finished(cfg, items, dry_run=True)
    assert sorted(p.name for p, kind, size in rows) == ["pool-1.pt", "samples-x.pt", "stats-rank1-n8.pt"]
    assert (task1 / "pool-1.pt").exists()  # dry run
    campaign.prune_finished(cfg, items)
    assert sorted(str(p.relative_to(task1)) for p in task1.rglob("*") if p.is_file()) == [
        "ckpt/last/diffusion_pytorch_model.safetensors", "eval-x.json", "train.json"]
    assert campaign.prune_finished(cfg, items) == []  # nothing left to prune


@pytest.mark.parametrize("profile", ["cpu", "gpu"])
def test_every_campaign_command_names_a_registered_experiment(profile):
    """The CLI's registry knows every experiment a campaign item runs (a missing module fails the item
    at once, in a child process, where nobody sees it until the sitting's log is read)."""
    import subprocess
    import sys
    from rank1lib import campaign
    out = subprocess.run([sys.executable, "-c", "from rank1lib import registry; print(' '.join(registry.load_all()))"],
                         capture_output=True, text=True, check=True).stdout  # a fresh process: what the CLI sees
    known = out.split()
    wanted = {c.experiment for it in campaign.all_items(load_profile(profile)) for c in it.cmds}
    assert wanted - set(known) == set()


def test_prune_drops_a_finished_task2_but_keeps_task1_and_unfinished_runs(tmp_store, monkeypatch):
    """Two-task items: once a method's item is done its task-2 weights go (evaluations stay); task 1's
    state and a method still running keep everything."""
    from rank1lib import campaign, continual
    from rank1lib.learned_task1 import root
    from rank1lib.runs import dataset_cfg
    cfg = load_profile("cpu")
    items = campaign.learned_items(cfg)
    icfg = dataset_cfg(campaign.item_cfg(cfg, items[0]), "mnist-5k")
    r = root(icfg, "mnist-5k", 0)
    (r / "task1" / "ckpt" / "last").mkdir(parents=True)
    dirs = {m: r / continual.lineage(icfg, m, 1) / "task2" for m in ("finetune", "gd")}
    for d in dirs.values():
        (d / "ckpt" / "last").mkdir(parents=True)
        (d / "ckpt" / "last" / "w.safetensors").write_bytes(b"0" * 10)
        (d / "eval-after-fs0-x.json").write_text("{}")
    done = {"l1-mnist-5k-s0-task1", "l1-mnist-5k-s0-finetune"}
    monkeypatch.setattr(campaign, "item_status", lambda c, it: {"state": "done" if it.key in done else "partial"})
    campaign.prune_finished(cfg, items)
    assert not (dirs["finetune"] / "ckpt").exists() and (dirs["finetune"] / "eval-after-fs0-x.json").exists()
    assert (dirs["gd"] / "ckpt" / "last" / "w.safetensors").exists() and (r / "task1" / "ckpt").exists()


def test_a_trajectory_item_first_computes_the_snapshots_stored_so_far(tmp_store, monkeypatch):
    """Every start of an analysis item with a trajectory begins with `trajectory_so_far` (the statistics of
    the snapshots its unfinished run has stored), which the item's status does not count."""
    from rank1lib import campaign
    cfg = load_profile("cpu")
    item = next(i for i in campaign.all_items(cfg) if i.key == "mnist-base-resnet-s0")
    started = []
    record_item_commands(monkeypatch, lambda argv, kw: started.append(argv[argv.index("run") + 1]))
    result, _ = campaign.run_item(cfg, item, 1, time.time() + 60, tmp_store)
    assert result == "done" and started == ["trajectory_so_far", "spectrum", "tweedie", "trajectory"]
    assert campaign.item_status(cfg, item)["missing"] == ["spectrum", "tweedie", "trajectory"]


def test_until_is_the_next_such_clock_time():
    import datetime as dt
    from rank1lib.campaign import hours_until
    night = dt.datetime(2026, 12, 6, 23, 30)
    assert hours_until("01:15", now=night) == pytest.approx(1.75)  # tomorrow's 01:15
    assert hours_until("23:45", now=night) == pytest.approx(0.25)  # later today
    assert hours_until("23:30", now=night) == pytest.approx(24.0)  # now means the next one


def test_until_refuses_a_malformed_time_in_one_line(capsys):
    from rank1lib.__main__ import main
    for bad in ("25:00", "1h", "01:75"):
        assert main(["campaign", "--until", bad, "--dry-run"]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("error: --until takes a local clock time HH:MM") and "\n" not in err


def test_the_plan_says_when_this_cpu_lacks_the_bf16_its_estimates_assume(tmp_store, monkeypatch, capsys,
                                                                         cpu_without_bf16):
    """The cpu tier trains in bf16 where the CPU has it; on one without, the plan says its reference
    estimates are short. The ci profile (amp auto: fp32 on any CPU) and a bf16 CPU get no such note."""
    from rank1lib import campaign
    items = campaign.all_items(load_profile("cpu"))
    assert campaign.slow_without_bf16(load_profile("cpu"), items)
    assert not campaign.slow_without_bf16(load_profile("ci"), campaign.all_items(load_profile("ci")))
    campaign.print_status(load_profile("cpu"), items[:1], [campaign.item_status(load_profile("cpu"), items[0])])
    assert "no native bf16" in capsys.readouterr().out
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: True, raising=False)
    assert not campaign.slow_without_bf16(load_profile("cpu"), items)
