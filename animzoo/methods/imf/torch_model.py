"""IMF's networks as plain ``nn.Module``s (paper 002, supplement Fig. 1; reference notes (d)).

Every multi-scale list here is ordered **coarse to fine** (index 0 is the smallest map). At the
paper's 256 px the four scales are 8, 16, 32 and 64 px: dense features of 512, 512, 256 and 128
channels, and motion features of 512, 512, 512 and 256 channels.

* :class:`DenseFeatureEncoder` (E_F): a 7x7 stem, then one :class:`DownConvResBlock` per entry of
  ``channels``; the last ``num_levels`` outputs are the dense features ``f_r``.
* :class:`LatentTokenEncoder` (E_T): StyleGAN2 residual blocks down to 4 x 4, a 4x4 convolution,
  then an MLP to the token ``t`` of ``token_dim`` (dm = 32) numbers.
* :class:`LatentTokenDecoder` (IMF_D): a StyleGAN2 generator without noise: a learned constant,
  one styled convolution, then per scale three (the first upsamples); the token is the style.
  Its output after each scale is the motion feature ``m``.
* :class:`ImplicitMotionAlignment` (IMF_A): one
  :class:`~animzoo.nn.attention.CrossAttentionAlignment` per scale, run one scale after the
  other, with an optional cap on the finest scale attention runs at (``max_attention_resolution``).
* :class:`FrameDecoder` (D_F): :class:`UpConvResBlock` per E_F level back to the image size,
  concatenating the aligned features of each finer scale, then a 3x3 convolution and a sigmoid;
  with ``image_skip`` (not the paper's) a correction to the reference's pixels, moved by the
  finest scale's attention.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from animzoo.nn.attention import CrossAttentionAlignment
from animzoo.nn.blocks import ResBlock2d
from animzoo.nn.stylegan import ConvLayer, EqualConv2d, EqualLinear, StyledConv, StyleResBlock

__all__ = [
    "DenseFeatureEncoder",
    "DownConvResBlock",
    "FourierInput",
    "FrameDecoder",
    "ImplicitMotionAlignment",
    "LatentTokenDecoder",
    "LatentTokenEncoder",
    "UpConvResBlock",
]


class _ConvResBlock(nn.Module):
    """conv 3x3 -> BatchNorm -> ReLU, a resampling, conv 3x3, then ``num_res`` feature residual
    blocks (:class:`~animzoo.nn.blocks.ResBlock2d`: BN, ReLU, conv, twice, plus skip); the
    subclasses place the resampling."""

    def __init__(self, in_channels: int, out_channels: int, num_res: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.norm = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        self.res = nn.Sequential(*(ResBlock2d(out_channels) for _ in range(num_res)))


class DownConvResBlock(_ConvResBlock):
    """conv 3x3 -> BatchNorm -> ReLU -> 2x2 average pool -> conv 3x3 -> ``num_res`` feature
    residual blocks (supplement Fig. 1)."""

    def __init__(self, in_channels: int, out_channels: int, num_res: int = 2) -> None:
        super().__init__(in_channels, out_channels, num_res)

    def forward(self, x: Tensor) -> Tensor:
        out = F.avg_pool2d(F.relu(self.norm(self.conv1(x))), 2)
        return self.res(self.conv2(out))


class UpConvResBlock(_ConvResBlock):
    """nearest x2 upsampling -> conv 3x3 -> BatchNorm -> ReLU -> conv 3x3 -> ``num_res`` feature
    residual blocks (supplement Fig. 1)."""

    def __init__(self, in_channels: int, out_channels: int, num_res: int = 1) -> None:
        super().__init__(in_channels, out_channels, num_res)

    def forward(self, x: Tensor) -> Tensor:
        out = F.interpolate(x, scale_factor=2.0, mode="nearest")
        return self.res(self.conv2(F.relu(self.norm(self.conv1(out)))))


class DenseFeatureEncoder(nn.Module):
    """E_F: multi-scale dense features of the reference frame.

    Args:
        num_channels: image channels.
        stem_channels: width of the 7x7 stem (paper: 64).
        channels: one :class:`DownConvResBlock` per entry (paper: 64, 128, 256, 512, 512).
        num_levels: how many of the last block outputs are returned (paper: 4). One more than
            ``len(channels)`` also returns the stem's output, at full resolution, as the finest
            level (small frames, where the paper's finest scale, 1/4, would lose the detail).
        num_res: residual blocks per down block (paper: 2).

    ``forward(x: B x C x H x W)`` -> ``num_levels`` maps, coarse to fine, each twice the size of
    the previous one; the coarsest is ``H / 2**len(channels)``.
    """

    def __init__(self, num_channels: int = 3, stem_channels: int = 64,
                 channels: Sequence[int] = (64, 128, 256, 512, 512), num_levels: int = 4, num_res: int = 2) -> None:
        super().__init__()
        if not 1 <= num_levels <= len(channels) + 1:
            raise ValueError(f"num_levels={num_levels} must be between 1 and len(channels) + 1 = {len(channels) + 1}")
        self.channels = [int(c) for c in channels]
        self.stem_channels = int(stem_channels)
        self.num_levels = int(num_levels)
        self.stem = nn.Sequential(nn.Conv2d(num_channels, stem_channels, 7, padding=3), nn.BatchNorm2d(stem_channels), nn.ReLU())
        ins = [stem_channels, *self.channels[:-1]]
        self.blocks = nn.ModuleList(DownConvResBlock(i, o, num_res) for i, o in zip(ins, self.channels))

    @property
    def level_channels(self) -> list[int]:
        """Channels of the returned maps, coarse to fine."""
        return [*self.channels[::-1], self.stem_channels][: self.num_levels]

    @property
    def downsampling(self) -> int:
        """Image side / side of the coarsest returned map."""
        return 2 ** len(self.channels)

    def forward(self, x: Tensor) -> list[Tensor]:
        out = self.stem(x)
        feats = [out]
        for block in self.blocks:
            out = block(out)
            feats.append(out)
        return feats[::-1][: self.num_levels]


class LatentTokenEncoder(nn.Module):
    """E_T: a frame to its latent token ``t`` (``B x token_dim``).

    A 1x1 :class:`~animzoo.nn.stylegan.ConvLayer` to ``block_expansion`` channels, StyleGAN2
    residual blocks halving the map down to 4 x 4 (``min(max_features, block_expansion * 2**(i+1))``
    channels), an equalized 4x4 convolution to a ``mlp_dim`` vector, ``mlp_layers`` equalized
    linear layers with leaky ReLU, and a last linear layer to ``token_dim``.

    ``forward(x: B x C x H x W)`` (H, W: 4 times a power of two, H = W) -> ``B x token_dim``.
    """

    def __init__(self, num_channels: int = 3, image_size: int = 256, block_expansion: int = 64, max_features: int = 512,
                 mlp_dim: int = 512, mlp_layers: int = 4, token_dim: int = 32) -> None:
        super().__init__()
        num_down = (int(image_size) // 4).bit_length() - 1
        if image_size < 8 or 4 * 2**num_down != image_size:
            raise ValueError(f"LatentTokenEncoder needs image_size = 4 * 2**k >= 8, got {image_size}")
        self.image_size = int(image_size)
        self.token_dim = int(token_dim)
        self.stem = ConvLayer(num_channels, block_expansion, 1)
        blocks, cin = [], block_expansion
        for i in range(num_down):
            cout = min(max_features, block_expansion * 2 ** (i + 1))
            blocks.append(StyleResBlock(cin, cout))
            cin = cout
        self.blocks = nn.Sequential(*blocks)
        self.to_vector = EqualConv2d(cin, mlp_dim, 4)
        self.mlp = nn.Sequential(*(EqualLinear(mlp_dim, mlp_dim, activation=True) for _ in range(mlp_layers)))
        self.head = EqualLinear(mlp_dim, token_dim)

    def forward(self, x: Tensor) -> Tensor:
        out = self.to_vector(self.blocks(self.stem(x))).flatten(1)
        return self.head(self.mlp(F.leaky_relu(out, 0.2)))


class FourierInput(nn.Module):
    """StyleGAN3's input layer: Fourier features of the map's coordinates, moved by an affine
    transform that a linear layer reads off the token.

    ``channels`` fixed random frequencies (a seeded draw, saved with the model) inside a disc of
    radius ``size / 4`` cycles per unit (coordinates span [-1, 1]: the grid's Nyquist limit) and
    random phases give ``sin(2 pi f . (A x + b) + phase)``. ``A x + b`` starts as the identity for
    every token (zero weights, identity bias), so the layer starts as a constant input.

    ``forward(token: B x token_dim)`` -> ``B x channels x size x size``.
    """

    def __init__(self, token_dim: int, channels: int, size: int, seed: int = 0) -> None:
        super().__init__()
        generator = torch.Generator().manual_seed(seed)
        angle = 2 * torch.pi * torch.rand(channels, generator=generator)
        radius = (size / 4) * torch.rand(channels, generator=generator).sqrt()  # uniform over the disc
        self.register_buffer("frequencies", torch.stack([radius * angle.cos(), radius * angle.sin()], dim=1))
        self.register_buffer("phases", 2 * torch.pi * torch.rand(channels, generator=generator))
        axis = (torch.arange(size, dtype=torch.float32) + 0.5) / size * 2 - 1  # cell centres
        ys, xs = torch.meshgrid(axis, axis, indexing="ij")
        self.register_buffer("grid", torch.stack([xs, ys], dim=-1))  # size x size x 2
        self.affine = nn.Linear(token_dim, 6)
        nn.init.zeros_(self.affine.weight)
        with torch.no_grad():
            self.affine.bias.copy_(torch.tensor([1.0, 0.0, 0.0, 0.0, 1.0, 0.0]))

    def forward(self, token: Tensor) -> Tensor:
        affine = self.affine(token).view(-1, 2, 3)
        coords = torch.einsum("bij,hwj->bhwi", affine[:, :, :2], self.grid) + affine[:, None, None, :, 2]
        angles = 2 * torch.pi * coords @ self.frequencies.T + self.phases  # B x size x size x channels
        return torch.sin(angles).permute(0, 3, 1, 2)


class LatentTokenDecoder(nn.Module):
    """IMF_D: a latent token (``B x token_dim``) to multi-scale motion features.

    A learned constant of ``channels[0]`` channels at ``const_size``, one styled 3x3 convolution
    on it, then per entry of ``channels`` three styled convolutions (the first doubles the size).
    The paper: ``const_size`` 4, ``channels`` 512, 512, 512, 256, giving 8, 16, 32 and 64 px maps.

    ``input_features="fourier"`` (not the paper's) replaces the constant by :class:`FourierInput`,
    StyleGAN3's input: the token also moves the input's coordinates, and the convolutions carry a
    moved input to moved motion features, so a pose change can move the feature maps directly
    instead of being learned as a re-weighting of a fixed layout.

    ``forward(t)`` -> ``len(channels)`` maps ``B x channels[i] x const_size * 2**(i+1)``, coarse to fine.
    """

    def __init__(self, token_dim: int = 32, const_size: int = 4, channels: Sequence[int] = (512, 512, 512, 256),
                 convs_per_level: int = 3, input_features: str = "constant") -> None:
        super().__init__()
        self.channels = [int(c) for c in channels]
        self.token_dim = int(token_dim)
        self.const_size = int(const_size)
        if input_features not in ("constant", "fourier"):
            raise ValueError(f"input_features must be 'constant' or 'fourier', got {input_features!r}")
        self.input_features = input_features
        if input_features == "constant":
            self.const = nn.Parameter(torch.randn(1, self.channels[0], const_size, const_size))
        else:
            self.fourier = FourierInput(token_dim, self.channels[0], const_size)
        self.first = StyledConv(self.channels[0], self.channels[0], 3, token_dim)
        self.levels = nn.ModuleList()
        cin = self.channels[0]
        for cout in self.channels:
            convs = [StyledConv(cin, cout, 3, token_dim, upsample=True)]
            convs += [StyledConv(cout, cout, 3, token_dim) for _ in range(convs_per_level - 1)]
            self.levels.append(nn.ModuleList(convs))
            cin = cout

    def sizes(self) -> list[int]:
        return [self.const_size * 2 ** (i + 1) for i in range(len(self.channels))]

    def forward(self, token: Tensor) -> list[Tensor]:
        if self.input_features == "constant":
            start = self.const.expand(token.shape[0], -1, -1, -1)
        else:
            start = self.fourier(token)
        out = self.first(start, token)
        maps = []
        for convs in self.levels:
            for conv in convs:
                out = conv(out, token)
            maps.append(out)
        return maps


class ImplicitMotionAlignment(nn.Module):
    """IMF_A: per scale, align the reference's dense features to the current frame.

    Args:
        query_channels: motion-feature channels per scale (coarse to fine).
        value_channels: dense-feature channels per scale.
        sizes: side of each scale's (square) maps.
        num_blocks, num_heads, mlp_dim: the transformer blocks after each alignment (paper: 4,
            8 heads, MLP 1024).
        max_attention_resolution: the finest map side attention runs at; a finer scale runs as
            patch attention at this side (:func:`~animzoo.nn.attention.patch_attention`), which
            bounds the attention map at ``max_attention_resolution**4`` entries. None: no cap.
            A run-time setting (same parameters); set the attribute to change it.
        initial_self_logit, motion_gain, learn_motion_gain, relative_motion: how sharply the
            alignment starts at the identity motion, the gain on the motion features, and whether
            the queries carry their change from the reference instead of the paper's absolute
            features (:class:`~animzoo.nn.attention.CrossAttentionAlignment`).
        passthrough_channels: per scale, how many of the last value channels skip the
            transformer blocks (IMF's image skip sets it at the finest scale); None: none.

    ``forward(m_c, m_r, f_r)``: three lists (coarse to fine) -> aligned features, coarse to fine.
    The scales run one after the other, so at most one scale's attention is alive in a forward pass.
    """

    def __init__(self, query_channels: Sequence[int], value_channels: Sequence[int], sizes: Sequence[int],
                 num_blocks: int = 4, num_heads: int = 8, mlp_dim: int = 1024,
                 max_attention_resolution: int | None = None, initial_self_logit: float = 16.0,
                 motion_gain: float = 0.1, learn_motion_gain: bool = True, relative_motion: bool = False,
                 passthrough_channels: Sequence[int] | None = None) -> None:
        super().__init__()
        passthrough_channels = [0] * len(sizes) if passthrough_channels is None else list(passthrough_channels)
        if not len(query_channels) == len(value_channels) == len(sizes) == len(passthrough_channels):
            raise ValueError("query_channels, value_channels, sizes and passthrough_channels need one entry per scale")
        self.sizes = [int(s) for s in sizes]
        self.max_attention_resolution = max_attention_resolution
        self.levels = nn.ModuleList(
            CrossAttentionAlignment(q, v, (s, s), num_blocks, num_heads, mlp_dim, initial_patch=self.patch_size(s),
                                    initial_self_logit=initial_self_logit, motion_gain=motion_gain,
                                    learn_motion_gain=learn_motion_gain, relative_motion=relative_motion,
                                    passthrough_channels=p)
            for q, v, s, p in zip(query_channels, value_channels, self.sizes, passthrough_channels)
        )

    @property
    def max_attention_resolution(self) -> int | None:
        return self._cap

    @max_attention_resolution.setter
    def max_attention_resolution(self, value: int | None) -> None:
        if value is not None:
            for size in self.sizes:
                if size > value and size % int(value):
                    raise ValueError(f"max_attention_resolution={value} must divide the {size} px scale it caps")
        self._cap = None if value is None else int(value)

    def patch_size(self, size: int) -> int:
        """The patch of a scale of side ``size`` under the cap (1: full attention)."""
        return 1 if self._cap is None or size <= self._cap else size // self._cap

    def forward(self, m_c: Sequence[Tensor], m_r: Sequence[Tensor], f_r: Sequence[Tensor]) -> list[Tensor]:
        return [
            level(q, k, v, patch=self.patch_size(size))
            for level, size, q, k, v in zip(self.levels, self.sizes, m_c, m_r, f_r)
        ]


class FrameDecoder(nn.Module):
    """D_F: aligned features (coarse to fine) to the image.

    One :class:`UpConvResBlock` per entry of ``channels`` (paper: 512, 512, 256, 128, 64) from the
    coarsest aligned map up to the image size; after each of the first ``len(level_channels) - 1``
    blocks the aligned features of that scale are concatenated and a feature residual block runs
    on the result. A 3x3 convolution and a sigmoid give the frame.

    ``image_skip`` (not the paper's): the finest aligned map ends with the reference's pixels,
    moved by the attention like the features (``num_channels * r * r`` channels, the image
    pixel-unshuffled by ``r`` = image side / finest side; see :meth:`image_to_level`). The frame is
    then ``sigmoid(logit(moved pixels) + conv(...))`` with the last convolution starting at zero:
    the decoder draws a correction to the moved reference instead of the whole frame, so a static
    background is redrawn exactly from the first step (the source copy, as warping methods start
    from) and the pixel loss reaches the attention directly through the moved pixels.

    ``forward(aligned)`` -> ``B x num_channels x H x W`` in (0, 1).
    """

    #: moved pixels are clamped to [eps, 1 - eps] before the logit (an error of at most eps).
    eps = 1e-3

    def __init__(self, level_channels: Sequence[int], channels: Sequence[int] = (512, 512, 256, 128, 64),
                 num_channels: int = 3, num_res: int = 1, image_skip: bool = False) -> None:
        super().__init__()
        self.num_channels = int(num_channels)
        self.image_skip = bool(image_skip)
        level_channels = [int(c) for c in level_channels]
        if len(channels) < len(level_channels) - 1:
            raise ValueError("FrameDecoder needs at least one up block per finer scale")
        self.num_skips = len(level_channels) - 1
        self.ups = nn.ModuleList()
        self.fuse = nn.ModuleList()
        cin = level_channels[0]
        for i, cout in enumerate(channels):
            self.ups.append(UpConvResBlock(cin, cout, num_res))
            cin = cout
            if i < self.num_skips:
                cin = cout + level_channels[i + 1]
                self.fuse.append(ResBlock2d(cin))
        self.out = nn.Conv2d(cin, num_channels, 3, padding=1)
        if self.image_skip:
            nn.init.zeros_(self.out.weight)
            nn.init.zeros_(self.out.bias)

    @staticmethod
    def image_to_level(image: Tensor, size: int) -> Tensor:
        """The image (``B x C x H x H``) as channels of a ``size x size`` map: pixel-unshuffled by
        ``H / size`` (``B x C r^2 x size x size``), so that moving a cell moves its pixels."""
        if image.shape[-1] % size or image.shape[-2] != image.shape[-1]:
            raise ValueError(
                f"image_to_level: a {tuple(image.shape[-2:])} image does not split into {size}x{size} cells"
            )
        return F.pixel_unshuffle(image, image.shape[-1] // size)

    def forward(self, aligned: Sequence[Tensor]) -> Tensor:
        out = aligned[0]
        for i, up in enumerate(self.ups):
            out = up(out)
            if i < self.num_skips:
                out = self.fuse[i](torch.cat([out, aligned[i + 1]], dim=1))
        if not self.image_skip:
            return torch.sigmoid(self.out(out))
        factor = out.shape[-1] // aligned[-1].shape[-1]
        moved = F.pixel_shuffle(aligned[-1][:, -self.num_channels * factor**2:], factor)
        return torch.sigmoid(torch.logit(moved.clamp(self.eps, 1 - self.eps)) + self.out(out))
