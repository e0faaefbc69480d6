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
