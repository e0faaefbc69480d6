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
device: rank1lib.fisher.AUTO_METHOD) and reads mu = G^T 1 / n and mu^T g_i = (G mu)_i from it
in one pass; 'hooks' keeps no G: mu by one backward of the summed loss per batch, the products
mu^T g_i from a second forward and backward per batch through layer hooks (rank1lib.directional;
checked on the first 8 samples against a double backward, which is used instead for layers it cannot
follow). 'auto' takes 'gradients' when G fits a memory budget (2 GiB on a CPU, a quarter of a GPU).

The baselines of the paper's Table 1 and app. E.4.1 come from the same kind of call:
    F_diag = diagonal_fisher(model, per_sample_loss, batches)               # E[g^2], diagonal EWC
    V, s = rank_k_fisher(model, per_sample_loss, draw_batches, k=5, iters=20)  # top-k pairs of E[g g^T]
(per-sample gradients by torch.func.vmap over the batch; the model must work under torch.func).
"""
import contextlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import torch
from tqdm.auto import tqdm

from . import directional, distributed, ewc

__all__ = ["TaskStats", "task_statistics", "Rank1EWC", "per_sample_gradients", "diagonal_fisher", "rank_k_fisher"]


def _unwrap(model):
    """The module inside DistributedDataParallel / DataParallel / torch.compile wrappers (their
    parameter names carry a prefix; the parameters themselves are the same tensors)."""
    while True:
        if isinstance(model, (torch.nn.parallel.DistributedDataParallel, torch.nn.DataParallel)):
            model = model.module
        elif isinstance(getattr(model, "_orig_mod", None), torch.nn.Module):  # torch.compile(model)
            model = model._orig_mod
        else:
            return model


def _selected(model, names=None):
    """(names, parameters) covered by the statistics: all trainable ones, or those in `names`."""
    model = _unwrap(model)
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    if names is not None:
        wanted = set(names)
        missing = wanted - {n for n, _ in named}
        if missing:
            raise ValueError(f"parameters not in the model (or frozen): {', '.join(sorted(missing))}")
        named = [(n, p) for n, p in named if n in wanted]
    if not named:
        raise ValueError("no trainable parameters selected")
    return [n for n, _ in named], [p for _, p in named]


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


@contextlib.contextmanager
def _attention(model, fused=False):
    """diffusers attention on its plain (math) processor while statistics are taken: the fused SDPA
    kernels have no double backward and no vmap rule. `fused`: SDPA instead (AttnProcessor2_0), for the
    layer-hook engine, which needs one plain backward only. Same numbers; restored on exit."""
    mods = [m for m in _unwrap(model).modules() if hasattr(m, "set_processor") and hasattr(m, "processor")]
    saved = [(m, m.processor) for m in mods]
    if mods:
        from diffusers.models.attention_processor import AttnProcessor, AttnProcessor2_0
        for m in mods:
            m.set_processor(AttnProcessor2_0() if fused else AttnProcessor())
    try:
        yield
    finally:
        for m, proc in saved:
            m.set_processor(proc)


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
    from .fisher import full_precision
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


def _n_rows(batch):
    """Samples in a batch (the leading size of its first tensor)."""
    from torch.utils._pytree import tree_leaves
    return next(v.shape[0] for v in tree_leaves(batch) if isinstance(v, torch.Tensor))


def auto_route(n: int, n_params: int, device) -> str:
    """The route method='auto' takes: 'gradients' when G (n x P float32) fits fisher.default_block_bytes."""
    from .fisher import default_block_bytes
    return "gradients" if 4 * n * n_params <= default_block_bytes(device) else "hooks"


def _g_fits(batches, params):
    """Whether G of this rank's batches fits (auto_route)."""
    n = sum(_n_rows(b) for b in batches)
    return auto_route(n, sum(p.numel() for p in params), params[0].device) == "gradients"


def _losses(model, per_sample_loss, batch):
    """per_sample_loss(model, batch), checked to be one loss per sample."""
    losses = per_sample_loss(model, batch)
    if losses.dim() != 1:
        raise ValueError(f"per_sample_loss must return a (n,) tensor, got shape {tuple(losses.shape)}")
    return losses


def _summed_grad(model, per_sample_loss, batch, params):
    """(n, flat gradient of the summed loss) for one batch."""
    losses = _losses(model, per_sample_loss, batch)
    return len(losses), torch.cat([g.reshape(-1) for g in torch.autograd.grad(losses.sum(), params)])


def _adds_up(model, per_sample_loss, batch, params, G):
    """Whether the first CHECK rows of G (at most all but one) add up to the gradient of those samples'
    summed loss taken alone (they do not when samples interact or a parameter is used outside its layer)."""
    k = min(CHECK, max(_n_rows(batch) - 1, 1))  # a strict subset: the whole batch would hide interaction
    m, ref = _summed_grad(model, per_sample_loss, _head(batch, k), params)
    return float((G[:m].sum(0) - ref).abs().max()) <= 1e-3 * float(ref.abs().max()) + 1e-30


def _stats_by_gradients(model, per_sample_loss, batches, names, params, diag, progress, strict, how=None):
    """mu = G^T 1 / n, c* = ||G mu||^2 / n / ||mu||^4 (eq. 5-6) and E[g^2] from the stacked per-sample
    gradients G (by layer hooks or vmap, the faster on this device: fisher.resolve_method). The first
    CHECK samples' gradients must add up to their summed backward taken alone; where the hook gradients
    do not (a parameter used outside its layer), vmap is tried; None (use the hook route) when vmap's do
    not either (samples that interact), or, unless `strict`, when the model does not run under torch.func."""
    from .fisher import resolve_method
    how = how or resolve_method("auto", params[0].device)  # 'hooks' or 'vmap' (fisher.AUTO_METHOD)
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


def _as_float64(g, buf):
    """(g as float64, the buffer): a copy into one reused float64 buffer; a fresh float64 copy of a block
    this size costs ~6x more on the CPU (new pages every time), ~9% of the whole statistics at base."""
    if buf is None or buf.shape[0] < g.shape[0] or buf.shape[1:] != g.shape[1:]:
        buf = torch.empty(g.shape, dtype=torch.float64, device=g.device)
    out = buf[:g.shape[0]]
    out.copy_(g)
    return out, buf


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
    found = directional.owners(_unwrap(model), names)
    v_named = dict(zip(names, mu32))
    for k, batch in enumerate(batches):  # pass 2: mu^T g_i for every sample
        if found is not None:
            u = directional.directional(model, partial(per_sample_loss, model, batch), found, v_named)
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


CHECK = 8  # samples of the first batch on which the hook path is checked against the double backward


def _head(batch, n):
    """The first n samples of a batch (a tensor, or a tuple/list/dict of tensors with samples on dim 0)."""
    from torch.utils._pytree import tree_map
    return tree_map(lambda v: v[:n] if isinstance(v, torch.Tensor) else v, batch)


def _dots_double_backward(model, per_sample_loss, batch, params, mu32):
    """mu^T g_i = (J mu)_i for one batch, by differentiating u -> (J^T u) . mu (a double backward)."""
    losses = per_sample_loss(model, batch)
    u = torch.zeros_like(losses, requires_grad=True)
    jt_u = torch.autograd.grad(losses, params, grad_outputs=u, create_graph=True)
    return torch.autograd.grad(sum((g * m).sum() for g, m in zip(jt_u, mu32)), u)[0].detach().double()


class _Bound:
    """Stands in for `model` inside a user's per-sample loss, with the given parameters (torch.func)."""

    def __init__(self, model, params):
        self._model, self._params = model, params

    def __call__(self, *args, **kwargs):
        return torch.func.functional_call(self._model, self._params, args, kwargs)

    def __getattr__(self, name):
        return getattr(self._model, name)


def per_sample_gradients(model: torch.nn.Module, per_sample_loss: Callable[[torch.nn.Module, Any], torch.Tensor],
                         batch: Any, names: Sequence[str] | None = None, method: str = "vmap") -> torch.Tensor:
    """(n, P) float32 per-sample gradients g_i of per_sample_loss over one batch (a tensor or a tuple/dict
    of tensors with the samples on dim 0); parameter order as in TaskStats. `method` 'vmap':
    torch.func.vmap(grad), each sample alone; 'hooks': one forward and backward of the batch through layer
    hooks (rank1lib.directional.per_sample), which assumes that the samples do not interact and that every
    parameter is used only by its own layer (task_statistics checks this on its first batch)."""
    if method not in ("vmap", "hooks"):
        raise ValueError(f"per_sample_gradients method {method!r}; valid: vmap, hooks")
    base = _unwrap(model)
    names, params = _selected(model, names)
    if method == "hooks":
        found = directional.owners(base, names)
        if found is None:
            raise NotImplementedError("method='hooks': a selected parameter is not in a supported layer "
                                      f"({', '.join(m.__name__ for m in directional.SUPPORTED)})")
        with _attention(model, fused=True):
            return directional.per_sample(base, partial(_losses, model, per_sample_loss, batch), found, names)
    return _vmap_gradients(model, per_sample_loss, batch, names, params)


def _vmap_gradients(model, per_sample_loss, batch, names, params):
    """(n, P) float32 per-sample gradients by torch.func.vmap(grad)."""
    from torch.utils._pytree import tree_map
    base = _unwrap(model)
    sub = {n: p.detach() for n, p in zip(names, params)}

    def one(p, sample):
        loss = per_sample_loss(_Bound(base, p), tree_map(lambda a: a.unsqueeze(0), sample))
        return loss.reshape(-1)[0]
    with _attention(model):
        g = torch.func.vmap(torch.func.grad(one), in_dims=(None, 0), randomness="different")(sub, batch)
    return torch.cat([g[n].reshape(g[n].shape[0], -1).float() for n in names], dim=1)


def diagonal_fisher(model: torch.nn.Module, per_sample_loss: Callable[[torch.nn.Module, Any], torch.Tensor],
                    batches: Iterable, names: Sequence[str] | None = None) -> torch.Tensor:
    """Diagonal empirical Fisher E[g^2] (P,) float32 over every sample of `batches` (diagonal EWC);
    split over ranks and all-reduced under a multi-process launcher."""
    from .fisher import full_precision
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
    from .fisher import full_precision
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


class Rank1EWC(torch.nn.Module):
    """lam/2 sum_k c*_k (mu_k^T (theta - theta*_k))^2 (eq. 6) over the tasks added; call it as
    penalty(model) inside the training loss (float32 even under autocast; plain tensors, DDP-safe)."""

    def __init__(self, lam: float = 15000.0):
        super().__init__()
        self.lam = float(lam)
        self.names, self.shapes = None, None
        self.register_buffer("mu", torch.zeros(0, 0))          # (K, P) one row per past task
        self.register_buffer("c_star", torch.zeros(0, dtype=torch.float64))  # (K,)
        self.register_buffer("theta_star", torch.zeros(0, 0))  # (K, P)
        self._impl = None

    @property
    def n_tasks(self) -> int:
        """Number of tasks added so far."""
        return len(self.c_star)

    def _check(self, model, names=None, shapes=None):
        names = names or self.names
        got, params = _selected(model, names)
        shapes = shapes or self.shapes
        if [list(p.shape) for p in params] != shapes:
            raise ValueError("the model's parameters do not match the statistics (names or shapes differ)")
        return params

    def add_task(self, model: torch.nn.Module, stats: TaskStats):
        """Consolidate one finished task (its statistics from task_statistics on the same parameters)."""
        if self.names is not None and (stats.names != self.names or stats.shapes != self.shapes):
            raise ValueError("these statistics cover other parameters than the tasks already added")
        self._check(model, stats.names, stats.shapes)
        self.names, self.shapes = stats.names, stats.shapes
        row = lambda v: v.reshape(1, -1).float()  # noqa: E731
        self.mu = torch.cat([self.mu, row(stats.mu)]) if len(self.mu) else row(stats.mu)
        self.theta_star = torch.cat([self.theta_star, row(stats.theta_star)]) if len(self.theta_star) \
            else row(stats.theta_star)
        self.c_star = torch.cat([self.c_star, torch.tensor([stats.c_star], dtype=torch.float64)])
        self._impl = None

    def _build(self, model):
        """The per-step form: an ewc.LowRankPenalty over the selected parameters, one direction per task."""
        self._check(model)
        impl = ewc.LowRankPenalty(self.lam, select=lambda m: _selected(m, self.names)[1])
        for mu, c, theta in zip(self.mu, self.c_star, self.theta_star):
            impl.add_task(model, mu, [float(c)], theta_star=theta)
        return impl

    def forward(self, model: torch.nn.Module) -> torch.Tensor:
        """lam/2 sum_k c*_k (mu_k^T (theta - theta*_k))^2 at the model's current weights (a scalar with
        gradient; 0 before the first task). `model` may be wrapped in DDP or torch.compile."""
        if len(self.c_star) == 0:
            return next(p for p in model.parameters()).new_zeros(())
        if self._impl is None:
            self._impl = self._build(model)
        return self._impl(model)

    def save(self, path):
        """Write the consolidated statistics to a safetensors file (names and shapes in its metadata)."""
        import json
        from safetensors.torch import save_file
        save_file({"mu": self.mu.contiguous(), "c_star": self.c_star.contiguous(),
                   "theta_star": self.theta_star.contiguous()}, str(path),
                  metadata={"lam": str(self.lam), "names": json.dumps(self.names), "shapes": json.dumps(self.shapes),
                            "format": "rank1lib.Rank1EWC/1"})

    @classmethod
    def load(cls, path, model: torch.nn.Module | None = None) -> "Rank1EWC":
        """Read a penalty written by save(); with `model`, check that it has the same parameters."""
        import json
        from safetensors import safe_open
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            if meta.get("format") != "rank1lib.Rank1EWC/1":
                raise ValueError(f"{path}: not a Rank1EWC file")
            t = {k: f.get_tensor(k) for k in f.keys()}
        pen = cls(float(meta["lam"]))
        pen.names, pen.shapes = json.loads(meta["names"]), json.loads(meta["shapes"])
        pen.mu, pen.c_star, pen.theta_star = t["mu"], t["c_star"], t["theta_star"]
        if model is not None:
            pen._check(model)
        return pen
