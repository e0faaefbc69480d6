import torch

from rank1lib import replay
from rank1lib.diffusion import alpha_bar, eps_theta, q_sample, to_model_range
from rank1lib.models import build_unet


def nets():
    torch.manual_seed(0)
    return build_unet("small1", 10)


def pool():
    g = torch.Generator().manual_seed(0)
    return torch.randint(0, 256, (12, 1, 32, 32), generator=g, dtype=torch.uint8), torch.arange(12) % 4


def test_distillation_zero_for_identical_student_and_value_otherwise():
    net = nets()
    x, y = pool()
    term = replay.Distillation(replay.frozen_copy(net), x, y, batch_size=5)
    torch.manual_seed(1)
    assert float(term(net, 0)) == 0.0
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.05 * torch.randn_like(p))
    # hand-computed: same RNG draws as Distillation.batch
    torch.manual_seed(2)
    idx = torch.randint(0, 12, (5,))
    x0 = to_model_range(x[idx])
    t = torch.randint(0, 1000, (5,))
    eps = torch.randn(x0.shape)
    xt = q_sample(x0, t, eps, alpha_bar())
    with torch.no_grad():
        want = ((eps_theta(net, xt, t, y[idx]) - eps_theta(term.teacher, xt, t, y[idx])) ** 2).mean()
    torch.manual_seed(2)
    got = term(net, 0)
    assert got > 0 and torch.allclose(got, want, rtol=1e-5)
    got.backward()
    assert all(p.grad is None for p in term.teacher.parameters())  # teacher frozen


def test_pool_has_requested_classes_and_is_reproducible():
    net = nets()
    x, y = replay.make_pool(net, [2, 7], per_class=3, steps=2, seed=4)
    assert x.dtype == torch.uint8 and x.shape == (6, 1, 32, 32)
    assert y.tolist() == [2, 2, 2, 7, 7, 7]
    x2, _ = replay.make_pool(net, [2, 7], per_class=3, steps=2, seed=4)
    assert torch.equal(x, x2)


def test_pool_resumes_after_an_interruption_with_the_same_images(tmp_path, monkeypatch):
    net = nets()
    want, _ = replay.make_pool(net, [2, 7], per_class=3, steps=2, seed=4, batch_size=2)  # 3 batches
    part = tmp_path / "pool.part.pt"
    real_write, calls = replay.store.atomic_write, []

    def write_then_stop(path, write):
        calls.append(path)
        if len(calls) == 2:  # batch 1 sampled, the run stops before it is kept
            raise KeyboardInterrupt
        real_write(path, write)

    monkeypatch.setattr(replay.store, "atomic_write", write_then_stop)
    try:
        replay.make_pool(net, [2, 7], per_class=3, steps=2, seed=4, batch_size=2, part=part)
    except KeyboardInterrupt:
        pass
    monkeypatch.setattr(replay.store, "atomic_write", real_write)
    assert sorted(torch.load(part, weights_only=True)["batches"]) == [0]
    forwards = []
    hook = net.register_forward_hook(lambda *a: forwards.append(1))
    got, _ = replay.make_pool(net, [2, 7], per_class=3, steps=2, seed=4, batch_size=2, part=part)
    hook.remove()
    assert len(forwards) == 2 * 2  # only batches 1 and 2 sampled again, 2 DDIM steps each
    assert torch.equal(got, want)
    other, _ = replay.make_pool(net, [2, 7], per_class=3, steps=2, seed=5, batch_size=2, part=part)
    fresh, _ = replay.make_pool(net, [2, 7], per_class=3, steps=2, seed=5, batch_size=2)
    assert torch.equal(other, fresh)  # a part file of other settings is not used
    part.write_bytes(b"torn")  # an unreadable part file is moved aside and the pool sampled afresh
    again, _ = replay.make_pool(net, [2, 7], per_class=3, steps=2, seed=4, batch_size=2, part=part)
    assert torch.equal(again, want) and len(list(tmp_path.glob("pool.part.pt.bad-*"))) == 1


def test_pool_paused_by_the_deadline_mid_batch_resumes_at_that_step_with_the_same_images(tmp_path, monkeypatch):
    import pytest
    from rank1lib.train import DeadlineReached
    net = nets()
    args = dict(per_class=3, steps=4, seed=4, batch_size=4)  # 2 batches of 4 DDIM steps
    want, _ = replay.make_pool(net, [2, 7], **args)
    part = tmp_path / "pool.part.pt"
    forwards = []
    hook = net.register_forward_hook(lambda *a: forwards.append(1))
    monkeypatch.setenv("RANK1_DEADLINE", "1")  # long past: pause after the first step
    with pytest.raises(DeadlineReached, match="batch 1 after 1/4 steps"):
        replay.make_pool(net, [2, 7], **args, part=part)
    saved = torch.load(part, weights_only=True)
    assert saved["batches"] == {} and (saved["paused"]["b"], saved["paused"]["i"]) == (0, 1)
    monkeypatch.delenv("RANK1_DEADLINE")
    got, _ = replay.make_pool(net, [2, 7], **args, part=part)
    hook.remove()
    assert len(forwards) == 1 + 3 + 4  # one step before the pause, the other 3 of batch 0, then batch 1
    assert torch.equal(got, want)  # eta = 0: continuing from x_t is exact
    assert "paused" not in torch.load(part, weights_only=True)  # gone once a batch finishes
