"""Neural-network building blocks shared by the methods.

``animzoo.nn.blocks`` (hourglass / U-Net, down/up/same/res blocks, anti-aliased downsampling),
``animzoo.nn.discriminator`` (patch and multi-scale discriminators returning feature maps) and
``animzoo.nn.losses`` (perceptual pyramid, GAN losses, feature matching, equivariance).
"""

from animzoo.nn.blocks import (
    AntiAliasInterpolation2d,
    Decoder,
    DownBlock2d,
    Encoder,
    Hourglass,
    ResBlock2d,
    SameBlock2d,
    UpBlock2d,
)
from animzoo.nn.discriminator import MultiScaleDiscriminator, PatchDiscriminator

__all__ = [
    "AntiAliasInterpolation2d", "Decoder", "DownBlock2d", "Encoder", "Hourglass",
    "MultiScaleDiscriminator", "PatchDiscriminator", "ResBlock2d", "SameBlock2d", "UpBlock2d",
]
