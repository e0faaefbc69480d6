"""Experiment registry: `python -m rank1lib run <name>` and the notebooks call the same functions."""
import importlib

EXPERIMENTS = {}
# Modules whose import registers experiments (one per chapter family).
MODULES = ["rank1lib.experiments", "rank1lib.analysis", "rank1lib.trajectory", "rank1lib.runs"]


def experiment(name, help=""):
    """Decorator: register fn(cfg, dataset, seed, **kw) under `name`."""
    def wrap(fn):
        fn.help = help or (fn.__doc__ or "").strip().splitlines()[0]
        EXPERIMENTS[name] = fn
        return fn
    return wrap


def load_all():
    """Import every experiment module; returns the registry."""
    for m in MODULES:
        importlib.import_module(m)
    return EXPERIMENTS
