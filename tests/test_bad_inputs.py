"""Bad inputs at the command line: exit 2, one line on stderr naming the culprit, nothing stored."""
import pytest

from rank1lib import store
from rank1lib.__main__ import main

CASES = [
    (["run", "spectrum", "--profile", "fast"], "unknown profile 'fast'"),
    (["run", "nosuch", "--profile", "ci"], "unknown experiment 'nosuch'"),
    (["run", "train", "--profile", "ci", "--set", "batch_size=0"], "'batch_size'"),
    (["run", "train", "--profile", "ci", "--set", "epochs=0"], "'epochs'"),
    (["run", "train", "--profile", "ci", "--set", "lr=inf"], "'lr'"),
    (["run", "continual", "--profile", "ci", "--method", "rank1", "--set", "lam=nan"], "'lam'"),
    (["run", "continual", "--profile", "ci", "--set", "fid_extractor=vgg"], "'fid_extractor'"),
    (["run", "continual", "--profile", "ci", "--set", "ddim_steps=0"], "'ddim_steps'"),
    (["run", "continual", "--profile", "ci", "--set", "replay_per_class=0"], "'replay_per_class'"),
    (["run", "spectrum", "--profile", "ci", "--set", "fisher_timesteps=[5000]"], "'fisher_timesteps'"),
    (["run", "spectrum", "--profile", "ci", "--set", "mu_samples=0"], "'mu_samples'"),
    (["run", "train", "--profile", "ci", "--set", "sample_batch=0"], "'sample_batch'"),
    (["run", "train", "--profile", "ci", "--set", "bacth_size=3"], "unknown key 'bacth_size'"),
    (["run", "train", "--profile", "ci", "--set", "batch_size"], "expected key=value"),
    (["run", "train", "--profile", "ci", "--set", "seeds=[1,"], "not valid YAML"),
    (["run", "train", "--profile", "ci", "--seed", "99999999999999999999"], "bad seed"),
    (["run", "train", "--profile", "ci", "--seed", "-1"], "bad seed"),
    (["run", "train", "--profile", "ci", "--dataset", "svhn"], "'dataset'"),
    (["run", "continual", "--profile", "ci", "--method", "ewc++"], "unknown method 'ewc++'"),
    (["run", "train", "--profile", "ci", "--set", "model=resnet"], "'model'"),
    (["run", "train", "--profile", "ci", "--set", "amp=maybe"], "'amp'"),
    (["bench", "nosuch", "--profile", "ci"], "unknown benchmark 'nosuch'"),
    (["bench", "fisher", "--profile", "ci", "--set", "fisher_samples=1"], "'fisher_samples'"),
    (["fetch", "svhn"], "unknown dataset 'svhn'"),
    (["claims", "--profile", "nosuch"], "unknown profile 'nosuch'"),
    (["campaign", "--profile", "nosuch", "--dry-run"], "unknown profile 'nosuch'"),
]


@pytest.mark.parametrize("argv, culprit", CASES, ids=[" ".join(a[:2] + a[-1:]) for a, _ in CASES])
def test_bad_input_is_one_line_exit_2_nothing_stored(argv, culprit, tmp_store, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and culprit in err, err
    assert not any((tmp_store / "results").rglob("*.json"))


def test_results_root_that_is_a_file(tmp_store, monkeypatch, capsys):
    f = tmp_store / "afile"
    f.write_text("x")
    monkeypatch.setenv("RANK1_RESULTS", str(f))
    assert main(["run", "train", "--profile", "ci"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "is a file" in err


def test_book_execute_bad_profile(capsys):
    from rank1lib.book import main as book_main
    assert book_main(["execute", "--profile", "nosuch", "--out", "/tmp/x", "book/01_data_and_models.ipynb"]) == 2
    assert "unknown profile 'nosuch'" in capsys.readouterr().err
