"""Sparse-to-dense motion transfer's networks as plain ``nn.Module``s (Zhao, Wu, Guo, ICCVW 2021).

Landmarks are ``B x L x 2`` normalised (x, y) coordinates (``align_corners=True`` convention,
docs/index.md); a landmark *vector* is their ``2L`` concatenation, as in the paper.

* :class:`LandmarkAdaIN`: instance normalisation whose per-channel scale and bias are a linear
  function of a landmark embedding (the paper's AdaIN for geometry transfer).
* :class:`MotionBranch`: the encoder-decoder of one branch. AdaIN in the encoder follows the
  *source* landmarks, AdaIN in the decoder the *driving* landmarks, and the Add_Motion layer adds
  a fully connected projection of ``driving - source`` to the bottleneck. It outputs a flow
  (and, for local branches, a blending mask).
* :class:`DenseMotionNetwork`: one global branch over the whole source and three local branches
  (right eye + brow, left eye + brow, mouth) over crops; the local flows are shifted and scaled
  back into image coordinates and blended into the global flow with their masks (paper eq. 3).
* :class:`ImageGenerator`: the source warped by the dense motion (eq. 1), concatenated with the
  motion map, goes through a first-order-model-style encoder / residual bottleneck / decoder that
  outputs a residual image ``R`` and a mask ``M``; ``T = E (1 - M) + R M`` (eq. 2).

The paper publishes no code; what it leaves open is decided here and listed in this folder's
README.md (crop placement, mask tapering, coordinate channels, Add_Motion's spatial layout).
Every constructor keyword is a plain value that maps one to one onto a recipe key.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from animzoo.geometry.grid import make_coordinate_grid, warp
from animzoo.nn.blocks import (
    AntiAliasInterpolation2d,
    ResBlock2d,
    SameBlock2d,
    hourglass_channels,
)

__all__ = [
    "DenseMotionNetwork",
    "ImageGenerator",
    "LandmarkAdaIN",
    "MotionBranch",
    "crop_grid",
    "crop_half_extent",
    "default_regions",
    "paste_local_flow",
]


# --------------------------------------------------------------------------- regions


def default_regions(num_landmarks: int) -> dict[str, list[int]]:
    """The three local regions of the iBUG-68 based layouts (68, 70 = + pupils, 74 = the paper's).

    ``right_eye`` = right brow 17-21 + right eye 36-41 (+ right pupil 68), ``left_eye`` = 22-26 +
    42-47 (+ 69), ``mouth`` = 48-67. "Right" is the subject's right (image left), as in
    :mod:`animzoo.geometry.heads`. With 74 points the paper adds six points to the 68; we
    assume the first two (68, 69) are the pupils, like animzoo's 70; pass ``regions`` for any
    other layout.
    """
    if num_landmarks < 68:
        raise ValueError(
            f"no default local regions for {num_landmarks} landmarks (the defaults index the iBUG 68 "
            "layout); pass regions={'right_eye': [...], 'left_eye': [...], 'mouth': [...]}"
        )
    pupils = num_landmarks >= 70
    return {
        "right_eye": list(range(17, 22)) + list(range(36, 42)) + ([68] if pupils else []),
        "left_eye": list(range(22, 27)) + list(range(42, 48)) + ([69] if pupils else []),
        "mouth": list(range(48, 68)),
    }


# --------------------------------------------------------------------------- crops


def crop_half_extent(crop_size: int, image_size: int) -> float:
    """Normalised half-width of a ``crop_size``-pixel crop of an ``image_size``-pixel axis.

    With align_corners=True the pixel centres of a crop of ``n`` pixels at the image's own pixel
    spacing span ``(n - 1) / (N - 1)`` on either side of its centre, so the crop samples the
    image without resampling blur when its centre sits on a pixel centre.
    """
    if image_size < 2 or crop_size < 2:
        raise ValueError(f"crop ({crop_size}) and image ({image_size}) need at least 2 pixels")
    return (crop_size - 1) / (image_size - 1)


def crop_grid(centre: Tensor, half_extent: Tensor, crop_size: int) -> Tensor:
    """Sampling grid of square crops: ``centre + half_extent * u`` for the crop's own coordinates u.

    Args:
        centre: B x 2 normalised crop centres (x, y).
        half_extent: 2 (x, y) normalised half-widths (see :func:`crop_half_extent`).
        crop_size: pixels per side.

    Returns:
        B x crop_size x crop_size x 2, for :func:`animzoo.geometry.grid.warp`.
    """
    base = make_coordinate_grid(crop_size, crop_size, dtype=centre.dtype, device=centre.device)
    return centre[:, None, None, :] + half_extent.to(centre) * base[None]


def _taper(u: Tensor, border: float) -> Tensor:
    """1 inside, smoothly 0 at ``|u| = 1`` over the outer ``border`` of each axis; B x h x w x 2 -> B x 1 x h x w."""
    if border <= 0:
        inside = (u.abs() <= 1).all(dim=-1)
        return inside[:, None].to(u.dtype)
    t = ((1 - u.abs()) / border).clamp(0, 1)
    t = t * t * (3 - 2 * t)  # smoothstep: no seam where the local flow meets the global one
    return (t[..., 0] * t[..., 1])[:, None]


def paste_local_flow(
    global_grid: Tensor,
    local_grid: Tensor,
    local_mask: Tensor,
    source_centre: Tensor,
    driving_centre: Tensor,
    half_extent: Tensor,
    border: float = 0.0,
) -> tuple[Tensor, Tensor]:
    """Blend one local branch's flow into the global one (paper eq. 3).

    The local branch saw the source crop centred at ``source_centre`` and predicted, over its own
    crop coordinates, where each output pixel samples the crop (``local_grid``, crop units in
    [-1, 1]). Its output window is placed at ``driving_centre`` (where the region is in the
    driving frame), so an output pixel ``p`` has crop coordinates ``u = (p - c_d) / s`` and the
    flow in image coordinates is ``f̂(p) = c_s + s ⊙ F_local(u)`` (shift and scale back). Inside
    the window ``F(p) = f_G(p) (1 - m(u)) + f̂(p) m(u)``; outside it ``F = f_G``.

    Args:
        global_grid: B x H x W x 2 sampling grid of the global branch (normalised).
        local_grid: B x n x n x 2 local sampling grid in crop coordinates.
        local_mask: B x 1 x n x n blending mask in [0, 1].
        source_centre, driving_centre: B x 2 normalised crop centres.
        half_extent: 2 (x, y) normalised half-widths ``s`` of the crop.
        border: taper the mask to 0 over this outer fraction of the window (0: hard edge).

    Returns:
        ``(grid, mask)``: the blended B x H x W x 2 grid and the mask in image coordinates
        B x 1 x H x W (0 outside the window).
    """
    h, w = global_grid.shape[1:3]
    s = half_extent.to(global_grid)
    ident = make_coordinate_grid(h, w, dtype=global_grid.dtype, device=global_grid.device)
    u = (ident[None] - driving_centre[:, None, None, :]) / s  # B x H x W x 2 crop coordinates
    local = F.grid_sample(local_grid.permute(0, 3, 1, 2), u, mode="bilinear", padding_mode="border", align_corners=True)
    flow_hat = source_centre[:, None, None, :] + s * local.permute(0, 2, 3, 1)
    mask = F.grid_sample(local_mask, u, mode="bilinear", padding_mode="border", align_corners=True)
    mask = mask * _taper(u, border)  # exactly 0 outside the window
    m = mask.permute(0, 2, 3, 1)
    return global_grid * (1 - m) + flow_hat * m, mask


# --------------------------------------------------------------------------- branches


class LandmarkAdaIN(nn.Module):
    """AdaIN driven by a landmark embedding: ``IN(x) * (1 + gamma(e)) + beta(e)``.

    The affine map starts at zero, so an untrained layer is plain instance normalisation.
    ``forward(x, embedding)``: x B x C x H x W (H * W > 1), embedding B x E.
    """

    def __init__(self, num_features: int, embedding_dim: int) -> None:
        super().__init__()
        self.norm = nn.InstanceNorm2d(num_features, affine=False)
        self.affine = nn.Linear(embedding_dim, 2 * num_features)
        nn.init.zeros_(self.affine.weight)
        nn.init.zeros_(self.affine.bias)

    def forward(self, x: Tensor, embedding: Tensor) -> Tensor:
        gamma, beta = self.affine(embedding).chunk(2, dim=1)
        return self.norm(x) * (1 + gamma[:, :, None, None]) + beta[:, :, None, None]


class _ConvNorm(nn.Module):
    """conv 3 x 3 -> (AdaIN by a landmark embedding | BatchNorm) -> ReLU."""

    def __init__(self, cin: int, cout: int, embedding_dim: int | None) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel_size=3, padding=1)
        self.norm: nn.Module = LandmarkAdaIN(cout, embedding_dim) if embedding_dim else nn.BatchNorm2d(cout)

    def forward(self, x: Tensor, embedding: Tensor | None) -> Tensor:
        x = self.conv(x)
        x = self.norm(x, embedding) if isinstance(self.norm, LandmarkAdaIN) else self.norm(x)
        return F.relu(x)


class MotionBranch(nn.Module):
    """One branch of the dense motion generation network: an encoder-decoder over an image.

    Encoder: ``num_blocks`` down blocks (conv, AdaIN by the source landmarks, ReLU, 2x2 average
    pool). Bottleneck: the Add_Motion layer, ``h += reshape(FC(driving - source))``. Decoder: up
    blocks (nearest x2, conv, AdaIN by the driving landmarks, ReLU), each concatenated with the
    encoder feature of the same size (U-Net skips). A 3 x 3 head gives a displacement (zero at
    initialisation, so the branch starts as the identity) and, with ``with_mask``, a blending mask.

    Args:
        num_landmarks: landmarks this branch sees (the landmark vector has ``2 *`` that entries).
        in_channels: image channels (3).
        block_expansion, max_features, num_blocks: channels ``min(max_features,
            block_expansion * 2**i)`` at depth ``i``; input sides must be divisible by ``2**num_blocks``.
        embedding_dim: width of the landmark MLP that feeds every AdaIN layer.
        use_adain: AdaIN layers (else BatchNorm: the paper's "no AdaIN" ablation; the landmarks
            then enter only through Add_Motion).
        use_add_motion: the Add_Motion layer (the "no Add_Motion" ablation drops it).
        motion_grid: Add_Motion's FC writes a ``C x g x g`` map, resized to the bottleneck's size
            (the paper's FC into the hidden representation, independent of the image size).
        coordinates: concatenate the normalised (x, y) pixel coordinates to the image (not in the
            paper: lets the network relate landmark coordinates to pixel positions from the first
            layer on; README.md).
        with_mask: also output a sigmoid mask (local branches).

    ``forward(image, source_landmarks, driving_landmarks)``: image B x C x H x W, landmarks
    B x n x 2 -> ``{"flow": B x 2 x H x W displacement (normalised units of this image),
    "mask": B x 1 x H x W}`` (mask only with ``with_mask``).
    """

    def __init__(
        self,
        num_landmarks: int,
        in_channels: int = 3,
        block_expansion: int = 32,
        max_features: int = 512,
        num_blocks: int = 4,
        embedding_dim: int = 256,
        use_adain: bool = True,
        use_add_motion: bool = True,
        motion_grid: int = 4,
        coordinates: bool = True,
        with_mask: bool = False,
    ) -> None:
        super().__init__()
        if num_blocks < 1:
            raise ValueError(f"num_blocks must be >= 1, got {num_blocks}")
        if not (use_adain or use_add_motion):
            raise ValueError("a motion branch needs AdaIN or Add_Motion: without both it never sees the landmarks")
        self.num_landmarks = num_landmarks
        self.num_blocks = num_blocks
        self.coordinates = coordinates
        self.with_mask = with_mask
        self.motion_grid = motion_grid
        vec = 2 * num_landmarks
        emb = embedding_dim if use_adain else None
        self.embedding = (
            nn.Sequential(nn.Linear(vec, embedding_dim), nn.ReLU(), nn.Linear(embedding_dim, embedding_dim), nn.ReLU())
            if use_adain else None
        )
        cin = in_channels + (2 if coordinates else 0)
        chans = [cin] + [hourglass_channels(block_expansion, max_features, i + 1) for i in range(num_blocks)]
        self.down = nn.ModuleList(_ConvNorm(chans[i], chans[i + 1], emb) for i in range(num_blocks))
        bottleneck = chans[-1]
        self.add_motion = nn.Linear(vec, bottleneck * motion_grid * motion_grid) if use_add_motion else None
        ups = []
        for i in reversed(range(num_blocks)):
            up_in = chans[i + 1] if i == num_blocks - 1 else 2 * chans[i + 1]
            ups.append(_ConvNorm(up_in, min(max_features, block_expansion * (2**i)), emb))
        self.up = nn.ModuleList(ups)
        head_in = min(max_features, block_expansion) + cin
        self.flow_head = nn.Conv2d(head_in, 2, kernel_size=3, padding=1)
        nn.init.zeros_(self.flow_head.weight)
        nn.init.zeros_(self.flow_head.bias)
        self.mask_head = nn.Conv2d(head_in, 1, kernel_size=3, padding=1) if with_mask else None

    def forward(self, image: Tensor, source_landmarks: Tensor, driving_landmarks: Tensor) -> dict[str, Tensor]:
        b, _, h, w = image.shape
        factor = 2**self.num_blocks
        if h % factor or w % factor:
            raise ValueError(
                f"a motion branch with num_blocks={self.num_blocks} needs sides divisible by {factor}, got {h}x{w}"
            )
        for name, lm in (("source", source_landmarks), ("driving", driving_landmarks)):
            if lm.shape[1:] != (self.num_landmarks, 2):
                raise ValueError(f"{name} landmarks must be B x {self.num_landmarks} x 2, got {tuple(lm.shape)}")
        src_vec = source_landmarks.reshape(b, -1).to(image.dtype)
        drv_vec = driving_landmarks.reshape(b, -1).to(image.dtype)
        src_emb = drv_emb = None
        if self.embedding is not None:
            src_emb, drv_emb = self.embedding(torch.cat([src_vec, drv_vec])).chunk(2)
        x = image
        if self.coordinates:
            grid = make_coordinate_grid(h, w, dtype=image.dtype, device=image.device)
            x = torch.cat([x, grid.permute(2, 0, 1)[None].expand(b, -1, -1, -1)], dim=1)
        skips = [x]
        for block in self.down:
            skips.append(F.avg_pool2d(block(skips[-1], src_emb), 2))
        out = skips.pop()
        if self.add_motion is not None:  # Add_Motion: sparse landmark motion straight into the bottleneck
            g = self.motion_grid
            motion = self.add_motion(drv_vec - src_vec).view(b, -1, g, g)
            out = out + F.interpolate(motion, size=out.shape[-2:], mode="bilinear", align_corners=True)
        for block in self.up:
            out = block(F.interpolate(out, scale_factor=2.0, mode="nearest"), drv_emb)
            out = torch.cat([out, skips.pop()], dim=1)
        result = {"flow": self.flow_head(out)}
        if self.mask_head is not None:
            result["mask"] = torch.sigmoid(self.mask_head(out))
        return result


class DenseMotionNetwork(nn.Module):
    """Global + local dense motion generation (paper Fig. 1 and eq. 3).

    The global branch runs on the source downscaled by ``scale_factor`` (its flow is upsampled to
    the full size: global motion is smooth); each local branch runs at full resolution on a
    square crop of ``crop_fraction`` of the image side (64 px at 256 px), centred on its region's
    landmarks in the source (centre of their bounding box, so pupils moving inside the eye do not
    move the crop). A local branch sees only its region's landmarks, in its own crop coordinates
    (source landmarks relative to the source crop, driving landmarks relative to the driving
    window), so it models the region's motion independent of where the face is.

    Args:
        num_landmarks: L (70 = iBUG 68 + pupils; 68 and 74 work with the default regions).
        num_channels: image channels.
        regions: ``{name: [landmark indices]}`` of the local branches (default
            :func:`default_regions`).
        scale_factor: resolution of the global branch relative to the image.
        crop_fraction: local crop side / image side.
        mask_border: the outer fraction of each local window where its mask is tapered to 0.
        use_local_branches: the paper's "no local motion" ablation when False.
        use_adain, use_add_motion, coordinates, embedding_dim, motion_grid: passed to every branch.
        global_branch, local_branch: ``block_expansion``, ``max_features``, ``num_blocks`` of the
            global and of each local branch.
        local_only_landmarks: landmarks that only the local branches see (default: the pupils,
            68 and 69, when there are at least 70 points; ``[]`` feeds every landmark to the
            global branch as the paper does). Gaze is a local motion: fed to the global branch,
            the pupils leak into the motion of the whole face (measured after 400 steps on
            SyntheticHeads: 80 % of the change from moving only the pupils landed outside the eyes).

    ``forward(source, source_landmarks, driving_landmarks)`` (B x C x H x W, B x L x 2, B x L x 2)
    -> ``{"grid": B x H x W x 2 dense motion (sampling positions in the source), "global_grid":
    the global branch alone, "local_masks": B x R x H x W (R local branches, 0 outside their
    windows), "local_windows": {name: (source_centre, driving_centre)}}``.
    """

    def __init__(
        self,
        num_landmarks: int = 70,
        num_channels: int = 3,
        regions: Mapping[str, Sequence[int]] | None = None,
        scale_factor: float = 0.25,
        crop_fraction: float = 0.25,
        mask_border: float = 0.25,
        use_local_branches: bool = True,
        use_adain: bool = True,
        use_add_motion: bool = True,
        coordinates: bool = True,
        embedding_dim: int = 256,
        motion_grid: int = 4,
        global_branch: Mapping[str, int] | None = None,
        local_branch: Mapping[str, int] | None = None,
        local_only_landmarks: Sequence[int] | None = None,
    ) -> None:
        super().__init__()
        self.num_landmarks = num_landmarks
        if local_only_landmarks is None:
            local_only_landmarks = [68, 69] if num_landmarks >= 70 and use_local_branches else []
        if local_only_landmarks and not use_local_branches:
            raise ValueError("local_only_landmarks needs the local branches (use_local_branches=True)")
        hidden = sorted({int(i) for i in local_only_landmarks})
        if hidden and (hidden[0] < 0 or hidden[-1] >= num_landmarks):
            raise ValueError(f"local_only_landmarks must index 0..{num_landmarks - 1}, got {hidden}")
        self.local_only_landmarks = hidden
        seen = [i for i in range(num_landmarks) if i not in set(hidden)]
        self.register_buffer("_global_index", torch.tensor(seen, dtype=torch.long), persistent=False)
        self.scale_factor = float(scale_factor)
        self.crop_fraction = float(crop_fraction)
        self.mask_border = float(mask_border)
        self.use_local_branches = use_local_branches
        if not 0 < crop_fraction <= 1:
            raise ValueError(f"crop_fraction must be in (0, 1], got {crop_fraction}")
        common = {
            "in_channels": num_channels, "use_adain": use_adain, "use_add_motion": use_add_motion,
            "coordinates": coordinates, "embedding_dim": embedding_dim, "motion_grid": motion_grid,
        }
        g = {"block_expansion": 32, "max_features": 512, "num_blocks": 4, **(global_branch or {})}
        loc = {"block_expansion": 16, "max_features": 256, "num_blocks": 3, **(local_branch or {})}
        self.down = AntiAliasInterpolation2d(num_channels, self.scale_factor)
        self.global_branch = MotionBranch(len(seen), **g, **common)
        self.regions: dict[str, list[int]] = {}
        self.local_branches = nn.ModuleDict()
        if use_local_branches:
            chosen = dict(regions) if regions is not None else default_regions(num_landmarks)
            for name, indices in chosen.items():
                idx = [int(i) for i in indices]
                if not idx or min(idx) < 0 or max(idx) >= num_landmarks:
                    raise ValueError(f"region {name!r} has indices outside 0..{num_landmarks - 1}: {idx}")
                self.regions[name] = idx
                self.local_branches[name] = MotionBranch(len(idx), **loc, **common, with_mask=True)
            for name, idx in self.regions.items():
                self.register_buffer(f"_index_{name}", torch.tensor(idx, dtype=torch.long), persistent=False)
        self.local_blocks = int(loc["num_blocks"])

    def crop_size(self, image_size: int) -> int:
        """Local crop side in pixels for an image side: ``crop_fraction * image_size`` rounded to a
        multiple of ``2**num_blocks`` of the local branches (64 at 256 px with the defaults)."""
        f = 2**self.local_blocks
        return max(f, round(self.crop_fraction * image_size / f) * f)

    def region_centres(self, landmarks: Tensor, name: str) -> Tensor:
        """B x 2 centre of the bounding box of region ``name``'s landmarks (B x L x 2)."""
        pts = landmarks.index_select(1, getattr(self, f"_index_{name}"))
        return (pts.amin(dim=1) + pts.amax(dim=1)) / 2

    def forward(self, source: Tensor, source_landmarks: Tensor, driving_landmarks: Tensor) -> dict[str, object]:
        h, w = source.shape[-2:]
        small = self.down(source)
        idx = self._global_index
        g = self.global_branch(small, source_landmarks.index_select(1, idx), driving_landmarks.index_select(1, idx))["flow"]
        flow = F.interpolate(g, size=(h, w), mode="bilinear", align_corners=True) if g.shape[-2:] != (h, w) else g
        ident = make_coordinate_grid(h, w, dtype=source.dtype, device=source.device)
        global_grid = ident[None] + flow.permute(0, 2, 3, 1)
        grid = global_grid
        masks: list[Tensor] = []
        windows: dict[str, tuple[Tensor, Tensor]] = {}
        if self.local_branches:
            n = self.crop_size(min(h, w))
            half = torch.tensor([crop_half_extent(n, w), crop_half_extent(n, h)], dtype=source.dtype, device=source.device)
            base = make_coordinate_grid(n, n, dtype=source.dtype, device=source.device)[None]
            for name, branch in self.local_branches.items():
                c_src = self.region_centres(source_landmarks, name)
                c_drv = self.region_centres(driving_landmarks, name)
                crop = warp(source, crop_grid(c_src, half, n), padding_mode="border")
                idx = getattr(self, f"_index_{name}")
                lm_src = (source_landmarks.index_select(1, idx) - c_src[:, None]) / half
                lm_drv = (driving_landmarks.index_select(1, idx) - c_drv[:, None]) / half
                out = branch(crop, lm_src, lm_drv)
                local_grid = base + out["flow"].permute(0, 2, 3, 1)
                grid, mask = paste_local_flow(grid, local_grid, out["mask"], c_src, c_drv, half, self.mask_border)
                masks.append(mask)
                windows[name] = (c_src, c_drv)
        result: dict[str, object] = {"grid": grid, "global_grid": global_grid, "local_windows": windows}
        if masks:
            result["local_masks"] = torch.cat(masks, dim=1)
        return result


# --------------------------------------------------------------------------- generator


class ImageGenerator(nn.Module):
    """Image generation network: (warped source, motion map) -> residual image R and mask M.

    first-order-model's generator layout (the paper: "the same architecture as [41]") on the
    already-warped image: 7 x 7 same block, ``num_down_blocks`` down blocks, ``num_bottleneck_blocks``
    residual blocks, as many up blocks, a 7 x 7 conv to 3 + 1 channels (sigmoid).
    ``T = E (1 - M) + R M`` (eq. 2).

    Args:
        num_channels: image channels.
        motion_map: take the dense motion map (2 channels: displacement in normalised units) as
            extra input (the paper's final model; its Table 4 ablations feed only the warped source).
        block_expansion, max_features, num_down_blocks, num_bottleneck_blocks: sizes.
        mask_init: initial bias of the mask logit: -4 starts with ``M ~ 0.02``, i.e. ``T ~ E``
            (not in the paper, which does not say; it avoids a blurry first phase of training).

    ``forward(deformed, motion=None)``: B x C x H x W (+ B x 2 x H x W) -> ``{"prediction",
    "residual": B x C x H x W, "mask": B x 1 x H x W}``.
    """

    def __init__(
        self,
        num_channels: int = 3,
        motion_map: bool = True,
        block_expansion: int = 64,
        max_features: int = 512,
        num_down_blocks: int = 2,
        num_bottleneck_blocks: int = 6,
        mask_init: float = -4.0,
    ) -> None:
        super().__init__()
        self.motion_map = motion_map
        self.num_channels = num_channels
        self.num_down_blocks = num_down_blocks
        cin = num_channels + (2 if motion_map else 0)
        self.first = SameBlock2d(cin, block_expansion, kernel_size=7, padding=3)
        downs, ups = [], []
        for i in range(num_down_blocks):
            a = min(max_features, block_expansion * (2**i))
            b_ = min(max_features, block_expansion * (2 ** (i + 1)))
            downs.append(_Down(a, b_))
        for i in reversed(range(num_down_blocks)):
            a = min(max_features, block_expansion * (2 ** (i + 1)))
            b_ = min(max_features, block_expansion * (2**i))
            ups.append(_Up(a, b_))
        self.down_blocks = nn.ModuleList(downs)
        width = min(max_features, block_expansion * (2**num_down_blocks))
        self.bottleneck = nn.Sequential(*[ResBlock2d(width) for _ in range(num_bottleneck_blocks)])
        self.up_blocks = nn.ModuleList(ups)
        self.final = nn.Conv2d(block_expansion, num_channels + 1, kernel_size=7, padding=3)
        with torch.no_grad():  # M = sigmoid(mask_init) everywhere at the start
            self.final.weight[num_channels:].zero_()
            self.final.bias[num_channels:].fill_(mask_init)

    def forward(self, deformed: Tensor, motion: Tensor | None = None) -> dict[str, Tensor]:
        h, w = deformed.shape[-2:]
        f = 2**self.num_down_blocks
        if h % f or w % f:
            raise ValueError(f"the image generator with num_down_blocks={self.num_down_blocks} needs sides divisible by {f}")
        x = deformed
        if self.motion_map:
            if motion is None:
                raise ValueError("this generator takes the motion map (motion_map=True): pass motion B x 2 x H x W")
            x = torch.cat([x, motion.to(x.dtype)], dim=1)
        x = self.first(x)
        for block in self.down_blocks:
            x = block(x)
        x = self.bottleneck(x)
        for block in self.up_blocks:
            x = block(x)
        out = torch.sigmoid(self.final(x))
        residual, mask = out[:, : self.num_channels], out[:, self.num_channels :]
        return {"prediction": deformed * (1 - mask) + residual * mask, "residual": residual, "mask": mask}


class _Down(nn.Module):
    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.block = SameBlock2d(cin, cout)

    def forward(self, x: Tensor) -> Tensor:
        return F.avg_pool2d(self.block(x), 2)


class _Up(nn.Module):
    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.block = SameBlock2d(cin, cout)

    def forward(self, x: Tensor) -> Tensor:
        return self.block(F.interpolate(x, scale_factor=2.0, mode="nearest"))
