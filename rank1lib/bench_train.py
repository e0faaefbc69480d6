"""Benchmark `train`: training step speed (optimised vs naive), EWC penalty overhead, DDIM and FID speed.

python -m rank1lib bench train --profile P [--json]
"""
import time

import torch

from . import fid, store
from .bench import benchmark, median, sync, timed
from .diffusion import alpha_bar, ddim_sample, loss_simple, to_model_range
from .models import build_unet, n_params
from .profiles import Config
from .train import amp_on, make_adam, pick_device, switch


def image_pool(b, g):
    """8 batches of random uint8 images and labels: step times do not depend on the pixels."""
    return (torch.randint(0, 256, (b * 8, 1, 32, 32), dtype=torch.uint8, generator=g),
            torch.randint(0, 10, (b * 8,), generator=g))


def median_step_time(step, n, warmup):
    """Median wall time of `step()` over n calls after `warmup` calls."""
    return timed(step, n, warmup)[0]


def interleaved_step_times(steps, rounds, warmup):
    """{name: [seconds per call]} with the steps called in turn, round after round (the order rotating),
    so that drift in machine speed hits every variant alike."""
    names = list(steps)
    for _ in range(warmup):
        for k in names:
            steps[k]()
    times = {k: [] for k in names}
    for r in range(rounds):
        for k in names[r % len(names):] + names[:r % len(names)]:
            sync()
            t0 = time.perf_counter()
            steps[k]()
            sync()
            times[k].append(time.perf_counter() - t0)
    return times




def paired_overhead(times, base, other):
    """Median over rounds of other/base - 1 (the two measured in the same round)."""
    return median([o / b - 1 for o, b in zip(times[other], times[base])])


def penalty_seconds(penalty, model, n):
    """Median time of the penalty's forward + backward alone (what it adds to a step)."""
    def call():
        penalty(model).backward()
        model.zero_grad(set_to_none=True)
    return median_step_time(call, n, 3)


def naive_step_fn(model, x, y, cfg, device):
    """fp32 eager step fed by a DataLoader from CPU memory, plain Adam."""
    ds = torch.utils.data.TensorDataset(to_model_range(x), y)
    loader = torch.utils.data.DataLoader(ds, batch_size=cfg.batch_size, shuffle=True, drop_last=True)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    ab = alpha_bar(device)
    it = iter(loader)

    def step():
        nonlocal it
        try:
            xb, yb = next(it)
        except StopIteration:
            it = iter(loader)
            xb, yb = next(it)
        loss = loss_simple(model, xb.to(device), yb.to(device), ab)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return step


def fast_step_fn(model, x, y, cfg, device, penalty=None, literal=False):
    """The trainer's step: data on the device, bf16 autocast and fused Adam on CUDA, torch.compile.
    literal: take cfg.amp as asked even where bf16 is emulated (bench settings measures that too)."""
    x, y = x.to(device), y.to(device)
    opt = make_adam(model, cfg, device)
    amp = switch(cfg.amp, device) if literal else amp_on(cfg.amp, device)
    fwd = torch.compile(model) if switch(cfg.compile, device) else model
    ab = alpha_bar(device)
    b = cfg.batch_size

    def step():
        idx = torch.randint(0, len(x), (b,), device=device)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            loss = loss_simple(fwd, to_model_range(x[idx]), y[idx], ab)
            if penalty is not None:
                loss = loss + penalty(fwd)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return step


# Dense bf16 tensor-core peak (vendor spec sheets, TFLOP/s) for model-FLOP utilisation; others: not stated.
PEAK_BF16_TFLOPS = {"H100": 989.4, "H200": 989.4}


def step_flops(model, x, y):
    """FLOPs of one forward + backward of L_simple (eq. 2) on a batch, counted by torch's FlopCounterMode."""
    from torch.utils.flop_counter import FlopCounterMode
    ab = alpha_bar(x.device)
    with FlopCounterMode(display=False) as counter:
        loss_simple(model, to_model_range(x), y, ab).backward()
    model.zero_grad(set_to_none=True)
    return counter.get_total_flops()


def peak_tflops(device_name):
    """The bf16 dense peak of a known GPU named in device_name, else None."""
    return next((v for k, v in PEAK_BF16_TFLOPS.items() if k in (device_name or "")), None)


def fid_speed(cfg, device, on_cpu, g):
    """Seconds for FID features of n images and for the Frechet distance; None where the extractor is missing."""
    try:
        metric = fid.make_metric(cfg.fid_extractor, 1, device)
    except (FileNotFoundError, RuntimeError) as e:
        return None, None, None, f"{type(e).__name__}: {e}"
    n_fid = 16 if on_cpu else 1000
    imgs = torch.randint(0, 256, (n_fid, 1, 32, 32), dtype=torch.uint8, generator=g)
    fid.features(metric, imgs[:4])  # warm-up
    t_feat, _, feats = timed(lambda: fid.features(metric, imgs), 1)
    ref, other = (fid.stats(torch.randn(feats.shape[1] + 64, feats.shape[1], dtype=torch.float64)) for _ in "ab")
    return n_fid, t_feat, timed(lambda: fid.frechet_distance(*ref, *other), 1)[0], None


def penalties(model, n_tasks=4, lam=15000.0):
    """Rank-1 (the public Rank1EWC, as the continual loop uses it) and diagonal penalties holding n_tasks
    random past tasks (the cost does not depend on the values)."""
    from .continual import add_to_penalty, method_penalty
    P = n_params(model)
    g = torch.Generator().manual_seed(0)
    r1, dg = method_penalty("rank1", lam), method_penalty("diag", lam)
    for _ in range(n_tasks):
        add_to_penalty(r1, "rank1", model, {"mu": torch.randn(P, generator=g) * 1e-3, "c_star": 1.0})
        dg.add_task(model, torch.rand(P, generator=g) * 1e-3)
    return r1, dg


@benchmark("train")
def bench_train(cfg):
    """Rows per measurement and the summary JSON."""
    device = pick_device()
    on_cpu = device.type == "cpu"
    n, warm = (31, 2) if on_cpu else (30, 10)  # rounds of (plain, rank-1, diag) steps, interleaved
    b = cfg.batch_size
    g = torch.Generator().manual_seed(0)
    x, y = image_pool(b, g)

    def model():
        torch.manual_seed(0)
        return build_unet(cfg.model, 10, 1).to(device).train()

    m = model()
    t_naive = median_step_time(naive_step_fn(m, x, y, cfg, device), n, warm)
    m = model()
    r1, dg = penalties(m)
    times = interleaved_step_times({"fast": fast_step_fn(m, x, y, cfg, device),
                                    "rank1": fast_step_fn(m, x, y, cfg, device, r1),
                                    "diag": fast_step_fn(m, x, y, cfg, device, dg)}, n, warm)
    t_fast, t_r1, t_dg = (median(times[k]) for k in ("fast", "rank1", "diag"))
    p_r1, p_dg = (penalty_seconds(p, m, 5 * n) for p in (r1, dg))
    rows = [{"measurement": "naive step (fp32 eager, DataLoader)", "seconds": t_naive, "images_per_s": b / t_naive},
            {"measurement": "optimised step", "seconds": t_fast, "images_per_s": b / t_fast},
            {"measurement": "optimised + rank-1 penalty (4 past tasks)", "seconds": t_r1, "images_per_s": b / t_r1},
            {"measurement": "optimised + diag penalty (4 past tasks)", "seconds": t_dg, "images_per_s": b / t_dg},
            {"measurement": "rank-1 penalty alone, forward + backward", "seconds": p_r1, "images_per_s": None},
            {"measurement": "diag penalty alone, forward + backward", "seconds": p_dg, "images_per_s": None}]
    n_img = min(cfg.sample_batch, 32 if on_cpu else 1000)
    m.eval()
    ddim_sample(m, torch.arange(min(n_img, 4)) % 10, steps=2, progress=False)  # warm-up
    t_ddim = timed(lambda: ddim_sample(m, torch.arange(n_img) % 10, steps=cfg.ddim_steps,
                                       batch_size=cfg.sample_batch, progress=False, amp=amp_on(cfg.amp, device)), 1)[0]
    rows.append({"measurement": f"DDIM {cfg.ddim_steps} steps, {n_img} images", "seconds": t_ddim,
                 "images_per_s": n_img / t_ddim})
    n_fid, t_feat, t_fd, fid_missing = fid_speed(cfg, device, on_cpu, g)
    if fid_missing is None:
        rows.append({"measurement": f"FID features ({cfg.fid_extractor}), {n_fid} images", "seconds": t_feat,
                     "images_per_s": n_fid / t_feat})
        rows.append({"measurement": "Frechet distance from (mu, sigma), full rank", "seconds": t_fd,
                     "images_per_s": None})
    flops = step_flops(m.train(), x[:b].to(device), y[:b].to(device))
    dev_name = store.device_name(device)
    peak = peak_tflops(dev_name)
    summary = {"optimized_vs_naive_speedup": t_naive / t_fast,
               "rank1_penalty_overhead": paired_overhead(times, "fast", "rank1"),
               "diag_penalty_overhead": paired_overhead(times, "fast", "diag"),
               "rank1_penalty_share": p_r1 / t_fast, "diag_penalty_share": p_dg / t_fast, "step_rounds": n,
               "ddim_images_per_s": n_img / t_ddim, "ddim_steps": cfg.ddim_steps,
               "fid_seconds_per_10k": None if fid_missing else 10_000 * t_feat / n_fid + t_fd,
               "fid_extractor": cfg.fid_extractor, "fid_not_measured": fid_missing,
               "train_flops_per_step": flops, "train_tflops_per_s": flops / t_fast / 1e12,
               "peak_bf16_tflops": peak, "model_flops_utilisation": peak and flops / t_fast / 1e12 / peak,
               "model": cfg.model, "params": n_params(m), "batch_size": b, "device": dev_name}
    return rows, summary


# The trainer's two speed switches (profile keys amp, compile), each alone and together.
VARIANTS = {"fp32 eager": ("off", "off"), "bf16 autocast": ("on", "off"), "torch.compile": ("off", "on"),
            "compile + bf16": ("on", "on")}
SETTINGS_MODELS = {"ci": ("tiny",), "quick": ("tiny",), "gpu": ("cl",), "paper": ("cl",)}
ADOPT_AT = 1.05  # a variant is worth switching on when it is at least 5% faster than fp32 eager


@benchmark("settings")
def bench_settings(cfg):
    """The trainer's step per model under each VARIANTS setting, steps interleaved round by round; the
    rule (fixed before measuring): keep fp32 eager unless a variant is >= ADOPT_AT x faster."""
    device = pick_device()
    on_cpu = device.type == "cpu"
    rounds, warm = (7, 2) if on_cpu else (30, 10)
    models = SETTINGS_MODELS.get(cfg.name, ("small1", "small3", "base", "mid"))
    g = torch.Generator().manual_seed(0)
    b = cfg.batch_size
    x, y = image_pool(b, g)
    rows, best = [], {}
    for name in models:
        steps = {}
        for v, (amp, comp) in VARIANTS.items():
            torch.manual_seed(0)
            m = build_unet(name, 10, 1).to(device).train()
            steps[v] = fast_step_fn(m, x, y, Config(cfg, amp=amp, compile=comp), device, literal=True)
        times = interleaved_step_times(steps, rounds, warm)
        speedup = {v: 1 + paired_overhead(times, v, "fp32 eager") for v in VARIANTS}
        for v in VARIANTS:
            rows.append({"model": name, "setting": v, "seconds": median(times[v]),
                         "images_per_s": b / median(times[v]), "vs fp32 eager": speedup[v]})
        fastest = max(VARIANTS, key=speedup.get)
        best[name] = {"fastest": fastest, "speedup": speedup[fastest], "fp32_seconds": median(times["fp32 eager"]),
                      "adopt": fastest if speedup[fastest] >= ADOPT_AT else "fp32 eager"}
    return rows, {"models": best, "batch_size": b, "rounds": rounds, "adopt_at": ADOPT_AT,
                  "device": store.device_name(device)}
