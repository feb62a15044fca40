"""AKD and SMS: landmark distance to the ground truth and landmark smoothness, in one metric.

:class:`LandmarkMetrics` runs a landmark backend (:mod:`animzoo.metrics.backends`) once on each
predicted and each ground-truth frame, stores the ``K x 2`` pixel landmarks (NaN rows where no
face was detected) with the frame's ``(video_id, frame_index)`` key, and computes in
``compute()``, after de-duplicating the keys (``<b>`` is the backend name, e.g. ``dlib68``):

``akd@<b>``
    FOMM's average keypoint distance (``pose-evaluation/cmp_kp.py``): for each frame ``t``
    where both the prediction and the ground truth have a detection,
    ``AKD_t = 1 / (2K) * sum_{k, c} |P_t[k, c] - G_t[k, c]|``, the **mean absolute coordinate
    difference** in pixels over the ``K x 2`` array (not a Euclidean distance); then the mean
    of ``AKD_t`` over all such frames of all videos, pooled (not per video first).
``akd_detected@<b>``
    ``#{t: G_t and P_t detected} / #{t: G_t detected}``: the fraction of frames with a
    ground-truth detection whose prediction was detected too. Frames without a ground-truth
    detection are excluded from both AKD and this rate; their number is ``akd_gt_missing@<b>``.
``sms@<b>``, ``sms_gt@<b>``
    The landmark smoothness of paper 001, eq. 9, on the predicted and on the ground-truth
    video: for a video ``v`` with landmarks ``D^t``,
    ``SMS_v = 1/|T_v| * sum_{t in T_v} || (D^{t-1} + D^{t+1}) / 2 - D^t ||_1``, the L1 norm over
    all ``K x 2`` coordinates (pixels), where ``T_v`` holds the interior frames ``t`` whose
    neighbours ``t - 1`` and ``t + 1`` (consecutive frame indices) are present and all three
    are detected; ``SMS = mean over videos with a non-empty T_v of SMS_v`` (per-video mean
    first, then the mean over videos).

Resolution: landmarks are in pixels of the frames given to ``update`` unless ``eval_size`` is
set, in which case coordinates are rescaled to an ``eval_size x eval_size`` frame (FOMM
evaluates at 256) so that runs at 64 px and at 256 px report comparable numbers. The rescale
follows animzoo's ``align_corners=True`` convention: ``p' = p * (S - 1) / (n - 1)`` per axis.

Missing backends: the metric constructs, ``update`` is a no-op and every key is NaN;
``status`` says what is missing and how to get it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor
from torchmetrics.utilities import dim_zero_cat

from animzoo.geometry.keypoints import landmark_smoothness
from animzoo.metrics.backends import BackendMetric, LandmarkBackend, landmark_backend
from animzoo.metrics.pixel import batch_keys, deduplicate, group_by_video

__all__ = ["KeypointMetrics", "LandmarkMetrics", "akd_per_frame", "sms_of_video"]


def akd_per_frame(prediction: Tensor, target: Tensor) -> Tensor:
    """``N x K x 2`` landmarks each -> ``N`` mean absolute coordinate differences (NaN where either is missing)."""
    return (prediction - target).abs().flatten(1).mean(1)


def sms_of_video(frame_index: Tensor, landmarks: Tensor) -> tuple[float, int]:
    """Paper 001 eq. 9 on one video.

    Args:
        frame_index: ``N`` sorted distinct frame indices.
        landmarks: ``N x K x 2`` pixel landmarks (NaN rows: undetected).

    Returns:
        ``(mean over valid interior frames of ||(D^{t-1} + D^{t+1}) / 2 - D^t||_1, number of
        valid interior frames)``; ``(nan, 0)`` when there is none.
    """
    if landmarks.shape[0] < 3:
        return float("nan"), 0
    consecutive = (frame_index[1:-1] - frame_index[:-2] == 1) & (frame_index[2:] - frame_index[1:-1] == 1)
    values = landmark_smoothness(landmarks.double())
    valid = consecutive & torch.isfinite(values)
    if not bool(valid.any()):
        return float("nan"), 0
    return float(values[valid].mean()), int(valid.sum())


class LandmarkMetrics(BackendMetric):
    """AKD (+ detection rate) and SMS (prediction and ground truth) with one landmark backend.

    Args:
        backend: a backend name (``"dlib68"``, ``"mediapipe478"``, ``"fan68"``, ``"animzoo70"``)
            or a :class:`~animzoo.metrics.backends.LandmarkBackend` instance.
        backend_kwargs: passed to :func:`~animzoo.metrics.backends.landmark_backend`.
        eval_size: when set, landmarks are rescaled to an ``eval_size``-pixel frame before
            any distance (e.g. 256, FOMM's resolution); default None: the frame size.

    ``update(prediction, target, video_id, frame_index)`` with ``B x 3 x H x W`` frames in [0, 1];
    ``compute()`` -> ``{akd@b, akd_detected@b, akd_gt_missing@b, sms@b, sms_gt@b}``
    (see the module docstring for the exact formulas); ``per_video()`` -> ``{video_key: {...}}``.
    """

    full_state_update = False
    is_differentiable = False
    higher_is_better = False

    def __init__(self, backend: str | LandmarkBackend = "dlib68", backend_kwargs: dict[str, Any] | None = None,
                 eval_size: int | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if isinstance(backend, str):
            backend = landmark_backend(backend, **(backend_kwargs or {}))
        self._attach_backend(backend)
        self.eval_size = int(eval_size) if eval_size is not None else None
        self.add_state("keys", default=[], dist_reduce_fx="cat")
        self.add_state("pred_landmarks", default=[], dist_reduce_fx="cat")
        self.add_state("target_landmarks", default=[], dist_reduce_fx="cat")
        self.add_state("sizes", default=[], dist_reduce_fx="cat")  # N x 2 (H, W) of each frame

    @property
    def output_names(self) -> list[str]:
        b = self.backend_name
        return [f"akd@{b}", f"akd_detected@{b}", f"akd_gt_missing@{b}", f"sms@{b}", f"sms_gt@{b}"]

    def update(self, prediction: Tensor, target: Tensor, video_id: Sequence[str] | str,
               frame_index: Tensor | Sequence[int] | int) -> None:
        """Detect landmarks on ``prediction`` and ``target`` (``B x 3 x H x W`` in [0, 1]) and store them."""
        keys = batch_keys("LandmarkMetrics", prediction, target, video_id, frame_index, device=self.device)
        if not self.backend.available:
            return  # NaN at compute; status says why
        b, _, h, w = prediction.shape
        pred = self.backend.detect(prediction.detach()).float().to(self.device)
        gt = self.backend.detect(target.detach()).float().to(self.device)
        self.keys.append(keys)
        self.pred_landmarks.append(pred)
        self.target_landmarks.append(gt)
        self.sizes.append(torch.tensor([[h, w]], dtype=torch.long, device=self.device).expand(b, 2))

    def _frames(self) -> tuple[Tensor, Tensor, Tensor] | None:
        """De-duplicated ``(keys N x 2, pred N x K x 2, gt N x K x 2)`` at the evaluation resolution."""
        if isinstance(self.keys, list) and not self.keys:
            return None
        keys, pred, gt, sizes = deduplicate(
            dim_zero_cat(self.keys).reshape(-1, 2), dim_zero_cat(self.pred_landmarks).double(),
            dim_zero_cat(self.target_landmarks).double(), dim_zero_cat(self.sizes).reshape(-1, 2),
        )
        if self.eval_size is not None:
            s = self.eval_size
            # per axis p' = p (S - 1) / (n - 1): animzoo's align_corners=True pixel convention
            scale = (s - 1) / (sizes.flip(1).double() - 1).clamp_min(1)  # N x 2 as (x: W, y: H)
            pred, gt = pred * scale[:, None, :], gt * scale[:, None, :]
        return keys, pred, gt

    @staticmethod
    def _summary(keys: Tensor, pred: Tensor, gt: Tensor) -> dict[str, float]:
        pred_ok = torch.isfinite(pred).flatten(1).all(1)
        gt_ok = torch.isfinite(gt).flatten(1).all(1)
        both = pred_ok & gt_ok
        n_gt = int(gt_ok.sum())
        akd = float(akd_per_frame(pred[both], gt[both]).mean()) if bool(both.any()) else float("nan")
        detected = float(both.sum()) / n_gt if n_gt else float("nan")
        sms_pred, sms_gt = [], []
        for index, rows in group_by_video(keys, torch.arange(keys.shape[0], device=keys.device)).values():
            v_pred, n_pred = sms_of_video(index, pred[rows])
            v_gt, n_gt_v = sms_of_video(index, gt[rows])
            if n_pred:
                sms_pred.append(v_pred)
            if n_gt_v:
                sms_gt.append(v_gt)
        mean = lambda xs: sum(xs) / len(xs) if xs else float("nan")
        return {"akd": akd, "akd_detected": detected, "akd_gt_missing": float((~gt_ok).sum()),
                "sms": mean(sms_pred), "sms_gt": mean(sms_gt)}

    def compute(self) -> dict[str, Tensor]:
        b = self.backend_name
        frames = self._frames()
        if frames is None:
            return {name: torch.tensor(float("nan"), device=self.device) for name in self.output_names}
        values = self._summary(*frames)
        return {f"{k}@{b}": torch.tensor(v, dtype=torch.float32, device=self.device) for k, v in values.items()}

    def per_video(self) -> dict[int, dict[str, float]]:
        """``{video_key: {akd@b, akd_detected@b, akd_gt_missing@b, sms@b, sms_gt@b}}`` of each video."""
        frames = self._frames()
        if frames is None:
            return {}
        keys, pred, gt = frames
        b = self.backend_name
        out: dict[int, dict[str, float]] = {}
        for video, (_, rows) in group_by_video(keys, torch.arange(keys.shape[0], device=keys.device)).items():
            values = self._summary(keys[rows], pred[rows], gt[rows])
            out[video] = {f"{k}@{b}": v for k, v in values.items()}
        return out


#: the name ``animzoo.metrics.suite`` registers as ``"akd"``
KeypointMetrics = LandmarkMetrics
