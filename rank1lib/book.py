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
    _show("> " + banner_text(cfg), banner_text(cfg))


def _show(markdown, plain):
    """Display Markdown in a notebook; print the plain text elsewhere."""
    try:
        from IPython.display import Markdown, display
        display(Markdown(markdown))
    except ImportError:
        print(plain)


def say(*parts):
    """A line of results as a wrapped paragraph (print's arguments; never a side-scrolling output box)."""
    text = " ".join(str(p) for p in parts)
    _show(text, text)


def note(text, kind="note"):
    """A highlighted note on the page (a Markdown quote block; plain text outside a notebook)."""
    _show("> " + ("⚠ " if kind == "warning" else "") + text, f"{kind}: {text}")


def stored(fn, cfg, *args, **kw):
    """An experiment's result (computed here unless the profile is cli_only), or None with a
    'pending' note naming the command that computes it."""
    from .data import DataMissing
    from .store import ResultPending
    try:
        return fn(cfg, *args, **kw)
    except DataMissing as e:
        note(f"**Data missing on this machine**, so the cells that need this result are skipped: {e}", "warning")
        return None
    except ResultPending as e:
        from .campaign import item_for
        item = item_for(cfg, e.command) if e.command else None
        tier = (f"the campaign item `{item.key}`: `python -m rank1lib campaign --profile {cfg.name} --only {item.key}`"
                if item else f"for the whole tier, `python -m rank1lib campaign --profile {cfg.name}`")
        how = f"It is computed by `{e.command}` (or {tier})." if e.command else str(e)
        note(f"**Pending at profile `{cfg.name}`.** This result is not in the committed store yet, so the "
             f"cells that need it are skipped. {how}", "warning")
        return None


def keep(fig, rec, tag, label=None):
    """Show a figure and keep it as a PNG next to the stored result it plots
    (<results>/<profile>/<experiment>/<name>.fig-<tag>.png); a read-only store is skipped silently.
    With `label` the figure is not shown here but glued under that name, for a numbered
    `{glue:figure}` with that label further down the page."""
    import matplotlib.pyplot as plt
    from .store import save_png
    try:
        save_png(rec["profile"], rec["experiment"], f"{rec['name']}.fig-{tag}", fig)
    except OSError:
        pass
    if label:
        _glue(label, fig)
    else:
        plt.show()


def placeholder(label, text):
    """Glue a small figure that only says `text` under `label` (a numbered figure whose result is pending)."""
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(6, 1.2))
    ax.axis("off")
    ax.text(0.5, 0.5, text, ha="center", va="center", wrap=True)
    _glue(label, fig)


def keep_table(label, df=None, pending="not stored at this profile"):
    """Glue a table under `label` for a numbered `{table}` directive further down the page, which holds its
    caption: the DataFrame as Markdown, or, without one, a one-cell table saying `pending`, so that the
    label and its cross-references exist at every profile. Outside the book's environment: shown here."""
    from IPython.display import Markdown, display
    if df is not None:  # index levels become columns, so a MultiIndex reads as plain columns
        flat = df.reset_index() if any(n is not None for n in df.index.names) else df
        text = flat.to_markdown(index=False, disable_numparse=True)  # cells as formatted, e.g. 61.10
    else:
        text = f"| status |\n|---|\n| *{pending}* |"
    try:
        from myst_nb import glue
    except ImportError:
        display(df if df is not None else Markdown(text))
        return
    glue(label, Markdown(text), display=False)


def _glue(label, fig):
    import matplotlib.pyplot as plt
    try:
        from myst_nb import glue
    except ImportError:  # outside the book's environment: just show it
        plt.show()
        return
    glue(label, fig, display=False)
    plt.close(fig)


def show_provenance(rec):
    """The provenance line of a stored result as wrapped Markdown under a figure or table."""
    _show(f"*Source:* {provenance_line(rec)}", provenance_line(rec))


def show_sources(by_method):
    """show_provenance of the first record of every method in {method: [records]} (a table's sources)."""
    for recs in by_method.values():
        show_provenance(recs[0])


def provenance_line(rec) -> str:
    """One line naming the device, commit, date and wall time that produced a stored result."""
    p = rec["provenance"]
    wall = f", {p['wall_s']:.0f} s" if p.get("wall_s") else ""
    threads = (f" ({p['threads']} thread{'s' if p['threads'] != 1 else ''})" if p.get("threads") else "")
    data = "; data: " + "; ".join(f"{k} from {v}" for k, v in p["data"].items()) if p.get("data") else ""
    note = f"; note: {p['note']}" if p.get("note") else ""
    return (f"{rec['experiment']}/{rec['name']} [{rec['profile']}]: computed on {p['device']}{threads}, commit "
            f"{p['commit']}, {p['date']}{wall}{data}{note}")


def _ipc_kernel_manager():
    """Kernels on local IPC sockets instead of loopback TCP (no plain-text TCP, no kernel warning)."""
    from jupyter_client.manager import AsyncKernelManager

    class IPCKernelManager(AsyncKernelManager):
        def __init__(self, **kw):
            super().__init__(**kw)
            self.transport = "ipc"
    return IPCKernelManager


def execute(notebooks, profile, out):
    """Execute chapters with papermill at `profile`, writing executed copies to `out`; one line per
    chapter with its wall time (and what the chapter is about) as it goes."""
    import os
    import time
    import nbformat
    import papermill as pm
    os.environ.setdefault("TQDM_DISABLE", "1")  # progress bars are for terminals, not rendered pages
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    # the claims ledger (00_*) reads what the chapters store, so it runs after them
    order = sorted(map(Path, notebooks), key=lambda p: (p.name.startswith("00_"), p.name))
    t_all = time.time()
    for i, nb in enumerate(order, 1):
        title = next((c.source.splitlines()[0].lstrip("# ") for c in nbformat.read(nb, 4).cells
                      if c.cell_type == "markdown" and c.source.startswith("#")), nb.stem)
        print(f"[{i}/{len(order)}] {nb.name} at profile {profile}: {title} ...", end="", flush=True)
        t0 = time.time()
        pm.execute_notebook(str(nb), str(out / nb.name), parameters={"profile": profile},
                            cwd=str(nb.parent), progress_bar=False, kernel_name="python3",
                            kernel_manager_class=_ipc_kernel_manager())
        print(f" {time.time() - t0:.0f} s", flush=True)
    print(f"executed {len(order)} chapters in {time.time() - t_all:.0f} s", flush=True)


def stage(profile, executed):
    """Copy the book sources and the executed notebooks into _build/site for jupyter-book."""
    site = REPO / "_build" / "site"
    shutil.rmtree(site, ignore_errors=True)
    (site / "book").mkdir(parents=True)
    for f in ("_config.yml", "_toc.yml", "references.bib"):
        if (REPO / f).exists():
            shutil.copy(REPO / f, site / f)
    shutil.copytree(REPO / "book" / "_static", site / "_static")
    mathjax = REPO / "_build" / "mathjax"
    if (mathjax / "tex-chtml.js").exists():  # offline math: serve the local MathJax (make mathjax)
        shutil.copytree(mathjax, site / "_static" / "mathjax")
        text = (site / "_config.yml").read_text()
        text = text.replace("  config:\n", "  config:\n    mathjax_path: mathjax/tex-chtml.js\n", 1)
        (site / "_config.yml").write_text(text)
    for f in (REPO / "book").iterdir():
        if f.suffix in (".md", ".png", ".bib"):
            shutil.copy(f, site / "book" / f.name)
    intro = site / "book" / "intro.md"
    intro.write_text(with_status(intro.read_text(), profile))
    import nbformat
    for path in Path(executed).glob("*.ipynb"):
        nb = nbformat.read(path, as_version=4)
        for cell in nb.cells:  # the banner names the profile; hide papermill's injected cell
            if "injected-parameters" in cell.metadata.get("tags", []):
                cell.metadata["tags"] = cell.metadata["tags"] + ["remove-cell"]
        nbformat.write(nb, site / "book" / path.name)
    print(f"staged book for profile {profile} in {site}")


def with_status(text, profile):
    """The landing page with its status paragraph (after `<!-- status-table -->`) replaced by the
    table computed from the store at `profile` (see rank1lib.status)."""
    from . import status
    head, marker, tail = text.partition("<!-- status-table -->")
    if not marker:
        return text
    rest = tail.lstrip("\n").split("\n\n", 1)
    table = (f"Built at profile `{profile}` from commit `{git_commit()}`.\n\n" + status.markdown(profile))
    return head + table + ("\n\n" + rest[1] if len(rest) > 1 else "\n")


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
    from .profiles import ConfigError
    try:
        load_profile(a.profile)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if a.cmd == "execute":
        execute(a.notebooks, a.profile, a.out)
    else:
        stage(a.profile, a.executed)
    return 0


if __name__ == "__main__":
    sys.exit(main())
