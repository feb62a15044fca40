"""Tests for animzoo.geometry.keypoints: softmax / DSNT, gaussians, hull area, normalize_kp."""

from __future__ import annotations

import math

import pytest
import torch

from animzoo.geometry.grid import make_coordinate_grid
from animzoo.geometry.keypoints import (
    convex_hull_area,
    dsnt,
    heatmap_to_keypoints,
    keypoints_to_gaussian,
    normalize_kp,
    softmax_heatmap,
)


pytestmark = pytest.mark.usefixtures("one_thread")


def test_softmax_heatmap_sums_to_one_and_temperature_sharpens():
    logits = torch.randn(2, 3, 8, 9)
    p = softmax_heatmap(logits, temperature=0.1)
    assert p.shape == logits.shape
    assert torch.allclose(p.sum((-2, -1)), torch.ones(2, 3))
    assert (p.amax((-2, -1)) > softmax_heatmap(logits, temperature=1.0).amax((-2, -1))).all()


def test_delta_heatmap_gives_pixel_coordinates():
    h, w = 16, 21
    logits = torch.full((1, 2, h, w), -1e4)
    logits[0, 0, 3, 17] = 0.0
    logits[0, 1, 15, 0] = 0.0
    kp = heatmap_to_keypoints(logits)["value"]
    assert kp.shape == (1, 2, 2)
    expect = torch.tensor([[2 * 17 / (w - 1) - 1, 2 * 3 / (h - 1) - 1], [-1.0, 1.0]])
    assert torch.allclose(kp[0], expect, atol=1e-6)


def test_dsnt_of_uniform_map_is_centre():
    p = torch.full((1, 1, 6, 10), 1 / 60)
    assert torch.allclose(dsnt(p), torch.zeros(1, 1, 2), atol=1e-6)


def test_gaussian_softmax_dsnt_recovers_mean():
    mean = torch.tensor([[[0.3, -0.2], [-0.5, 0.45]]], dtype=torch.float64)
    heat = keypoints_to_gaussian(mean, (64, 64), 0.01)
    assert heat.shape == (1, 2, 64, 64)
    assert torch.allclose(heat.amax((-2, -1)), torch.ones(1, 2, dtype=torch.float64), atol=0.02)
    # log of the gaussian as logits at temperature 1 -> the normalised gaussian itself.
    kp = heatmap_to_keypoints(torch.log(heat), temperature=1.0)["value"]
    assert torch.allclose(kp, mean, atol=1e-4)


def test_gaussian_values_isotropic_and_full_covariance():
    mean = torch.tensor([[[0.0, 0.0]]])
    g = make_coordinate_grid(5, 5)
    heat = keypoints_to_gaussian(mean, (5, 5), 0.25)[0, 0]
    assert torch.allclose(heat, torch.exp(-0.5 * (g**2).sum(-1) / 0.25))
    cov = torch.tensor([[[[0.25, 0.0], [0.0, 0.25]]]])
    assert torch.allclose(keypoints_to_gaussian(mean, (5, 5), cov)[0, 0], heat, atol=1e-6)
    cov = torch.tensor([[[[0.5, 0.2], [0.2, 0.1]]]])
    full = keypoints_to_gaussian(mean, (5, 5), cov)[0, 0]
    inv = torch.linalg.inv(cov[0, 0])
    expect = torch.exp(-0.5 * torch.einsum("hwi,ij,hwj->hw", g, inv, g))
    assert torch.allclose(full, expect, atol=1e-6)
    # Per-keypoint isotropic variances (B x K).
    two = keypoints_to_gaussian(torch.zeros(1, 2, 2), (5, 5), torch.tensor([[0.25, 1.0]]))
    assert torch.allclose(two[0, 0], heat) and not torch.allclose(two[0, 1], heat)


def test_covariance_of_anisotropic_gaussian_recovered():
    mean = torch.tensor([[[0.1, -0.15]]], dtype=torch.float64)
    cov = torch.tensor([[[[0.02, 0.008], [0.008, 0.01]]]], dtype=torch.float64)
    heat = keypoints_to_gaussian(mean, (128, 128), cov)
    out = heatmap_to_keypoints(torch.log(heat), temperature=1.0, covariance=True)
    assert out["covariance"].shape == (1, 1, 2, 2)
    assert torch.allclose(out["value"], mean, atol=1e-5)
    assert torch.allclose(out["covariance"], cov, atol=2e-4)


def test_clip_variance_rescales_thin_covariances_only():
    h = w = 65
    # A very peaked heatmap: covariance far below the clip value.
    logits = torch.full((1, 2, h, w), -1e4, dtype=torch.float64)
    logits[0, 0, 32, 30:35] = 0.0  # a short, thin horizontal bar: tiny variance in y
    logits[0, 0, 31, 30:35] = logits[0, 0, 33, 30:35] = -3.0
    logits[0, 1] = torch.randn(h, w, dtype=torch.float64) * 0.01  # nearly uniform: large variance
    raw = heatmap_to_keypoints(logits, temperature=1.0, covariance=True)["covariance"]
    clipped = heatmap_to_keypoints(logits, temperature=1.0, covariance=True, clip_variance=1e-3)["covariance"]
    eig = torch.linalg.eigvalsh(clipped)
    assert torch.allclose(eig[0, 0, 0], torch.tensor(1e-3, dtype=torch.float64), rtol=1e-3)
    # The shape is kept (scaled copy) and unclipped maps are unchanged.
    assert torch.allclose(clipped[0, 0] / clipped[0, 0, 0, 0], raw[0, 0] / raw[0, 0, 0, 0])
    assert clipped[0, 0, 0, 0] > raw[0, 0, 0, 0]
    assert torch.equal(clipped[0, 1], raw[0, 1])


def test_hull_area_square_and_triangle_with_interior_points():
    # Interior points, a point on an edge and a repeated corner must not change the area;
    # offsets keep the shoelace terms of wrongly counted edges non-zero.
    square = torch.tensor([[0.0, 0.0], [2.0, 0.0], [2.0, 2.0], [0.0, 2.0], [1.0, 1.0], [0.5, 1.5], [1.0, 0.0]])
    triangle = torch.tensor([[0.0, 0.0], [3.0, 0.0], [0.0, 4.0], [0.5, 0.5], [1.0, 1.0], [0.0, 2.0], [3.0, 0.0]])
    square, triangle = square + torch.tensor([3.0, -1.0]), triangle + torch.tensor([-2.0, 5.0])
    areas = convex_hull_area(torch.stack([square, triangle]))
    assert torch.allclose(areas, torch.tensor([4.0, 6.0]))
    # Order does not matter; a single set gives a 0-d result.
    perm = torch.randperm(7, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(convex_hull_area(square[perm]), torch.tensor(4.0))


def test_hull_area_degenerate_and_random_against_reference():
    line = torch.tensor([[[0.0, 0.0], [1.0, 1.0], [2.0, 2.0], [0.5, 0.5]]])
    assert convex_hull_area(line).item() == 0.0
    same = torch.zeros(1, 5, 2)
    assert convex_hull_area(same).item() == 0.0
    assert convex_hull_area(torch.rand(3, 2, 2)).eq(0).all()
    # Random sets vs a monotone-chain reference in plain Python.
    gen = torch.Generator().manual_seed(1)
    pts = torch.rand(6, 12, 2, generator=gen, dtype=torch.float64) * 2 - 1
    ref = torch.tensor([_monotone_chain_area(p.tolist()) for p in pts], dtype=torch.float64)
    assert torch.allclose(convex_hull_area(pts), ref)


def _monotone_chain_area(points: list[list[float]]) -> float:
    pts = sorted(map(tuple, points))

    def cross(o, a, b):
        return (a[0] - o[0]) * (b[1] - o[1]) - (a[1] - o[1]) * (b[0] - o[0])

    lower, upper = [], []
    for p in pts:
        while len(lower) >= 2 and cross(lower[-2], lower[-1], p) <= 0:
            lower.pop()
        lower.append(p)
    for p in reversed(pts):
        while len(upper) >= 2 and cross(upper[-2], upper[-1], p) <= 0:
            upper.pop()
        upper.append(p)
    hull = lower[:-1] + upper[:-1]
    return 0.5 * abs(sum(hull[i][0] * hull[i - 1][1] - hull[i - 1][0] * hull[i][1] for i in range(len(hull))))


def test_hull_area_gradient():
    pts = torch.tensor([[[0.0, 0.0], [2.0, 0.0], [2.0, 2.0], [0.0, 2.0], [1.0, 1.0]]], requires_grad=True)
    convex_hull_area(pts).sum().backward()
    # Moving a corner outward along x by d grows the area by 2d / 2 = d; interior point: no effect.
    assert torch.allclose(pts.grad[0, 1], torch.tensor([1.0, -1.0]))
    assert torch.equal(pts.grad[0, 4], torch.zeros(2))


def test_normalize_kp_relative_movement_and_scale():
    src = {"value": torch.tensor([[[0.0, 0.0], [0.5, 0.0], [0.0, 0.5]]])}  # hull area 0.125
    drv0 = {"value": torch.tensor([[[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]]])}  # hull area 0.5
    drv = {"value": drv0["value"] + torch.tensor([0.2, -0.1]), "extra": torch.ones(1)}
    out = normalize_kp(src, drv, drv0)
    assert out["value"] is drv["value"] and out["extra"] is drv["extra"]  # no relative movement
    out = normalize_kp(src, drv, drv0, use_relative_movement=True)
    assert torch.allclose(out["value"], src["value"] + torch.tensor([0.2, -0.1]))
    out = normalize_kp(src, drv, drv0, use_relative_movement=True, adapt_movement_scale=True)
    scale = math.sqrt(0.125) / math.sqrt(0.5)  # 0.5
    assert torch.allclose(out["value"], src["value"] + scale * torch.tensor([0.2, -0.1]))
    assert "extra" in out


def test_normalize_kp_relative_jacobian_and_broadcast_over_frames():
    gen = torch.Generator().manual_seed(0)
    eye = torch.eye(2)
    js = eye + 0.1 * torch.randn(1, 3, 2, 2, generator=gen)
    jd0 = eye + 0.1 * torch.randn(1, 3, 2, 2, generator=gen)
    jd = eye + 0.1 * torch.randn(4, 3, 2, 2, generator=gen)  # 4 driving frames, one source
    src = {"value": torch.rand(1, 3, 2, generator=gen), "jacobian": js}
    drv0 = {"value": torch.rand(1, 3, 2, generator=gen), "jacobian": jd0}
    drv = {"value": torch.rand(4, 3, 2, generator=gen), "jacobian": jd}
    out = normalize_kp(src, drv, drv0, use_relative_movement=True, use_relative_jacobian=True)
    assert out["value"].shape == (4, 3, 2) and out["jacobian"].shape == (4, 3, 2, 2)
    expect = jd @ torch.linalg.inv(jd0) @ js
    assert torch.allclose(out["jacobian"], expect, atol=1e-6)
    # The initial driving frame maps to the source exactly.
    drv_first = {"value": drv0["value"], "jacobian": jd0}
    first = normalize_kp(src, drv_first, drv0, use_relative_movement=True, use_relative_jacobian=True)
    assert torch.allclose(first["value"], src["value"]) and torch.allclose(first["jacobian"], js, atol=1e-6)
