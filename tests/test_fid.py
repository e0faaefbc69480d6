import numpy as np
import pytest
import scipy.linalg
import torch
from torch import nn

from rank1lib import fid


class Identity(nn.Module):
    """Features are the inputs themselves, so the metric sees known Gaussian features."""

    def __init__(self, d):
        super().__init__()
        self.num_features = d

    def forward(self, x):
        return x.double()


def closed_form(a, b):
    """Frechet distance of two feature sets with scipy.linalg.sqrtm (the textbook formula)."""
    m1, m2 = a.mean(0), b.mean(0)
    s1, s2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    covmean = scipy.linalg.sqrtm(s1 @ s2).real
    return float(((m1 - m2) ** 2).sum() + np.trace(s1 + s2 - 2 * covmean))


def gaussian(n, d, shift, seed):
    g = np.random.default_rng(seed)
    A = g.normal(size=(d, d)) / np.sqrt(d)
    return (g.normal(size=(n, d)) @ A + shift).astype(np.float64)


def test_fid_matches_scipy_closed_form_both_routes():
    d = 12
    real = gaussian(200, d, 0.0, 0)
    metric = fid.make_metric(Identity(d))
    for n in (7, 300):  # fewer generated samples than d (low-rank route) and more (eigvals route)
        ref = fid.reference_stats(metric, torch.tensor(real))
        fake = gaussian(n, d, 0.5, n)
        ours = fid.fid(metric, ref, torch.tensor(fake))
        assert abs(ours - closed_form(real, fake)) < 1e-6 * max(1.0, abs(ours))
        # torchmetrics' own compute() on the same states agrees too
        metric.update(torch.tensor(fake), real=False)
        assert abs(float(metric.compute()) - ours) < 1e-4 * max(1.0, abs(ours))


def test_reference_stats_do_not_accumulate_across_tasks():
    d = 4
    metric = fid.make_metric(Identity(d))
    a, b = torch.tensor(gaussian(30, d, 0.0, 1)), torch.tensor(gaussian(30, d, 3.0, 2))
    fid.reference_stats(metric, a)
    mu_b, _ = fid.reference_stats(metric, b)
    assert torch.allclose(mu_b, b.mean(0))


def test_reference_stats_cache(tmp_path):
    d = 5
    real = torch.tensor(gaussian(50, d, 1.0, 3))
    metric = fid.make_metric(Identity(d))
    mu, sigma = fid.reference_stats(metric, real, tmp_path / "ref.pt")
    mu2, sigma2 = fid.reference_stats(metric, real[:3], tmp_path / "ref.pt")  # loaded, not recomputed
    assert torch.allclose(mu, mu2) and torch.allclose(sigma, sigma2)
    assert np.allclose(sigma.numpy(), np.cov(real.numpy(), rowvar=False))


def test_a_fid_and_forgetting_hand_made():
    nan = np.nan
    M = np.array([[10, nan, nan],
                  [14, 20, nan],
                  [16, 22, 30.]])
    np.testing.assert_allclose(fid.a_fid_at_k(M), [10, 17, (16 + 22 + 30) / 3])
    assert fid.forgetting(M) == (16 - 10 + 22 - 20 + 30 - 30) / 3


def test_inception_wrapper_standard_input():
    feat = fid.InceptionFeatures()
    x = torch.randint(0, 256, (2, 1, 32, 32), dtype=torch.uint8)
    f = feat(x)
    assert f.shape == (2, 2048) and (f >= 0).all()  # pool3 features come after a ReLU
    # grey input equals the same image given as RGB; x/128 - 1 maps 0 -> -1, 255 -> 0.9921875
    assert torch.allclose(f, feat(x.repeat(1, 3, 1, 1)))
    up = nn.functional.interpolate(x.float().repeat(1, 3, 1, 1), size=(299, 299), mode="bilinear")
    assert torch.allclose(f, feat.net(up / 128 - 1))


def test_tf_resize_matches_the_helper_packages_resize_its_weights_were_made_for():
    """rank1lib's TF1-style resize against fid-helper-pytorch's own nv_bilinear (an independent implementation)."""
    pytest.importorskip("cv2")
    rs = pytest.importorskip("fid_helper_pytorch._resample_func")
    from rank1lib.fid import tf_resize
    x = torch.rand(2, 3, 32, 32) * 255
    ref = rs.nv_bilinear(x, (299, 299))
    assert (tf_resize(x, 299) - ref).abs().max() < 1e-3
    plain = torch.nn.functional.interpolate(x, size=(299, 299), mode="bilinear", align_corners=False)
    assert (plain - ref).abs().max() > 1.0  # the two resizes differ: the offset is real


def test_tf_resize_by_hand_on_a_ramp():
    """Output pixel j reads source coordinate j * 4 / 8 on a 4-pixel ramp 0, 1, 2, 3 (border clamped)."""
    from rank1lib.fid import tf_resize
    x = torch.arange(4.0).reshape(1, 1, 1, 4).repeat(1, 1, 4, 1)
    out = tf_resize(x, 8)[0, 0, 0]
    assert torch.allclose(out, torch.tensor([0, 0.5, 1, 1.5, 2, 2.5, 3, 3.0]))
