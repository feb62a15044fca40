"""``LandmarkDetectorModule``: trains :class:`LandmarkDetector` through ``animzoo fit``.

Loss (per frame of every training pair, source and driving alike, summed over the stacks with
``intermediate_weight`` on all but the last)::

    L = d(DSNT coordinates, ground truth)                  (regression_loss: euclidean | l1, normalised units)
      + js_weight * JS(heatmap || Gaussian(ground truth, js_sigma cells))      (DSNT paper's regulariser)
      + registration_weight * SBR                           (supervision-by-registration, Dong et al.)

SBR: the detections of the source frame ``t`` are tracked into the driving frame ``t + gap`` (the
datamodule's ``max_frame_gap`` keeps the pair close) by a pyramidal Lucas-Kanade in torch; the
tracked points should coincide with the driving frame's detections. Tracks that fail the
forward-backward check (back-tracked point farther than ``fb_threshold`` px from its start) are
discarded. With ``detach_flow`` the optical-flow displacement is a constant (the images are data),
so the loss moves the detections of both frames to agree with the flow: ``tracked = p_t +
stopgrad(LK(p_t) - p_t)``.

Validation / test (reconstruction protocol: whole test videos frame by frame): NME (inter-ocular)
and SMS (paper 001 eq. 9, pixels) of the detections, with the SMS of the ground truth
(``sms_gt``) as the floor the data itself sets; logged as ``val/nme``, ``val/sms``,
``val/sms_gt`` (``test/...`` under ``animzoo test``).
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from lightning.pytorch import LightningModule
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import Tensor

from animzoo.geometry.grid import normalized_to_pixel, pixel_to_normalized
from animzoo.perception.landmarks.dsnt import gaussian_targets, js_divergence
from animzoo.perception.landmarks.evaluation import LandmarkSequenceMetric
from animzoo.perception.landmarks.torch_model import LandmarkDetector
from animzoo.perception.landmarks.tracking import track_forward_backward
from animzoo.registry import register_method

__all__ = ["LandmarkDetectorModule", "default_optimizer"]

_REGISTRATION_DEFAULTS: dict[str, Any] = {
    "levels": 3, "window": 7, "iterations": 5, "fb_threshold": 1.0, "detach_flow": True,
}


def default_optimizer(params: Any) -> torch.optim.Optimizer:
    """Adam, lr 1e-3."""
    return torch.optim.Adam(params, lr=1e-3)


@register_method("landmark_detector")
class LandmarkDetectorModule(LightningModule):
    """Hourglass + DSNT landmark detector with the registration loss (paper 001 sec. 3.3).

    Args:
        detector: :class:`LandmarkDetector` kwargs (``num_landmarks``, ``num_stacks``, ``depth``,
            ``channels``, ``num_blocks``, ``heatmap_stride``, ``input_size``).
        regression_loss: ``"euclidean"`` (DSNT paper) or ``"l1"``, on normalised coordinates.
        intermediate_weight: weight of the losses of all stacks but the last.
        js_weight: Jensen-Shannon heatmap regulariser weight (0 disables).
        js_sigma: its target Gaussian's standard deviation in heatmap cells.
        registration_weight: SBR weight (0 disables).
        registration_start_step: training step from which SBR is on (detections first learn
            from the labels, as SBR fine-tunes a trained detector).
        registration: Lucas-Kanade settings ``levels``, ``window``, ``iterations`` and the
            SBR settings ``fb_threshold`` (pixels), ``detach_flow``.
        input_size: training frame size (the detector resizes other sizes to it; recorded in the
            pretrained config). Not `image_size`: that is the datamodule's key and LightningCLI
            refuses equal hyper-parameter names with different values.
        optimizer: optimiser factory (default Adam 1e-3).
        scheduler: LR scheduler factory, stepped per epoch.
    """

    requires: ClassVar[frozenset[str]] = frozenset({"landmarks"})
    method_name: ClassVar[str | None] = None

    def __init__(
        self,
        detector: dict[str, Any] | None = None,
        regression_loss: str = "euclidean",
        intermediate_weight: float = 1.0,
        js_weight: float = 1.0,
        js_sigma: float = 1.0,
        registration_weight: float = 0.0,
        registration_start_step: int = 0,
        registration: dict[str, Any] | None = None,
        input_size: int = 64,
        optimizer: OptimizerCallable = default_optimizer,
        scheduler: LRSchedulerCallable | None = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["optimizer", "scheduler"])
        if regression_loss not in ("euclidean", "l1"):
            raise ValueError(f"regression_loss must be 'euclidean' or 'l1', got {regression_loss!r}")
        unknown = set(registration or {}) - set(_REGISTRATION_DEFAULTS)
        if unknown:
            raise ValueError(f"registration: unknown keys {sorted(unknown)}; known: {sorted(_REGISTRATION_DEFAULTS)}")
        self.detector = LandmarkDetector(**{"input_size": input_size, **(detector or {})})
        self.regression_loss = regression_loss
        self.intermediate_weight = float(intermediate_weight)
        self.js_weight = float(js_weight)
        self.js_sigma = float(js_sigma)
        self.registration_weight = float(registration_weight)
        self.registration_start_step = int(registration_start_step)
        self.registration = {**_REGISTRATION_DEFAULTS, **(registration or {})}
        self.image_size = int(input_size)  # read by animzoo.hub (pretrained config)
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        self.val_metric = LandmarkSequenceMetric()
        self.test_metric = LandmarkSequenceMetric()

    @property
    def num_landmarks(self) -> int:
        return self.detector.num_landmarks

    def forward(self, frames: Tensor) -> dict[str, Any]:
        """See :meth:`LandmarkDetector.forward`."""
        return self.detector(frames)

    # ------------------------------------------------------------------ losses

    def _distance(self, prediction: Tensor, target: Tensor) -> Tensor:
        if self.regression_loss == "l1":
            return (prediction - target).abs().sum(-1).mean()
        return (prediction - target).norm(dim=-1).mean()

    def supervised_loss(self, out: dict[str, Any], target: Tensor, size: tuple[int, int]) -> tuple[Tensor, dict[str, Tensor]]:
        """Regression (+ JS) loss over the stacks; ``target`` ``B x K x 2`` normalised."""
        stacks = len(out["stack_landmarks"])
        regression = target.new_zeros(())
        js = target.new_zeros(())
        gauss = None
        for i, (points, heatmap) in enumerate(zip(out["stack_landmarks"], out["stack_heatmaps"])):
            weight = 1.0 if i == stacks - 1 else self.intermediate_weight
            regression = regression + weight * self._distance(points, target)
            if self.js_weight > 0:
                if gauss is None:
                    gauss = gaussian_targets(target, heatmap.shape[-2:], size, self.js_sigma)
                js = js + weight * js_divergence(heatmap, gauss).mean()
        return regression + self.js_weight * js, {"regression": regression.detach(), "js": js.detach()}

    def registration_loss(self, image0: Tensor, image1: Tensor, points0: Tensor, points1: Tensor) -> tuple[Tensor, Tensor]:
        """SBR: track ``points0`` (normalised detections in ``image0``) into ``image1`` and compare
        with ``points1``; returns ``(loss in normalised units, share of reliable tracks)``."""
        size = (int(image0.shape[-2]), int(image0.shape[-1]))
        lk = {k: self.registration[k] for k in ("levels", "window", "iterations")}
        start = normalized_to_pixel(points0, size)
        if self.registration["detach_flow"]:
            with torch.no_grad():  # the flow is a constant: no graph through the tracker
                tracked, fb_error = track_forward_backward(image0, image1, start.detach(), **lk)
            tracked = start + (tracked - start.detach())
        else:
            tracked, fb_error = track_forward_backward(image0.detach(), image1.detach(), start, **lk)
        reliable = (fb_error < float(self.registration["fb_threshold"])).to(points0.dtype).detach()
        distance = (pixel_to_normalized(tracked, size) - points1).norm(dim=-1)
        loss = (distance * reliable).sum() / reliable.sum().clamp(min=1.0)
        return loss, reliable.mean()

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:
        source, driving = batch["source"], batch["driving"]
        batch_size = int(source.shape[0])
        size = (int(source.shape[-2]), int(source.shape[-1]))
        frames = torch.cat([source, driving])
        target = torch.cat([batch["source_landmarks"], batch["driving_landmarks"]]).to(frames.dtype)
        out = self.detector(frames)
        loss, logs = self.supervised_loss(out, target, size)
        if self.registration_weight > 0 and self.global_step >= self.registration_start_step:
            points0, points1 = out["landmarks"].split(batch_size)
            sbr, reliable = self.registration_loss(source, driving, points0, points1)
            loss = loss + self.registration_weight * sbr
            logs.update(registration=sbr.detach(), reliable_tracks=reliable)
        with torch.no_grad():
            pixels = (out["landmarks"] - target).norm(dim=-1).mean() * (size[1] - 1) / 2
        logs["error_px"] = pixels
        self.log("train/loss", loss.detach(), prog_bar=True, on_step=True, on_epoch=True, batch_size=batch_size)
        for key, value in logs.items():
            self.log(f"train/{key}", value, on_step=True, on_epoch=True, batch_size=batch_size)
        return loss

    # ------------------------------------------------------------------ evaluation

    def _evaluate(self, batch: dict[str, Any], metric: LandmarkSequenceMetric) -> None:
        has_gt = batch.get("has_ground_truth", True)
        has_gt = bool(has_gt.all()) if isinstance(has_gt, Tensor) else bool(has_gt)
        if not has_gt or "driving_landmarks" not in batch:
            return  # cross-identity chunks: no landmarks of the frames shown
        frames = batch["driving"]
        size = (int(frames.shape[-2]), int(frames.shape[-1]))
        prediction = self.detector.detect(frames)
        target = normalized_to_pixel(batch["driving_landmarks"].float(), size)
        metric.update(prediction, target, batch["video_id"], batch["frame_index"])

    def validation_step(self, batch: dict[str, Any], batch_idx: int, dataloader_idx: int = 0) -> None:
        self._evaluate(batch, self.val_metric)

    def test_step(self, batch: dict[str, Any], batch_idx: int, dataloader_idx: int = 0) -> None:
        self._evaluate(batch, self.test_metric)

    def _log_metric(self, prefix: str, metric: LandmarkSequenceMetric) -> None:
        values = metric.compute()
        for key, value in values.items():
            self.log(f"{prefix}/{key}", value.float(), prog_bar=key == "nme", sync_dist=False)
        metric.reset()

    def on_validation_epoch_end(self) -> None:
        self._log_metric("val", self.val_metric)

    def on_test_epoch_end(self) -> None:
        self._log_metric("test", self.test_metric)

    def predict_step(self, batch: dict[str, Any], batch_idx: int, dataloader_idx: int = 0) -> dict[str, Any]:
        """``{"landmarks": N x K x 2 pixels, "video_id", "frame_index"}`` (on the CPU)."""
        return {"landmarks": self.detector.detect(batch["driving"]).cpu(),
                "video_id": batch["video_id"], "frame_index": batch["frame_index"].cpu()}

    # ------------------------------------------------------------------ optimisation

    def configure_optimizers(self) -> Any:
        optimizer = self.optimizer_factory(self.parameters())
        if self.scheduler_factory is None:
            return optimizer
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": self.scheduler_factory(optimizer), "interval": "epoch"}}


