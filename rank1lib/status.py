"""Which of the paper's figures and tables a tier holds: the landing page's status table.

python -m rank1lib status --profile P      (also written into the book's first page by `make book`)

Each row names a paper figure or table and the chapter that shows it; the results it needs are those
of the campaign's commands that say they feed it (campaign.Cmd.feeds), so the status asks for exactly
what the campaign schedules. Its status is read from the store only (nothing is computed): `real
result` when every result is stored at an evidence tier (cpu, gpu, paper), `smoke test` at the toy
profiles, `partial k/n` or `pending` with the command that computes the first missing result, `not in
the tier` when the profile's campaign has nothing for it.
"""
from dataclasses import dataclass

from . import store
from .data import DataMissing
from .profiles import TOY_PROFILES, load_profile


@dataclass(frozen=True)
class Artefact:
    paper: str
    what: str
    chapter: str
    needs: str  # the key the campaign's commands name in their `feeds`
    claims: tuple = ()  # the claims of the ledger (claims.CLAIMS) judged on these results


ARTEFACTS = [
    Artefact("Fig. 1", "Tweedie-scaled prediction vs x_t", "02_tweedie_and_alignment", "tweedie", ("C1",)),
    Artefact("Fig. 2, 3", "gradient alignment and exact Fisher spectrum (base UNet)", "03_fisher_spectrum", "spectrum",
             ("C2", "C3", "C4", "C5")),
    Artefact("Fig. 6", "spectrum of Small-1 and Small-3", "04_model_size_and_vae", "sizes", ("C7",)),
    Artefact("App. C", "VAE vs DDPM top-eigenvalue share", "04_model_size_and_vae", "vae", ("C6",)),
    Artefact("beyond the paper", "spectrum on Fashion-MNIST", "03_fisher_spectrum", "fmnist"),
    Artefact("beyond the paper", "Fisher along training, re-initialised controls", "03_fisher_spectrum", "trajectory",
             ("C13",)),
    Artefact("Fig. 1-3, 6 at the paper's budget", "base, Small-3 and Small-1 UNets on full MNIST, 200 epochs "
             "(93,800 steps)", "03_fisher_spectrum", "paper-budget", ("C2", "C3", "C4", "C5", "C6", "C7", "C13")),
    Artefact("Fig. 3 on the paper's network", "the 35.7M continual-learning UNet's spectrum (needs a GPU)",
             "03_fisher_spectrum", "cl-spectrum", ("C2", "C3", "C4", "C5", "C6", "C7")),
    Artefact("App. D without attention", "the base UNet with ResNet blocks only, mnist-5k and full MNIST",
             "03_fisher_spectrum", "base-resnet", ("C2", "C3", "C4", "C5", "C6", "C13")),
    Artefact("Table 1, Fig. 4", "continual learning, all methods", "05_continual_learning", "table1",
             ("C8", "C9", "C10")),
    Artefact("beyond Table 1", "a learned task 1, then task 2 under each method", "05_continual_learning",
             "learned-task1"),
    Artefact("beyond Table 1", "a learned task 1, then GD and Rank-1 + GD on task 2", "05_continual_learning",
             "learned-task1-pair", ("C8b",)),
    Artefact("Fig. 5, Tables 5, 6", "samples, rank-k and lambda = 0 ablations", "06_samples_and_ablations", "ablations",
             ("C11", "C12")),
]


def _needs(key, cfg):
    """The calls that load the results behind one artefact: the commands of the profile's campaign
    (campaign.all_items) that feed it, each asked through a reader config (ResultPending when absent;
    none computes). An artefact no item feeds is not part of the tier."""
    from functools import partial
    from .campaign import all_items
    return [partial(c.load, cfg.name) for it in all_items(cfg) for c in it.cmds if key in c.feeds]


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
        if total == 0:
            status = f"not in the {profile} tier"
        elif have == total:
            status = "smoke test" if profile in TOY_PROFILES else f"real result ({profile} tier)"
        else:
            status = "pending" if have == 0 else f"partial ({have}/{total} results)"
        out.append({"paper": a.paper, "what": a.what, "chapter": a.chapter, "claims": ", ".join(a.claims) or "—",
                    "status": status,
                    "stored": have, "needed": total, "command": msg if have < total else None})
    return out


def markdown(profile) -> str:
    """The status table as Markdown, with a link to each chapter."""
    lines = [f"| paper | what | chapter | claims | status at profile `{profile}` |", "|---|---|---|---|---|"]
    for r in rows(profile):
        st = r["status"] + (f": `{r['command']}`" if r["command"] else "")
        lines.append(f"| {r['paper']} | {r['what']} | {{doc}}`{r['chapter']}` | {r['claims']} | {st} |")
    return "\n".join(lines)
