import pytest

from rank1lib.profiles import PROFILES, ConfigError, load_profile, parse_sets


def test_all_profiles_load_with_same_keys():
    keys = [set(load_profile(p)) for p in PROFILES]
    assert all(k == keys[0] for k in keys)
    paper = load_profile("paper")
    assert (paper.batch_size, paper.lam, paper.replay_per_class, paper.fisher_samples, paper.epochs) == \
        (128, 15000.0, 5000, 1024, 200)


def test_overrides_and_errors():
    cfg = load_profile("ci", **parse_sets(["batch_size=8", "lr=1e-3", "model=small3"]))
    assert (cfg.batch_size, cfg.lr, cfg.model, cfg.name) == (8, 1e-3, "small3", "ci")
    with pytest.raises(ConfigError, match="unknown profile 'fast'; valid: ci, quick, cpu, gpu, paper"):
        load_profile("fast")
    with pytest.raises(ConfigError, match="unknown key 'bacth_size'; valid: .*batch_size"):
        load_profile("ci", bacth_size=3)
    with pytest.raises(ConfigError, match="bad value for 'batch_size'"):
        load_profile("ci", batch_size="big")
    with pytest.raises(ConfigError, match="one of cl, base"):
        load_profile("ci", model="resnet")
    with pytest.raises(ConfigError, match="one of mnist"):
        load_profile("ci", dataset="svhn")
    with pytest.raises(ConfigError, match="key=value"):
        parse_sets(["batch_size"])


@pytest.mark.parametrize("key, value, expect", [
    ("batch_size", 0, "integer >= 1"), ("epochs", 0, "integer >= 1"), ("ddim_steps", 0, "1..1000"),
    ("sample_batch", 0, "integer >= 1"), ("mu_samples", 0, "integer >= 2"), ("replay_per_class", 0, "integer >= 1"),
    ("fisher_timesteps", [5000], "timesteps in 0..999"), ("fid_extractor", "vgg", "one of inception"),
    ("lam", float("nan"), "finite number >= 0"), ("lr", float("inf"), "finite number > 0"), ("lr", -1.0, "> 0"),
    ("seeds", [], "non-empty list"), ("amp", "maybe", "one of auto, on, off"), ("ckpt_every", -1, ">= 0"),
    ("cli_only", "yes", "true or false"), ("batch_size", True, "integer >= 1"),
])
def test_every_bad_value_is_refused_up_front(key, value, expect):
    with pytest.raises(ConfigError, match=f"bad value for '{key}'.*{expect}"):
        load_profile("ci", **{key: value})


def test_profile_file_errors_name_the_file(tmp_path, monkeypatch):
    import rank1lib.profiles as P
    good = (P.PROFILE_DIR / "ci.yaml").read_text()
    for text, expect in [("batch_size: [1,\n", r"ci.yaml, line \d+: YAML error"),
                         ("description: x\n", "ci.yaml: missing keys: .*batch_size"),
                         (good + "extra_key: 1\n", r"ci.yaml: unknown keys: extra_key$")]:
        (tmp_path / "ci.yaml").write_text(text)
        monkeypatch.setattr(P, "PROFILE_DIR", tmp_path)
        with pytest.raises(ConfigError, match=expect):
            load_profile("ci")


def test_seed_range():
    from rank1lib.profiles import check_seed
    assert check_seed(0) == 0
    for bad in (-1, 2 ** 32, 99999999999999999999, "abc"):
        with pytest.raises(ConfigError, match="bad seed"):
            check_seed(bad)


def test_cpu_continual_settings_are_the_stored_bench_decision_for_its_model():
    """cl_amp / cl_compile of the cpu profile are what `bench settings` adopted for the profile's model
    (decided by measurement; changing `model` needs the decision for the new model)."""
    import json
    from pathlib import Path

    from rank1lib.bench_train import VARIANTS
    cfg = load_profile("cpu")
    rec = json.loads((Path(__file__).parents[1] / "book/results/cpu/bench/settings.json").read_text())
    adopted = rec["values"]["summary"]["models"][cfg.model]["adopt"]
    assert (cfg.cl_amp, cfg.cl_compile) == VARIANTS[adopted]
    assert (cfg.amp, cfg.compile) == ("off", "off")  # the Fisher analysis and the study stay fp32 eager


def test_the_tiers_further_datasets_are_declared_in_the_profile_not_by_name():
    """cl_other_* and second_dataset_per_class say how the tier subsets its further datasets: the cpu tier's
    Fashion-MNIST runs use 400 training and 100 test images per class on seed 0 only (mnist-5k's sizes); the
    same keys on another profile do the same, and a profile without them leaves every dataset whole."""
    from rank1lib import analysis, runs
    cpu = load_profile("cpu")
    fm = runs.dataset_cfg(cpu, "fmnist")
    assert (fm.train_per_class, fm.fid_per_class) == (400, 100) and runs.tier_seeds(cpu, "fmnist") == cpu.seeds[:1]
    assert runs.dataset_cfg(cpu, "mnist-5k") is cpu and runs.tier_seeds(cpu, "mnist-5k") == list(cpu.seeds)
    assert analysis.second_dataset_cfg(cpu, "fmnist").train_per_class == 400
    ci = load_profile("ci")
    assert runs.dataset_cfg(ci, "fmnist") is ci and analysis.second_dataset_cfg(ci, "fmnist").train_per_class == ci.train_per_class
    like = load_profile("ci", cl_datasets=["mnist-5k", "cifar10"], cl_other_train_per_class=7, seeds=[3, 4],
                        cl_other_seeds=1, train_per_class=0)
    assert runs.dataset_cfg(like, "cifar10").train_per_class == 7 and runs.tier_seeds(like, "cifar10") == [3]


def test_cpu_analysis_bf16_models_agree_with_every_stored_loss_curve_check():
    """analysis_amp_models lists exactly the analysis UNets whose stored bf16-vs-fp32 loss-curve check
    (precision.amp_check) adopted bf16; a UNet without a stored check is not judged here."""
    from rank1lib.precision import stored_checks
    cfg = load_profile("cpu")
    for rec in stored_checks(cfg):
        arch = rec.values["arch"]
        assert (arch in cfg.analysis_amp_models) == (rec.values["adopt"] == "bf16 autocast"), arch
