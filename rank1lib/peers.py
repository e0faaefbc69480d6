"""Per-sample gradients from the libraries a user would reach for instead of rank1lib.curvature, called
the way their documentation shows, for chapter 7's comparison: opacus's GradSampleModule (as is, and
with every convolution's input made contiguous), BackPACK's BatchGrad, and one backward per sample
(the reference every engine is judged against). Each returns G (n, P) float32 in the order of the
model's trainable parameters, or raises; the packages are optional (`pip install -e '.[peers]'`)."""
import copy
import json
import subprocess
import sys
import time

import torch

PEERS = ("opacus", "opacus-contiguous", "backpack")


class PeerUnavailable(RuntimeError):
    """The peer's package is not installed."""


def _trainable(model):
    return [(n, p) for n, p in model.named_parameters() if p.requires_grad]


def loop_gradients(model, per_sample_loss, batch):
    """One autograd.grad per sample: the reference."""
    from torch.utils._pytree import tree_map
    params = [p for _, p in _trainable(model)]
    n = next(v.shape[0] for v in batch if isinstance(v, torch.Tensor))
    rows = []
    for i in range(n):
        one = tree_map(lambda v: v[i:i + 1] if isinstance(v, torch.Tensor) else v, batch)
        g = torch.autograd.grad(per_sample_loss(model, one).sum(), params)
        rows.append(torch.cat([x.reshape(-1) for x in g]).float())
    return torch.stack(rows)


def _stack(model, attr, n):
    """(n, P) from each parameter's per-sample attribute (grad_sample, grad_batch); a parameter the peer
    left without one raises, naming how many."""
    missing = [name for name, p in _trainable(model) if getattr(p, attr, None) is None]
    if missing:
        raise RuntimeError(f"no per-sample gradient for {len(missing)} of {len(_trainable(model))} tensors "
                           f"(e.g. {missing[0]})")
    return torch.cat([getattr(p, attr).reshape(n, -1).float() for _, p in _trainable(model)], dim=1)


def train_mode_copy(model):
    """A copy of the model in train mode (what opacus needs to record anything) whose dropout layers stay in
    eval mode, so that it computes the same deterministic function as the model in eval mode."""
    m = copy.deepcopy(model).train()
    for mod in m.modules():
        if isinstance(mod, torch.nn.modules.dropout._DropoutNd):
            mod.eval()
    return m


def opacus_gradients(model, per_sample_loss, batch, contiguous=False):
    """opacus.GradSampleModule on a copy of the model in train mode (in eval mode it records nothing) with
    its dropout layers kept in eval mode, so that the copy computes the same function as the model (the mid
    UNet has dropout 0.1; train mode alone would compare a different loss); `contiguous`: every Conv2d
    input made contiguous first, the workaround for its channels_last bug."""
    try:
        import opacus
    except ImportError as e:
        raise PeerUnavailable("opacus is not installed") from e
    m = train_mode_copy(model)
    if contiguous:
        for mod in m.modules():
            if isinstance(mod, torch.nn.Conv2d):
                mod.register_forward_pre_hook(lambda mod, args: (args[0].contiguous(),) + tuple(args[1:]))
    gsm = opacus.GradSampleModule(m, loss_reduction="sum", strict=False)
    losses = per_sample_loss(gsm, batch)
    losses.sum().backward()
    return _stack(m, "grad_sample", len(losses))


def backpack_gradients(model, per_sample_loss, batch):
    """BackPACK's BatchGrad on a copy of the model, every submodule extended."""
    try:
        from backpack import backpack, extend
        from backpack.extensions import BatchGrad
    except ImportError as e:
        raise PeerUnavailable("backpack-for-pytorch is not installed") from e
    m = copy.deepcopy(model)
    for mod in m.modules():
        extend(mod)
    losses = per_sample_loss(m, batch)
    with backpack(BatchGrad()):
        losses.sum().backward()
    return _stack(m, "grad_batch", len(losses))


def gradients(name, model, per_sample_loss, batch):
    """G (n, P) by peer `name` (PEERS)."""
    if name == "opacus":
        return opacus_gradients(model, per_sample_loss, batch)
    if name == "opacus-contiguous":
        return opacus_gradients(model, per_sample_loss, batch, contiguous=True)
    if name == "backpack":
        return backpack_gradients(model, per_sample_loss, batch)
    raise ValueError(f"unknown peer {name!r}; valid: {', '.join(PEERS)}")


def tensor_errors(G, ref, model) -> list:
    """||G_T - ref_T|| / (||ref_T|| + 1e-6 ||ref||) for each parameter tensor T (columns of G in parameter
    order). The floor keeps tensors whose exact gradient is zero (an attention key's bias: softmax ignores
    a shift shared by all keys) from turning rounding noise into a relative error of 1."""
    out, s = [], 0
    floor = 1e-6 * float(ref.double().norm())
    for _, p in _trainable(model):
        a, b = G[:, s:s + p.numel()].double(), ref[:, s:s + p.numel()].double()
        out.append(float((a - b).norm() / (b.norm() + floor)))
        s += p.numel()
    return out


def check(G, ref, model, per_sample_loss, batch) -> dict:
    """A peer's G against the loop: the worst per-tensor relative error, how many tensors are off by
    more than 1e-3, and whether its rows add up to the gradient of the summed loss."""
    errs = tensor_errors(G, ref, model)
    params = [p for _, p in _trainable(model)]
    summed = torch.cat([g.reshape(-1) for g in torch.autograd.grad(per_sample_loss(model, batch).sum(), params)])
    rows = float((G.double().sum(0) - summed.double()).norm() / summed.double().norm())
    return {"max_tensor_err": max(errs), "tensors_off": sum(e > 1e-3 for e in errs), "tensors": len(errs),
            "rows_sum_err": rows, "correct": max(errs) <= 1e-3}


def peak_run(engine, arch, n, chunk=64):
    """Run in a fresh process: per-sample gradients of n joint samples of the book's loss by `engine`
    ('hooks', 'vmap', 'loop' or a peer); prints one JSON line with seconds and peak RSS (GiB)."""
    from . import diffusion, fisher
    from .curvature.engines import per_sample_gradients
    from .models import build_unet
    torch.manual_seed(0)
    net = build_unet(arch, 10).eval()
    x = torch.randint(0, 256, (n, 1, 32, 32), dtype=torch.uint8)
    loss = fisher.diffusion_loss(diffusion.alpha_bar("cpu"))
    batches = fisher.book_batches(net, x, torch.arange(n) % 10, n, 0, chunk)
    before = _hwm_gib()
    t0 = time.perf_counter()
    for b in batches:
        if engine in ("hooks", "vmap"):
            per_sample_gradients(net, loss, b, method=engine)
        elif engine == "loop":
            loop_gradients(net, loss, b)
        else:
            gradients(engine, net, loss, b)
    print(json.dumps({"engine": engine, "seconds": time.perf_counter() - t0, "rss_before_gib": before,
                      "peak_rss_gib": _hwm_gib()}))


def _hwm_gib():
    """This process's peak resident size (VmHWM, GiB). Not getrusage's ru_maxrss: on Linux that survives
    execve, so a child started by a large parent reports the parent's peak."""
    with open("/proc/self/status") as f:
        kb = next(int(line.split()[1]) for line in f if line.startswith("VmHWM:"))
    return kb / 2 ** 20


def peak(engine, arch, n, threads=None):
    """peak_run in a fresh process (the same torch thread count as this one unless `threads`)."""
    from .store import REPO
    code = (f"import torch; torch.set_num_threads({threads or torch.get_num_threads()}); "
            f"from rank1lib.peers import peak_run; peak_run({engine!r}, {arch!r}, {n})")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=str(REPO))
    if res.returncode:
        return {"engine": engine, "error": (res.stderr.strip().splitlines() or ["failed"])[-1][:200]}
    return json.loads(res.stdout.strip().splitlines()[-1])
