"""Class-incremental continual learning loop for every method (paper sec. 4, app. E).

Methods: joint (non-continual upper bound: one model trained from scratch on ALL tasks at once,
epochs over the union), finetune (lambda = 0, Table 6), diag and rank1 (EWC without distillation),
gd (generative distillation only), diag-gd, rank1-gd (ours) and rankk-gd (app. E.4.1).

Every task starts a fresh Adam. After task k the loop writes, under
ckpt_root()/continual/<profile>/<dataset>-s<seed>-<config hash>/<lineage>/task<k>/:
  ckpt/ (train.train's exact-resume checkpoint), train.json, eval-<tag>.json (FID and KID; eval-<tag>.part.json
  holds the tasks already scored while it is computed), samples-<tag>.pt,
  stats-<kind>.pt (mu and c*, diagonal Fisher or rank-k pairs) and pool-<settings>.pt (replay pool;
  pool-<settings>.part.pt keeps its finished DDIM batches while it is generated, and at a campaign
  deadline the state of the batch in progress).
Task 1 is identical for every continual method (no penalty, no replay yet), so it lives in the
shared lineage `shared`. A rerun loads what exists and computes only what is missing, so an
interrupted run resumed later ends with the same numbers as an uninterrupted one (on CPU).
"""
import json
import time
from pathlib import Path

import numpy as np
import torch
from filelock import FileLock
from tqdm.auto import tqdm

from . import data, distributed, fid, fisher, replay, seeds, store
from .curvature import Rank1EWC, TaskStats, make_penalty
from .diffusion import ddim_sample
from .models import build_unet, n_params
from .profiles import Config
from .train import amp_on, ckpt_root, pick_device, state_root, steps_for, train

METHODS = ("joint", "finetune", "diag", "rank1", "gd", "diag-gd", "rank1-gd", "rankk-gd")
TABLE1 = ("joint", "diag", "rank1", "gd", "diag-gd", "rank1-gd")
# method -> (penalty kind, generative distillation)
RECIPES = {"finetune": (None, False), "diag": ("diag", False), "rank1": ("rank1", False),
           "gd": (None, True), "diag-gd": ("diag", True), "rank1-gd": ("rank1", True),
           "rankk-gd": ("rankk", True)}
TRAIN_KEYS = ("model", "epochs", "max_steps", "train_per_class", "batch_size", "lr", "amp", "compile",
              "cl_amp", "cl_compile")
METHOD_KEYS = ("lam", "replay_per_class", "ddim_steps", "mu_samples", "rank_k", "power_iters")
EVAL_KEYS = ("ddim_steps", "fid_per_class", "fid_extractor", "sample_batch")  # noise is drawn per batch


def check_method(method):
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; valid: {', '.join(METHODS)}")
    return method


def run_config(cfg, dataset, method, seed):
    """The part of the profile a run depends on (hashed into stored results and checkpoint paths)."""
    keys = TRAIN_KEYS + METHOD_KEYS + EVAL_KEYS
    return {k: cfg[k] for k in keys} | {"dataset": dataset, "method": method, "seed": seed}


def run_root(cfg, dataset, seed):
    """Checkpoint root of one (profile, dataset, seed); hashed on the training keys only. A profile with
    state_in_store keeps it in the committed store (a tier continued on another machine)."""
    conf = {k: cfg[k] for k in TRAIN_KEYS} | {"dataset": dataset, "seed": seed}
    base = state_root(cfg) / "continual" if cfg.get("state_in_store") else ckpt_root() / "continual" / cfg.name
    return base / f"{dataset}-s{seed}-{store.config_hash(conf)}"


def prune(cfg, dataset, method, seed):
    """Remove the state of a finished run's own tasks 2..T (and of a joint run) once its result is
    stored, so that committed state stays small; task 1 (lineage 'shared') stays for the other methods."""
    import shutil
    root = run_root(cfg, dataset, seed)
    dirs = [root / "joint"] if method == "joint" else [root / lineage(cfg, method, 1)]
    for d in dirs if distributed.is_main() else ():
        if d.exists():
            with FileLock(str(d) + ".lock"):
                shutil.rmtree(d)
            Path(str(d) + ".lock").unlink(missing_ok=True)


def task_dirs(cfg, dataset, method, seed):
    """The run's checkpoint directory per task, in order (one for joint: all tasks at once)."""
    root = run_root(cfg, dataset, seed)
    if method == "joint":
        return [root / "joint"]
    return [root / lineage(cfg, method, k) / f"task{k + 1}" for k in range(len(data.task_classes(dataset)))]


def lineage(cfg, method, k):
    """Directory name of the weights after task k: 'shared' for task 1, else method + its keys."""
    if k == 0:
        return "shared"
    kind, gd = RECIPES[method]
    keys = {"lam": cfg.lam} if kind else {}
    keys |= {"mu_samples": cfg.mu_samples} if kind else {}
    keys |= {"rank_k": cfg.rank_k, "power_iters": cfg.power_iters} if kind == "rankk" else {}
    keys |= {"replay_per_class": cfg.replay_per_class, "ddim_steps": cfg.ddim_steps,
             "sample_batch": cfg.sample_batch} if gd else {}
    return f"{method}-{store.config_hash(keys)}"


def _save_pt(obj, path):
    store.atomic_write(path, lambda p: torch.save(obj, p))


def _save_json(obj, path):
    store.atomic_write(path, lambda p: Path(p).write_text(json.dumps(obj)))


def _load(path, as_json):
    """A cached JSON or torch file; tensors saved on a GPU load onto the CPU where there is none (a run
    started on a GPU machine continues on a CPU one)."""
    if as_json:
        return json.loads(path.read_text())
    return torch.load(path, map_location=None if torch.cuda.is_available() else "cpu", weights_only=False)


def _read(path, as_json):
    """(contents, True) of a readable cached file; (None, False) when it is absent or unreadable (then
    moved aside by rank 0, one line on stderr)."""
    return store.read_or_set_aside(path, lambda p: _load(p, as_json), owner=distributed.is_main())


def cached(path, compute, as_json=False):
    """Load path if present and readable, else compute(), save atomically and return it. An
    unreadable file is moved aside (one line on stderr) and recomputed. In a multi-process run all
    ranks compute when any rank lacks the file (compute() may be collective); rank 0 writes it."""
    obj, found = _read(path, as_json)
    if not distributed.any_rank(not found):
        return obj
    obj = compute()
    if distributed.is_main():
        (_save_json if as_json else _save_pt)(obj, path)
    return obj


def eval_tag(cfg):
    """File tag of FID rows and samples: the evaluation keys they depend on."""
    return store.config_hash({k: cfg[k] for k in EVAL_KEYS})


def cl_steps(cfg, n_images):
    """Optimiser steps per task (the profile's epochs over the task's images, capped by max_steps)."""
    return steps_for(cfg, n_images)


class Evaluator:
    """FID and KID of a model on tasks 1..k: reference = the task's test images (capped at fid_per_class
    per class), generated = as many images with the same labels (DDIM, fixed seed per task)."""

    def __init__(self, cfg, ds, device):
        self.cfg, self.ds, self.device = cfg, ds, device
        self.tasks = data.task_classes(ds.name)
        self._metric, self._refs = None, {}

    def reference(self, i):
        """Test images and labels of task i used for its FID."""
        per = self.cfg.fid_per_class or None
        return data.task_data(self.ds, i, "test", per_class=per)

    @property
    def metric(self):
        if self._metric is None:
            self._metric = fid.make_metric(self.cfg.fid_extractor, self.ds.channels, self.device)
        return self._metric

    def _features(self, x, label):
        """Feature-network features (N, d) float64 of uint8 images, cached under ckpt_root()/fid_cache."""
        import hashlib
        h = hashlib.sha1(x.numpy().tobytes()).hexdigest()[:10]
        f = ckpt_root() / "fid_cache" / self.cfg.fid_extractor / f"{self.ds.name}-{label}-n{len(x)}-{h}-feats.pt"
        return cached(f, lambda: fid.features(self.metric, x))

    def ref_features(self, i):
        """(features, mu, sigma) of task i's reference images, computed once per evaluator."""
        if i not in self._refs:
            ref = self._features(self.reference(i)[0], f"task{i}-test")
            self._refs[i] = (ref, *fid.stats(ref))
        return self._refs[i]

    def scores(self, i, feats):
        """(FID, KID) of features `feats` against task i's reference."""
        ref, mu, sigma = self.ref_features(i)
        return fid.frechet_distance(mu, sigma, feats2=feats), fid.kid(ref, feats)

    def row(self, model, k, partial=None, seed=seeds.FID_SAMPLING, progress=False, desc="FID"):
        """{"fid": [FID_i(m_k)], "kid": [KID_i(m_k)]} for tasks i = 0..k. Each task's images have their own
        seed, so with `partial` (a JSON path) every finished task is saved at once and a rerun after an
        interruption computes only the missing tasks, with the same numbers; the file goes when the row is done.
        progress: a bar over the tasks (sampling and features of one task per tick)."""
        done = (_read(partial, True)[0] or {}) if partial is not None else {}
        for i in tqdm(range(k + 1), desc=desc, unit="task", disable=not progress, leave=False):
            if str(i) in done:
                continue
            y = self.reference(i)[1]
            im = ddim_sample(model, y, steps=self.cfg.ddim_steps, seed=seed + i, batch_size=self.cfg.sample_batch,
                             progress=False, amp=amp_on(self.cfg.amp, self.device))
            done[str(i)] = self.scores(i, fid.features(self.metric, im))
            if partial is not None and distributed.is_main():
                _save_json(done, partial)
        return {"fid": [done[str(i)][0] for i in range(k + 1)], "kid": [done[str(i)][1] for i in range(k + 1)]}

    def floor(self, i):
        """(FID, KID) of task i's reference against as many real training images of the same classes (the
        first ones, the same count per class): what a generator that copied the data distribution would get."""
        y = self.reference(i)[1]
        per = int(torch.bincount(y).max())
        x, _ = data.task_data(self.ds, i, "train", per_class=per)
        if len(x) != len(y):
            raise ValueError(f"task {i + 1}: {len(x)} training images for a floor over {len(y)} test images")
        return self.scores(i, self._features(x, f"task{i}-train"))


def sample_classes(dataset):
    """Fixed classes shown in Figure 5: the first class of every task."""
    return [c[0] for c in data.task_classes(dataset)]


def samples(model, dataset, cfg, per_class=2):
    """Fixed-seed samples (n_classes, per_class, C, 32, 32) of the Figure-5 classes."""
    cls = torch.tensor(sample_classes(dataset)).repeat_interleave(per_class)
    x = ddim_sample(model, cls, steps=cfg.ddim_steps, seed=20_000, progress=False)
    return x.reshape(-1, per_class, *x.shape[1:])


def kind_statistics(kind, model, x, y, cfg, seed):
    """Statistics of the just-finished task from its real training data (sec. 3.3, app. E.4.1), all three
    kinds through the public API of rank1lib.curvature."""
    if kind == "rank1":
        mu, c_star = fisher.mu_c_star(model, x, y, cfg.mu_samples, seed)
        return {"mu": mu, "c_star": c_star}
    if kind == "diag":
        return {"F": fisher.diag_fisher_api(model, x, y, cfg.mu_samples, seed)}
    V, s = fisher.rank_k_pairs(model, x, y, cfg.rank_k, cfg.power_iters, cfg.mu_samples, seed)
    return {"V": V, "s": s}


def method_penalty(kind, lam):
    """The penalty of a method's statistics kind: Rank1EWC (the public API) for rank-1, else
    curvature.make_penalty (diagonal, rank-k)."""
    return Rank1EWC(lam) if kind == "rank1" else make_penalty(kind, lam)


def add_to_penalty(pen, kind, model, st):
    if kind == "rank1":  # theta*_k = the weights the task ended with
        params = [p for p in model.parameters() if p.requires_grad]
        pen.add_task(model, TaskStats(
            mu=torch.as_tensor(st["mu"]), c_star=float(st["c_star"]),
            theta_star=torch.cat([p.detach().reshape(-1).float().cpu() for p in params]),
            names=fisher.param_names(model), shapes=[list(p.shape) for p in params], n_samples=0))
    elif kind == "diag":
        pen.add_task(model, st["F"])
    else:
        pen.add_task(model, st["V"], st["s"])


def combine(pen, distill):
    """extra_loss for train.train: EWC penalty + distillation term (either may be absent)."""
    if (pen is None or pen.n_tasks == 0) and distill is None:
        return None

    def extra(model, step):
        out = 0.0
        if pen is not None and pen.n_tasks:
            out = out + pen(model)
        if distill is not None:
            out = out + distill(model, step)
        return out
    return extra


def step_settings(cfg):
    """The profile as a continual run's trainer sees it: amp/compile are the cl_amp/cl_compile switches
    (sampling, the statistics and the Fisher analysis keep amp/compile)."""
    return Config(cfg, amp=cfg.cl_amp, compile=cfg.cl_compile)


def train_task(net, x, y, cfg, d, seed, k, extra, desc, stop_after, device, progress):
    """Train (or resume, or load) task k into d/ckpt; returns train.json's content or None if stopped."""
    from diffusers.utils import logging as dlog
    steps = cl_steps(cfg, len(x))
    info_file = d / "train.json"
    t0 = time.time()
    level = dlog.get_verbosity()
    dlog.set_verbosity_error()  # from_pretrained's note about `accelerate` on every checkpoint load
    try:
        out = train(net, x, y, step_settings(cfg), steps=steps, seed=seeds.task(seed, k), ckpt_dir=d / "ckpt",
                    extra_loss=extra, desc=desc, stop_after=stop_after, progress=progress, device=device,
                    final_opt=False)  # the next task starts a fresh Adam: a finished task keeps no Adam state
    finally:
        dlog.set_verbosity(level)
    if out.get("interrupted"):
        return None
    # optimiser time summed over every call (kept in the checkpoint), in total and by device
    train_s = {"train_seconds": out.get("train_seconds"), "train_seconds_by_device": out.get("train_seconds_by_device")}
    saved, found = _read(info_file, True)
    if found:
        return {**saved, **train_s}
    tail = out["losses"][-max(1, steps // 5):]
    info = {"steps": steps, "seconds": time.time() - t0, **train_s, "n_train": len(x),
            "final_loss": float(np.mean(tail)) if tail else None}
    if distributed.is_main():
        _save_json(info, info_file)
    return info


def run(cfg, dataset, method, seed=0, progress=True, stop_at=None, device=None):
    """One continual-learning run; returns (values, arrays) or None if stopped by stop_at=(task, steps)."""
    check_method(method)
    device = pick_device(device)
    ds = data.load_images(dataset)
    spec = data.SPECS[dataset]
    tasks = data.task_classes(dataset)
    T, per = len(tasks), cfg.train_per_class or None
    root = run_root(cfg, dataset, seed)
    dirs = task_dirs(cfg, dataset, method, seed)
    ev = Evaluator(cfg, ds, device)
    torch.manual_seed(seed)
    net = build_unet(cfg.model, spec.num_classes, spec.channels).to(device)
    M, K = np.full((T, T), np.nan), np.full((T, T), np.nan)
    n_fid = [len(ev.reference(i)[0]) for i in range(T)]
    info, shots = [], []
    if method == "joint":
        x, y = data.task_data(ds, 0, "train", per_class=per, classes=sorted(c for t in tasks for c in t))
        d = dirs[0]
        stop = stop_at[1] if stop_at else None
        d.mkdir(parents=True, exist_ok=True)
        with distributed.run_lock(str(d) + ".lock"):
            inf = train_task(net, x, y, cfg, d, seed, 99, None, f"joint ({T} tasks at once)", stop, device, progress)
            if inf is None:
                return None
            ev_row = evaluate(ev, net, T - 1, d, cfg, progress)
            M[-1], K[-1] = ev_row["fid"], ev_row["kid"]
            info.append(inf)
            shots.append(cached(d / f"samples-{eval_tag(cfg)}.pt", lambda: samples(net, dataset, cfg)))
        return summarise(cfg, dataset, method, seed, (M, K, floors(ev, root, T)), info, shots, net, n_fid)
    kind, gd = RECIPES[method]
    pen = method_penalty(kind, cfg.lam) if kind else None
    distill = None
    for k in tqdm(range(T), desc=f"{method} on {dataset} (seed {seed})", disable=not progress, leave=False):
        d = dirs[k]
        d.mkdir(parents=True, exist_ok=True)
        with distributed.run_lock(str(d) + ".lock"):  # concurrent methods share task 1 (lineage 'shared')
            x, y = data.task_data(ds, k, "train", per_class=per)
            stop = stop_at[1] if stop_at and stop_at[0] == k else None
            inf = train_task(net, x, y, cfg, d, seed, k, combine(pen, distill),
                             f"{method} task {k + 1}/{T}", stop, device, progress)
            if inf is None:
                return None
            info.append(inf)
            ev_row = evaluate(ev, net, k, d, cfg, progress)
            M[k, :k + 1], K[k, :k + 1] = ev_row["fid"], ev_row["kid"]
            shots.append(cached(d / f"samples-{eval_tag(cfg)}.pt", lambda: samples(net, dataset, cfg)))
            if k == T - 1:
                break
            if kind:
                st = cached(d / f"stats-{stat_name(cfg, kind)}.pt",
                            lambda: kind_statistics(kind, net, x, y, cfg, seeds.task(seed, k)))
                add_to_penalty(pen, kind, net, st)
            if gd:
                classes = [c for t in tasks[:k + 1] for c in t]
                name = f"pool-{cfg.replay_per_class}-{cfg.ddim_steps}-b{cfg.sample_batch}"
                part = d / f"{name}.part.pt"
                pool = cached(d / f"{name}.pt",
                              lambda: replay.make_pool(net, classes, cfg.replay_per_class, cfg.ddim_steps,
                                                       seeds.task(seed, k), cfg.sample_batch,
                                                       amp_on(cfg.amp, device), progress, part))
                replay.rank_file(part).unlink(missing_ok=True)
                distill = replay.Distillation(replay.frozen_copy(net), pool[0], pool[1], cfg.batch_size)
    return summarise(cfg, dataset, method, seed, (M, K, floors(ev, root, T)), info, shots, net, n_fid)


def evaluate(ev, net, k, d, cfg, progress=False):
    """The cached evaluation row of the model after task k (resumable per task through a .part file)."""
    f = d / f"eval-{eval_tag(cfg)}.json"
    part = d / f"eval-{eval_tag(cfg)}.part.json"
    row = cached(f, lambda: ev.row(net, k, part, progress=progress, desc=f"FID after task {k + 1}"), as_json=True)
    if distributed.is_main():
        part.unlink(missing_ok=True)
    return row


def stat_name(cfg, kind):
    """File tag of a statistic: its kind and the keys it depends on."""
    extra = f"-k{cfg.rank_k}-it{cfg.power_iters}" if kind == "rankk" else ""
    return f"{kind}-n{cfg.mu_samples}{extra}"


def floors(ev, root, T):
    """{"fid": [...], "kid": [...]}: the real-vs-real floor of every task (cached beside the run's tasks)."""
    def compute():
        fl = [ev.floor(i) for i in range(T)]
        return {"fid": [f for f, _ in fl], "kid": [k for _, k in fl]}
    return cached(root / f"floor-{eval_tag(ev.cfg)}.json", compute, as_json=True)


def _total(seconds):
    """Sum of the tasks' optimiser seconds, None when a task's is unknown."""
    return None if any(v is None for v in seconds) else float(sum(seconds))


def summarise(cfg, dataset, method, seed, scores, info, shots, net, n_fid):
    """Values and arrays stored for one run: FID and KID matrices, A-FID@k, forgetting (from FID and from
    KID), the real-vs-real floors, timings, samples."""
    M, K, floor = scores
    joint = method == "joint"

    def average(X):
        return fid.a_fid_at_k(X) if not joint else np.r_[np.full(len(X) - 1, np.nan), np.nanmean(X[-1])]
    afk, akk = average(M), average(K)
    nan = lambda v: None if v is None or not np.isfinite(v) else float(v)  # noqa: E731
    values = {"dataset": dataset, "method": method, "seed": seed, "fid": [[nan(v) for v in r] for r in M],
              "a_fid_at_k": [nan(v) for v in afk], "a_fid": nan(afk[-1]),
              "forgetting": None if joint else nan(fid.forgetting(M)),
              "kid": [[nan(v) for v in r] for r in K], "a_kid_at_k": [nan(v) for v in akk], "a_kid": nan(akk[-1]),
              "forgetting_kid": None if joint else nan(fid.forgetting(K)),
              "fid_floor": floor["fid"], "kid_floor": floor["kid"],
              "extractor": cfg.fid_extractor, "extractor_label": fid.LABELS[cfg.fid_extractor],
              "fid_images_per_task": n_fid,
              "task_steps": [i["steps"] for i in info], "task_seconds": [i["seconds"] for i in info],
              "task_train_seconds": [i.get("train_seconds") for i in info],
              "task_train_seconds_by_device": [i.get("train_seconds_by_device") for i in info],
              "train_seconds": _total([i.get("train_seconds") for i in info]),
              "final_losses": [i["final_loss"] for i in info], "params": n_params(net),
              "sample_classes": sample_classes(dataset)}
    arrays = {"fid": M, "kid": K, "samples": torch.stack(shots).numpy()}
    return values, arrays
