"""Monkey-Net's networks as plain ``nn.Module``s (Siarohin et al., CVPR 2019).

Keypoints are dicts ``{"value": B x K x 2, "covariance": B x K x 2 x 2}`` in normalised
(x, y) coordinates (``align_corners=True`` convention, see docs/index.md).

* :class:`KeypointDetector`: an hourglass gives K heatmaps; a spatial softmax (temperature 0.1)
  turns them into keypoints (mean) with a covariance.
* :class:`MovementEmbedding`: the per-keypoint input of the dense-motion network: heatmap
  difference H(driving) - H(source), keypoint displacement, source deformed by each keypoint's
  translation; plus a background slot with zero motion.
* :class:`DenseMotionNetwork`: K+1 masks and a residual correction; the flow is
  ``identity + sum_k mask_k (kp_src_k - kp_drv_k) + correction``.
* :class:`Generator`: appearance encoder, skips warped by the dense motion and joined with the
  heatmap-difference embedding, decoder, residual refinement, sigmoid.
* :class:`KeypointSequenceGRU`: the image-to-video keypoint predictor (1-layer GRU).

The reference code uses 3-D convolutions with (1, 3, 3) kernels over (time, height, width); they
never mix frames, so these 2-D modules compute the same function frame by frame. Every
constructor keyword is a plain value that maps one to one onto a recipe key.
"""

from __future__ import annotations

from typing import Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from animzoo.geometry.grid import make_coordinate_grid, warp
from animzoo.geometry.keypoints import heatmap_to_keypoints, keypoints_to_gaussian
from animzoo.nn.blocks import AntiAliasInterpolation2d, Decoder, Encoder, Hourglass, ResBlock2d, SameBlock2d

__all__ = [
    "KeypointDetector",
    "MovementEmbedding",
    "DenseMotionNetwork",
    "Generator",
    "KeypointSequenceGRU",
    "resize_grid",
]

KpVariance = Union[float, str]
NormConst = Union[float, str]
Keypoints = dict[str, Tensor]


def _kp_gaussian(kp: Keypoints, spatial_size: tuple[int, int], kp_variance: KpVariance) -> Tensor:
    if kp_variance == "matrix":
        if "covariance" not in kp:
            raise ValueError(
                "kp_variance='matrix' needs keypoints with a 'covariance' (B x K x 2 x 2); "
                "pass the detector's output or set a numeric kp_variance"
            )
        return keypoints_to_gaussian(kp["value"], spatial_size, kp["covariance"])
    if isinstance(kp_variance, str):
        raise ValueError(f"kp_variance must be a number or 'matrix', got {kp_variance!r}")
    return keypoints_to_gaussian(kp["value"], spatial_size, float(kp_variance))


def resize_grid(grid: Tensor, size: tuple[int, int]) -> Tensor:
    """Resize a B x h x w x 2 sampling grid to ``size`` (H, W) keeping the identity exact.

    The displacement (grid - identity) is resized bilinearly with ``align_corners=True`` and the
    identity of the new size is added back, so an identity grid stays an identity grid.
    """
    h, w = grid.shape[1:3]
    if (h, w) == tuple(size):
        return grid
    ident = make_coordinate_grid(h, w, dtype=grid.dtype, device=grid.device)
    disp = (grid - ident).permute(0, 3, 1, 2)
    disp = F.interpolate(disp, size=tuple(size), mode="bilinear", align_corners=True)
    return disp.permute(0, 2, 3, 1) + make_coordinate_grid(*size, dtype=grid.dtype, device=grid.device)


class KeypointDetector(nn.Module):
    """Hourglass -> K heatmaps -> softmax(heatmap / temperature) -> keypoints with covariance.

    Args:
        num_kp: keypoints K.
        num_channels: image channels.
        block_expansion, max_features, num_blocks: hourglass size (paper: 32, 1024, 5).
        temperature: softmax temperature (0.1).
        kp_variance: ``"matrix"`` (return a 2 x 2 covariance per keypoint) or a number (none).
        scale_factor: the detector sees the image resized by this factor (anti-aliased);
            vox-256 uses 0.25 (a 64 x 64 input).
        clip_variance: lower bound on the covariance's smallest eigenvalue (0.001).

    ``forward(image)`` -> ``{"value": B x K x 2, "covariance": B x K x 2 x 2}`` (no covariance
    for a numeric ``kp_variance``).
    """

    def __init__(
        self,
        num_kp: int = 10,
        num_channels: int = 3,
        block_expansion: int = 32,
        max_features: int = 1024,
        num_blocks: int = 5,
        temperature: float = 0.1,
        kp_variance: KpVariance = "matrix",
        scale_factor: float = 1.0,
        clip_variance: float | None = 0.001,
    ):
        super().__init__()
        self.num_kp = num_kp
        self.temperature = temperature
        self.kp_variance = kp_variance
        self.scale_factor = scale_factor
        self.clip_variance = clip_variance
        self.hourglass = Hourglass(block_expansion, num_channels, num_blocks, max_features, out_features=num_kp)
        self.down = AntiAliasInterpolation2d(num_channels, scale_factor) if scale_factor != 1 else None

    def forward(self, image: Tensor) -> Keypoints:
        x = self.down(image) if self.down is not None else image
        logits = self.hourglass(x)
        kp = heatmap_to_keypoints(
            logits,
            temperature=self.temperature,
            covariance=self.kp_variance == "matrix",
            clip_variance=self.clip_variance,
        )
        return kp


class MovementEmbedding(nn.Module):
    """Keypoint-motion representation fed to the dense-motion network and the generator.

    Per keypoint (keypoint-major channel layout, background slot first when
    ``add_bg_feature_map``): ``use_heatmap`` -> 1 channel (H(driving) - H(source) for
    ``heatmap_type="difference"``, H(driving) for ``"gaussian"``, divided by ``norm_const`` or
    normalised to sum 1 for ``"sum"``); ``use_difference`` -> 2 channels (kp_source - kp_driving,
    constant over the image); ``use_deformed_source`` -> ``num_channels`` channels (the source
    translated by that keypoint's motion). ``out_channels = (1*use_heatmap + 2*use_difference +
    num_channels*use_deformed_source) * (num_kp + add_bg_feature_map)``.

    ``forward(source_image, kp_driving, kp_source)`` works at ``source_image``'s size.
    """

    def __init__(
        self,
        num_kp: int,
        num_channels: int = 3,
        kp_variance: KpVariance = "matrix",
        use_heatmap: bool = True,
        use_difference: bool = False,
        use_deformed_source: bool = False,
        heatmap_type: str = "difference",
        norm_const: NormConst = 100.0,
        add_bg_feature_map: bool = False,
    ):
        super().__init__()
        if heatmap_type not in ("gaussian", "difference"):
            raise ValueError(f"heatmap_type must be 'gaussian' or 'difference', got {heatmap_type!r}")
        if not (use_heatmap or use_difference or use_deformed_source):
            raise ValueError("MovementEmbedding needs at least one of use_heatmap, use_difference, use_deformed_source")
        if isinstance(norm_const, str) and norm_const != "sum":
            raise ValueError(f"norm_const must be a number or 'sum', got {norm_const!r}")
        self.num_kp = num_kp
        self.num_channels = num_channels
        self.kp_variance = kp_variance
        self.use_heatmap = use_heatmap
        self.use_difference = use_difference
        self.use_deformed_source = use_deformed_source
        self.heatmap_type = heatmap_type
        self.norm_const = norm_const
        self.add_bg_feature_map = add_bg_feature_map
        self.channels_per_kp = 1 * use_heatmap + 2 * use_difference + num_channels * use_deformed_source
        self.out_channels = self.channels_per_kp * (num_kp + int(add_bg_feature_map))

    def _normalize(self, heat: Tensor) -> Tensor:
        if self.norm_const == "sum":
            return heat / heat.flatten(2).sum(-1)[..., None, None]
        return heat / float(self.norm_const)

    def forward(self, source_image: Tensor, kp_driving: Keypoints, kp_source: Keypoints) -> Tensor:
        bs, _, h, w = source_image.shape
        k = kp_driving["value"].shape[1]
        slots = k + int(self.add_bg_feature_map)
        parts: list[Tensor] = []
        if self.use_heatmap:
            heat = self._normalize(_kp_gaussian(kp_driving, (h, w), self.kp_variance))
            if self.heatmap_type == "difference":
                heat = heat - self._normalize(_kp_gaussian(kp_source, (h, w), self.kp_variance))
            if self.add_bg_feature_map:
                heat = torch.cat([heat.new_zeros(bs, 1, h, w), heat], dim=1)
            parts.append(heat.unsqueeze(2))  # B x slots x 1 x h x w
        if self.use_difference or self.use_deformed_source:
            diff = kp_source["value"] - kp_driving["value"]  # B x K x 2
            if self.add_bg_feature_map:
                diff = torch.cat([diff.new_zeros(bs, 1, 2), diff], dim=1)
        if self.use_difference:
            parts.append(diff[..., None, None].expand(bs, slots, 2, h, w).to(source_image.dtype))
        if self.use_deformed_source:
            ident = make_coordinate_grid(h, w, dtype=source_image.dtype, device=source_image.device)
            grid = ident + diff.to(source_image.dtype)[:, :, None, None, :]  # B x slots x h x w x 2
            src = source_image.unsqueeze(1).expand(bs, slots, *source_image.shape[1:])
            deformed = warp(src.reshape(bs * slots, -1, h, w), grid.reshape(bs * slots, h, w, 2))
            parts.append(deformed.view(bs, slots, -1, h, w))
        return torch.cat(parts, dim=2).view(bs, -1, h, w)


class DenseMotionNetwork(nn.Module):
    """Dense motion from sparse keypoint motion: K+1 soft masks and a residual correction.

    Input: the :class:`MovementEmbedding` of (heatmap difference, optional displacement,
    translated sources) with a background slot, through ``num_group_blocks`` grouped 1 x 1
    blocks (one group per slot) and an hourglass that predicts K+1 mask logits and 2 correction
    channels. The last convolution starts with zero weights and bias ``bg_init`` on the
    background logit (so at initialisation the masks favour the background: identity motion).

    Returns ``{"grid": B x h x w x 2 sampling grid, "mask": B x (K+1) x h x w (softmax over
    K+1, background first), "correction": B x 2 x h x w}`` at the network's resolution
    (``scale_factor`` x the image size). ``grid = identity + sum_k mask_k (kp_src_k - kp_drv_k)
    + correction`` (x, y), for ``warp(source, grid)``.
    """

    def __init__(
        self,
        num_kp: int = 10,
        num_channels: int = 3,
        kp_variance: KpVariance = "matrix",
        block_expansion: int = 32,
        max_features: int = 1024,
        num_blocks: int = 5,
        num_group_blocks: int = 2,
        use_mask: bool = True,
        use_correction: bool = True,
        bg_init: float = 2.0,
        scale_factor: float = 1.0,
        use_heatmap: bool = True,
        use_difference: bool = False,
        use_deformed_source: bool = True,
        heatmap_type: str = "difference",
        norm_const: NormConst = 100.0,
    ):
        super().__init__()
        if not (use_mask or use_correction):
            raise ValueError("DenseMotionNetwork needs use_mask or use_correction")
        self.num_kp = num_kp
        self.use_mask = use_mask
        self.use_correction = use_correction
        self.scale_factor = scale_factor
        self.mask_embedding = MovementEmbedding(
            num_kp,
            num_channels,
            kp_variance,
            use_heatmap=use_heatmap,
            use_difference=use_difference,
            use_deformed_source=use_deformed_source,
            heatmap_type=heatmap_type,
            norm_const=norm_const,
            add_bg_feature_map=True,
        )
        cin = self.mask_embedding.out_channels
        self.group_blocks = nn.ModuleList(
            [SameBlock2d(cin, cin, groups=num_kp + 1, kernel_size=1, padding=0) for _ in range(num_group_blocks)]
        )
        out_features = (num_kp + 1) * int(use_mask) + 2 * int(use_correction)
        self.hourglass = Hourglass(block_expansion, cin, num_blocks, max_features, out_features=out_features)
        final = self.hourglass.decoder.conv
        assert final is not None
        with torch.no_grad():
            final.weight.zero_()
            bias = torch.zeros(out_features)
            if use_mask:
                bias[0] = bg_init
            final.bias.copy_(bias)
        self.down = AntiAliasInterpolation2d(num_channels, scale_factor) if scale_factor != 1 else None

    def forward(self, source_image: Tensor, kp_driving: Keypoints, kp_source: Keypoints) -> dict[str, Tensor]:
        src = self.down(source_image) if self.down is not None else source_image
        bs, _, h, w = src.shape
        x = self.mask_embedding(src, kp_driving, kp_source)
        for block in self.group_blocks:
            x = block(x)  # conv-BN-ReLU (the reference's extra LeakyReLU after ReLU is the identity)
        pred = self.hourglass(x)
        ident = make_coordinate_grid(h, w, dtype=src.dtype, device=src.device)
        out: dict[str, Tensor] = {}
        motion = torch.zeros(bs, 2, h, w, dtype=src.dtype, device=src.device)
        if self.use_mask:
            mask = torch.softmax(pred[:, : self.num_kp + 1], dim=1)
            diff = kp_source["value"] - kp_driving["value"]  # B x K x 2
            diff = torch.cat([diff.new_zeros(bs, 1, 2), diff], dim=1).to(src.dtype)  # background: no motion
            motion = motion + torch.einsum("bkhw,bkc->bchw", mask, diff)
            out["mask"] = mask
        if self.use_correction:
            correction = pred[:, -2:]
            motion = motion + correction
            out["correction"] = correction
        out["grid"] = ident + motion.permute(0, 2, 3, 1)
        return out


class Generator(nn.Module):
    """Monkey-Net's motion-transfer generator.

    Args:
        num_kp, num_channels, kp_variance: common parameters.
        block_expansion, max_features, num_blocks: appearance encoder / decoder size (vox-256:
            32, 1024, 7). The image size must be divisible by ``2**num_blocks``.
        num_refinement_blocks: residual blocks after the decoder (4).
        dense_motion_params: keyword arguments of :class:`DenseMotionNetwork` (without the
            common parameters); ``None`` means identity motion (no dense-motion network).
        use_kp_embedding: join each skip with the K-channel heatmap-difference embedding.
        embedding_scale_factor: resolution of that embedding relative to the image (0.25 for vox).
        embedding_norm_const, embedding_heatmap_type: as in :class:`MovementEmbedding`.
        identity_init: initialise the output so that the generator starts as the deformed
            source (``sigmoid(4 x - 2)`` of the warped image channels, residual branches at zero);
            ``False`` (the reference) keeps PyTorch's default initialisation.

    ``forward(source_image, kp_driving, kp_source)`` -> ``{"prediction": B x C x H x W in (0, 1),
    "deformed": source warped by the dense motion, "grid": the sampling grid at the dense-motion
    resolution, "mask": the K+1 masks}``.
    """

    def __init__(
        self,
        num_kp: int = 10,
        num_channels: int = 3,
        kp_variance: KpVariance = "matrix",
        block_expansion: int = 32,
        max_features: int = 1024,
        num_blocks: int = 7,
        num_refinement_blocks: int = 4,
        dense_motion_params: dict | None = None,
        use_kp_embedding: bool = True,
        embedding_scale_factor: float = 1.0,
        embedding_norm_const: NormConst = 100.0,
        embedding_heatmap_type: str = "difference",
        identity_init: bool = False,
    ):
        super().__init__()
        self.appearance_encoder = Encoder(block_expansion, num_channels, num_blocks, max_features)
        if use_kp_embedding:
            self.kp_embedding: MovementEmbedding | None = MovementEmbedding(
                num_kp,
                num_channels,
                kp_variance,
                use_heatmap=True,
                heatmap_type=embedding_heatmap_type,
                norm_const=embedding_norm_const,
            )
            emb = self.kp_embedding.out_channels
        else:
            self.kp_embedding = None
            emb = 0
        self.embedding_scale_factor = embedding_scale_factor
        if dense_motion_params is not None:
            self.dense_motion: DenseMotionNetwork | None = DenseMotionNetwork(
                num_kp=num_kp, num_channels=num_channels, kp_variance=kp_variance, **dense_motion_params
            )
        else:
            self.dense_motion = None
        self.decoder = Decoder(
            block_expansion, num_channels, None, num_blocks, max_features, additional_features_for_block=emb
        )
        features = self.decoder.out_filters
        self.refinement = nn.Sequential(*[ResBlock2d(features) for _ in range(num_refinement_blocks)])
        self.final = nn.Conv2d(features, num_channels, kernel_size=1)
        if identity_init:
            self._identity_init(min(max_features, block_expansion), num_channels)

    @torch.no_grad()
    def _identity_init(self, first: int, num_channels: int) -> None:
        """Start as (approximately) the deformed source: zero the last conv of every residual
        branch and read only the warped-image channels of the decoder output,
        ``sigmoid(4 x - 2)`` (slope 1 at 0.5). Not in the paper (PyTorch's default init there);
        it shortens the blurry first phase of training, which matters for short CPU runs."""
        for block in self.refinement:
            block.conv2.weight.zero_()
            block.conv2.bias.zero_()
        self.final.weight.zero_()
        self.final.bias.fill_(-2.0)
        for c in range(num_channels):
            self.final.weight[c, first + c] = 4.0

    def forward(self, source_image: Tensor, kp_driving: Keypoints, kp_source: Keypoints) -> dict[str, Tensor]:
        bs, _, h, w = source_image.shape
        skips = self.appearance_encoder(source_image)
        out: dict[str, Tensor] = {}
        if self.dense_motion is not None:
            motion = self.dense_motion(source_image, kp_driving, kp_source)
            grid = motion["grid"]
            if "mask" in motion:
                out["mask"] = motion["mask"]
        else:
            grid = make_coordinate_grid(h, w, dtype=source_image.dtype, device=source_image.device).expand(bs, h, w, 2)
        out["grid"] = grid
        deformed_skips = [warp(s, resize_grid(grid, tuple(s.shape[-2:]))) for s in skips]
        if self.kp_embedding is not None:
            eh = max(1, int(round(h * self.embedding_scale_factor)))
            ew = max(1, int(round(w * self.embedding_scale_factor)))
            emb = self.kp_embedding(source_image.new_empty(bs, 0, eh, ew), kp_driving, kp_source)
            deformed_skips = [
                torch.cat([s, self._resize(emb, tuple(s.shape[-2:]))], dim=1) for s in deformed_skips
            ]
        out["deformed"] = deformed_skips[0][:, : source_image.shape[1]]
        feat = self.decoder(deformed_skips)
        feat = self.refinement(feat)
        out["prediction"] = torch.sigmoid(self.final(feat))
        return out

    @staticmethod
    def _resize(x: Tensor, size: tuple[int, int]) -> Tensor:
        if tuple(x.shape[-2:]) == size:
            return x
        return F.interpolate(x, size=size, mode="bilinear", align_corners=True)


class KeypointSequenceGRU(nn.Module):
    """Monkey-Net's image-to-video keypoint predictor: a GRU over keypoint sequences.

    Input per frame: K means (2) plus, when ``use_covariance``, K flattened 2 x 2 covariances
    (4): ``K * (2 + 4)`` features. A ``num_layers``-layer GRU with ``hidden_size`` units (1, 1024)
    and a linear layer give the same number of features per frame; means go through tanh and
    covariances are ``A^T A`` of the predicted 2 x 2 ``A`` (symmetric positive semi-definite).

    ``forward(kp_seq)`` with ``kp_seq = {"value": B x T x K x 2, optional "covariance":
    B x T x K x 2 x 2}`` -> a dict of the same shapes: the output at frame t (the reference feeds
    zeros after the initial frames and reads every frame's prediction from the GRU state).
    """

    def __init__(self, num_kp: int = 10, use_covariance: bool = True, hidden_size: int = 1024, num_layers: int = 1, dropout: float = 0.0):
        super().__init__()
        self.num_kp = num_kp
        self.use_covariance = use_covariance
        self.features = num_kp * (2 + 4 * int(use_covariance))
        self.rnn = nn.GRU(self.features, hidden_size, num_layers=num_layers, dropout=dropout if num_layers > 1 else 0.0, batch_first=True)
        self.linear = nn.Linear(hidden_size, self.features)

    def forward(self, kp_seq: Keypoints) -> Keypoints:
        value = kp_seq["value"]
        bs, t, k, _ = value.shape
        inputs = [value.reshape(bs, t, -1)]
        if self.use_covariance:
            if "covariance" not in kp_seq:
                raise ValueError("this predictor was built with use_covariance=True: kp_seq needs 'covariance'")
            inputs.append(kp_seq["covariance"].reshape(bs, t, -1))
        out, _ = self.rnn(torch.cat(inputs, dim=-1))
        out = self.linear(out).view(bs, t, k, -1)
        result = {"value": torch.tanh(out[..., :2])}
        if self.use_covariance:
            a = out[..., 2:].reshape(bs, t, k, 2, 2)
            result["covariance"] = a.transpose(-1, -2) @ a
        return result
