"""Bad inputs at the command line: exit 2, one line on stderr naming the culprit, nothing stored."""
import pytest

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
    (["campaign", "--profile", "ci", "--dry-run", "--only", "vea"], "no campaign item matches 'vea'"),
    (["campaign", "--profile", "ci", "--dry-run", "--skip", "*-gdd"], "no campaign item matches '*-gdd'"),
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


@pytest.mark.parametrize("kw, culprit", [({"seed": "abc"}, "bad seed 'abc'"), ({"seed": -1}, "bad seed -1"),
                                         ({"dataset": "mnsit"}, "unknown dataset 'mnsit'")])
def test_experiments_refuse_bad_seed_or_dataset_before_any_work(kw, culprit, tmp_store):
    from rank1lib import analysis
    from rank1lib.profiles import load_profile
    with pytest.raises(ValueError, match=culprit):
        analysis.tweedie_mse(load_profile("ci"), **kw)
    assert not (tmp_store / "results").exists() and not (tmp_store / "ckpt").exists()


def test_notebook_parameter_seed_abc_fails_with_the_named_culprit(tmp_store):
    """papermill -p seed abc: the chapter stops at its first experiment call, naming the bad seed."""
    from pathlib import Path
    import papermill as pm
    book = Path(__file__).resolve().parents[1] / "book"
    with pytest.raises(pm.PapermillExecutionError, match="bad seed 'abc'"):
        pm.execute_notebook(str(book / "02_tweedie_and_alignment.ipynb"), str(tmp_store / "out.ipynb"),
                            parameters={"profile": "ci", "seed": "abc"}, cwd=str(book), progress_bar=False,
                            kernel_name="python3")


def test_missing_optional_module_is_one_line(tmp_store, monkeypatch, capsys):
    """A core install (no `repro` extra) running an experiment: one line naming the extra."""
    import builtins
    real = builtins.__import__

    def no_matplotlib(name, *a, **k):
        if name.split(".")[0] == "matplotlib":
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return real(name, *a, **k)
    monkeypatch.setattr(builtins, "__import__", no_matplotlib)
    monkeypatch.setitem(__import__("sys").modules, "matplotlib", None)
    assert main(["run", "data", "--profile", "ci"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "rank1lib[repro]" in err and "matplotlib" in err, err
    assert not any((tmp_store / "results").rglob("*.json"))
