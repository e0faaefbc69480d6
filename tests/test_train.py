import torch

from rank1lib.models import build_unet
from rank1lib.profiles import load_profile
from rank1lib.train import steps_for, train


def make(seed=0):
    torch.manual_seed(seed)
    return build_unet("small1", 10)


def data():
    g = torch.Generator().manual_seed(0)
    return torch.randint(0, 256, (40, 1, 32, 32), generator=g, dtype=torch.uint8), torch.arange(40) % 10


def test_resume_equals_uninterrupted(tmp_path):
    cfg = load_profile("ci", batch_size=8, ckpt_every=0)
    x, y = data()
    ref = make()
    out_ref = train(ref, x, y, cfg, steps=7, seed=3, progress=False)
    net = make()
    part = train(net, x, y, cfg, steps=7, seed=3, ckpt_dir=tmp_path, stop_after=4, progress=False)
    assert part["interrupted"] and part["steps"] == 4
    resumed = make(seed=99)  # a fresh process would rebuild the model from scratch
    out = train(resumed, x, y, cfg, steps=7, seed=3, ckpt_dir=tmp_path, progress=False)
    assert out["losses"] == out_ref["losses"]
    for a, b in zip(ref.state_dict().values(), resumed.state_dict().values()):
        assert torch.equal(a, b)
    # a finished run does nothing more
    again = train(make(), x, y, cfg, steps=7, seed=3, ckpt_dir=tmp_path, progress=False)
    assert again["losses"] == out_ref["losses"]


def test_training_reduces_loss():
    cfg = load_profile("ci", batch_size=20, lr=2e-3)
    x = torch.zeros(40, 1, 32, 32, dtype=torch.uint8)  # a trivially learnable distribution
    y = torch.zeros(40, dtype=torch.long)
    net = make()
    out = train(net, x, y, cfg, steps=30, seed=0, progress=False)
    assert sum(out["losses"][-5:]) < 0.7 * sum(out["losses"][:5])


def test_steps_for_profile():
    cfg = load_profile("paper")
    assert steps_for(cfg, 12000) == 200 * 94
    assert steps_for(load_profile("ci"), 12000) == 4


def test_compiled_step_matches_eager_and_bf16_stays_close(monkeypatch):
    """compile = on gives the eager losses (same maths, fused kernels); amp = on (bf16 autocast) stays
    within a few per cent of fp32 over a few steps. Both are what the cpu tier's continual runs use.
    bf16 is forced on (as on a CPU with AVX512-BF16/AMX) so that it runs on any CPU, emulated or not."""
    import shutil

    import pytest
    from rank1lib import train as tr
    monkeypatch.setattr(tr, "native_bf16", lambda device: True)
    if shutil.which("g++") is None and shutil.which("c++") is None:
        pytest.skip("torch.compile on CPU needs a C++ compiler")
    x, y = data()
    runs = {}
    for amp, comp in (("off", "off"), ("off", "on"), ("on", "off")):
        cfg = load_profile("ci", batch_size=8, ckpt_every=0, amp=amp, compile=comp)
        runs[amp, comp] = train(make(), x, y, cfg, steps=3, seed=3, progress=False, device="cpu")["losses"]
    eager = torch.tensor(runs["off", "off"])
    assert torch.allclose(torch.tensor(runs["off", "on"]), eager, rtol=1e-3)
    bf16 = torch.tensor(runs["on", "off"])
    assert torch.allclose(bf16, eager, rtol=0.05) and not torch.equal(bf16, eager)
