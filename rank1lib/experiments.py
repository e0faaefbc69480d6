"""Chapter 1 experiments: dataset splits and image grids, and a single-task training run."""
import torch

from . import data, store
from .diffusion import ddim_sample
from .models import build_unet, n_params, MODELS
from .plots import image_grid
from .profiles import set_args
from .registry import experiment
from .train import ckpt_root, pick_device, steps_for, train


def task_config(cfg, keys):
    """The part of a profile an experiment depends on (hashed into its result)."""
    return {k: cfg[k] for k in keys}


@experiment("data", "task-split table and a grid of real images per task")
def data_overview(cfg, dataset=None, seed=0, per_task=16):
    """Split table (app. E.3) and `per_task` real test images per task, stored as JSON and PNG."""
    name = dataset or cfg.dataset
    conf = {"dataset": name, "per_task": per_task}

    def compute():
        ds = data.load_images(name)
        rows = data.split_table(ds)
        grids = {}
        for k in range(len(rows)):
            x, _ = data.task_data(ds, k, "test")
            pick = torch.linspace(0, len(x) - 1, min(per_task, len(x))).long()
            grids[f"task{k + 1}"] = image_grid(x[pick], nrow=per_task)
        return {"splits": rows, "source": ds.source, "channels": ds.channels}, grids, "cpu"

    return store.load_or_compute(cfg.name, "data", name, conf, compute, read_only=bool(cfg.get("read_only")))


def model_sizes(num_classes=10, channels=1):
    """Parameter count P of every builder."""
    return {m: n_params(build_unet(m, num_classes, channels)) for m in MODELS}


@experiment("train", "train one model on all classes of a dataset, then DDIM-sample a grid")
def train_run(cfg, dataset=None, seed=0, model=None, progress=True):
    """Single-task training on every class of `dataset` (profile budget) and a DDIM grid per class."""
    name = dataset or cfg.dataset
    if cfg.state_in_store:  # cpu tier: the chapter-1 run is the analysis run of chapters 2-4, at its settings
        from .profiles import Config
        cfg = Config(cfg, model=model or cfg.analysis_model, epochs=cfg.analysis_epochs,
                     max_steps=cfg.analysis_max_steps)
    arch = model or cfg.model
    conf = task_config(cfg, ["epochs", "max_steps", "train_per_class", "batch_size", "lr",
                             "ddim_steps", "amp", "compile"]) | {"dataset": name, "model": arch, "seed": seed}
    device = pick_device()

    def compute():
        ds = data.load_images(name)
        spec = data.SPECS[name]
        x, y = data.task_data(ds, 0, "train", per_class=cfg.train_per_class or None,
                              classes=list(range(spec.num_classes)))
        if cfg.state_in_store:  # cpu tier: the chapter-1 run is the analysis run of chapters 2-4 (trained once)
            from .analysis import analysis_net
            net, info, x, y = analysis_net(Config(cfg, analysis_model=arch), name, seed, arch, progress=progress)
            out = {"steps": info["train_steps"], "losses": net.losses, "images_per_s": None}
        else:
            torch.manual_seed(seed)
            net = build_unet(arch, spec.num_classes, spec.channels)
            ckpt = ckpt_root() / cfg.name / "train" / f"{name}-{arch}-s{seed}-{store.config_hash(conf)}"
            out = train(net, x, y, cfg, steps=steps_for(cfg, len(x)), seed=seed, ckpt_dir=ckpt,
                        desc=f"train {arch} on {name}", progress=progress, device=device)
        labels = torch.arange(spec.num_classes).repeat_interleave(8)
        imgs = ddim_sample(net, labels, steps=cfg.ddim_steps, seed=seed, progress=progress)
        values = {"steps": out["steps"], "images_per_s": out["images_per_s"], "n_train": len(x),
                  "shared_with_analysis": bool(cfg.state_in_store),
                  "params": n_params(net), "final_loss": sum(out["losses"][-20:]) / len(out["losses"][-20:])}
        arrays = {"losses": torch.tensor(out["losses"]).numpy(), "samples": image_grid(imgs, nrow=8)}
        return values, arrays, str(device)

    return store.load_or_compute(cfg.name, "train", f"{name}-{arch}-s{seed}", conf, compute,
                                 **store.policy(cfg),
                                 command=f"python -m rank1lib run train --profile {cfg.name} --dataset {name} --seed {seed}"
                                         f"{set_args(cfg)}")
