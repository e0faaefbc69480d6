"""Per-sample directional derivatives through layer hooks (rank1lib.curvature.hooks) against per-sample
gradients from a plain autograd loop, and task_statistics' fallback to the double backward."""
import pytest
import torch
from torch import nn

import rank1lib
from rank1lib import diffusion, fisher
from rank1lib.curvature import engines, hooks, statistics
from rank1lib.models import build_unet


def _loss(model, batch):
    x0, y, t, eps = batch
    x_t = diffusion.q_sample(diffusion.to_model_range(x0), t, eps, diffusion.alpha_bar())
    return diffusion.per_sample_loss(model(x_t, t, class_labels=y).sample, eps)


def _loop_G(model, loss, batch, n):
    """Dense per-sample gradients, one autograd.grad per sample (the reference)."""
    params = [p for p in model.parameters() if p.requires_grad]
    rows = []
    for i in range(n):
        li = loss(model, tuple(b[i:i + 1] for b in batch))[0]
        rows.append(torch.cat([g.reshape(-1) for g in torch.autograd.grad(li, params)]).double())
    return torch.stack(rows)


def test_hooks_equal_per_sample_gradients_times_v_on_a_unet_with_attention():
    torch.manual_seed(0)
    net = build_unet("tiny", 10).eval()  # Conv2d, Linear (attention, time embedding), GroupNorm, Embedding
    x = torch.randint(0, 256, (8, 1, 32, 32), dtype=torch.uint8)
    batch = fisher.joint_samples(x, torch.arange(8) % 10, 6, seed=3)
    names = fisher.param_names(net)
    found = hooks.owners(net, names)
    assert found is not None and {type(m) for m, _ in found.values()} == set(hooks.SUPPORTED)
    v = {n: torch.randn_like(p) for n, p in net.named_parameters()}
    with engines._attention(net):
        u = hooks.directional(net, lambda: _loss(net, batch), found, v)
        G = _loop_G(net, _loss, batch, 6)
    u_ref = G @ torch.cat([v[n].reshape(-1) for n in names]).double()
    assert (u - u_ref).abs().max() <= 1e-5 * u_ref.abs().max()


class _Sneaky(nn.Module):
    """A layer's weight also used outside that layer's forward: hooks alone would miss that use."""

    def __init__(self):
        super().__init__()
        self.lin, self.out = nn.Linear(6, 6), nn.Linear(6, 1)

    def forward(self, x):
        return self.out(torch.tanh(self.lin(x) + x @ self.lin.weight.T))


class _Custom(nn.Module):
    """A parameter outside any supported layer (an elementwise scale)."""

    def __init__(self):
        super().__init__()
        self.lin, self.scale = nn.Linear(6, 1), nn.Parameter(torch.ones(6))

    def forward(self, x):
        return self.lin(torch.tanh(x * self.scale))


def _mse(model, batch):
    x, y = batch
    return (model(x)[:, 0] - y) ** 2


def test_statistics_fall_back_to_the_double_backward_where_hooks_cannot_follow(monkeypatch):
    torch.manual_seed(1)
    calls = []
    real = statistics._dots_double_backward
    monkeypatch.setattr(statistics, "_dots_double_backward", lambda *a: calls.append(1) or real(*a))
    for model, n_double in ((nn.Sequential(nn.Linear(6, 5), nn.Tanh(), nn.Linear(5, 1)), 1),  # check only
                            (_Sneaky(), 4),  # the check on the first CHECK samples, then every batch
                            (_Custom(), 3)):  # no hook path at all: every batch
        batches = [(torch.randn(4, 6), torch.randn(4)) for _ in range(3)]
        calls.clear()
        st = rank1lib.task_statistics(model, _mse, batches, method="hooks")
        G = torch.cat([_loop_G(model, _mse, b, 4) for b in batches])
        mu = G.mean(0)
        c_ref = float((G @ mu).pow(2).mean() / mu.dot(mu) ** 2)
        assert (st.mu.double() - mu).abs().max() <= 1e-5 * mu.abs().max()
        assert abs(st.c_star - c_ref) <= 1e-5 * c_ref
        assert len(calls) == n_double, type(model).__name__
    assert hooks.owners(_Custom(), ["lin.weight", "lin.bias", "scale"]) is None


def test_statistics_of_dict_batches_larger_than_the_check(monkeypatch):
    """Batches as dicts of tensors, larger than engines.CHECK: the hook path is checked on the first
    CHECK samples (one double backward in all) and mu, c* equal the dense per-sample reference."""
    torch.manual_seed(2)
    model = nn.Sequential(nn.Linear(6, 5), nn.Tanh(), nn.Linear(5, 1))
    batches = [{"x": torch.randn(20, 6), "y": torch.randn(20)} for _ in range(2)]
    calls = []
    real = statistics._dots_double_backward

    def counted(m, loss, batch, *rest):
        calls.append(len(batch["x"]))
        return real(m, loss, batch, *rest)
    monkeypatch.setattr(statistics, "_dots_double_backward", counted)
    loss = lambda m, b: (m(b["x"])[:, 0] - b["y"]) ** 2  # noqa: E731
    st = rank1lib.task_statistics(model, loss, batches, method="hooks")
    assert calls == [engines.CHECK]
    G = torch.cat([_loop_G(model, lambda m, b: loss(m, {"x": b[0], "y": b[1]}), (b["x"], b["y"]), 20)
                   for b in batches])
    mu = G.mean(0)
    assert (st.mu.double() - mu).abs().max() <= 1e-5 * mu.abs().max()
    assert abs(st.c_star - float((G @ mu).pow(2).mean() / mu.dot(mu) ** 2)) <= 1e-5 * st.c_star


class _Zoo(nn.Module):
    """Every supported layer in its less common forms: a grouped, strided, dilated convolution without
    bias, a Linear on (n, L, d) inputs, an Embedding with a padding row, GroupNorm, and one layer called
    twice in a forward (its per-sample gradients add up over the calls)."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(4, 6, 3, stride=2, padding=2, dilation=2, groups=2, bias=False)
        self.norm = nn.GroupNorm(3, 6)
        self.twice = nn.Conv2d(6, 6, 1)
        self.emb = nn.Embedding(5, 6, padding_idx=0)
        self.lin = nn.Linear(6, 3)

    def forward(self, x, c):
        h = torch.tanh(self.norm(self.conv(x))) + self.emb(c)[:, :, None, None]
        h = self.twice(torch.tanh(self.twice(h)))
        return self.lin(h.flatten(2).transpose(1, 2)).pow(2).mean((1, 2))


def test_hook_per_sample_gradients_equal_the_loop():
    """hooks.per_sample against one autograd.grad per sample, on the book's tiny UNet (attention,
    time embedding, GroupNorm, class Embedding) and on _Zoo (label 0 hits the Embedding's padding row)."""
    torch.manual_seed(4)
    net = build_unet("tiny", 10).eval()
    x = torch.randint(0, 256, (8, 1, 32, 32), dtype=torch.uint8)
    batch = fisher.joint_samples(x, torch.arange(8) % 10, 5, seed=6)
    with engines._attention(net):
        G_ref = _loop_G(net, _loss, batch, 5)
    G = engines.per_sample_gradients(net, _loss, batch, method="hooks").double()
    assert (G - G_ref).abs().max() <= 1e-5 * G_ref.abs().max()
    zoo = _Zoo()
    zb = (torch.randn(6, 4, 9, 9), torch.tensor([0, 1, 2, 3, 4, 0]))
    zloss = lambda m, b: m(*b)  # noqa: E731
    G_ref = _loop_G(zoo, zloss, zb, 6)
    G = engines.per_sample_gradients(zoo, zloss, zb, method="hooks").double()
    assert (G - G_ref).abs().max() <= 1e-5 * G_ref.abs().max()


def test_hook_gradients_are_checked_and_fall_back_to_vmap(monkeypatch):
    """With hooks as the measured 'auto' path, task_statistics' gradient route checks the hook gradients
    on its first batch: a weight used outside its layer (_Sneaky) or a parameter outside any supported
    layer (_Custom) sends it to vmap, and the statistics equal the dense reference."""
    monkeypatch.setitem(engines.AUTO_METHOD, "cpu", "hooks")
    used = []
    real = engines.per_sample_gradients
    monkeypatch.setattr(statistics, "per_sample_gradients",
                        lambda *a, method="vmap": used.append(method) or real(*a, method=method))
    for model, want in ((nn.Sequential(nn.Linear(6, 5), nn.Tanh(), nn.Linear(5, 1)), ["hooks"] * 3),
                        (_Sneaky(), ["hooks"] + ["vmap"] * 3), (_Custom(), ["hooks"] + ["vmap"] * 3)):
        torch.manual_seed(5)
        batches = [(torch.randn(4, 6), torch.randn(4)) for _ in range(3)]
        used.clear()
        st = rank1lib.task_statistics(model, _mse, batches, method="gradients")
        assert used == want, type(model).__name__
        G = torch.cat([_loop_G(model, _mse, b, 4) for b in batches])
        mu = G.mean(0)
        assert (st.mu.double() - mu).abs().max() <= 1e-5 * mu.abs().max()
        assert abs(st.c_star - float((G @ mu).pow(2).mean() / mu.dot(mu) ** 2)) <= 1e-5 * st.c_star
    batch = (torch.randn(4, 6), torch.randn(4))
    names = fisher.param_names(_Sneaky())
    sneaky = _Sneaky()
    with pytest.raises(RuntimeError, match="use method='vmap'"):
        fisher._check_rows(sneaky, _mse, batch, names, real(sneaky, _mse, batch, method="hooks"))
