"""Public API: task statistics from a user's per-sample loss, the Rank1EWC penalty, save/load."""
import pytest
import torch

import rank1lib
from rank1lib import diffusion, fisher
from rank1lib.models import build_unet


def _setup(n=12, seed=5):
    torch.manual_seed(0)
    net = build_unet("small1", 10)  # no attention, no dropout: train/eval mode give the same gradients
    x = torch.randint(0, 256, (16, 1, 32, 32), dtype=torch.uint8)
    y = torch.arange(16) % 10
    x0, yy, t, eps = fisher.joint_samples(x, y, n, seed)
    batches = [(x0[i:i + 5], yy[i:i + 5], t[i:i + 5], eps[i:i + 5]) for i in range(0, n, 5)]
    return net, x, y, batches


def loss_fn(model, batch):
    x0, y, t, eps = batch
    ab = diffusion.alpha_bar()
    x_t = diffusion.q_sample(diffusion.to_model_range(x0), t, eps, ab)
    return diffusion.per_sample_loss(model(x_t, t, class_labels=y).sample, eps)


@pytest.mark.parametrize("method", ["gradients", "hooks"])
def test_statistics_equal_the_per_sample_reference(method):
    net, x, y, batches = _setup()
    st = rank1lib.task_statistics(net, loss_fn, batches, diag=True, method=method)
    mu_ref, c_ref = fisher.mu_c_star_loop(net, x, y, 12, seed=5)
    assert (st.mu - mu_ref).abs().max() <= 1e-5 * mu_ref.abs().max()
    assert abs(st.c_star - c_ref) <= 1e-5 * abs(c_ref)
    d_ref = fisher.diag_fisher(net, x, y, 12, seed=5, method="loop")
    assert (st.diag - d_ref).abs().max() <= 1e-5 * d_ref.abs().max()
    assert st.n_samples == 12 and torch.equal(st.theta_star, fisher.flat_theta(net))
    # the continual loop's diagonal (public API, rank1lib's loss) on the same joint samples
    d_api = fisher.diag_fisher_api(net, x, y, 12, seed=5, chunk=5)
    assert (d_api - d_ref).abs().max() <= 1e-5 * d_ref.abs().max()


def test_penalty_matches_the_formula_and_survives_save_load(tmp_path):
    net, x, y, batches = _setup()
    pen = rank1lib.Rank1EWC(lam=300.0)
    assert float(pen(net)) == 0.0
    s1 = rank1lib.task_statistics(net, loss_fn, batches)
    pen.add_task(net, s1)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.01 * torch.randn_like(p))
    s2 = rank1lib.task_statistics(net, loss_fn, batches)
    pen.add_task(net, s2)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.01 * torch.randn_like(p))
    theta = fisher.flat_theta(net).double()
    want = sum(0.5 * 300.0 * s.c_star * float(s.mu.double() @ (theta - s.theta_star.double())) ** 2 for s in (s1, s2))
    got = pen(net)
    assert got.requires_grad and abs(float(got) - want) <= 1e-4 * want
    f = tmp_path / "ewc.safetensors"
    pen.save(f)
    again = rank1lib.Rank1EWC.load(f, net)
    assert abs(float(again(net)) - float(got)) <= 1e-6 * float(got)
    with pytest.raises(ValueError, match="not in the model"):
        rank1lib.Rank1EWC.load(f, torch.nn.Linear(3, 3))
    with torch.no_grad():  # same names, other shapes
        other = build_unet("small1", 10)
        other.conv_in.weight = torch.nn.Parameter(torch.zeros(16, 1, 5, 5))
    with pytest.raises(ValueError, match="do not match"):
        rank1lib.Rank1EWC.load(f, other)


def test_selected_parameters_and_bad_inputs():
    net, x, y, batches = _setup()
    names = [n for n, _ in net.named_parameters()][:3]
    st = rank1lib.task_statistics(net, loss_fn, batches, names=names)
    assert st.names == names and st.mu.numel() == sum(p.numel() for n, p in net.named_parameters() if n in names)
    with pytest.raises(ValueError, match="not in the model"):
        rank1lib.task_statistics(net, loss_fn, batches, names=["nope.weight"])
    with pytest.raises(ValueError, match=r"\(n,\) tensor"):
        rank1lib.task_statistics(net, lambda m, b: loss_fn(m, b).sum(), batches)
    pen = rank1lib.Rank1EWC(1.0)
    pen.add_task(net, st)
    with pytest.raises(ValueError, match="other parameters"):
        pen.add_task(net, rank1lib.task_statistics(net, loss_fn, batches))


def test_statistics_run_without_tf32_and_restore_the_flags():
    """On a GPU, PyTorch lets cuDNN use TF32 by default; statistics switch it off while they run."""
    net, x, y, batches = _setup()
    old = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = True, True
    seen = []

    def spying_loss(model, batch):
        seen.append((torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32))
        return loss_fn(model, batch)
    try:
        rank1lib.task_statistics(net, spying_loss, batches)
        assert seen and not any(a or b for a, b in seen)
        assert torch.backends.cudnn.allow_tf32 and torch.backends.cuda.matmul.allow_tf32
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = old


def test_book_path_uses_the_public_api():
    """fisher.mu_c_star (the continual loop's rank-1 statistics) equals task_statistics on the same
    joint samples, and the continual loop's rank-1 penalty is a Rank1EWC."""
    from rank1lib import continual
    net, x, y, batches = _setup()
    mu, c = fisher.mu_c_star(net, x, y, 12, seed=5, chunk=5)
    st = rank1lib.task_statistics(net, loss_fn, batches)
    assert torch.allclose(mu, st.mu, rtol=1e-6, atol=1e-9 * float(st.mu.abs().max())) and abs(c - st.c_star) <= 1e-6 * c
    pen = continual.method_penalty("rank1", 300.0)
    assert isinstance(pen, rank1lib.Rank1EWC)
    continual.add_to_penalty(pen, "rank1", net, {"mu": mu, "c_star": c})
    assert pen.n_tasks == 1 and float(pen(net)) == pytest.approx(0.0, abs=1e-6)


def test_penalty_sees_through_torch_compile():
    """The trainer hands extra_loss the torch.compile wrapper (parameter names prefixed `_orig_mod.`)."""
    net, x, y, batches = _setup()
    pen = rank1lib.Rank1EWC(lam=300.0)
    pen.add_task(net, rank1lib.task_statistics(net, loss_fn, batches))
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.01 * torch.randn_like(p))
    want = float(pen(net))
    pen._impl = None  # rebuild against the wrapper
    assert want > 0 and float(pen(torch.compile(net))) == pytest.approx(want, rel=1e-6)


def test_baselines_through_the_public_api_on_a_non_diffusers_model():
    """per_sample_gradients / diagonal_fisher / rank_k_fisher on a plain MLP with a dict batch, against
    one autograd.grad per sample and a dense eigendecomposition of G^T G / n."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(4, 6), torch.nn.Tanh(), torch.nn.Linear(6, 1))

    def mse(model, batch):  # a user's per-sample loss: any model, any batch structure
        return (model(batch["x"]).squeeze(1) - batch["y"]).pow(2)
    batches = [{"x": torch.randn(7, 4), "y": torch.randn(7)} for _ in range(3)]
    rows = []
    for b in batches:
        for i in range(7):
            g = torch.autograd.grad(mse(net, {"x": b["x"][i:i + 1], "y": b["y"][i:i + 1]})[0], list(net.parameters()))
            rows.append(torch.cat([x.reshape(-1) for x in g]))
    G = torch.stack(rows).double()
    got = torch.cat([rank1lib.per_sample_gradients(net, mse, b) for b in batches]).double()
    assert (got - G).abs().max() <= 1e-6 * G.abs().max()
    d = rank1lib.diagonal_fisher(net, mse, batches)
    assert torch.allclose(d.double(), G.pow(2).mean(0), rtol=1e-5, atol=1e-9)
    # power iteration on the same samples every iteration converges to the dense top-2 eigenpairs
    V, s = rank1lib.rank_k_fisher(net, mse, lambda it: batches, k=2, iters=60, seed=1)
    ev, U = torch.linalg.eigh(G.T @ G / len(G))
    assert torch.allclose(s.double(), ev.flip(0)[:2], rtol=1e-4)
    assert (V.double().T @ U[:, -2:]).abs().max(0).values.min() > 0.999


def test_auto_route_follows_the_memory_budget(monkeypatch):
    """'auto' stacks per-sample gradients when G fits curvature.engines.default_block_bytes, else uses the hooks;
    both give the same statistics."""
    from rank1lib.curvature import statistics
    net, x, y, batches = _setup()
    P = sum(p.numel() for p in net.parameters())
    assert statistics.auto_route(12, P, "cpu") == "gradients"
    routes = []
    real_g, real_h = statistics._stats_by_gradients, statistics._task_statistics
    monkeypatch.setattr(statistics, "_stats_by_gradients", lambda *a, **k: routes.append("g") or real_g(*a, **k))
    monkeypatch.setattr(statistics, "_task_statistics", lambda *a, **k: routes.append("h") or real_h(*a, **k))
    st_g = rank1lib.task_statistics(net, loss_fn, batches)
    monkeypatch.setattr(statistics, "default_block_bytes", lambda device: 4 * 12 * P - 1)  # one byte short
    assert statistics.auto_route(12, P, "cpu") == "hooks"
    st_h = rank1lib.task_statistics(net, loss_fn, batches)
    assert routes == ["g", "h"]
    assert (st_g.mu - st_h.mu).abs().max() <= 1e-5 * st_h.mu.abs().max()
    assert abs(st_g.c_star - st_h.c_star) <= 1e-5 * st_h.c_star
    with pytest.raises(ValueError, match="valid: auto, gradients, hooks"):
        rank1lib.task_statistics(net, loss_fn, batches, method="vmap")


class _Centred(torch.nn.Module):
    """Samples of a batch interact: the batch mean is subtracted (as batch statistics would)."""

    def __init__(self):
        super().__init__()
        self.lin = torch.nn.Linear(4, 1)

    def forward(self, x):
        return self.lin(torch.tanh(x - x.mean(0, keepdim=True)))


def test_interacting_samples_take_the_hook_route():
    """Per-sample gradients of samples taken alone are not the gradients of each sample's loss in its
    batch when samples interact: 'auto' notices on the first batch and uses the hooks, 'gradients'
    refuses. Reference: the dense Jacobian of the batch's losses."""
    torch.manual_seed(3)
    model = _Centred()
    batches = [(torch.randn(6, 4) * 3, torch.randn(6)) for _ in range(2)]

    def loss(m, b):
        return (m(b[0])[:, 0] - b[1]) ** 2
    names, params = zip(*model.named_parameters())
    G = []
    for b in batches:
        def batch_losses(*ps, b=b):
            return loss(lambda x: torch.func.functional_call(model, dict(zip(names, ps)), (x,)), b)
        jac = torch.autograd.functional.jacobian(batch_losses, params)
        G.append(torch.cat([j.reshape(6, -1) for j in jac], dim=1).double())
    G = torch.cat(G)
    mu = G.mean(0)
    c_ref = float((G @ mu).pow(2).mean() / mu.dot(mu) ** 2)
    st = rank1lib.task_statistics(model, loss, batches)
    assert (st.mu.double() - mu).abs().max() <= 1e-5 * mu.abs().max()
    assert abs(st.c_star - c_ref) <= 1e-5 * c_ref
    with pytest.raises(ValueError, match="do not add up"):
        rank1lib.task_statistics(model, loss, batches, method="gradients")
