"""LandmarkDetector: a FAN-style stacked hourglass with one heatmap per landmark and a DSNT head.

FAN (Bulat & Tzimiropoulos 2017) stacks Newell hourglasses of residual bottlenecks on a
stride-4 stem and regresses heatmaps with intermediate supervision; paper 001 (sec. 3.3) replaces
the arg-max of FAN's heatmaps with DSNT (softmax-normalised heatmap -> expected coordinate), which
has no parameters and is differentiable, so the coordinates can be trained directly (and with the
registration loss on videos). Sizes here are small for 64 px frames; they are all kwargs.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from animzoo.geometry.grid import normalized_to_pixel
from animzoo.perception.landmarks.dsnt import dsnt, spatial_softmax

__all__ = ["Bottleneck", "HourglassModule", "LandmarkDetector"]


class Bottleneck(nn.Module):
    """Pre-activation residual bottleneck (BN-ReLU-conv 1x1 / 3x3 / 1x1) of Newell's hourglass."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        mid = max(out_channels // 2, 1)
        self.body = nn.Sequential(
            nn.BatchNorm2d(in_channels), nn.ReLU(inplace=True), nn.Conv2d(in_channels, mid, 1, bias=False),
            nn.BatchNorm2d(mid), nn.ReLU(inplace=True), nn.Conv2d(mid, mid, 3, padding=1, bias=False),
            nn.BatchNorm2d(mid), nn.ReLU(inplace=True), nn.Conv2d(mid, out_channels, 1),
        )
        self.skip = nn.Identity() if in_channels == out_channels else nn.Conv2d(in_channels, out_channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        """``B x C_in x H x W`` -> ``B x C_out x H x W``."""
        return self.skip(x) + self.body(x)


class HourglassModule(nn.Module):
    """Recursive hourglass: ``depth`` times (skip branch + max-pool / blocks / nearest upsample)."""

    def __init__(self, depth: int, channels: int, num_blocks: int = 1) -> None:
        super().__init__()

        def blocks() -> nn.Sequential:
            return nn.Sequential(*[Bottleneck(channels, channels) for _ in range(num_blocks)])

        self.up = blocks()
        self.low1 = blocks()
        self.low2 = HourglassModule(depth - 1, channels, num_blocks) if depth > 1 else blocks()
        self.low3 = blocks()

    def forward(self, x: Tensor) -> Tensor:
        """``B x C x H x W`` -> same shape (``H, W`` divisible by ``2 ** depth``)."""
        low = self.low3(self.low2(self.low1(F.max_pool2d(x, 2))))
        return self.up(x) + F.interpolate(low, size=x.shape[-2:], mode="nearest")


class LandmarkDetector(nn.Module):
    """Stacked-hourglass heatmap regressor + DSNT: frames -> landmark coordinates.

    Args:
        num_landmarks: heatmaps / landmarks (70 = 68 iBUG + 2 pupils, SyntheticHeads' layout).
        num_stacks: hourglasses in sequence (each one supervised, as FAN).
        depth: pooling levels of each hourglass (heatmap side must be divisible by ``2 ** depth``).
        channels: feature channels of the hourglasses.
        num_blocks: residual bottlenecks per hourglass level.
        heatmap_stride: 4 (FAN: heatmaps at 1/4 of the input) or 2 or 1.
        input_size: frame side the detector was trained at; :meth:`detect` resizes other sizes
            to it (the receptive fields are tuned to a face of that size) and maps back.
        in_channels: image channels.

    Shapes: frames ``B x 3 x H x W`` in [0, 1]; heatmaps ``B x K x H/s x W/s``; landmarks
    ``B x K x 2`` normalised (x, y) at the input resolution (animzoo's convention).
    """

    def __init__(
        self,
        num_landmarks: int = 70,
        num_stacks: int = 2,
        depth: int = 3,
        channels: int = 64,
        num_blocks: int = 1,
        heatmap_stride: int = 4,
        input_size: int | None = 64,
        in_channels: int = 3,
    ) -> None:
        super().__init__()
        if heatmap_stride not in (1, 2, 4):
            raise ValueError(f"heatmap_stride must be 1, 2 or 4, got {heatmap_stride}")
        if num_stacks < 1 or depth < 1 or num_landmarks < 1:
            raise ValueError("num_stacks, depth and num_landmarks must be >= 1")
        self.num_landmarks = num_landmarks
        self.num_stacks = num_stacks
        self.depth = depth
        self.heatmap_stride = heatmap_stride
        self.input_size = input_size
        half = max(channels // 2, 1)
        stem: list[nn.Module] = [
            nn.Conv2d(in_channels, half, 7, stride=2 if heatmap_stride >= 2 else 1, padding=3, bias=False),
            nn.BatchNorm2d(half), nn.ReLU(inplace=True), Bottleneck(half, channels),
        ]
        if heatmap_stride == 4:
            stem.append(nn.AvgPool2d(2))  # average, not max: keeps sub-cell position information
        stem += [Bottleneck(channels, channels), Bottleneck(channels, channels)]
        self.stem = nn.Sequential(*stem)
        self.hourglasses = nn.ModuleList(HourglassModule(depth, channels, num_blocks) for _ in range(num_stacks))
        self.features = nn.ModuleList(
            nn.Sequential(
                Bottleneck(channels, channels), nn.Conv2d(channels, channels, 1, bias=False),
                nn.BatchNorm2d(channels), nn.ReLU(inplace=True),
            )
            for _ in range(num_stacks)
        )
        self.heads = nn.ModuleList(nn.Conv2d(channels, num_landmarks, 1) for _ in range(num_stacks))
        # Heatmaps and features of stack i are fed back into stack i + 1 (FAN / Newell).
        self.merge_features = nn.ModuleList(nn.Conv2d(channels, channels, 1) for _ in range(num_stacks - 1))
        self.merge_heatmaps = nn.ModuleList(nn.Conv2d(num_landmarks, channels, 1) for _ in range(num_stacks - 1))

    def forward(self, frames: Tensor) -> dict[str, Tensor | list[Tensor]]:
        """Heatmaps and coordinates of every stack.

        Args:
            frames: ``B x 3 x H x W`` in [0, 1] (``H, W`` divisible by ``stride * 2 ** depth``).

        Returns:
            ``heatmaps`` ``B x K x h x w`` (softmax-normalised, last stack), ``landmarks``
            ``B x K x 2`` normalised (last stack), ``stack_heatmaps`` / ``stack_landmarks``:
            lists over the stacks (for intermediate supervision).
        """
        size = (int(frames.shape[-2]), int(frames.shape[-1]))
        multiple = self.heatmap_stride * 2**self.depth
        if size[0] % multiple or size[1] % multiple:
            raise ValueError(
                f"LandmarkDetector: frame size {size} must be divisible by heatmap_stride * 2 ** depth = {multiple}"
            )
        x = self.stem(frames * 2.0 - 1.0)
        heatmaps: list[Tensor] = []
        landmarks: list[Tensor] = []
        for i in range(self.num_stacks):
            features = self.features[i](self.hourglasses[i](x))
            logits = self.heads[i](features)
            probs = spatial_softmax(logits.float())
            heatmaps.append(probs)
            landmarks.append(dsnt(probs, size))
            if i < self.num_stacks - 1:
                x = x + self.merge_features[i](features) + self.merge_heatmaps[i](logits)
        return {"heatmaps": heatmaps[-1], "landmarks": landmarks[-1],
                "stack_heatmaps": heatmaps, "stack_landmarks": landmarks}

    def detect_normalized(self, frames: Tensor) -> Tensor:
        """``B x 3 x H x W`` -> ``B x K x 2`` normalised coordinates, resizing to ``input_size`` first
        (normalised align-corners coordinates do not change under an align-corners resize)."""
        size = frames.shape[-2:]
        if self.input_size is not None and tuple(size) != (self.input_size, self.input_size):
            frames = F.interpolate(frames, size=(self.input_size, self.input_size), mode="bilinear",
                                   align_corners=True, antialias=bool(min(size) > self.input_size))
        return self(frames)["landmarks"]

    def detect(self, frames: Tensor) -> Tensor:
        """Landmarks in PIXELS of the input frames.

        Args:
            frames: ``B x 3 x H x W`` in [0, 1], any size (resized to ``input_size`` internally).

        Returns:
            ``B x K x 2`` float32 (x right, y down, pixel centres at integers); always an answer, no NaN.
        """
        size = (int(frames.shape[-2]), int(frames.shape[-1]))
        return normalized_to_pixel(self.detect_normalized(frames).float(), size)


def _check() -> None:  # pragma: no cover - a quick manual check: python -m animzoo.perception.landmarks.torch_model
    model = LandmarkDetector()
    out = model(torch.rand(2, 3, 64, 64))
    print({k: tuple(v.shape) for k, v in out.items() if isinstance(v, Tensor)},
          sum(p.numel() for p in model.parameters()))


if __name__ == "__main__":  # pragma: no cover
    _check()
