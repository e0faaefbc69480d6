"""The ledger per model and budget: the near-convergence premise, the rule over seeds, the scale table,
and the continual-learning premise (task 1 learned), each on hand-made results."""
import numpy as np
import pytest

from rank1lib import claims, scales, store
from rank1lib.profiles import load_profile


class Fake(store.Result):
    pass


def fake(values, arrays=None, experiment="spectrum"):
    r = Fake({"profile": "cpu", "experiment": experiment, "name": "x", "config": {"seed": 0}, "values": values,
              "provenance": {"device": "cpu", "commit": "abc", "date": "2026-12-05"}})
    r["_arrays"] = arrays or {}
    return r


def test_premise_on_a_linear_loss_by_hand():
    """Loss 1 + (1000 - s) / 1000 at window centres s = 0.5..999.5: the mean over (900, 1000] is 1.05 and over
    (450, 500] is 1.525, so the change over the last doubling is (1.05 - 1.525) / 1.525 = -31.1% (a fall): not met."""
    s = np.arange(1000) + 0.5
    p = scales.near_convergence(np.stack([s, 1 + (1000 - s) / 1000], 1), 1000)
    assert p["loss_end"] == pytest.approx(1.05) and p["loss_half"] == pytest.approx(1.525)
    assert p["change"] == pytest.approx(-0.475 / 1.525) and not p["holds"] and "-31.1%" in p["text"] and "not met" in p["text"]
    flat = scales.near_convergence(np.stack([s, np.full(1000, 0.02)], 1), 1000)
    assert flat["holds"] and flat["change"] == pytest.approx(0.0)


def spectrum(err_rank1, params=151_249, steps=6400):
    t = [100, 300, 500, 700, 900]
    s = (np.arange(400) + 0.5) * steps / 400
    curve = np.stack([s, np.full(400, 0.02)], 1)  # a flat loss: the premise is met
    return fake({"t": t, "r": [0.1] * 5, "share": [0.9] * 5, "err_diag": [0.99] * 5, "err_rank1": [err_rank1] * 5,
                 "mu_cos": np.eye(5).tolist(), "params": params, "train_steps": steps, "arch": "base"},
                {"cos": np.full((5, 4), 0.5), "loss_curve": curve})


@pytest.mark.parametrize("errs, per_seed, verdict", [
    ((0.5, 0.5, 1.2), ["agree", "agree", "partial"], "agree"),    # mean 0.733 < 0.99 and 2 of 3 seeds agree
    ((0.5, 1.2, 1.2), ["agree", "partial", "partial"], "partial"),  # mean 0.967 < 0.99 but 1 of 3 seeds agrees
    ((1.2, 1.2, 1.2), ["partial"] * 3, "partial"),
])
def test_c5_over_seeds_is_the_mean_run_kept_only_with_a_majority(monkeypatch, errs, per_seed, verdict):
    monkeypatch.setattr(scales, "spectra", lambda scale, seeds=None: {s: spectrum(e) for s, e in enumerate(errs)})
    row = claims.at_scale("C5", scales.BY_KEY["base-mnist-5k"])
    assert list(row["per_seed"].values()) == per_seed and row["verdict"] == verdict
    assert row["premise"]["holds"] and row["column"] == "base UNet, mnist-5k"
    assert row["label"] == "base UNet (151,249 parameters), mnist-5k, 6,400 steps"


def test_scale_table_puts_each_verdict_under_its_model_and_budget(monkeypatch):
    got = {"base-mnist": spectrum(0.5, steps=93_800), "cl-mnist-5k": spectrum(1.2, params=35_746_817)}
    monkeypatch.setattr(scales, "spectra", lambda scale, seeds=None: {0: got[scale.key]} if scale.key in got else {})
    row = claims.ledger("cpu")[claims.CLAIMS.index(claims.BY_ID["C5"])]
    assert row["headline"].startswith("base UNet (151,249 parameters), full MNIST, 93,800 steps")
    assert row["verdict"] == "agree" and [s["scale"] for s in row["scales"]] == ["base-mnist", "cl-mnist-5k"]
    table = {r["claim"]: r for r in claims.scale_table([row])}
    assert table["C5"]["base UNet, full MNIST"] == "agrees"
    assert table["C5"]["35.7M continual-learning UNet, mnist-5k (gpu tier)"] == "agrees in part"
    assert table["C5"]["base UNet, mnist-5k"] == ""
    assert "at each model and budget" in claims.markdown(row)


def test_a_full_mnist_result_of_either_network_heads_the_claim_before_mnist_5k(monkeypatch):
    """The attention-free network on full MNIST (the appendix's literal network at the paper's budget) is the
    headline while the base UNet on full MNIST is not stored, even though base on mnist-5k is."""
    got = {"base-mnist-5k": spectrum(1.2), "base-resnet-mnist": spectrum(0.5, params=139_000, steps=93_800)}
    monkeypatch.setattr(scales, "spectra", lambda scale, seeds=None: {0: got[scale.key]} if scale.key in got else {})
    row = claims.ledger("cpu")[claims.CLAIMS.index(claims.BY_ID["C5"])]
    assert [s["scale"] for s in row["scales"]] == ["base-resnet-mnist", "base-mnist-5k"]
    assert row["headline"].startswith("base UNet without attention (139,000 parameters), full MNIST, 93,800 steps")
    assert row["verdict"] == "agree"


@pytest.mark.parametrize("stored, first", [
    (("base-resnet-mnist", "base-mnist-5k"), "base-resnet-mnist"),
    (("base-mnist", "base-resnet-mnist", "base-mnist-5k"), "base-mnist"),  # with attention, as the paper's
    (("base-mnist-5k", "cl-mnist-5k"), None),  # no run at the paper's budget yet
])
def test_the_paper_budget_spectrum_is_full_mnist_with_attention_first(monkeypatch, stored, first):
    got = {k: spectrum(0.5, steps=93_800 if k.endswith("-mnist") else 6400) for k in stored}
    monkeypatch.setattr(scales, "spectra", lambda scale, seeds=None: {0: got[scale.key]} if scale.key in got else {})
    found = scales.paper_budget_spectrum()
    assert (found and found[0].key) == first
    if first:
        assert found[1] is got[first] and found[0].dataset == "mnist"


def test_a_verdict_whose_premise_fails_says_so():
    row = {"verdict": "disagree", "premise": {"holds": False, "text": "x"}}
    assert claims.verdict_text(row) == "does not agree (premise not met)"
    assert claims.verdict_text({"verdict": "agree", "premise": {"holds": True, "text": "x"}}) == "agrees"
    assert claims.verdict_text({"verdict": "agree"}) == "agrees"


@pytest.mark.parametrize("task1, holds", [(150.0, True), (151.0, False)])
def test_task1_learned_is_its_fid_within_1_5x_of_the_joint_a_fid(monkeypatch, task1, holds):
    recs = {"joint": [fake({"a_fid": 100.0}, experiment="continual")],
            "finetune": [fake({"a_fid_at_k": [task1, 200.0]}, experiment="continual")]}
    monkeypatch.setattr(claims, "_cl", lambda cfg, ds, methods: recs if ds == "mnist-5k" else None)
    p = claims.cl_premise(load_profile("cpu"))
    assert p["holds"] is holds and f"{task1:.1f} vs joint A-FID 100.0" in p["text"]


def test_every_rule_change_keeps_both_rules_and_both_verdicts():
    for c in claims.RULE_CHANGES:
        assert c["claim"] in claims.BY_ID and c["date"] and c["old"] != c["new"]
        assert {c["old_verdict"], c["new_verdict"]} <= set(claims.VERDICT_STYLE)


def test_stored_at_reads_the_committed_result_of_that_network_and_dataset_only():
    """The committed cpu tier holds Tweedie for base-resnet on mnist-5k; nothing of Small-1 on Fashion-MNIST."""
    from rank1lib import analysis
    rec = scales.stored_at(scales.BY_KEY["base-resnet-mnist-5k"], analysis.tweedie_mse)
    assert rec["config"]["arch"] == "base-resnet" and rec["config"]["dataset"] == "mnist-5k"
    assert rec["name"] == "mnist-5k-base-resnet-s0"
    assert scales.stored_at(scales.Scale("x", "Small-1 UNet", "cpu", "fmnist", "small1"), analysis.tweedie_mse) is None
