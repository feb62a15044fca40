"""``IdentityEmbedderModule``: trains :class:`IdentityEmbedder` with the ArcFace loss via ``animzoo fit``.

Training: both frames of every training pair (two frames of one clip, so one identity) are
embedded and classified among the TRAINING identities with ArcFace logits and cross-entropy.
The identities are read from the datamodule's training set at ``setup`` (``num_classes`` and
their names go into the hyper-parameters, so checkpoints and pretrained folders rebuild the head).

Validation / test: the split is by identity, so the test identities are unseen; every 4th frame
of each test video is embedded and verified pairwise: ``cos_same`` (same identity, other clip),
``cos_diff`` (different identities), ``eer`` and ``verification_acc`` (``val/...``, ``test/...``).
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from lightning.pytorch import LightningModule
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import Tensor

from animzoo.errors import AnimzooInputError
from animzoo.perception.identity.evaluation import IdentityVerificationMetric
from animzoo.perception.identity.torch_model import ArcFaceHead, IdentityEmbedder
from animzoo.registry import register_method

__all__ = ["IdentityEmbedderModule", "default_optimizer"]


def default_optimizer(params: Any) -> torch.optim.Optimizer:
    """AdamW, lr 2e-3, weight decay 5e-4."""
    return torch.optim.AdamW(params, lr=2e-3, weight_decay=5e-4)


@register_method("identity_embedder")
class IdentityEmbedderModule(LightningModule):
    """Identity embedder trained with an additive angular margin (ArcFace) loss.

    Args:
        embedder: :class:`IdentityEmbedder` kwargs (``dim``, ``backbone``, ``backbone_kwargs``,
            ``dropout``).
        scale: ArcFace scale ``s``.
        margin: ArcFace angular margin ``m`` (radians).
        margin_warmup_steps: the margin grows linearly from 0 to ``margin`` over these training
            steps (a randomly initialised network cannot meet the full margin at first, and
            the loss then stalls; 0 = full margin from the start).
        num_classes: training identities; None = read from the data at ``setup("fit")``.
        class_names: their names (identity labels), set with ``num_classes``.
        input_size: training frame size.
        random_crop: training frames are cropped to a random square of side ``1 - u`` of the
            frame, ``u`` uniform in ``[0, random_crop]``, at a random position, and resized back
            (framing jitter on the device; 0 = off).
        aligner_weights: with ``embedder.face_crop``, where the aligner's weights come from at
            ``setup("fit")``: ``"shipped"`` (the landmark detector in the package), a pretrained
            folder or a ``.ckpt`` (see :func:`animzoo.perception.landmarks.load_landmark_detector`).
            Afterwards they are part of this module's state dict.
        verification_every: validation embeds every this many frames of each test video.
        optimizer, scheduler: factories (default AdamW 2e-3; no scheduler).
    """

    requires: ClassVar[frozenset[str]] = frozenset()
    method_name: ClassVar[str | None] = None

    def __init__(
        self,
        embedder: dict[str, Any] | None = None,
        scale: float = 30.0,
        margin: float = 0.3,
        margin_warmup_steps: int = 0,
        num_classes: int | None = None,
        class_names: list[str] | None = None,
        input_size: int = 64,
        random_crop: float = 0.0,
        aligner_weights: str | None = None,
        verification_every: int = 4,
        optimizer: OptimizerCallable = default_optimizer,
        scheduler: LRSchedulerCallable | None = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["optimizer", "scheduler"])
        self.embedder = IdentityEmbedder(**{"input_size": input_size, **(embedder or {})})
        self.aligner_weights = aligner_weights
        self.image_size = int(input_size)  # read by animzoo.hub (pretrained config)
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        self.head: ArcFaceHead | None = None
        self._aligner_loaded = False
        self.class_index: dict[str, int] = {}
        if num_classes is not None:
            self._build_head(int(num_classes), class_names)
        self.val_metric = IdentityVerificationMetric(every=verification_every)
        self.test_metric = IdentityVerificationMetric(every=verification_every)

    def _build_head(self, num_classes: int, class_names: list[str] | None) -> None:
        if class_names is not None and len(class_names) != num_classes:
            raise ValueError(f"class_names has {len(class_names)} names for num_classes={num_classes}")
        self.head = ArcFaceHead(num_classes, self.embedder.dim, self.hparams.scale, self.hparams.margin)
        self.class_index = {name: i for i, name in enumerate(class_names or [])}

    def setup(self, stage: str) -> None:
        if stage != "fit":
            return
        if self.embedder.aligner is not None and self.aligner_weights is not None and not self._aligner_loaded:
            from animzoo.perception.landmarks import load_landmark_detector

            source = None if self.aligner_weights == "shipped" else self.aligner_weights
            self.embedder.aligner.load_state_dict(load_landmark_detector(source).state_dict())
            self._aligner_loaded = True
        datamodule = getattr(self.trainer, "datamodule", None)
        train_set = getattr(datamodule, "train_set", None)
        if train_set is None:
            raise AnimzooInputError("IdentityEmbedderModule needs animzoo's AnimationDataModule (train_set.identities)")
        names = list(train_set.identities)
        if self.head is None:
            self._build_head(len(names), names)
            self.hparams.num_classes = len(names)  # stored in checkpoints / pretrained configs
            self.hparams.class_names = names
        elif list(self.hparams.class_names or []) != names:
            raise AnimzooInputError(
                f"this IdentityEmbedderModule was built for {self.hparams.num_classes} training identities "
                f"but the data has {len(names)} others; train a new model (model.init_args.num_classes: null)"
            )

    def forward(self, frames: Tensor) -> Tensor:
        """``B x 3 x H x W`` -> ``B x dim`` L2-normalised embeddings."""
        return self.embedder(frames)

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:
        if self.head is None:
            raise RuntimeError("setup('fit') builds the ArcFace head; fit through a Trainer")
        frames = self._random_crop(torch.cat([batch["source"], batch["driving"]]))
        labels = torch.tensor([self.class_index[name] for name in batch["identity"]], device=frames.device)
        labels = torch.cat([labels, labels])
        embeddings = self.embedder(frames)
        warmup = self.hparams.margin_warmup_steps
        self.head.margin = self.hparams.margin * (min(1.0, self.global_step / warmup) if warmup > 0 else 1.0)
        logits = self.head(embeddings, labels)
        loss = F.cross_entropy(logits, labels)
        with torch.no_grad():
            accuracy = (logits.argmax(-1) == labels).float().mean()
        batch_size = int(labels.shape[0])
        self.log("train/loss", loss.detach(), prog_bar=True, on_step=True, on_epoch=True, batch_size=batch_size)
        self.log("train/accuracy", accuracy, on_step=True, on_epoch=True, batch_size=batch_size)
        self.log("train/margin", self.head.margin, on_step=True, on_epoch=False, batch_size=batch_size)
        return loss

    def _random_crop(self, frames: Tensor) -> Tensor:
        """``B x 3 x H x W`` -> the same frames, each cropped at random and resized back."""
        amount = float(self.hparams.random_crop)
        if amount <= 0:
            return frames
        n = frames.shape[0]
        scale = 1.0 - amount * torch.rand(n, device=frames.device)
        shift = (1.0 - scale)[:, None] * (2 * torch.rand(n, 2, device=frames.device) - 1)  # crop stays inside
        theta = torch.zeros(n, 2, 3, device=frames.device, dtype=frames.dtype)
        theta[:, 0, 0] = theta[:, 1, 1] = scale
        theta[:, :, 2] = shift
        grid = F.affine_grid(theta, list(frames.shape), align_corners=True)
        return F.grid_sample(frames, grid, mode="bilinear", padding_mode="border", align_corners=True)

    def _evaluate(self, batch: dict[str, Any], metric: IdentityVerificationMetric) -> None:
        has_gt = batch.get("has_ground_truth", True)
        if not (bool(has_gt.all()) if isinstance(has_gt, Tensor) else bool(has_gt)):
            return
        metric.update(self.embedder(batch["driving"]), batch["video_id"], batch["identity"], batch["frame_index"])

    def validation_step(self, batch: dict[str, Any], batch_idx: int, dataloader_idx: int = 0) -> None:
        self._evaluate(batch, self.val_metric)

    def test_step(self, batch: dict[str, Any], batch_idx: int, dataloader_idx: int = 0) -> None:
        self._evaluate(batch, self.test_metric)

    def _log_metric(self, prefix: str, metric: IdentityVerificationMetric) -> None:
        for key, value in metric.compute().items():
            self.log(f"{prefix}/{key}", value.float(), prog_bar=key == "eer")
        metric.reset()

    def on_validation_epoch_end(self) -> None:
        self._log_metric("val", self.val_metric)

    def on_test_epoch_end(self) -> None:
        self._log_metric("test", self.test_metric)

    def configure_optimizers(self) -> Any:
        optimizer = self.optimizer_factory(self.parameters())
        if self.scheduler_factory is None:
            return optimizer
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": self.scheduler_factory(optimizer), "interval": "epoch"}}
