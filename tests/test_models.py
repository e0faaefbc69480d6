import pytest
import torch

from rank1lib.models import MODELS, build_unet, n_params


def test_paper_unet_size():
    assert abs(n_params(build_unet("cl", 10)) - 35.7e6) < 0.1e6


@pytest.mark.parametrize("name", [m for m in MODELS if m != "cl"] + ["cl"])
def test_output_depends_on_t_and_class(name):
    """Every builder must use t and the class label (16-channel GroupNorm pitfall)."""
    torch.manual_seed(0)
    net = build_unet(name, 10).eval()
    # Nudge the (zero-initialised in places) weights so conditioning paths are live.
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.02 * torch.randn_like(p))
    x = torch.randn(2, 1, 32, 32)
    y = torch.tensor([3, 3])
    with torch.no_grad():
        base = net(x, torch.tensor([100, 100]), class_labels=y).sample
        other_t = net(x, torch.tensor([800, 800]), class_labels=y).sample
        other_y = net(x, torch.tensor([100, 100]), class_labels=torch.tensor([7, 7])).sample
    scale = base.abs().mean()
    assert (base - other_t).abs().mean() > 1e-3 * scale
    assert (base - other_y).abs().mean() > 1e-3 * scale


def test_groupnorm_pitfall_is_real():
    """With one channel per group the embedding is normalised away: our builders avoid that setup."""
    from diffusers import UNet2DModel
    torch.manual_seed(0)
    net = UNet2DModel(sample_size=32, in_channels=1, out_channels=1, block_out_channels=(16,),
                      layers_per_block=1, down_block_types=("DownBlock2D",), up_block_types=("UpBlock2D",),
                      norm_num_groups=16, num_class_embeds=10).eval()
    x = torch.randn(1, 1, 32, 32)
    with torch.no_grad():
        a = net(x, torch.tensor([100]), class_labels=torch.tensor([1])).sample
        b = net(x, torch.tensor([900]), class_labels=torch.tensor([8])).sample
    assert torch.allclose(a, b, atol=1e-5)


def test_unknown_model():
    with pytest.raises(ValueError, match="valid: cl, base"):
        build_unet("huge", 10)
