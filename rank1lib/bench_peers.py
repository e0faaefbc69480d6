"""Benchmark `peers`: the per-sample gradient engines of rank1lib.curvature beside what a user would pick
instead (opacus, BackPACK, one backward per sample), on the book's UNets and loss: correct or not,
time, peak memory; and c*'s second pass (mu^T g_i for every sample) by layer hooks, forward mode and
double backward.

python -m rank1lib bench peers --profile P [--json] [--store]
"""
from functools import partial

import torch

from . import diffusion, fisher, peers
from .analysis import analysis_data
from .bench import benchmark, timed
from .curvature import hooks
from .curvature.engines import _attention, _dots_double_backward, _selected, directional_jvp, per_sample_gradients
from .models import build_unet, n_params
from .store import device_name
from .train import pick_device

REPEATS = 5   # every time is the median of REPEATS calls after a warm-up on one batch
CHECKED = 8   # samples on which every engine is compared with the loop
CHUNK = 64


def _engine(name):
    """batch -> G (n, P) for an engine of this package ('hooks', 'vmap'), 'loop' or a peer."""
    if name in ("hooks", "vmap"):
        return lambda net, loss, b: per_sample_gradients(net, loss, b, method=name)
    if name == "loop":
        return peers.loop_gradients
    return partial(peers.gradients, name)


def _batches(cfg, net, n, seed):
    x, y = analysis_data(cfg, cfg.dataset)
    return fisher.book_batches(net, x, y, n, seed, min(CHUNK, n))


def engines(cfg, arch, n):
    """{engine: {correct, max_tensor_err, tensors_off, rows_sum_err, s, range, peak_rss_gib} or {error}}
    on `arch` at N = n joint samples (times and memory only for engines that ran)."""
    torch.manual_seed(0)
    dev = pick_device()
    net = build_unet(arch, 10).to(dev).eval()
    loss = fisher.diffusion_loss(diffusion.alpha_bar(dev))
    batches = _batches(cfg, net, n, seed=13)
    head = tuple(v[:CHECKED] for v in batches[0])
    ref = peers.loop_gradients(net, loss, head)
    out = {"loop": {"correct": True, "max_tensor_err": 0.0, "tensors_off": 0, "rows_sum_err": None}}
    for name in ("hooks", "vmap") + peers.PEERS:
        try:
            out[name] = peers.check(_engine(name)(net, loss, head), ref, net, loss, head)
        except peers.PeerUnavailable as e:
            out[name] = {"error": f"not installed ({e})", "absent": True}
        except Exception as e:  # noqa: BLE001 - what the peer does is the result
            out[name] = {"error": f"{type(e).__name__}: {str(e).splitlines()[0][:160]}"}
    for name, r in out.items():
        if "error" in r:
            continue
        fn = _engine(name)
        fn(net, loss, batches[0])  # warm-up
        r["s"], r["range"], _ = timed(lambda fn=fn: [fn(net, loss, b) for b in batches], REPEATS)
        if dev.type == "cpu":
            mem = peers.peak(name, arch, n)
            r["peak_rss_gib"] = mem.get("peak_rss_gib")
            r["added_rss_gib"] = mem["peak_rss_gib"] - mem["rss_before_gib"] if "peak_rss_gib" in mem else None
    return {"params": n_params(net), "N": n, "engines": out}


def cstar_pass(cfg, arch, n):
    """Seconds for u_i = v^T g_i over n joint samples (c*'s second pass) by layer hooks (the 'hooks' route of
    task_statistics), forward mode (torch.func.jvp) and double backward, and their agreement."""
    torch.manual_seed(0)
    dev = pick_device()
    net = build_unet(arch, 10).to(dev).eval()
    loss = fisher.diffusion_loss(diffusion.alpha_bar(dev))
    batches = _batches(cfg, net, n, seed=5)
    names, params = _selected(net)
    v = [torch.randn_like(p) for p in params]  # the cost does not depend on the direction
    found, v_named = hooks.owners(net, names), dict(zip(names, v))

    def by_hooks(bs):
        with _attention(net):
            return torch.cat([hooks.directional(net, partial(loss, net, b), found, v_named) for b in bs])

    def by_jvp(bs):
        return torch.cat([directional_jvp(net, loss, b, names, v) for b in bs])

    def by_double(bs):
        with _attention(net):
            return torch.cat([_dots_double_backward(net, loss, b, params, v) for b in bs])
    out = {}
    for name, fn in (("hooks", by_hooks), ("forward mode", by_jvp), ("double backward", by_double)):
        fn(batches[:1])
        out[name] = timed(lambda fn=fn: fn(batches), REPEATS)
    ref = out["double backward"][2]
    return {"N": n, "arch": arch, **{f"t_{k}": t for k, (t, _, _) in out.items()},
            **{f"r_{k}": r for k, (_, r, _) in out.items()},
            **{f"err_{k}": float((u - ref).abs().max() / ref.abs().max()) for k, (_, _, u) in out.items()}}


def _fmt_engine(name, r):
    if "error" in r:
        return "—", r["error"]
    ok = "yes" if r["correct"] else f"no: {r['tensors_off']} of the tensors off"
    return ok, (f"max per-tensor error {r['max_tensor_err']:.1e}"
                + (f", rows add up to {r['rows_sum_err']:.1e}" if r.get("rows_sum_err") is not None else ""))


@benchmark("peers")
def bench_peers(cfg):
    """Rows for the table and the summary JSON: every engine on the analysis UNet and the continual-learning
    UNet, then c*'s second pass on the analysis UNet."""
    n = min(256, cfg.mu_samples)
    by_arch = {arch: engines(cfg, arch, n) for arch in dict.fromkeys([cfg.analysis_model, cfg.model])}
    cs = cstar_pass(cfg, cfg.analysis_model, cfg.mu_samples)
    rows = []
    for arch, res in by_arch.items():
        for name, r in res["engines"].items():
            ok, how = _fmt_engine(name, r)
            rows.append({"measure": f"{arch}: {name}", "value": r.get("s"), "goal": "",
                         "setting": f"correct: {ok}; {how}" + (
                             f"; peak RSS {r['peak_rss_gib']:.2f} GiB, {r['added_rss_gib']:.2f} GiB above the process "
                             "after its imports (a fresh process)" if r.get("added_rss_gib") is not None else "")
                                    + f"; N = {res['N']}, chunks of {min(CHUNK, n)}, P = {res['params']:,}"})
    own = {a: min(res["engines"][e]["s"] for e in ("hooks", "vmap")) for a, res in by_arch.items()}
    peer_best = {a: min([r["s"] for e, r in res["engines"].items() if e in peers.PEERS and r.get("correct")],
                        default=None) for a, res in by_arch.items()}
    for a in by_arch:
        if peer_best[a] is not None:
            rows.append({"measure": f"{a}: fastest correct peer / this package's fastest engine",
                         "value": peer_best[a] / own[a], "goal": ">= 1", "setting": "time ratio (above 1: ours faster)"})
    for k in ("hooks", "forward mode", "double backward"):
        rows.append({"measure": f"c* second pass by {k} (s)", "value": cs[f"t_{k}"], "goal": "",
                     "setting": f"{cs['arch']}, N = {cs['N']}; max |u - u_double| / max |u_double| = "
                                f"{cs[f'err_{k}']:.1e}; median of {REPEATS}, range {cs[f'r_{k}'][0]:.3g}-"
                                f"{cs[f'r_{k}'][1]:.3g} s"})
    summary = {"N": n, "repeats": REPEATS, "checked_samples": CHECKED, "device": device_name(pick_device()),
               "engines": {a: res["engines"] for a, res in by_arch.items()},
               "params": {a: res["params"] for a, res in by_arch.items()},
               "own_fastest_s": own, "fastest_correct_peer_s": peer_best,
               "cstar_pass": cs}
    return rows, summary


ENGINE_NAMES = {"loop": "one backward per sample (reference)", "hooks": "rank1lib: layer hooks",
                "vmap": "rank1lib: torch.func vmap", "opacus": "opacus GradSampleModule",
                "opacus-contiguous": "opacus, Conv2d inputs made contiguous", "backpack": "BackPACK BatchGrad"}


def peer_table(summary) -> list:
    """Chapter 7's table from a stored `peers` summary: one row per UNet and engine."""
    rows = []
    for arch, engines_ in summary["engines"].items():
        loop = engines_["loop"].get("s")
        for name, r in engines_.items():
            if r.get("absent"):
                continue
            err = r.get("error")
            rows.append({"UNet": f"{arch} ({summary['params'][arch]:,} parameters)", "engine": ENGINE_NAMES.get(name, name),
                         "correct": "—" if err else ("yes" if r["correct"] else
                                                     f"no ({r['tensors_off']} of {r['tensors']} tensors)"),
                         "worst tensor error": "—" if err else f"{r['max_tensor_err']:.1e}",
                         f"s for N = {summary['N']}": "—" if err else f"{r['s']:.2f}",
                         "x loop": "—" if err or not loop else f"{loop / r['s']:.1f}",
                         "memory above imports (GiB)": "—" if r.get("added_rss_gib") is None else f"{r['added_rss_gib']:.2f}",
                         "what happens": err or ""})
    return rows
