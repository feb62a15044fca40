"""Coordinate grids, pixel <-> normalised conversion and warping.

Convention (docs/index.md, "Conventions"): normalised coordinates are (x, y) in [-1, 1] with
``align_corners=True``: pixel centre ``i`` of an axis of ``n`` pixels sits at ``2 i / (n - 1) - 1``.
x grows right, y grows down, exactly as :func:`torch.nn.functional.grid_sample` with
``align_corners=True`` reads them. A *flow* is a B x 2 x H x W displacement in normalised units;
the sampling grid is identity + flow.
"""

from __future__ import annotations

from typing import Literal, TypeVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "make_coordinate_grid",
    "pixel_to_normalized",
    "normalized_to_pixel",
    "mesh_pixel_to_normalized",
    "mesh_normalized_to_pixel",
    "flow_to_grid",
    "grid_to_flow",
    "warp",
    "warp_with_flow",
    "resize_flow",
]

SampleMode = Literal["bilinear", "nearest"]
PaddingMode = Literal["zeros", "border", "reflection"]
ArrayOrTensor = TypeVar("ArrayOrTensor", Tensor, np.ndarray)


def _axis(n: int, dtype: torch.dtype, device: torch.device | str | None) -> Tensor:
    if n < 1:
        raise ValueError(f"grid size must be >= 1, got {n}")
    if n == 1:
        return torch.zeros(1, dtype=dtype, device=device)  # a single pixel sits at the centre
    # arange * step rather than linspace: the same arithmetic as pixel_to_normalized.
    return torch.arange(n, dtype=dtype, device=device) * (2.0 / (n - 1)) - 1.0


def make_coordinate_grid(
    height: int,
    width: int,
    *,
    dtype: torch.dtype | None = None,
    device: torch.device | str | None = None,
) -> Tensor:
    """Normalised pixel-centre coordinates of an H x W image.

    Returns:
        H x W x 2 with ``[..., 0]`` = x (varies along W) and ``[..., 1]`` = y (varies along H);
        the identity sampling grid for ``grid_sample(..., align_corners=True)``.
    """
    dtype = dtype or torch.get_default_dtype()
    x = _axis(width, dtype, device)
    y = _axis(height, dtype, device)
    return torch.stack([x.expand(height, width), y[:, None].expand(height, width)], dim=-1)


def _half_extent(size: tuple[int, int]) -> tuple[float, float]:
    height, width = size
    if height < 2 or width < 2:
        raise ValueError(f"size must be at least (2, 2) to convert coordinates, got {tuple(size)}")
    return (width - 1) / 2.0, (height - 1) / 2.0


def _stack_last(parts: list, like: ArrayOrTensor) -> ArrayOrTensor:
    if isinstance(like, Tensor):
        return torch.stack(parts, dim=-1)
    return np.stack(parts, axis=-1)


def pixel_to_normalized(xy: ArrayOrTensor, size: tuple[int, int]) -> ArrayOrTensor:
    """Pixel coordinates (pixel centre i at value i) -> normalised [-1, 1].

    Works on torch tensors and numpy arrays alike (same type out), so sidecars on disk and
    tensors in a batch go through one definition of the convention.

    Args:
        xy: ... x 2 float, (x, y) in pixels.
        size: (H, W) of the image.

    Returns:
        ... x 2, ``x_n = 2 x / (W - 1) - 1``, ``y_n = 2 y / (H - 1) - 1``.
    """
    sx, sy = _half_extent(size)
    return _stack_last([xy[..., 0] / sx - 1.0, xy[..., 1] / sy - 1.0], xy)


def normalized_to_pixel(xy: ArrayOrTensor, size: tuple[int, int]) -> ArrayOrTensor:
    """Inverse of :func:`pixel_to_normalized`: ... x 2 normalised -> ... x 2 pixels."""
    sx, sy = _half_extent(size)
    return _stack_last([(xy[..., 0] + 1.0) * sx, (xy[..., 1] + 1.0) * sy], xy)


def mesh_pixel_to_normalized(verts: ArrayOrTensor, size: tuple[int, int]) -> ArrayOrTensor:
    """Mesh vertices ... x 3 in pixels (x, y, depth z) -> normalised.

    x and y follow :func:`pixel_to_normalized`; z is scaled like x (factor ``2 / (W - 1)``)
    without an offset, so depth keeps its proportions relative to the image width.
    """
    sx, sy = _half_extent(size)
    return _stack_last(
        [verts[..., 0] / sx - 1.0, verts[..., 1] / sy - 1.0, verts[..., 2] / sx], verts
    )


def mesh_normalized_to_pixel(verts: ArrayOrTensor, size: tuple[int, int]) -> ArrayOrTensor:
    """Inverse of :func:`mesh_pixel_to_normalized`."""
    sx, sy = _half_extent(size)
    return _stack_last(
        [(verts[..., 0] + 1.0) * sx, (verts[..., 1] + 1.0) * sy, verts[..., 2] * sx], verts
    )


def flow_to_grid(flow: Tensor) -> Tensor:
    """Displacement field -> sampling grid.

    Args:
        flow: B x 2 x H x W displacement (x, y) in normalised units.

    Returns:
        B x H x W x 2 absolute sampling positions (identity grid + flow).
    """
    if flow.dim() != 4 or flow.shape[1] != 2:
        raise ValueError(f"flow must be B x 2 x H x W, got shape {tuple(flow.shape)}")
    ident = make_coordinate_grid(flow.shape[2], flow.shape[3], dtype=flow.dtype, device=flow.device)
    return flow.permute(0, 2, 3, 1) + ident


def grid_to_flow(grid: Tensor) -> Tensor:
    """Sampling grid -> displacement field: B x H x W x 2 -> B x 2 x H x W (grid - identity)."""
    if grid.dim() != 4 or grid.shape[-1] != 2:
        raise ValueError(f"grid must be B x H x W x 2, got shape {tuple(grid.shape)}")
    ident = make_coordinate_grid(grid.shape[1], grid.shape[2], dtype=grid.dtype, device=grid.device)
    return (grid - ident).permute(0, 3, 1, 2)


def warp(
    image: Tensor,
    grid: Tensor,
    mode: SampleMode = "bilinear",
    padding_mode: PaddingMode = "zeros",
) -> Tensor:
    """Backward warp: ``out[b, :, i, j] = image[b, :, at grid[b, i, j]]``.

    Args:
        image: B x C x H x W.
        grid: B x h x w x 2 normalised (x, y) sampling positions.

    Returns:
        B x C x h x w.
    """
    if grid.dtype != image.dtype:
        grid = grid.to(image.dtype)
    return F.grid_sample(image, grid, mode=mode, padding_mode=padding_mode, align_corners=True)


def warp_with_flow(
    image: Tensor,
    flow: Tensor,
    mode: SampleMode = "bilinear",
    padding_mode: PaddingMode = "zeros",
) -> Tensor:
    """Backward warp by a displacement field.

    Args:
        image: B x C x H x W.
        flow: B x 2 x h x w displacement in normalised units (sampled at ``identity + flow``).

    Returns:
        B x C x h x w.
    """
    return warp(image, flow_to_grid(flow), mode=mode, padding_mode=padding_mode)


def resize_flow(flow: Tensor, size: tuple[int, int], mode: str = "bilinear") -> Tensor:
    """Resize a displacement field to (h, w).

    Normalised units do not depend on the resolution, so the values are resampled but not
    rescaled (a pixel-unit flow would need scaling; this one does not).

    Args:
        flow: B x 2 x H x W.
        size: (h, w).
        mode: any :func:`torch.nn.functional.interpolate` mode for 4-d input.

    Returns:
        B x 2 x h x w.
    """
    if mode in ("bilinear", "bicubic"):
        return F.interpolate(flow, size=tuple(size), mode=mode, align_corners=True)
    return F.interpolate(flow, size=tuple(size), mode=mode)
