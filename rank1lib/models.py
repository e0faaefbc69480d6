"""UNet builders (paper sec. 4.3 / app. D-E) on HF diffusers' UNet2DModel."""
from diffusers import UNet2DModel

# name -> (block_out_channels, layers_per_block, down blocks, up blocks, norm groups, dropout)
_ARCHS = {
    # Continual-learning UNet, sec. 4.3: 128/256/256/256 channels, attention at the 16x16 level.
    "cl": ((128, 256, 256, 256), 2,
           ("DownBlock2D", "AttnDownBlock2D", "DownBlock2D", "DownBlock2D"),
           ("UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D"), 32, 0.1),
    # Appendix D analysis models: 16 channels per level. 4 GroupNorm groups (not 16), so the
    # added time/class embedding is not normalised away (one channel per group would remove it).
    "base": ((16, 16, 16), 2, ("DownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D"),
             ("AttnUpBlock2D", "AttnUpBlock2D", "UpBlock2D"), 4, 0.0),
    # The literal App. D reading: ResNet blocks only, no attention anywhere (no mid-block attention either).
    "base-resnet": ((16, 16, 16), 2, ("DownBlock2D",) * 3, ("UpBlock2D",) * 3, 4, 0.0),
    "small3-resnet": ((16, 16, 16), 1, ("DownBlock2D",) * 3, ("UpBlock2D",) * 3, 4, 0.0),
    "small1": ((16,), 1, ("DownBlock2D",), ("UpBlock2D",), 4, 0.0),
    "small3": ((16, 16, 16), 1, ("DownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D"),
               ("AttnUpBlock2D", "AttnUpBlock2D", "UpBlock2D"), 4, 0.0),
    # Not in the paper: a candidate for the CPU continual-learning tier, between the App. D
    # models and the 35.7M "cl" UNet: 32/64/64 channels, one ResNet layer per level, attention at 8x8 (1.1M).
    "mid": ((32, 64, 64), 1, ("DownBlock2D", "DownBlock2D", "AttnDownBlock2D"),
            ("AttnUpBlock2D", "UpBlock2D", "UpBlock2D"), 8, 0.1),
    # Not in the paper: a tiny model so that CI and the quick profile run on a 2-core CPU.
    "tiny": ((16, 16), 1, ("DownBlock2D", "AttnDownBlock2D"), ("AttnUpBlock2D", "UpBlock2D"), 4, 0.0),
}
MODELS = tuple(_ARCHS)
NO_ATTENTION = ("base-resnet", "small3-resnet")  # also without the mid block's attention layer


def build_unet(name: str, num_classes: int, channels: int = 1, sample_size: int = 32) -> UNet2DModel:
    """Class-conditional UNet2DModel (label embedding through num_class_embeds)."""
    if name not in _ARCHS:
        raise ValueError(f"unknown model {name!r}; valid: {', '.join(MODELS)}")
    blocks, layers, down, up, groups, dropout = _ARCHS[name]
    return UNet2DModel(
        sample_size=sample_size, in_channels=channels, out_channels=channels,
        block_out_channels=blocks, layers_per_block=layers,
        down_block_types=down, up_block_types=up, norm_num_groups=groups,
        attention_head_dim=8, num_class_embeds=num_classes, dropout=dropout,
        add_attention=name not in NO_ATTENTION,
    )


def n_params(model) -> int:
    """Number of trainable parameters P."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
