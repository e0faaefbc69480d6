import torch

from rank1lib.curvature import penalties
from rank1lib.models import build_unet


def tiny_net(seed=0):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh(), torch.nn.Linear(4, 2))


def flat(model):
    return torch.cat([p.detach().reshape(-1).double() for p in model.parameters()])


def perturb(model, scale, seed):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g))


def test_rank1_penalty_equals_hand_computed_sum_over_tasks():
    net = tiny_net()
    P = flat(net).numel()
    pen = penalties.rank1_penalty(lam=3.0)
    thetas, mus, cs = [], [], [0.7, 2.5, 0.1]
    for k, c in enumerate(cs):
        perturb(net, 0.3, seed=k)
        mu = torch.randn(P, generator=torch.Generator().manual_seed(10 + k))
        pen.add_task(net, mu, [c])
        thetas.append(flat(net)), mus.append(mu.double())
    perturb(net, 0.2, seed=99)
    theta = flat(net)
    want = 0.5 * 3.0 * sum(c * (m @ (theta - t)) ** 2 for c, m, t in zip(cs, mus, thetas))
    got = pen(net)
    assert torch.allclose(got.double(), want, rtol=1e-5)
    # the gradient is lam * sum_k c_k (mu_k^T d_k) mu_k
    got.backward()
    grad = torch.cat([p.grad.reshape(-1) for p in net.parameters()]).double()
    want_g = 3.0 * sum(c * (m @ (theta - t)) * m for c, m, t in zip(cs, mus, thetas))
    assert torch.allclose(grad, want_g, rtol=1e-4, atol=1e-6)


def test_diag_penalty_equals_hand_computed():
    net = tiny_net()
    P = flat(net).numel()
    pen = penalties.DiagPenalty(lam=5.0)
    thetas, Fs = [], []
    for k in range(3):
        perturb(net, 0.5, seed=k)
        F = torch.rand(P, generator=torch.Generator().manual_seed(k))
        F[:3] = 0.0  # parameters no task cares about
        pen.add_task(net, F)
        thetas.append(flat(net)), Fs.append(F.double())
    perturb(net, 0.1, seed=7)
    theta = flat(net)
    want = 0.5 * 5.0 * sum((F * (theta - t) ** 2).sum() for F, t in zip(Fs, thetas))
    got = pen(net)
    assert torch.allclose(got.double(), want, rtol=1e-5)
    got.backward()
    grad = torch.cat([p.grad.reshape(-1) for p in net.parameters()]).double()
    want_g = 5.0 * sum(F * (theta - t) for F, t in zip(Fs, thetas))
    assert torch.allclose(grad, want_g, rtol=1e-4, atol=1e-6)


def test_penalty_zero_at_theta_star_and_with_lam_zero():
    net = tiny_net()
    P = flat(net).numel()
    r1 = penalties.rank1_penalty(100.0)
    r1.add_task(net, torch.randn(P), [1.0])
    assert abs(float(r1(net).detach())) < 1e-8
    off = penalties.rank1_penalty(0.0)
    off.add_task(net, torch.randn(P), [1.0])
    perturb(net, 1.0, 0)
    assert float(off(net).detach()) == 0.0


def test_rank_k_power_iteration_on_exact_rank1_fisher_equals_rank1():
    """Per-sample grads g_i = a_i mu (exactly collinear) give F = E[a^2] mu mu^T, rank 1."""
    net = tiny_net()
    P = flat(net).numel()
    mu = torch.randn(P, generator=torch.Generator().manual_seed(0)).double()
    a = torch.randn(64, generator=torch.Generator().manual_seed(1)).double()
    G = a[:, None] * mu[None]
    F = G.T @ G / len(a)
    V = torch.linalg.qr(torch.randn(P, 1, dtype=torch.float64))[0]
    for _ in range(3):
        V = torch.linalg.qr(F @ V)[0]
    s = (V * (F @ V)).sum(0)
    c_star = float((G @ mu).pow(2).mean() / mu.dot(mu) ** 2)
    r1, rk = penalties.rank1_penalty(2.0), penalties.LowRankPenalty(2.0)
    r1.add_task(net, mu.float(), [c_star])
    rk.add_task(net, V.float(), s)
    perturb(net, 0.3, 5)
    assert torch.allclose(r1(net), rk(net), rtol=1e-4)


def test_rank_k_fisher_on_model_matches_dense_eigendecomposition():
    """Stochastic power iteration against a dense eigendecomposition of the same samples' Fisher."""
    from rank1lib import fisher
    torch.manual_seed(0)
    net = build_unet("small1", 10)
    x = torch.randint(0, 256, (8, 1, 32, 32), dtype=torch.uint8)
    y = torch.arange(8) % 10
    # with iters=0 the result is the Rayleigh quotient of the random start; with many iterations on
    # a small problem the top eigenvalue approaches the dense one computed on the final sample
    V, s = fisher.rank_k_pairs(net, x, y, k=2, iters=6, n_samples=24, seed=3, chunk=24)
    assert V.shape[1] == 2 and torch.allclose(V.T.double() @ V.double(), torch.eye(2, dtype=torch.float64), atol=1e-4)
    x0, yy, t, eps = fisher.joint_samples(x, y, 24, 3 * 1000)
    names = fisher.param_names(net)
    G = fisher.flatten_grads(fisher.per_sample_grads(net, x0, yy, t, eps, chunk=24), names).double()
    lam_top = torch.linalg.eigvalsh(G @ G.T / 24)[-1]  # nonzero spectrum of F = G^T G / n
    assert 0.5 * lam_top < s[0] <= lam_top * 1.0001


def test_rank_k_pairs_are_ritz_pairs_of_the_final_sample():
    """After the Rayleigh-Ritz step, V^T F V is diagonal on the final sample and equals diag(s)."""
    from rank1lib import fisher
    torch.manual_seed(1)
    net = build_unet("small1", 10)
    x = torch.randint(0, 256, (8, 1, 32, 32), dtype=torch.uint8)
    y = torch.arange(8) % 10
    V, s = fisher.rank_k_pairs(net, x, y, k=3, iters=2, n_samples=16, seed=4, chunk=16)
    x0, yy, t, eps = fisher.joint_samples(x, y, 16, 4 * 1000)
    G = fisher.flatten_grads(fisher.per_sample_grads(net, x0, yy, t, eps, chunk=16), fisher.param_names(net)).double()
    GV = G @ V.double()
    H = GV.T @ GV / 16  # V^T F V with F = G^T G / n, dense in the k x k subspace
    off = H - torch.diag(H.diagonal())
    assert off.abs().max() <= 1e-4 * H.diagonal().max()
    assert torch.allclose(H.diagonal(), s.double(), rtol=1e-4)
    assert torch.all(s[:-1] >= s[1:])
    assert s[0] <= torch.linalg.eigvalsh(G @ G.T / 16)[-1] * 1.0001


def test_penalties_keep_float32_inside_bf16_autocast():
    """The projection mu^T theta and the diagonal sum stay float32 inside a bf16 autocast region: the
    penalty there equals the one outside, and both match a float64 hand computation."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.Tanh(), torch.nn.Linear(64, 8))
    P = sum(p.numel() for p in net.parameters())
    mu, F = torch.randn(P), torch.rand(P)
    theta0 = torch.cat([p.detach().reshape(-1) for p in net.parameters()]).double()
    r1, dg = penalties.rank1_penalty(15000.0), penalties.DiagPenalty(15000.0)
    r1.add_task(net, mu, [0.3])
    dg.add_task(net, F)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(1e-3 * torch.randn_like(p))
    d = torch.cat([p.detach().reshape(-1) for p in net.parameters()]).double() - theta0
    want_r1 = 0.5 * 15000.0 * 0.3 * float(mu.double() @ d) ** 2
    want_dg = 0.5 * 15000.0 * float((F.double() * d ** 2).sum())
    for pen, want in ((r1, want_r1), (dg, want_dg)):
        out = float(pen(net))
        with torch.autocast("cpu", dtype=torch.bfloat16):
            inside = pen(net)
        assert inside.dtype == torch.float32
        assert abs(float(inside) - out) <= 1e-6 * abs(out)
        assert abs(out - want) <= 1e-3 * abs(want)  # float32: mu^T theta - mu^T theta* cancels
