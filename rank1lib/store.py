"""Results store: book/results/<profile>/<experiment>/<name>.{json,npz,png}, atomic, with provenance."""
import hashlib
import json
import os
import platform
import subprocess
import tempfile
import time
from importlib import metadata
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]


class NeedsGPU(RuntimeError):
    """A heavy profile's result is absent and this machine cannot compute it."""


def results_root() -> Path:
    """Root of the store: $RANK1_RESULTS, else <repo>/book/results."""
    return Path(os.environ.get("RANK1_RESULTS") or REPO / "book" / "results")


def result_dir(profile, experiment) -> Path:
    return results_root() / profile / experiment


def config_hash(config) -> str:
    """Stable short hash of a JSON-serialisable config."""
    blob = json.dumps(config, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:12]


def git_commit() -> str:
    try:
        out = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
                             capture_output=True, text=True, timeout=5)
        dirty = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=5).stdout.strip()
        return (out.stdout.strip() or "unknown") + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def device_name(device=None) -> str:
    import torch
    if (device is None and torch.cuda.is_available()) or str(device).startswith("cuda"):
        return torch.cuda.get_device_name()
    return f"CPU ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)"


def provenance(device=None, wall_s=None) -> dict:
    """Commit, package versions, device, date and wall time of a result."""
    versions = {}
    for p in ("torch", "diffusers", "torchmetrics", "numpy", "rank1lib"):
        try:
            versions[p] = metadata.version(p)
        except metadata.PackageNotFoundError:
            versions[p] = None
    return {"commit": git_commit(), "versions": versions, "device": device_name(device),
            "python": platform.python_version(), "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
            "wall_s": wall_s}


def _atomic_write(path: Path, write):
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def save(profile, experiment, name, config, values=None, arrays=None, device=None, wall_s=None):
    """Write arrays (npz; uint8 images also as PNG) first, then the JSON record that makes the
    result visible; all atomic."""
    d = result_dir(profile, experiment)
    for key, a in (arrays or {}).items():
        if isinstance(a, np.ndarray) and a.dtype == np.uint8 and (a.ndim == 2 or (a.ndim == 3 and a.shape[2] == 3)):
            save_png(profile, experiment, f"{name}.{key}", a)
    if arrays:
        def write_npz(p):
            with open(p, "wb") as f:
                np.savez_compressed(f, **arrays)
        _atomic_write(d / f"{name}.npz", write_npz)
    record = {"profile": profile, "experiment": experiment, "name": name, "config": config,
              "config_hash": config_hash(config), "provenance": provenance(device, wall_s),
              "values": values or {}, "arrays": sorted(arrays) if arrays else []}
    text = json.dumps(record, indent=1, default=_jsonable)
    _atomic_write(d / f"{name}.json", lambda p: Path(p).write_text(text))
    return record


def _jsonable(o):
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    raise TypeError(f"not JSON serialisable: {type(o)}")


class Result(dict):
    """A stored record; `arrays` loads its npz lazily."""

    @property
    def values(self):
        return self["values"]

    @property
    def arrays(self):
        if "_arrays" not in self:
            p = result_dir(self["profile"], self["experiment"]) / f"{self['name']}.npz"
            self["_arrays"] = dict(np.load(p)) if p.exists() else {}
        return self["_arrays"]


def load(profile, experiment, name, config=None):
    """The stored record, or None if absent or its config hash differs from `config`'s."""
    p = result_dir(profile, experiment) / f"{name}.json"
    if not p.exists():
        return None
    rec = Result(json.loads(p.read_text()))
    if config is not None and rec.get("config_hash") != config_hash(config):
        return None
    return rec


def save_png(profile, experiment, name, fig_or_array):
    """Save an image grid (uint8 HxW[xC] array) or a matplotlib figure as PNG, atomically."""
    path = result_dir(profile, experiment) / f"{name}.png"
    if hasattr(fig_or_array, "savefig"):
        _atomic_write(path, lambda p: fig_or_array.savefig(p, format="png", dpi=120, bbox_inches="tight"))
    else:
        import matplotlib.image
        rgb = np.repeat(fig_or_array[..., None], 3, axis=2) if fig_or_array.ndim == 2 else fig_or_array
        _atomic_write(path, lambda p: matplotlib.image.imsave(p, rgb, format="png"))  # exact, no colormap
    return path


def load_or_compute(profile, experiment, name, config, compute, heavy=False, command=None):
    """Load a result whose config hash matches; else compute(), store and return it.

    compute() returns (values, arrays[, device]). On a heavy profile without CUDA, a missing result
    raises NeedsGPU naming the command that computes it.
    """
    rec = load(profile, experiment, name, config)
    if rec is not None:
        return rec
    import torch
    if heavy and not torch.cuda.is_available():
        cmd = command or f"python -m rank1lib run {experiment} --profile {profile}"
        raise NeedsGPU(f"result {profile}/{experiment}/{name} is not in the store and profile "
                       f"{profile!r} needs a CUDA GPU; compute it on a GPU box with: {cmd}")
    t0 = time.time()
    out = compute()
    values, arrays = out[0], out[1]
    device = out[2] if len(out) > 2 else None
    save(profile, experiment, name, config, values, arrays, device=device, wall_s=time.time() - t0)
    return load(profile, experiment, name)
