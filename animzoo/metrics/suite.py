"""The metrics suite of animzoo: one :class:`~torchmetrics.MetricCollection` factory.

Names carry their backbone where they have one (issue 4 adds e.g. ``lpips@alex``,
``fid@inception``, ``akd@animzoo-landmarks``, ``csim@...``); the pixel metrics are plain
``l1``, ``psnr``, ``ssim``. Every metric is a :class:`~animzoo.metrics.pixel.FrameMetric`-style
torchmetrics ``Metric`` whose ``update`` takes ``(prediction, target, video_id, frame_index)``
and which counts each ``(video_id, frame_index)`` once, across DDP ranks too.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from torchmetrics import Metric, MetricCollection

from animzoo.metrics.pixel import L1, PSNR, SSIM

__all__ = ["DEFAULT_METRICS", "AnimationMetrics", "available_metrics", "register_metric"]

_FACTORIES: dict[str, Callable[..., Metric]] = {}
DEFAULT_METRICS: tuple[str, ...] = ("l1", "psnr", "ssim")


def register_metric(name: str, factory: Callable[..., Metric]) -> None:
    """Make ``name`` available to :func:`AnimationMetrics` (``factory(**kwargs) -> Metric``)."""
    if name in _FACTORIES and _FACTORIES[name] is not factory:
        raise ValueError(f"metric {name!r} is already registered")
    _FACTORIES[name] = factory


def available_metrics() -> list[str]:
    """Names :func:`AnimationMetrics` accepts."""
    return sorted(_FACTORIES)


register_metric("l1", L1)
register_metric("psnr", PSNR)
register_metric("ssim", SSIM)


def AnimationMetrics(
    prefix: str = "",
    metrics: Sequence[str] = DEFAULT_METRICS,
    metric_kwargs: dict[str, dict[str, Any]] | None = None,
) -> MetricCollection:
    """The metric collection of the reconstruction protocol.

    Args:
        prefix: prepended to every name (``"val/"`` -> ``val/l1``).
        metrics: names to include (default ``l1``, ``psnr``, ``ssim``); see
            :func:`available_metrics`.
        metric_kwargs: per-name constructor arguments, e.g. ``{"psnr": {"mse_floor": 0}}``.

    Returns:
        A ``MetricCollection``; ``update(prediction, target, video_id, frame_index)``.
    """
    metric_kwargs = metric_kwargs or {}
    unknown = [m for m in metrics if m not in _FACTORIES] + [m for m in metric_kwargs if m not in metrics]
    if unknown:
        raise KeyError(f"unknown metric(s) {unknown}; available: {', '.join(available_metrics())}")
    built = {name: _FACTORIES[name](**metric_kwargs.get(name, {})) for name in metrics}
    # compute_groups would share states between metrics whose states look alike: never wanted here.
    return MetricCollection(built, prefix=prefix or None, compute_groups=False)
