"""DSNT maths: cell centres in the INPUT's normalised coordinates, pixel conversion, equivariance, JS."""

from __future__ import annotations

import pytest
import torch

from animzoo.geometry.grid import normalized_to_pixel
from animzoo.perception.landmarks.dsnt import (
    dsnt,
    gaussian_targets,
    heatmap_axis,
    js_divergence,
    spatial_softmax,
)


def delta(h: int, w: int, row: int, col: int) -> torch.Tensor:
    probs = torch.zeros(1, 1, h, w)
    probs[0, 0, row, col] = 1.0
    return probs


@pytest.mark.parametrize("cells,size", [(16, 64), (32, 64), (64, 64), (8, 32)])
def test_a_delta_at_a_cell_gives_the_centre_of_its_input_pixels(cells: int, size: int) -> None:
    stride = size // cells
    for j in (0, 5, cells - 1):
        out = dsnt(delta(cells, cells, row=j, col=cells - 1 - j), (size, size))[0, 0]
        # Cell j covers input pixels stride*j .. stride*j + stride - 1: its centre pixel is
        # stride*j + (stride - 1)/2, in animzoo's align-corners normalisation 2 p / (N - 1) - 1.
        px_x, px_y = stride * (cells - 1 - j) + (stride - 1) / 2, stride * j + (stride - 1) / 2
        expected = torch.tensor([2 * px_x / (size - 1) - 1, 2 * px_y / (size - 1) - 1])
        torch.testing.assert_close(out, expected)
        torch.testing.assert_close(normalized_to_pixel(out, (size, size)), torch.tensor([px_x, px_y]))


def test_full_resolution_heatmap_is_the_align_corners_grid() -> None:
    torch.testing.assert_close(heatmap_axis(64, 64), torch.linspace(-1, 1, 64))


def test_non_square_inputs_use_each_axis_size() -> None:
    out = dsnt(delta(8, 16, row=3, col=10), (32, 64))[0, 0]  # stride 4 on both axes
    torch.testing.assert_close(normalized_to_pixel(out, (32, 64)), torch.tensor([41.5, 13.5]))


def test_two_cell_mass_gives_the_midpoint_in_pixels() -> None:
    probs = 0.5 * (delta(16, 16, 4, 4) + delta(16, 16, 4, 5))
    pixel = normalized_to_pixel(dsnt(probs, (64, 64))[0, 0], (64, 64))
    torch.testing.assert_close(pixel, torch.tensor([4 * 4.5 + 1.5, 4 * 4 + 1.5]))


def test_translation_equivariance() -> None:
    torch.manual_seed(0)
    logits = torch.full((2, 3, 16, 16), -30.0)  # no mass outside the blob: roll is then a pure shift
    logits[..., 4:9, 3:8] = torch.randn(2, 3, 5, 5) * 3  # a blob away from the border
    shifted = torch.roll(logits, shifts=(2, 3), dims=(-2, -1))
    a = normalized_to_pixel(dsnt(spatial_softmax(logits), (64, 64)), (64, 64))
    b = normalized_to_pixel(dsnt(spatial_softmax(shifted), (64, 64)), (64, 64))
    # Shifting the heatmap by (3, 2) cells moves the point by (3, 2) x stride 4 input pixels.
    torch.testing.assert_close(b - a, torch.tensor([12.0, 8.0]).expand_as(a), atol=1e-3, rtol=0)


def test_gaussian_target_is_centred_and_js_is_zero_only_for_equal_maps() -> None:
    point = torch.tensor([[[0.1, -0.3]]])
    target = gaussian_targets(point, (16, 16), (64, 64), sigma=1.0)
    torch.testing.assert_close(target.sum(dim=(-2, -1)), torch.ones(1, 1))
    torch.testing.assert_close(dsnt(target, (64, 64)), point, atol=1e-4, rtol=0)
    assert js_divergence(target, target).abs().max() < 1e-6
    other = gaussian_targets(point + 0.2, (16, 16), (64, 64), sigma=1.0)
    assert 0 < js_divergence(target, other).item() <= torch.log(torch.tensor(2.0)).item()
