"""Sparse-to-dense motion transfer as an :class:`~animzoo.methods.base.AnimationModule`.

Training (paper section 3.4, eq. 4-8) reconstructs the driving frame from the source image, the
source landmarks and the driving landmarks; one generator step on

* ``perceptual`` x the VGG19 pyramid perceptual loss (first-order-model's form of eq. 4: L1 of
  relu1_1 ... relu5_1 features over an image pyramid, one weight per layer),
* ``l1`` x L1(prediction, driving),
* ``generator_gan`` x the least-squares GAN loss ``(1 - D(T))^2`` (eq. 6),
* ``parsing`` x the parsing prior: a differentiable form of eq. 7 (below), when the weight is > 0
  (then the datamodule loads ``<video>.parsing.npy`` sidecars),

then one discriminator step ``discriminator_gan`` x ``(1 - D(driving))^2 + D(T)^2`` (eq. 5).

Parsing prior. Eq. 7 warps the source parsing map with *nearest* sampling and counts the
pixels whose label differs from the driving map: piecewise constant in the flow, so its gradient
is zero almost everywhere. We train its expectation under bilinear sampling instead: the one-hot
source map is warped bilinearly (a per-pixel label distribution ``P``) and the loss is
``1 - mean_p P(p)[D_P(p)]``, the expected fraction of mismatched labels, which equals eq. 7
wherever the flow lands on pixel centres. The paper's hard count is logged as
``train/parsing_mismatch`` (and ``val/parsing_mismatch`` when validation batches carry parsing).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar, TypedDict

import torch
import torch.nn.functional as F
from torch import Tensor

from animzoo.errors import AnimzooInputError
from animzoo.geometry.grid import grid_to_flow, pixel_to_normalized, warp
from animzoo.methods.base import AnimationModule, merge_params, nonfinite_rows
from animzoo.methods.sparse2dense.torch_model import DenseMotionNetwork, ImageGenerator
from animzoo.nn.discriminator import DiscriminatorParams, MultiScaleDiscriminator
from animzoo.nn.losses import (
    PerceptualPyramidLoss,
    lsgan_generator_loss,
)
from animzoo.registry import register_method

__all__ = [
    "DEFAULT_DENSE_MOTION",
    "DEFAULT_DISCRIMINATOR",
    "DEFAULT_GENERATOR",
    "DEFAULT_LOSS_WEIGHTS",
    "DenseMotionParams",
    "DiscriminatorParams",
    "GeneratorParams",
    "LossWeights",
    "Sparse2Dense",
    "parsing_match_loss",
    "parsing_mismatch",
]


class BranchParams(TypedDict, total=False):
    """Sizes of one motion branch."""

    block_expansion: int
    max_features: int
    num_blocks: int


class DenseMotionParams(TypedDict, total=False):
    """Recipe keys of :class:`~animzoo.methods.sparse2dense.torch_model.DenseMotionNetwork`
    (the ablation switches are top-level arguments of :class:`Sparse2Dense`)."""

    scale_factor: float
    crop_fraction: float
    mask_border: float
    coordinates: bool
    embedding_dim: int
    motion_grid: int
    global_branch: BranchParams
    local_branch: BranchParams
    local_only_landmarks: list[int] | None


class GeneratorParams(TypedDict, total=False):
    """Recipe keys of :class:`~animzoo.methods.sparse2dense.torch_model.ImageGenerator`."""

    block_expansion: int
    max_features: int
    num_down_blocks: int
    num_bottleneck_blocks: int
    mask_init: float


class LossWeights(TypedDict, total=False):
    """Loss weights (paper eq. 8 sums the terms; the scales are first-order-model's)."""

    perceptual: list[float]
    l1: float
    generator_gan: float
    discriminator_gan: float
    parsing: float


# 256 px settings: the global branch at 64 x 64 like first-order-model's dense motion, local
# branches at full resolution on 64 x 64 crops (the paper), first-order-model's generator.
DEFAULT_DENSE_MOTION: DenseMotionParams = {
    "scale_factor": 0.25, "crop_fraction": 0.25, "mask_border": 0.25, "coordinates": True,
    "embedding_dim": 256, "motion_grid": 4, "local_only_landmarks": None,
    "global_branch": {"block_expansion": 32, "max_features": 1024, "num_blocks": 5},
    "local_branch": {"block_expansion": 32, "max_features": 256, "num_blocks": 3},
}
DEFAULT_GENERATOR: GeneratorParams = {
    "block_expansion": 64, "max_features": 512, "num_down_blocks": 2, "num_bottleneck_blocks": 6, "mask_init": -4.0,
}
DEFAULT_DISCRIMINATOR: DiscriminatorParams = {
    "scales": [1.0], "block_expansion": 32, "max_features": 512, "num_blocks": 4, "sn": True, "use_instance_norm": True,
}
DEFAULT_LOSS_WEIGHTS: LossWeights = {
    "perceptual": [10.0, 10.0, 10.0, 10.0, 10.0], "l1": 10.0, "generator_gan": 1.0, "discriminator_gan": 1.0,
    "parsing": 10.0,
}



def _one_hot(labels: Tensor, num_labels: int) -> Tensor:
    """B x H x W long -> B x C x H x W float."""
    if int(labels.max()) >= num_labels or int(labels.min()) < 0:
        raise ValueError(f"parsing labels must lie in [0, {num_labels}), got [{int(labels.min())}, {int(labels.max())}]")
    return F.one_hot(labels.long(), num_labels).permute(0, 3, 1, 2).float()


def parsing_match_loss(source_parsing: Tensor, driving_parsing: Tensor, grid: Tensor, num_labels: int) -> Tensor:
    """Differentiable parsing prior: the expected fraction of mismatched labels.

    Args:
        source_parsing, driving_parsing: B x H x W long label maps.
        grid: B x H x W x 2 dense motion (where each output pixel samples the source).
        num_labels: label count C.

    Returns:
        scalar ``1 - mean_p sum_c P_c(p) [D_P(p) = c]``, ``P`` the bilinearly warped one-hot source
        map (pixels sampled outside the source count as mismatches).
    """
    probs = warp(_one_hot(source_parsing, num_labels), grid.to(torch.float32))
    target = _one_hot(driving_parsing, num_labels)
    return 1 - (probs * target).sum(dim=1).mean()


@torch.no_grad()
def parsing_mismatch(source_parsing: Tensor, driving_parsing: Tensor, grid: Tensor) -> Tensor:
    """The paper's eq. 7: the fraction of pixels where the nearest-warped source label differs
    from the driving label (not differentiable; reported, not trained). Returns a scalar."""
    warped = warp(source_parsing[:, None].float(), grid.to(torch.float32), mode="nearest", padding_mode="border")
    return (warped[:, 0].round().long() != driving_parsing.long()).float().mean()


@register_method("sparse2dense")
class Sparse2Dense(AnimationModule):
    """Sparse-to-dense motion transfer (Zhao, Wu, Guo, "Sparse to Dense Motion Transfer for Face
    Image Animation", ICCV Workshops 2021): a face image animated by facial landmarks alone.

    A dense motion generation network (global encoder-decoder with AdaIN by the source / driving
    landmark vectors and an Add_Motion layer, plus three local branches for the eyes and the
    mouth) warps the source; an image generation network refines it (residual + mask). Defaults
    are our reading of the paper at 256 px (README.md lists every choice the paper leaves open).

    Args:
        num_landmarks: landmarks per frame (70 = iBUG 68 + two pupils, the default of animzoo's
            data; 68 and the paper's 74 work with the default regions). It must equal the data's.
        num_channels: image channels (3).
        regions: local branches ``{name: [landmark indices]}`` (default: right eye + brow, left
            eye + brow, mouth of the iBUG layout).
        use_adain: AdaIN layers in the motion branches (Table 4 "no AdaIN layer" when False).
        use_add_motion: Add_Motion layers (Table 4 "no Add_Motion layer" when False).
        use_local_branches: the three local branches (Table 4 "no local motion" when False).
        motion_map_input: feed the dense motion map to the image generator with the warped
            source (the paper's final model; its Table 4 ablations use False).
        dense_motion, generator, discriminator: sub-network recipe keys (``DEFAULT_*``).
        loss_weights: :class:`LossWeights`; ``parsing > 0`` requires parsing sidecars.
        perceptual_weights: ``"vgg19"`` (the registered torchvision file), a path to a VGG19
            state dict, or ``"none"``: a pixel-pyramid L1 instead of VGG features (for machines
            without the file; recipes that use it say so).
        perceptual_scales: image pyramid of the perceptual loss.
        num_parsing_labels: label count of the parsing maps (default: animzoo's parsing labels).
        detector: the landmark backend that ``extract_motion`` (animating from a driving video)
            runs: any name of :func:`animzoo.metrics.backends.landmark_backend`; use the one the
            training landmarks came from.
        **kwargs: :class:`~animzoo.methods.base.AnimationModule` arguments.
    """

    motion_kind: ClassVar[str] = "landmarks"

    def __init__(
        self,
        *,
        num_landmarks: int = 70,
        num_channels: int = 3,
        regions: dict[str, list[int]] | None = None,
        use_adain: bool = True,
        use_add_motion: bool = True,
        use_local_branches: bool = True,
        motion_map_input: bool = True,
        dense_motion: DenseMotionParams | None = None,
        generator: GeneratorParams | None = None,
        discriminator: DiscriminatorParams | None = None,
        loss_weights: LossWeights | None = None,
        perceptual_weights: str | None = "vgg19",
        perceptual_scales: Sequence[float] = (1.0, 0.5, 0.25, 0.125),
        num_parsing_labels: int | None = None,
        detector: str = "animzoo70",
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.num_landmarks = int(num_landmarks)
        self.motion_map_input = motion_map_input
        self.detector_name = detector
        self.dm_params = merge_params(DEFAULT_DENSE_MOTION, dense_motion, "Sparse2Dense dense_motion")
        self.gen_params = merge_params(DEFAULT_GENERATOR, generator, "Sparse2Dense generator")
        self.disc_params = merge_params(DEFAULT_DISCRIMINATOR, discriminator, "Sparse2Dense discriminator")
        self.loss_weights = merge_params(DEFAULT_LOSS_WEIGHTS, loss_weights, "Sparse2Dense loss_weights")
        if len(self.loss_weights["perceptual"]) != 5:
            raise ValueError("loss_weights.perceptual needs 5 weights (VGG19 relu1_1 ... relu5_1)")
        self.dense_motion = DenseMotionNetwork(
            num_landmarks=self.num_landmarks, num_channels=num_channels, regions=regions,
            use_local_branches=use_local_branches, use_adain=use_adain, use_add_motion=use_add_motion,
            **self.dm_params,
        )
        self.generator = ImageGenerator(num_channels=num_channels, motion_map=motion_map_input, **self.gen_params)
        self.discriminator = MultiScaleDiscriminator(num_channels=num_channels, kp_conditioning=False, **self.disc_params)
        self.perceptual = PerceptualPyramidLoss(perceptual_scales, self.loss_weights["perceptual"], perceptual_weights)
        if num_parsing_labels is None:
            from animzoo.data.annotations import PARSING_LABELS

            num_parsing_labels = len(PARSING_LABELS)
        self.num_parsing_labels = int(num_parsing_labels)
        self.uses_parsing = float(self.loss_weights["parsing"]) > 0
        # The datamodule loads the sidecars the method requires (instance attribute: it depends
        # on the loss weights).
        self.requires = frozenset({"landmarks", "parsing"} if self.uses_parsing else {"landmarks"})
        self._detector: Any = None  # built on first use, outside the module tree (not in checkpoints)

    # ------------------------------------------------------------------ checks

    def _check_inputs(self, source: Tensor, source_landmarks: Tensor, driving_landmarks: Tensor) -> None:
        if source.dim() != 4:
            raise ValueError(f"Sparse2Dense: source must be B x C x H x W, got shape {tuple(source.shape)}")
        for name, lm in (("source", source_landmarks), ("driving", driving_landmarks)):
            if lm.dim() != 3 or lm.shape[-1] != 2 or lm.shape[1] != self.num_landmarks:
                raise AnimzooInputError(
                    f"Sparse2Dense: {name} landmarks have shape {tuple(lm.shape)}, expected B x {self.num_landmarks} x 2 "
                    f"(this model was built with num_landmarks={self.num_landmarks}; annotate the data with a "
                    "detector of that many points or set model.init_args.num_landmarks)"
                )
            bad = nonfinite_rows(lm)
            if bad:
                raise AnimzooInputError(f"Sparse2Dense: {name} landmarks hold NaN or inf in batch rows {bad[:10]}")
        h, w = source.shape[-2:]
        problems = []
        g = self.dm_params["global_branch"]["num_blocks"]
        sh, sw = round(h * self.dm_params["scale_factor"]), round(w * self.dm_params["scale_factor"])
        if sh % 2**g or sw % 2**g:
            problems.append(f"the global branch (num_blocks={g}, scale_factor={self.dm_params['scale_factor']}) sees {sh}x{sw}, not divisible by {2**g}")
        f = 2 ** self.gen_params["num_down_blocks"]
        if h % f or w % f:
            problems.append(f"the generator (num_down_blocks={self.gen_params['num_down_blocks']}) needs sides divisible by {f}")
        if problems:
            raise ValueError(
                f"Sparse2Dense cannot process {h}x{w} images: " + "; ".join(problems)
                + ". Resize the data (data.init_args.image_size) or change num_blocks / scale_factor."
            )

    # ------------------------------------------------------------------ method API

    def generate(self, source: Tensor, source_landmarks: Tensor, driving_landmarks: Tensor) -> dict[str, Any]:
        """Animate ``source`` (B x C x H x W in [0, 1]) from landmarks (B x L x 2 normalised).

        Returns ``{"prediction", "deformed" (eq. 1), "flow" (B x H x W x 2 dense motion),
        "residual", "occlusion" (the generator's mask M), "local_masks" (B x R x H x W),
        "keypoints" / "source_keypoints" ({"value": landmarks}, for the sample grids)}``.
        """
        self._check_inputs(source, source_landmarks, driving_landmarks)
        source_landmarks = source_landmarks.to(source.dtype)
        driving_landmarks = driving_landmarks.to(source.dtype)
        motion = self.dense_motion(source, source_landmarks, driving_landmarks)
        grid = motion["grid"]
        deformed = warp(source, grid)
        gen = self.generator(deformed, grid_to_flow(grid) if self.motion_map_input else None)
        out: dict[str, Any] = {
            "prediction": gen["prediction"],
            "deformed": deformed,
            "flow": grid,
            "global_flow": motion["global_grid"],
            "residual": gen["residual"],
            "occlusion": gen["mask"],
            "keypoints": {"value": driving_landmarks},
            "source_keypoints": {"value": source_landmarks},
        }
        if "local_masks" in motion:
            out["local_masks"] = motion["local_masks"]
        return out

    def animate(self, batch: dict[str, Any]) -> dict[str, Any]:
        missing = [k for k in ("source_landmarks", "driving_landmarks") if k not in batch]
        if missing:
            raise AnimzooInputError(
                f"Sparse2Dense needs {missing} in the batch: use AnimationDataModule (it loads <video>.landmarks.npy "
                "sidecars for methods that require landmarks); annotate a dataset with "
                "`animzoo data annotate --landmarks animzoo70 ROOT`"
            )
        return self.generate(batch["source"], batch["source_landmarks"], batch["driving_landmarks"])

    def _landmark_detector(self, device: torch.device) -> Any:
        if self._detector is None:
            from animzoo.metrics.backends import ready_landmark_backend

            backend = ready_landmark_backend(self.detector_name)
            if getattr(backend, "num_landmarks", self.num_landmarks) != self.num_landmarks:
                raise AnimzooInputError(
                    f"landmark detector {self.detector_name!r} gives {backend.num_landmarks} landmarks but this model "
                    f"takes {self.num_landmarks}; set model.init_args.detector to the detector its data was annotated with"
                )
            self._detector = backend
        if hasattr(self._detector, "to"):
            self._detector.to(device)
        return self._detector

    @torch.no_grad()
    def extract_motion(self, frames: Tensor) -> dict[str, Tensor]:
        """Landmarks of ``frames`` (B x 3 x H x W in [0, 1]) by ``detector``: ``{"value": B x L x 2}``
        normalised. Raises :class:`AnimzooInputError` naming the frames where no face is found."""
        if frames.dim() != 4:
            raise ValueError(f"frames must be B x 3 x H x W, got shape {tuple(frames.shape)}")
        detector = self._landmark_detector(frames.device)
        pixels = detector.detect(frames.float()).to(frames.device)
        missing = nonfinite_rows(pixels)
        if missing:
            raise AnimzooInputError(
                f"the landmark detector {self.detector_name!r} found no face in frame(s) {missing[:10]} of this batch; "
                "crop the video around the face, or pass landmarks (animzoo animate --driving-landmarks FILE.npy)"
            )
        value = pixel_to_normalized(pixels, tuple(frames.shape[-2:]))
        return {"value": value.to(frames.dtype)}

    def animate_with_motion(
        self, source: Tensor, source_motion: dict[str, Tensor], driving_motion: dict[str, Tensor]
    ) -> dict[str, Any]:
        """Animate ``source`` (B or 1 x 3 x H x W) with landmarks ``{"value": B x L x 2}`` normalised."""
        drv = driving_motion["value"]
        src = source_motion["value"]
        n = drv.shape[0]
        if source.shape[0] == 1 and n > 1:
            source = source.expand(n, *source.shape[1:])
        if src.shape[0] == 1 and n > 1:
            src = src.expand(n, *src.shape[1:])
        return self.generate(source, src, drv)

    # ------------------------------------------------------------------ training

    def setup(self, stage: str) -> None:
        super().setup(stage)
        if stage == "fit":
            self.perceptual.prepare()  # a missing VGG19 file fails now, not after the first batch

    def _parsing_terms(self, batch: dict[str, Any], grid: Tensor) -> dict[str, Tensor]:
        if "source_parsing" not in batch or "driving_parsing" not in batch:
            return {}
        src, drv = batch["source_parsing"], batch["driving_parsing"]
        terms = {"parsing_mismatch": parsing_mismatch(src, drv, grid.detach())}
        if self.uses_parsing:
            terms["parsing"] = float(self.loss_weights["parsing"]) * parsing_match_loss(src, drv, grid, self.num_parsing_labels)
        return terms

    def generator_step(self, batch: dict[str, Any]) -> tuple[Tensor, dict[str, Tensor], dict[str, Any]]:
        out = self.animate(batch)
        driving, prediction = batch["driving"], out["prediction"]
        w = self.loss_weights
        logs: dict[str, Tensor] = {}
        if any(w["perceptual"]):
            logs["perceptual"] = self.perceptual(prediction, driving)
        if w["l1"]:
            logs["l1"] = float(w["l1"]) * F.l1_loss(prediction, driving)
        if w["generator_gan"]:
            _, logits = self.discriminator(prediction)
            logs["gen_gan"] = float(w["generator_gan"]) * lsgan_generator_loss(logits)
        parsing = self._parsing_terms(batch, out["flow"])
        loss = prediction.new_zeros(())
        for value in logs.values():
            loss = loss + value
        if "parsing" in parsing:
            logs["parsing"] = parsing["parsing"]
            loss = loss + parsing["parsing"]
        if "parsing_mismatch" in parsing:
            logs["parsing_mismatch"] = parsing["parsing_mismatch"]  # eq. 7, reported only
        return loss, logs, out

    def discriminator_step(self, batch: dict[str, Any], out: dict[str, Any]) -> tuple[Tensor, dict[str, Tensor]] | None:
        return self.image_discriminator_step(batch, out, self.loss_weights["discriminator_gan"], "lsgan")

    def validation_step(self, batch: dict[str, Any], batch_idx: int, dataloader_idx: int = 0) -> None:
        out = self._evaluation_step(batch, batch_idx, dataloader_idx, "val")
        if "source_parsing" in batch and "driving_parsing" in batch and batch.get("mode") != "cross":
            value = parsing_mismatch(batch["source_parsing"], batch["driving_parsing"], out["flow"])
            self.log("val/parsing_mismatch", value, on_epoch=True, batch_size=batch["source"].shape[0],
                     add_dataloader_idx=False, sync_dist=True)

