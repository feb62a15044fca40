"""Evaluation metrics (torchmetrics), de-duplicated per ``(video_id, frame_index)``."""

from animzoo.metrics.pixel import L1, PSNR, SSIM, FrameMetric
from animzoo.metrics.suite import (
    DEFAULT_METRICS,
    DEFAULT_TEST_METRICS,
    DEFAULT_VAL_METRICS,
    AnimationMetrics,
    available_metrics,
    metric_status,
    per_video_results,
    register_metric,
)

__all__ = [
    "DEFAULT_METRICS",
    "DEFAULT_TEST_METRICS",
    "DEFAULT_VAL_METRICS",
    "L1",
    "PSNR",
    "SSIM",
    "AnimationMetrics",
    "FrameMetric",
    "available_metrics",
    "metric_status",
    "per_video_results",
    "register_metric",
]
