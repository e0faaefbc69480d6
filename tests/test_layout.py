"""The package's import graph: no cycles, and every import points to the same or a lower layer."""
import ast
from pathlib import Path

import networkx as nx

PKG = Path(__file__).resolve().parents[1] / "rank1lib"

# Lowest first. A module may import from its own layer or any layer below it, never from above.
LAYERS = [
    {"store", "distributed", "plots", "mnist_wheel", "paper", "seeds"},                                     # plumbing
    {"data", "models", "diffusion", "curvature", "curvature.engines", "curvature.hooks",
     "curvature.statistics", "curvature.spectrum", "curvature.penalties"},              # concepts
    {"fisher", "train", "replay", "fid", "vae", "profiles", "registry", "estimates"},                # the book's adapters, tiers
    {"continual", "analysis", "trajectory", "experiments", "study", "learned_task1", "runs",
     "peers", "precision"},                                                                             # experiments
    {"scales", "claims", "status", "provenance", "bench", "bench_fisher", "bench_train", "bench_peers", "spectrum_figures", "continual_figures",
     "campaign"},  # reports, orchestration
    {"book", "__main__", "__init__"},                                                     # entry points
]


def _modules():
    return {".".join(p.relative_to(PKG).with_suffix("").parts).removesuffix(".__init__") or "__init__": p
            for p in PKG.rglob("*.py")}


def _edges():
    """(importer, imported) for every import of a rank1lib module, at module level or inside a function."""
    mods = _modules()
    out = set()
    for name, path in mods.items():
        pkg = name.rsplit(".", 1)[0] if path.name != "__init__.py" and "." in name else (
            name if path.name == "__init__.py" and name != "__init__" else "")
        for n in ast.walk(ast.parse(path.read_text())):
            if not isinstance(n, ast.ImportFrom):
                continue
            if n.level:
                base = pkg.split(".") if pkg else []
                base = base[:len(base) - (n.level - 1)] if n.level > 1 else base
                target = ".".join(base + ([n.module] if n.module else []))
            elif n.module and n.module.split(".")[0] == "rank1lib":
                target = n.module.partition(".")[2]
            else:
                continue
            cands = [f"{target}.{a.name}".lstrip(".") for a in n.names] + [target]
            for c in cands:
                if c in mods and c != name:
                    out.add((name, c))
                    break
    return out


def _layer(m):
    return next(i for i, layer in enumerate(LAYERS) if m in layer)


def test_every_module_has_a_layer():
    assert set(_modules()) <= set().union(*LAYERS), set(_modules()) - set().union(*LAYERS)


def test_no_import_cycles():
    g = nx.DiGraph(sorted(_edges()))
    assert [sorted(c) for c in nx.strongly_connected_components(g) if len(c) > 1] == []


def test_no_import_points_upward():
    up = sorted((a, b) for a, b in _edges() if _layer(b) > _layer(a))
    assert up == []


def test_the_graph_sees_relative_and_absolute_imports():
    e = _edges()
    assert ("fisher", "curvature.engines") in e and ("curvature.statistics", "curvature.engines") in e
    assert ("continual", "curvature") in e and ("campaign", "runs") in e


# Names defined in several modules on purpose: the same job for a different experiment, model or program.
SAME_JOB = {
    "collect": {"runs", "learned_task1"},              # an experiment's stored records, computing the missing ones
    "stored_runs": {"runs", "learned_task1"},          # an experiment's stored records, computing nothing
    "load_all": {"bench", "registry"},                 # import the modules that register entries
    "main": {"book", "__main__"},                       # a command line's entry point
    "markdown": {"claims", "status"},                  # a report as a Markdown table
    "per_sample_grads": {"fisher", "vae"},             # per-sample gradients of one model family's loss
    "per_sample_loss": {"diffusion", "vae"},           # one model family's per-sample loss
}


def test_one_name_one_job():
    """A public top-level name is defined once in the package, except the SAME_JOB families."""
    where = {}
    for name, path in _modules().items():
        for n in ast.parse(path.read_text()).body:
            if isinstance(n, (ast.FunctionDef, ast.ClassDef)) and not n.name.startswith("_"):
                where.setdefault(n.name, set()).add(name)
    clashes = {k: v for k, v in where.items() if len(v) > 1 and v != SAME_JOB.get(k)}
    assert clashes == {}
