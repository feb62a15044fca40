"""Hourglass / U-Net blocks and anti-aliased downsampling."""

from __future__ import annotations

import pytest
import torch

from animzoo.geometry.grid import make_coordinate_grid
from animzoo.geometry.keypoints import keypoints_to_gaussian
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


def test_down_up_same_res_block_shapes() -> None:
    x = torch.rand(2, 5, 16, 12)
    assert DownBlock2d(5, 7)(x).shape == (2, 7, 8, 6)
    assert UpBlock2d(5, 7)(x).shape == (2, 7, 32, 24)
    assert SameBlock2d(5, 7)(x).shape == (2, 7, 16, 12)
    assert SameBlock2d(6, 6, groups=3, kernel_size=1, padding=0).conv.weight.shape == (6, 2, 1, 1)
    assert ResBlock2d(5)(x).shape == x.shape


def test_res_block_is_residual() -> None:
    block = ResBlock2d(4)
    torch.nn.init.zeros_(block.conv2.weight)
    torch.nn.init.zeros_(block.conv2.bias)
    x = torch.randn(2, 4, 8, 8)
    torch.testing.assert_close(block(x), x)


def test_encoder_channels_follow_block_expansion_and_max() -> None:
    enc = Encoder(block_expansion=32, in_features=3, num_blocks=5, max_features=256)
    outs = enc(torch.rand(1, 3, 64, 64))
    assert [o.shape[1] for o in outs] == [3, 64, 128, 256, 256, 256]
    assert [o.shape[-1] for o in outs] == [64, 32, 16, 8, 4, 2]
    assert enc.out_channels == [3, 64, 128, 256, 256, 256]


@pytest.mark.parametrize("out_features", [None, 10])
def test_hourglass_shapes_and_out_filters(out_features: int | None) -> None:
    net = Hourglass(block_expansion=8, in_features=3, num_blocks=3, max_features=32, out_features=out_features)
    y = net(torch.rand(2, 3, 32, 24))
    expected = out_features if out_features is not None else 8 + 3
    assert net.out_filters == expected
    assert y.shape == (2, expected, 32, 24)


def test_hourglass_without_last_conv_ends_with_its_input() -> None:
    net = Hourglass(block_expansion=8, in_features=3, num_blocks=2, max_features=32).eval()
    x = torch.rand(1, 3, 16, 16)
    torch.testing.assert_close(net(x)[:, -3:], x)  # the decoder concatenates the input last


def test_decoder_extra_features_per_skip() -> None:
    enc = Encoder(8, 3, 3, 64)
    dec = Decoder(8, 3, None, 3, 64, additional_features_for_block=5)
    skips = [torch.cat([s, torch.zeros(s.shape[0], 5, *s.shape[2:])], 1) for s in enc(torch.rand(2, 3, 16, 16))]
    assert dec(skips).shape == (2, 8 + 3 + 5, 16, 16)
    assert dec.out_filters == 16


def test_hourglass_rejects_indivisible_size() -> None:
    net = Hourglass(8, 3, 3, 32, out_features=2)
    with pytest.raises(ValueError, match="divisible by 8"):
        net(torch.rand(1, 3, 20, 20))


def test_antialias_identity_and_sizes() -> None:
    x = torch.rand(2, 3, 64, 48)
    assert torch.equal(AntiAliasInterpolation2d(3, 1.0)(x), x)
    assert AntiAliasInterpolation2d(3, 0.25)(x).shape == (2, 3, 16, 12)
    assert AntiAliasInterpolation2d(3, 0.5)(x).shape == (2, 3, 32, 24)
    with pytest.raises(ValueError):
        AntiAliasInterpolation2d(3, 1.5)
    # the kernel is derived from the arguments, not state
    assert AntiAliasInterpolation2d(3, 0.25).state_dict() == {}


def test_antialias_keeps_constants_and_normalised_positions() -> None:
    down = AntiAliasInterpolation2d(1, 0.25)
    const = torch.full((1, 1, 64, 64), 0.7)
    torch.testing.assert_close(down(const), torch.full((1, 1, 16, 16), 0.7))
    # A blob's centre of mass, in normalised coordinates, stays where it was.
    centre = torch.tensor([[[0.21, -0.33]]])
    blob = keypoints_to_gaussian(centre, (64, 64), 0.02)[:, :1]
    small = down(blob)[0, 0]
    grid = make_coordinate_grid(16, 16)
    com = (small[..., None] * grid).sum((0, 1)) / small.sum()
    torch.testing.assert_close(com, centre[0, 0], atol=0.01, rtol=0)


def test_antialias_removes_aliasing() -> None:
    # A pixel-level checkerboard has no representation at 1/4 size: it must blur to its mean.
    yy, xx = torch.meshgrid(torch.arange(64), torch.arange(64), indexing="ij")
    checker = ((yy + xx) % 2).float()[None, None]
    out = AntiAliasInterpolation2d(1, 0.25)(checker)
    assert (out - 0.5).abs().max() < 0.05
    naive = checker[..., ::4, ::4]
    assert (naive - 0.5).abs().max() == 0.5  # plain subsampling aliases it to a constant 0 or 1
