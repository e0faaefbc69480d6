"""Command line: python -m rank1lib [--threads N] {list, run, fetch, bench, campaign, claims, status}."""
import argparse
import json
import os
import sys

from . import bench, data, store
from .profiles import PROFILES, ConfigError, check_seed, load_profile, parse_sets
from .registry import load_all

def cmd_list(_args):
    exps = load_all()
    print("experiments:")
    for k, fn in exps.items():
        print(f"  {k:<18} {fn.help}")
    print("profiles:")
    for p in PROFILES:
        try:
            print(f"  {p:<18} {load_profile(p).description}")
        except ConfigError as e:
            print(f"  {p:<18} unusable: {e}")
    print("datasets:")
    for d in data.DATASETS:
        try:
            state = "available" if data.available(d) else "missing: " + data.SPECS[d].fetch
        except OSError as e:
            state = f"unreadable ({e})"
        print(f"  {d:<18} {state}")
    print("results in store:")
    root = store.results_root()
    found = sorted(root.glob("*/*/*.json")) if root.exists() else []
    for p in found:
        print(f"  {p.relative_to(root)}")
    if not found:
        print("  (none)")


# Experiments whose training runs data-parallel under `torchrun` / `accelerate launch` (distributed.py);
# mu, c*, the diagonal Fisher and DDIM samples are split over the ranks; the rest runs whole on every rank.
DATA_PARALLEL = ("train", "spectrum", "tweedie", "continual")


def cmd_run(args):
    store.allow_cli_only(True)
    exps = load_all()
    if args.experiment not in exps:
        raise ConfigError(f"unknown experiment {args.experiment!r}; valid: {', '.join(exps)}")
    sets = parse_sets(args.set)
    if args.dataset:
        sets["dataset"] = args.dataset
    cfg = load_profile(args.profile, **sets)
    check_seed(args.seed)
    from .train import state_root
    store.check_writable(store.results_root())
    store.check_writable(state_root(cfg))
    from . import distributed
    if distributed.active() and args.experiment not in DATA_PARALLEL:
        raise ConfigError(f"experiment {args.experiment!r} does not run data-parallel yet (only "
                          f"{', '.join(DATA_PARALLEL)}); run it as one process")
    kw = {"method": args.method} if args.method else {}
    rec = exps[args.experiment](cfg, cfg.dataset, args.seed, **kw)
    recs = rec if isinstance(rec, list) else [rec]
    for r in recs if distributed.is_main() else ():
        path = store.result_dir(r["profile"], r["experiment"]) / f"{r['name']}.json"
        print(f"{r['experiment']}/{r['name']}: {path} ({r['provenance']['device']}, "
              f"{r['provenance']['wall_s'] or 0:.1f} s)")


def cmd_fetch(args):
    data.check_name(args.dataset)
    ds = data.load_images(args.dataset, download=True)
    print(f"{args.dataset}: {len(ds.train_x)} train / {len(ds.test_x)} test images from {ds.source}")


def cmd_bench(args):
    from . import bench
    if args.name not in bench.load_all():
        raise ConfigError(f"unknown benchmark {args.name!r}; valid: {', '.join(bench.BENCHES)}")
    cfg = load_profile(args.profile, **parse_sets(args.set))
    store.allow_cli_only(True)
    keep = args.store or args.replace
    out = None
    for name in (args.name,) + (() if args.alone else bench.COMPANIONS.get(args.name, ())):
        rec = bench.stored_or_run(name, cfg, force=args.force, replace=args.replace) if keep else None
        rows, summary = (rec.values["rows"], rec.values["summary"]) if rec else bench.measured(name, cfg)
        if summary.get("contended"):
            print(f"warning: other processes were busy during benchmark {name!r}; its times are not "
                  "quiet-machine times", file=sys.stderr)
        if out is not None:
            print(f"\n{name}:")
            out[name] = summary
        bench.print_table(rows)
        out = summary if out is None else out
    if args.json:
        print(json.dumps(out))


def cmd_campaign(args):
    from .campaign import campaign, hours_until
    store.allow_cli_only(True)
    if args.prune:
        from .campaign import prune_finished
        from .profiles import load_profile
        rows = prune_finished(load_profile(args.profile), dry_run=args.dry_run)
        for path, kind, size in rows:
            print(f"{'would remove' if args.dry_run else 'removed'} {kind:<27} {size / 2**20:7.1f} MiB  "
                  f"{path.relative_to(store.REPO) if path.is_relative_to(store.REPO) else path}")
        print(f"{len(rows)} pieces, {sum(r[2] for r in rows) / 2**20:.1f} MiB"
              + (" (dry run: nothing removed)" if args.dry_run else ""))
        return 0
    hours = (hours_until(args.until) if args.until is not None
             else args.minutes / 60 if args.minutes is not None else args.hours)
    return campaign(args.profile, hours=hours, jobs=args.jobs, threads=args.worker_threads,
                    dry_run=args.dry_run, only=args.only, skip=args.skip, devices=args.devices,
                    log_dir=args.log_dir)


def cmd_claims(args):
    from . import claims
    rows = claims.ledger(args.profile)
    if args.readme:
        changed = claims.write_readme(rows, args.readme)
        print(f"{args.readme}: claims table {'rewritten' if changed else 'already current'}")
        return
    if not args.json:
        for r in rows:
            print(f"{r['id']:<4} {r['verdict']:<13} {r['where']:<10} {r['ours'] or r.get('why_pending', '')}")
        print(f"profile {args.profile}: {claims.summary_line(rows)}")
    else:
        print(json.dumps({"profile": args.profile, "claims": rows}, default=str))


def cmd_status(args):
    from . import status
    rows = status.rows(args.profile)
    if args.json:
        print(json.dumps({"profile": args.profile, "artefacts": rows}))
        return
    for r in rows:
        print(f"{r['paper']:<20} {r['what'][:48]:<48} {r['status']}")
        if r["command"]:
            print(f"{'':<20} -> {r['command']}")


def set_threads(n):
    """The one place that sets torch's thread count (0 = torch's default: all cores)."""
    if n:
        import torch
        torch.set_num_threads(n)
        torch.set_num_interop_threads(1)


def parser():
    p = argparse.ArgumentParser(prog="python -m rank1lib", description=__doc__)
    p.add_argument("--threads", type=int, default=int(os.environ.get("RANK1_THREADS", 0)),
                   help="torch threads for this process (0 = all cores)")
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    sub = p.add_subparsers(dest="cmd", required=True)
    sub.add_parser("list", help="experiments, profiles, datasets and stored results")
    r = sub.add_parser("run", help="run an experiment and store its results")
    r.add_argument("experiment")
    r.add_argument("--profile", default="quick")
    r.add_argument("--dataset")
    r.add_argument("--seed", type=int, default=0)
    r.add_argument("--method")
    r.add_argument("--set", action="append", metavar="KEY=VALUE", help="override one profile value")
    f = sub.add_parser("fetch", help="make a dataset available locally (downloads where allowed)")
    f.add_argument("dataset")
    b = sub.add_parser("bench", help="benchmark: prints a table, and a JSON line with --json")
    b.add_argument("name")
    b.add_argument("--profile", default="ci")
    b.add_argument("--set", action="append", metavar="KEY=VALUE")
    b.add_argument("--json", action="store_true")
    b.add_argument("--store", action="store_true", help="keep the result in the store (the book's performance page reads it)")
    b.add_argument("--replace", action="store_true",
                   help="measure again and overwrite the stored result once measured (implies --store)")
    b.add_argument("--force", action="store_true", help="store it even if the machine was busy (marked contended)")
    b.add_argument("--alone", action="store_true",
                   help="only this benchmark, not the ones that follow it (fisher: peers)")
    st = sub.add_parser("status", help="which paper figures and tables a profile's store holds")
    st.add_argument("--profile", default="cpu")
    st.add_argument("--json", action="store_true")
    k = sub.add_parser("claims", help="the paper's claims with verdicts from stored results")
    k.add_argument("--profile", default="cpu")
    k.add_argument("--json", action="store_true")
    k.add_argument("--readme", metavar="PATH", help="write the claims table into this README's claims block")
    c = sub.add_parser("campaign", help="build a profile's committed tier, resumably, within a time budget")
    c.add_argument("--profile", default="cpu")
    when = c.add_mutually_exclusive_group()
    when.add_argument("--hours", type=float, default=1.0, help="stop cleanly (checkpoints) after this long")
    when.add_argument("--minutes", type=float, help="the same in minutes (e.g. 9 for one short GPU call); "
                      "items whose measured time does not fit are not started")
    when.add_argument("--until", metavar="HH:MM", help="stop cleanly at this local clock time (the next one: "
                      "01:15 given at 23:30 is tomorrow's); lets several campaigns share one end")
    c.add_argument("--jobs", type=int, default=2, help="items run at once (2 x 1 thread measured fastest on 2 cores)")
    c.add_argument("--worker-threads", type=int, default=1, help="torch threads per item process")
    c.add_argument("--dry-run", action="store_true", help="only list the items with status and estimates")
    c.add_argument("--prune", action="store_true", help="remove finished items' training state that no result "
                   "needs (snapshots, Adam, task statistics; final weights stay); with --dry-run only list it")
    c.add_argument("--only", nargs="+", action="extend", metavar="ITEM", help="run only these items (names or shell globs, "
                   "e.g. 'cl-fmnist-s0-*')")
    c.add_argument("--skip", nargs="+", action="extend", metavar="ITEM", help="leave out these items (names or globs; e.g. "
                   "'*-gd*' keeps the generative-distillation runs for a GPU sitting)")
    c.add_argument("--log-dir", metavar="DIR", help="item logs (default _build/campaign in the code's checkout; "
                   "a worktree's logs go with it)")
    c.add_argument("--devices", type=lambda s: [d.strip() for d in s.split(",") if d.strip()], metavar="0,1,...",
                   help="one worker per GPU (CUDA_VISIBLE_DEVICES per item); overrides --jobs")
    return p


def main(argv=None):
    args = parser().parse_args(argv)
    from .train import DeadlineReached, NonFiniteLoss
    set_threads(args.threads)
    try:
        rc = {"list": cmd_list, "run": cmd_run, "fetch": cmd_fetch, "bench": cmd_bench,
              "campaign": cmd_campaign, "claims": cmd_claims,
              "status": cmd_status}[args.cmd](args)
    except DeadlineReached as e:
        print(f"stopped: {e}", file=sys.stderr)
        return 3
    except KeyboardInterrupt:
        print("interrupted: rerun the same command to resume from the last checkpoint", file=sys.stderr)
        return 130
    except ModuleNotFoundError as e:
        if args.debug or os.environ.get("RANK1_DEBUG"):
            raise
        print(f"error: module {e.name!r} is missing: the experiments need pip install 'rank1lib[repro]'",
              file=sys.stderr)
        return 2
    except (ConfigError, data.DataMissing, store.ResultPending, NonFiniteLoss, ValueError, OSError,
            bench.Contended) as e:
        if args.debug or os.environ.get("RANK1_DEBUG"):
            raise
        print(f"error: {e}", file=sys.stderr)
        return 2
    return rc or 0


if __name__ == "__main__":
    sys.exit(main())
