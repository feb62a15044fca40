"""StyleGAN2 layers: the input-modulated convolution equals the per-sample modulated kernel,
equalized learning rate, residual block shapes."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from animzoo.nn.stylegan import EqualConv2d, EqualLinear, ModulatedConv2d, StyledConv, StyleResBlock

pytestmark = pytest.mark.usefixtures("one_thread")


def per_sample_modulated_conv(conv: ModulatedConv2d, x: torch.Tensor, style: torch.Tensor) -> torch.Tensor:
    """The textbook form: build each sample's kernel w * s, demodulate it, convolve."""
    outs = []
    s = conv.modulation(style)
    for i in range(x.shape[0]):
        w = conv.scale * conv.weight[0] * s[i].view(1, -1, 1, 1)
        if conv.demodulate:
            w = w / torch.sqrt(w.pow(2).sum(dim=(1, 2, 3), keepdim=True) + 1e-8)
        xi = x[i:i + 1]
        if conv.upsample:
            xi = F.interpolate(xi, scale_factor=2.0, mode="bilinear", align_corners=False)
        outs.append(F.conv2d(xi, w, padding=conv.kernel_size // 2))
    return torch.cat(outs)


@pytest.mark.parametrize("upsample,demodulate", [(False, True), (True, True), (False, False)])
def test_modulated_conv_equals_the_per_sample_kernel(upsample: bool, demodulate: bool) -> None:
    torch.manual_seed(0)
    conv = ModulatedConv2d(6, 5, 3, style_dim=4, demodulate=demodulate, upsample=upsample)
    with torch.no_grad():
        conv.modulation.bias.normal_()  # styles far from 1, so a wrong modulation shows
    x, style = torch.randn(3, 6, 5, 5), torch.randn(3, 4)
    out = conv(x, style)
    assert out.shape == (3, 5, 10, 10) if upsample else (3, 5, 5, 5)
    torch.testing.assert_close(out, per_sample_modulated_conv(conv, x, style), atol=1e-5, rtol=1e-4)


def test_demodulation_gives_unit_variance_outputs_for_white_inputs() -> None:
    torch.manual_seed(0)
    conv = StyledConv(64, 32, 3, style_dim=8)
    out = conv.conv(torch.randn(4, 64, 32, 32), torch.randn(4, 8) * 3)
    assert abs(out[..., 1:-1, 1:-1].var().item() - 1.0) < 0.1  # whatever the style's magnitude


def test_equalized_layers_scale_their_weights_at_run_time() -> None:
    torch.manual_seed(0)
    linear = EqualLinear(16, 4, bias_init=0.5, lr_mul=0.1)
    x = torch.randn(2, 16)
    expected = x @ (linear.weight * 0.1 / math.sqrt(16)).t() + 0.5 * 0.1
    torch.testing.assert_close(linear(x), expected)
    conv = EqualConv2d(3, 5, 3, padding=1)
    y = torch.randn(1, 3, 6, 6)
    torch.testing.assert_close(conv(y), F.conv2d(y, conv.weight / math.sqrt(27), conv.bias, padding=1))


def test_style_res_block_halves_the_map() -> None:
    assert StyleResBlock(4, 8)(torch.randn(2, 4, 16, 16)).shape == (2, 8, 8, 8)
