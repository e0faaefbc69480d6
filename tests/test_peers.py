"""Per-sample gradients from the libraries a user would reach for first, against a one-sample-at-a-time
loop. opacus 1.6 gives wrong conv-weight gradients for a channels_last input (diffusers' UNet2DModel
feeds its convolutions after an attention block such tensors): this test records that behaviour, so an
opacus that fixes it fails here and chapter 7's peer table must be updated. Skipped without opacus
(`pip install -e '.[peers]'`)."""
import copy

import pytest
import torch
from torch import nn


def _conv_case():
    torch.manual_seed(0)
    conv = nn.Conv2d(4, 6, 3, padding=1)
    x = torch.randn(3, 4, 8, 8)
    loop = torch.stack([torch.autograd.grad(conv(x[i:i + 1]).pow(2).sum(), conv.weight)[0] for i in range(3)])
    return conv, x, loop


def _opacus_grad_sample(opacus, conv, x):
    gsm = opacus.GradSampleModule(copy.deepcopy(conv), loss_reduction="sum")
    gsm(x).pow(2).sum().backward()
    return gsm._module.weight.grad_sample


def _rel(a, b):
    return float((a - b).norm() / b.norm())


def test_opacus_conv_grad_sample_is_wrong_for_a_channels_last_input():
    opacus = pytest.importorskip("opacus")
    conv, x, loop = _conv_case()
    assert _rel(_opacus_grad_sample(opacus, conv, x), loop) < 1e-5  # plain NCHW input: right
    cl = x.contiguous(memory_format=torch.channels_last)
    err = _rel(_opacus_grad_sample(opacus, conv, cl), loop)
    assert err > 0.1, (f"opacus {opacus.__version__} now gets channels_last conv inputs right (error {err:.1e}): "
                       "update chapter 7's table of per-sample gradient engines")
    assert _rel(_opacus_grad_sample(opacus, conv, cl.contiguous()), loop) < 1e-5  # the workaround
