"""Continual learning where the paper's premise holds: task 1 trained until it is learned, then task 2
(the first two tasks of the class-incremental split) under each method.

The paper's mechanism, rank-1 EWC keeping the weights inside the optimum that distillation shares,
is about protecting a *learned* task. Task 1 is trained on (exactly continuing the shorter run: the
batch, t and noise of a step depend only on (seed, step)) to each of task1_points() until its FID is
within LEARNED x the joint model's FID on the same task, then every method trains task 2 for as many
steps from that model. Each FID is measured with FID_SEEDS sampling seeds, so the evaluation noise is
visible beside each difference.
"""
import copy

import numpy as np
import torch
from safetensors.torch import load_file

from . import continual, data, estimates, replay, seeds, store
from .continual import Evaluator, add_to_penalty, cached, combine, eval_tag, method_penalty, stat_name, step_settings
from .models import build_unet
from .profiles import Config, load_profile, reading, set_args
from .registry import experiment
from .train import (amp_on, checkpoint_info, drop_optimiser, measured_rate, pick_device, rate_here, snapshots,
                    state_root, train)

LEARNED = 1.5            # task 1 is learned when its FID <= 1.5 x the joint model's FID on task 1
FID_SEEDS = (0, 1, 2)    # DDIM sampling seeds of every FID (the model is the same; the noise is not)
RUNS = (("finetune", None), ("gd", None), ("rank1-gd", None), ("diag-gd", None), ("rank1-gd", 1500.0),
        ("rank1-gd", 150.0))  # (method, lambda; None = the profile's) in priority order
DECISIVE = RUNS[:3]
C8B_PAIR = RUNS[1:3]  # the two runs claim C8b compares: GD and Rank-1 + GD at the profile's lambda


def task1_points(cfg, n1) -> list:
    """Steps at which task 1 is evaluated: the tier's task length n1, then half and all of task1_max_steps."""
    cap = max(n1, cfg.task1_max_steps)
    return sorted({n1, max(n1, cap // 2), cap})


def root(cfg, dataset, seed):
    """Training state of the two-task runs of one (dataset, seed), hashed on the training keys."""
    conf = {k: cfg[k] for k in continual.TRAIN_KEYS} | {"dataset": dataset, "seed": seed,
                                                        "task1_max_steps": cfg.task1_max_steps}
    return state_root(cfg) / "learned" / f"{dataset}-s{seed}-{store.config_hash(conf)}"


def eval_file(d, tag, s, cfg):
    """Where one FID evaluation of a task folder (FID sampling seed s, one of FID_SEEDS) is cached."""
    return d / f"eval-{tag}-fs{s}-{eval_tag(cfg)}.json"


def pool_name(cfg):
    """The replay pool of task 1's model (shared by every distillation method), without its suffix."""
    return f"pool-{cfg.replay_per_class}-{cfg.ddim_steps}-b{cfg.sample_batch}"


def fid_rows(ev, net, k, d, tag, progress=False):
    """{"fid": [[FID_i] per sampling seed], "kid": [...]} over tasks i = 0..k (each cached in d)."""
    rows = [cached(eval_file(d, tag, s, ev.cfg),
                   lambda s=s: ev.row(net, k, seed=seeds.fid_sampling(s), progress=progress,
                                      desc=f"FID {tag}, sampling seed {s}"), as_json=True) for s in FID_SEEDS]
    return {"fid": [r["fid"] for r in rows], "kid": [r["kid"] for r in rows]}


def _joint_fid1(cfg, dataset, seed, progress):
    """Task 1's FID under the joint model (all tasks at once). The joint run has no penalty, so every lambda
    reads the one stored at the profile's own lambda instead of training its own."""
    from .runs import continual_run
    joint = Config(cfg, lam=load_profile(cfg.name).lam)
    return float(continual_run(joint, dataset, seed, "joint", progress).values["fid"][-1][0])


def learn_task1(cfg, dataset, seed, device, progress=True):
    """Task 1 trained to each point until learned: (net at the chosen point, task folder, values)."""
    ds, spec = data.load_images(dataset), data.SPECS[dataset]
    x, y = data.task_data(ds, 0, "train", per_class=cfg.train_per_class or None)
    joint = _joint_fid1(cfg, dataset, seed, progress)
    torch.manual_seed(seed)
    net = build_unet(cfg.model, spec.num_classes, spec.channels).to(device)
    d = root(cfg, dataset, seed) / "task1"
    d.mkdir(parents=True, exist_ok=True)
    ev = Evaluator(cfg, ds, device)
    curve, chosen = [], None
    for p in task1_points(cfg, continual.cl_steps(cfg, len(x))):
        snap = snapshots(d / "snapshots").get(p)
        if snap is None:  # continues the checkpoint of the last point exactly
            train(net, x, y, step_settings(cfg), steps=p, seed=seeds.task(seed), ckpt_dir=d / "ckpt",
                  desc=f"task 1 to {p} steps", progress=progress, device=device,
                  snapshot_dir=d / "snapshots", snapshot_at={p})
        else:
            net.load_state_dict(load_file(str(snap), device=str(device)))
        rows = fid_rows(ev, net, 0, d, f"step{p}", progress)
        fids = [r[0] for r in rows["fid"]]
        curve.append({"step": p, "fid": fids, "kid": [r[0] for r in rows["kid"]]})
        chosen = p
        if np.mean(fids) <= LEARNED * joint:
            break
    drop_optimiser(d / "ckpt")  # task 1 is final: the methods start from its snapshot with a fresh Adam
    values = {"dataset": dataset, "seed": seed, "joint_fid_task1": joint, "curve": curve, "steps": chosen,
              "learned": bool(np.mean(curve[-1]["fid"]) <= LEARNED * joint), "rule": f"FID <= {LEARNED} x joint",
              "fid_seeds": list(FID_SEEDS)}
    return net.eval(), d, values


def task2(cfg, dataset, seed, method, net1, d1, steps, device, progress=True):
    """Task 2 from the task-1 model under `method` for `steps` steps; the scores over both tasks."""
    kind, gd = continual.RECIPES[method]
    ds = data.load_images(dataset)
    tasks = data.task_classes(dataset)
    per = cfg.train_per_class or None
    x1, y1 = data.task_data(ds, 0, "train", per_class=per)
    x2, y2 = data.task_data(ds, 1, "train", per_class=per)
    pen = method_penalty(kind, cfg.lam) if kind else None
    if kind:
        st = cached(d1 / f"stats-{stat_name(cfg, kind)}.pt",
                    lambda: continual.kind_statistics(kind, net1, x1, y1, cfg, seeds.task(seed)))
        add_to_penalty(pen, kind, net1, st)
    distill = None
    if gd:
        name = pool_name(cfg)
        part = d1 / f"{name}.part.pt"
        pool = cached(d1 / f"{name}.pt", lambda: replay.make_pool(
            net1, tasks[0], cfg.replay_per_class, cfg.ddim_steps, seeds.task(seed), cfg.sample_batch,
            amp_on(cfg.amp, device), progress, part))
        replay.rank_file(part).unlink(missing_ok=True)
        distill = replay.Distillation(replay.frozen_copy(net1), pool[0], pool[1], cfg.batch_size)
    net = copy.deepcopy(net1).train()
    d = root(cfg, dataset, seed) / continual.lineage(cfg, method, 1) / "task2"
    d.mkdir(parents=True, exist_ok=True)
    out = train(net, x2, y2, step_settings(cfg), steps=steps, seed=seeds.task(seed, 1), ckpt_dir=d / "ckpt",
                extra_loss=combine(pen, distill), desc=f"{method} task 2", progress=progress, device=device,
                final_opt=False)
    return fid_rows(Evaluator(cfg, ds, device), net.eval(), 1, d, "after", progress), out.get("train_seconds")


def summary(t1, rows2, method, lam, train_seconds) -> dict:
    """Forgetting of task 1 (FID after task 2 minus after task 1), task-2 FID (plasticity) and A-FID over the
    two tasks, each as the mean and standard error over the FID sampling seeds."""
    before = np.array(t1["curve"][-1]["fid"])
    after, second = np.array([r[0] for r in rows2["fid"]]), np.array([r[1] for r in rows2["fid"]])
    kid_after, kid_second = np.array([r[0] for r in rows2["kid"]]), np.array([r[1] for r in rows2["kid"]])
    se = lambda a: float(np.std(a, ddof=1) / np.sqrt(len(a))) if len(a) > 1 else None  # noqa: E731
    f = after - before
    return {"method": method, "lam": lam, "steps": t1["steps"], "learned": t1["learned"],
            "fid_task1_before": before.tolist(), "fid_task1_after": after.tolist(), "fid_task2": second.tolist(),
            "kid_task1_before": t1["curve"][-1]["kid"], "kid_task1_after": kid_after.tolist(),
            "kid_task2": kid_second.tolist(),
            "forgetting": float(f.mean()), "forgetting_se": se(f), "task2_fid": float(second.mean()),
            "task2_fid_se": se(second), "a_fid": float(((after + second) / 2).mean()),
            "a_fid_se": se((after + second) / 2), "train_seconds": train_seconds}


def name_of(dataset, method, seed, lam):
    return f"{dataset}-{method or 'task1'}-s{seed}" + (f"-lam{lam:g}" if lam is not None else "")


def sibling_rate(cfg, d, method):
    """Seconds per task-2 step that another run of `method` in RUNS from the same task 1 (another lambda: the
    same network and the same step) measured on this machine, or None; their median where there are several."""
    lam0 = load_profile(cfg.name).lam
    dirs = {continual.lineage(Config(cfg, lam=lam0 if lam is None else lam), method, 1)
            for m, lam in RUNS if m == method}
    rates = [r for r in (rate_here(d / x / "task2" / "ckpt", cfg.amp) for x in sorted(dirs)) if r]
    return float(np.median(rates)) if rates else None


def learned_progress(cfg, dataset=None, seed=0, method=None):
    """Where a two-task run stands (its committed state): task 1's steps and FID points still to do (up to
    task1_max_steps while its length is not chosen), then task 2's steps at its own measured rate, else at the
    rate a sibling measured here (sibling_rate), else at the reference rate (a distillation step counting
    estimates.GD_COST plain ones), then its replay pool and its FID evaluations."""
    from .runs import dataset_cfg
    name = dataset or cfg.dataset
    cfg = dataset_cfg(cfg, name)
    d = root(cfg, name, seed)
    sec, img = estimates.sec_per_step(cfg.model), estimates.SEC_PER_IMAGE_1T
    fid1 = len(FID_SEEDS) * estimates.fid_images(cfg, name)
    t1 = store.load(cfg.name, "learned_task1", name_of(name, None, seed, None))
    step1 = (checkpoint_info(d / "task1" / "ckpt") or (0, 0.0))[0]
    if t1 is None:
        n1 = estimates.task_steps(cfg, name)
        points = task1_points(cfg, n1)
        left1 = (max(points) - step1) * sec + fid1 * img * sum(
            not eval_file(d / "task1", f"step{p}", FID_SEEDS[-1], cfg).exists() for p in points)
        n2 = max(points)
    else:
        left1, n2 = 0.0, t1.values["steps"]
    if method is None:
        return estimates.progress(step1, n2 if t1 else max(points), left1)
    gd = continual.RECIPES[method][1]
    d2 = d / continual.lineage(cfg, method, 1) / "task2"
    step2, per2 = measured_rate(d2 / "ckpt", cfg.amp)
    step2, per2 = min(step2, n2), per2 or sibling_rate(cfg, d, method)
    pool = gd and not (d / "task1" / f"{pool_name(cfg)}.pt").exists()
    evals = not eval_file(d2, "after", FID_SEEDS[-1], cfg).exists()
    left2 = ((n2 - step2) * (per2 or sec * (estimates.GD_COST if gd else 1.0))
             + img * (2 * cfg.replay_per_class * pool + 2 * fid1 * evals))
    return estimates.progress(step2, n2, left1 + left2)


def learned_leftovers(cfg, dataset=None, seed=0, method=None):
    """A finished task 2 keeps its evaluations (JSON) and loses its weights (its result is stored); task 1's
    state stays, since every method starts from it."""
    if method is None:
        return None, []
    from .runs import dataset_cfg
    name = dataset or cfg.dataset
    cfg = dataset_cfg(cfg, name)
    d2 = root(cfg, name, seed) / continual.lineage(cfg, method, 1) / "task2"
    return d2, [(d2 / "ckpt", "weights of a finished task 2")] if (d2 / "ckpt").exists() else []


@experiment("learned_task1", "task 1 trained until learned, then task 2 under --method (a learned task 1)",
            progress=learned_progress, leftovers=learned_leftovers)
def learned_task1(cfg, dataset=None, seed=0, method=None, progress=True):
    """Without --method: task 1's FID curve and the chosen length; with it: that method's task 2 (at the
    profile's lam: pass --set lam=... for the other lambdas)."""
    from .runs import dataset_cfg
    name = dataset or cfg.dataset
    cfg = dataset_cfg(cfg, name)
    if method is not None:
        continual.check_method(method)
        if method in ("joint", "rankk-gd"):
            raise ValueError(f"method {method!r} has no two-task run; valid: "
                             f"{', '.join(sorted({m for m, _ in RUNS}))}")
    kind = continual.RECIPES[method][0] if method else None
    lam = cfg.lam if kind else None
    conf = continual.run_config(cfg, name, method or "task1", seed) | {"task1_max_steps": cfg.task1_max_steps,
                                                                      "learned": LEARNED, "fid_seeds": FID_SEEDS}
    command = (f"python -m rank1lib run learned_task1 --profile {cfg.name} --dataset {name} --seed {seed}"
               + (f" --method {method}" if method else "") + set_args(cfg))

    def compute():
        device = pick_device()
        net1, d1, t1 = learn_task1(cfg, name, seed, device, progress)
        if method is None:
            return t1, None, str(device)
        rows2, secs = task2(cfg, name, seed, method, net1, d1, t1["steps"], device, progress)
        return {"dataset": name, "seed": seed} | summary(t1, rows2, method, lam, secs), None, str(device)

    return store.load_or_compute(cfg.name, "learned_task1", name_of(name, method, seed, lam), conf, compute,
                                 **store.policy(cfg), command=command)


def stored_runs(cfg, dataset, seed=0, runs=RUNS) -> dict:
    """{(method, lam): stored record} of the two-task runs, and {(None, None): task 1} (never computed)."""
    out = {}
    for method, lam in ((None, None),) + tuple(runs):
        c = reading(Config(cfg, lam=lam) if lam is not None else cfg)
        try:
            out[(method, lam)] = learned_task1(c, dataset, seed, method, progress=False)
        except (store.ResultPending, data.DataMissing):
            pass
    return out


def table(recs) -> list:
    """Rows of the two-task table: method, lambda, task-1 FID before and after, forgetting, task-2 FID,
    A-FID, each mean +- se over the FID sampling seeds."""
    fmt = lambda m, s: "—" if m is None else (f"{m:.1f}" if s is None else f"{m:.1f} ± {s:.1f}")  # noqa: E731
    rows = []
    for (method, lam), r in recs.items():
        if method is None:
            continue
        v = r.values
        b, a = np.array(v["fid_task1_before"]), np.array(v["fid_task1_after"])
        rows.append({"method": method, "lambda": "—" if v["lam"] is None else f"{v['lam']:g}",
                     "task 1 FID after task 1": fmt(b.mean(), None), "task 1 FID after task 2": fmt(a.mean(), None),
                     "forgetting": fmt(v["forgetting"], v["forgetting_se"]),
                     "task 2 FID": fmt(v["task2_fid"], v["task2_fid_se"]), "A-FID": fmt(v["a_fid"], v["a_fid_se"])})
    return rows


def plane_figure(recs):
    """The stability/plasticity plane: forgetting of task 1 against task-2 FID, one point per method and
    lambda, with the FID-sampling standard errors as bars (lower left is better on both)."""
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(6.2, 4.4))
    for i, ((method, lam), r) in enumerate((k, r) for k, r in recs.items() if k[0] is not None):
        v = r.values
        lab = method + (f", λ = {v['lam']:g}" if v["lam"] is not None else "")
        ax.errorbar(v["task2_fid"], v["forgetting"], xerr=v["task2_fid_se"] or 0, yerr=v["forgetting_se"] or 0,
                    fmt="o", color=f"C{i}", capsize=3, label=lab)
    ax.axhline(0, color="0.6", lw=0.8)
    ax.set(xlabel="task-2 FID after task 2 (plasticity; lower is better)",
           ylabel="forgetting of task 1: FID after task 2 − after task 1")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def collect(cfg, dataset, seed=0) -> dict:
    """What a chapter shows: at a cli_only tier the stored runs (never computed on a page), elsewhere task 1
    and the DECISIVE runs computed here."""
    if cfg.get("cli_only"):
        return stored_runs(cfg, dataset, seed)
    out = {(None, None): learned_task1(cfg, dataset, seed, progress=False)}
    for method, lam in DECISIVE:
        c = Config(cfg, lam=lam) if lam is not None else cfg
        out[(method, lam)] = learned_task1(c, dataset, seed, method, progress=False)
    return out


def task1_learned(t1) -> dict:
    """Task 1 learned? The stored task-1 record's last point against LEARNED x the joint model's FID."""
    v = t1.values
    fid = float(np.mean(v["curve"][-1]["fid"]))
    return {"holds": bool(v["learned"]),
            "text": f"task 1 after {v['steps']:,} steps: FID {fid:.1f} vs the joint model's {v['joint_fid_task1']:.1f} "
                    f"on task 1 ({fid / v['joint_fid_task1']:.1f}x; learned means <= {LEARNED}x): "
                    f"{'met' if v['learned'] else 'not met'}"}


def curve_table(t1) -> list:
    """Task 1's FID at each evaluated length (mean +- se over the FID sampling seeds) against the threshold."""
    v = t1.values
    out = []
    for p in v["curve"]:
        f = np.array(p["fid"])
        se = f.std(ddof=1) / np.sqrt(len(f)) if len(f) > 1 else np.nan
        out.append({"steps": p["step"], "task 1 FID": f"{f.mean():.1f} ± {se:.1f}",
                    f"{LEARNED} x joint": f"{LEARNED * v['joint_fid_task1']:.1f}",
                    "learned": bool(f.mean() <= LEARNED * v["joint_fid_task1"])})
    return out
