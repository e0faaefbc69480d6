"""Which of the paper's figures and tables a tier holds: the landing page's status table.

python -m rank1lib status --profile P      (also written into the book's first page by `make book`)

Each row names a paper figure or table, the chapter that shows it and the stored results it needs;
its status is read from the store only (nothing is computed): `real result` when every result is
stored at an evidence tier (cpu, gpu, paper), `smoke test` at the toy profiles, `partial k/n` or
`pending` with the command that computes the first missing result.
"""
from dataclasses import dataclass

from . import store
from .claims import TOY_PROFILES
from .data import DataMissing
from .profiles import load_profile


@dataclass(frozen=True)
class Artefact:
    paper: str
    what: str
    chapter: str
    needs: str  # key of NEEDS: the stored results behind it


ARTEFACTS = [
    Artefact("Fig. 1", "Tweedie-scaled prediction vs x_t", "02_tweedie_and_alignment", "tweedie"),
    Artefact("Fig. 2, 3", "gradient alignment and exact Fisher spectrum (base UNet)", "03_fisher_spectrum", "spectrum"),
    Artefact("Fig. 6", "spectrum of Small-1 and Small-3", "04_model_size_and_vae", "sizes"),
    Artefact("App. C", "VAE vs DDPM top-eigenvalue share", "04_model_size_and_vae", "vae"),
    Artefact("beyond the paper", "spectrum on Fashion-MNIST", "03_fisher_spectrum", "fmnist"),
    Artefact("beyond the paper", "Fisher along training, re-initialised controls", "03_fisher_spectrum", "trajectory"),
    Artefact("Fig. 1-3 at the paper's budget", "base UNet on full MNIST, 200 epochs (93,800 steps)",
             "03_fisher_spectrum", "paper-budget"),
    Artefact("App. D without attention", "the base UNet with ResNet blocks only, mnist-5k and full MNIST",
             "03_fisher_spectrum", "base-resnet"),
    Artefact("Table 1, Fig. 4", "continual learning, all methods", "05_continual_learning", "table1"),
    Artefact("beyond Table 1", "a learned task 1, then task 2 under each method", "05_continual_learning",
             "learned-task1"),
    Artefact("Fig. 5, Tables 5, 6", "samples, rank-k and lambda = 0 ablations", "06_samples_and_ablations", "ablations"),
]


def _needs(key, cfg):
    """The calls that load the results behind one artefact (each raises ResultPending when absent; none
    computes)."""
    from . import analysis, continual, learned_task1, runs, trajectory
    from .profiles import Config, reading
    cfg = reading(cfg)
    spec = lambda c, **kw: (lambda: analysis.spectrum(c, progress=False, **kw))  # noqa: E731
    full = Config(cfg, dataset="mnist")
    two = lambda m, lam: (lambda: learned_task1.learned_task1(  # noqa: E731
        Config(cfg, lam=lam) if lam is not None else cfg, cfg.dataset, 0, m, progress=False))
    run = lambda m, s: (lambda: runs.continual_run(cfg, cfg.dataset, s, m, progress=False))  # noqa: E731
    return {
        "tweedie": lambda: [lambda: analysis.tweedie_mse(cfg, progress=False)],
        "spectrum": lambda: [spec(cfg)],
        "sizes": lambda: [spec(cfg, arch=a) for a in ("small1", "small3")],
        "vae": lambda: [lambda: analysis.vae_share(cfg, progress=False)],
        "fmnist": lambda: [spec(analysis.second_dataset_cfg(cfg, "fmnist"))],
        "trajectory": lambda: [lambda: trajectory.trajectory(cfg, progress=False),
                               lambda: trajectory.init_spread(cfg, progress=False)],
        "table1": lambda: [run(m, s) for m in continual.TABLE1 for s in cfg.seeds],
        "ablations": lambda: [run(m, 0) for m in ("rankk-gd", "finetune")],  # seed 0, as the tier runs them
        "paper-budget": lambda: [spec(full), lambda: analysis.tweedie_mse(full, progress=False),
                                 lambda: trajectory.trajectory(full, progress=False)],
        "base-resnet": lambda: [spec(cfg, arch="base-resnet"), spec(full, arch="base-resnet")],
        "learned-task1": lambda: [two(None, None)] + [two(m, lam) for m, lam in learned_task1.RUNS],
    }[key]()


def _probe(calls):
    """(stored, total, first pending message or None)."""
    have, first = 0, None
    for call in calls:
        try:
            call()
            have += 1
        except store.ResultPending as e:
            first = first or e.command or str(e)
        except DataMissing as e:
            first = first or str(e)
    return have, len(calls), first


def rows(profile) -> list:
    """One dict per artefact: paper, what, chapter, status, stored/total, command (when pending)."""
    cfg = load_profile(profile)
    out = []
    for a in ARTEFACTS:
        have, total, msg = _probe(_needs(a.needs, cfg))
        if have == total:
            status = "smoke test" if profile in TOY_PROFILES else f"real result ({profile} tier)"
        else:
            status = "pending" if have == 0 else f"partial ({have}/{total} results)"
        out.append({"paper": a.paper, "what": a.what, "chapter": a.chapter, "status": status,
                    "stored": have, "needed": total, "command": msg if have < total else None})
    return out


def markdown(profile) -> str:
    """The status table as Markdown, with a link to each chapter."""
    lines = [f"| paper | what | chapter | status at profile `{profile}` |", "|---|---|---|---|"]
    for r in rows(profile):
        st = r["status"] + (f": `{r['command']}`" if r["command"] else "")
        lines.append(f"| {r['paper']} | {r['what']} | {{doc}}`{r['chapter']}` | {st} |")
    return "\n".join(lines)
