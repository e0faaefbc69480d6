"""Rank-1 EWC for your own model: task statistics from any per-sample loss, and the penalty (sec. 3.3).

    stats = task_statistics(model, per_sample_loss, batches)        # mu, c*, theta* of the task just learned
    penalty = Rank1EWC(lam=15000.0)
    penalty.add_task(model, stats)
    loss = new_task_loss + penalty(model)                            # lam/2 sum_k c*_k (mu_k^T (theta - theta*_k))^2
    penalty.save("ewc.safetensors"); penalty = Rank1EWC.load("ewc.safetensors", model)

`per_sample_loss(model, batch)` returns a (n,) tensor, one loss per sample of the batch, whatever the
model, data and noise schedule; `batches` is a list (or anything iterable twice) of batches drawn the
way training draws them (for a diffusion model: x0, t and eps sampled jointly). The statistics are
exact for the samples given, by one of two routes (`method`): 'gradients' stacks the per-sample
gradients G (n x P float32; by layer hooks or torch.func.vmap, whichever was measured faster on the
device: engines.AUTO_METHOD) and reads mu = G^T 1 / n and mu^T g_i = (G mu)_i from it
in one pass; 'hooks' keeps no G: mu by one backward of the summed loss per batch, the products
mu^T g_i from a second forward and backward per batch through layer hooks (rank1lib.curvature.hooks;
checked on the first 8 samples against a double backward, which is used instead for layers it cannot
follow). 'auto' takes 'gradients' when G fits a memory budget (2 GiB on a CPU, a quarter of a GPU).

The baselines of the paper's Table 1 and app. E.4.1 come from the same kind of call:
    F_diag = diagonal_fisher(model, per_sample_loss, batches)               # E[g^2], diagonal EWC
    V, s = rank_k_fisher(model, per_sample_loss, draw_batches, k=5, iters=20)  # top-k pairs of E[g g^T]
(per-sample gradients by torch.func.vmap over the batch; the model must work under torch.func).
"""
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import torch
from tqdm.auto import tqdm

from .. import distributed
from . import hooks
from .engines import (CHECK, _adds_up, _as_float64, _attention, _dots_double_backward, _head, _losses, _n_rows,
                      _selected, _unwrap, default_block_bytes, full_precision, per_sample_gradients, resolve_method)

@dataclass
class TaskStats:
    """One task's consolidation statistics: mean gradient mu (P,), c* (eq. 5), theta* (P,), and the
    names/shapes of the parameters they cover (checked against the model they are applied to)."""
    mu: torch.Tensor
    c_star: float
    theta_star: torch.Tensor
    names: list
    shapes: list
    n_samples: int
    diag: torch.Tensor | None = field(default=None)
    route: str = ""  # how they were computed: 'gradients (hooks)', 'gradients (vmap)' or 'hooks'

def task_statistics(model: torch.nn.Module, per_sample_loss: Callable[[torch.nn.Module, Any], torch.Tensor],
                    batches: Iterable, names: Sequence[str] | None = None, diag: bool = False,
                    progress: bool = False, method: str = "auto") -> TaskStats:
    """mu = E[g], c* = E[(mu^T g)^2] / ||mu||^4 (eq. 5-6) and optionally the diagonal Fisher E[g^2],
    over every sample of `batches`, for the parameters `names` (default: all trainable ones).

    `per_sample_loss(model, batch)` returns one loss per sample, shape (n,); `batches` is a list (or
    anything iterable twice) of batches drawn the way training draws them. The diagonal needs one
    backward per sample on the 'hooks' route; the 'gradients' route has it from G at no extra cost.
    `method`: 'gradients', 'hooks' or 'auto' (module docstring). Under a multi-process launcher each rank
    takes every W-th batch and the sums are all-reduced: every rank gets the statistics of all batches."""
    if method not in ("auto", "gradients", "hooks"):
        raise ValueError(f"task_statistics method {method!r}; valid: auto, gradients, hooks")
    with _attention(model), full_precision():  # no TF32 on a GPU: exact float32 statistics
        names, params = _selected(model, names)
        batches = distributed.mine(batches)
        if method == "gradients" or (method == "auto" and _g_fits(batches, params)):
            st = _stats_by_gradients(model, per_sample_loss, batches, names, params, diag, progress,
                                     strict=method == "gradients")
            if st is not None:
                return st
        return _task_statistics(model, per_sample_loss, batches, names, params, diag, progress)

def auto_route(n: int, n_params: int, device) -> str:
    """The route method='auto' takes: 'gradients' when G (n x P float32) fits engines.default_block_bytes."""
    return "gradients" if 4 * n * n_params <= default_block_bytes(device) else "hooks"

def _g_fits(batches, params):
    """Whether G of this rank's batches fits (auto_route)."""
    n = sum(_n_rows(b) for b in batches)
    return auto_route(n, sum(p.numel() for p in params), params[0].device) == "gradients"

def _stats_by_gradients(model, per_sample_loss, batches, names, params, diag, progress, strict, how=None):
    """mu = G^T 1 / n, c* = ||G mu||^2 / n / ||mu||^4 (eq. 5-6) and E[g^2] from the stacked per-sample
    gradients G (by layer hooks or vmap, the faster on this device: engines.resolve_method). The first
    CHECK samples' gradients must add up to their summed backward taken alone; where the hook gradients
    do not (a parameter used outside its layer), vmap is tried; None (use the hook route) when vmap's do
    not either (samples that interact), or, unless `strict`, when the model does not run under torch.func."""
    how = how or resolve_method("auto", params[0].device)  # 'hooks' or 'vmap' (engines.AUTO_METHOD)
    retry = partial(_stats_by_gradients, model, per_sample_loss, batches, names, params, diag, progress, strict,
                    how="vmap")
    G = []
    for k, batch in enumerate(tqdm(batches, desc=f"task statistics (per-sample gradients, {how})",
                                   disable=not progress, leave=False)):
        try:
            g = per_sample_gradients(model, per_sample_loss, batch, names, method=how)
        except NotImplementedError:
            if how == "hooks":
                return retry()
            if strict:
                raise
            return None
        except RuntimeError:
            if strict:
                raise
            return None
        if k == 0 and not _adds_up(model, per_sample_loss, batch, params, g):
            if how == "hooks":
                return retry()
            if strict:
                raise ValueError("per-sample gradients do not add up to the gradient of the summed loss: "
                                 "the samples of a batch interact (use method='hooks')")
            return None
        G.append(g)
    dev = params[0].device
    mu = torch.zeros(sum(p.numel() for p in params), dtype=torch.float64, device=dev)
    buf = None
    for g in G:
        g64, buf = _as_float64(g, buf)
        mu += g64.sum(0)
    n = int(distributed.all_sum(torch.tensor([sum(len(g) for g in G)], dtype=torch.float64, device=dev)).item())
    mu = distributed.all_sum(mu) / n
    sq_dots = torch.zeros((), dtype=torch.float64, device=dev)
    d2 = torch.zeros_like(mu) if diag else None
    for g in G:
        g64, buf = _as_float64(g, buf)
        sq_dots += (g64 @ mu).pow(2).sum()
        if diag:
            d2 += g64.pow_(2).sum(0)  # the buffer is scratch
    return _result(mu, distributed.all_sum(sq_dots), n, params, names, distributed.all_sum(d2) if diag else None,
                   f"gradients ({how})")

def _result(mu_flat, sq_dots, n, params, names, d2, route):
    """TaskStats from mu (float64, flat), sum_i (mu^T g_i)^2, n and sum_i g_i^2 (or None)."""
    c_star = float(sq_dots / n / mu_flat.dot(mu_flat).pow(2))
    theta = torch.cat([p.detach().reshape(-1).double() for p in params])
    return TaskStats(mu=mu_flat.float().cpu(), c_star=c_star, theta_star=theta.float().cpu(), names=names,
                     shapes=[list(p.shape) for p in params], n_samples=n,
                     diag=(d2 / n).float().cpu() if d2 is not None else None, route=route)

def _task_statistics(model, per_sample_loss, batches, names, params, diag, progress):
    mu = [torch.zeros_like(p, dtype=torch.float64) for p in params]
    n = 0
    bar = tqdm(total=2 * len(batches), desc="task statistics", disable=not progress, leave=False)
    for batch in batches:  # pass 1: sum_i g_i
        losses = _losses(model, per_sample_loss, batch)
        for m, g in zip(mu, torch.autograd.grad(losses.sum(), params)):
            m += g.double()
        n += len(losses)
        bar.update()
    n = int(distributed.all_sum(torch.tensor([n], dtype=torch.float64, device=params[0].device)).item())
    mu = [distributed.all_sum(m) / n for m in mu]
    mu32 = [m.to(p.dtype) for m, p in zip(mu, params)]
    dots, d2 = [], None
    found = hooks.owners(_unwrap(model), names)
    v_named = dict(zip(names, mu32))
    for k, batch in enumerate(batches):  # pass 2: mu^T g_i for every sample
        if found is not None:
            u = hooks.directional(model, partial(per_sample_loss, model, batch), found, v_named)
            if k == 0:  # checked once, on the first CHECK samples, against the double backward: a mismatch
                head = _head(batch, CHECK)  # means a layer we cannot follow, or samples that interact
                ref = _dots_double_backward(model, per_sample_loss, head, params, mu32)
                if float((u[:len(ref)] - ref).abs().max()) > 1e-3 * float(ref.abs().max()) + 1e-30:
                    found, u = None, _dots_double_backward(model, per_sample_loss, batch, params, mu32)
            dots.append(u)
        else:
            dots.append(_dots_double_backward(model, per_sample_loss, batch, params, mu32))
        if diag:  # E[g^2] needs the per-sample gradients themselves
            sq = per_sample_gradients(model, per_sample_loss, batch, names).double().pow(2).sum(0)
            d2 = sq if d2 is None else d2 + sq
        bar.update()
    bar.close()
    mu_flat = torch.cat([m.reshape(-1) for m in mu])
    sq_dots = distributed.all_sum(sum(d.pow(2).sum() for d in dots) + torch.zeros((), dtype=torch.float64,
                                                                                 device=mu_flat.device))
    if diag:
        d2 = distributed.all_sum(d2 if d2 is not None else torch.zeros(mu_flat.numel(), dtype=torch.float64,
                                                                       device=mu_flat.device))
    return _result(mu_flat, sq_dots, n, params, names, d2 if diag else None, "hooks")

def diagonal_fisher(model: torch.nn.Module, per_sample_loss: Callable[[torch.nn.Module, Any], torch.Tensor],
                    batches: Iterable, names: Sequence[str] | None = None) -> torch.Tensor:
    """Diagonal empirical Fisher E[g^2] (P,) float32 over every sample of `batches` (diagonal EWC);
    split over ranks and all-reduced under a multi-process launcher."""
    P = sum(p.numel() for p in _selected(model, names)[1])
    device = next(_unwrap(model).parameters()).device
    d2 = torch.zeros(P, dtype=torch.float64, device=device)
    n = torch.zeros((), dtype=torch.float64, device=device)
    with full_precision():
        for batch in distributed.mine(batches):
            G = per_sample_gradients(model, per_sample_loss, batch, names).double()
            d2 += G.pow(2).sum(0)
            n += len(G)
    return (distributed.all_sum(d2) / distributed.all_sum(n)).float().cpu()

def _fisher_times(model, per_sample_loss, batches, V, names):
    """F V = mean_i g_i (g_i^T V) over the samples of `batches`; V (P, k) float64."""
    out, n, buf = torch.zeros_like(V), 0, None
    for batch in batches:
        G, buf = _as_float64(per_sample_gradients(model, per_sample_loss, batch, names).to(V.device), buf)
        out += G.T @ (G @ V)
        n += len(G)
    return out / n

def rank_k_fisher(model: torch.nn.Module, per_sample_loss: Callable[[torch.nn.Module, Any], torch.Tensor],
                  draw_batches: Callable[[int], Iterable], k: int, iters: int, seed: int = 0,
                  names: Sequence[str] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k eigenpairs (V (P, k) float32 orthonormal, s (k,) decreasing) of the empirical Fisher by
    stochastic power iteration (app. E.4.1): iteration i multiplies by F estimated on draw_batches(i)
    and re-orthonormalises (QR); a final Rayleigh-Ritz step on draw_batches(iters) rotates V to the
    eigenvectors of V^T F V, so the pairs carry no cross terms there."""
    P = sum(p.numel() for p in _selected(model, names)[1])
    gen = torch.Generator().manual_seed(int(seed) * 9_973 + 17)
    V, _ = torch.linalg.qr(torch.randn(P, k, generator=gen, dtype=torch.float64))
    with full_precision():
        for it in range(int(iters)):
            V, _ = torch.linalg.qr(_fisher_times(model, per_sample_loss, draw_batches(it), V, names))
        FV = _fisher_times(model, per_sample_loss, draw_batches(int(iters)), V, names)
    H = V.T @ FV
    s, U = torch.linalg.eigh((H + H.T) / 2)  # Ritz values (ascending) and rotation
    order = torch.argsort(s, descending=True)
    return (V @ U[:, order]).float(), s[order].clamp_min(0).float()
