import gzip
import pickle

import numpy as np
import pytest
import torch

from rank1lib import data


def check_set(ds, channels, n_classes=10):
    for x, y in ((ds.train_x, ds.train_y), (ds.test_x, ds.test_y)):
        assert x.dtype == torch.uint8 and x.shape[1:] == (channels, 32, 32)
        assert y.dtype == torch.long and len(y) == len(x)
        assert int(y.min()) == 0 and int(y.max()) == n_classes - 1


def check_tasks(ds, n_tasks, per_task):
    splits = data.task_classes(ds.name)
    assert len(splits) == n_tasks and all(len(c) == per_task for c in splits)
    assert sum(splits, []) == list(range(n_tasks * per_task))  # label order, disjoint, complete
    for k, cls in enumerate(splits):
        x, y = data.task_data(ds, k, "train")
        assert set(y.tolist()) == set(cls)
        assert len(x) == int(sum((ds.train_y == c).sum() for c in cls))
        xt, yt = data.task_data(ds, k, "test")
        assert set(yt.tolist()) == set(cls)


def test_mnist5k_is_the_real_subset():
    ds = data.load_images("mnist-5k")
    check_set(ds, 1)
    assert len(ds.train_x) + len(ds.test_x) == 5000
    assert torch.bincount(ds.test_y).tolist() == [100] * 10
    assert torch.bincount(ds.train_y).tolist() == [400] * 10
    # padded by 2 px: the border is blank, the digit strokes reach 255
    assert ds.train_x[:, :, :2].max() == 0 and ds.train_x[:, :, :, -2:].max() == 0
    assert ds.train_x.max() == 255
    check_tasks(ds, 5, 2)
    assert "5,000" in ds.source


def test_task_data_per_class_cap():
    ds = data.load_images("mnist-5k")
    x, y = data.task_data(ds, 2, "train", per_class=7)
    assert torch.bincount(y, minlength=10).tolist() == [0, 0, 0, 0, 7, 7, 0, 0, 0, 0]


@pytest.mark.skipif(not (data.DEBIAN_FMNIST / "train-images-idx3-ubyte.gz").exists(), reason="Debian package dataset-fashion-mnist not installed")
def test_fmnist_full():
    ds = data.load_images("fmnist")
    check_set(ds, 1)
    assert (len(ds.train_x), len(ds.test_x)) == (60000, 10000)
    check_tasks(ds, 5, 2)
    assert [r["train"] for r in data.split_table(ds)] == [12000] * 5  # paper table 4


def write_idx(path, arr):
    header = bytes([0, 0, 8, arr.ndim]) + b"".join(int(s).to_bytes(4, "big") for s in arr.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + arr.astype(np.uint8).tobytes())


def test_idx_reader_and_fmnist_root(tmp_path):
    rng = np.random.default_rng(0)
    d = tmp_path / "fmnist"
    d.mkdir()
    imgs = rng.integers(0, 256, (20, 28, 28))
    labels = np.arange(20) % 10
    for split, n in (("train", 20), ("t10k", 20)):
        write_idx(d / f"{split}-images-idx3-ubyte.gz", imgs[:n])
        write_idx(d / f"{split}-labels-idx1-ubyte.gz", labels[:n])
    ds = data.load_fmnist(root=tmp_path)
    check_set(ds, 1)
    assert torch.equal(ds.train_x[:, 0, 2:30, 2:30], torch.as_tensor(imgs, dtype=torch.uint8))
    assert ds.train_y.tolist() == labels.tolist()


def test_torchvision_cifar_format(tmp_path, monkeypatch):
    """A synthetic CIFAR-10 directory in torchvision's pickle format loads as (N, 3, 32, 32)."""
    root = tmp_path / "cifar-10-batches-py"
    root.mkdir()
    rng = np.random.default_rng(1)
    arrays = {}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        x = rng.integers(0, 256, (10, 3072)).astype(np.uint8)
        arrays[name] = x
        with open(root / name, "wb") as f:
            pickle.dump({"data": x, "labels": list(range(10))}, f)
    with open(root / "batches.meta", "wb") as f:
        pickle.dump({"label_names": [str(i) for i in range(10)]}, f)
    import torchvision
    monkeypatch.setattr(torchvision.datasets.CIFAR10, "_check_integrity", lambda self: True)
    monkeypatch.setattr(torchvision.datasets.cifar, "check_integrity", lambda *a, **k: True)
    ds = data.load_images("cifar10", root=tmp_path)
    check_set(ds, 3)
    assert len(ds.train_x) == 50
    assert torch.equal(ds.train_x[0], torch.as_tensor(arrays["data_batch_1"][0].reshape(3, 32, 32)))
    check_tasks(ds, 5, 2)


def test_imagenet32_npz(tmp_path):
    d = tmp_path / "imagenet32"
    d.mkdir()
    rng = np.random.default_rng(2)
    x = rng.integers(0, 256, (2000, 3072)).astype(np.uint8)
    labels = np.arange(2000) % 1000 + 1  # 1-based as in the official batches
    np.savez(d / "train_data_batch_1.npz", data=x, labels=labels)
    np.savez(d / "val_data.npz", data=x[:1000], labels=labels[:1000])
    ds = data.load_images("imagenet32", root=tmp_path)
    check_set(ds, 3, n_classes=1000)
    assert torch.equal(ds.train_x[5], torch.as_tensor(x[5].reshape(3, 32, 32)))
    assert int(ds.train_y[0]) == 0
    check_tasks(ds, 20, 50)


def test_missing_data_message(tmp_path):
    with pytest.raises(data.DataMissing) as e:
        data.load_images("imagenet32", root=tmp_path)
    msg = str(e.value)
    assert "imagenet32" in msg and str(tmp_path) in msg and "\n" not in msg
    with pytest.raises(data.DataMissing) as e:
        data.load_images("mnist", root=tmp_path, download=False)
    assert "python -m rank1lib fetch mnist" in str(e.value)
    with pytest.raises(ValueError, match="valid: mnist, mnist-5k"):
        data.load_images("svhn")


def test_fashion_mnist_class_names_match_torchvision():
    """Figure 5's class names against torchvision's own list of Fashion-MNIST labels."""
    import torchvision
    from rank1lib.data import class_label
    for c, name in enumerate(torchvision.datasets.FashionMNIST.classes):
        assert class_label("fmnist", c) == f"class {c} ({name})"
    assert class_label("mnist-5k", 3) == "class 3"
    with pytest.raises(ValueError, match="unknown dataset"):
        class_label("mnsit", 3)
