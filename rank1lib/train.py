"""Single-task trainer (paper sec. 4.3: Adam, lr 2e-4, batch 128) with exact resume on CPU.

Every optimiser step s re-seeds torch's global RNG from (seed, s), and epoch e shuffles with a
generator seeded from (seed, e). The batch, t, noise and dropout of step s therefore do not depend
on whether the run was interrupted, and a resumed run ends with the same weights.
"""
import math
import os
import shutil
import time
from pathlib import Path

import torch
from diffusers import UNet2DModel
from tqdm.auto import tqdm

from .diffusion import alpha_bar, loss_simple, to_model_range
from .store import REPO


def pick_device(device=None) -> torch.device:
    """Explicit device, else CUDA when available, else CPU."""
    return torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))


def switch(value, device) -> bool:
    """Profile switch 'auto' | 'on' | 'off'; auto means on for CUDA."""
    return value == "on" or (value == "auto" and torch.device(device).type == "cuda")


def ckpt_root() -> Path:
    """Where checkpoints live: $RANK1_CKPT, else <repo>/.ckpt (ignored by git)."""
    return Path(os.environ.get("RANK1_CKPT") or REPO / ".ckpt")


def steps_for(cfg, n_images) -> int:
    """Optimiser steps for one task: epochs * ceil(n / batch), capped at max_steps when > 0."""
    steps = cfg.epochs * math.ceil(n_images / cfg.batch_size)
    return min(steps, cfg.max_steps) if cfg.max_steps else steps


def save_checkpoint(model, opt, step, losses, ckpt_dir: Path):
    """save_pretrained + optimiser state into ckpt_dir/last, atomically (write then rename)."""
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    tmp = ckpt_dir / f".tmp-{step}"
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    torch.save({"opt": opt.state_dict(), "step": step, "losses": losses}, tmp / "trainer.pt")
    old = ckpt_dir / ".old"
    shutil.rmtree(old, ignore_errors=True)
    if (ckpt_dir / "last").exists():
        (ckpt_dir / "last").rename(old)
    tmp.rename(ckpt_dir / "last")
    shutil.rmtree(old, ignore_errors=True)


def load_checkpoint(model, opt, ckpt_dir: Path):
    """Restore weights (from_pretrained) and optimiser from ckpt_dir/last; returns (step, losses)."""
    last = Path(ckpt_dir) / "last"
    if not (last / "trainer.pt").exists():
        return 0, []
    loaded = UNet2DModel.from_pretrained(last)
    model.load_state_dict(loaded.state_dict())
    state = torch.load(last / "trainer.pt", map_location=next(model.parameters()).device, weights_only=False)
    if opt is not None:
        opt.load_state_dict(state["opt"])
    return state["step"], state["losses"]


def make_adam(model, cfg, device):
    """Adam with the profile's lr; fused kernels on CUDA."""
    return torch.optim.Adam(model.parameters(), lr=cfg.lr, fused=torch.device(device).type == "cuda")


def train(model, x, y, cfg, *, steps, seed=0, ckpt_dir=None, extra_loss=None, desc="train",
          stop_after=None, progress=True, device=None):
    """Train eps_theta with L_simple (+ extra_loss(model, step)) for `steps` Adam steps; resumable.

    x: uint8 images (N, C, 32, 32), y: labels. stop_after simulates an interruption (tests).
    Returns {"losses", "steps", "images_per_s"}.
    """
    device = pick_device(device)
    model.to(device).train()
    x, y = x.to(device), y.to(device)
    ab = alpha_bar(device)
    opt = make_adam(model, cfg, device)
    start, losses = load_checkpoint(model, opt, ckpt_dir) if ckpt_dir else (0, [])
    if start >= steps:
        return {"losses": losses, "steps": steps, "images_per_s": None}
    amp = switch(cfg.amp, device)
    fwd = torch.compile(model) if switch(cfg.compile, device) else model
    n, b = len(x), min(cfg.batch_size, len(x))
    per_epoch = max(1, n // b)
    perm, perm_epoch = None, -1
    bar = tqdm(range(start, steps), desc=desc, initial=start, total=steps, disable=not progress,
               leave=False, dynamic_ncols=True)
    t0, done = time.time(), 0
    step = start
    try:
        for step in bar:
            epoch = step // per_epoch
            if epoch != perm_epoch:
                g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
                perm, perm_epoch = torch.randperm(n, generator=g).to(device), epoch
            torch.manual_seed(seed * 7_919 + step * 104_729 + 1)
            idx = perm[(step % per_epoch) * b:(step % per_epoch + 1) * b]
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
                loss = loss_simple(fwd, to_model_range(x[idx]), y[idx], ab)
                if extra_loss is not None:
                    loss = loss + extra_loss(fwd, step)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            losses.append(float(loss.detach()))
            done += 1
            if progress and (step % 10 == 0 or step == steps - 1):
                bar.set_postfix(loss=f"{losses[-1]:.4f}", img_s=f"{done * b / (time.time() - t0):.0f}")
            if ckpt_dir and cfg.ckpt_every and (step + 1) % cfg.ckpt_every == 0:
                save_checkpoint(model, opt, step + 1, losses, Path(ckpt_dir))
            if stop_after is not None and step + 1 - start >= stop_after:
                if ckpt_dir:
                    save_checkpoint(model, opt, step + 1, losses, Path(ckpt_dir))
                return {"losses": losses, "steps": step + 1, "images_per_s": None, "interrupted": True}
    except KeyboardInterrupt:
        if ckpt_dir:
            print(f"\ninterrupted at step {step}; rerun the same command to resume from the last "
                  f"checkpoint in {ckpt_dir}")
        raise
    if ckpt_dir:
        save_checkpoint(model, opt, steps, losses, Path(ckpt_dir))
    elapsed = time.time() - t0
    return {"losses": losses, "steps": steps, "images_per_s": done * b / elapsed if elapsed > 0 else None}

