"""Run profiles (ci, quick, gpu, paper): YAML files in rank1lib/profiles, single values overridable."""
from pathlib import Path

import yaml

PROFILE_DIR = Path(__file__).parent / "profiles"
PROFILES = ("ci", "quick", "cpu", "gpu", "paper")


class ConfigError(ValueError):
    """Bad profile name, key or value; the message lists what is valid."""


class Config(dict):
    """A profile: a dict with attribute access; `name` is the profile name."""

    __getattr__ = dict.__getitem__


def _read(name):
    return yaml.safe_load((PROFILE_DIR / f"{name}.yaml").read_text())


def _check_value(key, value, ref):
    if isinstance(ref, bool):
        ok = isinstance(value, bool)
    elif isinstance(ref, float):
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        value = float(value) if ok else value
    elif isinstance(ref, int):
        ok = isinstance(value, int) and not isinstance(value, bool) and value >= 0
    elif isinstance(ref, list):
        ok = isinstance(value, list) and all(isinstance(v, type(ref[0])) for v in value)
    else:
        ok = isinstance(value, str)
    if not ok:
        raise ConfigError(f"bad value for {key!r}: {value!r} (expected {type(ref).__name__}"
                          f"{' >= 0' if type(ref) is int else ''}, like {ref!r})")
    return value


def parse_sets(pairs):
    """['key=value', ...] -> {key: YAML-parsed value}."""
    out = {}
    for p in pairs or ():
        if "=" not in p:
            raise ConfigError(f"bad --set {p!r}: expected key=value")
        k, v = p.split("=", 1)
        val = yaml.safe_load(v)
        if isinstance(val, str):  # YAML 1.1 reads '1e-3' as a string
            try:
                val = float(val)
            except ValueError:
                pass
        out[k.strip()] = val
    return out


def load_profile(name="quick", **overrides) -> Config:
    """Profile `name` with overrides applied and validated against the paper profile's keys and types."""
    if name not in PROFILES:
        raise ConfigError(f"unknown profile {name!r}; valid: {', '.join(PROFILES)}")
    ref = _read("paper")
    cfg = _read(name)
    for k, v in overrides.items():
        if k not in ref:
            raise ConfigError(f"unknown key {k!r}; valid: {', '.join(sorted(ref))}")
        cfg[k] = v
    for k, v in cfg.items():
        cfg[k] = _check_value(k, v, ref[k])
    from .models import MODELS
    for k in ("model", "analysis_model"):
        if cfg[k] not in MODELS:
            raise ConfigError(f"bad value for {k!r}: {cfg[k]!r}; valid: {', '.join(MODELS)}")
    for k in ("amp", "compile"):
        if cfg[k] not in ("auto", "on", "off"):
            raise ConfigError(f"bad value for {k!r}: {cfg[k]!r}; valid: auto, on, off")
    from .data import DATASETS
    if cfg["dataset"] not in DATASETS:
        raise ConfigError(f"bad value for 'dataset': {cfg['dataset']!r}; valid: {', '.join(DATASETS)}")
    return Config(cfg, name=name)
