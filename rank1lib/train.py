"""Single-task trainer (paper sec. 4.3: Adam, lr 2e-4, batch 128) with exact resume on CPU.

Every optimiser step s re-seeds torch's global RNG from (seed, s), and epoch e shuffles with a
generator seeded from (seed, e). The batch, t, noise and dropout of step s therefore do not depend
on whether the run was interrupted, and a resumed run ends with the same weights. Under a launcher
(`accelerate launch`, `torchrun`) the same loop is data-parallel: see distributed.py.
"""
import math
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch
from diffusers import UNet2DModel
from tqdm.auto import tqdm

from . import distributed, seeds
from .diffusion import T, alpha_bar, loss_simple, to_model_range
from .store import HOME, device_name, results_root

UNRECORDED = "unrecorded"  # training seconds saved before checkpoints split them by device (device_seconds)


class NonFiniteLoss(RuntimeError):
    """Training produced a NaN/inf loss; nothing is stored for the run."""


class DeadlineReached(RuntimeError):
    """$RANK1_DEADLINE (epoch seconds, set by the campaign) passed; a checkpoint was saved."""


class _StopRequest:
    """Ctrl-C / SIGTERM during training: remembered, acted on at the end of the current step (checkpoint,
    then KeyboardInterrupt), so an interrupted run resumes exactly. A second Ctrl-C stops at once."""

    def __init__(self):
        self.signum, self.saved = None, {}

    def __enter__(self):
        import signal
        import threading
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self.saved[sig] = signal.signal(sig, self._handler)
        return self

    def _handler(self, signum, frame):
        if self.signum is not None:
            raise KeyboardInterrupt
        self.signum = signum

    def __exit__(self, *exc):
        import signal
        for sig, h in self.saved.items():
            signal.signal(sig, h)
        return False


def deadline():
    """The campaign's deadline for this process (epoch seconds), or None."""
    v = os.environ.get("RANK1_DEADLINE")
    return float(v) if v else None


def pick_device(device=None) -> torch.device:
    """Explicit device, else this rank's GPU in a multi-process run, else CUDA when available, else CPU."""
    return torch.device(device or distributed.local_device() or ("cuda" if torch.cuda.is_available() else "cpu"))


def switch(value, device) -> bool:
    """Profile switch 'auto' | 'on' | 'off'; auto means on for CUDA."""
    return value == "on" or (value == "auto" and torch.device(device).type == "cuda")


def native_bf16(device) -> bool:
    """Whether `device` computes bf16 in hardware: a CUDA GPU that supports it, or a CPU with AVX512-BF16 or AMX."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    probes = [getattr(torch.cpu, n, None) for n in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")]
    return any(f() for f in probes if f is not None)


_WARNED = set()


def amp_on(value, device, warn=True) -> bool:
    """bf16 autocast switch 'auto' | 'on' | 'off' (auto: CUDA only). 'on' holds where the device does bf16 in
    hardware; a CPU without it emulates bf16 (17x slower than fp32 on a 2-core AMD EPYC), so it trains in
    fp32 there, with a warning (warn=False: silently, for estimates that train nothing); the device label
    of the seconds it spends says which (precision_label)."""
    if not switch(value, device):
        return False
    if native_bf16(device):
        return True
    if warn and str(device) not in _WARNED:
        _WARNED.add(str(device))
        print(f"warning: amp=on, but {device_name(device)} has no native bf16 (AVX512-BF16/AMX); "
              f"training in fp32 here", file=sys.stderr)
    return False


def precision_label(device, amp: bool) -> str:
    """Device name and the precision its steps ran in, as training seconds are keyed (by_device)."""
    return f"{device_name(device)}, {'bf16 autocast' if amp else 'fp32'}"


def ckpt_root() -> Path:
    """Where checkpoints live: $RANK1_CKPT, else <repo>/.ckpt (ignored by git)."""
    return Path(os.environ.get("RANK1_CKPT") or HOME / ".ckpt")


def state_root(cfg) -> Path:
    """Training state of a profile: inside the results store when the profile keeps it there
    (state_in_store: committed, so a campaign continues on another machine), else ckpt_root()."""
    if cfg.get("state_in_store"):
        return results_root() / cfg.name / "state"
    return ckpt_root() / cfg.name


def snapshot_steps(total) -> list:
    """Log-spaced optimiser steps 0, 25, 50, 100, ... (doubling) and the last step, for trajectories."""
    out, s = [0], 25
    while s < total:
        out.append(s)
        s *= 2
    return out + [total]


def steps_for(cfg, n_images) -> int:
    """Optimiser steps for one task: epochs * ceil(n / batch), capped at max_steps when > 0."""
    steps = cfg.epochs * math.ceil(n_images / cfg.batch_size)
    return min(steps, cfg.max_steps) if cfg.max_steps else steps


def save_checkpoint(model, opt, step, losses, ckpt_dir: Path, seconds=0.0, by_device=None, steps_by_device=None):
    """save_pretrained + optimiser state into ckpt_dir/last, atomically (unique temp dir, renames);
    `seconds` is the training wall time so far, `by_device` the same split by device name (a run resumed
    on another machine) and `steps_by_device` the optimiser steps each one trained; opt None: no optimiser
    state (a run that is finished for good, e.g. a continual task: its successor starts a fresh Adam)."""
    ckpt_dir = Path(ckpt_dir)
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=ckpt_dir, prefix=".tmp-"))
    model.save_pretrained(tmp)
    torch.save({"opt": opt.state_dict() if opt is not None else None, "step": step, "losses": losses,
                "seconds": seconds, "by_device": by_device or {}, "steps_by_device": steps_by_device or {}},
               tmp / "trainer.pt")
    old = Path(tempfile.mkdtemp(dir=ckpt_dir, prefix=".old-"))
    if (ckpt_dir / "last").exists():
        os.replace(ckpt_dir / "last", old / "last")
    os.replace(tmp, ckpt_dir / "last")
    shutil.rmtree(old, ignore_errors=True)


def _read_checkpoint(d: Path, device):
    loaded = UNet2DModel.from_pretrained(d)
    state = torch.load(d / "trainer.pt", map_location=device, weights_only=False)
    return loaded, state


def _trainer_state(ckpt_dir: Path):
    """ckpt_dir/last/trainer.pt (step, seconds, optimiser...) without loading the model, or None."""
    f = Path(ckpt_dir) / "last" / "trainer.pt"
    try:
        st = torch.load(f, map_location="cpu", weights_only=False) if f.exists() else None
        return st if isinstance(st, dict) and "step" in st else None
    except Exception:  # noqa: BLE001 - unreadable: reported when the run resumes
        return None


def checkpoint_info(ckpt_dir: Path):
    """(step, seconds) of ckpt_dir/last without loading the model, or None."""
    st = _trainer_state(ckpt_dir)
    return (st["step"], st.get("seconds", 0.0)) if st else None


def rate_here(ckpt_dir: Path, amp="off", device=None, state=None):
    """Seconds per optimiser step that ckpt_dir/last measured on this machine's device and precision
    (precision_label), or None: never trained here, or resumed from a checkpoint saved before steps were
    split by device (its seconds here include steps it did not count)."""
    st = _trainer_state(ckpt_dir) if state is None else state
    if st is None:
        return None
    device = pick_device(device)
    here = precision_label(device, amp_on(amp, device, warn=False))
    steps_by = st.get("steps_by_device") or {}
    n, s = steps_by.get(here, 0), (st.get("by_device") or {}).get(here, 0.0)
    return s / n if n > 0 and sum(steps_by.values()) == st["step"] else None


def measured_rate(ckpt_dir: Path, amp="off", device=None):
    """(step, seconds per optimiser step) of ckpt_dir/last: rate_here where it trained steps here, else its
    mean over every machine; the rate is None before a first timed step, and (0, None) without a readable
    checkpoint."""
    st = _trainer_state(ckpt_dir)
    if st is None:
        return 0, None
    per = rate_here(ckpt_dir, amp, device, st)
    if per is not None:
        return st["step"], per
    secs = st.get("seconds", 0.0)
    return st["step"], (secs / st["step"] if st["step"] and secs > 0 else None)


def load_checkpoint(model, opt, ckpt_dir: Path, steps=None):
    """Restore weights and optimiser from ckpt_dir/last; returns (step, losses, seconds)."""
    state = _load_state(model, opt, ckpt_dir, steps)
    return state["step"], state["losses"], state["seconds"]


def device_seconds(state) -> dict:
    """{device name: training seconds} of a checkpoint's state; seconds saved before checkpoints kept
    the split (2026-11-27) are 'unrecorded'."""
    split = dict(state.get("by_device") or {})
    rest = state.get("seconds", 0.0) - sum(split.values())
    if rest > 0.5:
        split[UNRECORDED] = rest
    return split


def _load_state(model, opt, ckpt_dir: Path, steps=None) -> dict:
    """load_checkpoint's work; returns the trainer state ({"step": 0, ...} when there is none).
    A checkpoint saved without optimiser state can only be loaded as finished (its step >= `steps`).

    A checkpoint killed between its renames is found in .old-*/last; an unreadable one is moved
    aside with a one-line warning and the next good one (or step 0) is used.
    """
    from .store import clean_stale_tmp, set_aside
    ckpt_dir = Path(ckpt_dir)
    if distributed.is_main():  # in a multi-process run only rank 0 changes files
        clean_stale_tmp(ckpt_dir)
    device = next(model.parameters()).device
    candidates = [ckpt_dir / "last"] + sorted(ckpt_dir.glob(".old-*/last"), reverse=True)
    for d in candidates:
        if not (d / "trainer.pt").exists():
            continue
        try:
            loaded, state = _read_checkpoint(d, device)
        except Exception as e:  # noqa: BLE001 - any unreadable checkpoint is set aside
            if distributed.is_main():
                set_aside(d, f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}")
            continue
        if opt is not None and state["opt"] is None and (steps is None or state["step"] < steps):
            raise ValueError(f"{d} was saved as finished (no optimiser state) at step {state['step']}; "
                             f"it cannot be trained on to {steps} steps: use a new checkpoint folder")
        model.load_state_dict(loaded.state_dict())
        if opt is not None and state["opt"] is not None:
            opt.load_state_dict(state["opt"])
        return {"step": state["step"], "losses": state["losses"], "seconds": state.get("seconds", 0.0),
                "by_device": state.get("by_device") or {}, "steps_by_device": state.get("steps_by_device") or {}}
    return {"step": 0, "losses": [], "seconds": 0.0, "by_device": {}, "steps_by_device": {}}


def has_optimiser(ckpt_dir: Path) -> bool:
    """Whether ckpt_dir/last/trainer.pt holds optimiser state."""
    f = Path(ckpt_dir) / "last" / "trainer.pt"
    return f.exists() and torch.load(f, map_location="cpu", weights_only=False).get("opt") is not None


def drop_optimiser(ckpt_dir: Path) -> bool:
    """Rewrite ckpt_dir/last/trainer.pt without its optimiser state (atomically); True if it had one."""
    f = Path(ckpt_dir) / "last" / "trainer.pt"
    if not f.exists():
        return False
    state = torch.load(f, map_location="cpu", weights_only=False)
    if state.get("opt") is None:
        return False
    from .store import atomic_write
    atomic_write(f, lambda tmp: torch.save({**state, "opt": None}, tmp))
    return True


def save_snapshot(model, step, snap_dir: Path, seconds=0.0):
    """Weights only (safetensors) at optimiser step `step`: snap_dir/step-<step>.safetensors; the training
    wall time so far goes into its metadata (snapshot_seconds reads it)."""
    from safetensors.torch import save_file
    snap_dir = Path(snap_dir)
    snap_dir.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=snap_dir, prefix=".snap-", suffix=".tmp")
    os.close(fd)
    save_file({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}, tmp,
              metadata={"step": str(step), "train_seconds": f"{seconds:.3f}"})
    os.replace(tmp, snap_dir / f"step-{step:06d}.safetensors")


def snapshot_seconds(path) -> float:
    """Training wall time (s) when a snapshot was taken (0 for snapshots written without it)."""
    from safetensors import safe_open
    with safe_open(str(path), "pt") as f:
        return float((f.metadata() or {}).get("train_seconds", 0.0))


def snapshots(snap_dir: Path) -> dict:
    """{step: path} of the stored snapshots."""
    return {int(p.stem.split("-")[1]): p for p in sorted(Path(snap_dir).glob("step-*.safetensors"))}


def make_adam(model, cfg, device):
    """Adam with the profile's lr; fused kernels on CUDA."""
    return torch.optim.Adam(model.parameters(), lr=cfg.lr, fused=torch.device(device).type == "cuda")


def train(model, x, y, cfg, *, steps, seed=0, ckpt_dir=None, extra_loss=None, desc="train",
          stop_after=None, progress=True, device=None, snapshot_dir=None, snapshot_at=(), final_opt=True):
    """Train eps_theta with L_simple (+ extra_loss(model, step)) for `steps` Adam steps; resumable.

    x: uint8 images (N, C, 32, 32), y: labels. stop_after simulates an interruption (tests).
    snapshot_at: optimiser steps (0 = initialisation) whose weights go to snapshot_dir.
    final_opt False: the last checkpoint drops the optimiser state (~2/3 of its size for Adam), for runs
    never trained further; a finished checkpoint that still has it loses it when loaded (drop_optimiser).
    A NaN/inf loss stops the run with NonFiniteLoss (the checkpoint keeps the last good state).
    Returns {"losses", "steps", "images_per_s", "train_seconds"}.
    Data-parallel under a launcher: each rank trains on its share of the global batch (the batch size
    must divide by the number of processes); the losses are the global batch's; rank 0 writes files.
    """
    device = pick_device(device)
    distributed.init(device)
    main = distributed.is_main()
    model.to(device).train()
    x, y = x.to(device), y.to(device)
    ab = alpha_bar(device)
    opt = make_adam(model, cfg, device)
    state = _load_state(model, opt, ckpt_dir, steps) if ckpt_dir else {"step": 0, "losses": [], "seconds": 0.0}
    start, losses, seconds, split = state["step"], state["losses"], state["seconds"], device_seconds(state)
    step_split = dict(state.get("steps_by_device") or {})

    def spent():  # training seconds so far, in total and by device, and steps by device (this call's on `here`)
        s = time.time() - t0
        return (seconds + s, {**split, here: split.get(here, 0.0) + s},
                {**step_split, here: step_split.get(here, 0) + done})
    snapshot_at = set(snapshot_at) if snapshot_dir else set()
    if start == 0 and 0 in snapshot_at and main:
        save_snapshot(model, 0, snapshot_dir)
    if start >= steps:
        if ckpt_dir and not final_opt and main:
            drop_optimiser(ckpt_dir)  # finished before final_opt existed (e.g. committed state)
        return {"losses": losses, "steps": steps, "images_per_s": None, "train_seconds": seconds,
                "train_seconds_by_device": split}
    amp = amp_on(cfg.amp, device)
    here = precision_label(device, amp)
    compile_ = switch(cfg.compile, device)
    extra = torch.compile(model) if compile_ else model   # extra_loss sees the plain (compiled) model
    fwd = extra
    if distributed.active():  # DDP averages the gradients of the ranks' shares
        ddp = distributed.wrap(model, device)
        fwd = torch.compile(ddp) if compile_ else ddp
    n, b = len(x), min(cfg.batch_size, len(x))
    part = distributed.shard(b, "batch size")
    per_epoch = max(1, n // b)
    perm, perm_epoch = None, -1
    bar = tqdm(range(start, steps), desc=desc, initial=start, total=steps, disable=not progress,
               leave=False, dynamic_ncols=True) if main else range(start, steps)
    t0, done = time.time(), 0
    step = start
    stop_at = deadline()
    stop = _StopRequest()
    try:
        with stop:
            for step in bar:
                epoch = step // per_epoch
                if epoch != perm_epoch:
                    g = torch.Generator().manual_seed(seeds.stream(seed, epoch))
                    perm, perm_epoch = torch.randperm(n, generator=g).to(device), epoch
                torch.manual_seed(seed * 7_919 + step * 104_729 + 1)
                idx = perm[(step % per_epoch) * b:(step % per_epoch + 1) * b]
                # t and noise of the whole global batch (the draws loss_simple would make), then this rank's share
                t = torch.randint(0, T, (len(idx),), device=device)
                eps = torch.randn((len(idx), *x.shape[1:]), device=device)
                idx, t, eps = idx[part], t[part], eps[part]
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
                    loss = loss_simple(fwd, to_model_range(x[idx]), y[idx], ab, t=t, eps=eps)
                    if extra_loss is not None:
                        loss = loss + extra_loss(extra, step)
                value = float(distributed.all_sum(loss.detach().float().clone())) / distributed.world_size()
                if not math.isfinite(value):
                    last = next((f"{v:.4g}" for v in reversed(losses)), "none")
                    raise NonFiniteLoss(f"{desc}: non-finite loss {value} at step {step} (last finite loss {last}); "
                                        f"likely cause: learning rate {cfg.lr:g} or penalty weight too large, or "
                                        f"a NaN in the inputs; nothing was stored")
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                losses.append(value)
                done += 1
                if progress and main and (step % 10 == 0 or step == steps - 1):
                    bar.set_postfix(loss=f"{losses[-1]:.4f}", img_s=f"{done * b / (time.time() - t0):.0f}")
                if step + 1 in snapshot_at and main:
                    save_snapshot(model, step + 1, snapshot_dir, spent()[0])
                if ckpt_dir and cfg.ckpt_every and (step + 1) % cfg.ckpt_every == 0 and main:
                    save_checkpoint(model, opt, step + 1, losses, Path(ckpt_dir), *spent())
                late = stop_at is not None and time.time() > stop_at and step + 1 < steps
                if distributed.any_rank(late, device):
                    if ckpt_dir and main:
                        save_checkpoint(model, opt, step + 1, losses, Path(ckpt_dir), *spent())
                    raise DeadlineReached(f"{desc}: deadline reached at step {step + 1}/{steps}; checkpoint saved, "
                                          f"rerun to continue")
                if stop_after is not None and step + 1 - start >= stop_after:
                    if ckpt_dir and main:
                        save_checkpoint(model, opt, step + 1, losses, Path(ckpt_dir), *spent())
                    return {"losses": losses, "steps": step + 1, "images_per_s": None, "interrupted": True}
                if distributed.any_rank(stop.signum is not None, device):  # Ctrl-C or SIGTERM: end on a
                    if ckpt_dir and main:                                    # complete step, with a checkpoint
                        save_checkpoint(model, opt, step + 1, losses, Path(ckpt_dir), *spent())
                    raise KeyboardInterrupt
    except KeyboardInterrupt:
        if ckpt_dir:
            print(f"\ninterrupted after step {step + 1}; rerun the same command to resume from the "
                  f"checkpoint in {ckpt_dir}", file=sys.stderr)
        raise
    total, by_device, steps_by = spent()
    elapsed = total - seconds
    if ckpt_dir and main:
        save_checkpoint(model, opt if final_opt else None, steps, losses, Path(ckpt_dir), total, by_device, steps_by)
    distributed.barrier()
    return {"losses": losses, "steps": steps, "images_per_s": done * b / elapsed if elapsed > 0 else None,
            "train_seconds": total, "train_seconds_by_device": by_device}

