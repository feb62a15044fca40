"""StyleGAN2 layers (Karras et al., "Analyzing and Improving the Image Quality of StyleGAN", CVPR
2020): equalized learning rate, style-modulated and demodulated convolutions, and the
discriminator-style residual block.

IMF's latent token encoder and decoder are built from these (its supplement adopts the
``ConvLayer`` and ``StyledConv`` blocks of rosinality's stylegan2-pytorch). Two simplifications,
both stated where they apply: up- and downsampling use bilinear / box filters instead of the
FIR blur of the original (no custom kernels, exportable), and there is no noise injection (the
IMF author says their decoder has none).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["EqualConv2d", "EqualLinear", "ModulatedConv2d", "StyledConv", "ConvLayer", "StyleResBlock", "scaled_leaky_relu"]

_LRELU_GAIN = math.sqrt(2.0)


def scaled_leaky_relu(x: Tensor) -> Tensor:
    """LeakyReLU(0.2) times sqrt(2) (StyleGAN2's "fused" activation: keeps the activations' scale)."""
    return F.leaky_relu(x, 0.2) * _LRELU_GAIN


class EqualLinear(nn.Module):
    """Linear layer with equalized learning rate: weights are stored as N(0, 1) / ``lr_mul`` and
    scaled by ``lr_mul / sqrt(in_features)`` at run time, so Adam updates every layer at the same
    relative rate. ``activation=True`` applies :func:`scaled_leaky_relu` after the bias.

    ``forward``: ``... x in_features`` -> ``... x out_features``.
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True, bias_init: float = 0.0,
                 lr_mul: float = 1.0, activation: bool = False) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_features, in_features) / lr_mul)
        self.bias = nn.Parameter(torch.full((out_features,), float(bias_init))) if bias else None
        self.scale = lr_mul / math.sqrt(in_features)
        self.lr_mul = lr_mul
        self.activation = activation

    def forward(self, x: Tensor) -> Tensor:
        bias = self.bias * self.lr_mul if self.bias is not None else None
        out = F.linear(x, self.weight * self.scale, bias)
        return scaled_leaky_relu(out) if self.activation else out

    def extra_repr(self) -> str:
        return f"{self.weight.shape[1]}, {self.weight.shape[0]}, activation={self.activation}"


class EqualConv2d(nn.Module):
    """Conv2d with equalized learning rate (weights scaled by ``1 / sqrt(fan_in)`` at run time)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1, padding: int = 0,
                 bias: bool = True) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_channels, in_channels, kernel_size, kernel_size))
        self.bias = nn.Parameter(torch.zeros(out_channels)) if bias else None
        self.scale = 1.0 / math.sqrt(in_channels * kernel_size**2)
        self.stride = stride
        self.padding = padding

    def forward(self, x: Tensor) -> Tensor:
        return F.conv2d(x, self.weight * self.scale, self.bias, stride=self.stride, padding=self.padding)

    def extra_repr(self) -> str:
        out_c, in_c, k, _ = self.weight.shape
        return f"{in_c}, {out_c}, kernel_size={k}, stride={self.stride}, padding={self.padding}"


class ModulatedConv2d(nn.Module):
    """StyleGAN2's modulated convolution: the style (``B x style_dim``) scales each input channel
    of the kernel per sample (an :class:`EqualLinear` with bias 1, so a zero style is the plain
    kernel), then demodulation renormalises each output channel to unit expected variance.

    ``upsample=True`` doubles H and W first (bilinear, instead of StyleGAN2's transposed
    convolution and FIR blur).

    ``forward(x: B x C_in x H x W, style: B x style_dim)`` -> ``B x C_out x H' x W'``.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, style_dim: int,
                 demodulate: bool = True, upsample: bool = False) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.kernel_size = kernel_size
        self.weight = nn.Parameter(torch.randn(1, out_channels, in_channels, kernel_size, kernel_size))
        self.scale = 1.0 / math.sqrt(in_channels * kernel_size**2)
        self.modulation = EqualLinear(style_dim, in_channels, bias_init=1.0)
        self.demodulate = demodulate
        self.upsample = upsample

    def forward(self, x: Tensor, style: Tensor) -> Tensor:
        batch, in_c = x.shape[:2]
        s = self.modulation(style)  # B x C_in
        # Modulating the input instead of the kernel (StyleGAN2's "non-fused" form) is the same
        # arithmetic with one shared kernel: a plain batched convolution, much faster than a
        # per-sample grouped one on CPU, and exportable.
        out = x * s.view(batch, in_c, 1, 1)
        if self.upsample:
            out = F.interpolate(out, scale_factor=2.0, mode="bilinear", align_corners=False)
        weight = self.scale * self.weight[0]  # C_out x C_in x k x k
        out = F.conv2d(out, weight, padding=self.kernel_size // 2)
        if self.demodulate:
            # 1 / ||w * s|| per sample and output channel: sum_i s_i^2 sum_k w_oik^2
            demod = torch.rsqrt((s * s) @ weight.pow(2).sum(dim=(2, 3)).t() + 1e-8)  # B x C_out
            out = out * demod.view(batch, self.out_channels, 1, 1)
        return out

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
                f"demodulate={self.demodulate}, upsample={self.upsample}")


class StyledConv(nn.Module):
    """:class:`ModulatedConv2d` + bias + :func:`scaled_leaky_relu` (StyleGAN2's ``StyledConv``
    without noise injection)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, style_dim: int,
                 upsample: bool = False, demodulate: bool = True) -> None:
        super().__init__()
        self.conv = ModulatedConv2d(in_channels, out_channels, kernel_size, style_dim, demodulate, upsample)
        self.bias = nn.Parameter(torch.zeros(1, out_channels, 1, 1))

    def forward(self, x: Tensor, style: Tensor) -> Tensor:
        return scaled_leaky_relu(self.conv(x, style) + self.bias)


class ConvLayer(nn.Sequential):
    """StyleGAN2's ``ConvLayer``: [2x2 box downsampling] -> :class:`EqualConv2d` (same padding) ->
    [:func:`scaled_leaky_relu`]. ``B x C_in x H x W`` -> ``B x C_out x H' x W'``."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, downsample: bool = False,
                 bias: bool = True, activate: bool = True) -> None:
        layers: list[nn.Module] = []
        if downsample:
            layers.append(nn.AvgPool2d(2))
        layers.append(EqualConv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2, bias=bias))
        if activate:
            layers.append(_ScaledLeakyReLU())
        super().__init__(*layers)


class _ScaledLeakyReLU(nn.Module):
    def forward(self, x: Tensor) -> Tensor:
        return scaled_leaky_relu(x)


class StyleResBlock(nn.Module):
    """StyleGAN2's discriminator residual block: two 3x3 :class:`ConvLayer` (the second halves H
    and W) plus a 1x1 downsampling skip, summed and divided by sqrt(2)."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv1 = ConvLayer(in_channels, in_channels, 3)
        self.conv2 = ConvLayer(in_channels, out_channels, 3, downsample=True)
        self.skip = ConvLayer(in_channels, out_channels, 1, downsample=True, bias=False, activate=False)

    def forward(self, x: Tensor) -> Tensor:
        return (self.conv2(self.conv1(x)) + self.skip(x)) / _LRELU_GAIN
