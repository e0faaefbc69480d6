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
