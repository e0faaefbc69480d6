"""Benchmark `fisher`: Gram-path spectrum vs dense eigh of F, batched mu/c* vs a per-sample loop, and
the peak memory of the Gram path on the 35.7M-parameter cl UNet.

python -m rank1lib bench fisher --profile P [--json]
"""
import json
import subprocess
import sys
import time

import torch

from . import fisher
from .analysis import analysis_data
from .bench import benchmark, timed
from .curvature.engines import AUTO_METHOD, CHECK, default_block_bytes
from .models import build_unet, n_params
from .store import REPO, device_name
from .train import pick_device

# Dense F is P x P float64 (8 P^2 bytes): P ~ 1e5 would need 80 GB, so the dense
# comparison uses the gradient block of the first P_DENSE parameters of the analysis model. The
# speed-up grows like (P/N)^3; at the cpu tier P = 8000 (a 0.5 GB dense F) is still 19x below base's P.
P_DENSE = {"ci": 1500, "quick": 3000, "cpu": 8000, "gpu": 30000, "paper": 30000}


REPEATS = 5  # every time below is the median of REPEATS calls after a warm-up


def _spread(lo_hi) -> str:
    """How a time was taken, for a row's setting."""
    return f"median of {REPEATS} after a warm-up; range {lo_hi[0]:.3g}-{lo_hi[1]:.3g} s"


def _samples(cfg, n, seed, t=None):
    x, y = analysis_data(cfg, cfg.dataset)
    return x, y, fisher.joint_samples(x, y, n, seed, t=t)


def gram_vs_dense(cfg, net, p_dense, k=5):
    """Top-k eigenvalues of F from K = G G^T / N against eigvalsh of the dense F = G^T G / N."""
    n = cfg.fisher_samples
    _, _, (x0, y, t, eps) = _samples(cfg, n, seed=11, t=500)
    G = fisher.flatten_grads(fisher.per_sample_grads(net, x0, y, t, eps, method="auto"),
                             fisher.param_names(net))[:, :p_dense].double()
    dev = pick_device()
    G = G.to(dev)

    def gram():
        return torch.linalg.eigvalsh(G @ G.T / n).flip(0)[:k].cpu()

    def dense():
        return torch.linalg.eigvalsh(G.T @ G / n).flip(0)[:k].cpu()

    gram(), dense()  # warm-up
    t_gram, r_gram, lam_g = timed(gram, REPEATS)
    t_dense, r_dense, lam_d = timed(dense, REPEATS)
    err = float(((lam_g - lam_d).abs() / lam_d.abs()).max())
    return {"P": G.shape[1], "N": n, "t_gram": t_gram, "t_dense": t_dense, "err": err,
            "r_gram": r_gram, "r_dense": r_dense}


def batched_vs_loop(cfg, net):
    """mu and c* batched (the public API's route 'auto': stacked per-sample gradients where they fit,
    else summed backward + layer hooks) against one backward per sample; the route is the one taken."""
    x, y = analysis_data(cfg, cfg.dataset)
    n = cfg.mu_samples
    fisher.mu_c_star(net, x, y, 2, seed=0)  # warm-up of both paths
    fisher.mu_c_star_loop(net, x, y, 2, seed=0)
    t_b, r_b, st = timed(lambda: fisher.task_stats(net, x, y, n, seed=5, chunk=64), REPEATS)
    t_l, r_l, (mu_ref, c_ref) = timed(lambda: fisher.mu_c_star_loop(net, x, y, n, seed=5), REPEATS)
    mu_err = float((st.mu - mu_ref).abs().max() / mu_ref.abs().max())
    return {"N": n, "t_batched": t_b, "t_loop": t_l, "mu_err": mu_err, "r_batched": r_b, "r_loop": r_l,
            "c_err": abs(st.c_star - c_ref) / abs(c_ref), "route": st.route}


def per_sample_methods(cfg, net, n=256, chunk=64):
    """Seconds for the per-sample gradients of n joint samples by layer hooks and by vmap (the measurement
    behind curvature.engines.AUTO_METHOD), and their largest difference relative to max |g|."""
    _, _, (x0, y, t, eps) = _samples(cfg, n, seed=13)
    out = {}
    for m in ("hooks", "vmap"):
        fisher.per_sample_grads(net, x0[:chunk], y[:chunk], t[:chunk], eps[:chunk], chunk=chunk, method=m)  # warm-up
        out[m] = timed(lambda: fisher.flatten_grads(
            fisher.per_sample_grads(net, x0, y, t, eps, chunk=chunk, method=m), fisher.param_names(net)), REPEATS)
    diff = float((out["hooks"][2] - out["vmap"][2]).abs().max() / out["vmap"][2].abs().max())
    return {"N": n, "chunk": chunk, "t_hooks": out["hooks"][0], "t_vmap": out["vmap"][0], "diff": diff,
            "r_hooks": out["hooks"][1], "r_vmap": out["vmap"][1]}


def cl_gram_peak(n, block_bytes=None):
    """Run in a fresh process: Gram path on the cl UNet at N = n, t = 500; prints a JSON line."""
    import resource
    dev = pick_device()
    torch.manual_seed(0)
    net = build_unet("cl", 10).to(dev)
    block_bytes = block_bytes or default_block_bytes(dev)
    x0 = torch.randint(0, 256, (n, 1, 32, 32), dtype=torch.uint8)
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    _, _, tt, eps = fisher.joint_samples(x0, torch.zeros(n), n, 0, t=500)
    fisher.gram_accumulate(net, x0, torch.arange(n) % 10, tt, eps, chunk=8, block_bytes=block_bytes)
    out = {"seconds": time.perf_counter() - t0, "params": n_params(net), "N": n,
           "rss_before_gb": base, "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20,
           "block_gb": block_bytes / 2 ** 30}
    if dev.type == "cuda":
        out["peak_cuda_gb"] = torch.cuda.max_memory_allocated() / 2 ** 30
    print(json.dumps(out))


def cl_peak(n):
    code = f"from rank1lib.bench_fisher import cl_gram_peak; cl_gram_peak({n})"
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=str(REPO))
    if res.returncode:
        raise RuntimeError(f"cl Gram-path measurement failed: {res.stderr.strip().splitlines()[-1:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


@benchmark("fisher")
def bench_fisher(cfg):
    """Rows for the table and the summary JSON."""
    torch.manual_seed(0)
    dev = pick_device()
    net = build_unet(cfg.analysis_model, 10).to(dev)
    gd = gram_vs_dense(cfg, net, P_DENSE.get(cfg.name, 3000))
    bl = batched_vs_loop(cfg, net)
    ps = per_sample_methods(cfg, net)
    mem = cl_peak(cfg.cl_fisher_samples) if cfg.cl_fisher_samples else None  # 0: not analysed at this profile
    cuda = mem is not None and "peak_cuda_gb" in mem
    peak = None if mem is None else mem["peak_cuda_gb"] if cuda else mem["peak_rss_gb"]
    how = "torch.cuda.max_memory_allocated" if cuda else "peak RSS of a fresh process (ru_maxrss)"
    rows = [
        {"measure": "eigenvalues: Gram vs dense eigh (top 5, max rel. err.)", "value": gd["err"], "goal": "<= 1e-4",
         "setting": f"{cfg.analysis_model} gradient block P = {gd['P']}, N = {gd['N']}, float64"},
        {"measure": "Gram path time (s)", "value": gd["t_gram"], "goal": "",
         "setting": f"K = G G^T/N + eigvalsh(K); {_spread(gd['r_gram'])}"},
        {"measure": "dense path time (s)", "value": gd["t_dense"], "goal": "",
         "setting": f"F = G^T G/N + eigvalsh(F); {_spread(gd['r_dense'])}"},
        {"measure": "Gram vs dense speed-up", "value": gd["t_dense"] / gd["t_gram"], "goal": ">= 100x",
         "setting": f"P = {gd['P']} (dense F at the base model's P ~ 1.5e5 would need 180 GB)"},
        {"measure": "mu: batched vs loop (max abs. err. / max |mu|)", "value": bl["mu_err"], "goal": "<= 1e-5",
         "setting": f"{cfg.analysis_model}, N = {bl['N']} (x0, t, noise) joint samples"},
        {"measure": "c*: batched vs loop (rel. err.)", "value": bl["c_err"], "goal": "<= 1e-5", "setting": ""},
        {"measure": "batched mu, c* time (s)", "value": bl["t_batched"], "goal": "",
         "setting": f"task_statistics, chunks of 64, route {bl['route']}: " + (
             f"per-sample gradients G, then mu = G^T 1/N and mu^T g_i = (G mu)_i (G fits the memory budget; "
             f"its first {CHECK} samples checked against a summed backward)"
             if bl["route"].startswith("gradients") else
             "backward of the summed loss, then one forward + backward with layer hooks for mu^T g_i "
             f"(its first {CHECK} samples checked by a double backward)") + f"; {_spread(bl['r_batched'])}"},
        {"measure": "loop mu, c* time (s)", "value": bl["t_loop"], "goal": "",
         "setting": f"one backward per sample; {_spread(bl['r_loop'])}"},
        {"measure": "batched vs loop speed-up", "value": bl["t_loop"] / bl["t_batched"], "goal": ">= 5x on CPU",
         "setting": ""},
        {"measure": "per-sample gradients by layer hooks (s)", "value": ps["t_hooks"], "goal": "",
         "setting": f"{cfg.analysis_model}, N = {ps['N']}, chunks of {ps['chunk']}; {_spread(ps['r_hooks'])}"},
        {"measure": "per-sample gradients by vmap (s)", "value": ps["t_vmap"], "goal": "",
         "setting": f"same samples; {_spread(ps['r_vmap'])}; hooks vs vmap max |diff| / max |g| = "
                    f"{ps['diff']:.1e}; the faster is "
                    f"curvature.engines.AUTO_METHOD (now {AUTO_METHOD.get(dev.type, 'vmap')} on {dev.type})"},
    ]
    if mem is not None:
        rows.append({"measure": "Gram path on cl UNet: peak memory (GiB)", "value": peak, "goal": "",
                     "setting": f"P = {mem['params']}, N = {mem['N']}, one t, {how}; {mem['rss_before_gb']:.2f} GiB "
                                f"RSS before, gradient blocks <= {mem['block_gb']:.1f} GiB, {mem['seconds']:.0f} s"})
    summary = {"eig_max_rel_err": gd["err"], "gram_vs_dense_speedup": gd["t_dense"] / gd["t_gram"],
               "dense_P": gd["P"], "gram_N": gd["N"], "mu_max_rel_err": max(bl["mu_err"], bl["c_err"]),
               "batched_vs_loop_speedup": bl["t_loop"] / bl["t_batched"], "mu_N": bl["N"], "mu_route": bl["route"],
               "repeats": REPEATS,
               "per_sample_hooks_s": ps["t_hooks"], "per_sample_vmap_s": ps["t_vmap"], "per_sample_N": ps["N"],
               "cl_gram_peak_gb": peak, "cl_gram_peak_how": how if mem else None,
               "cl_N": mem and mem["N"], "cl_params": mem and mem["params"],
               "device": device_name(dev)}
    return rows, summary
