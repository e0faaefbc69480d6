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


def _mlp_case():
    torch.manual_seed(3)
    net = nn.Sequential(nn.Linear(5, 7), nn.Tanh(), nn.Linear(7, 2))
    batch = (torch.randn(6, 5), torch.randn(6, 2))
    loss = lambda m, b: (m(b[0]) - b[1]).pow(2).sum(1)  # noqa: E731
    return net, batch, loss


def test_check_flags_each_wrong_tensor_against_a_hand_built_reference():
    from rank1lib import peers
    net, batch, loss = _mlp_case()
    ref = peers.loop_gradients(net, loss, batch)
    dense = torch.stack([torch.cat([g.reshape(-1) for g in torch.autograd.grad(
        loss(net, (batch[0][i:i + 1], batch[1][i:i + 1])).sum(), list(net.parameters()))]) for i in range(6)])
    assert torch.allclose(ref, dense)
    ok = peers.check(ref.clone(), ref, net, loss, batch)
    assert ok["correct"] and ok["tensors_off"] == 0 and ok["rows_sum_err"] < 1e-6
    bad = ref.clone()
    bad[:, :35] *= 2  # the first weight (7 x 5) doubled
    r = peers.check(bad, ref, net, loss, batch)
    assert not r["correct"] and r["tensors_off"] == 1 and abs(r["max_tensor_err"] - 1.0) < 1e-5  # the 1e-6 floor
    assert r["rows_sum_err"] > 0.01


def test_library_engines_match_the_loop_on_a_plain_mlp():
    from rank1lib import peers
    net, batch, loss = _mlp_case()
    ref = peers.loop_gradients(net, loss, batch)
    for name in peers.PEERS:
        try:
            G = peers.gradients(name, net, loss, batch)
        except peers.PeerUnavailable:
            continue
        assert peers.check(G, ref, net, loss, batch)["correct"], name


def test_forward_mode_products_equal_the_per_sample_gradients_times_v():
    from rank1lib import peers
    from rank1lib.curvature.engines import directional_jvp
    net, batch, loss = _mlp_case()
    G = peers.loop_gradients(net, loss, batch).double()
    v = [torch.randn_like(p) for p in net.parameters()]
    u = directional_jvp(net, loss, batch, None, v)
    want = G @ torch.cat([x.reshape(-1) for x in v]).double()
    assert torch.allclose(u, want, rtol=1e-5, atol=1e-6)


def test_peak_memory_is_the_child_process_own():
    """peers.peak runs the engine in a fresh process and reads that process's own high-water mark; a
    parent that holds a large array must not show up in the child's numbers (getrusage does that)."""
    import numpy as np
    from rank1lib import peers
    big = np.ones(100_000_000)  # 0.75 GiB held by this process
    parent = peers._hwm_gib()
    out = peers.peak("loop", "tiny", 2, threads=1)
    assert big[-1] == 1.0 and parent > 0.7
    assert out["rss_before_gib"] < parent - 0.5 and out["peak_rss_gib"] >= out["rss_before_gib"], (parent, out)


def test_the_train_mode_copy_for_opacus_computes_the_models_function():
    """opacus records per-sample gradients only in train mode; the copy it gets must still compute what the
    model computes in eval mode (dropout off), or every peer gradient differs from the reference (the mid
    UNet has dropout 0.1). Reference: the eval-mode model itself."""
    from rank1lib import peers
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Dropout(0.5), torch.nn.ReLU(),
                              torch.nn.Dropout2d(0.5), torch.nn.Linear(16, 2)).eval()
    x = torch.randn(32, 8)
    m = peers.train_mode_copy(net)
    assert torch.equal(m(x), net(x))
    assert m[0].training and m[4].training and not m[1].training and not m[3].training
    assert not net[0].training  # the model itself is untouched
