"""The differentiable pyramidal Lucas-Kanade tracker."""

from __future__ import annotations

import pytest
import torch

from animzoo.perception.landmarks.tracking import lucas_kanade, track_forward_backward

pytestmark = pytest.mark.usefixtures("one_thread")


def texture(dx: float, dy: float, size: int = 64) -> torch.Tensor:
    """A smooth random pattern (Gaussian blobs + a sinusoid) translated by (dx, dy) pixels,
    evaluated analytically (no resampling error): 1 x 3 x size x size."""
    y, x = torch.meshgrid(torch.arange(size, dtype=torch.float64), torch.arange(size, dtype=torch.float64), indexing="ij")
    x, y = x - dx, y - dy
    g = torch.Generator().manual_seed(0)
    image = 0.2 * torch.sin(x / 5.0) * torch.cos(y / 7.0)
    for _ in range(14):
        cx, cy = (torch.rand(2, generator=g, dtype=torch.float64) * size).tolist()
        sigma = 2 + 4 * torch.rand(1, generator=g, dtype=torch.float64).item()
        weight = torch.rand(1, generator=g, dtype=torch.float64).item() - 0.3
        image = image + weight * torch.exp(-((x - cx) ** 2 + (y - cy) ** 2) / (2 * sigma**2))
    image = (image - image.min()) / (image.max() - image.min())
    return image.float()[None, None].expand(1, 3, size, size).contiguous()


POINTS = torch.tensor([[[20.0, 20.0], [32.0, 40.0], [45.5, 30.2], [27.3, 33.9]]])


@pytest.mark.parametrize("shift", [(0.4, -0.3), (2.3, -1.6), (-3.7, 2.2)])
def test_points_move_by_a_known_subpixel_shift(shift: tuple[float, float]) -> None:
    tracked = lucas_kanade(texture(0, 0), texture(*shift), POINTS, levels=3, window=7, iterations=6)
    torch.testing.assert_close(tracked - POINTS, torch.tensor(shift).expand_as(POINTS), atol=0.15, rtol=0)


def test_forward_backward_error_is_small_for_a_good_track_and_large_for_a_bad_one() -> None:
    _, error = track_forward_backward(texture(0, 0), texture(1.2, 0.8), POINTS)
    assert error.max() < 0.1
    noise = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    _, error = track_forward_backward(texture(0, 0), noise, POINTS)
    assert error.max() > 0.3


def test_gradients_reach_the_input_points() -> None:
    points = POINTS.clone().requires_grad_(True)
    tracked = lucas_kanade(texture(0, 0), texture(1.0, 0.5), points)
    tracked[..., 0].sum().backward()
    assert points.grad is not None and torch.isfinite(points.grad).all()
    # Tracking follows the points: d tracked_x / d start_x is close to 1 on a textured patch.
    assert (points.grad[..., 0] - 1).abs().max() < 0.6 and points.grad[..., 0].abs().min() > 0.3


def test_identical_frames_leave_points_in_place_and_batches_are_independent() -> None:
    image = texture(0, 0).expand(2, 3, 64, 64)
    points = torch.cat([POINTS, POINTS + 3])
    torch.testing.assert_close(lucas_kanade(image, image, points), points, atol=1e-4, rtol=0)
    with pytest.raises(ValueError, match="odd"):
        lucas_kanade(image, image, points, window=6)
