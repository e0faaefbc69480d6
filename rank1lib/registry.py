"""Experiment registry: `python -m rank1lib run <name>` and the notebooks call the same functions."""
import functools
import importlib
import inspect

EXPERIMENTS = {}
# Modules whose import registers experiments (one per chapter family).
MODULES = ["rank1lib.experiments", "rank1lib.analysis", "rank1lib.trajectory", "rank1lib.runs", "rank1lib.study",
           "rank1lib.learned_task1", "rank1lib.precision"]


def experiment(name, help="", progress=None, leftovers=None):
    """Decorator: register fn(cfg, dataset, seed, **kw) under `name`; a bad dataset or seed (from the
    CLI, a notebook parameter or a call) is refused with one ConfigError line before any work.

    progress(cfg, dataset, seed, method=None): where its resumable training stands, from the store
    alone (estimates.progress: steps done, steps planned, seconds left), or None when it has none.
    leftovers(cfg, dataset, seed, method=None): (group, [(path, kind)]) of the training state that is no
    longer needed once every campaign item of its group (e.g. all methods sharing a run folder) is done."""
    def wrap(fn):
        sig = inspect.signature(fn)

        @functools.wraps(fn)
        def checked(*args, **kw):
            from .data import check_name
            from .profiles import check_seed
            bound = sig.bind_partial(*args, **kw).arguments
            if bound.get("dataset") is not None:
                check_name(bound["dataset"])
            if "seed" in bound:
                check_seed(bound["seed"])
            return fn(*args, **kw)
        checked.help = help or (fn.__doc__ or "").strip().splitlines()[0]
        checked.progress = progress
        checked.leftovers = leftovers
        EXPERIMENTS[name] = checked
        return checked
    return wrap


def load_all():
    """Import every experiment module; returns the registry."""
    for m in MODULES:
        importlib.import_module(m)
    return EXPERIMENTS
