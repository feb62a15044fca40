"""The metrics suite of animzoo: one :class:`~torchmetrics.MetricCollection` factory.

Output names carry their backbone where they have one (``lpips@alex``, ``fid@inception-pt``,
``akd@dlib68``, ``csim@dlib128``, ``akd@animzoo70``, ...), so numbers from different backbones
never mix in one column; the pixel metrics are plain ``l1``, ``psnr``, ``ssim``, ``ms_ssim``.
Every metric is a torchmetrics ``Metric`` whose ``update`` takes ``(prediction, target,
video_id, frame_index)`` (and ``source=`` where it uses the source image), which counts each
``(video_id, frame_index)`` once, across DDP ranks too, and which answers

* ``status``: ``"ok: ..."`` or ``"unavailable: <missing file> - <command that gets it>"``
  (an unavailable metric computes NaN; it never raises and never downloads), and
* ``per_video()``: ``{video_key: {output: value}}`` for per-video reports (``{}`` for
  set-level metrics such as FID).

The heavy metrics are registered by lazy factories: importing this module loads no backbone.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from torchmetrics import Metric, MetricCollection

from animzoo.metrics.pixel import L1, PSNR, SSIM

__all__ = [
    "DEFAULT_METRICS",
    "DEFAULT_TEST_METRICS",
    "DEFAULT_VAL_METRICS",
    "AnimationMetrics",
    "available_metrics",
    "metric_status",
    "per_video_results",
    "register_metric",
]

_FACTORIES: dict[str, Callable[..., Metric]] = {}
#: validation during fit: cheap pixel metrics
DEFAULT_VAL_METRICS: tuple[str, ...] = ("l1", "psnr", "ssim")
DEFAULT_METRICS = DEFAULT_VAL_METRICS
#: test / validate: the whole suite (face metrics with the dlib backends, which ship in the
#: ``metrics`` extra; on synthetic data the recipes choose the animzoo backends)
DEFAULT_TEST_METRICS: tuple[str, ...] = ("l1", "psnr", "ssim", "ms_ssim", "lpips", "fid", "akd", "csim")


def register_metric(name: str, factory: Callable[..., Metric]) -> None:
    """Make ``name`` available to :func:`AnimationMetrics` (``factory(**kwargs) -> Metric``)."""
    if name in _FACTORIES and _FACTORIES[name] is not factory:
        raise ValueError(f"metric {name!r} is already registered")
    _FACTORIES[name] = factory


def available_metrics() -> list[str]:
    """Names :func:`AnimationMetrics` accepts."""
    return sorted(_FACTORIES)


def _lazy(module: str, cls: str) -> Callable[..., Metric]:
    """A factory importing ``module.cls`` on first use (keeps ``import animzoo`` light)."""

    def factory(**kwargs: Any) -> Metric:
        return getattr(importlib.import_module(module), cls)(**kwargs)

    factory.__name__ = f"{cls}_factory"
    factory.__qualname__ = factory.__name__
    factory.__doc__ = f"Build :class:`{module}.{cls}`."
    return factory


register_metric("l1", L1)
register_metric("psnr", PSNR)
register_metric("ssim", SSIM)
register_metric("ms_ssim", _lazy("animzoo.metrics.ms_ssim", "MSSSIM"))
register_metric("lpips", _lazy("animzoo.metrics.lpips", "LPIPS"))
register_metric("fid", _lazy("animzoo.metrics.fid", "FID"))
register_metric("akd", _lazy("animzoo.metrics.keypoints", "KeypointMetrics"))
register_metric("csim", _lazy("animzoo.metrics.identity", "IdentityMetrics"))


def AnimationMetrics(
    prefix: str = "",
    metrics: Sequence[str] = DEFAULT_METRICS,
    metric_kwargs: Mapping[str, Mapping[str, Any]] | None = None,
) -> MetricCollection:
    """The metric collection of the reconstruction protocol.

    Args:
        prefix: prepended to every name (``"val/"`` -> ``val/l1``).
        metrics: names to include (default ``l1``, ``psnr``, ``ssim``; the whole suite is
            :data:`DEFAULT_TEST_METRICS`); see :func:`available_metrics`.
        metric_kwargs: per-name constructor arguments, e.g. ``{"akd": {"backend": "animzoo70"}}``.

    Returns:
        A ``MetricCollection``; ``update(prediction, target, video_id, frame_index, source=...)``.
    """
    metric_kwargs = dict(metric_kwargs or {})
    unknown = [m for m in metrics if m not in _FACTORIES] + [m for m in metric_kwargs if m not in metrics]
    if unknown:
        raise KeyError(f"unknown metric(s) {unknown}; available: {', '.join(available_metrics())}")
    built = {name: _FACTORIES[name](**dict(metric_kwargs.get(name, {}))) for name in metrics}
    # compute_groups would share states between metrics whose states look alike: never wanted here.
    return MetricCollection(built, prefix=prefix or None, compute_groups=False)


def metric_status(collection: MetricCollection) -> dict[str, str]:
    """``{metric name: status}``: what each metric loaded, or why it reports NaN."""
    return {name: str(getattr(metric, "status", "ok")) for name, metric in collection.items(keep_base=True)}


def per_video_results(collection: MetricCollection) -> dict[int, dict[str, float]]:
    """``{video_key: {output name: value}}`` merged over the metrics that report per video.

    Under DDP the states of all ranks are gathered for this (``compute()`` puts each rank's own
    states back when it returns); every rank must call it.
    """
    rows: dict[int, dict[str, float]] = {}
    for name, metric in collection.items(keep_base=True):
        per_video = getattr(metric, "per_video", None)
        if per_video is None:
            continue
        with metric.sync_context(should_unsync=True):
            videos = per_video()
        for video, values in videos.items():
            row = rows.setdefault(video, {})
            for key, value in values.items():
                row[key if key else name] = value
    return rows
