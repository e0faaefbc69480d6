"""Book plumbing: the banner every chapter shows, papermill execution and Jupyter Book staging.

python -m rank1lib.book execute --profile P --out DIR NB...   (papermill, parameters injected)
python -m rank1lib.book stage --profile P --executed DIR      (assemble _build/site for jupyter-book)
"""
import argparse
import shutil
import sys
from pathlib import Path

from .profiles import load_profile
from .store import REPO, device_name, git_commit


def setup(profile="quick", **overrides):
    """Load the profile for a chapter, set the figure style and display the provenance banner."""
    from .plots import style
    overrides = {k: v for k, v in overrides.items() if v is not None}
    cfg = load_profile(profile, **overrides)
    style()
    banner(cfg)
    return cfg


def banner_text(cfg) -> str:
    import torch
    from . import __version__
    return (f"**Profile** `{cfg.name}` ({cfg.description}) · **this page ran on** {device_name()} "
            f"· **commit** `{git_commit()}` · rank1lib {__version__}, torch {torch.__version__}")


def banner(cfg):
    """Show which profile, device and commit produced the page."""
    try:
        from IPython.display import Markdown, display
        display(Markdown("> " + banner_text(cfg)))
    except ImportError:
        print(banner_text(cfg))


def provenance_line(rec) -> str:
    """One line naming the device, commit, date and wall time that produced a stored result."""
    p = rec["provenance"]
    wall = f", {p['wall_s']:.0f} s" if p.get("wall_s") else ""
    return (f"{rec['experiment']}/{rec['name']} [{rec['profile']}]: computed on {p['device']}, commit "
            f"{p['commit']}, {p['date']}{wall}")


def execute(notebooks, profile, out):
    """Execute chapters with papermill at `profile`, writing executed copies to `out`."""
    import os
    import papermill as pm
    os.environ.setdefault("TQDM_DISABLE", "1")  # progress bars are for terminals, not rendered pages
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    for nb in notebooks:
        nb = Path(nb)
        print(f"executing {nb.name} at profile {profile}", flush=True)
        pm.execute_notebook(str(nb), str(out / nb.name), parameters={"profile": profile},
                            cwd=str(nb.parent), progress_bar=False, kernel_name="python3")


def stage(profile, executed):
    """Copy the book sources and the executed notebooks into _build/site for jupyter-book."""
    site = REPO / "_build" / "site"
    shutil.rmtree(site, ignore_errors=True)
    (site / "book").mkdir(parents=True)
    for f in ("_config.yml", "_toc.yml", "references.bib"):
        if (REPO / f).exists():
            shutil.copy(REPO / f, site / f)
    for f in (REPO / "book").iterdir():
        if f.suffix in (".md", ".png", ".bib"):
            shutil.copy(f, site / "book" / f.name)
    import nbformat
    for path in Path(executed).glob("*.ipynb"):
        nb = nbformat.read(path, as_version=4)
        for cell in nb.cells:  # the banner names the profile; hide papermill's injected cell
            if "injected-parameters" in cell.metadata.get("tags", []):
                cell.metadata["tags"] = cell.metadata["tags"] + ["remove-cell"]
        nbformat.write(nb, site / "book" / path.name)
    print(f"staged book for profile {profile} in {site}")


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m rank1lib.book")
    sub = p.add_subparsers(dest="cmd", required=True)
    e = sub.add_parser("execute")
    e.add_argument("--profile", required=True)
    e.add_argument("--out", required=True)
    e.add_argument("notebooks", nargs="+")
    s = sub.add_parser("stage")
    s.add_argument("--profile", required=True)
    s.add_argument("--executed", required=True)
    a = p.parse_args(argv)
    load_profile(a.profile)
    if a.cmd == "execute":
        execute(a.notebooks, a.profile, a.out)
    else:
        stage(a.profile, a.executed)
    return 0


if __name__ == "__main__":
    sys.exit(main())
