"""Experiments of the Fisher chapters: Fig. 1 (Tweedie), Fig. 2-3 (spectrum), Fig. 6 (model size),
appendix C (VAE) and the 35.7M-parameter cl UNet's spectrum (beyond the paper).

Every analysis model is a class-conditional UNet trained with train.train on all classes of the
dataset (appendix D: Adam, lr 2e-4, batch 128, 200 epochs at the paper profile).
"""
import json
import math
import sys
from pathlib import Path

import numpy as np
import torch

from . import data, diffusion, distributed, estimates, fisher, seeds, store, vae
from .curvature import cosine_matrix
from .models import build_unet, n_params
from .profiles import Config, set_args
from .registry import experiment
from .train import pick_device, snapshot_steps, state_root, steps_for, train

FIG1_T = list(range(100, 1000, 100))
PAPER = {  # numbers the paper reports (sec. 3.2, app. C, app. D.1), shown beside ours
    "min_r": 0.022, "min_r_t": 700, "r_at_100_below": 0.4, "err_diag": 1.0,
    "vae_share": 0.50, "vae_beta1e-3_share": 0.85, "ddpm_late_share": 0.99,
}


def analysis_data(cfg, name):
    """All classes of the training split (first train_per_class per class when set)."""
    ds = data.load_images(name)
    spec = data.SPECS[name]
    return data.task_data(ds, 0, "train", per_class=cfg.train_per_class or None,
                          classes=list(range(spec.num_classes)))


def second_dataset_cfg(cfg, name):
    """The profile for the analysis on a second dataset: a class-balanced subset of the profile's
    `second_dataset_per_class` images per class where it is set (the cpu tier: 400, mnist-5k's training
    size, so the run has the same optimiser step count)."""
    over = {"dataset": name} | ({"train_per_class": cfg.second_dataset_per_class} if cfg.second_dataset_per_class else {})
    return Config(cfg, **over)


def train_cfg(cfg, arch):
    """The profile as the analysis training of `arch` uses it: bf16 autocast for the models in
    `analysis_amp_models` (adopted where a 500-step loss curve matches fp32 within noise: precision.amp_check),
    else `amp`. Only training steps are affected; every Fisher statistic is computed in fp32."""
    return Config(cfg, amp="on") if arch in cfg.analysis_amp_models else cfg


def analysis_dir(cfg, name, seed, arch, max_steps=None):
    """Training-state folder of one analysis run (checkpoint `last/`, `snapshots/`)."""
    cfg = train_cfg(cfg, arch)
    acfg = Config(cfg, epochs=cfg.analysis_epochs,
                  max_steps=cfg.analysis_max_steps if max_steps is None else max_steps)
    conf = {k: acfg[k] for k in ("epochs", "max_steps", "batch_size", "lr", "train_per_class", "amp")}
    return acfg, state_root(cfg) / "analysis" / f"{name}-{arch}-s{seed}-{store.config_hash(conf)}"


def _seed_from_shorter_run(ckpt, conf):
    """Start a longer run from the longest shorter run of the same settings (only `epochs` differs).

    Exact: the batch, t and noise of step s depend only on (seed, s), so training on from a 200-epoch
    checkpoint gives the same weights as an 800-epoch run from scratch; the snapshots carry over too."""
    import json
    import shutil
    if (ckpt / "last").exists():
        return
    candidates = []
    for other in ckpt.parent.glob(ckpt.name.rsplit("-", 1)[0] + "-*"):
        try:
            oc = json.loads((other / "run.json").read_text())
        except (OSError, ValueError):
            continue
        same = {k: v for k, v in oc.items() if k != "epochs"} == {k: v for k, v in conf.items() if k != "epochs"}
        if same and conf["max_steps"] == 0 and oc["epochs"] < conf["epochs"] and (other / "last").exists():
            candidates.append((oc["epochs"], other))
    if candidates:
        epochs, src = max(candidates)
        shutil.copytree(src / "last", ckpt / "last")
        if (src / "snapshots").exists():
            shutil.copytree(src / "snapshots", ckpt / "snapshots", dirs_exist_ok=True)
        print(f"continuing from the {epochs}-epoch run in {src.name}", file=sys.stderr)


def analysis_net(cfg, name, seed, arch, max_steps=None, progress=True):
    """The analysis UNet `arch` trained on `name` with the analysis budget (resumable checkpoint;
    log-spaced weight snapshots for the trajectory chapter). One process at a time per run (lock)."""
    acfg, ckpt = analysis_dir(cfg, name, seed, arch, max_steps)
    x, y = analysis_data(cfg, name)
    spec = data.SPECS[name]
    torch.manual_seed(seed)
    net = build_unet(arch, spec.num_classes, spec.channels)
    steps = steps_for(acfg, len(x))
    ckpt.parent.mkdir(parents=True, exist_ok=True)
    with distributed.run_lock(str(ckpt) + ".lock"):
        conf = {k: acfg[k] for k in ("epochs", "max_steps", "batch_size", "lr", "train_per_class", "amp")}
        if distributed.is_main():
            _seed_from_shorter_run(ckpt, conf)
            ckpt.mkdir(parents=True, exist_ok=True)
            if not (ckpt / "run.json").exists():
                store.atomic_write(ckpt / "run.json", lambda p: Path(p).write_text(json.dumps(conf)))
        distributed.barrier()
        out = train(net, x, y, acfg, steps=steps, seed=seed, ckpt_dir=ckpt,
                    desc=f"train {arch} on {name}", progress=progress, device=pick_device(),
                    snapshot_dir=ckpt / "snapshots", snapshot_at=snapshot_steps(steps))
    losses = out["losses"]
    info = {"arch": arch, "params": n_params(net), "train_steps": out["steps"], "n_train": len(x),
            "final_loss": float(np.mean(losses[-20:])) if losses else None,
            "train_seconds": out.get("train_seconds"), "threads": torch.get_num_threads(),
            "state": str(ckpt.relative_to(store.results_root())) if ckpt.is_relative_to(store.results_root())
            else ckpt.name}
    net.losses = losses
    return net.eval(), info, x, y


def thin_losses(losses, points=400):
    """Training-loss curve thinned to about `points` window means (float32), for convergence plots."""
    a = np.asarray(losses, dtype=np.float64)
    w = max(1, len(a) // points)
    means = a[:len(a) // w * w].reshape(-1, w).mean(1)
    steps = (np.arange(len(means)) + 0.5) * w
    return np.stack([steps, means], 1).astype(np.float32)


def _conf(cfg, keys, **extra):
    return {k: cfg[k] for k in keys} | extra


TRAIN_KEYS = ("analysis_epochs", "analysis_max_steps", "batch_size", "lr", "train_per_class", "amp")


def training_progress(cfg, dataset=None, seed=0, method=None):
    """Where the analysis model's training stands (its committed checkpoint), at its own measured rate
    once it has one (on this machine's device and precision where it trained there); the results computed
    after training are not counted."""
    from .train import measured_rate
    name, arch = dataset or cfg.dataset, cfg.analysis_model
    acfg, ckpt = analysis_dir(cfg, name, seed, arch)
    try:
        steps = steps_for(acfg, len(analysis_data(cfg, name)[0]))
    except (data.DataMissing, OSError):  # the item says so when it runs
        steps = 0
    step, per = measured_rate(ckpt, acfg.amp)
    return estimates.progress(step, steps, max(steps - step, 0) * (per or estimates.sec_per_step(arch)))


def training_leftovers(cfg, dataset=None, seed=0, method=None):
    """A finished analysis model keeps its final weights and loss curve (last/, without Adam) and loses its
    snapshots (their spectra are stored as trajectory results)."""
    from .train import has_optimiser
    _, d = analysis_dir(cfg, dataset or cfg.dataset, seed, cfg.analysis_model)
    out = [(d / "snapshots", "snapshots")] if (d / "snapshots").exists() else []
    return d, out + ([(d, "optimiser")] if has_optimiser(d) else [])


@experiment("tweedie", "Fig. 1: MSE between x_t and sqrt(1 - alpha_bar_t) eps_hat at t = 100..900",
            progress=training_progress)
def tweedie_mse(cfg, dataset=None, seed=0, arch=None, progress=True):
    """Fig. 1 (Proposition 1): at low SNR eps_theta is a scaled identity map, x_t ~ sqrt(1-ab) eps_hat."""
    name, arch = dataset or cfg.dataset, arch or cfg.analysis_model
    n = 4 * cfg.fisher_samples
    conf = _conf(train_cfg(cfg, arch), TRAIN_KEYS, dataset=name, arch=arch, seed=seed, n=n, t=FIG1_T)

    def compute():
        net, info, x, y = analysis_net(cfg, name, seed, arch, progress=progress)
        device = next(net.parameters()).device
        ab = diffusion.alpha_bar(device)
        mse, mse_eps, mse_xt = [], [], []
        with torch.no_grad():
            for t in FIG1_T:
                x0, yy, tt, eps = fisher.joint_samples(x, y, n, seed + t, t=t)
                x0, yy, tt, eps = diffusion.to_model_range(x0).to(device), yy.to(device), tt.to(device), eps.to(device)
                x_t = diffusion.q_sample(x0, tt, eps, ab)
                e_hat = torch.cat([diffusion.eps_theta(net, x_t[s:s + 256], tt[s:s + 256], yy[s:s + 256])
                                   for s in range(0, n, 256)])
                mse.append(float((x_t - diffusion.scaled_eps(e_hat, tt, ab)).pow(2).mean()))
                mse_eps.append(float((eps - e_hat).pow(2).mean()))
                mse_xt.append(float(x_t.pow(2).mean()))
        return info | {"t": FIG1_T, "mse": mse, "mse_eps": mse_eps, "mean_xt2": mse_xt, "n": n}, None, str(device)

    return store.load_or_compute(cfg.name, "tweedie", f"{name}-{arch}-s{seed}", conf, compute, **store.policy(cfg),
                                 command=f"python -m rank1lib run tweedie --profile {cfg.name} --dataset {name} --seed {seed}"
                                         f"{set_args(cfg)}")


def spectrum_compute(net, x, y, n_samples, timesteps, seed, progress=True, k=5):
    """Per-t Fisher statistics (Fig. 2, 3, 6) through the Gram matrix, and cosines of mu_t (Fig. 3a)."""
    rows, mus = [], []
    for t in timesteps:
        s, mu = fisher.fisher_at_t(net, x, y, n_samples, t, seeds.timestep(seed, t), k=k, chunk=32, progress=progress)
        rows.append(s)
        mus.append(mu)
    keys = ("r", "share", "fro", "trace", "err_diag", "err_rank1", "err_best_rank1", "c_star", "mu_norm")
    values = {key: [float(r[key]) for r in rows] for key in keys}
    values["lam"] = [[float(v) for v in r["lam"]] for r in rows]
    values["mu_cos"] = cosine_matrix(mus).tolist()
    values["t"] = list(timesteps)
    values["n_samples"] = n_samples
    i = int(np.argmin(values["r"]))
    values["min_r"], values["min_r_t"] = values["r"][i], values["t"][i]
    arrays = {"cos": np.stack([r["cos"] for r in rows]).astype(np.float32)}
    return values, arrays


@experiment("spectrum", "Fig. 2, 3, 6: exact empirical-Fisher spectrum per timestep via the Gram matrix",
            progress=training_progress, leftovers=training_leftovers)
def spectrum(cfg, dataset=None, seed=0, arch=None, progress=True):
    """Fig. 3 (a-d), Fig. 2 cosines, Fig. 6 for arch in small1/small3/base, and the 35.7M cl UNet."""
    name, arch = dataset or cfg.dataset, arch or cfg.analysis_model
    big = arch == "cl"
    n = cfg.cl_fisher_samples if big else cfg.fisher_samples
    ts = cfg.cl_fisher_timesteps if big else cfg.fisher_timesteps
    steps = (cfg.cl_analysis_max_steps if big else cfg.analysis_max_steps)
    conf = _conf(train_cfg(cfg, arch), TRAIN_KEYS, dataset=name, arch=arch, seed=seed, n=n, t=ts, steps=steps)

    def compute():
        net, info, x, y = analysis_net(cfg, name, seed, arch, max_steps=steps, progress=progress)
        values, arrays = spectrum_compute(net, x, y, n, ts, seed, progress)
        arrays["loss_curve"] = thin_losses(net.losses)
        return info | values, arrays, str(next(net.parameters()).device)

    return store.load_or_compute(cfg.name, "spectrum", f"{name}-{arch}-s{seed}", conf, compute, **store.policy(cfg),
                                 command=f"python -m rank1lib run spectrum --profile {cfg.name} "
                                         f"--dataset {name} --seed {seed} --set analysis_model={arch}"
                                         f"{set_args(cfg, ('dataset', 'analysis_model'))}")


def seed_spread(values, keys=("r", "err_rank1", "err_diag")) -> dict:
    """Mean and standard error of the mean over seeds (one spectrum record's values per seed) of per-t
    statistics: {'t', 'n_seeds', key: (T,), key + '_se': (T,)} (Fig. 3 with error bars)."""
    out = {"t": list(values[0]["t"]), "n_seeds": len(values)}
    for k in keys:
        a = np.array([v[k] for v in values], dtype=float)
        out[k] = a.mean(0)
        out[f"{k}_se"] = a.std(0, ddof=1) / math.sqrt(len(a)) if len(a) > 1 else np.zeros(a.shape[1])
    return out


@experiment("vae", "App. C: share of the top Fisher eigenvalue, VAE (beta = 1, 1e-3) vs DDPM")
def vae_share(cfg, dataset=None, seed=0, progress=True):
    """App. C: lambda1 / sum(lambda) for an MSE+KL VAE (squared error summed over pixels), the same with KL x 1e-3."""
    return _vae(cfg, dataset, seed, progress, "sum")


@experiment("vae_mean", "App. C with the squared error averaged over pixels (KL 1024x stronger than summed)")
def vae_share_mean(cfg, dataset=None, seed=0, progress=True):
    """App. C's VAE with a per-pixel-mean squared error, beta = 1 and 1e-3 (the other reading of MSE + KL)."""
    return _vae(cfg, dataset, seed, progress, "mean")


def _vae(cfg, dataset, seed, progress, reduction):
    name = dataset or cfg.dataset
    n = cfg.fisher_samples
    steps = cfg.analysis_max_steps or cfg.analysis_epochs * math.ceil(len(analysis_data(cfg, name)[0]) / 64)
    conf = _conf(cfg, ("train_per_class",), dataset=name, seed=seed, n=n, steps=steps, batch=64, lr=1e-3)
    conf |= {"reduction": reduction} if reduction != "sum" else {}  # the summed form keeps its stored config
    experiment = "vae" if reduction == "sum" else "vae_mean"

    def compute():
        x, _ = analysis_data(cfg, name)
        pick = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))[:n]
        values = {"steps": steps, "n_samples": n, "reduction": reduction}
        for beta in (1.0, 1e-3):
            model, losses = vae.train_vae(x, beta, steps, seed=seed, progress=progress, reduction=reduction)
            s = vae.fisher_stats(model, x[pick], beta, seed, reduction=reduction)
            key = f"beta={beta:g}"
            values[key] = {"share": s["share"], "lam": [float(v) for v in s["lam"]], "r": s["r"],
                           "final_loss": float(np.mean(losses[-20:])),
                           "params": sum(p.numel() for p in model.parameters())}
        return values, None, "cpu"

    return store.load_or_compute(cfg.name, experiment, f"{name}-s{seed}", conf, compute, **store.policy(cfg),
                                 command=f"python -m rank1lib run {experiment} --profile {cfg.name} --dataset {name} "
                                         f"--seed {seed}{set_args(cfg)}")
