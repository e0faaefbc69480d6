"""Fisher geometry: per-sample gradients, mu, c*, diag Fisher, Gram identities (rank1lib.fisher)."""
import pytest
import torch

from rank1lib import diffusion, fisher, models
from rank1lib.curvature import spectrum


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
    flat = fisher.flat_theta(tiny)
    ps = list(tiny.parameters())
    assert flat.numel() == models.n_params(tiny)
    assert torch.equal(flat[:ps[0].numel()], ps[0].detach().reshape(-1))
    assert torch.equal(flat[-ps[-1].numel():], ps[-1].detach().reshape(-1))
    flat += 1  # a copy, not a view
    assert not torch.equal(flat[:ps[0].numel()], ps[0].detach().reshape(-1))


@pytest.mark.parametrize("method", ["vmap", "hooks", "loop"])
def test_per_sample_grads_equal_loop(tiny, data, method):
    x0, y = data
    x0s, ys, t, eps = fisher.joint_samples(x0, y, 5, seed=3)
    tiny.train()
    g = fisher.per_sample_grads(tiny, x0s, ys, t, eps, chunk=2, method=method)
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


def _check_stats(a, b, tol):
    for key in ("lam", "r", "share", "fro", "trace", "err_diag", "err_rank1", "c_star", "mu_norm", "cos"):
        x, y = torch.as_tensor(a[key], dtype=torch.float64), torch.as_tensor(b[key], dtype=torch.float64)
        assert torch.allclose(x, y, rtol=tol, atol=tol * max(1e-12, float(y.abs().max()))), key


def test_gram_identities_random_G():
    torch.manual_seed(0)
    G = torch.randn(12, 40, dtype=torch.float64) + 0.7 * torch.randn(40, dtype=torch.float64)
    acc = spectrum.gram_from_G(G)
    _check_stats(spectrum.spectrum_from_gram(acc["K"], acc["d2"], acc["Gmu"], acc["mu"]),
                 spectrum.dense_stats(G), 1e-9)


def test_rank1_G_gives_zero_ratio_and_error():
    torch.manual_seed(1)
    v = torch.randn(30, dtype=torch.float64)
    G = torch.outer(torch.randn(8, dtype=torch.float64) + 2.0, v)
    acc = spectrum.gram_from_G(G)
    s = spectrum.spectrum_from_gram(acc["K"], acc["d2"], acc["Gmu"], acc["mu"])
    assert s["r"] < 1e-10 and s["err_rank1"] < 1e-6 and abs(s["share"] - 1) < 1e-10
    assert abs(s["cos"] - 1).max() < 1e-10


def test_orthogonal_supports_give_zero_diag_error():
    G = torch.zeros(5, 20, dtype=torch.float64)
    for i in range(5):
        G[i, 4 * i:4 * i + 1] = i + 1.0  # one coordinate per sample: F is exactly diagonal
    acc = spectrum.gram_from_G(G)
    s = spectrum.spectrum_from_gram(acc["K"], acc["d2"], acc["Gmu"], acc["mu"])
    assert s["err_diag"] < 1e-6 and spectrum.dense_stats(G)["err_diag"] < 1e-12


def test_gram_path_equals_dense_on_tiny_unet(tiny, data):
    x0, y = data
    x0s, ys, t, eps = fisher.joint_samples(x0, y, 6, seed=7, t=700)
    # a small block budget forces several parameter groups (G never whole)
    groups = fisher.param_groups(tiny, 6, block_bytes=6 * 4 * 20000)
    assert len(groups) > 2
    acc = fisher.gram_accumulate(tiny, x0s, ys, t, eps, chunk=3, block_bytes=6 * 4 * 20000, method="vmap",
                                 col_chunk=5000)
    R = loop_grads(tiny, x0s, ys, t, eps)
    ref = spectrum.dense_stats(R[:, :6000])  # dense F on a slice only: P x P must stay small
    assert torch.allclose(acc["K"], R @ R.T / 6, rtol=1e-4, atol=1e-9 * float(R.pow(2).sum()))
    got = spectrum.spectrum_from_gram(acc["K"], acc["d2"], acc["Gmu"], acc["mu"])
    full = spectrum.spectrum_from_gram(*spectrum.gram_from_G(R).values())
    _check_stats(got, full, 1e-4)
    sl = spectrum.gram_from_G(R[:, :6000])
    _check_stats(spectrum.spectrum_from_gram(sl["K"], sl["d2"], sl["Gmu"], sl["mu"]), ref, 1e-8)


def test_cosine_matrix():
    a, b = torch.tensor([1.0, 0.0]), torch.tensor([1.0, 1.0])
    C = spectrum.cosine_matrix([a, b, -a])
    assert abs(C[0, 1] - 2 ** -0.5) < 1e-12 and abs(C[0, 2] + 1) < 1e-12 and abs(C[1, 1] - 1) < 1e-12


def test_bad_method_rejected(tiny, data):
    with pytest.raises(ValueError, match="valid"):
        fisher.diag_fisher(tiny, *data, 2, seed=0, method="dense")


def test_hook_per_sample_grads_of_a_parameter_subset_in_any_order(tiny, data):
    """A subset of parameters named out of the model's order: the hook path returns each name's own
    gradients (equal to vmap's for the same names)."""
    x0, y = data
    x0s, ys, t, eps = fisher.joint_samples(x0, y, 4, seed=8)
    names = fisher.param_names(tiny)[::-7]
    gh = fisher.per_sample_grads(tiny, x0s, ys, t, eps, chunk=4, names=names, method="hooks")
    gv = fisher.per_sample_grads(tiny, x0s, ys, t, eps, chunk=4, names=names, method="vmap")
    assert set(gh) == set(names) and all(gh[n].shape == gv[n].shape for n in names)
    H, V = fisher.flatten_grads(gh, names), fisher.flatten_grads(gv, names)
    assert (H - V).abs().max() <= 1e-5 * V.abs().max()  # (to_k's bias has zero gradient: round-off only)
