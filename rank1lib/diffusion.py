"""DDPM forward process, L_simple, DDIM sampling and Tweedie quantities (paper sec. 2.1, 3.1).

Loss normalisation, used everywhere in rank1lib (training, Fisher, EWC, distillation):
the per-sample loss is the per-pixel MEAN of (eps - eps_theta)^2, i.e. the paper's eq. 2
(1/2 ||eps - eps_theta||^2) multiplied by 2/D, D = C*32*32. EWC's lambda refers to this loss.
"""
import math

import torch
from diffusers import DDIMScheduler, DDPMScheduler
from tqdm.auto import tqdm

from . import seeds

T = 1000


def make_scheduler() -> DDPMScheduler:
    """DDPM with 1000 steps and the linear beta schedule (Ho et al. 2020)."""
    return DDPMScheduler(num_train_timesteps=T, beta_schedule="linear")


def alpha_bar(device="cpu") -> torch.Tensor:
    """Cumulative products alpha_bar_t, t = 0..999."""
    return make_scheduler().alphas_cumprod.to(device=device, dtype=torch.float32)


def to_model_range(x_uint8: torch.Tensor) -> torch.Tensor:
    """uint8 [0, 255] -> float [-1, 1]."""
    return x_uint8.float().div(127.5).sub(1.0)


def to_uint8(x: torch.Tensor) -> torch.Tensor:
    """float [-1, 1] -> uint8 by rounding (clipped)."""
    return ((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)


def q_sample(x0, t, eps, ab):
    """Forward process x_t = sqrt(alpha_bar_t) x0 + sqrt(1 - alpha_bar_t) eps (paper eq. before 2)."""
    a = ab[t].view(-1, *([1] * (x0.dim() - 1)))
    return a.sqrt() * x0 + (1 - a).sqrt() * eps


def eps_theta(model, x_t, t, y):
    """Noise prediction eps_theta(x_t, t, y)."""
    return model(x_t, t, class_labels=y).sample


def per_sample_loss(eps_hat, eps):
    """Per-sample L_simple with rank1lib's normalisation: mean over pixels of (eps - eps_hat)^2."""
    return (eps_hat.float() - eps.float()).pow(2).flatten(1).mean(1)


def loss_simple(model, x0, y, ab, generator=None, t=None, eps=None):
    """Batch-mean L_simple at uniform t (paper eq. 2 up to normalisation)."""
    n = x0.shape[0]
    if t is None:
        t = torch.randint(0, T, (n,), device=x0.device, generator=generator)
    if eps is None:
        eps = torch.randn(x0.shape, device=x0.device, generator=generator)
    return per_sample_loss(eps_theta(model, q_sample(x0, t, eps, ab), t, y), eps).mean()


def scaled_eps(eps_hat, t, ab):
    """Tweedie's scaled prediction x_t_hat = sqrt(1 - alpha_bar_t) eps_hat (sec. 3.2, Fig. 1)."""
    return (1 - ab[t]).sqrt().view(-1, 1, 1, 1) * eps_hat


def tweedie_x0(x_t, eps_hat, t, ab):
    """Tweedie denoised estimate x0_hat = (x_t - sqrt(1 - alpha_bar_t) eps_hat) / sqrt(alpha_bar_t)."""
    a = ab[t].view(-1, 1, 1, 1)
    return (x_t - (1 - a).sqrt() * eps_hat) / a.sqrt()


@torch.no_grad()
def ddim_sample(model, labels, steps=50, seed=0, batch_size=256, channels=None, progress=True,
                amp=False, done=None, on_batch=None, resume=None, after_step=None):
    """Class-conditional DDIM sampling (Song et al. 2021, eta = 0) to uint8 images (N, C, 32, 32).
    Batch b starts from noise seeded by (seed, b); in a multi-process run each rank samples every W-th
    batch and the batches are gathered, so every rank returns the images one process would.
    done: {b: images} of batches already sampled (skipped); on_batch(b, images) after each new batch;
    resume: (b, i, x_t) continues batch b from its state after i DDIM steps (eta = 0 makes this exact);
    after_step(b, i, x_t) after each of a batch's steps but the last, e.g. to pause it (replay.make_pool)."""
    from . import distributed
    device = next(model.parameters()).device
    labels = torch.as_tensor(labels, dtype=torch.long)
    c = channels or model.config.in_channels
    size = model.config.sample_size
    sched = DDIMScheduler(num_train_timesteps=T, beta_schedule="linear", clip_sample=True,
                          set_alpha_to_one=False)
    sched.set_timesteps(steps)
    was_training = model.training
    model.eval()
    out = dict(done or {})
    n_batches = math.ceil(len(labels) / batch_size)
    todo = [b for b in distributed.mine(range(n_batches)) if b not in out]
    for b in tqdm(todo, desc="DDIM", disable=not progress, leave=False):
        y = labels[b * batch_size:(b + 1) * batch_size].to(device)
        g = torch.Generator(device="cpu").manual_seed(seeds.stream(seed, b))
        x = torch.randn((len(y), c, size, size), generator=g).to(device)
        start = 0
        if resume is not None and int(resume[0]) == b:
            start, x = int(resume[1]), resume[2].to(device)
        for i, t in enumerate(sched.timesteps[start:], start + 1):
            tt = torch.full((len(y),), int(t), device=device, dtype=torch.long)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
                e = eps_theta(model, x, tt, y)
            x = sched.step(e.float(), t, x, eta=0.0).prev_sample
            if after_step is not None and i < len(sched.timesteps):
                after_step(b, i, x)
        out[b] = to_uint8(x).cpu()
        if on_batch is not None:
            on_batch(b, out[b])
    model.train(was_training)
    if distributed.active():
        out = {b: im for part in distributed.gather(out) for b, im in part.items()}
    return torch.cat([out[b] for b in range(n_batches)]) if out else torch.zeros((0, c, size, size), dtype=torch.uint8)
