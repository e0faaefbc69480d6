import subprocess
import sys


def run(*args, env_tmp=None):
    return subprocess.run([sys.executable, "-m", "rank1lib", *args], capture_output=True, text=True,
                          env=env_tmp)


def test_cli_errors_are_one_line(tmp_store):
    import os
    env = dict(os.environ)
    cases = [(["run", "nope"], "unknown experiment 'nope'; valid: data, train"),
             (["run", "data", "--profile", "fast"], "unknown profile 'fast'"),
             (["run", "data", "--dataset", "svhn"], "bad value for 'dataset': 'svhn'"),
             (["run", "data", "--profile", "ci", "--set", "epochs=-1"], "bad value for 'epochs'"),
             (["run", "data", "--profile", "ci", "--dataset", "imagenet32"], "dataset 'imagenet32' not found")]
    for args, msg in cases:
        r = run(*args, env_tmp=env)
        assert r.returncode == 2, (args, r.stderr)
        assert msg in r.stderr, (args, r.stderr)
        assert r.stderr.strip().count("\n") == 0 and "Traceback" not in r.stderr


def test_cli_data_run_and_list(tmp_store):
    import os
    r = run("run", "data", "--profile", "ci", env_tmp=dict(os.environ))
    assert r.returncode == 0, r.stderr
    assert "data/mnist-5k" in r.stdout
    r = run("list", env_tmp=dict(os.environ))
    assert r.returncode == 0
    assert "ci/data/mnist-5k.json" in r.stdout and "mnist-5k" in r.stdout and "paper" in r.stdout


def test_repeated_only_and_skip_add_up():
    """`--only a --only b` runs both items (a repeated flag used to keep only the last list)."""
    from rank1lib.__main__ import parser
    a = parser().parse_args(["campaign", "--profile", "cpu", "--only", "x", "--only", "y", "z", "--skip", "w",
                             "--skip", "v"])
    assert a.only == ["x", "y", "z"] and a.skip == ["w", "v"]
