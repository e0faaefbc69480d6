"""A resumable campaign that builds a profile's committed tier over many sittings.

python -m rank1lib campaign --profile cpu [--hours H | --until HH:MM] [--jobs J] [--dry-run]

The tier is a list of items in priority order; an item is a few `run` commands that share one
training run (the first trains, the others reuse its checkpoint). Status comes from the store:
done (every result stored), partial (training state stored, with its step), pending. Workers run
items as child processes (`--threads` each), one item per worker, each item under a file lock so
that two campaigns never run the same item. At the deadline a child's trainer saves a checkpoint
and exits (RANK1_DEADLINE); whatever is not finished is continued by the next campaign, on this
machine or another (the state lives in book/results/<profile>/state and is committed).
"""
import fnmatch
import json
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from . import store
from .estimates import SEC_PER_SPECTRUM_T_1T, SETUP_S, sec_per_step
from .profiles import Config, load_profile, reading
from .train import drop_optimiser, native_bf16, pick_device

EXIT_DEADLINE = 3
_STOP = threading.Event()  # set by Ctrl-C / SIGTERM: children are asked to checkpoint and stop
_SAY = threading.Lock()


def _say(line):
    """Print one whole line from a worker thread (two threads' print() calls can interleave text and newline)."""
    with _SAY:
        sys.stdout.write(line + "\n")
        sys.stdout.flush()


@dataclass
class Cmd:
    """One `python -m rank1lib run` command."""
    experiment: str
    dataset: str | None = None
    seed: int = 0
    sets: dict = field(default_factory=dict)
    method: str | None = None
    feeds: tuple = ()  # the status artefacts (status.ARTEFACTS keys) whose tables and figures need its result

    def argv(self, profile):
        a = ["run", self.experiment, "--profile", profile, "--seed", str(self.seed)]
        a += ["--dataset", self.dataset] if self.dataset else []
        a += ["--method", self.method] if self.method else []
        for k, v in self.sets.items():
            a += ["--set", f"{k}={v}"]
        return a

    def text(self, profile):
        return "python -m rank1lib " + " ".join(self.argv(profile))

    def load(self, profile):
        """Its stored result, asked through a reader config (ResultPending when absent; never computes)."""
        from .registry import load_all
        cfg = reading(load_profile(profile, **self.sets, **({"dataset": self.dataset} if self.dataset else {})))
        return load_all()[self.experiment](cfg, cfg.dataset, self.seed, progress=False,
                                           **({"method": self.method} if self.method else {}))


@dataclass
class Item:
    key: str
    title: str
    cmds: list
    arch: str | None = None  # analysis model the first command trains (None: no UNet training)
    dataset: str | None = None
    seed: int = 0
    sets: dict = field(default_factory=dict)
    spectra_t: int = 0  # number of (timestep, snapshot) spectra the item computes
    steps: int = 0      # optimiser steps of an item without a resumable analysis run (estimates only)
    blocked: str = ""   # why the item may not run yet (shown by the status; never started)
    minutes: float = 0  # measured wall minutes on the tier's device, where known (estimates; fits-in check)
    catch_up: list = field(default_factory=list)  # commands run first at every start, outside the item's status


def analysis_item(cfg, key, title, arch, dataset=None, seed=0, sets=None, trajectory=False, feeds=()) -> Item:
    """One analysis UNet's item: train it (resumable), its spectrum and Tweedie test, and optionally the
    spectrum at its log-spaced snapshots (trajectory). feeds: {experiment: artefacts} of its commands."""
    sets = dict(sets or {}, analysis_model=arch)
    feeds = dict(feeds)
    cmds = [Cmd("spectrum", dataset, seed, sets, feeds=feeds.get("spectrum", ())),
            Cmd("tweedie", dataset, seed, sets, feeds=feeds.get("tweedie", ()))]
    catch_up = []
    if trajectory:  # the snapshots stored so far get their statistics before training goes on
        cmds.append(Cmd("trajectory", dataset, seed, sets, feeds=feeds.get("trajectory", ())))
        catch_up.append(Cmd("trajectory_so_far", dataset, seed, sets))
    return Item(key, title, cmds, arch, dataset, seed, sets, len(cfg.fisher_timesteps) + (70 if trajectory else 0),
                catch_up=catch_up)


def fisher_items(cfg) -> list:
    """The Fisher-chapter tier in priority order."""
    items = []

    def run_item(*args, **kw):
        items.append(analysis_item(cfg, *args, **kw))

    run_item("base-s0", "base UNet, mnist-5k, seed 0 (Fig. 1, 2, 3; trajectory; chapter-1 samples)", "base",
             trajectory=True, feeds={"spectrum": ("spectrum",), "tweedie": ("tweedie",),
                                     "trajectory": ("trajectory",)})
    items[-1].cmds.append(Cmd("train", None, 0, {"model": "base"}))
    # the two short items first, so that a second worker finishes them in the first sitting
    items.append(Item("vae", "VAE, beta = 1 and 1e-3 (App. C)", [Cmd("vae", feeds=("vae",))]))
    items.append(Item("init-spread", "base UNet at initialisation, 5 seeds (trajectory controls)",
                      [Cmd("init_spread", feeds=("trajectory",))], spectra_t=25))
    run_item("small3-s0", "Small-3 UNet, mnist-5k, seed 0 (Fig. 6)", "small3", feeds={"spectrum": ("sizes",)})
    run_item("small1-s0", "Small-1 UNet, mnist-5k, seed 0 (Fig. 6)", "small1", feeds={"spectrum": ("sizes",)})
    from .analysis import second_dataset_cfg
    fm = second_dataset_cfg(cfg, "fmnist")
    run_item("base-fmnist-s0", f"base UNet, Fashion-MNIST {fm.train_per_class or 'all'} per class, seed 0 "
             "(beyond the paper)", "base", dataset="fmnist",
             sets={k: fm[k] for k in ("train_per_class",) if fm[k] != cfg[k]}, feeds={"spectrum": ("fmnist",)})
    bars = {"spectrum": ("spectrum",), "trajectory": ("trajectory",)}  # Fig. 3's error bars
    run_item("base-s1", "base UNet, mnist-5k, seed 1 (error bars)", "base", seed=1, trajectory=True, feeds=bars)
    run_item("base-s2", "base UNet, mnist-5k, seed 2 (error bars)", "base", seed=2, trajectory=True, feeds=bars)
    longer = {"analysis_model": "base", "analysis_epochs": 4 * cfg.analysis_epochs}
    items.append(Item("base-s0-x4", f"base UNet, mnist-5k, seed 0 continued to {4 * cfg.analysis_epochs} epochs "
                      "(trajectory; lowest priority)", [Cmd("trajectory", None, 0, longer)], "base", None, 0,
                      longer, 20))
    return items


def paper_budget_items(cfg) -> list:
    """The Fisher analysis at the paper's budget, in priority order: the attention-free App. D UNet on
    mnist-5k (the architecture ablation), then base and base-resnet on full MNIST for the tier's 200
    epochs (93,800 steps at batch 128, as App. D), then Small-1 and Small-3 there (claim C7)."""
    from .precision import CHECK_STEPS
    e = cfg.analysis_epochs

    def init(key, arch, dataset=None, feeds=()):  # the re-initialised controls of a trajectory (claim C13)
        sets = {"analysis_model": arch}
        return Item(key, f"{arch} UNet at initialisation, {dataset or cfg.dataset}, 5 seeds (trajectory controls)",
                    [Cmd("init_spread", dataset, 0, sets, feeds=feeds)], None, dataset, 0, sets, spectra_t=25)

    def amp_check_item(arch):  # bf16 vs fp32 loss curves for an analysis UNet on full MNIST (precision.py)
        sets = {"analysis_model": arch}
        return Item(f"amp-check-{arch}", f"{arch} UNet, full MNIST: bf16 autocast vs fp32 over 500 training steps "
                    "(the check behind analysis_amp_models)", [Cmd("amp_check", "mnist", 0, sets)], arch, "mnist", 0,
                    sets, steps=3 * CHECK_STEPS)
    resnet, paper = {"spectrum": ("base-resnet",), "tweedie": ("base-resnet",), "trajectory": ("base-resnet",)}, {"spectrum": ("paper-budget",), "tweedie": ("paper-budget",), "trajectory": ("paper-budget",)}
    return [analysis_item(cfg, "base-resnet-s0", f"base UNet without attention (App. D literally), {cfg.dataset}, "
                          "seed 0 (architecture ablation)", "base-resnet", trajectory=True, feeds=resnet),
            Item("vae-mean", "VAE with a per-pixel-mean squared error, beta = 1 and 1e-3 (App. C, claim C6)",
                 [Cmd("vae_mean", feeds=("vae",))], minutes=8),  # the summed form's item took 467 s
            init("init-spread-base-resnet", "base-resnet", feeds=("base-resnet",)),
            init("mnist-init-spread", "base", "mnist", feeds=("paper-budget",)),
            init("mnist-init-spread-base-resnet", "base-resnet", "mnist", feeds=("base-resnet",)),
            analysis_item(cfg, "mnist-base-s0", f"base UNet, full MNIST, {e} epochs, seed 0 (the paper's budget; "
                          "Fig. 1-3, trajectory)", "base", dataset="mnist", trajectory=True, feeds=paper),
            analysis_item(cfg, "mnist-base-resnet-s0", f"base UNet without attention, full MNIST, {e} epochs, "
                          "seed 0", "base-resnet", dataset="mnist", trajectory=True, feeds=resnet),
            amp_check_item("base-resnet"),  # the evidence for the bf16 it already trains in
            amp_check_item("small1"),  # bf16 was 1.55x faster for Small-1 (bench settings); adopted only if this agrees
            analysis_item(cfg, "mnist-small3-s0", f"Small-3 UNet, full MNIST, {e} epochs, seed 0 (Fig. 6)", "small3",
                          dataset="mnist", feeds=paper),
            analysis_item(cfg, "mnist-small1-s0", f"Small-1 UNet, full MNIST, {e} epochs, seed 0 (Fig. 6)", "small1",
                          dataset="mnist", feeds=paper)]


def learned_items(cfg, dataset=None, seed=0) -> list:
    """A learned task 1 (chapter 5): task 1 trained on until learned, then task 2 under each method of
    learned_task1.RUNS in its order; every item resumes from the committed task-1 state (estimates:
    learned_task1.learned_progress)."""
    from .learned_task1 import C8B_PAIR, RUNS
    ds, n = dataset or cfg.dataset, cfg.task1_max_steps
    pair = ("learned-task1", "learned-task1-pair")  # the pair also feeds claim C8b
    out = [Item(f"l1-{ds}-s{seed}-task1", f"task 1 of {ds} trained until learned (at most {n} steps), seed {seed}",
                [Cmd("learned_task1", ds, seed, feeds=pair)], None, ds, seed)]
    for method, lam in RUNS:
        sets = {"lam": lam} if lam is not None else {}
        feeds = pair if (method, lam) in C8B_PAIR else pair[:1]
        out.append(Item(f"l1-{ds}-s{seed}-{method}" + (f"-lam{lam:g}" if lam is not None else ""),
                        f"{method} on task 2 after a learned task 1, {ds}, seed {seed}"
                        + (f", lambda = {lam:g}" if lam is not None else ""),
                        [Cmd("learned_task1", ds, seed, sets, method=method, feeds=feeds)], None,
                        ds, seed, sets))
    return out


def study_items(cfg) -> list:
    """The network study of the continual-learning tier: one joint model per candidate."""
    from .study import CANDIDATES
    return [Item(f"cl-study-{m}", f"joint {m} UNet on {cfg.dataset}, A-FID at {len(cfg.study_steps)} points "
                 "(network study for Table 1)", [Cmd("cl_study", None, 0, {"model": m}, feeds=("table1",))], None, None, 0,
                 {"model": m}, steps=max(cfg.study_steps)) for m in CANDIDATES]


def table1_items(cfg) -> list:
    """Table 1 at this tier, in its priority order: the profile's dataset, seed 0, with all eight methods,
    Rank-1 + GD at the other study.LAMBDAS (the sweep that chooses lambda), the tier's further datasets
    (cl_datasets after the first, at their tier_seeds; cpu: fmnist seed 0), the profile's dataset
    seeds 1 and 2 for the Table-1 methods, then Diag + GD at the other lambdas (the rest of the sweep).
    Blocked until the profile's `model` and `epochs` are the network study's choice (study.choose), and
    the later ones until its `lam` is the sweep's (study.choose_lam), so that no run uses settings that
    were not measured."""
    from . import study
    from .continual import METHODS, TABLE1
    from .runs import cl_item, tier_datasets, tier_seeds
    recs = study.stored_candidates(cfg, cfg.dataset)
    blocked = ""
    if len(recs) < len(study.CANDIDATES):
        blocked = "waits for the network study (cl-study items)"
    else:
        pick = study.choose(recs)
        want = (pick["model"], max(1, round(pick["epochs"])))
        if (cfg.model, cfg.epochs) != want:
            blocked = (f"the study chose model={want[0]}, epochs={want[1]}; set them in the profile "
                       f"(now {cfg.model}, {cfg.epochs})")
    lam_block = blocked
    if not blocked:
        try:
            lam = study.choose_lam(study.sweep(cfg, cfg.dataset))
            if lam != cfg.lam:
                lam_block = f"the lambda sweep chose lam={lam:g}; set it in the profile (now {cfg.lam:g})"
        except ValueError as e:
            lam_block = f"waits for the lambda sweep ({e})"

    def item(ds, seed, m, title, sets=None, why=blocked):  # estimates: runs.continual_progress
        feeds = ("ablations",) if sets or m not in TABLE1 else ("table1",)  # lambda sweep, fine-tuning, rank-k
        return Item(cl_item(ds, seed, m, (sets or {}).get("lam")), title,
                    [Cmd("continual", ds, seed, dict(sets or {}), method=m, feeds=feeds)], None, ds, seed,
                    dict(sets or {}), blocked=why)

    def sweep(m):
        return [item(cfg.dataset, 0, m, f"{m} on {cfg.dataset}, seed 0, lambda = {lam:g} (lambda sweep)",
                     {"lam": lam}) for lam in study.LAMBDAS if lam != cfg.lam]

    out = [item(cfg.dataset, 0, m, f"{m} on {cfg.dataset}, seed 0 (Table 1)") for m in METHODS]
    out += sweep("rank1-gd")
    out += [item(ds, s, m, f"{m} on {ds}, seed {s} (Table 1)", why=lam_block)
            for ds in tier_datasets(cfg)[1:] for s in tier_seeds(cfg, ds) for m in METHODS]
    out += [item(cfg.dataset, s, m, f"{m} on {cfg.dataset}, seed {s} (Table 1)", why=lam_block)
            for s in cfg.seeds if s for m in TABLE1]
    return out + [i for m in study.SWEEP_METHODS if m != "rank1-gd" for i in sweep(m)]


def gpu_items(cfg) -> list:
    """The gpu tier in short steps: each item is one command that fits a ~9-minute call on one
    H100/H200 and stores a committed result; nothing needs FID (the Inception weights may be absent).
    The 35.7M UNet's Fisher spectrum (N = cl_fisher_samples per t) after 200 epochs, training included,
    measured on lent H200s (2026-11-26): 4,000 mnist-5k images (6,400 steps) 5.0 min; 5,000
    Fashion-MNIST images (8,000 steps) ~8.3 min projected from 20.7 steps/s. On a lent H100 the
    mnist-5k training took 502 s (12.7 steps/s) and the whole item ~9.5 min, more than one call
    (seed 2 needed a second call on the warm machine). Run items one at a time: two side by side on
    one H200 ran at 1,490 img/s each against 2,465 alone."""
    cl = {"analysis_model": "cl", "analysis_epochs": 200}
    fm = dict(cl, train_per_class=500)
    spec = lambda ds, seed, sets: [Cmd("spectrum", ds, seed, sets, feeds=("cl-spectrum",))]  # noqa: E731
    return [Item("cl-mnist-5k-s0", "35.7M UNet spectrum, mnist-5k, 200 epochs, seed 0 (chapter 3)",
                 spec("mnist-5k", 0, cl), None, "mnist-5k", 0, cl, minutes=6),
            Item("cl-fmnist-s0", "35.7M UNet spectrum, Fashion-MNIST 500 per class, 200 epochs, seed 0",
                 spec("fmnist", 0, fm), None, "fmnist", 0, fm, minutes=9),
            Item("cl-mnist-5k-s1", "35.7M UNet spectrum, mnist-5k, seed 1 (error bars)",
                 spec("mnist-5k", 1, cl), None, "mnist-5k", 1, cl, minutes=6),
            Item("cl-mnist-5k-s2", "35.7M UNet spectrum, mnist-5k, seed 2 (error bars)",
                 spec("mnist-5k", 2, cl), None, "mnist-5k", 2, cl, minutes=6)]


def all_items(cfg) -> list:
    """Every item of the profile's tier in campaign order: the Fisher chapters' items in progress,
    the network study, then the remaining Fisher items and Table 1 (a short-calls plan, the gpu tier: gpu_items)."""
    if cfg.campaign_plan == "short-calls":
        return gpu_items(cfg)
    fisher = fisher_items(cfg)
    first = [i for i in fisher if i.key not in ("base-s1", "base-s2", "base-s0-x4")]
    rest = [i for i in fisher if i not in first]
    paper = paper_budget_items(cfg)
    fid_item = Item("fid-resize", "FID floors and the task-1 model under both Inception resizes (chapter 5)",
                    [Cmd("fid_resize", feeds=("table1",))], minutes=30)  # ~8,000 Inception images and 200 DDIM samples, one thread
    return (first + study_items(cfg) + rest[:2] + table1_items(cfg) + paper[:-2] + [fid_item] + learned_items(cfg)
            + paper[-2:] + rest[2:])


def command_key(cfg, command) -> tuple:
    """A `python -m rank1lib run ...` command as (experiment, dataset, seed, method, settings other than the
    profile's own for that dataset): two commands with the same key compute the same result."""
    import shlex
    from .profiles import parse_sets
    from .runs import dataset_cfg
    words = shlex.split(command)
    words = words[words.index("run") + 1:]
    exp, flags, sets = words[0], {}, []
    for flag, value in zip(words[1::2], words[2::2]):
        if flag == "--set":
            sets.append(value)
        else:
            flags[flag] = value
    ds = flags.get("--dataset", cfg.dataset)
    base = dataset_cfg(load_profile(cfg.name, dataset=ds), ds)  # what a run on ds derives by itself
    own = {k: v for k, v in parse_sets(sets).items() if v != base[k]}
    return (exp, ds, int(flags.get("--seed", 0)), flags.get("--method"),
            tuple(sorted((k, float(v) if isinstance(v, (int, float)) else str(v)) for k, v in own.items())))


def item_for(cfg, command):
    """The campaign item of the profile's tier that runs `command`, or None."""
    key = command_key(cfg, command)
    return next((it for it in all_items(cfg) for c in it.cmds if command_key(cfg, c.text(cfg.name)) == key), None)


def item_cfg(cfg, item) -> Config:
    return load_profile(cfg.name, **item.sets, **({"dataset": item.dataset} if item.dataset else {}))


def item_status(cfg, item) -> dict:
    """{'state': done|partial|pending|blocked, 'missing': [...], 'step', 'steps', 'eta_s'} from the store
    alone: each command's experiment is asked for its stored result (never computed here), the first
    one for its progress (registry: progress=)."""
    from .registry import load_all
    exps = load_all()
    missing = []
    for c in item.cmds:
        try:
            c.load(cfg.name)
        except store.ResultPending:
            missing.append(c.experiment)
    first = item.cmds[0]
    report = exps[first.experiment].progress
    icfg = item_cfg(cfg, item)
    prog = report(icfg, icfg.dataset, first.seed, first.method) if report and missing else None
    out = {"missing": missing, "step": prog["step"] if prog else 0, "steps": prog["steps"] if prog else 0}
    if not missing:
        eta = 0.0
    elif item.minutes:
        eta = item.minutes * 60
    else:
        eta = prog["eta_s"] if prog else item.steps * sec_per_step(item.sets.get("model") or item.arch or cfg.model)
        eta += item.spectra_t * SEC_PER_SPECTRUM_T_1T + (SETUP_S if item.spectra_t or not prog else 0.0)
    out["eta_s"] = eta
    out["state"] = "done" if not missing else ("partial" if out["step"] or len(missing) < len(item.cmds)
                                               else "pending")
    if missing and item.blocked:
        out["state"] = "blocked"
    return out


def _fmt_s(s):
    return f"{s / 3600:.1f} h" if s >= 3600 else f"{s / 60:.0f} min"


def print_status(cfg, items, statuses):
    print(f"campaign for profile {cfg.name!r} ({len(items)} items, priority order):")
    w = max(len(it.key) for it in items)
    for i, (it, st) in enumerate(zip(items, statuses), 1):
        prog = f" step {st['step']}/{st['steps']}," if st["steps"] and st["state"] != "done" else ""
        unit = "on the tier's device (measured)" if it.minutes else "at one thread"
        eta = f" about {_fmt_s(st['eta_s'])} left {unit}" if st["state"] != "done" else ""
        miss = f" [missing: {', '.join(st['missing'])}]" if st["missing"] else ""
        miss += f" [blocked: {it.blocked}]" if st["state"] == "blocked" else ""
        print(f"  {i:>2}. {it.key:<{w}} {st['state']:<8}{prog}{eta}{miss}  {it.title}")
    left = sum(s["eta_s"] for s in statuses if s["state"] != "blocked")
    blocked = sum(s["eta_s"] for s in statuses if s["state"] == "blocked")
    unit = "on the tier's device" if all(it.minutes for it in items) else "of one-thread work"
    print(f"  total left: about {_fmt_s(left)} {unit}"
          + (f" (+ about {_fmt_s(blocked)} blocked, at the profile's current settings)" if blocked else ""))
    if slow_without_bf16(cfg, items):
        print("  note: this CPU has no native bf16, so the bf16 settings train in fp32 here, about 2.5-3x slower than "
              "on the Xeon whose rates are the reference: an item without a rate measured here takes longer than "
              "its estimate above (README, 'What it costs')")


def slow_without_bf16(cfg, items) -> bool:
    """Whether the profile trains in bf16 where it can, this machine is a CPU without it, and some item is
    estimated at the one-thread reference rates (not in measured device minutes)."""
    wants = "on" in (cfg.amp, cfg.cl_amp) or bool(cfg.analysis_amp_models)
    device = pick_device()
    return (wants and device.type == "cpu" and not native_bf16(device)
            and not all(it.minutes for it in items))


def _ledger_path(cfg):
    return store.results_root() / cfg.name / "campaign.json"


def _log_ledger(cfg, entry):
    """Append one item session (wall time, threads, load) to book/results/<profile>/campaign.json."""
    from filelock import FileLock
    p = _ledger_path(cfg)
    p.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(p) + ".lock"):
        rows = json.loads(p.read_text()) if p.exists() else []
        rows.append(entry)
        store.atomic_write(p, lambda f: Path(f).write_text(json.dumps(rows, indent=1)))


def wall_by_item(cfg) -> dict:
    """{item: wall seconds summed over every sitting that worked on it} from the campaign ledger."""
    p = _ledger_path(cfg)
    out = {}
    for row in (json.loads(p.read_text()) if p.exists() else []):
        out[row["item"]] = out.get(row["item"], 0.0) + float(row["wall_s"])
    return out


def _die_with_parent():
    """Child processes get SIGTERM when the campaign dies (Linux prctl PR_SET_PDEATHSIG)."""
    try:
        import ctypes
        ctypes.CDLL("libc.so.6").prctl(1, signal.SIGTERM)
    except OSError:
        pass


def run_item(cfg, item, threads, deadline, log_dir, device=None):
    """Run an item's commands as child processes (on GPU `device` when given: CUDA_VISIBLE_DEVICES);
    returns 'done' | 'deadline' | 'failed: ...'."""
    import psutil
    env = dict(os.environ, RANK1_DEADLINE=str(deadline), TQDM_MININTERVAL="30")
    if device is not None and device != "cpu":
        env["CUDA_VISIBLE_DEVICES"] = str(device)
    log = Path(log_dir) / f"{cfg.name}-{item.key}.log"
    t0, load0 = time.time(), os.getloadavg()[0]
    result = "done"
    with open(log, "a") as f:
        for c in item.catch_up + item.cmds:
            argv = [sys.executable, "-m", "rank1lib", "--threads", str(threads)] + c.argv(cfg.name)
            f.write(f"\n$ {' '.join(argv[1:])}  ({time.strftime('%Y-%m-%d %H:%M:%S')})\n")
            f.flush()
            # own session: a terminal Ctrl-C reaches only the campaign, which forwards exactly one SIGINT
            proc = subprocess.Popen(argv, stdout=f, stderr=subprocess.STDOUT, env=env, cwd=str(store.REPO),
                                    preexec_fn=_die_with_parent, start_new_session=True)
            while proc.poll() is None:
                if _STOP.is_set() or time.time() > deadline + 30:
                    proc.send_signal(signal.SIGINT)
                    try:
                        proc.wait(60)
                    except subprocess.TimeoutExpired:
                        proc.kill()
                    result = "stopped" if _STOP.is_set() else "deadline"
                    break
                time.sleep(2)
            if result in ("deadline", "stopped"):
                break
            if proc.returncode == EXIT_DEADLINE:
                result = "deadline"
                break
            if proc.returncode:
                result = f"failed (exit {proc.returncode}; see {log})"
                break
    entry = {"item": item.key, "result": result, "start": time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t0)),
             "wall_s": round(time.time() - t0, 1), "threads": threads, "load_start": round(load0, 2),
             "load_end": round(os.getloadavg()[0], 2), "cpu_count": psutil.cpu_count(), "cpu": store.cpu_model(),
             "device": device, "commit": store.git_commit()}
    _log_ledger(cfg, entry)
    return result, entry


def finished_state(cfg, items, statuses) -> list:
    """(path, kind) of the committed training state that finished items no longer need, as each item's
    first experiment names it (registry: leftovers=), for groups whose items are all done. Partial and
    pending items keep everything."""
    from .registry import load_all
    exps, groups = load_all(), {}
    for it, st in zip(items, statuses):
        c = it.cmds[0]
        name = exps[c.experiment].leftovers
        if name is None:
            continue
        icfg = item_cfg(cfg, it)
        key, paths = name(icfg, icfg.dataset, c.seed, c.method)
        if key is None:
            continue
        g = groups.setdefault(key, {"done": [], "paths": paths})
        g["done"].append(st["state"] == "done")
    return [p for g in groups.values() if all(g["done"]) for p in g["paths"]]


def prune_finished(cfg, items=None, dry_run=False) -> list:
    """Remove finished_state (or, dry_run, only list it); returns [(path, kind, bytes)]."""
    import shutil
    items = all_items(cfg) if items is None else items
    rows = []
    for path, kind in finished_state(cfg, items, [item_status(cfg, i) for i in items]):
        size = sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) if path.is_dir() else path.stat().st_size
        if kind == "optimiser":
            size = (path / "last" / "trainer.pt").stat().st_size
        if not dry_run:
            if kind == "optimiser":
                drop_optimiser(path)
                size -= (path / "last" / "trainer.pt").stat().st_size
            elif path.is_dir():
                shutil.rmtree(path)
            else:
                path.unlink()
        rows.append((path, kind, size))
    return rows


def select_items(items, only=None, skip=None) -> list:
    """Items whose key matches a pattern of `only` (all if None) and none of `skip` (shell globs,
    e.g. 'cl-fmnist-s0-*', '*-gd*'); a pattern that matches no item is an error (a typo runs nothing)."""
    keys = [i.key for i in items]
    for pat in (only or []) + (skip or []):
        if not fnmatch.filter(keys, pat):
            raise ValueError(f"no campaign item matches {pat!r} (see campaign --dry-run for the item names)")
    hit = lambda key, pats: any(fnmatch.fnmatchcase(key, p) for p in pats)  # noqa: E731
    return [i for i in items if (not only or hit(i.key, only)) and not hit(i.key, skip or [])]


def hours_until(clock, now=None):
    """Hours from `now` (default: the local time) to the next HH:MM on the local clock; one-line error
    for anything else. A time already past today means tomorrow, so `--until 01:15` works at 23:30."""
    import datetime as dt
    try:
        hh, mm = (int(x) for x in clock.split(":"))
        target_time = dt.time(hh, mm)
    except ValueError:
        raise ValueError(f"--until takes a local clock time HH:MM (e.g. 01:15), not {clock!r}") from None
    now = now or dt.datetime.now()
    target = dt.datetime.combine(now.date(), target_time)
    if target <= now:
        target += dt.timedelta(days=1)
    return (target - now).total_seconds() / 3600


def campaign(profile, hours=1.0, jobs=2, threads=1, dry_run=False, only=None, log_dir=None, devices=None,
             skip=None):
    """Run pending items (priority order) on `jobs` workers of `threads` threads until `hours` pass;
    with `devices` (e.g. ["0", "1", "2", "3"]) one worker per GPU, each item's processes on its own.
    `only` / `skip`: shell globs over item keys (select_items)."""
    if devices:
        jobs = len(devices)
    from concurrent.futures import ThreadPoolExecutor
    from filelock import FileLock, Timeout
    cfg = load_profile(profile)
    items = select_items(all_items(cfg), only, skip)
    statuses = [item_status(cfg, i) for i in items]
    print_status(cfg, items, statuses)
    todo = [i for i, s in zip(items, statuses) if s["state"] not in ("done", "blocked")]
    if dry_run or not todo:
        if not dry_run:
            prune_finished(cfg)
        print("dry run: nothing started" if dry_run else "nothing to do: every item is done")
        return 0
    deadline = time.time() + hours * 3600
    log_dir = Path(log_dir or store.REPO / "_build" / "campaign")
    log_dir.mkdir(parents=True, exist_ok=True)
    where = f" on devices {', '.join(devices)}" if devices else ""
    print(f"running on {jobs} worker(s) x {threads} thread(s){where} until "
          f"{time.strftime('%H:%M', time.localtime(deadline))}; logs in {log_dir}", flush=True)
    queue = list(todo)

    def worker(w):
        while queue and time.time() < deadline - 60 and not _STOP.is_set():
            item = queue.pop(0)
            if item.minutes and time.time() + item.minutes * 60 > deadline:
                _say(f"[w{w}] {item.key}: takes about {item.minutes:g} min, more than is left; not started")
                continue
            lock = FileLock(str(store.results_root() / cfg.name / f"item-{item.key}.lock"))
            try:
                lock.acquire(timeout=0)
            except Timeout:
                _say(f"[w{w}] {item.key}: another campaign holds it, skipped")
                continue
            try:
                _say(f"[w{w}] {item.key}: started ({item.title})")
                result, e = run_item(cfg, item, threads, deadline, log_dir, devices[w] if devices else None)
                st = item_status(cfg, item)
                prog = f", step {st['step']}/{st['steps']}" if st["steps"] else ""
                _say(f"[w{w}] {item.key}: {result} after {_fmt_s(e['wall_s'])}; now {st['state']}{prog}")
            finally:
                lock.release()

    (store.results_root() / cfg.name).mkdir(parents=True, exist_ok=True)
    _STOP.clear()
    on_signal = lambda signum, frame: (_STOP.set(), print("stopping: items save a checkpoint and end", flush=True))  # noqa: E731
    saved = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        with ThreadPoolExecutor(jobs) as ex:
            list(ex.map(worker, range(jobs)))
    finally:
        for sig, h in saved.items():
            signal.signal(sig, h)
    print_status(cfg, items, [item_status(cfg, i) for i in items])
    freed = prune_finished(cfg)  # finished items' state leaves the tree before it is committed
    if freed:
        print(f"pruned {len(freed)} pieces of finished items' state ({sum(r[2] for r in freed) / 2**20:.1f} MiB)")
    return 0
