"""Generative distillation (paper sec. 3.4, after Masip et al. 2025).

After task k a frozen copy of m_k (the teacher) generates a replay pool for every class seen so far
(DDIM, eta = 0). While training task k+1 each step draws a replay batch of the real batch's size,
noises it with its own (t, eps), and adds
    L_GD = mean over the batch of per_sample_loss(eps_theta(x~_t), eps_teacher(x~_t)),
i.e. the per-pixel MEAN of (eps_theta - eps_teacher)^2: the paper's 1/2 ||.||^2 times 2/D, the same
normalisation as L_simple in diffusion.per_sample_loss, so the two terms are weighted 1 : 1 as in eq. 7.
"""
import copy
import time
from pathlib import Path

import torch

from . import distributed, store
from .diffusion import T, alpha_bar, ddim_sample, eps_theta, per_sample_loss, q_sample, to_model_range


def frozen_copy(model):
    """The teacher: a deep copy in eval mode with requires_grad off."""
    teacher = copy.deepcopy(model).eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    return teacher


def make_pool(teacher, classes, per_class, steps, seed, batch_size=256, amp=False, progress=False, part=None):
    """Replay pool: `per_class` DDIM samples of every class in `classes` -> (x uint8, y).

    part: a file that keeps every finished DDIM batch, so that a run interrupted mid-pool resumes at the
    batch it was on (the same images: batch b's noise is seeded by (seed, b)); the caller deletes it
    once the pool is stored. In a multi-process run each rank keeps its own file. In a one-process run
    that meets the campaign's deadline ($RANK1_DEADLINE) mid-batch, the batch's state x_t is kept too and
    DeadlineReached raised: the rerun continues that batch from the step it had reached."""
    from .train import DeadlineReached, deadline
    y = torch.as_tensor(list(classes), dtype=torch.long).repeat_interleave(int(per_class))
    key = {"classes": [int(c) for c in classes], "per_class": int(per_class), "steps": int(steps),
           "seed": int(seed), "batch_size": int(batch_size), "amp": bool(amp)}
    part = None if part is None else rank_file(Path(part))
    saved = read_part(part, key)
    done, paused = dict(saved.get("batches", {})), saved.get("paused")
    stop_at = deadline() if part is not None and not distributed.active() else None

    def write(extra=None):
        store.atomic_write(part, lambda p: torch.save({"key": key, "batches": done, **(extra or {})}, p))

    def keep(b, images):
        done[b] = images
        write()

    def pause(b, i, x_t):
        if time.time() > stop_at:
            write({"paused": {"b": b, "i": i, "x": x_t.cpu()}})
            raise DeadlineReached(f"replay pool: deadline reached in DDIM batch {b + 1} after {i}/{steps} steps; "
                                  f"its state is saved, rerun to continue")

    x = ddim_sample(teacher, y, steps=steps, seed=seed, batch_size=batch_size, progress=progress, amp=amp,
                    done=done, on_batch=keep if part is not None else None,
                    resume=(paused["b"], paused["i"], paused["x"]) if paused else None,
                    after_step=pause if stop_at is not None else None)
    return x, y


def rank_file(path):
    """path itself in a one-process run, else path with '.rank<r>' appended."""
    return path.with_name(f"{path.name}.rank{distributed.rank()}") if distributed.active() else path


def read_part(part, key):
    """The pool part file written with the same key ({"batches": {b: images}[, "paused": {b, i, x}]}); {} when
    absent, foreign or unreadable (an unreadable one is moved aside: the pool starts afresh)."""
    if part is None:
        return {}
    saved, found = store.read_or_set_aside(part, lambda p: torch.load(p, map_location="cpu", weights_only=True))
    return saved if found and saved.get("key") == key else {}


class Distillation:
    """extra_loss(model, step) for train.train: the L_GD term on a replay batch of `batch_size`.

    Uses torch's global RNG, which train.train re-seeds from (seed, step) before every step, so the
    replay batch, t and eps of step s are the same after a resume.
    """

    def __init__(self, teacher, x_pool, y_pool, batch_size):
        if len(x_pool) == 0:
            raise ValueError("Distillation: empty replay pool")
        self.teacher = teacher
        self.device = next(teacher.parameters()).device
        self.x, self.y = x_pool.to(self.device), y_pool.to(self.device)
        self.b = int(batch_size)
        self.ab = alpha_bar(self.device)

    def batch(self):
        """Replay inputs x~_t with their labels and timesteps."""
        idx = torch.randint(0, len(self.x), (self.b,), device=self.device)
        x0 = to_model_range(self.x[idx])
        t = torch.randint(0, T, (self.b,), device=self.device)
        eps = torch.randn(x0.shape, device=self.device)
        return q_sample(x0, t, eps, self.ab), t, self.y[idx]

    def loss(self, model, x_t, t, y):
        """Mean over the batch of per-pixel-mean (eps_theta - eps_teacher)^2."""
        with torch.no_grad():
            target = eps_theta(self.teacher, x_t, t, y)
        return per_sample_loss(eps_theta(model, x_t, t, y), target).mean()

    def __call__(self, model, step=None):
        return self.loss(model, *self.batch())
