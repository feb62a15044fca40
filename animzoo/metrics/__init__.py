"""Evaluation metrics (torchmetrics), de-duplicated per ``(video_id, frame_index)``."""

from animzoo.metrics.pixel import L1, PSNR, SSIM, FrameMetric
from animzoo.metrics.suite import AnimationMetrics, available_metrics, register_metric

__all__ = ["L1", "PSNR", "SSIM", "AnimationMetrics", "FrameMetric", "available_metrics", "register_metric"]
