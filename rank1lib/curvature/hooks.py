"""Per-sample directional derivatives u_i = v^T g_i and per-sample gradients g_i from one batched forward
and backward through layer hooks (for mu, c*, eq. 5-6, and the Fisher spectra).

Every parameter of the book's UNets sits in a layer whose output is linear in it (Conv2d, Linear,
GroupNorm's affine, Embedding). For such a layer, out = f(a; W), so the derivative of sample i's loss
along a direction v is a sum over the layers of <dl_i/d out_i, f(a_i; v_W)> (plus <dl_i/d out_i, v_b>
for a bias). The layer inputs a_i come from forward hooks and the output gradients dl_i/d out_i from
one backward of the summed loss taken with respect to the layer outputs (no weight gradients, no
per-sample gradients, no double backward). This needs samples that do not interact inside the model
(eval mode; GroupNorm normalises each sample alone) and every parameter used only through its own
layer's forward; `task_statistics` checks the result against the double-backward path on its first
batch and falls back to it when they differ.
"""
import contextlib

import torch
import torch.nn.functional as F
from torch import nn

SUPPORTED = (nn.Conv2d, nn.Linear, nn.GroupNorm, nn.Embedding)


def _supported(m) -> bool:
    if isinstance(m, nn.Conv2d):
        return m.padding_mode == "zeros"
    if isinstance(m, nn.Embedding):
        return m.max_norm is None
    return isinstance(m, SUPPORTED)


def owners(model, names):
    """{module name: (module, {param short name: full name})} for the parameters `names`, or None when
    one of them is not a direct parameter of a supported layer."""
    wanted, found = set(names), {}
    for mn, m in model.named_modules():
        own = {pn: f"{mn}.{pn}" if mn else pn for pn, _ in m.named_parameters(recurse=False)}
        own = {pn: full for pn, full in own.items() if full in wanted}
        if own:
            if not _supported(m):
                return None
            found[mn] = (m, own)
    covered = {full for _, own in found.values() for full in own.values()}
    return found if covered == wanted else None


def along(m, a, v):
    """The part of layer m's output linear in its parameters, evaluated at direction v ({'weight', 'bias'})."""
    w, b = v.get("weight"), v.get("bias")
    if isinstance(m, nn.Conv2d):
        out = F.conv2d(a, w, None, m.stride, m.padding, m.dilation, m.groups) if w is not None else 0.0
        shape = (1, -1, 1, 1)
    elif isinstance(m, nn.Linear):
        out = a @ w.T if w is not None else 0.0
        shape = (-1,)
    elif isinstance(m, nn.GroupNorm):
        shape = (1, -1) + (1,) * (a.dim() - 2)
        out = F.group_norm(a, m.num_groups, None, None, m.eps) * w.reshape(shape) if w is not None else 0.0
    else:  # nn.Embedding
        return F.embedding(a, w, m.padding_idx)
    return out + b.reshape(shape) if b is not None else out


@contextlib.contextmanager
def recording(found):
    """Record (module, input, output) of every call of the layers in `found` while the block runs."""
    calls, handles = [], []
    for mn, (m, _) in found.items():
        handles.append(m.register_forward_hook(
            lambda mod, inp, out, mn=mn: calls.append((mn, inp[0].detach(), out))))
    try:
        yield calls
    finally:
        for h in handles:
            h.remove()


def directional(model, losses_fn, found, v_named):
    """u_i = v^T grad l_i for every sample of one batch: `losses_fn()` runs the forward and returns the (n,)
    losses; `v_named` maps full parameter names to direction tensors. Returns float64 (n,)."""
    with recording(found) as calls:
        losses = losses_fn()
    used = [(mn, a, out) for mn, a, out in calls if out.requires_grad]
    outs = torch.autograd.grad(losses.sum(), [o for _, _, o in used], allow_unused=True)
    u = torch.zeros(len(losses), dtype=torch.float64, device=losses.device)
    with torch.no_grad():
        for (mn, a, _), gout in zip(used, outs):
            if gout is None:
                continue
            m, own = found[mn]
            part = along(m, a, {pn: v_named[full] for pn, full in own.items()})
            u += (gout * part).reshape(len(u), -1).sum(1, dtype=torch.float64)
    return u


def conv_weight_grads(m, a, gout):
    """(n, *weight.shape) per-sample weight gradients of a Conv2d: the samples become groups of one
    convolution (batch 1, n x groups groups), whose weight gradient is every sample's own: one
    backward-weight call instead of an unfold and a batched product."""
    n = a.shape[0]
    w = m.weight.detach().repeat(n, 1, 1, 1)  # only its shape and dtype are read
    _, gw, _ = torch.ops.aten.convolution_backward(
        gout.reshape(1, -1, *gout.shape[2:]), a.reshape(1, -1, *a.shape[2:]), w, None, list(m.stride),
        list(m.padding), list(m.dilation), False, [0, 0], n * m.groups, [False, True, False])
    return gw.reshape(n, *m.weight.shape)


def sample_grads(m, a, gout):
    """{param short name: (n, *shape)} per-sample gradients of one call of layer m from its input a and
    the output gradient gout of the summed loss (row i of gout is dl_i/d out_i when samples do not interact)."""
    n = gout.shape[0]
    if isinstance(m, nn.Conv2d):
        if isinstance(m.padding, str):
            raise NotImplementedError("Conv2d with string padding")
        out = {"weight": conv_weight_grads(m, a, gout)}
        if m.bias is not None:
            out["bias"] = gout.sum((2, 3))
        return out
    if isinstance(m, nn.Linear):
        go, aa = gout.reshape(n, -1, gout.shape[-1]), a.reshape(n, -1, a.shape[-1])
        out = {"weight": torch.einsum("nmo,nmi->noi", go, aa)}
        if m.bias is not None:
            out["bias"] = go.sum(1)
        return out
    if isinstance(m, nn.GroupNorm):
        dims = tuple(range(2, gout.dim()))
        xhat = F.group_norm(a, m.num_groups, None, None, m.eps)
        return {"weight": (gout * xhat).sum(dims), "bias": gout.sum(dims)}
    # nn.Embedding: row a_i of the table gets gout_i
    go = gout.reshape(n, -1, gout.shape[-1])
    hot = F.one_hot(a.reshape(n, -1), m.num_embeddings).to(go.dtype)
    if m.padding_idx is not None:
        hot[..., m.padding_idx] = 0
    return {"weight": torch.einsum("nmv,nmd->nvd", hot, go)}


def per_sample(model, losses_fn, found, names):
    """(n, P) float32 per-sample gradients g_i (parameter order `names`) from one forward with layer hooks
    and one backward of the summed loss with respect to the layer outputs: per layer, the gradient of
    sample i is formed from its own input and output gradient (one grouped backward-weight call for a
    convolution). Raises NotImplementedError when a layer call does not carry the samples on dim 0."""
    with recording(found) as calls:
        losses = losses_fn()
    n = len(losses)
    used = [(mn, a, out) for mn, a, out in calls if out.requires_grad]
    if any(a.shape[0] != n or out.shape[0] != n for _, a, out in used):
        raise NotImplementedError("a hooked layer does not carry the samples on dim 0")
    outs = torch.autograd.grad(losses.sum(), [o for _, _, o in used], allow_unused=True)
    full = {}
    with torch.no_grad():
        for (mn, a, _), gout in zip(used, outs):
            if gout is None:
                continue
            m, own = found[mn]
            for pn, g in sample_grads(m, a, gout).items():
                if pn in own:
                    key = own[pn]
                    full[key] = full[key] + g if key in full else g
        shapes = dict(model.named_parameters())
        cols = [full[k].reshape(n, -1) if k in full else losses.new_zeros(n, shapes[k].numel()) for k in names]
    return torch.cat(cols, dim=1).float()
