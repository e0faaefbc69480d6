"""The landing page's status table and the commands printed for pending results."""
import shlex

import pytest

from rank1lib import analysis, status, store
from rank1lib.__main__ import parser
from rank1lib.book import with_status
from rank1lib.profiles import load_profile, parse_sets, reading


def test_status_follows_the_store(tmp_store):
    """An empty store: every artefact of the tier is pending with a command, the 35.7M UNet's (a gpu item)
    is not in it; storing App. C's two results (the VAE item and its per-pixel-mean form) turns that row,
    and only it, into a smoke test."""
    before = {r["what"]: r for r in status.rows("ci")}
    outside = {k for k, r in before.items() if r["status"] == "not in the ci tier"}
    assert outside == {next(k for k in before if "35.7M" in k)}
    assert all(r["status"] == "pending" and r["command"].startswith("python -m rank1lib run ")
               for k, r in before.items() if k not in outside)
    analysis.vae_share(load_profile("ci"), progress=False)
    vae = next(k for k in before if "VAE" in k)
    assert status.rows("ci")[[r["what"] for r in status.rows("ci")].index(vae)]["status"] == "partial (1/2 results)"
    analysis.vae_share_mean(load_profile("ci"), progress=False)
    after = {r["what"]: r for r in status.rows("ci")}
    assert after[vae]["status"] == "smoke test" and after[vae]["command"] is None  # ci is a toy profile
    assert [k for k in after if after[k] != before[k]] == [vae]


def test_landing_page_gets_the_table_in_place_of_its_placeholder(tmp_store):
    text = "# Book\n\n## Status\n\n<!-- status-table -->\nplaceholder that\nspans lines.\n\n## Next\n"
    out = with_status(text, "ci")
    assert "placeholder" not in out and "| paper | what | chapter | claims |" in out and out.endswith("## Next\n")
    assert "{doc}`03_fisher_spectrum`" in out
    assert with_status("no marker", "ci") == "no marker"


@pytest.mark.parametrize("make_cfg", [
    lambda: analysis.second_dataset_cfg(load_profile("cpu"), "fmnist"),      # train_per_class=400
    lambda: load_profile("cpu", analysis_model="small1"),
    lambda: load_profile("cpu", fisher_samples=64, fisher_timesteps=[100, 500]),
])
def test_pending_command_recomputes_exactly_the_missing_result(make_cfg, tmp_store):
    """The command a pending note prints, parsed by the CLI, gives the same configuration."""
    cfg = make_cfg()
    with pytest.raises(store.ResultPending) as e:
        analysis.spectrum(reading(cfg), progress=False)
    argv = shlex.split(e.value.command)[3:]  # after "python -m rank1lib"
    args = parser().parse_args(argv)
    sets = parse_sets(args.set) | ({"dataset": args.dataset} if args.dataset else {})
    assert dict(load_profile(args.profile, **sets)) == dict(cfg)


def _canonical(command, cfg):
    from rank1lib.campaign import command_key
    return command_key(cfg, command)


def test_status_asks_only_for_what_the_campaign_schedules(tmp_store):
    """Every result a status row needs at the cpu tier is computed by a campaign item's command."""
    from rank1lib import campaign, status
    from rank1lib.data import DataMissing
    cfg = load_profile("cpu")
    scheduled = {_canonical(c.text("cpu"), cfg) for it in campaign.all_items(cfg) for c in it.cmds}
    asked = []
    for a in status.ARTEFACTS:
        for call in status._needs(a.needs, cfg):
            try:
                call()
            except store.ResultPending as e:
                asked.append((a.needs, e.command))
            except DataMissing:
                pytest.skip("needs the tier's datasets (make data)")
    assert len(asked) > 30  # an empty store: every result is pending
    missing = [(need, cmd) for need, cmd in asked if _canonical(cmd, cfg) not in scheduled]
    assert missing == []


def test_every_artefact_is_fed_by_a_tier_and_every_feed_is_an_artefact():
    """The campaign's commands name the artefacts they feed: each name is a status row, and each row is
    fed by the cpu tier's or the gpu tier's campaign (else the landing page would list a row nothing fills)."""
    from rank1lib import campaign, status
    keys = {a.needs for a in status.ARTEFACTS}
    fed = {}
    for profile in ("cpu", "gpu"):
        for it in campaign.all_items(load_profile(profile)):
            for c in it.cmds:
                assert set(c.feeds) <= keys, (it.key, c.feeds)
                for k in c.feeds:
                    fed.setdefault(k, set()).add(profile)
    assert set(fed) == keys
    assert fed["cl-spectrum"] == {"gpu"} and fed["table1"] == {"cpu"}


def test_every_claim_of_the_ledger_names_the_results_it_is_judged_on():
    """Each status row lists the ledger's claims judged on its results; together they cover every claim,
    and no row names a claim the ledger does not have."""
    from rank1lib import status
    from rank1lib.claims import CLAIMS
    named = {c for a in status.ARTEFACTS for c in a.claims}
    assert named == {c.id for c in CLAIMS}


def test_a_chapters_pending_note_names_the_campaign_item_that_computes_it(tmp_store, monkeypatch):
    """book.stored at a cli_only tier: the missing result is shown as pending with its `run` command and
    the campaign item of the tier that runs it (found by what the commands compute, not by their text)."""
    from rank1lib import book, campaign
    notes = []
    monkeypatch.setattr(book, "note", lambda text, kind="note": notes.append(text))
    cfg = load_profile("cpu")
    assert book.stored(analysis.spectrum, cfg, dataset="mnist", arch="base-resnet", progress=False) is None
    out = " ".join(notes)
    assert "Pending at profile `cpu`" in out and "--only mnist-base-resnet-s0" in out
    assert campaign.item_for(cfg, "python -m rank1lib run spectrum --profile cpu --dataset cifar10 --seed 0") is None
