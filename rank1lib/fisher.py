"""The book's diffusion loss as a per-sample loss for rank1lib.curvature: per-sample gradients, mu, c*,
the diagonal and rank-k Fisher and the Gram spectrum at a timestep t (paper sec. 3.1-3.3).

g_i = grad_theta l(theta; x_t, t) with l = diffusion.per_sample_loss (per-pixel MEAN of
(eps - eps_theta)^2; the paper's 1/2 ||eps - eps_theta||^2 times 2/D). All statistics below are
taken with the model in eval mode (dropout off) and diffusers' plain attention processor, because
the SDPA backward has no vmap batching rule.
"""
import contextlib

import torch
from torch.func import functional_call, grad, vmap
from tqdm.auto import tqdm

from . import diffusion, seeds
from .curvature.engines import _adds_up, _selected, default_block_bytes, full_precision, per_sample_gradients, resolve_method
from .curvature.spectrum import spectrum_from_gram
from .curvature.statistics import diagonal_fisher, rank_k_fisher, task_statistics

T = diffusion.T


def flat_theta(model) -> torch.Tensor:
    """theta as one detached 1-D float32 copy, in model.parameters() order."""
    return torch.cat([p.detach().reshape(-1).float() for p in model.parameters()]).clone()


def param_names(model):
    """Trainable parameter names in model.parameters() order."""
    return [n for n, p in model.named_parameters() if p.requires_grad]


def _attention_modules(model):
    return [m for m in model.modules() if hasattr(m, "set_processor") and hasattr(m, "processor")]


@contextlib.contextmanager
def grad_mode(model):
    """Eval mode + diffusers' plain AttnProcessor (vmap-able backward) + full_precision(); restored on exit."""
    from diffusers.models.attention_processor import AttnProcessor
    was_training = model.training
    saved = [(m, m.processor) for m in _attention_modules(model)]
    model.eval()
    for m, _ in saved:
        m.set_processor(AttnProcessor())
    try:
        with full_precision():
            yield model
    finally:
        for m, proc in saved:
            m.set_processor(proc)
        model.train(was_training)


def _as_model_range(x0):
    return diffusion.to_model_range(x0) if x0.dtype == torch.uint8 else x0.float()


def _loss_fn(model, names, ab):
    """l(theta_names; x0, y, t, eps) for ONE sample, with the other parameters held fixed."""
    others = {n: p.detach() for n, p in model.named_parameters() if n not in set(names)}
    buffers = {n: b for n, b in model.named_buffers()}

    def loss(sub, x0, y, t, eps):
        x_t = diffusion.q_sample(x0[None], t[None], eps[None], ab)
        out = functional_call(model, ({**others, **sub}, buffers), (x_t, t[None]),
                              {"class_labels": y[None]}).sample
        return diffusion.per_sample_loss(out, eps[None])[0]
    return loss


def iter_per_sample_grads(model, x0, y, t, eps, chunk=32, names=None, progress=False, method="vmap"):
    """Yield (start, {name: (n, *shape)}) per chunk of samples: g_i = grad l(theta; x_t, t).

    method 'hooks': layer hooks over the chunk (one forward, one backward; rank1lib.curvature.hooks);
    'vmap': torch.func vmap(grad) over the chunk; 'loop': one autograd.grad per sample (same numbers,
    slower; the test reference); 'auto': resolve_method.
    """
    device = next(model.parameters()).device
    method = resolve_method(method, device)
    names = list(names) if names is not None else param_names(model)
    x0 = _as_model_range(x0).to(device)
    y, t, eps = y.to(device).long(), t.to(device).long(), eps.to(device).float()
    ab = diffusion.alpha_bar(device)
    with grad_mode(model):
        named = dict(model.named_parameters())
        sub = {n: named[n].detach() for n in names}
        loss = _loss_fn(model, names, ab)
        g_fn = vmap(grad(loss), in_dims=(None, 0, 0, 0, 0), randomness="different")
        hook_loss = diffusion_loss(ab)
        order = _selected(model, names)[0]  # the hook path's columns follow the model's parameter order
        sizes = [named[n].numel() for n in order]
        starts = range(0, len(x0), chunk)
        for s in tqdm(starts, desc="per-sample grads", disable=not progress, leave=False):
            e = s + chunk
            if method == "hooks":
                batch = (x0[s:e], y[s:e], t[s:e], eps[s:e])
                G = per_sample_gradients(model, hook_loss, batch, names, method="hooks")
                if s == 0:
                    _check_rows(model, hook_loss, batch, names, G)
                yield s, {n: g.reshape(len(G), *named[n].shape) for n, g in zip(order, G.split(sizes, dim=1))}
                continue
            if method == "vmap":
                yield s, g_fn(sub, x0[s:e], y[s:e], t[s:e], eps[s:e])
                continue
            rows = []
            for i in range(s, min(e, len(x0))):
                x_t = diffusion.q_sample(x0[i:i + 1], t[i:i + 1], eps[i:i + 1], ab)
                li = diffusion.per_sample_loss(diffusion.eps_theta(model, x_t, t[i:i + 1], y[i:i + 1]),
                                               eps[i:i + 1])[0]
                rows.append(torch.autograd.grad(li, [named[n] for n in names]))
            yield s, {n: torch.stack([r[j] for r in rows]) for j, n in enumerate(names)}


def _check_rows(model, loss, batch, names, G):
    """Raise unless the hook gradients G pass the statistics' first-batch check (engines._adds_up)."""
    if not _adds_up(model, loss, batch, _selected(model, names)[1], G):
        raise RuntimeError("per-sample gradients by layer hooks do not add up to the summed backward: "
                           "use method='vmap'")


def per_sample_grads(model, x0, y, t, eps, chunk=32, names=None, progress=False, method="vmap"):
    """All per-sample gradients as {name: (N, *shape)} (only for small N * P)."""
    parts = [g for _, g in iter_per_sample_grads(model, x0, y, t, eps, chunk, names, progress, method)]
    return {n: torch.cat([p[n] for p in parts]) for n in parts[0]}


def flatten_grads(g, names):
    """{name: (n, *shape)} -> (n, P_names) in the given name order."""
    return torch.cat([g[n].reshape(g[n].shape[0], -1) for n in names], dim=1)


def joint_samples(x0_uint8, y, n_samples, seed, t=None):
    """The joint sampling of sec. 3.3: x0 ~ task data, t ~ U{0..999} (or fixed t), eps ~ N(0, I)."""
    if len(x0_uint8) == 0:
        raise ValueError("joint_samples: empty task data")
    gen = torch.Generator().manual_seed(int(seed))
    idx = torch.randint(0, len(x0_uint8), (n_samples,), generator=gen)
    if t is None:
        tt = torch.randint(0, T, (n_samples,), generator=gen)
    else:
        tt = torch.full((n_samples,), int(t), dtype=torch.long)
    eps = torch.randn((n_samples, *x0_uint8.shape[1:]), generator=gen)
    return x0_uint8[idx], torch.as_tensor(y)[idx].long(), tt, eps


def diffusion_loss(ab):
    """rank1lib's per-sample loss as a `per_sample_loss(model, (x0, y, t, eps))` for the public API."""
    def loss(model, batch):
        x0, y, t, eps = batch
        return diffusion.per_sample_loss(diffusion.eps_theta(model, diffusion.q_sample(x0, t, eps, ab), t, y), eps)
    return loss


def book_batches(model, x0_uint8, y, n_samples, seed, chunk):
    """The joint samples (x0, y, t, eps) of sec. 3.3 as batches for the public API, on the model's device."""
    x0, yy, t, eps = joint_samples(x0_uint8, y, n_samples, seed)
    device = next(model.parameters()).device
    x0, yy, t, eps = _as_model_range(x0).to(device), yy.to(device), t.to(device), eps.to(device)
    return [(x0[s:s + chunk], yy[s:s + chunk], t[s:s + chunk], eps[s:s + chunk]) for s in range(0, n_samples, chunk)]


def diag_fisher_api(model, x0_uint8, y, n_samples, seed, chunk=32):
    """Diagonal Fisher over the joint sampling through the public API (the continual loop's path)."""
    with grad_mode(model):
        loss = diffusion_loss(diffusion.alpha_bar(next(model.parameters()).device))
        return diagonal_fisher(model, loss, book_batches(model, x0_uint8, y, n_samples, seed, chunk))


def mu_c_star(model, x0_uint8, y, n_samples, seed, chunk=64, progress=False):
    """mu = E[g] and c* = E[(mu^T g)^2] / ||mu||^4 over the joint sampling of sec. 3.3.

    The book's path through the public API (curvature.task_statistics, method 'auto'): where the
    per-sample gradients G (N x P float32) fit the memory budget (the base UNet at N = 1024: 0.6 GB),
    one pass over the chunks gives G (layer hooks or vmap: curvature.engines.AUTO_METHOD) and mu = G^T 1 / N,
    (G mu)_i = mu^T g_i; otherwise per chunk one backward of the summed loss, then layer hooks for every
    mu^T g_i (rank1lib.curvature.hooks). Returns (mu flat float32 (P,) on CPU, c_star float).
    """
    st = task_stats(model, x0_uint8, y, n_samples, seed, chunk, progress)
    return st.mu, st.c_star


def task_stats(model, x0_uint8, y, n_samples, seed, chunk=64, progress=False):
    """mu_c_star's TaskStats (with the route taken)."""
    device = next(model.parameters()).device
    batches = book_batches(model, x0_uint8, y, n_samples, seed, chunk)
    with grad_mode(model):
        return task_statistics(model, diffusion_loss(diffusion.alpha_bar(device)), batches, progress=progress)


def mu_c_star_loop(model, x0_uint8, y, n_samples, seed):
    """Reference: mu and c* from one backward per sample (plain loop; tests and benchmark only)."""
    x0, yy, t, eps = joint_samples(x0_uint8, y, n_samples, seed)
    device = next(model.parameters()).device
    ab = diffusion.alpha_bar(device)
    rows = []
    with grad_mode(model):
        for i in range(n_samples):
            model.zero_grad(set_to_none=True)
            x_t = diffusion.q_sample(_as_model_range(x0[i:i + 1]).to(device), t[i:i + 1].to(device),
                                     eps[i:i + 1].to(device), ab)
            out = diffusion.eps_theta(model, x_t, t[i:i + 1].to(device), yy[i:i + 1].to(device))
            diffusion.per_sample_loss(out, eps[i:i + 1].to(device))[0].backward()
            rows.append(torch.cat([p.grad.reshape(-1) for p in model.parameters() if p.requires_grad])
                        .double().cpu())
        model.zero_grad(set_to_none=True)
    G = torch.stack(rows)
    mu = G.mean(0)
    c_star = float((G @ mu).pow(2).mean() / mu.dot(mu).pow(2))
    return mu.float(), c_star


def diag_fisher(model, x0_uint8, y, n_samples, seed, chunk=32, progress=False, method="auto"):
    """Diagonal empirical Fisher E[g^2] over the joint sampling (sec. 2.2, 'Diag' baseline)."""
    x0, yy, t, eps = joint_samples(x0_uint8, y, n_samples, seed)
    names = param_names(model)
    d = None
    for _, g in iter_per_sample_grads(model, x0, yy, t, eps, chunk, names, progress, method):
        sq = flatten_grads(g, names).double().pow(2).sum(0)
        d = sq if d is None else d + sq
    return (d / n_samples).float().cpu()


# ---- exact spectrum through the N x N Gram matrix (sec. 3.2, Fig. 3) ----------------------------
#
# With G the (N, P) matrix of per-sample gradients, F = G^T G / N and K = G G^T / N share their
# nonzero eigenvalues, and (all derived from K, d = diag F, mu = G^T 1 / N and G mu):
#   ||F||_F^2            = tr(F^2) = ||K||_F^2
#   ||F - diag(d)||_F^2  = ||F||_F^2 - ||d||^2
#   mu^T F mu            = ||G mu||^2 / N,          c* = mu^T F mu / ||mu||^4  (sec. 3.3)
#   ||F - c* mu mu^T||^2 = ||F||_F^2 - 2 c* mu^T F mu + c*^2 ||mu||^4 = ||F||_F^2 - (mu^T F mu)^2 / ||mu||^4
#   |cos(g_i, mu)|       = |(G mu)_i| / (sqrt(N K_ii) ||mu||)


def param_groups(model, n_samples, block_bytes=None):
    """Split parameter names into consecutive groups whose (N, P_group) float32 block fits block_bytes."""
    block_bytes = block_bytes or default_block_bytes(next(model.parameters()).device)
    groups, cur, size = [], [], 0
    for n, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if cur and (size + p.numel()) * n_samples * 4 > block_bytes:
            groups.append(cur)
            cur, size = [], 0
        cur.append(n)
        size += p.numel()
    return groups + [cur] if cur else groups


def gram_accumulate(model, x0, y, t, eps, chunk=32, block_bytes=None, progress=False, method="auto",
                    col_chunk=1 << 20):
    """K = G G^T / N, ||d||^2, G mu and mu (float64), group by group so that G is never held whole.

    Each group's (N, P_g) float32 block lives on the model's device; products are taken in float64
    over column slices of at most col_chunk parameters.
    """
    n = len(x0)
    K = torch.zeros((n, n), dtype=torch.float64)
    Gmu = torch.zeros(n, dtype=torch.float64)
    d2, mus = 0.0, []
    for names in param_groups(model, n, block_bytes):
        G = torch.cat([flatten_grads(g, names) for _, g in
                       iter_per_sample_grads(model, x0, y, t, eps, chunk, names, progress, method)])
        for c in range(0, G.shape[1], col_chunk):
            Gd = G[:, c:c + col_chunk].double()
            mu_c = Gd.mean(0)
            K += (Gd @ Gd.T).cpu() / n
            Gmu += (Gd @ mu_c).cpu()
            d2 += float(Gd.pow(2).mean(0).pow(2).sum())
            mus.append(mu_c.cpu())
            del Gd
        del G
    return {"K": K, "d2": d2, "Gmu": Gmu, "mu": torch.cat(mus)}


def fisher_at_t(model, x0_uint8, y, n_samples, t, seed, k=5, chunk=32, block_bytes=None,
                progress=False, method="auto"):
    """Empirical Fisher F_t of n_samples (x0 ~ data, fresh noise) at a fixed t: stats and mu_t."""
    x0, yy, tt, eps = joint_samples(x0_uint8, y, n_samples, seed, t=t)
    acc = gram_accumulate(model, x0, yy, tt, eps, chunk, block_bytes, progress, method)
    return spectrum_from_gram(acc["K"], acc["d2"], acc["Gmu"], acc["mu"], k), acc["mu"].float()


def rank_k_pairs(model, x0_uint8, y, k, iters, n_samples, seed, chunk=32):
    """Top-k eigenpairs of the empirical Fisher E[g g^T] by stochastic power iteration (app. E.4.1), over
    fresh joint samples (x0, t, eps) of n_samples per iteration: curvature.rank_k_fisher with the
    book's diffusion loss. Returns V (P, k) float32 with orthonormal columns and s (k,) decreasing."""

    def draw(it):  # iteration it: a fresh sample; the final Rayleigh-Ritz step: seeds.task(seed)
        return book_batches(model, x0_uint8, y, n_samples, seeds.power_iteration(seed, it, iters), chunk)
    with grad_mode(model):
        loss = diffusion_loss(diffusion.alpha_bar(next(model.parameters()).device))
        return rank_k_fisher(model, loss, draw, k, iters, seed)
