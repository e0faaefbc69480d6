"""Continual-learning experiments (`python -m rank1lib run continual`) and the tables and figures of
chapters 5 and 6 (paper Table 1, Figure 4, Figure 5, Tables 3, 5, 6, appendix E.5)."""
import os

import numpy as np
import pandas as pd

from . import continual, estimates, paper, seeds, store
from .continual import TABLE1
from .profiles import set_args
from .registry import experiment
from .train import UNRECORDED, pick_device

NAMES = {"joint": "Non-continual", "finetune": "Fine-tune (lambda = 0)", "diag": "Diag w/o GD",
         "rank1": "Rank-1 w/o GD", "gd": "GD", "diag-gd": "Diag + GD", "rank1-gd": "Rank-1 + GD (paper's method)",
         "rankk-gd": "Rank-k + GD (power iteration)"}
COLORS = {"joint": "black", "finetune": "tab:gray", "diag": "tab:orange", "rank1": "tab:cyan", "gd": "tab:green",
          "diag-gd": "tab:red", "rank1-gd": "tab:blue", "rankk-gd": "tab:purple"}
PAPER_DATASET = {"mnist": "MNIST", "mnist-5k": "MNIST", "fmnist": "FMNIST", "cifar10": "CIFAR-10",
                 "imagenet32": "ImageNet-1k"}
# The paper's tables as printed (rank1lib/paper_numbers.yaml)
PAPER_T1, PAPER_T3, PAPER_T5, PAPER_T6 = paper.TABLE1, paper.TABLE3, paper.TABLE5, paper.TABLE6


def dataset_cfg(cfg, dataset):
    """The profile for continual runs on `dataset`. The tier's further continual-learning datasets (its
    cl_datasets after the first) use class-balanced subsets of cl_other_train_per_class training and
    cl_other_fid_per_class test images per class where those are set and the profile says 0 (= all):
    at the cpu tier Fashion-MNIST with 400 and 100, mnist-5k's sizes."""
    from .profiles import Config
    if dataset in cfg.cl_datasets[1:]:
        over = {"train_per_class": cfg.cl_other_train_per_class, "fid_per_class": cfg.cl_other_fid_per_class}
        over = {k: v for k, v in over.items() if v and cfg[k] == 0}
        return Config(cfg, **over) if over else cfg
    return cfg


def tier_datasets(cfg):
    """Datasets a profile's continual chapters show: its cl_datasets, else the profile's own dataset."""
    return list(cfg.cl_datasets) or [cfg.dataset]


def cl_item(dataset, seed, method, lam=None) -> str:
    """Campaign item name of one continual-learning run (lam: a lambda-sweep point, else None)."""
    return f"cl-{dataset}-s{seed}-{method}" + (f"-lam{lam:g}" if lam is not None else "")


def tier_seeds(cfg, dataset):
    """Seeds the profile runs on `dataset`: the first cl_other_seeds of them on the tier's further
    continual-learning datasets where that is set (the cpu tier: Fashion-MNIST on seed 0 only), else all."""
    if dataset in cfg.cl_datasets[1:] and cfg.cl_other_seeds:
        return list(cfg.seeds[:cfg.cl_other_seeds])
    return list(cfg.seeds)


def partial_note(cfg, dataset, part, later=None):
    """The line over a partial Table 1 (seed 0 of some methods): what is stored, what is still pending;
    `later` ({seed: methods stored}, as from `stored_later`) counts the methods of the other seeds."""
    seeds = tier_seeds(cfg, dataset)
    missing = [NAMES[m] for m in TABLE1 if m not in part]
    told = [f"{len(part)} of {len(TABLE1)} methods stored"] + [f"pending: {', '.join(missing)}"] * bool(missing)
    if later is None:
        told += [f"seeds {', '.join(map(str, seeds[1:]))} pending"] * (len(seeds) > 1)
    else:
        told += [f"seed {s}: {len(later.get(s, ()))} of {len(TABLE1)} methods stored" for s in seeds[1:]]
    return (f"**{dataset}, partial** (profile `{cfg.name}`, seed {seeds[0]} only): {'; '.join(told)}. "
            "The verdicts below use the seeds stored for every method they compare.")


def result_name(cfg, dataset, method, seed):
    """Stored name of a run; penalty methods carry lambda, so a lambda-sweep point and the Table-1 run
    at the same lambda are one result."""
    lam = f"-lam{cfg.lam:g}" if continual.RECIPES.get(method, (None,))[0] else ""
    return f"{dataset}-{method}-s{seed}{lam}"


def continual_progress(cfg, dataset=None, seed=0, method=None):
    """Where one run stands (its committed task folders): each task's steps still to run (a distillation
    step counts estimates.GD_COST plain ones), the FID images of the evaluations not yet stored and the
    replay pools not yet sampled."""
    from .continual import RECIPES, eval_tag, task_dirs
    from .data import task_classes
    from .train import checkpoint_info
    ds = dataset or cfg.dataset
    dcfg, T = dataset_cfg(cfg, ds), len(task_classes(ds))
    dirs = task_dirs(dcfg, ds, method, seed)
    n = estimates.task_steps(dcfg, ds, T if method == "joint" else 1)
    gd = method != "joint" and RECIPES[method][1]
    done = [min((checkpoint_info(d / "ckpt") or (0, 0.0))[0], n) for d in dirs]
    left = sum((n - s) * (estimates.GD_COST if gd and k else 1.0) for k, s in enumerate(done))
    fid = estimates.fid_images(dcfg, ds)
    images = sum(fid * (T if method == "joint" else k + 1) for k, d in enumerate(dirs)
                 if not (d / f"eval-{eval_tag(dcfg)}.json").exists())
    images += sum(dcfg.replay_per_class * 2 * (k + 1) for k, d in enumerate(dirs[:-1])
                  if gd and not any(d.glob("pool-*.pt")))
    return estimates.progress(sum(done), n * len(dirs),
                              left * estimates.sec_per_step(dcfg.model) + images * estimates.SEC_PER_IMAGE_1T)


def continual_leftovers(cfg, dataset=None, seed=0, method=None):
    """The run folder of one (dataset, seed), shared by all methods: once every method is done it keeps task
    1's weights (a new method starts from them) and its JSON records, and loses the replay pools, samples
    and task statistics (recomputed on demand)."""
    ds = dataset or cfg.dataset
    r = continual.run_root(dataset_cfg(cfg, ds), ds, seed)
    files = sorted(r.rglob("*.pt")) if r.exists() else []
    return r, [(f, "task statistics and replay") for f in files if f.name.startswith(("stats-", "pool-", "samples-"))]


@experiment("continual", "class-incremental run of one --method (all Table-1 methods without it)",
            progress=continual_progress, leftovers=continual_leftovers)
def continual_run(cfg, dataset=None, seed=0, method=None, progress=True):
    """Continual learning over the dataset's tasks; stores FID matrix, A-FID@k, forgetting, samples."""
    name = dataset or cfg.dataset
    cfg = dataset_cfg(cfg, name)
    if method is None:
        return [continual_run(cfg, name, seed, m, progress) for m in TABLE1]
    continual.check_method(method)
    progress = progress and not os.environ.get("TQDM_DISABLE")  # rendered pages get no progress bars
    conf = continual.run_config(cfg, name, method, seed)
    device = pick_device()

    computed = []

    def compute():
        values, arrays = continual.run(cfg, name, method, seed, progress=progress, device=device)
        computed.append(True)
        return values, arrays, str(device)

    rec = store.load_or_compute(
        cfg.name, "continual", result_name(cfg, name, method, seed), conf, compute, **store.policy(cfg),
        command=f"python -m rank1lib run continual --profile {cfg.name} --dataset {name} --method {method} "
                f"--seed {seed}{set_args(cfg)}")
    if computed and cfg.get("state_in_store"):  # stored now: its committed training state is not needed
        continual.prune(cfg, name, method, seed)
    return rec


RESIZES = {"bilinear": "inception", "tf": "inception-tf"}  # resize -> FID extractor


@experiment("fid_resize", "FID floors and one generated set under both resizes to 299 (bilinear vs TF1)")
def fid_resize(cfg, dataset=None, seed=0, progress=True):
    """The real-vs-real floor of every task of each continual-learning dataset, and the FID of task 1's
    model on task 1 (seed 0's shared task 1), with the Inception input resized by torch's bilinear
    interpolation (the book's FIDs) and by TensorFlow 1's (what the weights were made for)."""
    from . import data, fid
    from .diffusion import ddim_sample
    from .profiles import Config
    from .train import amp_on
    datasets = tier_datasets(cfg)
    conf = {"datasets": datasets, "seed": seed} | {k: cfg[k] for k in continual.EVAL_KEYS if k != "fid_extractor"}
    device = pick_device()

    def compute():
        out = {"datasets": datasets}
        for ds in datasets:
            dcfg, d = dataset_cfg(cfg, ds), data.load_images(ds)
            evs = {r: continual.Evaluator(Config(dcfg, fid_extractor=ex), d, device) for r, ex in RESIZES.items()}
            row = {f"floor_{r}": [ev.floor(i)[0] for i in range(len(ev.tasks))] for r, ev in evs.items()}
            task1 = continual.task_dirs(dcfg, ds, "finetune", seed)[0] / "ckpt" / "last"
            if ds == datasets[0] and task1.exists():  # the same images as the 5-task runs' task-1 row
                from diffusers import UNet2DModel
                net = UNet2DModel.from_pretrained(task1).to(device).eval()
                im = ddim_sample(net, evs["bilinear"].reference(0)[1], steps=dcfg.ddim_steps, seed=seeds.FID_SAMPLING,
                                 batch_size=dcfg.sample_batch, progress=progress, amp=amp_on(dcfg.amp, device))
                for r, ev in evs.items():
                    row[f"task1_model_{r}"] = ev.scores(0, fid.features(ev.metric, im))[0]
            out[ds] = row
        return out, None, str(device)

    return store.load_or_compute(cfg.name, "fid_resize", f"s{seed}", conf, compute, **store.policy(cfg),
                                 command=f"python -m rank1lib run fid_resize --profile {cfg.name} --seed {seed}"
                                         f"{set_args(cfg)}")


def resize_table(rec) -> pd.DataFrame:
    """One row per dataset and quantity: FID with torch's bilinear resize, with TF1's, and the offset."""
    rows = []
    for ds in rec.values["datasets"]:
        r = rec.values[ds]
        for i, (a, b) in enumerate(zip(r["floor_bilinear"], r["floor_tf"])):
            rows.append({"dataset": ds, "FID of": f"real vs real, task {i + 1}", "bilinear": a, "TF1": b, "TF1 - bilinear": b - a})
        if "task1_model_bilinear" in r:
            a, b = r["task1_model_bilinear"], r["task1_model_tf"]
            rows.append({"dataset": ds, "FID of": "task-1 model on task 1", "bilinear": a, "TF1": b, "TF1 - bilinear": b - a})
    return pd.DataFrame(rows).set_index(["dataset", "FID of"])


def collect(cfg, dataset, methods, seeds=None, progress=True):
    """{method: [record per seed]} (computed or loaded from the store)."""
    return {m: [continual_run(cfg, dataset, s, m, progress) for s in (seeds or cfg.seeds)] for m in methods}


def mean_se(vals):
    """Mean and standard error over seeds (se None for one seed); None values are dropped."""
    v = np.array([x for x in vals if x is not None], dtype=float)
    if len(v) == 0:
        return None, None
    return float(v.mean()), (float(v.std(ddof=1) / np.sqrt(len(v))) if len(v) > 1 else None)


def fmt(m, se=None, digits=1):
    if m is None:
        return "—"
    return f"{m:.{digits}f}" + (f" ± {se:.{digits}f}" if se is not None else "")


def metric(recs, key):
    return mean_se([r.values[key] for r in recs])


def table1(recs, dataset):
    """Table 1: our A-FID and forgetting (mean ± se over seeds) beside the paper's."""
    paper = PAPER_T1.get(PAPER_DATASET[dataset], {})
    rows = []
    for m, rs in recs.items():
        p = paper.get(m, (None,) * 4)
        row = {"method": NAMES[m], "A-FID (ours)": fmt(*metric(rs, "a_fid")),
               "A-FID (paper)": fmt(p[0], p[1]), "forgetting (ours)": fmt(*metric(rs, "forgetting")),
               "forgetting (paper)": fmt(p[2], p[3])}
        if all("a_kid" in r.values for r in rs):  # results stored before KID was added have none
            k, ks = metric(rs, "a_kid")
            fk, fks = metric(rs, "forgetting_kid")
            row |= {"A-KID ×10³ (ours)": fmt(1e3 * k, ks and 1e3 * ks, 2),
                    "KID forgetting ×10³ (ours)": fmt(fk and 1e3 * fk, fks and 1e3 * fks, 2)}
        rows.append(row)
    if any("fid_floor" in r.values for rs in recs.values() for r in rs):
        r0 = next(r for rs in recs.values() for r in rs if "fid_floor" in r.values)
        rows.append({"method": "floor: held-out real images", "A-FID (ours)": fmt(float(np.mean(r0.values["fid_floor"]))),
                     "A-KID ×10³ (ours)": fmt(1e3 * float(np.mean(r0.values["kid_floor"])), None, 2)})
    return pd.DataFrame(rows).set_index("method").fillna("—")  # the floor has no paper or forgetting value


def afid_curves(recs):
    """{method: (k = 1..T, mean A-FID@k, se)} over seeds (Figure 4)."""
    out = {}
    for m, rs in recs.items():
        A = np.array([[np.nan if v is None else v for v in r.values["a_fid_at_k"]] for r in rs])
        se = A.std(0, ddof=1) / np.sqrt(len(A)) if len(A) > 1 else np.zeros(A.shape[1])
        out[m] = (np.arange(1, A.shape[1] + 1), A.mean(0), se)
    return out


def plot_afid(ax, recs, title):
    """Figure 4 panel: A-FID@k per method (joint: one marker at k = T)."""
    for m, (k, mean, se) in afid_curves(recs).items():
        ok = np.isfinite(mean)
        style = dict(marker="*", ms=12, ls="none") if m == "joint" else dict(marker="o")
        ax.errorbar(k[ok], mean[ok], yerr=se[ok], label=NAMES[m], capsize=3, color=COLORS[m], **style)
    ax.set(xlabel="task k", ylabel="A-FID@k", title=title, xticks=list(k))
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=3, fontsize=8, frameon=False)  # below: no curve hidden


def fid_matrix(recs):
    """Mean over seeds of FID_i(m_k), (T, T) with NaN above the diagonal."""
    return np.mean([[[np.nan if v is None else v for v in row] for row in r.values["fid"]] for r in recs], 0)


def plot_task_curves(axes, recs):
    """Appendix E.5: FID_i(m_k) against k for each task i, one line per method."""
    for m, rs in recs.items():
        if m == "joint":
            continue
        M = fid_matrix(rs)
        for i, ax in enumerate(axes):
            k = np.arange(i, len(M))
            ax.plot(k + 1, M[i:, i], marker="o", label=NAMES[m], color=COLORS[m])
    for i, ax in enumerate(axes):
        ax.set(xlabel="after task k", ylabel=f"FID on task {i + 1}", title=f"task {i + 1}",
               xticks=range(1, len(axes) + 1), xlim=(0.5, len(axes) + 0.5))
    axes[0].legend(fontsize=8)


def sample_strip(rec, cls_index):
    """(T, per, C, H, W) samples of the cls_index-th fixed class after every task (Figure 5 row)."""
    return rec.arrays["samples"][:, cls_index]


def table5(recs, dataset, k):
    """Table 5: rank-1 (mean gradient) vs rank-k (power iteration), both with GD; paper beside ours."""
    paper = PAPER_T5.get(PAPER_DATASET[dataset], {})
    rows = []
    for m, kk in (("rank1-gd", 1), ("rankk-gd", k)):
        p = paper.get(kk, (None,) * 4)
        rows.append({"method": f"GD + rank-{kk}" + (" (mean gradient, the paper's method)" if m == "rank1-gd" else
                                                    " (power iteration)"),
                     "final A-FID (ours)": fmt(*metric(recs[m], "a_fid")), "final FID (paper)": fmt(p[0], p[1]),
                     "forgetting (ours)": fmt(*metric(recs[m], "forgetting")),
                     "forgetting (paper)": fmt(p[2], p[3])})
    return pd.DataFrame(rows).set_index("method")


def table6(recs, dataset):
    """Table 6: fine-tuning with lambda = 0, ours beside the paper's."""
    p = PAPER_T6.get(PAPER_DATASET[dataset], (None, None))
    return pd.DataFrame([{"dataset": dataset, "final A-FID (ours)": fmt(*metric(recs["finetune"], "a_fid")),
                          "final FID (paper)": fmt(p[0], digits=3),
                          "forgetting (ours)": fmt(*metric(recs["finetune"], "forgetting")),
                          "forgetting (paper)": fmt(p[1], digits=3)}]).set_index("dataset")


def tables6(groups):
    """Table 6 with one row per dataset of `groups` ({dataset: {"finetune": records}})."""
    return pd.concat([table6(r, d) for d, r in groups.items()])


def optimiser_seconds(rec):
    """Optimiser seconds of a run summed over its tasks and over every call that trained them (from the
    checkpoints), or None for a record stored before these were kept (its task_seconds are the last call's
    wall time only, far too small for a task resumed in another sitting)."""
    v = rec.values
    return v["train_seconds"] if "task_train_seconds" in v else None


def device_split(rec):
    """{device name: optimiser seconds} of a run summed over its tasks (from the checkpoints; the time of a task
    resumed on another machine is split between the two), or None for a record stored before the split was kept."""
    per = rec.values.get("task_train_seconds_by_device")
    if not per or any(p is None for p in per):
        return None
    out = {}
    for split in per:
        for dev, sec in split.items():
            out[dev] = out.get(dev, 0.0) + sec
    return out


def devices_text(rs):
    """Table 3's device cell: the device of each run, with each device's share of the optimiser time
    where a run's tasks were trained on more than one (e.g. a shared task 1 trained on a lent GPU)."""
    cells = set()
    for r in rs:
        split = device_split(r)
        if not split or list(split) == [UNRECORDED]:
            cells.add(r["provenance"]["device"])
        elif len(split) == 1:
            cells.update(split)
        else:
            total = sum(split.values())
            cells.add(" + ".join(f"{100 * s / total:.1f}% {d}" for d, s in  # names hold commas
                                 sorted(split.items(), key=lambda kv: -kv[1])))
    return "; ".join(sorted(cells))


def table3(recs_by_dataset, campaign_wall=None):
    """Table 3 analogue: per method (runs at the profile's lambda), optimiser hours, real training images
    per second, the campaign's wall hours (summed over sittings; `campaign_wall` {item: seconds},
    campaign.wall_by_item) and the device."""
    rows = []
    for ds, recs in recs_by_dataset.items():
        for m, rs in recs.items():
            train = [optimiser_seconds(r) for r in rs]
            known = [(t, r) for t, r in zip(train, rs) if t]
            img_s = [sum(r.values["task_steps"]) * r["config"]["batch_size"] / t for t, r in known]
            wall = [(campaign_wall or {}).get(cl_item(ds, r.values["seed"], m)) for r in rs]
            p = PAPER_T3.get((PAPER_DATASET[ds], m))
            rows.append({"dataset": ds, "method": NAMES[m], "seeds": len(rs),
                         "optimiser h (ours)": f"{np.mean([t for t, _ in known]) / 3600:.2f}" if known else "—",
                         "real img/s (ours)": f"{np.mean(img_s):.0f}" if img_s else "—",
                         "campaign wall h (ours)": (f"{np.mean([w for w in wall if w]) / 3600:.2f}"
                                                    if any(wall) else "—"),
                         "device (ours)": devices_text(rs),
                         "paper hours": "—" if p is None else f"~{p}",
                         "paper GPU": "—" if p is None else "NVIDIA L40S"})
    return pd.DataFrame(rows).set_index(["dataset", "method"])


def paper_table1():
    """The paper's Table 1 as printed (A-FID / forgetting, mean ± se over 3 seeds)."""
    rows = []
    for m in TABLE1:
        row = {"method": NAMES[m]}
        for ds, t in PAPER_T1.items():
            a, ase, f, fse = t[m]
            row[f"{ds} A-FID"], row[f"{ds} F"] = fmt(a, ase), fmt(f, fse)
        rows.append(row)
    return pd.DataFrame(rows).set_index("method")


def stored_runs(cfg, dataset, methods, seeds=None):
    """{method: [records]} of runs already in the store (nothing is computed)."""
    out = {}
    cfg = dataset_cfg(cfg, dataset)
    for m in methods:
        rs = [store.load(cfg.name, "continual", result_name(cfg, dataset, m, s), continual.run_config(cfg, dataset, m, s))
              for s in (seeds or cfg.seeds)]
        if all(r is not None for r in rs):
            out[m] = rs
    return out


def stored_later(cfg, dataset):
    """{seed: [Table-1 methods stored]} for the tier's seeds after the first (nothing is computed)."""
    return {s: list(stored_runs(cfg, dataset, TABLE1, seeds=[s])) for s in tier_seeds(cfg, dataset)[1:]}


def by_dataset(cfg, datasets, methods, main=None):
    """{dataset: {method: seed-0 records}} for each dataset with all of `methods` stored; `main` (records
    already collected for cfg.dataset, or None) stands in for the store at cfg.dataset."""
    out = {}
    for d in datasets:
        recs = main if (d == cfg.dataset and main is not None) else stored_runs(cfg, d, methods, seeds=cfg.seeds[:1])
        if set(methods) <= set(recs):
            out[d] = {m: recs[m] for m in methods}
    return out


def sample_rows(recs, cls_index, methods=("gd", "diag-gd", "rank1-gd")):
    """Figure 5: one image row per method: samples of one fixed class after tasks 1..T (seed 0)."""
    from .plots import image_grid
    rows = {}
    for m in methods:
        s = sample_strip(recs[m][0], cls_index)  # (T, per, C, H, W)
        rows[m] = image_grid(s.reshape(-1, *s.shape[2:]), nrow=s.shape[0] * s.shape[1])
    return rows


def paper_table5():
    """The paper's Table 5 as printed (final FID / forgetting, mean ± se)."""
    rows = []
    for k in range(1, 6):
        row = {"method": f"GD + rank-{k}" + (" (mean gradient)" if k == 1 else " (power iteration)")}
        for ds, t in PAPER_T5.items():
            row[f"{ds} final FID"], row[f"{ds} forgetting"] = fmt(*t[k][:2]), fmt(*t[k][2:])
        rows.append(row)
    return pd.DataFrame(rows).set_index("method")


def paper_table6():
    """The paper's Table 6 as printed (fine-tuning with lambda = 0)."""
    return pd.DataFrame([{"dataset": d, "final FID (paper)": v[0], "forgetting (paper)": v[1]}
                         for d, v in PAPER_T6.items()]).set_index("dataset")


def task1_story(recs) -> str:
    """One sentence per stored method: task 1's FID right after task 1 and after the last task (mean over
    seeds), beside the non-continual model's A-FID, so a reader sees whether task 1 was learned at all
    before the question of forgetting it arises."""
    parts = []
    for m, rs in recs.items():
        if m == "joint":
            parts.append(f"the non-continual model scores A-FID {metric(rs, 'a_fid')[0]:.1f}")
            continue
        M = fid_matrix(rs)
        if np.isfinite(M[-1, 0]):
            parts.append(f"{NAMES[m]}: task 1 FID {M[0, 0]:.1f} after task 1, {M[-1, 0]:.1f} after task {len(M)}")
    return "FID on task 1 over the run: " + "; ".join(parts) + "." if parts else ""
