"""Pixel metrics of the reconstruction protocol: L1, PSNR and SSIM, one value per frame.

Every metric here is a :class:`FrameMetric`: ``update(prediction, target, video_id,
frame_index)`` stores one value per frame together with a 64-bit key of
``(video_id, frame_index)``; ``compute()`` (after torchmetrics has gathered the states of all
ranks by concatenation) keeps one value per key and averages them. Frames that Lightning's
distributed samplers pad or repeat therefore count once, and the result does not depend on the
number of processes or on how videos were cut into chunks.

Conventions (first-order-model's reconstruction protocol, images in [0, 1]):

* ``l1``: mean absolute error over the pixels and channels of a frame, averaged over frames.
* ``psnr``: ``10 log10(1 / mse)`` of each frame (``data_range = 1``), averaged over frames.
  The MSE of a frame is floored at the quantisation noise of 8-bit images,
  ``(1/255)^2 / 12`` (``psnr`` <= 58.88 dB): a perfect frame (e.g. frame 0 of the protocol,
  which is also the source) would otherwise give ``inf`` and make the average ``inf``.
* ``ssim``: Wang et al. (2004) SSIM with an 11 x 11 Gaussian window (sigma 1.5), ``K1 = 0.01``,
  ``K2 = 0.03``, ``data_range = 1``, valid region only (no padding), averaged over channels and
  pixels of a frame, then over frames; equal to
  ``skimage.metrics.structural_similarity(a, b, data_range=1, channel_axis=-1,
  gaussian_weights=True, sigma=1.5, use_sample_covariance=False)``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from torchmetrics import Metric
from torchmetrics.utilities import dim_zero_cat

__all__ = [
    "L1", "PSNR", "PSNR_MSE_FLOOR", "SSIM", "FrameMetric", "batch_keys", "deduplicate", "frame_keys", "group_by_video",
    "video_key",
]

# Uniform quantisation noise of 8-bit images in [0, 1]: below this an error is not measurable.
PSNR_MSE_FLOOR = (1.0 / 255.0) ** 2 / 12.0


def video_key(video_id: str) -> int:
    """Signed 64-bit key of a video id (blake2b; collisions ~ 2^-64 per pair of ids).

    Metric states hold these instead of strings (states must be tensors to sync across ranks);
    :class:`animzoo.methods.base.AnimationModule` keeps the key -> name table for reports.
    """
    digest = hashlib.blake2b(str(video_id).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little", signed=True)


def frame_keys(video_id: Sequence[str] | str, frame_index: Tensor | Sequence[int] | int, n: int | None = None,
               device: torch.device | None = None) -> Tensor:
    """``N x 2`` long tensor of ``(video_key(video_id), frame_index)`` rows.

    ``video_id`` is a list of one id per frame (or one id for all); ``frame_index`` a tensor or
    list of ints (or one int for all); ``n`` the number of frames when both are scalars.
    """
    if isinstance(frame_index, Tensor):
        indices = [int(i) for i in frame_index.reshape(-1).tolist()]
    elif isinstance(frame_index, int):
        indices = [frame_index] * (n if n is not None else (1 if isinstance(video_id, str) else len(video_id)))
    else:
        indices = [int(i) for i in frame_index]
    ids = [video_id] * len(indices) if isinstance(video_id, str) else list(video_id)
    if len(ids) != len(indices):
        raise ValueError(f"{len(ids)} video ids for {len(indices)} frame indices")
    rows = [(video_key(v), i) for v, i in zip(ids, indices)]
    return torch.tensor(rows, dtype=torch.long, device=device).reshape(-1, 2)


def batch_keys(metric: str, prediction: Tensor, target: Tensor, video_id: Sequence[str] | str,
               frame_index: Tensor | Sequence[int] | int, device: torch.device | None = None) -> Tensor:
    """Check an ``update`` batch and return its ``B x 2`` :func:`frame_keys`.

    Raises:
        ValueError: ``prediction`` and ``target`` are not both ``B x C x H x W`` of one shape, or
            the ids and indices do not give one key per frame (``metric`` names the metric).
    """
    if prediction.shape != target.shape or prediction.dim() != 4:
        raise ValueError(
            f"{metric}: prediction {tuple(prediction.shape)} and target {tuple(target.shape)} must both "
            "be B x C x H x W"
        )
    keys = frame_keys(video_id, frame_index, n=prediction.shape[0], device=device)
    if keys.shape[0] != prediction.shape[0]:
        raise ValueError(f"{metric}: {keys.shape[0]} (video_id, frame_index) keys for {prediction.shape[0]} frames")
    return keys


def deduplicate(keys: Tensor, *values: Tensor) -> tuple[Tensor, ...]:
    """Keep one row per distinct key row.

    Args:
        keys: ``N x 2`` ``(video_key, frame_index)`` rows (e.g. gathered from all ranks).
        values: tensors with ``N`` rows each (per-frame values, features, landmarks, ...).

    Returns:
        ``(unique_keys, *values)``: keys sorted by ``(video_key, frame_index)``, and for each
        key the values of its *first* occurrence (copies of one frame are equal up to the
        numerics of another batch composition, so first is as good as the mean and works for
        NaN-marked rows too).
    """
    if keys.numel() == 0:
        return (keys.reshape(0, 2), *values)
    unique, inverse = torch.unique(keys, dim=0, return_inverse=True)
    positions = torch.arange(inverse.numel(), device=keys.device)
    first = torch.full((unique.shape[0],), inverse.numel(), dtype=torch.long, device=keys.device)
    first.scatter_reduce_(0, inverse, positions, reduce="amin")
    return (unique, *(v[first] for v in values))


def group_by_video(keys: Tensor, values: Tensor) -> dict[int, tuple[Tensor, Tensor]]:
    """``{video_key: (frame_indices, values)}`` of de-duplicated ``keys`` (``N x 2``) and ``values``
    (``N x ...``), frames in increasing index order."""
    groups: dict[int, tuple[Tensor, Tensor]] = {}
    if keys.numel() == 0:
        return groups
    order = torch.argsort(keys[:, 1], stable=True)  # by frame index ...
    keys, values = keys[order], values[order]
    order = torch.argsort(keys[:, 0], stable=True)  # ... then by video, keeping frame order
    keys, values = keys[order], values[order]
    videos, counts = torch.unique_consecutive(keys[:, 0], return_counts=True)
    start = 0
    for video, count in zip(videos.tolist(), counts.tolist()):
        groups[int(video)] = (keys[start:start + count, 1], values[start:start + count])
        start += count
    return groups


class FrameMetric(Metric):
    """A metric with one value per frame, de-duplicated by ``(video_id, frame_index)``.

    Subclasses implement :meth:`frame_values` (``B x 3 x H x W`` prediction and target ->
    ``B`` values). ``compute()`` returns the mean over distinct frames (NaN before any update);
    :meth:`per_frame` gives the de-duplicated keys and values, :meth:`per_video` the mean of
    each video (for per-video reports). Every animzoo metric answers ``per_video()`` with
    ``{video_key: {output_name: value}}`` (see :func:`video_key`).
    """

    full_state_update = False
    is_differentiable = False
    #: name of the single output in per-video reports (defaults to the registered name)
    output_name: str | None = None

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.add_state("keys", default=[], dist_reduce_fx="cat")
        self.add_state("values", default=[], dist_reduce_fx="cat")

    def frame_values(self, prediction: Tensor, target: Tensor) -> Tensor:  # pragma: no cover
        raise NotImplementedError

    def update(
        self,
        prediction: Tensor,
        target: Tensor,
        video_id: Sequence[str] | str,
        frame_index: Tensor | Sequence[int] | int,
    ) -> None:
        """Add a batch of frames: ``prediction`` and ``target`` ``B x C x H x W`` in [0, 1]."""
        keys = batch_keys(type(self).__name__, prediction, target, video_id, frame_index, device=prediction.device)
        values = self.frame_values(prediction.detach().float(), target.detach().float())
        self.keys.append(keys)
        self.values.append(values.to(torch.float64))

    def per_frame(self) -> tuple[Tensor, Tensor]:
        """Distinct ``N x 2`` keys (sorted) and the value of each."""
        if isinstance(self.keys, list) and not self.keys:
            empty = torch.zeros(0, device=self.device)
            return empty.long().reshape(0, 2), empty.double()
        keys, values = deduplicate(dim_zero_cat(self.keys).reshape(-1, 2), dim_zero_cat(self.values))
        return keys, values

    def per_video(self) -> dict[int, dict[str, float]]:
        """``{video_key: {name: mean over the video's frames}}``."""
        name = self.output_name or type(self).__name__.lower()
        keys, values = self.per_frame()
        return {video: {name: float(v.mean())} for video, (_, v) in group_by_video(keys, values).items()}

    def compute(self) -> Tensor:
        _, values = self.per_frame()
        if values.numel() == 0:
            return torch.tensor(float("nan"), device=self.device)
        return values.mean().float()


class L1(FrameMetric):
    """Mean absolute error of each frame (``l1``); lower is better."""

    higher_is_better = False
    output_name = "l1"

    def frame_values(self, prediction: Tensor, target: Tensor) -> Tensor:
        return (prediction - target).abs().flatten(1).mean(1)


class PSNR(FrameMetric):
    """Peak signal-to-noise ratio of each frame in dB, ``data_range = 1`` (``psnr``).

    Args:
        mse_floor: smallest MSE of a frame (default :data:`PSNR_MSE_FLOOR`, the 8-bit
            quantisation noise; 0 lets a perfect frame give ``inf``).
    """

    higher_is_better = True
    output_name = "psnr"

    def __init__(self, mse_floor: float = PSNR_MSE_FLOOR, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.mse_floor = float(mse_floor)

    def frame_values(self, prediction: Tensor, target: Tensor) -> Tensor:
        mse = (prediction.double() - target.double()).pow(2).flatten(1).mean(1)
        return -10.0 * torch.log10(mse.clamp_min(self.mse_floor))


def gaussian_window(size: int = 11, sigma: float = 1.5, *, dtype: torch.dtype = torch.float64,
                    device: torch.device | None = None) -> Tensor:
    """Normalised 1D Gaussian of ``size`` taps (odd)."""
    x = torch.arange(size, dtype=dtype, device=device) - (size - 1) / 2
    w = torch.exp(-(x**2) / (2 * sigma**2))
    return w / w.sum()


class SSIM(FrameMetric):
    """Structural similarity of each frame (``ssim``), Gaussian window, ``data_range = 1``.

    Args:
        kernel_size: window size (odd; default 11, i.e. truncation at 3.5 sigma as skimage).
        sigma: Gaussian sigma (default 1.5).
        k1, k2: stabilisers (default 0.01, 0.03).
    """

    higher_is_better = True
    output_name = "ssim"

    def __init__(self, kernel_size: int = 11, sigma: float = 1.5, k1: float = 0.01, k2: float = 0.03,
                 **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if kernel_size % 2 != 1 or kernel_size < 3:
            raise ValueError(f"kernel_size must be odd and >= 3, got {kernel_size}")
        self.kernel_size = int(kernel_size)
        self.sigma = float(sigma)
        self.c1 = (k1 * 1.0) ** 2
        self.c2 = (k2 * 1.0) ** 2

    def frame_values(self, prediction: Tensor, target: Tensor) -> Tensor:
        b, c, h, w = prediction.shape
        k = self.kernel_size
        if h < k or w < k:
            raise ValueError(f"ssim needs frames of at least {k} x {k} pixels, got {h} x {w}")
        x = prediction.double().reshape(b * c, 1, h, w)
        y = target.double().reshape(b * c, 1, h, w)
        g = gaussian_window(k, self.sigma, device=x.device)

        def blur(t: Tensor) -> Tensor:  # separable valid convolution
            t = F.conv2d(t, g.view(1, 1, 1, k))
            return F.conv2d(t, g.view(1, 1, k, 1))

        mu_x, mu_y = blur(x), blur(y)
        sxx = blur(x * x) - mu_x * mu_x
        syy = blur(y * y) - mu_y * mu_y
        sxy = blur(x * y) - mu_x * mu_y
        num = (2 * mu_x * mu_y + self.c1) * (2 * sxy + self.c2)
        den = (mu_x * mu_x + mu_y * mu_y + self.c1) * (sxx + syy + self.c2)
        return (num / den).reshape(b, -1).mean(1)


