"""How a tier's results were made, read from the store: the campaign ledger (every sitting of every
item: wall time, threads, load, machine, commit) and each stored result's own provenance (device,
commit, date, wall time). The book's "How these results were made" page is built from these."""
import json
from collections import defaultdict

from . import store


def campaign_rows(profile) -> list:
    """The campaign ledger of a profile (book/results/<profile>/campaign.json), oldest first; [] if none."""
    p = store.results_root() / profile / "campaign.json"
    return json.loads(p.read_text()) if p.exists() else []


def machine(row) -> str:
    """A ledger row's machine: CPU model and cores (rows before the CPU was recorded say 'CPU')."""
    if row.get("device") not in (None, "cpu"):
        return f"GPU {row['device']}"
    return f"{row.get('cpu') or 'CPU'}, {row.get('cpu_count', '?')} cores"


def sittings(rows) -> list:
    """One row per campaign sitting (ledger rows of one calendar day and commit), oldest first:
    items worked on, wall hours summed over items, machines, commit. A '+dirty' mark does not split a
    sitting: a sitting is one day's work from one commit, uncommitted edits included."""
    out = defaultdict(lambda: {"items": set(), "wall_h": 0.0, "machines": set(), "finished": 0})
    for r in rows:
        s = out[(r["start"][:10], r.get("commit", "?").removesuffix("+dirty"))]
        s["items"].add(r["item"])
        s["wall_h"] += r["wall_s"] / 3600
        s["machines"].add(machine(r))
        s["finished"] += r["result"] == "done"
    return [{"date": d, "commit": c, "items": len(s["items"]), "finished": s["finished"],
             "item-hours": round(s["wall_h"], 2), "machines": "; ".join(sorted(s["machines"]))}
            for (d, c), s in sorted(out.items())]


def items(rows) -> list:
    """One row per campaign item: sittings, wall hours in all, last outcome, machines."""
    out = {}
    for r in rows:
        s = out.setdefault(r["item"], {"item": r["item"], "sittings": 0, "wall_h": 0.0, "machines": set(),
                                       "last": "", "last_date": ""})
        s["sittings"] += 1
        s["wall_h"] += r["wall_s"] / 3600
        s["machines"].add(machine(r))
        s["last"], s["last_date"] = r["result"].split(" (")[0], r["start"][:16]
    return [dict(s, wall_h=round(s["wall_h"], 2), machines="; ".join(sorted(s["machines"])))
            for s in out.values()]


def results(profile) -> list:
    """One row per stored result of a profile with its provenance (device, commit, date, wall seconds)."""
    root = store.results_root() / profile
    out = []
    for f in sorted(root.glob("*/*.json")):
        try:
            d = json.loads(f.read_text())
        except (OSError, ValueError):
            continue
        if not isinstance(d, dict) or "provenance" not in d:
            continue
        p = d["provenance"]
        out.append({"experiment": d.get("experiment", f.parent.name), "name": d.get("name", f.stem),
                    "device": p.get("device", "?"), "commit": p.get("commit", "?"), "date": p.get("date", "?")[:16],
                    "wall_s": round(p["wall_s"], 1) if p.get("wall_s") is not None else None,
                    "threads": p.get("threads")})
    return out


def hours_by(rows, key) -> dict:
    """{value of `key`: wall hours} over result rows (rows without a wall time count 0)."""
    out = defaultdict(float)
    for r in rows:
        out[r[key]] += (r["wall_s"] or 0.0) / 3600
    return dict(out)


def hours_figure(result_rows, ledger_rows):
    """Left: compute hours of the stored results per experiment, split by device. Right: campaign
    item-hours per sitting (the ledger's wall times; two workers make two item-hours an hour)."""
    import matplotlib.pyplot as plt
    import numpy as np
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4.6), gridspec_kw={"width_ratios": [1.3, 1]},
                                  layout="constrained")
    exps = sorted({r["experiment"] for r in result_rows})
    devs = sorted({r["device"] for r in result_rows})
    left = np.zeros(len(exps))
    for dev in devs:
        h = np.array([sum((r["wall_s"] or 0) / 3600 for r in result_rows if r["experiment"] == e and r["device"] == dev)
                      for e in exps])
        a.barh(exps, h, left=left, label=dev)
        left += h
    a.set_xlabel("hours (wall time stored with each result)")
    a.legend(fontsize=7, loc="upper left", bbox_to_anchor=(0, -0.2), ncol=2, frameon=False)
    a.set_title("stored results by experiment and device", fontsize=10)
    s = sittings(ledger_rows)
    b.bar(range(len(s)), [x["item-hours"] for x in s], color="0.4")
    b.set_xticks(range(len(s)), [x["date"][5:] for x in s], rotation=90, fontsize=7)
    b.set_ylabel("item-hours")
    b.set_title("campaign sittings (date, commit)", fontsize=10)
    return fig
