"""Results store: book/results/<profile>/<experiment>/<name>.{json,npz,png}, atomic, with provenance."""
import contextlib
import hashlib
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
# A source checkout (book, profiles, git history) or an installed wheel (then results and
# checkpoints default to the working directory and the commit is unknown).
CHECKOUT = (REPO / "pyproject.toml").is_file() and (REPO / "book").is_dir()
HOME = REPO if CHECKOUT else Path.cwd()


class ResultPending(RuntimeError):
    """A result is not in the store and is not computed here; the message names the command."""

    def __init__(self, message, command=None):
        super().__init__(message)
        self.command = command  # the command line that computes it


class NeedsGPU(ResultPending):
    """A heavy profile's result is absent and this machine cannot compute it."""


_ALLOW_CLI_ONLY = False


def allow_cli_only(on=True):
    """Let this process compute results of cli_only profiles (the CLI's `run` and `campaign` do)."""
    global _ALLOW_CLI_ONLY
    _ALLOW_CLI_ONLY = bool(on)


def policy(cfg) -> dict:
    """The load_or_compute switches of a profile: heavy (needs CUDA), cli_only, and read_only (a reader's
    config, profiles.reading: never compute)."""
    return {"heavy": bool(cfg.get("heavy")), "cli_only": bool(cfg.get("cli_only")),
            "read_only": bool(cfg.get("read_only"))}


def results_root() -> Path:
    """Root of the store: $RANK1_RESULTS, else <repo>/book/results."""
    return Path(os.environ.get("RANK1_RESULTS") or HOME / "book" / "results")


def check_writable(folder) -> Path:
    """Make sure results can be written under `folder` before any work starts (OSError naming it)."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise OSError(f"{folder} is a file, not a folder (check $RANK1_RESULTS / $RANK1_CKPT)")
    folder.mkdir(parents=True, exist_ok=True)
    probe = folder / f".write-probe-{os.getpid()}"
    try:
        probe.write_bytes(b"0" * 4096)
    except OSError as e:
        raise OSError(f"{folder} is not writable ({e.strerror})") from None
    finally:
        probe.unlink(missing_ok=True)
    return folder


def result_dir(profile, experiment) -> Path:
    return results_root() / profile / experiment


def config_hash(config) -> str:
    """Stable short hash of a JSON-serialisable config."""
    blob = json.dumps(config, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:12]


def git_commit() -> str:
    """Short HEAD of the checkout, '+dirty' where tracked files other than book/results differ from it:
    results a run writes are not a change of the code that made them."""
    if not CHECKOUT:
        return "unknown (installed package)"
    try:
        out = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
                             capture_output=True, text=True, timeout=5)
        dirty = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain", "--untracked-files=no",
                                "--", ".", ":(exclude)book/results"],
                               capture_output=True, text=True, timeout=5).stdout.strip()
        return (out.stdout.strip() or "unknown") + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def device_name(device=None) -> str:
    """A readable name of `device` (a torch device or device string; a name that is neither is kept)."""
    import torch
    if isinstance(device, str) and device.split(":")[0] not in ("cpu", "cuda"):
        return device
    if (device is None and torch.cuda.is_available()) or str(device).startswith("cuda"):
        return torch.cuda.get_device_name()
    return f"CPU ({cpu_model()}, {os.cpu_count()} cores)"


def cpuinfo_field(key, cpuinfo="/proc/cpuinfo"):
    """The words of the first `key` line of /proc/cpuinfo (Linux), or None where there is none."""
    with contextlib.suppress(OSError):
        for line in Path(cpuinfo).read_text().splitlines():
            if line.startswith(key) and ":" in line:
                return line.split(":", 1)[1].split()
    return None


def cpu_model(cpuinfo="/proc/cpuinfo") -> str:
    """The processor's model name (Linux /proc/cpuinfo), else what platform reports."""
    words = cpuinfo_field("model name", cpuinfo)
    return " ".join(words) if words else platform.processor() or platform.machine()


def provenance(device=None, wall_s=None) -> dict:
    """Commit, package versions, device, date and wall time of a result."""
    versions = {}
    for p in ("torch", "diffusers", "torchmetrics", "numpy", "rank1lib"):
        try:
            versions[p] = metadata.version(p)
        except metadata.PackageNotFoundError:
            versions[p] = None
    import torch

    from . import distributed
    data_mod = sys.modules.get("rank1lib.data")  # the datasets this process read, and from where
    return {"commit": git_commit(), "versions": versions, "device": device_name(device),
            "data": dict(data_mod.LOADED) if data_mod else {},
            "threads": torch.get_num_threads(), "processes": distributed.world_size(),
            "load_avg": round(os.getloadavg()[0], 2),
            "python": platform.python_version(), "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
            "wall_s": wall_s}


def atomic_write(path: Path, write):
    """Write through write(tmp_path) into a unique temp file beside `path`, then rename (0644)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o644)
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
    files = {}
    if arrays:
        def write_npz(p):
            with open(p, "wb") as f:
                np.savez_compressed(f, **arrays)
        atomic_write(d / f"{name}.npz", write_npz)
        files["npz"] = file_sha256(d / f"{name}.npz")
    record = {"profile": profile, "experiment": experiment, "name": name, "config": config,
              "config_hash": config_hash(config), "provenance": provenance(device, wall_s),
              "values": finite_or_null(values or {}), "arrays": sorted(arrays) if arrays else [],
              "files": files}
    text = json.dumps(record, indent=1, default=_jsonable, allow_nan=False)
    atomic_write(d / f"{name}.json", lambda p: Path(p).write_text(text))
    return record


def file_sha256(path) -> str:
    """sha256 of a file's bytes (the JSON record names the arrays it belongs with)."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def finite_or_null(o):
    """Replace NaN/inf floats (also inside numpy values, lists and dicts) by None: JSON has no NaN."""
    if isinstance(o, dict):
        return {k: finite_or_null(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [finite_or_null(v) for v in o]
    if isinstance(o, np.ndarray):
        return finite_or_null(o.tolist())
    if isinstance(o, (float, np.floating)):
        return float(o) if np.isfinite(o) else None
    if isinstance(o, np.generic):
        return o.item()
    return o


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


def clean_stale_tmp(folder, min_age_s=600):
    """Remove temp files/folders (.name.XXXX.tmp, .tmp-*, .old-*) that a killed writer left behind;
    only those older than min_age_s, so a concurrent writer's live temp file is never touched."""
    import shutil
    folder = Path(folder)
    if not folder.is_dir():
        return
    now = time.time()
    for p in list(folder.glob(".*.tmp")) + list(folder.glob(".tmp-*")) + list(folder.glob(".old-*")):
        try:
            if now - p.stat().st_mtime > min_age_s:
                shutil.rmtree(p) if p.is_dir() else p.unlink()
        except OSError:
            pass


def set_aside(path, why) -> Path:
    """Move an unreadable file out of the way (never delete it) and say so in one line."""
    path = Path(path)
    dest = path.with_name(f"{path.name}.bad-{time.strftime('%Y%m%d-%H%M%S')}")
    os.replace(path, dest)
    print(f"warning: {path} is unreadable ({why}); moved aside to {dest.name}, it will be recomputed",
          file=sys.stderr)
    return dest


def read_or_set_aside(path, reader, owner=True, errors=Exception):
    """(reader(path), True) for a readable file; (None, False) when it is absent or unreadable, i.e. reader
    raised one of `errors` (then moved aside by its owner, one line on stderr; a reader that is not the
    owner leaves it in place and says so; other errors propagate). Caches of resumable work and the
    store's JSON records go through here."""
    path = Path(path)
    if path.exists():
        try:
            return reader(path), True
        except errors as e:  # truncated or foreign file: the caller recomputes it
            why = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
            if owner:
                set_aside(path, why)
            else:
                _unreadable_left(path, why)
    return None, False


def _unreadable_left(path, why):
    print(f"warning: {path} is unreadable ({why}); left in place and shown as pending (a command that computes "
          "it, run or campaign, sets it aside)", file=sys.stderr)


def load(profile, experiment, name, config=None, owner=False):
    """The stored record, or None if absent, torn (arrays do not match the record) or its config hash
    differs from `config`'s. Reading never changes the store: an unreadable record or torn arrays are
    reported (one line) and left in place, unless `owner` (a caller about to recompute the result)
    moves them aside."""
    p = result_dir(profile, experiment) / f"{name}.json"
    rec, found = read_or_set_aside(p, lambda q: Result(json.loads(q.read_text())), owner=owner,
                                   errors=(ValueError, UnicodeDecodeError))  # not JSON; OSError propagates
    if not found:
        return None
    npz = p.with_suffix(".npz")
    want = rec.get("files", {}).get("npz")
    if want and (not npz.exists() or file_sha256(npz) != want):
        if not owner:
            _unreadable_left(p, "its arrays are missing or do not match the JSON record (torn write)")
            return None
        if npz.exists():
            set_aside(npz, "its arrays do not match the JSON record (torn write)")
        set_aside(p, "its arrays are missing or torn")
        return None
    return rec if config is None or current(rec, config) else None


def current(rec, config) -> bool:
    """Whether a stored record was computed with `config` (its config hash is that config's)."""
    return rec.get("config_hash") == config_hash(config)


def save_png(profile, experiment, name, fig_or_array):
    """Save an image grid (uint8 HxW[xC] array) or a matplotlib figure as PNG, atomically."""
    path = result_dir(profile, experiment) / f"{name}.png"
    if hasattr(fig_or_array, "savefig"):
        atomic_write(path, lambda p: fig_or_array.savefig(p, format="png", dpi=120, bbox_inches="tight"))
    else:
        import matplotlib.image
        rgb = np.repeat(fig_or_array[..., None], 3, axis=2) if fig_or_array.ndim == 2 else fig_or_array
        atomic_write(path, lambda p: matplotlib.image.imsave(p, rgb, format="png"))  # exact, no colormap
    return path


def load_or_compute(profile, experiment, name, config, compute, heavy=False, command=None, cli_only=False,
                    replace=False, read_only=False):
    """Load a result whose config hash matches; else compute(), store and return it.

    replace: compute and store even if a matching result is stored (the new record overwrites it
    atomically; git history keeps the old one). Nothing is moved first, so provenance stays clean.

    compute() returns (values, arrays[, device]). On a heavy profile without CUDA, a missing result
    raises NeedsGPU naming the command that computes it; on a cli_only profile, ResultPending unless
    this process is the CLI (allow_cli_only); with read_only, ResultPending whatever the profile.
    """
    import torch
    reader = read_only or (cli_only and not _ALLOW_CLI_ONLY)
    computes = not reader and not (heavy and not torch.cuda.is_available())
    rec = None if replace else load(profile, experiment, name, config, owner=computes)
    if rec is not None:
        return rec
    cmd = command or f"python -m rank1lib run {experiment} --profile {profile}"
    if reader:
        raise ResultPending(f"pending: {profile}/{experiment}/{name} is not in the store yet; "
                            f"it is computed by: {cmd}  (or: python -m rank1lib campaign --profile {profile})",
                            command=cmd)
    if heavy and not torch.cuda.is_available():
        raise NeedsGPU(f"result {profile}/{experiment}/{name} is not in the store and profile "
                       f"{profile!r} needs a CUDA GPU; compute it on a GPU box with: {cmd}", command=cmd)
    clean_stale_tmp(result_dir(profile, experiment))
    t0 = time.time()
    out = compute()
    values, arrays = out[0], out[1]
    device = out[2] if len(out) > 2 else None
    from . import distributed
    if distributed.is_main():  # one writer in a multi-process run; the others read what it wrote
        save(profile, experiment, name, config, values, arrays, device=device, wall_s=time.time() - t0)
    distributed.barrier()
    return load(profile, experiment, name)
