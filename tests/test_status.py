"""The landing page's status table and the commands printed for pending results."""
import shlex

import pytest

from rank1lib import analysis, status, store
from rank1lib.__main__ import parser
from rank1lib.book import with_status
from rank1lib.profiles import load_profile, parse_sets


def test_status_follows_the_store(tmp_store):
    before = {r["what"]: r for r in status.rows("ci")}
    assert all(r["status"] == "pending" and r["command"].startswith("python -m rank1lib run ")
               for r in before.values())
    analysis.vae_share(load_profile("ci"), progress=False)
    after = {r["what"]: r for r in status.rows("ci")}
    vae = next(k for k in after if "VAE" in k)
    assert after[vae]["status"] == "smoke test" and after[vae]["command"] is None  # ci is a toy profile
    assert [k for k in after if after[k] != before[k]] == [vae]


def test_landing_page_gets_the_table_in_place_of_its_placeholder(tmp_store):
    text = "# Book\n\n## Status\n\n<!-- status-table -->\nplaceholder that\nspans lines.\n\n## Next\n"
    out = with_status(text, "ci")
    assert "placeholder" not in out and "| paper | what |" in out and out.endswith("## Next\n")
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
    with store.probing(), pytest.raises(store.ResultPending) as e:
        analysis.spectrum(cfg, progress=False)
    argv = shlex.split(e.value.command)[3:]  # after "python -m rank1lib"
    args = parser().parse_args(argv)
    sets = parse_sets(args.set) | ({"dataset": args.dataset} if args.dataset else {})
    assert dict(load_profile(args.profile, **sets)) == dict(cfg)
