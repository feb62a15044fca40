"""Convolutional building blocks shared by the methods.

The U-Net family here follows Monkey-Net / first-order-model: a down block is
conv -> BatchNorm -> ReLU -> 2x2 average pool, an up block is nearest x2 upsampling ->
conv -> BatchNorm -> ReLU, and an :class:`Hourglass` concatenates each decoder output with the
encoder feature of the same resolution. Channel counts at depth ``i`` (``i = 1 .. num_blocks``)
are ``min(max_features, block_expansion * 2 ** i)``.

Monkey-Net's reference code is written with 3-D convolutions over (time, height, width) but
every kernel is (1, 3, 3), so it runs frame by frame; the 2-D blocks here compute the same
thing on B x C x H x W tensors (see ``animzoo/methods/monkeynet/convert.py`` for the weight
mapping).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "DownBlock2d",
    "UpBlock2d",
    "SameBlock2d",
    "ResBlock2d",
    "Encoder",
    "Decoder",
    "Hourglass",
    "AntiAliasInterpolation2d",
    "hourglass_channels",
]


def hourglass_channels(block_expansion: int, max_features: int, depth: int) -> int:
    """Channels of an encoder output at ``depth`` >= 1: ``min(max_features, block_expansion * 2**depth)``."""
    return min(max_features, block_expansion * (2**depth))


class DownBlock2d(nn.Module):
    """conv (kernel_size, same padding) -> BatchNorm -> ReLU -> 2x2 average pool (halves H and W)."""

    def __init__(self, in_features: int, out_features: int, kernel_size: int = 3, padding: int = 1, groups: int = 1):
        super().__init__()
        self.conv = nn.Conv2d(in_features, out_features, kernel_size=kernel_size, padding=padding, groups=groups)
        self.norm = nn.BatchNorm2d(out_features, affine=True)
        self.pool = nn.AvgPool2d(kernel_size=2)

    def forward(self, x: Tensor) -> Tensor:
        return self.pool(F.relu(self.norm(self.conv(x))))


class UpBlock2d(nn.Module):
    """nearest x2 upsampling -> conv -> BatchNorm -> ReLU (doubles H and W)."""

    def __init__(self, in_features: int, out_features: int, kernel_size: int = 3, padding: int = 1, groups: int = 1):
        super().__init__()
        self.conv = nn.Conv2d(in_features, out_features, kernel_size=kernel_size, padding=padding, groups=groups)
        self.norm = nn.BatchNorm2d(out_features, affine=True)

    def forward(self, x: Tensor) -> Tensor:
        out = F.interpolate(x, scale_factor=2.0, mode="nearest")
        return F.relu(self.norm(self.conv(out)))


class SameBlock2d(nn.Module):
    """conv -> BatchNorm -> ReLU at the same resolution (optionally grouped)."""

    def __init__(self, in_features: int, out_features: int, groups: int = 1, kernel_size: int = 3, padding: int = 1):
        super().__init__()
        self.conv = nn.Conv2d(in_features, out_features, kernel_size=kernel_size, padding=padding, groups=groups)
        self.norm = nn.BatchNorm2d(out_features, affine=True)

    def forward(self, x: Tensor) -> Tensor:
        return F.relu(self.norm(self.conv(x)))


class ResBlock2d(nn.Module):
    """Pre-activation residual block: x + conv(relu(bn(conv(relu(bn(x)))))); keeps the shape."""

    def __init__(self, in_features: int, kernel_size: int = 3, padding: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_features, in_features, kernel_size=kernel_size, padding=padding)
        self.conv2 = nn.Conv2d(in_features, in_features, kernel_size=kernel_size, padding=padding)
        self.norm1 = nn.BatchNorm2d(in_features, affine=True)
        self.norm2 = nn.BatchNorm2d(in_features, affine=True)

    def forward(self, x: Tensor) -> Tensor:
        out = self.conv1(F.relu(self.norm1(x)))
        out = self.conv2(F.relu(self.norm2(out)))
        return out + x


class Encoder(nn.Module):
    """Hourglass encoder: ``num_blocks`` :class:`DownBlock2d`.

    ``forward`` returns ``[x, f_1, ..., f_num_blocks]`` (the input first), ``f_i`` with
    ``hourglass_channels(block_expansion, max_features, i)`` channels at ``1 / 2**i`` resolution.
    """

    def __init__(self, block_expansion: int, in_features: int, num_blocks: int = 3, max_features: int = 256):
        super().__init__()
        if num_blocks < 1:
            raise ValueError(f"num_blocks must be >= 1, got {num_blocks}")
        blocks = []
        for i in range(num_blocks):
            cin = in_features if i == 0 else hourglass_channels(block_expansion, max_features, i)
            blocks.append(DownBlock2d(cin, hourglass_channels(block_expansion, max_features, i + 1)))
        self.down_blocks = nn.ModuleList(blocks)
        self.out_channels = [in_features] + [
            hourglass_channels(block_expansion, max_features, i + 1) for i in range(num_blocks)
        ]

    def forward(self, x: Tensor) -> list[Tensor]:
        outs = [x]
        for block in self.down_blocks:
            outs.append(block(outs[-1]))
        return outs


class Decoder(nn.Module):
    """Hourglass decoder: up blocks from the deepest feature, each output concatenated with the skip.

    Args:
        block_expansion, in_features, num_blocks, max_features: as for :class:`Encoder`.
        out_features: channels of a final 3 x 3 conv; ``None`` returns the last concatenation
            (``block_expansion + in_features + additional_features_for_block`` channels).
        additional_features_for_block: extra channels carried by every skip (e.g. a keypoint
            embedding concatenated to each encoder feature, as in Monkey-Net's generator).

    ``out_filters`` is the channel count of the output.
    """

    def __init__(
        self,
        block_expansion: int,
        in_features: int,
        out_features: int | None = None,
        num_blocks: int = 3,
        max_features: int = 256,
        additional_features_for_block: int = 0,
    ):
        super().__init__()
        extra = additional_features_for_block
        blocks = []
        for i in reversed(range(num_blocks)):
            deepest = i == num_blocks - 1
            cin = (1 if deepest else 2) * hourglass_channels(block_expansion, max_features, i + 1) + extra
            cout = min(max_features, block_expansion * (2**i))
            blocks.append(UpBlock2d(cin, cout))
        self.up_blocks = nn.ModuleList(blocks)
        concat = min(max_features, block_expansion) + in_features + extra
        if out_features is not None:
            self.conv: nn.Conv2d | None = nn.Conv2d(concat, out_features, kernel_size=3, padding=1)
            self.out_filters = out_features
        else:
            self.conv = None
            self.out_filters = concat

    def forward(self, skips: list[Tensor]) -> Tensor:
        skips = list(skips)  # do not consume the caller's list
        out = skips.pop()
        for block in self.up_blocks:
            out = block(out)
            skip = skips.pop()
            if out.shape[-2:] != skip.shape[-2:]:
                raise ValueError(
                    f"hourglass size mismatch: upsampled {tuple(out.shape[-2:])} vs skip {tuple(skip.shape[-2:])}; "
                    "the input height and width must be divisible by 2**num_blocks"
                )
            out = torch.cat([out, skip], dim=1)
        if self.conv is not None:
            out = self.conv(out)
        return out


class Hourglass(nn.Module):
    """U-Net ("hourglass") of :class:`Encoder` + :class:`Decoder`.

    Input B x in_features x H x W with H, W divisible by ``2**num_blocks``. Output
    B x out_filters x H x W: the result of a final 3 x 3 conv when ``out_features`` is given
    (Monkey-Net), else the concatenation of the last up block and the input (first-order-model).
    """

    def __init__(
        self,
        block_expansion: int,
        in_features: int,
        num_blocks: int = 3,
        max_features: int = 256,
        out_features: int | None = None,
    ):
        super().__init__()
        self.encoder = Encoder(block_expansion, in_features, num_blocks, max_features)
        self.decoder = Decoder(block_expansion, in_features, out_features, num_blocks, max_features)
        self.out_filters = self.decoder.out_filters
        self.num_blocks = num_blocks

    def forward(self, x: Tensor) -> Tensor:
        factor = 2**self.num_blocks
        if x.shape[-1] % factor or x.shape[-2] % factor:
            raise ValueError(
                f"Hourglass with num_blocks={self.num_blocks} needs height and width divisible by {factor}, "
                f"got {tuple(x.shape[-2:])}"
            )
        return self.decoder(self.encoder(x))


class AntiAliasInterpolation2d(nn.Module):
    """Gaussian blur, then resample to ``round(scale * size)``: downsampling without aliasing.

    The blur has ``sigma = (1 / scale - 1) / 2`` (as first-order-model); the resampling is
    bilinear with ``align_corners=True``, so normalised coordinates (animzoo's convention) mean
    the same point before and after. ``scale == 1`` is the identity. The Gaussian kernel is a
    non-persistent buffer (derived from ``channels`` and ``scale``; not in the state dict).
    """

    def __init__(self, channels: int, scale: float):
        super().__init__()
        if not 0 < scale <= 1:
            raise ValueError(f"scale must be in (0, 1], got {scale}")
        self.channels = channels
        self.scale = float(scale)
        sigma = (1.0 / scale - 1.0) / 2.0
        kernel_size = 2 * round(sigma * 4) + 1
        self.pad = kernel_size // 2
        if sigma > 0:
            ax = torch.arange(kernel_size, dtype=torch.float32) - (kernel_size - 1) / 2
            g = torch.exp(-(ax**2) / (2 * sigma**2))
            g = g / g.sum()
            kernel = (g[:, None] * g[None, :]).expand(channels, 1, kernel_size, kernel_size).clone()
        else:
            kernel = torch.ones(channels, 1, 1, 1)
        self.register_buffer("weight", kernel, persistent=False)

    def output_size(self, height: int, width: int) -> tuple[int, int]:
        return max(1, int(round(height * self.scale))), max(1, int(round(width * self.scale)))

    def forward(self, x: Tensor) -> Tensor:
        if self.scale == 1.0:
            return x
        out = F.pad(x, (self.pad, self.pad, self.pad, self.pad), mode="reflect" if self.pad < min(x.shape[-2:]) else "replicate")
        out = F.conv2d(out, self.weight.to(out.dtype), groups=self.channels)
        size = self.output_size(*x.shape[-2:])
        return F.interpolate(out, size=size, mode="bilinear", align_corners=True)

