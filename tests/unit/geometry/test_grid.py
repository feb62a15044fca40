"""Tests for animzoo.geometry.grid: coordinate convention, warping, flow resizing."""

from __future__ import annotations

import pytest
import torch

from animzoo.geometry.grid import (
    flow_to_grid,
    grid_to_flow,
    make_coordinate_grid,
    normalized_to_pixel,
    pixel_to_normalized,
    resize_flow,
    warp,
    warp_with_flow,
)


pytestmark = pytest.mark.usefixtures("one_thread")


def test_coordinate_grid_values():
    g = make_coordinate_grid(3, 5, dtype=torch.float64)
    assert g.shape == (3, 5, 2) and g.dtype == torch.float64
    assert torch.equal(g[0, :, 0], torch.tensor([-1.0, -0.5, 0.0, 0.5, 1.0], dtype=torch.float64))
    assert torch.equal(g[:, 0, 1], torch.tensor([-1.0, 0.0, 1.0], dtype=torch.float64))
    assert (g[:, :, 0] == g[0:1, :, 0]).all()  # x constant down a column
    assert (g[:, :, 1] == g[:, 0:1, 1]).all()  # y constant along a row
    assert make_coordinate_grid(1, 4)[0, :, 1].eq(0).all()


def test_grid_matches_grid_sample_convention():
    # Sampling an image at the grid of its own pixel centres must return it (align_corners=True).
    img = torch.rand(2, 3, 7, 11)
    grid = make_coordinate_grid(7, 11).expand(2, 7, 11, 2)
    assert torch.allclose(warp(img, grid), img, atol=1e-5)
    assert torch.equal(warp(img, grid, mode="nearest"), img)


def test_pixel_normalized_known_values_and_round_trip():
    size = (5, 9)  # H, W
    px = torch.tensor([[0.0, 0.0], [8.0, 4.0], [4.0, 2.0], [2.0, 1.0]])
    n = pixel_to_normalized(px, size)
    assert torch.allclose(n, torch.tensor([[-1.0, -1.0], [1.0, 1.0], [0.0, 0.0], [-0.5, -0.5]]))
    xy = torch.randn(4, 6, 2, dtype=torch.float64) * 50
    assert torch.allclose(normalized_to_pixel(pixel_to_normalized(xy, (64, 128)), (64, 128)), xy)
    # The pixel centres of make_coordinate_grid are integer pixels.
    g = make_coordinate_grid(6, 10)
    pix = normalized_to_pixel(g, (6, 10))
    assert torch.allclose(pix[2, 7], torch.tensor([7.0, 2.0]), atol=1e-5)


def test_identity_flow_warp_is_exact():
    img = torch.rand(2, 3, 16, 20, dtype=torch.float64)
    flow = torch.zeros(2, 2, 16, 20, dtype=torch.float64)
    assert torch.allclose(warp_with_flow(img, flow), img, rtol=0, atol=1e-12)
    assert torch.equal(warp_with_flow(img, flow, mode="nearest"), img)
    # float32: exact up to rounding of the grid coordinates.
    assert torch.allclose(warp_with_flow(img.float(), flow.float()), img.float(), atol=1e-5)
    assert torch.equal(warp_with_flow(img.float(), flow.float(), mode="nearest"), img.float())


def test_flow_grid_round_trip():
    flow = torch.randn(2, 2, 5, 8)
    grid = flow_to_grid(flow)
    assert grid.shape == (2, 5, 8, 2)
    assert torch.allclose(grid[..., 0], flow[:, 0] + make_coordinate_grid(5, 8)[..., 0])
    assert torch.allclose(grid_to_flow(grid), flow, atol=1e-6)


@pytest.mark.parametrize("mode", ["bilinear", "nearest"])
def test_one_pixel_flow_shifts_image_by_one_pixel(mode):
    h, w = 12, 17
    img = torch.rand(1, 3, h, w, dtype=torch.float64)
    flow = torch.zeros(1, 2, h, w, dtype=torch.float64)
    flow[:, 0] = 2.0 / (w - 1)  # +1 pixel in x: out(x) = img(x + 1)
    out = warp_with_flow(img, flow, mode=mode)
    assert torch.allclose(out[..., :-1], img[..., 1:], atol=1e-9)
    flow = torch.zeros(1, 2, h, w, dtype=torch.float64)
    flow[:, 1] = -2.0 / (h - 1)  # -1 pixel in y: out(y) = img(y - 1)
    out = warp_with_flow(img, flow, mode=mode)
    assert torch.allclose(out[..., 1:, :], img[..., :-1, :], atol=1e-9)
    assert torch.allclose(out[..., 0, :], torch.zeros_like(out[..., 0, :]))  # zeros padding


def test_half_pixel_flow_interpolates_bilinearly():
    img = torch.arange(10.0).view(1, 1, 1, 10).expand(1, 1, 4, 10).contiguous()
    flow = torch.zeros(1, 2, 4, 10)
    flow[:, 0] = 0.5 * 2 / 9
    out = warp_with_flow(img, flow, padding_mode="border")
    assert torch.allclose(out[0, 0, :, :-1], torch.arange(9.0) + 0.5, atol=1e-5)


def test_warp_output_size_follows_grid():
    img = torch.rand(1, 2, 32, 32)
    grid = make_coordinate_grid(8, 4)[None]
    out = warp(img, grid)
    assert out.shape == (1, 2, 8, 4)
    # Grid corners are the image corners.
    assert torch.allclose(out[0, :, 0, 0], img[0, :, 0, 0], atol=1e-6)
    assert torch.allclose(out[0, :, -1, -1], img[0, :, -1, -1], atol=1e-6)


def test_resize_flow_keeps_constant_and_linear_flows():
    flow = torch.zeros(2, 2, 16, 24)
    flow[:, 0], flow[:, 1] = 0.13, -0.07
    for size in [(8, 12), (33, 47)]:
        r = resize_flow(flow, size)
        assert r.shape == (2, 2) + size
        assert torch.allclose(r[:, 0], torch.full_like(r[:, 0], 0.13))
        assert torch.allclose(r[:, 1], torch.full_like(r[:, 1], -0.07))
    # A zoom flow (grid = 0.5 * identity) stays the same mapping after resizing.
    zoom = grid_to_flow(0.5 * make_coordinate_grid(16, 24)[None])
    r = resize_flow(zoom, (31, 9))
    assert torch.allclose(flow_to_grid(r), 0.5 * make_coordinate_grid(31, 9)[None], atol=1e-5)
    assert resize_flow(flow, (4, 6), mode="nearest").shape == (2, 2, 4, 6)


def test_warp_gradients_flow_to_image_and_flow():
    img = torch.rand(1, 1, 6, 6, dtype=torch.float64, requires_grad=True)
    flow = (torch.rand(1, 2, 6, 6, dtype=torch.float64) * 0.1).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda i, f: warp_with_flow(i, f), (img, flow))


def test_bad_shapes_raise():
    with pytest.raises(ValueError):
        flow_to_grid(torch.zeros(1, 3, 4, 4))
    with pytest.raises(ValueError):
        grid_to_flow(torch.zeros(1, 4, 4, 3))
    with pytest.raises(ValueError):
        pixel_to_normalized(torch.zeros(2), (1, 5))
