"""The provenance page's tables, from a hand-written campaign ledger and results saved through the store."""
import json
import subprocess

from rank1lib import provenance, store


def _row(item, start, wall_s, result="done", commit="abc", cpu="AMD EPYC", device=None):
    return {"item": item, "result": result, "start": start, "wall_s": wall_s, "threads": 1, "load_start": 1.0,
            "load_end": 2.0, "cpu_count": 2, "cpu": cpu, "device": device, "commit": commit}


def test_sittings_and_items_sum_the_ledger(tmp_store):
    rows = [_row("a", "2026-12-01 10:00:00", 3600, "deadline"), _row("b", "2026-12-01 10:00:05", 1800),
            _row("a", "2026-12-02 09:00:00", 7200, commit="def"),
            _row("g", "2026-12-02 09:30:00", 360, device="0")]
    p = store.results_root() / "cpu" / "campaign.json"
    p.parent.mkdir(parents=True)
    p.write_text(json.dumps(rows))
    assert provenance.campaign_rows("cpu") == rows and provenance.campaign_rows("gpu") == []
    s = provenance.sittings(rows)
    assert [(x["date"], x["commit"], x["items"], x["finished"], x["item-hours"]) for x in s] == [
        ("2026-12-01", "abc", 2, 1, 1.5), ("2026-12-02", "abc", 1, 1, 0.1), ("2026-12-02", "def", 1, 1, 2.0)]
    by = {r["item"]: r for r in provenance.items(rows)}
    assert (by["a"]["sittings"], by["a"]["wall_h"], by["a"]["last"]) == (2, 3.0, "done")
    assert by["g"]["machines"] == "GPU 0" and by["b"]["machines"] == "AMD EPYC, 2 cores"


def test_results_carry_each_records_provenance(tmp_store):
    store.save("ci", "spectrum", "x-s0", {"k": 1}, {"v": 1}, wall_s=7200.0)
    store.save("ci", "vae", "y", {"k": 2}, {"v": 2}, wall_s=None)
    rows = provenance.results("ci")
    assert [(r["experiment"], r["name"], r["wall_s"]) for r in rows] == [("spectrum", "x-s0", 7200.0), ("vae", "y", None)]
    assert rows[0]["commit"] == store.git_commit() and rows[0]["device"] == store.device_name()
    assert provenance.hours_by(rows, "experiment") == {"spectrum": 2.0, "vae": 0.0}
    fig = provenance.hours_figure(rows, [_row("a", "2026-12-01 10:00:00", 3600)])
    assert len(fig.axes) == 2


def test_commit_is_dirty_for_changed_code_not_for_changed_results(tmp_path, monkeypatch):
    """A campaign's own results (book/results) leave the commit clean; an edited tracked source file marks it."""
    def git(*a):
        return subprocess.run(["git", "-C", str(tmp_path), "-c", "user.email=t@t", "-c", "user.name=t", *a],
                              capture_output=True, text=True, check=True).stdout.strip()
    (tmp_path / "book" / "results").mkdir(parents=True)
    (tmp_path / "book" / "results" / "r.json").write_text("{}")
    (tmp_path / "code.py").write_text("x = 1\n")
    git("init", "-q")
    git("add", ".")
    git("commit", "-qm", "c")
    monkeypatch.setattr(store, "REPO", tmp_path)
    monkeypatch.setattr(store, "CHECKOUT", True)
    head = git("rev-parse", "--short", "HEAD")
    assert store.git_commit() == head
    (tmp_path / "book" / "results" / "r.json").write_text('{"v": 2}')
    assert store.git_commit() == head
    (tmp_path / "code.py").write_text("x = 2\n")
    assert store.git_commit() == head + "+dirty"
