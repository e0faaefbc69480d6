"""Benchmarks: each prints a table and (with --json) one final JSON line; results also go to the store.

Benchmarks register with @benchmark(name) in their own modules, listed in MODULES.
"""
import importlib
import time

BENCHES = {}
MODULES = ["rank1lib.bench_fisher", "rank1lib.bench_train"]


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


def stored_or_run(name, cfg):
    """The stored result of benchmark `name` at this profile, or run it now and store it."""
    from . import store
    load_all()
    conf = dict(cfg)

    def compute():
        t0 = time.time()
        rows, summary = BENCHES[name](cfg)
        summary.setdefault("seconds", time.time() - t0)
        return {"rows": rows, "summary": summary}, None, summary.get("device")

    return store.load_or_compute(cfg.name, "bench", name, conf, compute, **store.policy(cfg),
                                 command=f"python -m rank1lib bench {name} --profile {cfg.name} --json")
