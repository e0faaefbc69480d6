"""How benchmark results are shown (chapter 7): formatting and goal checks, against hand-written values."""
import math

from rank1lib import bench
from rank1lib.bench_train import peak_tflops, step_flops


def test_rows_table_formats_numbers_and_missing_values():
    t = bench.rows_table([{"measurement": "step", "seconds": 0.123456, "images_per_s": 1320.35},
                          {"measurement": "distance", "seconds": 1.3e-15, "images_per_s": None},
                          {"measurement": "nan", "seconds": math.nan, "images_per_s": 2.0, "setting": "x"}])
    assert list(t.index) == ["step", "distance", "nan"]
    assert t.loc["step", "seconds"] == "0.123" and t.loc["step", "images_per_s"] == "1,320"
    assert t.loc["distance", "seconds"] == "1.3e-15" and t.loc["distance", "images_per_s"] == "-"
    assert t.loc["nan", "seconds"] == "-" and t.loc["step", "setting"] == "-" and t.loc["nan", "setting"] == "x"


def test_goal_table_marks_misses_and_negative_overheads():
    rows = bench.goal_table([("speed-up", 1.89, ">=", 5), ("error", 1e-6, "<=", 1e-5), ("overhead", -0.07, "<=", 0.02),
                             ("rate", None, None, None)], overheads=("overhead",))
    by = {r["measure"]: r for r in rows}
    assert by["speed-up"]["goal met?"] == "NO" and by["error"]["goal met?"] == "yes"
    assert "noise" in by["overhead"]["ours"] and by["rate"]["ours"] == "not measured"
    assert bench.overhead_text(0.089) == "+9% of a step"
    assert bench.overhead_text(-0.07) == "about 0 (measured -7%: noise)"


def test_step_flops_scale_with_batch_and_peak_lookup():
    import torch
    from rank1lib.models import build_unet
    torch.manual_seed(0)
    m = build_unet("tiny", 10, 1)
    x = torch.randint(0, 256, (2, 1, 32, 32), dtype=torch.uint8)
    y = torch.tensor([1, 2])
    one, two = step_flops(m, x, y), step_flops(m, torch.cat([x, x]), torch.cat([y, y]))
    assert one > 0 and two == 2 * one  # FLOPs of a forward + backward are linear in the batch
    assert all(p.grad is None for p in m.parameters())  # counting leaves no gradients behind
    assert peak_tflops("NVIDIA H200") == peak_tflops("NVIDIA H100 80GB HBM3") == 989.4
    assert peak_tflops("CPU (x86_64, 2 cores)") is None


def test_steps_are_interleaved_in_rotating_order_and_overheads_are_paired():
    from rank1lib.bench_train import interleaved_step_times, paired_overhead
    calls = []
    steps = {k: (lambda k=k: calls.append(k)) for k in ("a", "b", "c")}
    times = interleaved_step_times(steps, rounds=3, warmup=1)
    assert calls == list("abc") + list("abc") + list("bca") + list("cab")  # warm-up, then rotated rounds
    assert {k: len(v) for k, v in times.items()} == {"a": 3, "b": 3, "c": 3}
    # a round where the machine runs twice as slow leaves every paired ratio at +5%
    t = {"fast": [1.0, 2.0, 1.0], "pen": [1.05, 2.1, 1.05]}
    assert abs(paired_overhead(t, "fast", "pen") - 0.05) < 1e-12


def test_bench_settings_times_bf16_as_asked_while_the_trainer_step_falls_back(monkeypatch, cpu_without_bf16):
    """On a CPU without bf16 in hardware the trainer's step runs fp32 (amp_on), but `bench settings` must time
    real bf16 autocast (literal=True), or its 'bf16 autocast' row would be an fp32 step under that name."""
    import torch
    from rank1lib import bench_train
    from rank1lib.models import build_unet
    from rank1lib.profiles import load_profile
    seen = []
    real = bench_train.loss_simple

    def spy(*a, **kw):
        seen.append(torch.is_autocast_enabled("cpu"))
        return real(*a, **kw)
    monkeypatch.setattr(bench_train, "loss_simple", spy)
    cfg = load_profile("ci", batch_size=4, amp="on", compile="off")
    x, y = torch.zeros(8, 1, 32, 32, dtype=torch.uint8), torch.arange(8) % 10
    for literal in (False, True):
        bench_train.fast_step_fn(build_unet("tiny", 10), x, y, cfg, torch.device("cpu"), literal=literal)()
    assert seen == [False, True]


def test_benchmark_times_are_medians_of_repeats_with_their_range(monkeypatch):
    from rank1lib import bench, bench_fisher
    durations = [5.0, 1.0, 3.0, 2.0, 4.0]  # hand-written: median 3, range 1-5
    ticks = [t for i, d in enumerate(durations) for t in (100.0 * i, 100.0 * i + d)]  # (start, end) per call
    monkeypatch.setattr(bench.time, "perf_counter", lambda: ticks.pop(0))
    calls = []
    med, (lo, hi), out = bench.timed(lambda: calls.append(1) or len(calls), repeat=5, warmup=2)
    assert (med, lo, hi) == (3.0, 1.0, 5.0) and out == 7 and len(calls) == 7  # 2 warm-up calls, not timed
    assert "median of 5" in bench_fisher._spread((lo, hi)) and "1-5 s" in bench_fisher._spread((lo, hi))


def test_replace_overwrites_a_stored_benchmark_only_once_a_quiet_run_is_measured(tmp_store, monkeypatch):
    import pytest
    from rank1lib import store
    from rank1lib.profiles import load_profile
    load_all_real = bench.load_all()  # register the real benchmarks first, then add a fake one
    runs = []
    monkeypatch.setitem(load_all_real, "fake", lambda cfg: (runs.append(1) or [{"n": len(runs)}], {"n": len(runs)}))
    busy = {"value": 0.0}
    monkeypatch.setattr(bench, "machine_state", lambda: {"other_cpu_percent": busy["value"], "load_avg_1m": 0.0,
                                                         "busiest_other": ["x 90%"], "threads": 1})
    cfg = load_profile("ci")
    assert bench.stored_or_run("fake", cfg).values["summary"]["n"] == 1
    assert bench.stored_or_run("fake", cfg).values["summary"]["n"] == 1 and len(runs) == 1  # stored: not rerun
    busy["value"] = 90.0  # a busy machine: the new run is refused and the stored record is kept as it was
    with pytest.raises(bench.Contended):
        bench.stored_or_run("fake", cfg, replace=True)
    assert len(runs) == 2 and store.load("ci", "bench", "fake").values["summary"]["n"] == 1
    busy["value"] = 0.0
    assert bench.stored_or_run("fake", cfg, replace=True).values["summary"]["n"] == 3
    assert store.load("ci", "bench", "fake").values["summary"]["n"] == 3
    assert not [p.name for p in store.result_dir("ci", "bench").iterdir() if ".bad-" in p.name]  # nothing moved aside


def test_bench_fisher_runs_its_peers_after_it_and_reports_both(tmp_store, monkeypatch, capsys):
    """`bench fisher --json` also runs the peers benchmark: both tables, one JSON line whose 'peers' key
    holds the peers summary; --alone runs only the one named."""
    import json
    from rank1lib.__main__ import main
    benches = bench.load_all()
    ran = []
    monkeypatch.setitem(benches, "fisher", lambda cfg: (ran.append("fisher") or [{"m": "f"}], {"own": 1}))
    monkeypatch.setitem(benches, "peers", lambda cfg: (ran.append("peers") or [{"m": "p"}], {"peer": 2}))
    assert main(["bench", "fisher", "--profile", "ci", "--json"]) in (0, None)
    out = capsys.readouterr().out.strip().splitlines()
    last = json.loads(out[-1])
    assert ran == ["fisher", "peers"] and last["own"] == 1 and last["peers"]["peer"] == 2
    assert "peers:" in out
    ran.clear()
    assert main(["bench", "fisher", "--profile", "ci", "--json", "--alone"]) in (0, None)
    assert ran == ["fisher"] and "peers" not in json.loads(capsys.readouterr().out.strip().splitlines()[-1])
