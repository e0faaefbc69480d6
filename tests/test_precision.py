"""The bf16-vs-fp32 loss-curve check (rank1lib.precision)."""
import numpy as np
import pytest

from rank1lib import precision, store
from rank1lib.profiles import Config, load_profile
from rank1lib.train import state_root


def test_window_means_and_gap_by_hand():
    losses = np.repeat(np.arange(1.0, 11.0), 3)  # 30 steps: windows of 3 equal values 1, 2, ..., 10
    assert precision.window_means(losses) == pytest.approx(np.arange(1.0, 11.0))
    assert precision.window_means([4.0, 2.0]) == pytest.approx([4.0, 2.0])  # fewer steps than windows
    assert precision.curve_gap(1.1 * losses, losses) == pytest.approx(0.1)
    # one window off by 50%, the other nine equal: mean relative gap 0.05
    off = losses.copy()
    off[:3] *= 1.5
    assert precision.curve_gap(off, losses) == pytest.approx(0.05)


def test_rule_needs_bf16_in_hardware_and_a_gap_within_the_seed_gap():
    ref = np.linspace(1.0, 0.1, 50)
    curves = {"fp32": ref, "bf16": ref * 1.01, "fp32, next seed": ref * 1.02}
    assert precision.verdict(curves, native=True)["adopt"] == "bf16 autocast"
    assert precision.verdict(curves, native=False)["adopt"] == "fp32"
    curves["bf16"] = ref * 1.03
    out = precision.verdict(curves, native=True)
    assert out["adopt"] == "fp32" and out["gap_bf16"] == pytest.approx(0.03) and out["gap_seed"] == pytest.approx(0.02)


def test_check_on_a_cpu_without_bf16_trains_bf16_as_fp32(tmp_store, cpu_without_bf16):
    """Without bf16 in hardware the 'bf16' run is the fp32 run step for step (gap exactly 0), the other seed's
    run is not, the rule keeps fp32, and the check's training state is gone once its result is stored."""
    cfg = load_profile("ci")
    rec = precision.amp_check(cfg, progress=False)
    v = rec.values
    assert v["steps"] == cfg.analysis_max_steps and not v["native_bf16"] and v["adopt"] == "fp32"
    assert np.array_equal(rec.arrays["bf16"], rec.arrays["fp32"]) and v["gap_bf16"] == 0.0
    assert not np.array_equal(rec.arrays["fp32-next-seed"], rec.arrays["fp32"]) and v["gap_seed"] > 0
    assert not (state_root(cfg) / "amp_check").exists() or not any((state_root(cfg) / "amp_check").iterdir())
    again = precision.amp_check(cfg, progress=False)  # read back, not recomputed
    assert again["provenance"] == rec["provenance"]
    assert [r["name"] for r in precision.stored_checks(cfg)] == [rec["name"]]
    assert precision.stored_checks(Config(cfg, lr=cfg.lr * 2)) == []  # settings changed since: stale, not listed
    assert store.load("ci", "amp_check", rec["name"]) is not None

    line = precision.check_line(rec, cfg.analysis_amp_models)
    assert "gap from fp32 0.00%" in line and "bf16 in hardware: no" in line and "the rule keeps fp32" in line
    assert precision.check_line(rec, []).endswith(f"trains {v['arch']} in fp32)")
    assert precision.check_line(rec, [v["arch"]]).endswith("in bf16)")
