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
    with pytest.raises(ConfigError, match="valid: cl, base"):
        load_profile("ci", model="resnet")
    with pytest.raises(ConfigError, match="valid: mnist"):
        load_profile("ci", dataset="svhn")
    with pytest.raises(ConfigError, match="key=value"):
        parse_sets(["batch_size"])
