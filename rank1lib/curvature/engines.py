"""Exact per-sample gradients g_i of any per-sample loss, by three engines: torch.func.vmap(grad)
(each sample alone), layer hooks over a whole batch (rank1lib.curvature.hooks) and, as the test
reference, one backward per sample; plus the helpers every curvature computation shares: which
parameters are covered, attention on a differentiable processor, float32 without TF32, and the
check that per-sample rows add up to the gradient of their summed loss."""
import contextlib
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

import torch

from . import hooks

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

@contextlib.contextmanager
def full_precision():
    """TF32 off for matmuls and cuDNN convolutions (PyTorch enables it for cuDNN by default): Fisher
    statistics on a GPU keep the float32 accuracy the CPU tests assert. Restored on exit."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved

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

# The faster exact per-sample gradient path per device type, from a measurement (resolve_method).
# cpu: quiet 2-core CPU, base UNet, N = 1024, chunks of 64 (2026-11-27): hooks 10.5 s (grouped conv
# backward, attention on SDPA) vs vmap 13.9 s; before those two changes hooks lost (3.27 s vs 2.74 s at N = 256).
AUTO_METHOD = {"cpu": "hooks", "cuda": "vmap"}

def resolve_method(method, device):
    """'auto' -> AUTO_METHOD of the device type (vmap where unmeasured). 'hooks': layer hooks
    (rank1lib.hooks.per_sample); 'vmap': torch.func vmap(grad); 'loop': one backward per sample,
    the test reference. Measured on a quiet 2-core CPU (base UNet, N = 256, t = 500, whole Gram path):
    vmap 5.2 s in chunks of 32, per-sample loop 11.9 s."""
    if method not in ("auto", "vmap", "loop", "hooks"):
        raise ValueError(f"per-sample gradient method {method!r}; valid: auto, hooks, vmap, loop")
    return AUTO_METHOD.get(torch.device(device).type, "vmap") if method == "auto" else method

def default_block_bytes(device):
    """Budget for one (N, P_group) gradient block: a quarter of the GPU's memory, 2 GiB on a CPU."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).total_memory // 4
    return 2 << 30

def _n_rows(batch):
    """Samples in a batch (the leading size of its first tensor)."""
    from torch.utils._pytree import tree_leaves
    return next(v.shape[0] for v in tree_leaves(batch) if isinstance(v, torch.Tensor))

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

CHECK = 8  # samples of the first batch on which the hook path is checked against the double backward

def _head(batch, n):
    """The first n samples of a batch (a tensor, or a tuple/list/dict of tensors with samples on dim 0)."""
    from torch.utils._pytree import tree_map
    return tree_map(lambda v: v[:n] if isinstance(v, torch.Tensor) else v, batch)

def _adds_up(model, per_sample_loss, batch, params, G):
    """Whether the first CHECK rows of G (at most all but one) add up to the gradient of those samples'
    summed loss taken alone (they do not when samples interact or a parameter is used outside its layer)."""
    k = min(CHECK, max(_n_rows(batch) - 1, 1))  # a strict subset: the whole batch would hide interaction
    m, ref = _summed_grad(model, per_sample_loss, _head(batch, k), params)
    return float((G[:m].sum(0) - ref).abs().max()) <= 1e-3 * float(ref.abs().max()) + 1e-30

def _dots_double_backward(model, per_sample_loss, batch, params, mu32):
    """mu^T g_i = (J mu)_i for one batch, by differentiating u -> (J^T u) . mu (a double backward)."""
    losses = per_sample_loss(model, batch)
    u = torch.zeros_like(losses, requires_grad=True)
    jt_u = torch.autograd.grad(losses, params, grad_outputs=u, create_graph=True)
    return torch.autograd.grad(sum((g * m).sum() for g, m in zip(jt_u, mu32)), u)[0].detach().double()

def _as_float64(g, buf):
    """(g as float64, the buffer): a copy into one reused float64 buffer; a fresh float64 copy of a block
    this size costs ~6x more on the CPU (new pages every time), ~9% of the whole statistics at base."""
    if buf is None or buf.shape[0] < g.shape[0] or buf.shape[1:] != g.shape[1:]:
        buf = torch.empty(g.shape, dtype=torch.float64, device=g.device)
    out = buf[:g.shape[0]]
    out.copy_(g)
    return out, buf

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
    hooks (rank1lib.hooks.per_sample), which assumes that the samples do not interact and that every
    parameter is used only by its own layer (task_statistics checks this on its first batch)."""
    if method not in ("vmap", "hooks"):
        raise ValueError(f"per_sample_gradients method {method!r}; valid: vmap, hooks")
    base = _unwrap(model)
    names, params = _selected(model, names)
    if method == "hooks":
        found = hooks.owners(base, names)
        if found is None:
            raise NotImplementedError("method='hooks': a selected parameter is not in a supported layer "
                                      f"({', '.join(m.__name__ for m in hooks.SUPPORTED)})")
        with _attention(model, fused=True):
            return hooks.per_sample(base, partial(_losses, model, per_sample_loss, batch), found, names)
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


def directional_jvp(model, per_sample_loss, batch, names, v):
    """u_i = v^T g_i for every sample of one batch by forward mode (torch.func.jvp of theta -> the (n,)
    losses along v): one forward pass carrying tangents, no backward. `v`: direction tensors in the
    order of `names`. Attention runs on the math processor (SDPA has no forward-mode rule). float64 (n,)."""
    base = _unwrap(model)
    names, params = _selected(model, names)
    primal = {n: p.detach() for n, p in zip(names, params)}
    tangent = {n: t.to(p.dtype) for n, p, t in zip(names, params, v)}
    with _attention(model):
        _, u = torch.func.jvp(lambda sub: per_sample_loss(_Bound(base, sub), batch), (primal,), (tangent,))
    return u.detach().double()
