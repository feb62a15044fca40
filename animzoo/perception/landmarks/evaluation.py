"""Landmark accuracy and smoothness over test videos: NME and SMS (paper 001 eq. 9).

:class:`LandmarkSequenceMetric` is a ``torchmetrics.Metric`` storing per-frame predictions and
ground truth (pixels) with their ``(video key, frame index)``; ``compute`` de-duplicates the rows
(Lightning's test loop pads and repeats samples across processes), regroups them per video in
frame order and returns NME and SMS of the predictions next to the SMS of the ground truth.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import torch
from torch import Tensor
from torchmetrics import Metric

from animzoo.geometry.keypoints import landmark_smoothness

__all__ = ["LandmarkSequenceMetric", "interocular_distance", "nme", "sms", "video_key"]

#: Outer eye corners of the iBUG 68-point layout (0-based), the usual NME normaliser.
OUTER_EYE_CORNERS = (36, 45)


def interocular_distance(landmarks: Tensor) -> Tensor:
    """``N x K x 2`` pixels -> ``N`` distances between iBUG points 36 and 45 (outer eye corners);
    for fewer than 46 points, the square root of the bounding-box area."""
    if landmarks.shape[-2] > max(OUTER_EYE_CORNERS):
        return (landmarks[..., OUTER_EYE_CORNERS[0], :] - landmarks[..., OUTER_EYE_CORNERS[1], :]).norm(dim=-1)
    extent = landmarks.amax(dim=-2) - landmarks.amin(dim=-2)
    return (extent[..., 0] * extent[..., 1]).clamp(min=0).sqrt()


def nme(prediction: Tensor, target: Tensor) -> Tensor:
    """Per-frame normalised mean error: mean point-to-point distance / inter-ocular distance.

    Args:
        prediction, target: ``N x K x 2`` pixel coordinates.

    Returns:
        ``N`` values (unitless).
    """
    return (prediction - target).norm(dim=-1).mean(dim=-1) / interocular_distance(target).clamp(min=1e-6)


# Paper 001 eq. 9, shared with the metrics' SMS (animzoo.metrics.keypoints).
sms = landmark_smoothness


def video_key(video_id: str) -> int:
    """A stable 62-bit integer for a video name (the same in every process)."""
    return int.from_bytes(hashlib.sha1(video_id.encode()).digest()[:8], "big") >> 2


class LandmarkSequenceMetric(Metric):
    """NME and SMS of predicted landmark sequences vs ground truth, computed per test video.

    ``update(prediction, target, video_id, frame_index)`` with ``N x K x 2`` pixel coordinates;
    ``compute()`` -> ``{"nme", "sms", "sms_gt", "frames"}``: NME averaged over frames, SMS averaged
    over the interior frames of every video (triplets of consecutive frame indices only).
    """

    full_state_update = False

    def __init__(self, **kwargs: object) -> None:
        super().__init__(**kwargs)
        self.add_state("keys", default=[], dist_reduce_fx="cat")
        self.add_state("predictions", default=[], dist_reduce_fx="cat")
        self.add_state("targets", default=[], dist_reduce_fx="cat")

    def update(self, prediction: Tensor, target: Tensor, video_id: Sequence[str] | str,
               frame_index: Tensor | Sequence[int] | int) -> None:
        n = int(prediction.shape[0])
        ids = [video_id] * n if isinstance(video_id, str) else list(video_id)
        frames = torch.as_tensor(frame_index, dtype=torch.long).reshape(-1).expand(n) if not isinstance(
            frame_index, Tensor) or frame_index.numel() == 1 else frame_index.reshape(-1).long()
        keys = torch.stack([torch.tensor([video_key(v) for v in ids], dtype=torch.long), frames.cpu()], dim=1)
        self.keys.append(keys.to(self.device))
        self.predictions.append(prediction.detach().float())
        self.targets.append(target.detach().float())

    def compute(self) -> dict[str, Tensor]:
        def cat(state: Tensor | list[Tensor]) -> Tensor:
            return torch.cat(state) if isinstance(state, list) else state

        if not self.keys:
            nan = torch.tensor(float("nan"), device=self.device)
            return {"nme": nan, "sms": nan, "sms_gt": nan, "frames": torch.tensor(0.0, device=self.device)}
        keys, pred, gt = cat(self.keys), cat(self.predictions), cat(self.targets)
        # De-duplicate by (video, frame) and sort: unique() sorts rows lexicographically.
        unique, inverse = torch.unique(keys, dim=0, return_inverse=True)
        first = torch.full((unique.shape[0],), keys.shape[0], dtype=torch.long, device=keys.device)
        first = first.scatter_reduce(0, inverse, torch.arange(keys.shape[0], device=keys.device), reduce="amin")
        keys, pred, gt = keys[first], pred[first], gt[first]
        frame_nme = nme(pred, gt)
        terms_pred, terms_gt = [], []
        for video in torch.unique(keys[:, 0]):
            rows = keys[:, 0] == video
            index = keys[rows, 1]
            p, g = pred[rows], gt[rows]
            consecutive = (index[1:-1] - index[:-2] == 1) & (index[2:] - index[1:-1] == 1)
            terms_pred.append(sms(p)[consecutive])
            terms_gt.append(sms(g)[consecutive])
        s_pred, s_gt = torch.cat(terms_pred), torch.cat(terms_gt)
        return {
            "nme": frame_nme.mean(),
            "sms": s_pred.mean() if s_pred.numel() else torch.tensor(float("nan"), device=self.device),
            "sms_gt": s_gt.mean() if s_gt.numel() else torch.tensor(float("nan"), device=self.device),
            "frames": torch.tensor(float(keys.shape[0]), device=self.device),
        }
