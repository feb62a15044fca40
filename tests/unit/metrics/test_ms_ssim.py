"""MS-SSIM against torchmetrics per image, de-duplication, and the small-frame path."""

from __future__ import annotations

import pytest
import torch
from torchmetrics.functional.image import multiscale_structural_similarity_index_measure
from torchmetrics.image import MultiScaleStructuralSimilarityIndexMeasure

from animzoo.metrics.ms_ssim import MSSSIM, ms_ssim_min_size
from animzoo.metrics.pixel import deduplicate, frame_keys

pytestmark = pytest.mark.usefixtures("one_thread")


def _frames(n: int, size: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    target = torch.nn.functional.avg_pool2d(torch.rand(n, 3, size, size, generator=g), 5, stride=1, padding=2)
    levels = torch.linspace(0.03, 0.12, n).view(n, 1, 1, 1)
    prediction = (target + levels * torch.randn(target.shape, generator=g)).clamp(0, 1)
    return prediction, target


def test_matches_torchmetrics_per_image_average() -> None:
    prediction, target = _frames(3, 192)
    metric = MSSSIM()
    ids, index = ["a", "a", "b"], torch.tensor([0, 1, 0])
    metric.update(prediction, target, ids, index)
    metric.update(prediction[:1], target[:1], "a", 0)  # a repeated frame counts once
    per_image = [
        float(multiscale_structural_similarity_index_measure(p[None], t[None], data_range=1.0))
        for p, t in zip(prediction, target)
    ]
    _, values = metric.per_frame()  # sorted by (video key, frame index)
    _, expected = deduplicate(frame_keys(ids, index), torch.tensor(per_image, dtype=torch.float64))
    torch.testing.assert_close(values, expected, rtol=1e-5, atol=1e-6)
    reference = MultiScaleStructuralSimilarityIndexMeasure(data_range=1.0)
    reference.update(prediction, target)
    assert float(metric.compute()) == pytest.approx(float(reference.compute()), rel=1e-5)
    assert float(metric.compute()) == pytest.approx(sum(per_image) / 3, rel=1e-5)
    assert len({round(v, 6) for v in per_image}) == 3  # the frames differ: the average is not trivial
    assert metric.status.startswith("ok:")


def test_small_frames_report_unavailable() -> None:
    assert ms_ssim_min_size() == 176
    prediction, target = _frames(2, 64)
    metric = MSSSIM()
    metric.update(prediction, target, "v", torch.tensor([0, 1]))  # must not raise
    assert torch.isnan(metric.compute())
    assert metric.status.startswith("unavailable:")
    assert "176" in metric.status and "64 x 64" in metric.status
    metric.reset()
    assert metric.status.startswith("ok:")
