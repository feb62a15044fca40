"""Differentiable pyramidal Lucas-Kanade point tracking in torch (for supervision-by-registration).

Points are PIXEL coordinates (x right, y down, pixel centre ``i`` at ``i``) of the input frames.
Every image value is read with ``grid_sample(align_corners=True)``, so the tracked points are a
differentiable function of the starting points (and of the images, which SBR treats as data).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["lucas_kanade", "to_gray", "track_forward_backward"]

_LUMA = (0.299, 0.587, 0.114)


def to_gray(frames: Tensor) -> Tensor:
    """``B x 3 x H x W`` (or ``B x 1 x H x W``) -> ``B x 1 x H x W`` luma."""
    if frames.shape[1] == 1:
        return frames
    weights = frames.new_tensor(_LUMA).view(1, 3, 1, 1)
    return (frames * weights).sum(dim=1, keepdim=True)


def _gradients(image: Tensor) -> tuple[Tensor, Tensor]:
    """Central differences (replicate border) of ``B x 1 x H x W`` -> (d/dx, d/dy), same shape."""
    padded = F.pad(image, (1, 1, 1, 1), mode="replicate")
    gx = 0.5 * (padded[..., 1:-1, 2:] - padded[..., 1:-1, :-2])
    gy = 0.5 * (padded[..., 2:, 1:-1] - padded[..., :-2, 1:-1])
    return gx, gy


def _sample(image: Tensor, points: Tensor, offsets: Tensor) -> Tensor:
    """Bilinear values of ``image`` (``B x C x H x W``) at ``points`` (``B x K x 2`` pixels) + ``offsets``
    (``P x 2`` pixels) -> ``B x C x K x P`` (border padding)."""
    height, width = image.shape[-2:]
    locations = points[:, :, None, :] + offsets  # B x K x P x 2
    scale = locations.new_tensor([2.0 / max(width - 1, 1), 2.0 / max(height - 1, 1)])
    grid = locations * scale - 1.0
    return F.grid_sample(image, grid, mode="bilinear", padding_mode="border", align_corners=True)


def lucas_kanade(
    image0: Tensor,
    image1: Tensor,
    points: Tensor,
    *,
    levels: int = 3,
    window: int = 7,
    iterations: int = 5,
    eps: float = 1e-4,
    max_step: float | None = None,
) -> Tensor:
    """Track ``points`` from ``image0`` to ``image1`` with pyramidal Lucas-Kanade (Bouguet).

    Each level halves the frames (2 x 2 average pooling; a pixel coordinate ``p`` becomes
    ``(p - 0.5) / 2``); tracking starts at the coarsest level and refines the displacement at
    each finer one with ``iterations`` Gauss-Newton steps on a ``window x window`` patch
    (Gaussian-weighted, template gradients of ``image0``).

    Args:
        image0, image1: ``B x C x H x W`` frames in [0, 1] (colour is turned into luma).
        points: ``B x K x 2`` pixel coordinates in ``image0``.
        levels: pyramid levels (1 = no pyramid).
        window: patch side in pixels at every level (odd).
        iterations: Gauss-Newton steps per level.
        eps: Tikhonov term of the 2 x 2 normal matrix (flat patches do not move).
        max_step: clamp of one step's length in pixels of the level (default ``window / 2``).

    Returns:
        ``B x K x 2`` tracked pixel coordinates in ``image1``.
    """
    if window < 3 or window % 2 == 0:
        raise ValueError(f"window must be odd and >= 3, got {window}")
    max_step = window / 2 if max_step is None else max_step
    gray0, gray1 = to_gray(image0), to_gray(image1)
    pyramid0, pyramid1 = [gray0], [gray1]
    for _ in range(levels - 1):
        if min(pyramid0[-1].shape[-2:]) < 2 * window:
            break  # coarser levels would be smaller than the window
        pyramid0.append(F.avg_pool2d(pyramid0[-1], 2))
        pyramid1.append(F.avg_pool2d(pyramid1[-1], 2))
    half = window // 2
    r = torch.arange(-half, half + 1, dtype=points.dtype, device=points.device)
    offsets = torch.stack(torch.meshgrid(r, r, indexing="xy"), dim=-1).reshape(-1, 2)  # P x 2 (x, y)
    weights = torch.exp(-(offsets**2).sum(-1) / (2 * (half / 1.5 + 0.5) ** 2))  # B x K x P after broadcast

    flow = torch.zeros_like(points)  # displacement at the current level, pixels of that level
    for level in range(len(pyramid0) - 1, -1, -1):
        if level < len(pyramid0) - 1:
            flow = flow * 2.0
        factor = 2.0**level
        p_level = (points + 0.5) / factor - 0.5
        i0, i1 = pyramid0[level], pyramid1[level]
        gx, gy = _gradients(i0)
        stacked = _sample(torch.cat([i0, gx, gy], dim=1), p_level, offsets)  # B x 3 x K x P
        template, ix, iy = stacked[:, 0], stacked[:, 1] * weights, stacked[:, 2] * weights
        a = (ix * stacked[:, 1]).sum(-1) + eps
        b = (ix * stacked[:, 2]).sum(-1)
        d = (iy * stacked[:, 2]).sum(-1) + eps
        det = a * d - b * b
        for _ in range(iterations):
            warped = _sample(i1, p_level + flow, offsets)[:, 0]  # B x K x P
            error = warped - template
            bx, by = (ix * error).sum(-1), (iy * error).sum(-1)
            step = -torch.stack([d * bx - b * by, a * by - b * bx], dim=-1) / det[..., None]
            length = step.norm(dim=-1, keepdim=True).clamp(min=1e-12)
            step = step * (max_step / length).clamp(max=1.0)
            flow = flow + step
    return points + flow


def track_forward_backward(
    image0: Tensor, image1: Tensor, points: Tensor, **kwargs: float | None
) -> tuple[Tensor, Tensor]:
    """Track ``points`` 0 -> 1 and back 1 -> 0 (the forward-backward check of SBR / Kalal et al.).

    Returns:
        ``(tracked B x K x 2 in image1, error B x K)``: the pixel distance between ``points`` and
        the back-tracked points; a large error marks an unreliable track.
    """
    tracked = lucas_kanade(image0, image1, points, **kwargs)
    back = lucas_kanade(image1, image0, tracked.detach(), **kwargs)
    return tracked, (back - points.detach()).norm(dim=-1)
