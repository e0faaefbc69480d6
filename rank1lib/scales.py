"""The models and training budgets at which the Fisher claims are judged, and each one's premise.

The paper's Fisher claims (C2-C7, C13) are about a model near convergence. A scale is one analysis
UNet trained with one budget (model, dataset, steps, tier); the ledger applies each claim's rule to
every scale that has a stored spectrum, so it can say where the claim holds. The premise of a
Fisher claim, "near convergence", is read from the run's own training loss.
"""
from dataclasses import dataclass

import numpy as np

from . import store
from .data import DataMissing
from .profiles import load_profile, reading

NEAR_CONVERGENCE = 0.05  # the smoothed training loss changed by less than this over the last doubling of steps
SMOOTH = 0.10            # each end of that doubling: the mean loss over the last 10% of steps before it


@dataclass(frozen=True)
class Scale:
    key: str
    model: str      # how the book names the network
    profile: str    # the tier whose store holds it
    dataset: str
    arch: str
    sets: tuple = ()  # further profile values the stored runs were made with
    seeds: tuple = (0, 1, 2)

    @property
    def column(self) -> str:
        """The ledger's column for this scale: network and data (the steps are in each result's label)."""
        data = {"mnist": "full MNIST", "mnist-5k": "mnist-5k"}.get(self.dataset, self.dataset)
        return f"{self.model}, {data}" + (f" ({self.profile} tier)" if self.profile != "cpu" else "")

    def cfg(self):
        return load_profile(self.profile, dataset=self.dataset, analysis_model=self.arch, **dict(self.sets))


# Column order of the ledger, the first stored one being a claim's headline: the paper's budget (full MNIST)
# first, with and without attention (the appendix's literal network), then the mnist-5k tier, then the
# paper's continual-learning UNet from the gpu tier.
SCALES = [
    Scale("base-mnist", "base UNet", "cpu", "mnist", "base"),
    Scale("base-resnet-mnist", "base UNet without attention", "cpu", "mnist", "base-resnet"),
    Scale("base-mnist-5k", "base UNet", "cpu", "mnist-5k", "base"),
    Scale("base-resnet-mnist-5k", "base UNet without attention", "cpu", "mnist-5k", "base-resnet"),
    Scale("cl-mnist-5k", "35.7M continual-learning UNet", "gpu", "mnist-5k", "cl", (("analysis_epochs", 200),)),
]
BY_KEY = {s.key: s for s in SCALES}
SIZES = ("small1", "small3", "base", "cl")  # claim C7: the networks in order of size


def stored_only(fn, *args, **kw):
    """An experiment's stored result (never computed here), or None when it is not in the store."""
    try:
        return fn(reading(args[0]), *args[1:], progress=False, **kw)
    except (store.ResultPending, DataMissing):
        return None


def spectra(scale, seeds=None) -> dict:
    """{seed: stored spectrum record} of a scale (never computed here)."""
    from .analysis import spectrum
    found = {s: stored_at(scale, spectrum, s) for s in (seeds if seeds is not None else scale.seeds)}
    return {s: r for s, r in found.items() if r is not None}


def stored_at(scale, fn, seed=0):
    """The stored result of an analysis experiment (analysis.spectrum, analysis.tweedie_mse) at one scale, or None."""
    return stored_only(fn, scale.cfg(), arch=scale.arch, seed=seed)


def paper_budget_spectrum():
    """(Scale, seed-0 spectrum) of the first full-MNIST scale in SCALES order that has one stored (the network
    that heads the ledger at the paper's budget), or None while neither is stored."""
    for sc in SCALES:
        if sc.dataset == "mnist":
            rec = spectra(sc, [0]).get(0)
            if rec is not None:
                return sc, rec
    return None


def label(scale, rec) -> str:
    """'base UNet (151,249 parameters), full MNIST, 93,800 steps' from a stored record."""
    v = rec.values
    data = {"mnist": "full MNIST", "mnist-5k": "mnist-5k"}.get(scale.dataset, scale.dataset)
    return f"{scale.model} ({v['params']:,} parameters), {data}, {v['train_steps']:,} steps"


def view(rec) -> dict:
    """The per-t statistics the Fisher rules read from one spectrum record (plain floats and lists)."""
    v = rec.values
    out = {k: np.asarray(v[k], dtype=float) for k in ("t", "r", "share", "err_diag", "err_rank1", "mu_cos")}
    cos = (rec.arrays or {}).get("cos")
    out["cos_mean"] = None if cos is None else np.asarray(cos, dtype=float).mean(1)
    return out


def mean_view(views) -> dict:
    """The seeds' mean of each per-t statistic (the rules applied to the mean run of several seeds)."""
    out = {k: np.mean([v[k] for v in views], 0) for k in views[0] if views[0][k] is not None}
    out["cos_mean"] = out.get("cos_mean")
    return out


def near_convergence(loss_curve, steps) -> dict:
    """'Near convergence' (the Fisher claims' premise): the training loss, smoothed over the last 10% of
    steps before each point, changed by less than 5% between step T/2 and step T (the last doubling)."""
    s, loss = np.asarray(loss_curve, dtype=float).T

    def at(x):
        m = (s > (1 - SMOOTH) * x) & (s <= x)
        return float(loss[m].mean()) if m.any() else float("nan")
    end, half = at(steps), at(steps / 2)
    change = (end - half) / half  # negative: the loss still falls
    holds = bool(abs(change) < NEAR_CONVERGENCE)
    return {"holds": holds, "change": change, "loss_half": half, "loss_end": end, "steps": int(steps),
            "text": f"training loss {half:.4f} at step {int(steps // 2):,} -> {end:.4f} at step {int(steps):,} "
                    f"({100 * change:+.1f}% over the last doubling; near convergence means |change| < "
                    f"{100 * NEAR_CONVERGENCE:.0f}%): {'met' if holds else 'not met'}"}


def run_premise(rec) -> dict | None:
    """The premise of one stored spectrum record, from its loss curve (None where none is stored)."""
    if rec.arrays is None or "loss_curve" not in rec.arrays:
        return None
    return near_convergence(rec.arrays["loss_curve"], rec.values["train_steps"])


NAMES = {"small1": "Small-1 UNet", "small3": "Small-3 UNet", "base": "base UNet",
         "base-resnet": "base UNet without attention", "cl": "35.7M continual-learning UNet"}


def size_scales() -> list:
    """Every network of the Fisher chapters on each dataset it is analysed on (seed 0), smallest first."""
    out = []
    for ds in ("mnist", "mnist-5k"):
        for arch in ("small1", "small3", "base-resnet", "base", "cl"):
            known = next((s for s in SCALES if s.arch == arch and s.dataset == ds), None)
            if known is not None:
                out.append(known)
            elif arch != "cl":
                out.append(Scale(f"{arch}-{ds}", NAMES[arch], "cpu", ds, arch))
    return out


def seed0_spectra() -> dict:
    """{Scale: stored seed-0 spectrum} for every size_scales() entry that has one."""
    found = {sc: spectra(sc, [0]).get(0) for sc in size_scales()}
    return {sc: r for sc, r in found.items() if r is not None}


def sizes_figure(found):
    """r_t and the rank-1 error against t for every stored network and budget (Fig. 6 across sizes):
    colour by network, solid lines for full MNIST, dashed for mnist-5k."""
    import matplotlib.pyplot as plt
    colours = {a: f"C{i}" for i, a in enumerate(NAMES)}
    fig, ax = plt.subplots(1, 2, figsize=(11, 4))
    for sc, rec in found.items():
        v = rec.values
        style = dict(color=colours[sc.arch], ls="-" if sc.dataset == "mnist" else "--", marker="o", ms=3)
        ax[0].plot(v["t"], v["r"], label=label(sc, rec), **style)
        ax[1].plot(v["t"], v["err_rank1"], **style)
    ax[0].set(xlabel="timestep t", ylabel=r"$r_t = \lambda_2/\lambda_1$", title=r"$r_t$ per network and budget",
              ylim=(0, None))
    ax[1].set(xlabel="timestep t", ylabel="relative Frobenius error", title=r"rank-1 error of $c^\star\mu_t\mu_t^\top$",
              ylim=(0, 1.05))
    fig.legend(loc="lower center", bbox_to_anchor=(0.5, -0.02), ncol=2, fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0.03 + 0.045 * ((len(found) + 1) // 2), 1, 1))
    return fig
