"""IdentityEmbedder: a small timm backbone -> L2-normalised identity embedding; the ArcFace head.

The backbone is built with ``timm.create_model(name, pretrained=False, num_classes=0)`` (never
a download); its pooled features go through a BN-FC-BN neck (as ArcFace's "E" output block) to
``dim`` numbers, L2-normalised. :class:`ArcFaceHead` holds one weight vector per training identity
and gives the additive-angular-margin logits ``s cos(theta_y + m)`` / ``s cos(theta_j)`` (Deng et
al. 2019) used only for training.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["ArcFaceHead", "IdentityEmbedder", "arcface_logits"]


class IdentityEmbedder(nn.Module):
    """Frames -> identity embeddings.

    Args:
        dim: embedding size.
        backbone: a timm model name (random init; e.g. ``resnet18``, ``mobilenetv3_small_100``).
        backbone_kwargs: extra ``timm.create_model`` kwargs (e.g. ``channels: [16, 32, 64, 128]``
            for a slim ResNet).
        input_size: frame side it was trained at; other sizes are resized to it.
        dropout: dropout before the embedding layer (training only).
        face_crop: when set, a frozen :class:`~animzoo.perception.landmarks.LandmarkDetector`
            (``aligner``, kwargs ``aligner_kwargs``; its weights are part of this module's state)
            finds the face and the backbone sees a square crop around the landmarks' bounding box,
            ``face_crop`` times its larger side, resized to ``input_size``: most of the background
            (a per-clip cue, not an identity cue) is cut away. None = whole frame.
        aligner_kwargs: :class:`LandmarkDetector` kwargs of the aligner.

    Shapes: ``B x 3 x H x W`` in [0, 1] -> ``B x dim``, unit L2 norm.
    """

    def __init__(
        self,
        dim: int = 128,
        backbone: str = "resnet18",
        backbone_kwargs: dict[str, Any] | None = None,
        input_size: int | None = 64,
        dropout: float = 0.0,
        face_crop: float | None = None,
        aligner_kwargs: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        import timm  # imported here: only this model needs it

        kwargs = dict(backbone_kwargs or {})
        if "channels" in kwargs:
            kwargs["channels"] = tuple(kwargs["channels"])
        self.dim = int(dim)
        self.input_size = input_size
        self.backbone = timm.create_model(backbone, pretrained=False, num_classes=0, **kwargs)
        features = int(self.backbone.num_features)
        self.neck = nn.Sequential(
            nn.BatchNorm1d(features), nn.Dropout(dropout), nn.Linear(features, self.dim), nn.BatchNorm1d(self.dim)
        )
        self.face_crop = face_crop
        self.aligner: nn.Module | None = None
        if face_crop is not None:
            from animzoo.perception.landmarks.torch_model import LandmarkDetector

            self.aligner = LandmarkDetector(**{"input_size": input_size, **(aligner_kwargs or {})})
            self.aligner.requires_grad_(False)
            self.aligner.eval()

    def train(self, mode: bool = True) -> IdentityEmbedder:
        super().train(mode)
        if self.aligner is not None:
            self.aligner.eval()  # frozen: BatchNorm statistics stay those it was trained with
        return self

    def crop_faces(self, frames: Tensor) -> Tensor:
        """``B x 3 x H x W`` -> ``B x 3 x H x W``: square crops around the detected landmarks."""
        if self.aligner is None or self.face_crop is None:
            return frames
        if self.aligner.training:
            # Lightning (>= 2.2) no longer calls .train() on the model at fit start, and restores the
            # recorded per-module modes after validation, so enforce the frozen aligner's eval mode
            # here: in train mode its BatchNorm would normalise with batch statistics and drift.
            self.aligner.eval()
        with torch.no_grad():
            points = self.aligner.detect_normalized(frames)  # B x K x 2 in [-1, 1]
        low, high = points.amin(dim=1), points.amax(dim=1)
        centre = 0.5 * (low + high)
        half = 0.5 * (high - low).amax(dim=-1) * self.face_crop  # normalised half side
        theta = torch.zeros(frames.shape[0], 2, 3, dtype=frames.dtype, device=frames.device)
        theta[:, 0, 0] = theta[:, 1, 1] = half
        theta[:, :, 2] = centre
        grid = F.affine_grid(theta, list(frames.shape), align_corners=True)
        return F.grid_sample(frames, grid, mode="bilinear", padding_mode="border", align_corners=True)

    def forward(self, frames: Tensor) -> Tensor:
        """``B x 3 x H x W`` in [0, 1] -> ``B x dim`` L2-normalised embeddings."""
        if self.input_size is not None and tuple(frames.shape[-2:]) != (self.input_size, self.input_size):
            frames = F.interpolate(frames, size=(self.input_size, self.input_size), mode="bilinear",
                                   align_corners=True, antialias=bool(min(frames.shape[-2:]) > self.input_size))
        features = self.backbone(self.crop_faces(frames) * 2.0 - 1.0)
        return F.normalize(self.neck(features), dim=-1)

    def embed(self, frames: Tensor) -> Tensor:
        """Alias of :meth:`forward` (the metrics' ``IdentityBackend.embed``)."""
        return self(frames)


def arcface_logits(embeddings: Tensor, weight: Tensor, labels: Tensor, scale: float, margin: float) -> Tensor:
    """Additive angular margin logits.

    ``logit_j = s cos(theta_j)`` for ``j != y`` and ``s cos(theta_y + m)`` for the label ``y``,
    ``theta_j`` the angle between the embedding and class ``j``'s weight. Past ``theta_y = pi - m``
    the margin would make the logit grow again, so there the target logit is ``s (cos theta_y -
    m sin m)`` (insightface's monotonic continuation).

    Args:
        embeddings: ``B x D`` (normalised here).
        weight: ``C x D`` class weights (normalised here).
        labels: ``B`` long class indices.

    Returns:
        ``B x C`` logits.
    """
    cosine = F.linear(F.normalize(embeddings, dim=-1), F.normalize(weight, dim=-1)).clamp(-1.0 + 1e-7, 1.0 - 1e-7)
    sine = torch.sqrt(1.0 - cosine**2)
    phi = cosine * math.cos(margin) - sine * math.sin(margin)  # cos(theta + m)
    phi = torch.where(cosine > math.cos(math.pi - margin), phi, cosine - margin * math.sin(margin))
    one_hot = F.one_hot(labels, num_classes=weight.shape[0]).bool()
    return scale * torch.where(one_hot, phi, cosine)


class ArcFaceHead(nn.Module):
    """One weight vector per training identity; ``forward(embeddings, labels)`` -> ArcFace logits."""

    def __init__(self, num_classes: int, dim: int = 128, scale: float = 30.0, margin: float = 0.3) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(num_classes, dim) / math.sqrt(dim))
        self.scale = float(scale)
        self.margin = float(margin)

    def forward(self, embeddings: Tensor, labels: Tensor) -> Tensor:
        """``B x D``, ``B`` -> ``B x C`` logits (see :func:`arcface_logits`)."""
        return arcface_logits(embeddings, self.weight, labels, self.scale, self.margin)
