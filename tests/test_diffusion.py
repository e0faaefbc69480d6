import numpy as np
import torch

from rank1lib.diffusion import (alpha_bar, ddim_sample, per_sample_loss, q_sample, scaled_eps, to_model_range,
                                to_uint8, tweedie_x0)
from rank1lib.models import build_unet


def test_linear_schedule_alpha_bar():
    betas = np.linspace(1e-4, 0.02, 1000)
    np.testing.assert_allclose(alpha_bar().numpy(), np.cumprod(1 - betas), rtol=1e-5)


def test_q_sample_and_tweedie_invert():
    ab = alpha_bar()
    x0 = torch.rand(4, 1, 32, 32) * 2 - 1
    eps = torch.randn_like(x0)
    t = torch.tensor([0, 100, 500, 999])
    xt = q_sample(x0, t, eps, ab)
    assert torch.allclose(tweedie_x0(xt, eps, t, ab), x0, atol=2e-3)
    # x_t - sqrt(1 - ab) eps = sqrt(ab) x0
    assert torch.allclose(xt - scaled_eps(eps, t, ab), ab[t].sqrt().view(-1, 1, 1, 1) * x0, atol=1e-5)


def test_loss_normalisation_is_per_pixel_mean():
    e, eh = torch.zeros(2, 1, 32, 32), torch.ones(2, 1, 32, 32)
    eh[1] *= 3
    assert per_sample_loss(eh, e).tolist() == [1.0, 9.0]


def test_uint8_round_trip():
    x = torch.arange(256, dtype=torch.uint8).view(1, 1, 16, 16)
    assert torch.equal(to_uint8(to_model_range(x)), x)


def test_ddim_output_and_determinism():
    torch.manual_seed(0)
    net = build_unet("small1", 10)
    labels = torch.tensor([0, 1, 2, 3, 4])
    a = ddim_sample(net, labels, steps=3, seed=5, batch_size=2, progress=False)
    b = ddim_sample(net, labels, steps=3, seed=5, batch_size=2, progress=False)
    c = ddim_sample(net, labels, steps=3, seed=6, batch_size=2, progress=False)
    assert a.dtype == torch.uint8 and a.shape == (5, 1, 32, 32)
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert a.float().std() > 0  # not a constant image
