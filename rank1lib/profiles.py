"""Run profiles (ci, quick, cpu, gpu, paper): YAML files in rank1lib/profiles, single values overridable.

SCHEMA is the one place that says which keys a profile has, their types and their valid ranges; a
profile file, a `--set`, a papermill parameter and a benchmark are all checked against it before
any work starts.
"""
import math
from pathlib import Path

import yaml

PROFILE_DIR = Path(__file__).parent / "profiles"
PROFILES = ("ci", "quick", "cpu", "gpu", "paper")
TOY_PROFILES = ("ci", "quick")  # smoke tests: their numbers are never evidence for or against a claim
T_MAX = 999  # the largest DDPM timestep


class ConfigError(ValueError):
    """Bad profile name, key or value; the message lists what is valid."""


class Config(dict):
    """A profile: a dict with attribute access; `name` is the profile name."""

    __getattr__ = dict.__getitem__


# Keys of a Config that are not settings: never hashed into a result, never printed as --set.
RUNTIME_KEYS = ("name", "read_only")


def reading(cfg) -> Config:
    """The same settings for a reader: an experiment called with it loads its stored result and never
    computes (a missing one raises ResultPending). Configs derived from it stay readers."""
    return Config(cfg, read_only=True)


def _choices(*valid):
    return (lambda v: v in valid), "one of " + ", ".join(valid)


def _int_at_least(lo):
    return (lambda v: v >= lo), f"an integer >= {lo}"


def _timesteps():
    return (lambda v: len(v) > 0 and all(0 <= t <= T_MAX for t in v)), f"a non-empty list of timesteps in 0..{T_MAX}"


_pos = ((lambda v: math.isfinite(v) and v > 0), "a finite number > 0")
_nonneg = ((lambda v: math.isfinite(v) and v >= 0), "a finite number >= 0")
_seeds = ((lambda v: len(v) > 0 and all(0 <= s < 2 ** 32 for s in v)), "a non-empty list of seeds in 0..2^32-1")
_switch = _choices("auto", "on", "off")


def _models():
    from .models import MODELS
    return MODELS


def _datasets():
    from .data import DATASETS
    return DATASETS


def _extractors():
    from .fid import EXTRACTORS
    return EXTRACTORS


# key -> (type, check, what is valid); a check of None means "one of get()" (filled in on use)
SCHEMA = {
    "description": (str, lambda v: True, "text"),
    "dataset": (str, None, None, _datasets),
    "model": (str, None, None, _models),
    "analysis_model": (str, None, None, _models),
    "epochs": (int, *_int_at_least(1)),
    "max_steps": (int, *_int_at_least(0)),
    "train_per_class": (int, *_int_at_least(0)),
    "batch_size": (int, *_int_at_least(1)),
    "lr": (float, *_pos),
    "lam": (float, *_nonneg),
    "replay_per_class": (int, *_int_at_least(1)),
    "ddim_steps": (int, lambda v: 1 <= v <= 1000, "an integer in 1..1000"),
    "sample_batch": (int, *_int_at_least(1)),
    "fid_per_class": (int, *_int_at_least(0)),
    "fid_extractor": (str, None, None, _extractors),
    "seeds": (list, *_seeds),
    "rank_k": (int, *_int_at_least(1)),
    "power_iters": (int, *_int_at_least(1)),
    "mu_samples": (int, *_int_at_least(2)),
    "fisher_samples": (int, *_int_at_least(2)),
    "fisher_timesteps": (list, *_timesteps()),
    "analysis_epochs": (int, *_int_at_least(1)),
    "analysis_max_steps": (int, *_int_at_least(0)),
    "cl_fisher_samples": (int, lambda v: v == 0 or v >= 2, "0 (skip) or an integer >= 2"),
    "cl_fisher_timesteps": (list, *_timesteps()),
    "cl_analysis_max_steps": (int, *_int_at_least(0)),
    "study_steps": (list, lambda v: len(v) > 0 and all(s >= 1 for s in v), "a non-empty list of step counts >= 1"),
    "ckpt_every": (int, *_int_at_least(0)),
    "amp": (str, *_switch),
    "compile": (str, *_switch),
    "cl_amp": (str, *_switch),
    "cl_compile": (str, *_switch),
    "task1_max_steps": (int, *_int_at_least(1)),
    "analysis_amp_models": (list, lambda v: all(m in _models() for m in v), "a list of model names"),
    "cl_datasets": (list, lambda v: all(isinstance(d, str) and d for d in v), "a list of dataset names"),
    "cl_other_train_per_class": (int, *_int_at_least(0)),
    "cl_other_fid_per_class": (int, *_int_at_least(0)),
    "cl_other_seeds": (int, *_int_at_least(0)),
    "second_dataset_per_class": (int, *_int_at_least(0)),
    "campaign_plan": (str, *_choices("tier", "short-calls")),
    "ledger_scales": (bool, lambda v: True, "true or false"),
    "heavy": (bool, lambda v: True, "true or false"),
    "cli_only": (bool, lambda v: True, "true or false"),
    "state_in_store": (bool, lambda v: True, "true or false"),
}
STR_LISTS = ("analysis_amp_models", "cl_datasets")  # list keys whose items are names (the other lists hold integers)


def check_value(key, value):
    """The value converted to the key's type and checked against its range; ConfigError otherwise."""
    if key not in SCHEMA:
        raise ConfigError(f"unknown key {key!r}; valid: {', '.join(sorted(SCHEMA))}")
    typ, check, what, *get = SCHEMA[key]
    if get:
        valid = get[0]()
        check, what = (lambda v: v in valid), "one of " + ", ".join(valid)
    if typ is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    ok_type = isinstance(value, typ) and not (typ is not bool and isinstance(value, bool))
    if ok_type and typ is list:
        elem = str if key in STR_LISTS else int
        ok_type = all(isinstance(v, elem) and not isinstance(v, bool) for v in value)
    if not ok_type or not check(value):
        raise ConfigError(f"bad value for {key!r}: {value!r} (expected {what})")
    return value


def _read(name):
    path = PROFILE_DIR / f"{name}.yaml"
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark
        raise ConfigError(f"{path}, line {mark.line + 1}: YAML error: {e.problem}") from None
    except OSError as e:
        raise ConfigError(f"{path}: unreadable ({e.strerror})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: not a mapping of profile keys")
    missing, extra = sorted(set(SCHEMA) - set(data)), sorted(set(data) - set(SCHEMA))
    if missing or extra:
        raise ConfigError(f"{path}: " + "; ".join(
            ([f"missing keys: {', '.join(missing)}"] if missing else []) +
            ([f"unknown keys: {', '.join(extra)}"] if extra else [])))
    for k, v in data.items():
        try:
            data[k] = check_value(k, v)
        except ConfigError as e:
            raise ConfigError(f"{path}: {e}") from None
    return data


def parse_sets(pairs):
    """['key=value', ...] -> {key: YAML-parsed value}."""
    out = {}
    for p in pairs or ():
        if "=" not in p:
            raise ConfigError(f"bad --set {p!r}: expected key=value")
        k, v = p.split("=", 1)
        try:
            val = yaml.safe_load(v)
        except yaml.YAMLError:
            raise ConfigError(f"bad --set {p!r}: the value is not valid YAML") from None
        if isinstance(val, str):  # YAML 1.1 reads '1e-3' as a string
            try:
                val = float(val)
            except ValueError:
                pass
        out[k.strip()] = val
    return out


def load_profile(name="quick", **overrides) -> Config:
    """Profile `name` with overrides applied, every value validated against SCHEMA."""
    if name not in PROFILES:
        raise ConfigError(f"unknown profile {name!r}; valid: {', '.join(PROFILES)}")
    cfg = _read(name)
    for k, v in overrides.items():
        cfg[k] = check_value(k, v)
    return Config(cfg, name=name)


def set_args(cfg, skip=("dataset",)) -> str:
    """' --set k=v' for every value of cfg that differs from its profile file (for printed commands)."""
    import json
    import shlex
    base = _read(cfg.name)
    text = lambda v: json.dumps(v) if v is None or isinstance(v, (list, dict, bool)) else str(v)  # noqa: E731
    return "".join(f" --set {shlex.quote(f'{k}={text(v)}')}"
                   for k, v in cfg.items() if k not in RUNTIME_KEYS and k not in skip and base.get(k) != v)


def check_seed(seed) -> int:
    """A run seed: an integer in 0..2^32-1."""
    import numbers
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or not 0 <= seed < 2 ** 32:
        raise ConfigError(f"bad seed {seed!r} (expected an integer in 0..2^32-1)")
    return int(seed)
