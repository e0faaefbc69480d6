"""Which UNet, and how many epochs per task, for a continual-learning tier on a small machine.

The paper's 35.7M-parameter UNet is out of reach on a CPU, so the `cpu` tier measures its choice:
for each candidate network a joint (non-continual) model is trained on all tasks at once, and its
A-FID (mean FID over the tasks' test sets, exactly the joint row of Table 1) is measured at several
points of training (`study_steps`) against the training wall time so far. The rule that turns the
curves into a choice is `choose`, fixed before any study result existed.

python -m rank1lib run cl_study --profile cpu --set model=base
"""
import math

import numpy as np
import torch
from filelock import FileLock
from safetensors.torch import load_file

from . import continual, data, estimates, store
from .models import build_unet, n_params
from .profiles import set_args
from .registry import experiment
from .train import pick_device, snapshot_seconds, snapshots, state_root, train

CANDIDATES = ("small3", "base", "mid")
# lambda sweep: the paper's 15000 refers to its 1/2 ||eps - eps_theta||^2 loss, a sum over
# the D = 1024 pixels; our loss is the per-pixel mean, which weakens the same lambda D/2 = 512 times.
# So: 15000 (the paper's number taken literally in our convention), 15000 x 512 (the paper's strength
# relative to the data term) and the geometric midpoint 15000 x sqrt(512), rounded.
PAPER_LAM, D_HALF = 15000.0, 512
LAMBDAS = (PAPER_LAM, 340000.0, PAPER_LAM * D_HALF)
SWEEP_METHODS = ("rank1-gd", "diag-gd")  # App. D Small-3 and base UNets; a 1.1M UNet (models.py)
WITHIN = 1.5  # choose: the cheapest point whose A-FID is within 1.5x of the best point of the study


def study_config(cfg, dataset, seed):
    """The keys a study result depends on (its hash names the training state too)."""
    keys = ("model", "train_per_class", "batch_size", "lr", "amp", "study_steps") + continual.EVAL_KEYS
    return {k: cfg[k] for k in keys} | {"dataset": dataset, "seed": seed}


def study_dir(cfg, name, seed):
    """Where one candidate's training state, snapshots and evaluated points live (committed at `cpu`)."""
    return state_root(cfg) / "cl_study" / f"{name}-{cfg.model}-s{seed}-{store.config_hash(study_config(cfg, name, seed))}"


def joint_data(cfg, ds):
    """Every training image of every task (the profile's train_per_class per class)."""
    classes = sorted(c for t in data.task_classes(ds.name) for c in t)
    return data.task_data(ds, 0, "train", per_class=cfg.train_per_class or None, classes=classes)


def epochs_per_task(cfg, steps, n_joint):
    """Epochs equivalent to `steps` optimiser steps over the joint data: the same epoch count is what each
    task of a continual run then gets (the paper trains every task and the joint model for 200 epochs)."""
    return steps * cfg.batch_size / n_joint


def evaluate_point(ev, net, T):
    """(A-FID, A-KID, per-task FIDs) of a joint model: the last row of Table 1's FID matrix."""
    row = ev.row(net, T - 1)
    return float(np.mean(row["fid"])), float(np.mean(row["kid"])), row["fid"]


def study_progress(cfg, dataset=None, seed=0, method=None):
    """Where one candidate stands (its committed state): training steps still to run at its own measured
    rate, and the A-FID points not yet evaluated."""
    from .continual import eval_tag
    from .train import measured_rate
    d = study_dir(cfg, dataset or cfg.dataset, seed)
    steps = max(cfg.study_steps)
    step, per = measured_rate(d / "ckpt", cfg.amp)
    per = per or estimates.sec_per_step(cfg.model)
    todo = [s for s in cfg.study_steps if not (d / f"eval-{s}-{eval_tag(cfg)}.json").exists()]
    return estimates.progress(step, steps, (steps - step) * per + len(todo) * estimates.SEC_PER_STUDY_EVAL_1T
                              + estimates.SETUP_S)


@experiment("cl_study", "joint-model A-FID against training time of one candidate UNet (--set model=...)",
            progress=study_progress)
def cl_study(cfg, dataset=None, seed=0, progress=True):
    """One candidate network: joint A-FID, A-KID and wall time at every `study_steps` point."""
    name = dataset or cfg.dataset
    conf = study_config(cfg, name, seed)

    def compute():
        device = pick_device()
        ds = data.load_images(name)
        spec = data.SPECS[name]
        T = len(data.task_classes(name))
        x, y = joint_data(cfg, ds)
        d = study_dir(cfg, name, seed)
        d.mkdir(parents=True, exist_ok=True)
        torch.manual_seed(seed)
        net = build_unet(cfg.model, spec.num_classes, spec.channels)
        steps = max(cfg.study_steps)
        with FileLock(str(d) + ".lock"):
            out = train(net, x, y, cfg, steps=steps, seed=seed, ckpt_dir=d / "ckpt", desc=f"joint {cfg.model}",
                        progress=progress, device=device, snapshot_dir=d / "snapshots",
                        snapshot_at=cfg.study_steps)
            ev = continual.Evaluator(cfg, ds, device)
            rows = []
            for step, path in snapshots(d / "snapshots").items():
                if step not in cfg.study_steps:
                    continue
                net.load_state_dict(load_file(str(path)))
                a_fid, a_kid, per_task = continual.cached(
                    d / f"eval-{step}-{continual.eval_tag(cfg)}.json",
                    lambda: evaluate_point(ev, net, T), as_json=True)
                rows.append({"step": step, "epochs": epochs_per_task(cfg, step, len(x)),
                             "train_seconds": snapshot_seconds(path), "a_fid": a_fid, "a_kid": a_kid,
                             "fid_per_task": per_task})
            floor = continual.floors(ev, d, T)
            net.load_state_dict(load_file(str(snapshots(d / "snapshots")[steps])))
            grid = continual.samples(net, name, cfg, per_class=4)
        losses = out["losses"]
        values = {"model": cfg.model, "params": n_params(net), "dataset": name, "seed": seed, "n_train": len(x),
                  "rows": rows, "fid_floor": float(np.mean(floor["fid"])), "kid_floor": float(np.mean(floor["kid"])),
                  "train_seconds": out.get("train_seconds"), "threads": torch.get_num_threads(),
                  "final_loss": float(np.mean(losses[-50:])) if losses else None,
                  "extractor_label": continual.fid.LABELS[cfg.fid_extractor]}
        return values, {"losses": np.array(losses, dtype=np.float32), "samples": grid.numpy()}, str(device)

    rec = store.load_or_compute(cfg.name, "cl_study", f"{name}-{cfg.model}-s{seed}", conf, compute,
                                **store.policy(cfg),
                                command=f"python -m rank1lib run cl_study --profile {cfg.name} --dataset {name} "
                                        f"--seed {seed} --set model={cfg.model}{set_args(cfg, ('dataset', 'model'))}")
    return rec


def stored_candidates(cfg, dataset, models=CANDIDATES, seed=0):
    """{model: record} of the candidates already in the store (nothing is computed)."""
    from .profiles import Config
    out = {}
    for m in models:
        c = Config(cfg, model=m)
        rec = store.load(cfg.name, "cl_study", f"{dataset}-{m}-s{seed}", study_config(c, dataset, seed))
        if rec is not None:
            out[m] = rec
    return out


def choose(recs) -> dict:
    """The rule (fixed before any study result): among all (candidate, step) points, keep those whose
    joint A-FID is within WITHIN x the best A-FID of the study; pick the one with the least training
    time; ties go to fewer parameters. Returns the point with its model, epochs and the rule's numbers."""
    pts = [dict(r, model=m, params=rec.values["params"]) for m, rec in recs.items() for r in rec.values["rows"]]
    if not pts:
        raise ValueError("no study results stored yet")
    best = min(p["a_fid"] for p in pts)
    ok = [p for p in pts if p["a_fid"] <= WITHIN * best]
    pick = min(ok, key=lambda p: (p["train_seconds"], p["params"]))
    return pick | {"best_a_fid": best, "threshold": WITHIN * best, "eligible": len(ok), "points": len(pts)}


def sweep(cfg, dataset="mnist-5k", seed=0) -> dict:
    """{method: {lam: record}} of the stored lambda-sweep runs (nothing is computed)."""
    from .profiles import Config
    from .runs import stored_runs
    out = {}
    for m in SWEEP_METHODS:
        for lam in LAMBDAS:
            got = stored_runs(Config(cfg, lam=lam), dataset, [m], [seed])
            if got:
                out.setdefault(m, {})[lam] = got[m][0]
    return out


def choose_lam(swept) -> float:
    """The rule (fixed before any sweep result): the lambda at which Rank-1 + GD (the paper's method) has
    the lowest A-FID on mnist-5k, seed 0; ties go to the smaller lambda. Diag + GD uses the same lambda,
    as in the paper. Needs every sweep point of Rank-1 + GD."""
    pts = swept.get("rank1-gd", {})
    if set(pts) != set(LAMBDAS):
        raise ValueError(f"lambda sweep incomplete: {len(pts)} of {len(LAMBDAS)} Rank-1 + GD points stored")
    return min(LAMBDAS, key=lambda lam: (pts[lam].values["a_fid"], lam))


def convention(lam) -> str:
    """Which loss convention a lambda corresponds to, in words."""
    if lam == PAPER_LAM:
        return "the paper's number applied to our per-pixel-mean loss (512x weaker than the paper's penalty)"
    if lam == PAPER_LAM * D_HALF:
        return "the paper's penalty strength relative to its summed loss (15000 x D/2)"
    return f"{lam / PAPER_LAM:.0f}x the paper's number in our convention, between the two"


def plot_sweep(axes, swept, gd=None):
    """A-FID and forgetting against lambda, one line per swept method; `gd` (GD alone's record, i.e.
    lambda = 0) as a horizontal line."""
    from .runs import COLORS, NAMES
    for m, pts in swept.items():
        lams = sorted(pts)
        for ax, key in zip(axes, ("a_fid", "forgetting")):
            ax.plot(lams, [pts[lam].values[key] for lam in lams], marker="o", color=COLORS[m], label=NAMES[m])
    for ax, lab, key in zip(axes, ("A-FID", "forgetting"), ("a_fid", "forgetting")):
        ax.set(xscale="log", xlabel="lambda", ylabel=lab)
        for lam in LAMBDAS:
            ax.axvline(lam, color="gray", lw=0.5, ls=":")
        if gd is not None:
            ax.axhline(gd.values[key], color=COLORS["gd"], ls="--", lw=1.2, label=f"{NAMES['gd']} (lambda = 0)")
    axes[0].legend(fontsize=9)


def sweep_edge(swept, lam, gd=None) -> str:
    """A sentence when the chosen lambda is an end of the swept range (Rank-1 + GD's best lambda may then
    lie outside it), with GD alone (lambda = 0) beside it; '' when the sweep brackets the choice."""
    pts = swept.get("rank1-gd", {})
    lams = sorted(pts)
    if not lams or lam not in (lams[0], lams[-1]):
        return ""
    side = "smallest" if lam == lams[0] else "largest"
    out = (f"The rule picked the {side} swept lambda, so the sweep does not bracket Rank-1 + GD's best lambda: "
           f"a {'weaker' if side == 'smallest' else 'stronger'} penalty might do better.")
    if gd is not None:
        g = gd.values["a_fid"]
        out += f" GD alone (lambda = 0) has A-FID {g:.1f}, Rank-1 + GD {pts[lam].values['a_fid']:.1f} at lambda = {lam:g}"
        above = all(p.values["a_fid"] > g for p in pts.values())
        out += "; at every swept lambda the rank-1 penalty made A-FID worse than distillation alone." if above else "."
    return out


def projected_hours(cfg, pick, n_task_images, T, gd_cost=2.3):
    """Rough one-thread hours of the Table-1 item (8 methods, one seed) at the chosen point, from its own
    measured seconds per step; gd_cost = cost of a distillation step relative to a plain one (assumed)."""
    sec_per_step = pick["train_seconds"] / pick["step"]
    task_steps = math.ceil(pick["epochs"]) * math.ceil(n_task_images / cfg.batch_size)
    plain, gd = 3 * (T - 1), 4 * (T - 1)  # finetune, diag, rank1; gd, diag-gd, rank1-gd, rankk-gd
    joint = math.ceil(pick["epochs"]) * math.ceil(T * n_task_images / cfg.batch_size)
    steps = task_steps * (1 + plain + gd_cost * gd) + joint
    return steps * sec_per_step / 3600


def plot(ax, recs, pick=None):
    """A-FID of the joint model against training minutes, one line per candidate; the floor dashed."""
    for m, rec in recs.items():
        rows = rec.values["rows"]
        ax.plot([r["train_seconds"] / 60 for r in rows], [r["a_fid"] for r in rows], marker="o",
                label=f"{m} ({rec.values['params'] / 1e6:.2f}M)")
    if recs:
        ax.axhline(np.mean([r.values["fid_floor"] for r in recs.values()]), ls="--", color="gray",
                   label="real vs real (floor)")
    if pick is not None:
        ax.plot(pick["train_seconds"] / 60, pick["a_fid"], marker="*", ms=18, color="gold", mec="k", ls="none",
                label=f"chosen: {pick['model']}, {pick['epochs']:.0f} epochs")
        ax.axhline(pick["threshold"], ls=":", color="k", lw=1, label=f"{WITHIN} x best A-FID")
    ax.set(xlabel="training wall time (min)", ylabel="joint-model A-FID", yscale="log")
    ax.legend(fontsize=9)


def choice_text(recs, pick) -> str:
    """The choice in one plain paragraph."""
    return (f"Best joint A-FID in the study: {pick['best_a_fid']:.1f}; {pick['eligible']} of {pick['points']} points "
            f"are within {WITHIN}x of it. The cheapest of them is {pick['model']} ({pick['params']:,} parameters) "
            f"after {pick['step']} steps = {pick['epochs']:.0f} epochs, {pick['train_seconds'] / 60:.0f} min of "
            f"training, A-FID {pick['a_fid']:.1f} (floor {recs[pick['model']].values['fid_floor']:.1f}).")



def lambda_points(swept, gd=None, extra=None) -> dict:
    """{method: {lambda: values}} over every stored lambda of both penalties, with GD alone as lambda = 0 of
    each (`extra`: further {(method, lam): record}, e.g. the Table-1 runs at the profile's lambda)."""
    out = {m: {lam: r.values for lam, r in pts.items()} for m, pts in swept.items()}
    for (m, lam), r in (extra or {}).items():
        out.setdefault(m, {})[lam] = r.values
    if gd is not None:
        for m in out:
            out[m][0.0] = gd.values
    return out


def plot_lambda_from_zero(axes, points, title=""):
    """A-FID and forgetting against lambda on a log axis that shows lambda = 0 (GD alone) apart, at a tenth
    of the smallest positive lambda; the top axis gives the paper's convention (lambda / (D/2))."""
    from .runs import COLORS, NAMES
    pos = sorted({lam for pts in points.values() for lam in pts if lam > 0})
    if not pos:
        return
    zero = pos[0] / 10
    for m, pts in points.items():
        lams = sorted(pts)
        xs = [lam if lam > 0 else zero for lam in lams]
        for ax, key in zip(axes, ("a_fid", "forgetting")):
            ax.plot(xs, [pts[lam][key] for lam in lams], marker="o", color=COLORS.get(m), label=NAMES.get(m, m))
    for ax, lab in zip(axes, ("A-FID", "forgetting")):
        ax.set(xscale="log", xlabel="lambda (ours: per-pixel-mean loss)", ylabel=lab, title=title)
        ax.set_xticks([zero] + pos, ["0\n(GD)"] + [f"{lam:g}" for lam in pos], fontsize=8)
        ax.minorticks_off()
        ax.axvspan(zero / 1.6, zero * 1.6, color="0.93", zorder=0)
        top = ax.secondary_xaxis("top", functions=(lambda x: x / D_HALF, lambda x: x * D_HALF))
        top.set_xticks([lam / D_HALF for lam in pos], [f"{lam / D_HALF:.3g}" for lam in pos], fontsize=7)
        top.minorticks_off()
        top.set_xlabel("the paper's lambda (summed loss)", fontsize=8)
    axes[0].legend(fontsize=8)
