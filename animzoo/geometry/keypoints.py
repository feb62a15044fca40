"""Heatmaps <-> keypoints and relative keypoint motion.

Coordinates are normalised (x, y) in [-1, 1] with ``align_corners=True`` (see
:mod:`animzoo.geometry.grid`). Heatmap -> keypoint is a spatial softmax followed by DSNT (the
expected coordinate under the softmax distribution, as in Monkey-Net / FOMM); keypoint ->
heatmap is an unnormalised Gaussian with peak 1.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from animzoo.geometry.grid import make_coordinate_grid

__all__ = [
    "convex_hull_area",
    "dsnt",
    "heatmap_to_keypoints",
    "keypoints_to_gaussian",
    "landmark_smoothness",
    "normalize_kp",
    "softmax_heatmap",
]


def softmax_heatmap(logits: Tensor, temperature: float = 0.1) -> Tensor:
    """Spatial softmax of ``logits / temperature`` over H * W.

    Args:
        logits: B x K x H x W (any leading dims).

    Returns:
        Same shape, non-negative, each H x W map summing to 1.
    """
    shape = logits.shape
    probs = torch.softmax(logits.reshape(*shape[:-2], -1) / temperature, dim=-1)
    return probs.reshape(shape)


def dsnt(probs: Tensor) -> Tensor:
    """Expected normalised coordinates of probability maps (differentiable spatial to numerical).

    Args:
        probs: B x K x H x W (any leading dims), each map summing to 1.

    Returns:
        B x K x 2 expected (x, y).
    """
    grid = make_coordinate_grid(probs.shape[-2], probs.shape[-1], dtype=probs.dtype, device=probs.device)
    return (probs.unsqueeze(-1) * grid).sum(dim=(-3, -2))


def _smallest_eigenvalue(cov: Tensor, eps: float = 1e-12) -> Tensor:
    """Smallest eigenvalue of symmetric 2 x 2 matrices (... x 2 x 2 -> ...), closed form."""
    a, b, d = cov[..., 0, 0], 0.5 * (cov[..., 0, 1] + cov[..., 1, 0]), cov[..., 1, 1]
    # eps keeps the sqrt differentiable for isotropic matrices.
    return 0.5 * (a + d) - torch.sqrt(0.25 * (a - d) ** 2 + b**2 + eps)


def heatmap_to_keypoints(
    logits: Tensor,
    temperature: float = 0.1,
    covariance: bool = False,
    clip_variance: float | None = None,
) -> dict[str, Tensor]:
    """Keypoints (and optionally their spread) from heatmap logits.

    Args:
        logits: B x K x H x W raw detector output.
        temperature: softmax temperature (Monkey-Net / FOMM use 0.1).
        covariance: also return the 2 x 2 covariance ``sum_p prob(p) (g_p - mu)(g_p - mu)^T``.
        clip_variance: if set (Monkey-Net uses 1e-3), a covariance whose smallest eigenvalue
            ``s`` is below it is scaled by ``clip_variance / s`` so that its smallest eigenvalue
            becomes ``clip_variance`` (keeps the matrix invertible; shape is preserved). An exactly
            singular covariance cannot be rescaled and stays singular; softmax heatmaps never
            produce one.

    Returns:
        ``{"value": B x K x 2}`` plus ``"covariance": B x K x 2 x 2`` when asked.
    """
    probs = softmax_heatmap(logits, temperature)
    mean = dsnt(probs)
    out = {"value": mean}
    if covariance:
        grid = make_coordinate_grid(logits.shape[-2], logits.shape[-1], dtype=probs.dtype, device=probs.device)
        diff = grid - mean[..., None, None, :]  # B x K x H x W x 2
        cov = torch.einsum("...hw,...hwi,...hwj->...ij", probs, diff, diff)
        if clip_variance is not None:
            smallest = _smallest_eigenvalue(cov).clamp(min=1e-12)
            factor = torch.clamp(clip_variance / smallest, min=1.0)
            cov = cov * factor[..., None, None]
        out["covariance"] = cov
    return out


def keypoints_to_gaussian(
    mean: Tensor, spatial_size: tuple[int, int], variance: float | Tensor
) -> Tensor:
    """Gaussian-like heatmaps ``exp(-1/2 d^T S^-1 d)`` (peak 1) centred at the keypoints.

    Args:
        mean: B x K x 2 normalised (x, y) (any leading dims).
        spatial_size: (H, W) of the output.
        variance: a scalar (isotropic, ``S = variance * I``; FOMM uses 0.01), a tensor
            broadcastable to B x K (isotropic per keypoint) or B x K x 2 x 2 covariances.

    Returns:
        B x K x H x W.
    """
    grid = make_coordinate_grid(*spatial_size, dtype=mean.dtype, device=mean.device)
    d = grid - mean[..., None, None, :]  # B x K x H x W x 2
    if isinstance(variance, Tensor) and variance.dim() >= 2 and variance.shape[-2:] == (2, 2) and (
        variance.dim() == mean.dim() + 1
    ):
        cov = variance.to(mean.dtype)
        a, b, c, e = cov[..., 0, 0], cov[..., 0, 1], cov[..., 1, 0], cov[..., 1, 1]
        det = a * e - b * c
        # Closed-form inverse of a 2 x 2 matrix; cheaper than linalg.inv for many tiny matrices.
        inv = torch.stack([torch.stack([e, -b], -1), torch.stack([-c, a], -1)], -2) / det[..., None, None]
        inv = inv[..., None, None, :, :]  # B x K x 1 x 1 x 2 x 2
        mahal = torch.einsum("...i,...ij,...j->...", d, inv, d)
    else:
        var = torch.as_tensor(variance, dtype=mean.dtype, device=mean.device)
        if var.dim() > 0:
            var = var[..., None, None]
        mahal = (d**2).sum(-1) / var
    return torch.exp(-0.5 * mahal)


def convex_hull_area(points: Tensor) -> Tensor:
    """Area of the convex hull of each point set (pure torch, batched, differentiable).

    A directed pair (i, j) is a hull edge when every point lies on or left of the line i -> j and
    every point exactly on that line lies within the segment [i, j]; the area is half the sum of
    ``cross(p_i, p_j)`` over those edges (shoelace). O(K^3) work per sample, fine for the tens of
    keypoints this is used for. Duplicate points count once; fewer than 3 distinct
    non-collinear points give 0.

    Args:
        points: B x K x 2 (or K x 2).

    Returns:
        B (or a 0-d tensor for K x 2 input).
    """
    squeeze = points.dim() == 2
    if squeeze:
        points = points.unsqueeze(0)
    if points.dim() != 3 or points.shape[-1] != 2:
        raise ValueError(f"points must be B x K x 2, got shape {tuple(points.shape)}")
    num = points.shape[1]
    if num < 3:
        area = points.new_zeros(points.shape[0])
        return area[0] if squeeze else area
    p = points.detach()
    # Keep only the first copy of repeated points, or each copy would add its own hull edges.
    same = (p[:, :, None, :] == p[:, None, :, :]).all(-1)  # B x K x K
    earlier = torch.ones(num, num, dtype=torch.bool, device=p.device).tril(-1)
    active = ~(same & earlier).any(-1)  # B x K

    edge = p[:, None, :, :] - p[:, :, None, :]  # B x i x j x 2: p_j - p_i
    rel = p[:, None, :, :] - p[:, :, None, :]  # B x i x k x 2: p_k - p_i
    # cross(p_j - p_i, p_k - p_i) for all (i, j, k): B x i x j x k
    cross = edge[:, :, :, None, 0] * rel[:, :, None, :, 1] - edge[:, :, :, None, 1] * rel[:, :, None, :, 0]
    # Projection parameter of k on segment i -> j, for points exactly on the line.
    length2 = (edge**2).sum(-1)  # B x i x j
    dot = (edge[:, :, :, None, :] * rel[:, :, None, :, :]).sum(-1)  # B x i x j x k
    on_segment = (dot >= 0) & (dot <= length2[..., None])
    ok = (cross > 0) | ((cross == 0) & on_segment) | ~active[:, None, None, :]
    is_edge = ok.all(-1) & (length2 > 0) & active[:, :, None] & active[:, None, :]

    # Shoelace with gradients flowing to the selected points.
    x, y = points[..., 0], points[..., 1]
    shoelace = x[:, :, None] * y[:, None, :] - y[:, :, None] * x[:, None, :]  # B x i x j
    area = 0.5 * (shoelace * is_edge.to(points.dtype)).sum((-2, -1)).abs()
    return area[0] if squeeze else area


def normalize_kp(
    kp_source: dict[str, Any],
    kp_driving: dict[str, Any],
    kp_driving_initial: dict[str, Any],
    adapt_movement_scale: bool = False,
    use_relative_movement: bool = False,
    use_relative_jacobian: bool = False,
) -> dict[str, Any]:
    """Transfer the driving motion to the source keypoints (first-order-model semantics).

    With ``use_relative_movement`` the new keypoints are
    ``kp_source + (kp_driving - kp_driving_initial) * scale``, where ``scale`` is
    ``sqrt(hull_area(kp_source)) / sqrt(hull_area(kp_driving_initial))`` if
    ``adapt_movement_scale`` else 1 (computed per sample, where first-order-model used the first
    sample of the batch). With ``use_relative_jacobian`` also
    ``J = J_driving @ inv(J_driving_initial) @ J_source`` (key ``"jacobian"``, ... x K x 2 x 2).
    Without relative movement the driving keypoints are returned unchanged.

    Args:
        kp_source, kp_driving, kp_driving_initial: dicts with ``"value"`` B x K x 2 (batches
            broadcast, e.g. one source against T driving frames) and optional ``"jacobian"``.

    Returns:
        A new dict with the keys of ``kp_driving``.
    """
    kp_new = dict(kp_driving)
    if not use_relative_movement:
        return kp_new
    diff = kp_driving["value"] - kp_driving_initial["value"]
    if adapt_movement_scale:
        src_area = convex_hull_area(kp_source["value"])
        drv_area = convex_hull_area(kp_driving_initial["value"])
        scale = torch.sqrt(src_area) / torch.sqrt(drv_area)
        diff = diff * scale[:, None, None]
    kp_new["value"] = kp_source["value"] + diff
    if use_relative_jacobian:
        jac_diff = kp_driving["jacobian"] @ torch.linalg.inv(kp_driving_initial["jacobian"])
        kp_new["jacobian"] = jac_diff @ kp_source["jacobian"]
    return kp_new


def landmark_smoothness(sequence: Tensor) -> Tensor:
    """The per-frame terms of the landmark smoothness SMS (paper 001, eq. 9) of one video.

    ``|(D^{t-1} + D^{t+1}) / 2 - D^t|``: the L1 norm over all ``K x 2`` coordinates of the second
    difference at every interior frame ``t``; the SMS of a video is the mean of these terms.

    Args:
        sequence: ``T x K x 2`` landmarks of consecutive frames (pixels; NaN rows propagate).

    Returns:
        ``T - 2`` values (empty when ``T < 3``).
    """
    if sequence.shape[0] < 3:
        return sequence.new_zeros(0)
    second = 0.5 * (sequence[:-2] + sequence[2:]) - sequence[1:-1]
    return second.abs().flatten(1).sum(dim=-1)
