"""CSIM and identity AED: how well a prediction keeps the identity, with one identity backend.

:class:`IdentityMetrics` embeds each predicted and ground-truth frame (and the source image when
``update`` gets ``source=``) with an identity backend (:mod:`animzoo.metrics.backends`: L2-
normalised ``D``-d embeddings, NaN rows where no face was found), stores them with the frame's
``(video_id, frame_index)`` key and computes, after de-duplication (``<b>``: backend name):

``csim@<b>``
    Reconstruction CSIM: ``mean_t cos(e(G_t), e(P_t)) = mean_t <e(G_t), e(P_t)>`` over the frames
    where both the ground truth ``G_t`` and the prediction ``P_t`` have a face, pooled over videos.
``aed_id@<b>``
    Identity AED: ``mean_t || e(G_t) - e(P_t) ||_2`` over the same frames: the **Euclidean**
    distance of the **L2-normalised** embeddings (``= sqrt(2 - 2 cos)``, in [0, 2]).
    FOMM's final ``cmp.py`` uses the *squared* L2 distance of *un-normalised* OpenFace
    embeddings of whole, unaligned 96 x 96 frames; its value depends on that network's
    embedding scale, so it cannot be reproduced with any other backbone, and the backends here
    all answer normalised embeddings (the protocol). We keep FOMM's per-frame-then-mean layout and
    an L2 distance, and normalise so numbers are bounded and comparable across runs of one
    backbone. Do not compare ``aed_id`` with FOMM's published AED values.
``csim_detected@<b>``
    ``#{t: G_t and P_t have a face} / #{t: G_t has a face}``; frames without a ground-truth face
    are excluded from both (their number: ``csim_gt_missing@<b>``).
``csim_src@<b>`` (only when ``source`` was given to ``update``)
    Cross-identity CSIM: ``mean_t cos(e(S), e(P_t))`` over the frames where the source ``S`` and
    ``P_t`` have a face (``csim_src_detected@<b>`` likewise).

Missing backends: the metric constructs, ``update`` is a no-op and every key is NaN; ``status``
says what is missing and how to get it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor
from torchmetrics.utilities import dim_zero_cat

from animzoo.metrics.backends import BackendMetric, IdentityBackend, identity_backend
from animzoo.metrics.pixel import batch_keys, deduplicate, group_by_video

__all__ = ["IdentityMetrics"]


def _embed_sources(backend: IdentityBackend, source: Tensor) -> Tensor:
    """Embed a batch of sources, once per distinct image (a batch usually repeats one source)."""
    if source.shape[0] > 1 and bool((source == source[:1]).all()):
        return backend.embed(source[:1]).expand(source.shape[0], -1)
    return backend.embed(source)


class IdentityMetrics(BackendMetric):
    """CSIM, identity AED and detection rate (plus cross-identity CSIM when sources are given).

    Args:
        backend: ``"dlib128"``, ``"arcface"``, ``"animzoo"`` or an
            :class:`~animzoo.metrics.backends.IdentityBackend` instance.
        backend_kwargs: passed to :func:`~animzoo.metrics.backends.identity_backend`.

    ``update(prediction, target, video_id, frame_index, source=None)``: ``B x 3 x H x W`` frames
    in [0, 1]; ``source`` ``B x 3 x H x W`` (or ``3 x H x W`` / ``1 x 3 x H x W`` for all frames).
    """

    full_state_update = False
    is_differentiable = False
    higher_is_better = True

    def __init__(self, backend: str | IdentityBackend = "dlib128", backend_kwargs: dict[str, Any] | None = None,
                 **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if isinstance(backend, str):
            backend = identity_backend(backend, **(backend_kwargs or {}))
        self._attach_backend(backend)
        self.add_state("keys", default=[], dist_reduce_fx="cat")
        self.add_state("pred_embeddings", default=[], dist_reduce_fx="cat")
        self.add_state("target_embeddings", default=[], dist_reduce_fx="cat")
        self.add_state("source_embeddings", default=[], dist_reduce_fx="cat")
        self.add_state("has_source", default=[], dist_reduce_fx="cat")  # N float 0/1: was a source given

    @property
    def output_names(self) -> list[str]:
        b = self.backend_name
        return [f"csim@{b}", f"aed_id@{b}", f"csim_detected@{b}", f"csim_gt_missing@{b}"]

    def update(self, prediction: Tensor, target: Tensor, video_id: Sequence[str] | str,
               frame_index: Tensor | Sequence[int] | int, source: Tensor | None = None) -> None:
        """Embed ``prediction``, ``target`` (and ``source``) and store the embeddings."""
        keys = batch_keys("IdentityMetrics", prediction, target, video_id, frame_index, device=self.device)
        if not self.backend.available:
            return
        b = prediction.shape[0]
        pred = self.backend.embed(prediction.detach()).float().to(self.device)
        gt = self.backend.embed(target.detach()).float().to(self.device)
        if source is not None:
            source = source.detach()
            if source.dim() == 3:
                source = source[None]
            if source.shape[0] == 1 and b > 1:
                source = source.expand(b, -1, -1, -1)
            if source.shape[0] != b:
                raise ValueError(f"{source.shape[0]} sources for {b} frames")
            src = _embed_sources(self.backend, source).float().to(self.device)
        else:
            src = torch.full_like(pred, float("nan"))
        self.keys.append(keys)
        self.pred_embeddings.append(pred)
        self.target_embeddings.append(gt)
        self.source_embeddings.append(src)
        self.has_source.append(torch.full((b,), float(source is not None), device=self.device))  # float: gloo-safe

    def _frames(self) -> tuple[Tensor, ...] | None:
        if isinstance(self.keys, list) and not self.keys:
            return None
        return deduplicate(
            dim_zero_cat(self.keys).reshape(-1, 2), dim_zero_cat(self.pred_embeddings).double(),
            dim_zero_cat(self.target_embeddings).double(), dim_zero_cat(self.source_embeddings).double(),
            dim_zero_cat(self.has_source) > 0.5,
        )

    @staticmethod
    def _summary(pred: Tensor, gt: Tensor, src: Tensor, has_src: Tensor) -> dict[str, float]:
        pred_ok = torch.isfinite(pred).all(1)
        gt_ok = torch.isfinite(gt).all(1)
        both = pred_ok & gt_ok
        n_gt = int(gt_ok.sum())
        nan = float("nan")
        out = {
            "csim": float((pred[both] * gt[both]).sum(1).mean()) if bool(both.any()) else nan,
            "aed_id": float((pred[both] - gt[both]).norm(dim=1).mean()) if bool(both.any()) else nan,
            "csim_detected": float(both.sum()) / n_gt if n_gt else nan,
            "csim_gt_missing": float((~gt_ok).sum()),
        }
        if bool(has_src.any()):
            src_ok = has_src & torch.isfinite(src).all(1)
            pair = src_ok & pred_ok
            n_src = int(src_ok.sum())
            out["csim_src"] = float((pred[pair] * src[pair]).sum(1).mean()) if bool(pair.any()) else nan
            out["csim_src_detected"] = float(pair.sum()) / n_src if n_src else nan
        return out

    def compute(self) -> dict[str, Tensor]:
        b = self.backend_name
        frames = self._frames()
        if frames is None:
            return {name: torch.tensor(float("nan"), device=self.device) for name in self.output_names}
        values = self._summary(*frames[1:])
        return {f"{k}@{b}": torch.tensor(v, dtype=torch.float32, device=self.device) for k, v in values.items()}

    def per_video(self) -> dict[int, dict[str, float]]:
        """``{video_key: {csim@b, aed_id@b, csim_detected@b, ...}}`` of each video."""
        frames = self._frames()
        if frames is None:
            return {}
        keys, pred, gt, src, has_src = frames
        b = self.backend_name
        out: dict[int, dict[str, float]] = {}
        for video, (_, rows) in group_by_video(keys, torch.arange(keys.shape[0], device=keys.device)).items():
            values = self._summary(pred[rows], gt[rows], src[rows], has_src[rows])
            out[video] = {f"{k}@{b}": v for k, v in values.items()}
        return out
