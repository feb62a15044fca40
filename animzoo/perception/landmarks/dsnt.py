"""DSNT: heatmaps -> coordinates, and the Jensen-Shannon heatmap regulariser (Nibali et al. 2018).

Coordinates follow animzoo's convention at the INPUT resolution (docs/index.md): normalised
(x, y) in [-1, 1], ``align_corners=True``, input pixel centre ``i`` of ``N`` at ``2 i / (N - 1) - 1``.
A heatmap of ``n`` cells computed from ``N`` input pixels (stride ``s = N / n``) has cell ``j``
covering input pixels ``s j .. s j + s - 1``, so its centre is input pixel ``s j + (s - 1) / 2``;
:func:`heatmap_axis` gives that centre in normalised input coordinates. (Using the heatmap's own
align-corners grid ``2 j / (n - 1) - 1`` instead would stretch the coordinates by
``(N - 1) / (N - s)`` about the centre: 3 % and 2 px at the border of a 64 px frame.)
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["dsnt", "gaussian_targets", "heatmap_axis", "heatmap_grid", "js_divergence", "spatial_softmax"]


def heatmap_axis(cells: int, input_size: int, *, dtype: torch.dtype | None = None,
                 device: torch.device | str | None = None) -> Tensor:
    """Normalised input coordinate of the centre of each of ``cells`` heatmap cells.

    Args:
        cells: heatmap size ``n`` along the axis.
        input_size: input size ``N`` along the axis (``N >= 2``; the stride is ``N / n``).

    Returns:
        ``n`` floats: ``2 (s j + (s - 1) / 2) / (N - 1) - 1`` with ``s = N / n``.
    """
    if input_size < 2 or cells < 1:
        raise ValueError(f"need input_size >= 2 and cells >= 1, got {input_size}, {cells}")
    stride = input_size / cells
    pixels = torch.arange(cells, dtype=dtype or torch.get_default_dtype(), device=device) * stride + (stride - 1) / 2
    return pixels * (2.0 / (input_size - 1)) - 1.0


def heatmap_grid(height: int, width: int, input_size: tuple[int, int], *, dtype: torch.dtype | None = None,
                 device: torch.device | str | None = None) -> tuple[Tensor, Tensor]:
    """``(x_axis W, y_axis H)`` of an ``H x W`` heatmap of an input of ``input_size = (H_in, W_in)``."""
    return (heatmap_axis(width, input_size[1], dtype=dtype, device=device),
            heatmap_axis(height, input_size[0], dtype=dtype, device=device))


def spatial_softmax(logits: Tensor) -> Tensor:
    """Softmax over the last two dims: ``... x H x W`` logits -> maps summing to 1."""
    shape = logits.shape
    return torch.softmax(logits.reshape(*shape[:-2], -1), dim=-1).reshape(shape)


def dsnt(probs: Tensor, input_size: tuple[int, int]) -> Tensor:
    """Expected coordinate of probability maps (no parameters, differentiable).

    Args:
        probs: ``B x K x h x w`` non-negative maps summing to 1.
        input_size: ``(H, W)`` of the image the heatmaps were computed from.

    Returns:
        ``B x K x 2`` normalised ``(x, y)`` at the input resolution.
    """
    x_axis, y_axis = heatmap_grid(probs.shape[-2], probs.shape[-1], input_size, dtype=probs.dtype, device=probs.device)
    x = (probs.sum(dim=-2) * x_axis).sum(dim=-1)  # marginal over rows, then expectation
    y = (probs.sum(dim=-1) * y_axis).sum(dim=-1)
    return torch.stack([x, y], dim=-1)


def gaussian_targets(points: Tensor, heatmap_size: tuple[int, int], input_size: tuple[int, int],
                     sigma: float) -> Tensor:
    """Normalised Gaussians on the heatmap cells centred on ``points`` (the DSNT paper's JS target).

    Args:
        points: ``B x K x 2`` normalised target coordinates.
        heatmap_size: ``(h, w)``.
        input_size: ``(H, W)`` of the input.
        sigma: standard deviation in heatmap cells.

    Returns:
        ``B x K x h x w``, each map summing to 1.
    """
    h, w = heatmap_size
    x_axis, y_axis = heatmap_grid(h, w, input_size, dtype=points.dtype, device=points.device)
    # sigma in cells -> normalised units along each axis (one cell = 2 s / (N - 1)).
    sx = sigma * 2.0 * (input_size[1] / w) / (input_size[1] - 1)
    sy = sigma * 2.0 * (input_size[0] / h) / (input_size[0] - 1)
    gx = -((x_axis - points[..., 0:1]) ** 2) / (2 * sx**2)  # B x K x w
    gy = -((y_axis - points[..., 1:2]) ** 2) / (2 * sy**2)  # B x K x h
    return spatial_softmax(gy[..., :, None] + gx[..., None, :])


def js_divergence(p: Tensor, q: Tensor, eps: float = 1e-12) -> Tensor:
    """Jensen-Shannon divergence of maps ``... x h x w`` (each summing to 1) -> ``...`` (nats)."""
    m = 0.5 * (p + q)

    def kl(a: Tensor, b: Tensor) -> Tensor:
        return (a * (torch.log(a + eps) - torch.log(b + eps))).sum(dim=(-2, -1))

    return 0.5 * kl(p, m) + 0.5 * kl(q, m)
