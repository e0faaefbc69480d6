"""The Fisher along training (beyond the paper; tests the "as the model converges" of Prop. 2 and
Theorem 1): spectrum statistics at log-spaced weight snapshots of an analysis run, and the spread of
the same statistics over re-initialised models.

Each snapshot's statistics are stored as their own result, so an interrupted trajectory keeps what
it finished; `trajectory` then assembles them in step order.
"""
import functools

import numpy as np
import torch
from safetensors.torch import load_file

from . import data, store
from .analysis import (TRAIN_KEYS, _conf, analysis_data, analysis_dir, analysis_net, spectrum_compute, train_cfg,
                       training_progress)
from .models import build_unet
from .profiles import Config, reading, set_args
from .registry import experiment
from .train import pick_device, snapshots

TRAJ_T = [100, 300, 500, 700, 900]
INIT_SEEDS = [100, 101, 102, 103, 104]
ROW_KEYS = ("r", "share", "err_diag", "err_rank1", "err_best_rank1", "c_star", "mu_norm", "lam")


def _summary(values, arrays):
    """The per-t statistics of one spectrum plus a |cos(g, mu)| summary (median, 10th percentile)."""
    cos = arrays["cos"]
    return {k: values[k] for k in ROW_KEYS} | {
        "cos_median": np.median(cos, axis=1).tolist(), "cos_p10": np.percentile(cos, 10, axis=1).tolist(),
        "mu_cos": values["mu_cos"]}


def late_r(row, t):
    """Mean r_t over t >= 500 of one snapshot row (the quantity claim C13 follows)."""
    r = np.array(row["r"])
    return float(r[np.array(t) >= 500].mean())


def mechanism_text(traj_values, init_values) -> str:
    """A plain statement of what the trajectory says about the paper's mechanism (Markdown), from the
    same quantity as claim C13: mean r_t over t >= 500, along training and over re-initialised models."""
    t, rows = traj_values["t"], traj_values["rows"]
    steps = [r["step"] for r in rows]
    late = np.array([late_r(r, t) for r in rows])
    init = np.array([late_r(r, init_values["t"]) for r in init_values["rows"]])
    lo, hi = init.mean() - 2 * init.std(ddof=1), init.mean() + 2 * init.std(ddof=1)
    k = int(np.argmax(late))
    path = (f"Mean r_t over t ≥ 500 is {late[0]:.3f} at initialisation, peaks at {late[k]:.3f} "
            f"after {steps[k]} steps and ends at {late[-1]:.3f} after {steps[-1]} steps; "
            f"{len(init)} re-initialised models give {init.mean():.3f} ± {init.std(ddof=1):.3f}.")
    if late[-1] < lo:
        what = ("The trained model's Fisher is closer to rank 1 than any untrained one's (below the "
                "initialisation mean minus two standard deviations): training made the structure stronger, "
                "as the paper's convergence argument predicts.")
    elif late[-1] <= hi:
        what = ("The trained model's Fisher is no closer to rank 1 than an untrained one's (within two "
                "standard deviations of the re-initialised models): in this run the rank-1 structure at the "
                "end of training is what the network had at initialisation, so it does not show that "
                "convergence produces it.")
    else:
        what = ("The trained model's Fisher is further from rank 1 than an untrained one's: training "
                "weakened the structure in this run.")
    if late[-1] > late[0]:
        what += f" The run ended further from rank 1 than its own initialisation ({late[0]:.3f})."
    if k not in (0, len(late) - 1) and late[k] > hi:
        what += (f" Along the way, early training weakened the structure (the peak at step {steps[k]}) and "
                 f"later training lowered r_t again, to {late[-1]:.3f}.")
    return path + " " + what


def _loss_near(losses, step, window=32):
    """Mean training loss over the `window` steps before `step` (None at initialisation)."""
    if step == 0 or not losses:
        return None
    part = losses[max(0, step - window):step]
    return float(np.mean(part)) if part else None


def _trajectory_setup(cfg, dataset, seed, arch):
    """(dataset, arch, the per-snapshot config, the command that regenerates the trajectory)."""
    name, arch = dataset or cfg.dataset, arch or cfg.analysis_model
    base = _conf(train_cfg(cfg, arch), TRAIN_KEYS, dataset=name, arch=arch, seed=seed, n=cfg.fisher_samples,
                 t=TRAJ_T)
    # a snapshot's weights do not depend on how long the run goes on: the same record for 200 or 800
    # epochs, and whether it is computed while the run trains (trajectory_so_far) or after (trajectory)
    per_step = {k: v for k, v in base.items() if k not in ("analysis_epochs", "analysis_max_steps")}
    command = (f"python -m rank1lib run trajectory --profile {cfg.name} --dataset {name} --seed {seed} "
               f"--set analysis_model={arch}{set_args(cfg, ('dataset', 'analysis_model'))}")
    return name, arch, base, per_step, command


def _snapshot_stats(cfg, name, arch, seed, step, per_step, command, one):
    """One snapshot's statistics, stored as its own result; one() computes them."""
    return store.load_or_compute(cfg.name, "trajectory", f"{name}-{arch}-s{seed}-step{step:06d}",
                                 per_step | {"step": step}, one, **store.policy(cfg), command=command)


def _snapshot_fn(net, path, x, y, n, seed, progress):
    """compute() of one snapshot: the Gram-path statistics at TRAJ_T of the weights stored at `path`."""
    def one():
        net.load_state_dict(load_file(str(path)))
        values, arrays = spectrum_compute(net, x, y, n, TRAJ_T, seed, progress)
        return _summary(values, arrays), None, str(pick_device())
    return one


@experiment("trajectory", "Fisher spectrum at log-spaced snapshots of an analysis run (r_t along training)",
            progress=training_progress)
def trajectory(cfg, dataset=None, seed=0, arch=None, progress=True):
    """Spectrum statistics at t = 100, 300, ..., 900 (N = fisher_samples) for every stored snapshot."""
    name, arch, base, per_step, command = _trajectory_setup(cfg, dataset, seed, arch)

    def compute():
        net, info, x, y = analysis_net(cfg, name, seed, arch, progress=progress)
        _, ckpt = analysis_dir(cfg, name, seed, arch)
        rows = []
        for step, path in snapshots(ckpt / "snapshots").items():
            one = _snapshot_fn(net, path, x, y, cfg.fisher_samples, seed, progress)
            rec = _snapshot_stats(cfg, name, arch, seed, step, per_step, command, one)
            rows.append({"step": step, "loss": _loss_near(net.losses, step)} | rec.values)
        return info | {"t": TRAJ_T, "n_samples": cfg.fisher_samples, "rows": rows}, None, str(pick_device())

    return store.load_or_compute(cfg.name, "trajectory", f"{name}-{arch}-s{seed}", base, compute,
                                 **store.policy(cfg), command=command)


@experiment("trajectory_so_far", "the trajectory's points at the snapshots an unfinished analysis run has "
            "stored so far (no training)")
def trajectory_so_far(cfg, dataset=None, seed=0, arch=None, progress=True) -> list:
    """The per-snapshot records of `trajectory` for every snapshot stored so far, computing the missing
    ones from the snapshot weights without training on; `trajectory` reuses them when the run ends.
    With a reader config, only those already stored (ascending steps)."""
    name, arch, _, per_step, command = _trajectory_setup(cfg, dataset, seed, arch)
    _, ckpt = analysis_dir(cfg, name, seed, arch)
    steps = snapshots(ckpt / "snapshots")
    stored = {int(p.stem.rsplit("-step", 1)[1]) for p in
              store.result_dir(cfg.name, "trajectory").glob(f"{name}-{arch}-s{seed}-step*.json")}
    @functools.cache
    def net_and_data():  # built only when a snapshot needs computing (a reader never loads data)
        x, y = analysis_data(cfg, name)
        spec = data.SPECS[name]
        return build_unet(arch, spec.num_classes, spec.channels).to(pick_device()).eval(), x, y

    recs = []
    for step in sorted(set(steps) | stored):
        def one(step=step):
            net, x, y = net_and_data()
            return _snapshot_fn(net, steps[step], x, y, cfg.fisher_samples, seed, progress)()
        scfg = cfg if step in steps else reading(cfg)  # stored, its weights pruned: only read it
        try:
            recs.append(_snapshot_stats(scfg, name, arch, seed, step, per_step, command, one))
        except store.ResultPending:
            continue
    return recs


@experiment("init_spread", "Fisher spectrum of re-initialised (untrained) models, several seeds")
def init_spread(cfg, dataset=None, seed=0, arch=None, progress=True):
    """The trajectory's statistics at initialisation for INIT_SEEDS fresh models of the same architecture."""
    name, arch = dataset or cfg.dataset, arch or cfg.analysis_model
    n = cfg.fisher_samples
    conf = _conf(cfg, ("train_per_class",), dataset=name, arch=arch, n=n, t=TRAJ_T, init_seeds=INIT_SEEDS)

    def compute():
        x, y = analysis_data(cfg, name)
        spec = data.SPECS[name]
        rows = []
        for s in INIT_SEEDS:
            torch.manual_seed(s)
            net = build_unet(arch, spec.num_classes, spec.channels).to(pick_device()).eval()
            values, arrays = spectrum_compute(net, x, y, n, TRAJ_T, s, progress)
            rows.append({"init_seed": s} | _summary(values, arrays))
        return {"arch": arch, "t": TRAJ_T, "n_samples": n, "rows": rows}, None, str(pick_device())

    return store.load_or_compute(cfg.name, "init_spread", f"{name}-{arch}", conf, compute, **store.policy(cfg),
                                 command=f"python -m rank1lib run init_spread --profile {cfg.name} --dataset {name}"
                                         f" --set analysis_model={arch}{set_args(cfg, ('dataset', 'analysis_model'))}")


# The runs drawn on one pair of axes: the paper's budget (full MNIST, 93,800 steps) and the mnist-5k tier
# (6,400 steps), each with and without attention blocks.
DATASET_NAMES = {"mnist": "full MNIST", "mnist-5k": "mnist-5k"}  # how the budget figure and notes name them
BUDGET_RUNS = (("mnist", "base"), ("mnist", "base-resnet"), ("mnist-5k", "base"), ("mnist-5k", "base-resnet"))


def budget_runs(profile="cpu") -> dict:
    """{(dataset, arch, seed): stored trajectory record} of BUDGET_RUNS (never computed here). A run still
    training stands in with the snapshots stored so far (partial_trajectory), marked values['partial']."""
    from .profiles import load_profile
    out = {}
    for ds, arch in BUDGET_RUNS:
        cfg = reading(load_profile(profile, dataset=ds, analysis_model=arch))
        for s in cfg.seeds:
            try:
                out[(ds, arch, s)] = trajectory(cfg, ds, s, arch, progress=False)
            except store.ResultPending:
                part = partial_trajectory(cfg, ds, s, arch)
                if part is not None:
                    out[(ds, arch, s)] = part
            except data.DataMissing:
                pass
    return out


def partial_trajectory(cfg, dataset, seed, arch):
    """A trajectory-shaped record of the snapshots stored so far of a run still training (None without
    any): values hold 'rows' in step order, 'partial': True and the run's 'step' and planned 'steps'."""
    recs = trajectory_so_far(reading(cfg), dataset, seed, arch, progress=False)
    if not recs:
        return None
    try:
        prog = training_progress(Config(cfg, analysis_model=arch), dataset, seed)
    except data.DataMissing:
        prog = {"step": None, "steps": None}
    rows = [{"step": r["config"]["step"], "loss": None} | r.values for r in recs]
    return store.Result(recs[-1], name=f"{dataset}-{arch}-s{seed}",
                        values={"t": TRAJ_T, "n_samples": cfg.fisher_samples, "rows": rows, "partial": True,
                                "step": prog["step"], "steps": prog["steps"], "arch": arch})


def _steps_text(values) -> str:
    """'step 31,911 of 93,800' of a partial trajectory (its last snapshot when the run's step is unknown)."""
    if values.get("step") is not None:
        return f"step {values['step']:,} of {values['steps']:,}"
    return f"snapshots to step {values['rows'][-1]['step']:,}"


def partial_text(runs) -> str:
    """One sentence naming the runs of budget_runs that are still training and how far each has got."""
    parts = [f"{arch} on {DATASET_NAMES.get(ds, ds)} (seed {seed}; {_steps_text(rec.values)}, snapshots to step "
             f"{rec.values['rows'][-1]['step']:,} drawn; mean r_t over t >= 500 there "
             f"{late_r(rec.values['rows'][-1], rec.values['t']):.3f})"
             for (ds, arch, seed), rec in runs.items() if rec.values.get("partial")]
    if not parts:
        return ""
    return ("Still training, drawn with the snapshots stored so far: " + "; ".join(parts) + ". Their points "
            "are final (a snapshot's statistics do not change as the run goes on); the lines grow as the "
            "campaign continues them.")


def late_mean(values, key) -> tuple:
    """(steps, mean of `key` over t >= 500 at each snapshot) of one trajectory."""
    t = np.array(values["t"])
    steps = np.array([r["step"] for r in values["rows"]])
    return steps, np.array([np.mean(np.array(r[key])[t >= 500]) for r in values["rows"]])


def budget_figure(runs):
    """r_t and the rank-1 error (means over t >= 500) against optimiser steps for every run of budget_runs;
    the initialisation is drawn at step 1 of the log axis."""
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(1, 2, figsize=(11, 4))
    for (ds, arch, seed), rec in runs.items():
        style = dict(color=f"C{BUDGET_RUNS.index((ds, arch))}", alpha=1.0 if seed == 0 else 0.45,
                     marker="o" if ds == "mnist" else ".", ls="-" if arch == "base" else "--")
        lab = f"{arch}, {DATASET_NAMES.get(ds, ds)}" if seed == 0 else None
        if lab and rec.values.get("partial"):
            lab += f" (training: {_steps_text(rec.values)})"
        for a, key in zip(ax, ("r", "err_rank1")):
            steps, y = late_mean(rec.values, key)
            a.semilogx(np.maximum(steps, 1), y, label=lab, **style)
    ax[0].set(xlabel="optimiser step (log; 1 = initialisation)", ylabel=r"mean $r_t$ over $t \geq 500$",
              title=r"$r_t = \lambda_2/\lambda_1$ along training", ylim=(0, None))
    ax[1].set(xlabel="optimiser step (log)", ylabel="relative Frobenius error", ylim=(0, 1.05),
              title=r"rank-1 error of $c^\star\mu_t\mu_t^\top$ ($t \geq 500$)")
    for x, what in ((6400, "mnist-5k, 200 epochs"), (93800, "full MNIST, 200 epochs")):
        for a in ax:
            a.axvline(x, color="0.7", lw=0.8, zorder=0)
        ax[1].text(x, 1.02, what, rotation=90, ha="right", va="top", fontsize=8, color="0.4")
    fig.legend(*ax[0].get_legend_handles_labels(), loc="lower center", ncol=2, fontsize=9, bbox_to_anchor=(0.5, -0.2))
    return fig
