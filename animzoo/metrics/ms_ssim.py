"""Multi-scale SSIM (Wang, Simoncelli, Bovik 2003) per frame, de-duplicated by ``(video_id, frame_index)``.

torchmetrics' conventions (``multiscale_structural_similarity_index_measure`` defaults):
5 scales with betas ``(0.0448, 0.2856, 0.3001, 0.2363, 0.1333)``, an 11 x 11 Gaussian window
(sigma 1.5), ``K1 = 0.01``, ``K2 = 0.03``, ``data_range = 1``, 2 x 2 average pooling between
scales, ``normalize="relu"`` (negative contrast terms clamp at 0 instead of giving NaN under a
fractional power). Each frame gets its own value; the metric averages distinct frames.

The coarsest scale must still hold the window: frames need ``H, W >= kernel_size * (scales - 1)^2``
(176 px with the defaults). Smaller frames are not an error: the metric reports itself unavailable
(NaN, ``status`` giving the frame size and the minimum).
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from torch import Tensor
from torchmetrics.functional.image import multiscale_structural_similarity_index_measure

from animzoo.metrics.pixel import FrameMetric

__all__ = ["MSSSIM", "MS_SSIM", "MS_SSIM_BETAS", "ms_ssim_min_size"]

MS_SSIM_BETAS: tuple[float, ...] = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)


def ms_ssim_min_size(kernel_size: int = 11, scales: int = len(MS_SSIM_BETAS)) -> int:
    """Smallest frame side MS-SSIM accepts: ``max(kernel * max(1, scales - 1)^2, 2^scales)`` (176)."""
    return max(kernel_size * max(1, scales - 1) ** 2, 2**scales)


class MSSSIM(FrameMetric):
    """MS-SSIM of each frame (``ms_ssim``), ``data_range = 1``; higher is better.

    Args:
        kernel_size: Gaussian window size (default 11).
        sigma: Gaussian sigma (default 1.5).
        betas: scale weights (default the 5 of Wang et al. 2003).
        normalize: torchmetrics' ``normalize`` (default ``"relu"``, torchmetrics' default).
    """

    higher_is_better = True
    output_name = "ms_ssim"

    def __init__(self, kernel_size: int = 11, sigma: float = 1.5, betas: tuple[float, ...] = MS_SSIM_BETAS,
                 normalize: Literal["relu", "simple"] | None = "relu", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.kernel_size = int(kernel_size)
        self.sigma = float(sigma)
        self.betas = tuple(float(b) for b in betas)
        self.normalize = normalize
        self.min_size = ms_ssim_min_size(self.kernel_size, len(self.betas))
        self._ok_status = (f"ok: torchmetrics multiscale SSIM, {len(self.betas)} scales, {self.kernel_size}x"
                           f"{self.kernel_size} Gaussian (sigma {self.sigma}), data_range 1")
        self.status = self._ok_status

    def frame_values(self, prediction: Tensor, target: Tensor) -> Tensor:
        """``B`` MS-SSIM values of ``B x C x H x W`` frames in [0, 1]; NaN when too small."""
        h, w = prediction.shape[-2:]
        if min(h, w) < self.min_size:
            self.status = (f"unavailable: ms_ssim needs frames of at least {self.min_size} x {self.min_size} px "
                           f"({len(self.betas)} scales, {self.kernel_size}x{self.kernel_size} window), got {h} x {w}")
            return torch.full((prediction.shape[0],), float("nan"), device=prediction.device)
        with torch.autocast(prediction.device.type, enabled=False):
            values = multiscale_structural_similarity_index_measure(
                prediction, target, gaussian_kernel=True, sigma=self.sigma, kernel_size=self.kernel_size,
                reduction="none", data_range=1.0, betas=self.betas, normalize=self.normalize,
            )
        return values.reshape(-1)

    def reset(self) -> None:
        super().reset()
        self.status = self._ok_status


#: alias (the metric's usual spelling)
MS_SSIM = MSSSIM
