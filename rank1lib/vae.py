"""Appendix C: a small convolutional VAE (Kingma & Welling 2014) and its empirical Fisher.

Per-sample loss l(x) = ||x - x_hat||^2 + beta * KL(q(z|x) || N(0, I)) (Gaussian decoder; sum over
pixels, images in [-1, 1]); beta = 1 is the plain MSE+KL VAE, beta = 1e-3 the down-weighted KL. The
summed squared error weighs the KL term 1/D (D = 1024 pixels) as strongly as a per-pixel-mean error
would, so reduction="mean" gives the other reading of "MSE + KL".
The reparameterisation noise of each sample is fixed, so g_i is a deterministic function of theta.
"""
import torch
from torch import nn
from tqdm.auto import tqdm

from .curvature.spectrum import gram_from_G, spectrum_from_gram
from .diffusion import to_model_range


class ConvVAE(nn.Module):
    """32x32 conv VAE: 2 strided convs -> z (dim z_dim) -> 2 transposed convs."""

    def __init__(self, channels=1, z_dim=16, width=16):
        super().__init__()
        w = width
        self.enc = nn.Sequential(nn.Conv2d(channels, w, 4, 2, 1), nn.SiLU(), nn.Conv2d(w, 2 * w, 4, 2, 1),
                                 nn.SiLU(), nn.Flatten())
        self.to_stats = nn.Linear(2 * w * 64, 2 * z_dim)
        self.from_z = nn.Linear(z_dim, 2 * w * 64)
        self.dec = nn.Sequential(nn.Unflatten(1, (2 * w, 8, 8)), nn.SiLU(), nn.ConvTranspose2d(2 * w, w, 4, 2, 1),
                                 nn.SiLU(), nn.ConvTranspose2d(w, channels, 4, 2, 1))

    def forward(self, x, noise):
        m, logvar = self.to_stats(self.enc(x)).chunk(2, dim=1)
        z = m + (0.5 * logvar).exp() * noise
        return self.dec(self.from_z(z)), m, logvar


def per_sample_loss(model, x, noise, beta, reduction="sum"):
    """l_i = ||x_i - x_hat_i||^2 + beta * KL_i (app. C's MSE+KL objective); reduction "mean" averages the
    squared error over pixels instead of summing it."""
    x_hat, m, logvar = model(x, noise)
    err = (x_hat - x).pow(2).flatten(1)
    rec = err.sum(1) if reduction == "sum" else err.mean(1)
    kl = 0.5 * (m.pow(2) + logvar.exp() - 1 - logvar).sum(1)
    return rec + beta * kl


def train_vae(x_uint8, beta, steps, batch_size=64, lr=1e-3, seed=0, z_dim=16, progress=False, reduction="sum"):
    """Adam on the batch-mean loss; returns (model, losses)."""
    torch.manual_seed(seed)
    model = ConvVAE(x_uint8.shape[1], z_dim)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    gen = torch.Generator().manual_seed(seed)
    x = to_model_range(x_uint8)
    losses = []
    for _ in tqdm(range(steps), desc=f"VAE beta={beta:g}", disable=not progress, leave=False):
        idx = torch.randint(0, len(x), (min(batch_size, len(x)),), generator=gen)
        loss = per_sample_loss(model, x[idx], torch.randn(len(idx), z_dim, generator=gen), beta, reduction).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return model, losses


def per_sample_grads(model, x_uint8, beta, seed=0, reduction="sum"):
    """(N, P) per-sample gradients, one backward per sample (the VAE is small)."""
    gen = torch.Generator().manual_seed(seed)
    x = to_model_range(x_uint8)
    noise = torch.randn(len(x), model.to_stats.out_features // 2, generator=gen)
    params = [p for p in model.parameters() if p.requires_grad]
    rows = []
    for i in range(len(x)):
        g = torch.autograd.grad(per_sample_loss(model, x[i:i + 1], noise[i:i + 1], beta, reduction)[0], params)
        rows.append(torch.cat([gi.reshape(-1) for gi in g]))
    return torch.stack(rows)


def fisher_stats(model, x_uint8, beta, seed=0, k=5, reduction="sum"):
    """Spectrum statistics of the VAE's empirical Fisher (share = lambda1 / sum lambda, app. C)."""
    acc = gram_from_G(per_sample_grads(model, x_uint8, beta, seed, reduction))
    return spectrum_from_gram(acc["K"], acc["d2"], acc["Gmu"], acc["mu"], k)
