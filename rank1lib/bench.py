"""Benchmarks: each prints a table and (with --json) one final JSON line; results also go to the store.

Benchmarks register with @benchmark(name) in their own modules, listed in MODULES.
"""
import importlib
import os
import time

from . import store
from .profiles import set_args

BENCHES = {}
MODULES = ["rank1lib.bench_fisher", "rank1lib.bench_train", "rank1lib.bench_peers"]
# Benchmarks that run after another one (`bench fisher` also times what a user would pick instead of
# the package's per-sample engines); `--alone` skips them, `bench peers` runs that part on its own.
COMPANIONS = {"fisher": ("peers",)}


def benchmark(name):
    """Decorator: register fn(cfg) -> (rows: list[dict], summary: dict) under `name`."""
    def wrap(fn):
        BENCHES[name] = fn
        return fn
    return wrap


def load_all():
    for m in MODULES:
        importlib.import_module(m)
    return BENCHES


def print_table(rows):
    """Print a list of dicts as an aligned text table."""
    if not rows:
        return
    cols = list(dict.fromkeys(k for r in rows for k in r))
    fmt = lambda v: f"{v:.4g}" if isinstance(v, float) else str(v)  # noqa: E731
    width = {c: max(len(c), *(len(fmt(r.get(c, ""))) for r in rows)) for c in cols}
    print("  ".join(c.ljust(width[c]) for c in cols))
    for r in rows:
        print("  ".join(fmt(r.get(c, "")).ljust(width[c]) for c in cols))


def median(xs):
    """The upper median (the middle element for an odd count)."""
    return sorted(xs)[len(xs) // 2]


def sync():
    """Wait for queued CUDA work when CUDA is in use (a no-op on CPU), so wall times cover the kernels."""
    import torch
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()


def timed(fn, repeat, warmup=0):
    """(median wall time of `repeat` calls of fn() after `warmup` calls, (min, max) of them, the last
    result); CUDA is synchronised around each call when it is in use. The one timing loop of both benchmarks."""
    for _ in range(warmup):
        fn()
    times, out = [], None
    for _ in range(repeat):
        sync()
        t0 = time.perf_counter()
        out = fn()
        sync()
        times.append(time.perf_counter() - t0)
    return median(times), (min(times), max(times)), out


CONTENDED_CPU_PERCENT = 25.0  # other processes using more than a quarter of one core


class Contended(RuntimeError):
    """A benchmark ran while other processes used the CPU; it is not stored as a result."""


def cpu_flags():
    """The SIMD/matrix flags of this CPU that decide kernel choices (from /proc/cpuinfo)."""
    flags = set(store.cpuinfo_field("flags") or [])
    return sorted(f for f in flags if f.startswith(("avx512", "amx")) or f in ("avx2", "fma"))


def machine_state(sample_s=0.5):
    """Load average, CPU use of other processes (psutil, sampled over sample_s), threads, flags."""
    import psutil
    import torch
    me = psutil.Process()
    mine = {me.pid} | {c.pid for c in me.children(recursive=True)}
    procs = [p for p in psutil.process_iter(["pid", "name"]) if p.pid not in mine]
    for p in procs:
        try:
            p.cpu_percent(None)
        except psutil.Error:
            pass
    time.sleep(sample_s)
    busy = []
    for p in procs:
        try:
            c = p.cpu_percent(None)
        except psutil.Error:
            continue
        if c > 1.0:
            busy.append((c, p.info["name"]))
    return {"load_avg_1m": round(os.getloadavg()[0], 2), "other_cpu_percent": round(sum(c for c, _ in busy), 1),
            "busiest_other": [f"{n} {c:.0f}%" for c, n in sorted(busy, reverse=True)[:3]],
            "threads": torch.get_num_threads(), "cpu_count": psutil.cpu_count(), "cpu_flags": cpu_flags()}


def measured(name, cfg):
    """Run benchmark `name` between two machine-state samples; the summary says whether it was contended."""
    load_all()
    before = machine_state()
    t0 = time.time()
    rows, summary = BENCHES[name](cfg)
    after = machine_state()
    summary.setdefault("seconds", time.time() - t0)
    summary["contended"] = max(before["other_cpu_percent"], after["other_cpu_percent"]) > CONTENDED_CPU_PERCENT
    summary["machine"] = {"before": before, "after": after}
    summary["threads"] = after["threads"]
    return rows, summary


# Profile keys no benchmark reads (added after benchmarks were stored): left out of a benchmark's
# config so that adding them does not orphan stored benchmark results.
NOT_READ = ("study_steps", "cl_amp", "cl_compile", "analysis_amp_models", "task1_max_steps",
            "cl_datasets", "cl_other_train_per_class", "cl_other_fid_per_class", "cl_other_seeds",
            "second_dataset_per_class", "campaign_plan", "ledger_scales")


def stored_or_run(name, cfg, force=False, replace=False):
    """The stored result of benchmark `name` at this profile, or run it now and store it (replace: run
    it even if stored, and overwrite the stored record once the new one is measured)."""
    load_all()
    conf = {k: v for k, v in cfg.items() if k not in NOT_READ and k != "read_only"}  # as hashed before readers

    def compute():
        rows, summary = measured(name, cfg)
        if summary["contended"] and not force:
            m = summary["machine"]
            raise Contended(f"benchmark {name!r} ran on a busy machine (other processes used "
                               f"{max(m['before']['other_cpu_percent'], m['after']['other_cpu_percent']):.0f}% "
                               f"of a core: {', '.join(m['after']['busiest_other'] or m['before']['busiest_other'])}); "
                               f"not stored. Rerun on a quiet machine, or pass --force to store it marked contended")
        return {"rows": rows, "summary": summary}, None, summary.get("device")

    return store.load_or_compute(cfg.name, "bench", name, conf, compute, **store.policy(cfg), replace=replace,
                                 command=f"python -m rank1lib bench {name} --profile {cfg.name} --json --store"
                                         f"{set_args(cfg, ())}")


def conditions_line(summary) -> str:
    """How quiet the machine was during a stored benchmark (older results did not record it)."""
    m = summary.get("machine")
    if not m:
        return "machine load during this benchmark: not recorded (measured before load recording existed)"
    b, a = m["before"], m["after"]
    state = "CONTENDED: other processes were busy, times are not quiet-machine times" if summary.get("contended") \
        else "quiet machine"
    return (f"{state}; load average {b['load_avg_1m']} -> {a['load_avg_1m']}, other processes "
            f"{max(b['other_cpu_percent'], a['other_cpu_percent']):.0f}% of a core; {a['threads']} torch threads "
            f"on {a['cpu_count']} cores; CPU flags {' '.join(a['cpu_flags']) or '-'}")


def rows_table(rows):
    """A benchmark's rows for the page: indexed by their first column, numbers to 3 significant digits,
    missing values as '-'."""
    import math

    import pandas as pd

    def fmt(v):
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            return "-" if v is None else v
        if math.isnan(v):
            return "-"
        return f"{v:,.0f}" if abs(v) >= 1000 else f"{v:.3g}"
    df = pd.DataFrame(rows)
    return df.set_index(df.columns[0]).map(fmt)


def overhead_text(x) -> str:
    """A penalty's overhead as a share of the step; negative means noise (a penalty cannot speed a step up)."""
    return f"{100 * x:+.0f}% of a step" if x >= 0 else f"about 0 (measured {100 * x:+.0f}%: noise)"


def goal_table(items, overheads=()):
    """Rows (measure, ours, goal, goal met?) for a summary; items are (measure, value, op, target).

    Numbers get 3 significant digits; an overhead in `overheads` that comes out negative is reported
    as measurement noise (a penalty cannot make a step faster)."""
    import operator
    ops = {"<=": operator.le, ">=": operator.ge, ">": operator.gt, "<": operator.lt}
    rows = []
    for measure, value, op, target in items:
        if value is None:
            ours, met = "not measured", "-"
        else:
            ours = f"{value:.3g}"
            if measure in overheads and value < 0:
                ours += " (negative: noise, i.e. about 0)"
            met = "-" if op is None else ("yes" if ops[op](value, target) else "NO")
        rows.append({"measure": measure, "ours": ours, "goal": "" if op is None else f"{op} {target:g}",
                     "goal met?": met})
    return rows
