"""Appendix-C VAE: per-sample gradients and the Fisher share against independent references."""
import torch

from rank1lib import vae
from rank1lib.diffusion import to_model_range


def test_vae_per_sample_grads_sum_to_batch_gradient():
    torch.manual_seed(0)
    model = vae.ConvVAE(z_dim=4, width=4)
    x = torch.randint(0, 256, (5, 1, 32, 32), dtype=torch.uint8)
    G = vae.per_sample_grads(model, x, beta=0.5, seed=3)
    noise = torch.randn(5, 4, generator=torch.Generator().manual_seed(3))
    loss = vae.per_sample_loss(model, to_model_range(x), noise, 0.5).sum()
    ref = torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss, list(model.parameters()))])
    assert torch.allclose(G.sum(0), ref, rtol=1e-4, atol=1e-5 * ref.abs().max())


def test_vae_fisher_share_matches_dense_eigh():
    torch.manual_seed(1)
    model = vae.ConvVAE(z_dim=2, width=2)
    x = torch.randint(0, 256, (6, 1, 32, 32), dtype=torch.uint8)
    s = vae.fisher_stats(model, x, beta=1.0, seed=0)
    G = vae.per_sample_grads(model, x, beta=1.0, seed=0).double()
    lam = torch.linalg.eigvalsh(G.T @ G / 6)  # dense P x P (P is small here)
    assert G.shape[1] < 3000
    assert abs(s["share"] - float(lam[-1] / lam.clamp_min(0).sum())) < 1e-8


def test_vae_training_lowers_loss():
    x = torch.randint(0, 256, (64, 1, 32, 32), dtype=torch.uint8)
    _, losses = vae.train_vae(x, beta=1.0, steps=30, batch_size=32, seed=0, z_dim=4)
    assert sum(losses[-5:]) < sum(losses[:5])


def test_pixel_mean_form_divides_only_the_squared_error_by_the_pixel_count():
    """reduction='mean': l = ||x - x_hat||^2 / D + beta KL, D = 1024 pixels; the KL term is unchanged."""
    import torch
    from rank1lib import vae
    torch.manual_seed(0)
    m = vae.ConvVAE(1, 16).double()
    x, noise = torch.rand(3, 1, 32, 32, dtype=torch.float64) * 2 - 1, torch.randn(3, 16, dtype=torch.float64)
    rec_sum = vae.per_sample_loss(m, x, noise, 0.0, "sum")
    assert torch.allclose(vae.per_sample_loss(m, x, noise, 0.0, "mean") * 1024, rec_sum, rtol=1e-5)
    kl = vae.per_sample_loss(m, x, noise, 1.0, "sum") - rec_sum
    assert torch.allclose(vae.per_sample_loss(m, x, noise, 1.0, "mean"), rec_sum / 1024 + kl, rtol=1e-5)
