"""Fisher geometry: per-sample gradients, mu, c*, diag Fisher, Gram identities (rank1lib.fisher)."""
import pytest
import torch

from rank1lib import diffusion, fisher, models


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return models.build_unet("tiny", 10)  # has attention blocks: exercises the processor switch


@pytest.fixture(scope="module")
def data():
    g = torch.Generator().manual_seed(1)
    return torch.randint(0, 256, (20, 1, 32, 32), dtype=torch.uint8, generator=g), torch.arange(20) % 10


def loop_grads(model, x0, y, t, eps):
    """Independent reference: one ordinary backward per sample, in eval mode."""
    ab = diffusion.alpha_bar()
    model.eval()
    rows = []
    for i in range(len(x0)):
        model.zero_grad(set_to_none=True)
        x_t = diffusion.q_sample(diffusion.to_model_range(x0[i:i + 1]), t[i:i + 1], eps[i:i + 1], ab)
        out = diffusion.eps_theta(model, x_t, t[i:i + 1], y[i:i + 1])
        ((out - eps[i:i + 1]) ** 2).mean().backward()
        rows.append(torch.cat([p.grad.reshape(-1) for p in model.parameters()]).double())
    model.zero_grad(set_to_none=True)
    return torch.stack(rows)


def test_flat_params_order(tiny):
    flat = fisher.flat_params(tiny)
    ps = list(tiny.parameters())
    assert flat.numel() == models.n_params(tiny)
    assert torch.equal(flat[:ps[0].numel()], ps[0].detach().reshape(-1))
    assert torch.equal(flat[-ps[-1].numel():], ps[-1].detach().reshape(-1))
    flat += 1  # a copy, not a view
    assert not torch.equal(flat[:ps[0].numel()], ps[0].detach().reshape(-1))


def test_per_sample_grads_equal_loop(tiny, data):
    x0, y = data
    x0s, ys, t, eps = fisher.joint_samples(x0, y, 5, seed=3)
    tiny.train()
    g = fisher.per_sample_grads(tiny, x0s, ys, t, eps, chunk=2)
    assert tiny.training  # mode restored
    G = fisher.flatten_grads(g, fisher.param_names(tiny)).double()
    R = loop_grads(tiny, x0s, ys, t, eps)
    assert torch.allclose(G, R, rtol=1e-4, atol=1e-6 * R.abs().max().item())


def test_mu_c_star_equal_loop(tiny, data):
    x0, y = data
    x0s, ys, t, eps = fisher.joint_samples(x0, y, 6, seed=4)
    R = loop_grads(tiny, x0s, ys, t, eps)
    mu_ref = R.mean(0)
    c_ref = float((R @ mu_ref).pow(2).mean() / mu_ref.dot(mu_ref) ** 2)
    mu, c_star = fisher.mu_c_star(tiny, x0, y, 6, seed=4, chunk=4)
    assert mu.shape == (models.n_params(tiny),) and mu.dtype == torch.float32
    assert (mu.double() - mu_ref).norm() / mu_ref.norm() < 1e-5
    assert abs(c_star - c_ref) / c_ref < 1e-5
    # c* is the least-squares scale of mu mu^T: E[(mu^T g)^2] >= ||mu||^4 (Jensen), so c* >= 1
    assert c_star >= 1 - 1e-6


def test_diag_fisher_equal_loop(tiny, data):
    x0, y = data
    x0s, ys, t, eps = fisher.joint_samples(x0, y, 6, seed=5)
    R = loop_grads(tiny, x0s, ys, t, eps)
    d = fisher.diag_fisher(tiny, x0, y, 6, seed=5, chunk=4)
    d_ref = R.pow(2).mean(0)
    assert (d.double() - d_ref).norm() / d_ref.norm() < 1e-5


def test_joint_samples_fixed_t_and_seed(data):
    x0, y = data
    a = fisher.joint_samples(x0, y, 7, seed=9, t=700)
    b = fisher.joint_samples(x0, y, 7, seed=9, t=700)
    assert (a[2] == 700).all() and all(torch.equal(u, v) for u, v in zip(a, b))
    with pytest.raises(ValueError):
        fisher.joint_samples(x0[:0], y[:0], 3, seed=0)
