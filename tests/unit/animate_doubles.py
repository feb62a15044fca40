"""A tiny AnimationModule whose motion is simple and known, for the hub and Animator tests.

``CentroidShift`` has three keypoints: the brightness-weighted centroids of the red, green and
blue channels. ``animate_with_motion`` translates the source by the mean keypoint displacement
(rounded to whole pixels, ``torch.roll``), so on images of coloured squares on black the
expected frames are exact ``np.roll``s. With ``mix > 0`` the prediction also goes through a
random 1x1 convolution (``proj``), so that the output depends on the weights.

``CentroidLandmarks`` is the same motion as a landmark-driven method (``motion_kind =
"landmarks"``, ``num_landmarks = 3``): the three centroids are its "facial landmarks", so a
landmark file of square centres in pixels, ``landmark_pixels(points)``, drives it exactly.
"""

from __future__ import annotations

import contextlib

import numpy as np
import torch
from torch import Tensor, nn

from animzoo import registry
from animzoo.geometry.grid import make_coordinate_grid
from animzoo.methods.base import AnimationModule

NAME = "test_centroid_shift"
LANDMARKS_NAME = "test_centroid_landmarks"


@contextlib.contextmanager
def registered(cls: type, name: str):
    """Register a test method for the duration of a test module only, so that tests which
    enumerate ``list_methods()`` elsewhere never meet it."""
    registry.register_method(name)(cls)
    try:
        yield cls
    finally:
        registry._REGISTRY.pop(name, None)


class CentroidShift(AnimationModule):
    def __init__(self, image_size: int = 32, width: int = 4, mix: float = 0.0, **kwargs) -> None:
        super().__init__(**kwargs)
        self.image_size = image_size
        self.mix = mix
        self.proj = nn.Conv2d(3, width, 1)
        self.back = nn.Conv2d(width, 3, 1)
        self.gain = nn.Parameter(torch.ones(1))
        self.head = nn.Linear(4, 4)
        self.tied = nn.Linear(4, 4)
        self.tied.weight = self.head.weight  # shared tensor: safetensors needs care
        self.register_buffer("offset", torch.zeros(1))
        self.discriminator = nn.Sequential(nn.Conv2d(3, 2, 3), nn.Conv2d(2, 1, 1))

    def extract_motion(self, frames: Tensor) -> dict[str, Tensor]:
        h, w = frames.shape[-2:]
        grid = make_coordinate_grid(h, w, dtype=frames.dtype, device=frames.device)  # H x W x 2
        weights = frames / frames.sum(dim=(-2, -1), keepdim=True).clamp(min=1e-8)  # B x 3 x H x W
        value = (weights[..., None] * grid).sum(dim=(-3, -2))  # B x 3 x 2
        return {"value": value}

    def animate_with_motion(self, source: Tensor, source_motion: dict, driving_motion: dict) -> dict:
        h, w = source.shape[-2:]
        shift = (driving_motion["value"] - source_motion["value"]).mean(dim=1)  # B x 2 (x, y)
        pixels = torch.stack([shift[:, 0] * (w - 1) / 2, shift[:, 1] * (h - 1) / 2], -1).round().long()
        moved = torch.stack(
            [torch.roll(img, shifts=(int(p[1]), int(p[0])), dims=(-2, -1)) for img, p in zip(source, pixels)]
        )
        moved = moved * self.gain + self.offset
        if self.mix:
            moved = (1 - self.mix) * moved + self.mix * torch.sigmoid(self.back(self.proj(moved)))
        return {"prediction": moved.clamp(0, 1), "keypoints": driving_motion}

    def animate(self, batch: dict) -> dict:
        return self.animate_with_motion(
            batch["source"], self.extract_motion(batch["source"]), self.extract_motion(batch["driving"])
        )


class CentroidLandmarks(CentroidShift):
    """CentroidShift as a landmark-driven method. Like a real one it requires dataset landmarks
    for training, and its ``animate(batch)`` reads them from the batch (so an Animator that called
    it with only frames would fail): the Animator must go through the motion API."""

    motion_kind = "landmarks"
    num_landmarks = 3
    requires = frozenset({"landmarks"})

    def animate(self, batch: dict) -> dict:
        return self.animate_with_motion(
            batch["source"], {"value": batch["source_landmarks"]}, {"value": batch["driving_landmarks"]}
        )


def landmark_pixels(points, dy: float = 0, dx: float = 0) -> np.ndarray:
    """``L x 2`` float32 (x, y) pixel landmarks of squares centred at (row, col) ``points``, moved by (dy, dx)."""
    return np.array([(c + dx, r + dy) for r, c in points], np.float32)


def blobs(size: int = 32, points=((8, 8), (8, 20), (20, 12)), half: int = 2) -> np.ndarray:
    """``size x size x 3`` uint8: a red, a green and a blue square centred at (row, col) points."""
    img = np.zeros((size, size, 3), np.uint8)
    for channel, (r, c) in enumerate(points):
        img[r - half : r + half + 1, c - half : c + half + 1, channel] = 255
    return img


def shifted(img: np.ndarray, dy: int, dx: int) -> np.ndarray:
    return np.roll(img, (dy, dx), axis=(0, 1))
