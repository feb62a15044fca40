"""Monkey-Net's image-to-video keypoint predictor (paper sec. 4.2, supplement sec. A).

A single-layer GRU with 1024 hidden units predicts a keypoint sequence from its first
``init_frames`` frames; the keypoints are those of a trained :class:`MonkeyNet` detector, and
the predicted sequence drives the generator from the first frame (``generate_video``).

As in the official ``prediction.py``: the input sequence is the detected keypoints with every
frame from ``init_frames`` on set to zero; the GRU's output at each frame is that frame's
prediction; the loss is L1 over the frames after ``init_frames`` on the means and (with
``kp_variance='matrix'``) the covariances. ``predict_variance=False`` (the vox setting)
replaces the predicted covariances by the last initial frame's when generating.

``MonkeyNetPredictor`` is a plain ``LightningModule`` (not a registered animation method: it
animates nothing by itself), trained on batches ``{"value": B x T x K x 2, "covariance": B x T
x K x 2 x 2}`` such as :class:`KeypointSequenceDataset` yields.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import torch
from lightning.pytorch import LightningModule
from torch import Tensor
from torch.utils.data import Dataset

from animzoo.methods.monkeynet.torch_model import KeypointSequenceGRU

__all__ = ["MonkeyNetPredictor", "KeypointSequenceDataset", "extract_keypoint_sequences"]


@torch.no_grad()
def extract_keypoint_sequences(
    model: Any, videos: Iterable[Tensor], batch_size: int = 32
) -> list[dict[str, Tensor]]:
    """Detect the keypoints of every frame of each video (T x 3 x H x W) with ``model``.

    ``model`` is a :class:`MonkeyNet` (its ``extract_motion``) or any callable frames -> keypoint
    dict. Returns one ``{"value": T x K x 2, "covariance": T x K x 2 x 2}`` per video, on the CPU.
    """
    extract = getattr(model, "extract_motion", model)
    was_training = getattr(model, "training", False)
    if hasattr(model, "eval"):
        model.eval()
    try:
        sequences = []
        for video in videos:
            parts: list[dict[str, Tensor]] = []
            for start in range(0, video.shape[0], batch_size):
                device = next(model.parameters()).device if hasattr(model, "parameters") else video.device
                kp = extract(video[start:start + batch_size].to(device))
                parts.append({k: v.detach().cpu() for k, v in kp.items() if k in ("value", "covariance")})
            sequences.append({k: torch.cat([p[k] for p in parts]) for k in parts[0]})
        return sequences
    finally:
        if was_training and hasattr(model, "train"):
            model.train()


class KeypointSequenceDataset(Dataset):
    """Windows of ``num_frames`` consecutive frames of keypoint sequences (monkey-net: 32).

    Item ``i`` is a window of sequence ``i % len(sequences)`` starting at a position drawn from
    a generator seeded by ``(seed, i)``, so epochs are reproducible.
    """

    def __init__(self, sequences: Sequence[dict[str, Tensor]], num_frames: int = 32, seed: int = 0, num_repeats: int = 1):
        usable = [s for s in sequences if s["value"].shape[0] >= num_frames]
        if not usable:
            raise ValueError(f"no keypoint sequence has at least num_frames={num_frames} frames")
        self.sequences = usable
        self.num_frames = num_frames
        self.seed = seed
        self.num_repeats = num_repeats

    def __len__(self) -> int:
        return len(self.sequences) * self.num_repeats

    def __getitem__(self, index: int) -> dict[str, Tensor]:
        seq = self.sequences[index % len(self.sequences)]
        length = seq["value"].shape[0]
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + index)
        start = int(torch.randint(0, length - self.num_frames + 1, (1,), generator=g))
        return {k: v[start:start + self.num_frames] for k, v in seq.items()}


class MonkeyNetPredictor(LightningModule):
    """GRU keypoint-sequence predictor for image-to-video generation.

    Args:
        num_kp: keypoints per frame (the detector's K).
        kp_variance: ``"matrix"`` (inputs and outputs carry covariances: K * (2 + 4) features)
            or a number (means only: K * 2).
        hidden_size, num_layers, dropout: the GRU (paper: 1024, 1, 0).
        init_frames: observed frames; the loss covers the frames after them (1).
        predict_variance: use the predicted covariances when generating (vox: False, the
            last observed covariance is repeated instead).
        lr: Adam learning rate (1e-3); ``ReduceLROnPlateau(patience=plateau_patience)`` on the
            training loss per epoch (monkey-net: patience 50).
    """

    def __init__(
        self,
        num_kp: int = 10,
        kp_variance: float | str = "matrix",
        hidden_size: int = 1024,
        num_layers: int = 1,
        dropout: float = 0.0,
        init_frames: int = 1,
        predict_variance: bool = False,
        lr: float = 1e-3,
        plateau_patience: int = 50,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        if init_frames < 1:
            raise ValueError(f"init_frames must be >= 1, got {init_frames}")
        self.use_covariance = kp_variance == "matrix"
        self.init_frames = init_frames
        self.predict_variance = predict_variance
        self.net = KeypointSequenceGRU(num_kp, self.use_covariance, hidden_size, num_layers, dropout)

    def _keys(self) -> tuple[str, ...]:
        return ("value", "covariance") if self.use_covariance else ("value",)

    def masked_input(self, kp_seq: dict[str, Tensor]) -> dict[str, Tensor]:
        """The sequence with every frame from ``init_frames`` on set to zero (the GRU's input)."""
        out = {}
        for k in self._keys():
            v = kp_seq[k].clone()
            v[:, self.init_frames:] = 0
            out[k] = v
        return out

    def forward(self, kp_seq: dict[str, Tensor]) -> dict[str, Tensor]:
        """Predict a whole sequence (B x T x ...) from its first ``init_frames`` frames.

        The observed frames are copied into the output; with ``predict_variance=False`` every
        covariance is the last observed one.
        """
        pred = self.net(self.masked_input(kp_seq))
        n = self.init_frames
        out = {}
        for k, v in pred.items():
            v = v.clone()
            v[:, :n] = kp_seq[k][:, :n]
            out[k] = v
        if self.use_covariance and not self.predict_variance:
            last = kp_seq["covariance"][:, n - 1: n]
            out["covariance"] = last.expand_as(out["covariance"]).clone()
        return out

    def loss(self, kp_seq: dict[str, Tensor]) -> Tensor:
        pred = self.net(self.masked_input(kp_seq))
        n = self.init_frames
        return sum((pred[k][:, n:] - kp_seq[k][:, n:]).abs().mean() for k in self._keys())  # type: ignore[return-value]

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        loss = self.loss(batch)
        self.log("train/l1", loss, on_step=True, on_epoch=True, prog_bar=True, batch_size=batch["value"].shape[0])
        return loss

    def validation_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        self.log("val/l1", self.loss(batch), on_epoch=True, batch_size=batch["value"].shape[0])

    def configure_optimizers(self) -> Any:
        optimizer = torch.optim.Adam(self.parameters(), lr=self.hparams.lr)
        scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, patience=self.hparams.plateau_patience)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "monitor": "train/l1_epoch", "interval": "epoch"}}

    @torch.no_grad()
    def generate_video(self, animator_model: Any, first_frame: Tensor, num_frames: int) -> Tensor:
        """Image-to-video: keypoints of ``first_frame`` (1 x 3 x H x W), predicted for
        ``num_frames`` frames, rendered by ``animator_model`` (a :class:`MonkeyNet`).

        Returns ``num_frames x 3 x H x W``.
        """
        kp0 = {k: v for k, v in animator_model.extract_motion(first_frame).items() if k in self._keys()}
        seq = {k: v[:, None].expand(v.shape[0], num_frames, *v.shape[1:]).clone() for k, v in kp0.items()}
        pred = self(seq)
        driving = {k: v[0] for k, v in pred.items()}  # T x K x ...
        out = animator_model.animate_with_motion(first_frame, kp0, driving)
        return out["prediction"]
