import json
import os

import numpy as np
import pytest

from rank1lib import store


def test_save_load_provenance_and_hash(tmp_store):
    cfg = {"lr": 2e-4, "steps": 3}
    store.save("ci", "exp", "a", cfg, {"x": 1.5}, {"arr": np.arange(4)})
    rec = store.load("ci", "exp", "a", cfg)
    assert rec.values == {"x": 1.5}
    np.testing.assert_array_equal(rec.arrays["arr"], np.arange(4))
    prov = rec["provenance"]
    assert set(prov) >= {"commit", "versions", "device", "date", "wall_s"}
    assert prov["versions"]["torch"]
    assert rec["config"] == cfg and rec["config_hash"] == store.config_hash(cfg)
    # a different config does not match
    assert store.load("ci", "exp", "a", {"lr": 1e-3, "steps": 3}) is None
    assert store.config_hash({"b": 1, "a": 2}) == store.config_hash({"a": 2, "b": 1})


def test_provenance_keeps_a_device_given_by_name(tmp_store):
    # benchmarks hand the store the device's name (e.g. measured on a GPU): it must not become "CPU (...)"
    store.save("ci", "exp", "named", {}, {"x": 1}, device="NVIDIA H200")
    assert store.load("ci", "exp", "named")["provenance"]["device"] == "NVIDIA H200"
    assert store.device_name("cpu").startswith("CPU (")
    assert store.device_name("cpu") == f"CPU ({store.cpu_model()}, {os.cpu_count()} cores)"
    assert store.device_name("cpu:0").startswith("CPU (")


def test_load_or_compute_computes_once(tmp_store):
    calls = []

    def compute():
        calls.append(1)
        return {"v": len(calls)}, None, "cpu"

    r1 = store.load_or_compute("ci", "e", "n", {"k": 1}, compute)
    r2 = store.load_or_compute("ci", "e", "n", {"k": 1}, compute)
    assert r1.values == r2.values == {"v": 1} and len(calls) == 1
    r3 = store.load_or_compute("ci", "e", "n", {"k": 2}, compute)  # config changed: recompute
    assert r3.values == {"v": 2}


def test_heavy_profile_without_cuda_names_command(tmp_store):
    import torch
    if torch.cuda.is_available():
        pytest.skip("has CUDA")
    with pytest.raises(store.NeedsGPU, match="python -m rank1lib run e --profile gpu"):
        store.load_or_compute("gpu", "e", "n", {}, lambda: ({}, None), heavy=True)


def test_atomic_write_never_leaves_partial_file(tmp_store):
    """A writer that dies half-way leaves the previous result intact and no visible partial file."""
    store.save("ci", "e", "n", {}, {"v": 1})
    path = store.result_dir("ci", "e") / "n.json"

    def dying_writer(p):
        with open(p, "w") as f:
            f.write('{"half":')
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        store.atomic_write(path, dying_writer)
    assert json.loads(path.read_text())["values"] == {"v": 1}
    assert [f for f in os.listdir(path.parent) if f.startswith(".")] == []


def test_image_arrays_also_written_as_png(tmp_store):
    import matplotlib.image
    grid = (np.arange(12 * 10) % 256).astype(np.uint8).reshape(12, 10)
    store.save("ci", "e", "g", {}, {}, {"grid": grid, "curve": np.linspace(0, 1, 5)})
    png = store.result_dir("ci", "e") / "g.grid.png"
    assert png.exists() and not (store.result_dir("ci", "e") / "g.curve.png").exists()
    back = matplotlib.image.imread(png)[..., 0]
    np.testing.assert_allclose(back * 255, grid, atol=0.5)


def test_a_reader_config_never_computes_and_its_derived_configs_stay_readers(tmp_store):
    """profiles.reading: load_or_compute with its policy raises ResultPending instead of computing, a
    Config derived from it is a reader too, the flag never reaches a printed command, and a second
    thread's ordinary config still computes (no process- or thread-wide switch)."""
    import threading
    from rank1lib import store
    from rank1lib.profiles import Config, load_profile, reading, set_args
    cfg = load_profile("ci")
    computed = []
    compute = lambda: computed.append(1) or ({"v": 1}, None)  # noqa: E731
    for c in (reading(cfg), Config(reading(cfg), lam=3.0)):
        with pytest.raises(store.ResultPending):
            store.load_or_compute("ci", "e", "n", {}, compute, **store.policy(c))
    assert not computed and "read_only" not in set_args(reading(cfg))
    t = threading.Thread(target=lambda: store.load_or_compute("ci", "e", "n", {}, compute, **store.policy(cfg)))
    t.start()
    t.join()
    assert computed == [1]
    assert store.load_or_compute("ci", "e", "n", {}, compute, **store.policy(reading(cfg))).values == {"v": 1}

def test_book_keeps_each_figure_as_png_next_to_its_result(tmp_store):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.image
    import matplotlib.pyplot as plt
    from rank1lib import book
    store.save("ci", "spectrum", "mnist-5k-base-s0", {}, {"r": [0.1]})
    rec = store.load("ci", "spectrum", "mnist-5k-base-s0")
    fig, ax = plt.subplots(figsize=(2, 1))
    ax.plot([0, 1], [1, 0])
    book.keep(fig, rec, "fig3")
    png = store.result_dir("ci", "spectrum") / "mnist-5k-base-s0.fig-fig3.png"
    assert png.exists() and matplotlib.image.imread(png).shape[2] in (3, 4)
    first = png.read_bytes()
    fig, ax = plt.subplots(figsize=(2, 1))
    ax.plot([0, 1], [1, 0])
    book.keep(fig, rec, "fig3")  # the same figure again: byte-identical, so a re-render changes no file
    assert png.read_bytes() == first
    os.chmod(png.parent, 0o555)  # a read-only store: shown, not kept, no error
    try:
        if not os.access(png.parent, os.W_OK):  # (root ignores the mode)
            book.keep(plt.subplots()[0], rec, "other")
            assert not (png.parent / "mnist-5k-base-s0.fig-other.png").exists()
    finally:
        os.chmod(png.parent, 0o755)


def test_cpu_model_reads_the_model_name_line(tmp_path):
    """The processor's name, as /proc/cpuinfo gives it (whitespace collapsed); platform's answer without it."""
    import platform
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nvendor_id\t: GenuineIntel\n"
                    "model name\t: Intel(R) Xeon(R)  Platinum 8481C CPU @ 2.70GHz\nflags\t: fpu avx2\n")
    assert store.cpu_model(info) == "Intel(R) Xeon(R) Platinum 8481C CPU @ 2.70GHz"
    assert store.cpuinfo_field("flags", info) == ["fpu", "avx2"] and store.cpuinfo_field("bogus", info) is None
    assert store.cpu_model(tmp_path / "missing") == (platform.processor() or platform.machine())


def test_read_or_set_aside_reads_moves_torn_files_aside_and_keeps_them(tmp_path, capsys):
    good, torn, absent = tmp_path / "good.json", tmp_path / "torn.json", tmp_path / "absent.json"
    good.write_text(json.dumps({"a": [1, 2]}))
    torn.write_text('{"a": [1,')  # a write cut off mid-way
    read = lambda p: json.loads(p.read_text())  # noqa: E731
    assert store.read_or_set_aside(good, read) == ({"a": [1, 2]}, True)
    assert store.read_or_set_aside(absent, read) == (None, False)
    assert store.read_or_set_aside(torn, read, owner=False) == (None, False)
    assert torn.exists()  # only the owner moves a file
    assert store.read_or_set_aside(torn, read) == (None, False)
    moved = list(tmp_path.glob("torn.json.bad-*"))
    assert not torn.exists() and len(moved) == 1 and moved[0].read_text() == '{"a": [1,'
    assert "JSONDecodeError" in capsys.readouterr().err


def test_store_load_sets_aside_a_torn_record_but_raises_on_an_os_error(tmp_store, capsys, monkeypatch):
    store.save("ci", "e", "n", {"k": 1}, {"v": 1}, None)
    p = store.result_dir("ci", "e") / "n.json"
    assert store.load("ci", "e", "n", {"k": 1}).values == {"v": 1}
    text = p.read_text()
    p.write_text(text[: len(text) // 2])  # a record cut off mid-way: a reader leaves it, the owner sets it aside
    assert store.load("ci", "e", "n", {"k": 1}) is None and p.exists()
    assert "left in place" in capsys.readouterr().err
    assert store.load("ci", "e", "n", {"k": 1}, owner=True) is None
    assert not p.exists() and [q.read_text() for q in p.parent.glob("n.json.bad-*")] == [text[: len(text) // 2]]
    assert "JSONDecodeError" in capsys.readouterr().err
    store.save("ci", "e", "n", {"k": 1}, {"v": 2}, None)

    def denied(self, *a, **k):
        raise PermissionError(13, "Permission denied", str(self))
    with monkeypatch.context() as m, pytest.raises(PermissionError):  # not a torn file: the error reaches
        m.setattr(type(p), "read_text", denied)                           # the caller, nothing is moved
        store.load("ci", "e", "n", {"k": 1})
    assert p.exists() and len(list(p.parent.glob("n.json.bad-*"))) == 1
    assert store.load("ci", "e", "n", {"k": 1}).values == {"v": 2}
