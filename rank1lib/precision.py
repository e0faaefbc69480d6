"""Does bf16 autocast change what an analysis UNet learns? The loss-curve check behind the profile's
`analysis_amp_models` (bf16 for some analysis trainings, fp32 for every Fisher statistic).

Three runs of one UNet from the same initial weights on the analysis data: fp32, and bf16 autocast with
the same batches, timesteps and noise; and fp32 with the next seed's batches, timesteps and noise, which
measures how far two fp32 runs drift apart by sampling alone. The rule, fixed before any measurement:
bf16 is equal to fp32 within noise when its window-mean losses are on average no further from fp32's
(relative difference) than those of the other fp32 run, on a device with bf16 in hardware.
"""
import shutil

import numpy as np
import torch

from . import data, store
from .analysis import _conf, analysis_data
from .models import build_unet
from .profiles import Config, set_args
from .registry import experiment
from .train import amp_on, pick_device, state_root, train

CHECK_STEPS = 500  # the first steps of training, or all of them where a profile trains fewer
N_WINDOWS = 10
RUNS = {"fp32": ("off", 0), "bf16": ("on", 0), "fp32, next seed": ("off", 1)}  # label: (amp, seed offset)


def window_means(losses) -> np.ndarray:
    """Mean loss of N_WINDOWS consecutive windows of (nearly) equal length (one per step when fewer)."""
    losses = np.asarray(losses, dtype=float)
    return np.array([w.mean() for w in np.array_split(losses, min(N_WINDOWS, len(losses)))])


def slug(label) -> str:
    """A run's label as a file or array name."""
    return label.replace(", ", "-").replace(" ", "-")


def curve_gap(a, ref) -> float:
    """Mean over windows of |window mean of a - that of ref| / that of ref."""
    wa, wr = window_means(a), window_means(ref)
    return float(np.mean(np.abs(wa - wr) / wr))


def verdict(curves, native) -> dict:
    """The rule on three stored loss curves: bf16's gap from fp32 against the other fp32 run's."""
    g_bf16, g_seed = curve_gap(curves["bf16"], curves["fp32"]), curve_gap(curves["fp32, next seed"], curves["fp32"])
    equal = bool(native and g_bf16 <= g_seed)
    return {"gap_bf16": g_bf16, "gap_seed": g_seed, "native_bf16": bool(native), "equal_within_noise": equal,
            "adopt": "bf16 autocast" if equal else "fp32"}


def check_conf(cfg, dataset, arch, seed) -> dict:
    """The settings a check's result depends on (its record is stale once they change)."""
    steps = min(CHECK_STEPS, cfg.analysis_max_steps or CHECK_STEPS)
    return _conf(cfg, ("batch_size", "lr", "train_per_class"), dataset=dataset, arch=arch, seed=seed, steps=steps)


@experiment("amp_check", "bf16 autocast vs fp32 over an analysis UNet's first 500 training steps (loss curves)")
def amp_check(cfg, dataset=None, seed=0, arch=None, progress=True):
    """Train `arch` CHECK_STEPS steps three times (RUNS) from one initialisation; store the curves and the rule's
    outcome. Each run checkpoints, so an interrupted check resumes; its state is removed once stored."""
    name, arch = dataset or cfg.dataset, arch or cfg.analysis_model
    conf = check_conf(cfg, name, arch, seed)
    steps = conf["steps"]
    folder = state_root(cfg) / "amp_check" / f"{name}-{arch}-s{seed}-{store.config_hash(conf)}"

    def compute():
        x, y = analysis_data(cfg, name)
        spec, device = data.SPECS[name], pick_device()
        curves, seconds = {}, {}
        for label, (amp, offset) in RUNS.items():
            torch.manual_seed(seed)
            net = build_unet(arch, spec.num_classes, spec.channels)
            out = train(net, x, y, Config(cfg, amp=amp), steps=steps, seed=seed + offset,
                        ckpt_dir=folder / slug(label), final_opt=False,
                        desc=f"{arch} on {name}, {label}", progress=progress, device=device)
            curves[label], seconds[label] = out["losses"], out["train_seconds"]
        values = verdict(curves, amp_on("on", device)) | {
            "arch": arch, "dataset": name, "steps": steps, "runs": list(RUNS),
            "window_means": {k: window_means(c).tolist() for k, c in curves.items()},
            "sec_per_step": {k: s / steps for k, s in seconds.items()}, "threads": torch.get_num_threads()}
        arrays = {slug(k): np.asarray(c, np.float32) for k, c in curves.items()}
        return values, arrays, store.device_name(device)

    rec = store.load_or_compute(cfg.name, "amp_check", f"{name}-{arch}-s{seed}", conf, compute, **store.policy(cfg),
                                command=f"python -m rank1lib run amp_check --profile {cfg.name} --dataset {name} "
                                        f"--seed {seed}{set_args(cfg)}")
    shutil.rmtree(folder, ignore_errors=True)
    return rec


def stored_checks(cfg) -> list:
    """Every stored amp_check record of a profile whose settings are the profile's today (readers only)."""
    folder = store.result_dir(cfg.name, "amp_check")
    recs = [store.load(cfg.name, "amp_check", p.stem) for p in sorted(folder.glob("*.json"))] if folder.exists() else []
    return [r for r in recs if r is not None and store.current(
        r, check_conf(cfg, r["config"]["dataset"], r["config"]["arch"], r["config"]["seed"]))]


def check_line(rec, amp_models) -> str:
    """One line on a stored check: both gaps, the rule's outcome, and what the profile (`amp_models`) trains."""
    v = rec.values
    return (f"{v['arch']} on {v['dataset']}, {v['steps']} steps: bf16's mean relative gap from fp32 {v['gap_bf16']:.2%}, "
            f"the next seed's fp32 run {v['gap_seed']:.2%}; bf16 in hardware: {'yes' if v['native_bf16'] else 'no'}; "
            f"the rule keeps {v['adopt']} (the profile trains {v['arch']} in "
            f"{'bf16' if v['arch'] in amp_models else 'fp32'})")


def figure(rec):
    """The three runs' window-mean losses against steps (log scale), and bf16's and the other seed's gap."""
    import matplotlib.pyplot as plt
    v = rec.values
    mid = window_means(np.arange(1, v["steps"] + 1))  # each window's middle step
    fig, (a, b) = plt.subplots(1, 2, figsize=(9, 3.4))
    colour = {k: f"C{i}" for i, k in enumerate(v["runs"])}  # one colour per run on both panels
    for k in v["runs"]:
        wide = dict(lw=5, alpha=0.4) if k == "fp32" else {}  # the reference, visible under a curve that matches it
        a.plot(mid, v["window_means"][k], marker="o", ms=3, color=colour[k], label=k, **wide)
    a.set(yscale="log", xlabel="optimiser step", ylabel=f"mean loss per window of {v['steps'] // len(mid)} steps",
          title=f"{v['arch']} on {v['dataset']}")
    ref = np.array(v["window_means"]["fp32"])
    for k in v["runs"][1:]:
        b.plot(mid, np.abs(np.array(v["window_means"][k]) - ref) / ref, marker="o", ms=3, color=colour[k],
               label=f"{k} vs fp32")
    b.set(xlabel="optimiser step", ylabel="|difference| / fp32", title="gap from the fp32 run")
    a.legend(fontsize=8)
    b.legend(fontsize=8)
    fig.tight_layout()
    return fig
