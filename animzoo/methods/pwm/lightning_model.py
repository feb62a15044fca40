"""Progressive warping with geometric guidance as an :class:`~animzoo.methods.base.AnimationModule`.

Training (paper sec. 3.4 and supplement sec. 1) reconstructs the driving frame from the source
image and the source / driving face meshes; one generator step on

* ``perceptual`` x the VGG19 pyramid perceptual loss (supplement eq. 1: three scales, the first
  five blocks' convolution outputs; one weight per layer),
* ``pixel`` x L1(prediction, driving),
* ``feature_matching`` x the discriminator feature-matching loss (eq. 4),
* ``generator_gan`` x the hinge generator loss ``-D(I_o)`` (eq. 2; ``gan_mode="lsgan"`` gives the
  authors' code default ``(1 - D(I_o))^2``),
* ``warp`` x (perceptual + pixel) of the source warped by the last displacement field against the
  driving frame (supplement sec. 1.4), and ``warp_pyramid`` x the mean L1 of the source warped by
  every intermediate flow against the driving frame, both at that flow's resolution,

then one discriminator step ``discriminator_gan`` x the hinge loss (eq. 3) on three image scales.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar, Literal, TypedDict

import torch
import torch.nn.functional as F
from torch import Tensor

from animzoo.errors import AnimzooInputError
from animzoo.geometry.grid import warp_with_flow
from animzoo.geometry.heads import HeadParams, MorphableHead, build_head
from animzoo.methods.base import AnimationModule, merge_params, nonfinite_rows
from animzoo.methods.pwm.torch_model import (
    GuidanceRenderer,
    ProgressiveWarpingGenerator,
)
from animzoo.nn.discriminator import DiscriminatorParams, MultiScaleDiscriminator
from animzoo.nn.losses import (
    PerceptualPyramidLoss,
    feature_matching_loss,
    hinge_generator_loss,
    lsgan_generator_loss,
)
from animzoo.registry import register_method

__all__ = [
    "DEFAULT_DISCRIMINATOR",
    "DEFAULT_GENERATOR",
    "DEFAULT_LOSS_WEIGHTS",
    "PWM",
    "DiscriminatorParams",
    "GeneratorParams",
    "LossWeights",
]


class GeneratorParams(TypedDict, total=False):
    """Recipe keys of :class:`~animzoo.methods.pwm.torch_model.ProgressiveWarpingGenerator`."""

    block_expansion: int
    max_features: int
    num_levels: int
    spade_hidden: int | None
    sn: bool
    residual_flow: bool
    alpha_blend: bool


class LossWeights(TypedDict, total=False):
    """Loss weights (the authors' config: pixel 10, VGG 10, feature matching 10, GAN 1)."""

    perceptual: list[float]
    pixel: float
    feature_matching: float
    generator_gan: float
    discriminator_gan: float
    warp: float
    warp_pyramid: float


# 256 px: the authors' channel counts (32 at full resolution doubling to 512, notes (c)) and
# their discriminator (4 blocks of 32 ... 256 channels) on the paper's three image scales.
DEFAULT_GENERATOR: GeneratorParams = {
    "block_expansion": 32, "max_features": 512, "num_levels": 5, "spade_hidden": None, "sn": True,
    "residual_flow": False, "alpha_blend": False,
}
DEFAULT_DISCRIMINATOR: DiscriminatorParams = {
    "scales": [1.0, 0.5, 0.25], "block_expansion": 16, "max_features": 256, "num_blocks": 4, "sn": True,
    "use_instance_norm": False,
}
DEFAULT_LOSS_WEIGHTS: LossWeights = {
    "perceptual": [10.0, 10.0, 10.0, 10.0, 10.0], "pixel": 10.0, "feature_matching": 10.0,
    "generator_gan": 1.0, "discriminator_gan": 1.0, "warp": 1.0, "warp_pyramid": 10.0,
}
_MESH_KEYS = ("source_mesh", "driving_mesh", "mesh_faces")



@register_method("pwm")
class PWM(AnimationModule):
    """Progressive warping guided by 3D face geometry (Zhong, Amjadi, Zharkov, BMVC 2022).

    A face image is animated by a pair of face meshes (the source's and the driving one, one
    topology): the guidance (displacement field, posed neural codes, NMFC, or a combination)
    is rasterized from them and modulates a decoder of progressive warping modules over 5 pyramid
    levels (README.md lists the choices the paper leaves open).

    Args:
        guidance: the guidance patterns, channel-concatenated in this order: ``[displacement]``
            ("PWM + geom. disp."), ``[codes]`` ("PWM + neural codes"), ``[nmfc]`` ("PWM + NMFC"),
            ``[displacement, codes]`` (both).
        head: the morphable model of the meshes: ``"procedural"`` (SyntheticHeads), a path to a
            FLAME model file (the user's; never stored in checkpoints), or None (then
            ``num_vertices`` is required, and NMFC, cross-identity shape swaps and :meth:`edit`
            are unavailable).
        head_options: keyword arguments of the FLAME loader (``num_shape``, ``num_expression``, ...).
        num_vertices: V of the meshes (default: the head's). Sidecars with another V are refused
            at setup.
        code_dim: d of the posed neural codes (paper: 16).
        num_channels: image channels (3).
        generator, discriminator: sub-network recipe keys (``DEFAULT_*``).
        loss_weights: :class:`LossWeights`.
        gan_mode: ``"hinge"`` (the paper) or ``"lsgan"`` (the authors' code default).
        perceptual_weights: ``"vgg19"`` (the registered torchvision file), a path to a VGG19 state
            dict, or ``"none"``: a pixel-pyramid L1 instead (machines without the file).
        perceptual_scales: image pyramid of the perceptual loss (paper: 1, 1/2, 1/4).
        cross_identity_shape: on cross-identity batches that carry morphable-model parameters,
            rebuild the driving mesh with the source's identity (shape) parameters (paper sec. 4.1).
        **kwargs: :class:`~animzoo.methods.base.AnimationModule` arguments.
    """

    requires: ClassVar[frozenset[str]] = frozenset({"mesh"})
    motion_kind: ClassVar[str] = "mesh"

    def __init__(
        self,
        *,
        guidance: Sequence[Literal["displacement", "codes", "nmfc"]] = ("displacement",),
        head: str | None = "procedural",
        head_options: dict[str, Any] | None = None,
        num_vertices: int | None = None,
        code_dim: int = 16,
        num_channels: int = 3,
        generator: GeneratorParams | None = None,
        discriminator: DiscriminatorParams | None = None,
        loss_weights: LossWeights | None = None,
        gan_mode: Literal["hinge", "lsgan"] = "hinge",
        perceptual_weights: str | None = "vgg19",
        perceptual_scales: Sequence[float] = (1.0, 0.5, 0.25),
        cross_identity_shape: bool = True,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if gan_mode not in ("hinge", "lsgan"):
            raise ValueError(f"gan_mode must be 'hinge' or 'lsgan', got {gan_mode!r}")
        self.gan_mode = gan_mode
        self.cross_identity_shape = cross_identity_shape
        head_model = build_head(head, **(head_options or {}))
        # Outside the module tree: a FLAME model must never enter a checkpoint (its licence), and
        # the procedural head is rebuilt from code.
        object.__setattr__(self, "_head", head_model)
        if num_vertices is None:
            if head_model is None:
                raise ValueError("PWM needs num_vertices when it has no head (the meshes' vertex count)")
            num_vertices = int(head_model.num_vertices)
        elif head_model is not None and int(num_vertices) != int(head_model.num_vertices):
            raise ValueError(f"num_vertices={num_vertices} but the head {head!r} has {head_model.num_vertices} vertices")
        self.mesh_vertex_count = int(num_vertices)
        self.gen_params = merge_params(DEFAULT_GENERATOR, generator, "PWM generator")
        self.disc_params = merge_params(DEFAULT_DISCRIMINATOR, discriminator, "PWM discriminator")
        self.loss_weights = merge_params(DEFAULT_LOSS_WEIGHTS, loss_weights, "PWM loss_weights")
        if len(self.loss_weights["perceptual"]) != 5:
            raise ValueError("loss_weights.perceptual needs 5 weights (VGG19 relu1_1 ... relu5_1)")
        mean_face = None
        if "nmfc" in guidance:
            if head_model is None:
                raise ValueError("nmfc guidance needs a head (its mean face): set model.init_args.head")
            mean_face = head_model.mean_face_vertices().detach().float().cpu()
        self.guidance = GuidanceRenderer(guidance, num_vertices=self.mesh_vertex_count, code_dim=code_dim, mean_face=mean_face)
        self.generator = ProgressiveWarpingGenerator(
            num_channels=num_channels,
            source_channels=self.guidance.source_channels,
            guidance_channels=self.guidance.driving_channels,
            warp_first_level="displacement" in self.guidance.kinds,
            **self.gen_params,
        )
        self.discriminator = MultiScaleDiscriminator(num_channels=num_channels, kp_conditioning=False, **self.disc_params)
        self.perceptual = PerceptualPyramidLoss(perceptual_scales, self.loss_weights["perceptual"], perceptual_weights)

    # ------------------------------------------------------------------ head

    @property
    def head(self) -> MorphableHead | None:
        """The morphable head of the meshes (None when the recipe names none)."""
        return self._head

    def _head_on(self, device: torch.device) -> MorphableHead:
        head = self._head
        if head is None:
            raise AnimzooInputError(
                "this PWM model has no morphable head (model.init_args.head is null): meshes cannot be "
                "built from parameters; pass meshes instead"
            )
        if hasattr(head, "to"):
            head.to(device)
        return head

    # ------------------------------------------------------------------ checks

    def _check_inputs(self, source: Tensor, source_mesh: Tensor, driving_mesh: Tensor, faces: Tensor) -> None:
        if source.dim() != 4:
            raise AnimzooInputError(f"PWM: source must be B x C x H x W, got shape {tuple(source.shape)}")
        for name, mesh in (("source", source_mesh), ("driving", driving_mesh)):
            if mesh.dim() != 3 or mesh.shape[-1] != 3 or mesh.shape[1] != self.mesh_vertex_count:
                raise AnimzooInputError(
                    f"PWM: the {name} mesh has shape {tuple(mesh.shape)}, expected B x {self.mesh_vertex_count} x 3 "
                    "(this model's vertex count: fit the meshes with the model's head, or set "
                    "model.init_args.head / num_vertices to the meshes' model)"
                )
            if mesh.shape[0] != source.shape[0]:
                raise AnimzooInputError(f"PWM: {mesh.shape[0]} {name} meshes for {source.shape[0]} source images")
            bad = nonfinite_rows(mesh)
            if bad:
                raise AnimzooInputError(f"PWM: the {name} mesh holds NaN or inf in batch rows {bad[:10]}")
        if faces.dim() != 2 or faces.shape[-1] != 3:
            raise AnimzooInputError(f"PWM: mesh_faces must be F x 3, got shape {tuple(faces.shape)}")
        factor = 2 ** self.generator.num_levels
        h, w = source.shape[-2:]
        if h % factor or w % factor:
            raise AnimzooInputError(
                f"PWM cannot process {h}x{w} images: {self.generator.num_levels} pyramid levels need sides divisible "
                f"by {factor}. Resize the data (data.init_args.image_size) or change generator.num_levels."
            )

    # ------------------------------------------------------------------ method API

    def generate(self, source: Tensor, source_mesh: Tensor, driving_mesh: Tensor, faces: Tensor) -> dict[str, Any]:
        """Animate ``source`` (B x C x H x W in [0, 1]) by a mesh pair (B x V x 3 each, x / y
        normalised, z depth; ``faces`` F x 3).

        Returns ``{"prediction", "flow" (B x 2 x H x W, the last displacement field), "flows"
        (coarse to fine), "deformed" (the source warped by "flow"), "guidance" (B x G x H x W on
        the driving mesh), "guidance_mask" (B x 1 x H x W), "displacement" (B x 2 x H x W or
        None: the rendered geometric displacement)}``.
        """
        self._check_inputs(source, source_mesh, driving_mesh, faces)
        size = (int(source.shape[-2]), int(source.shape[-1]))
        guide = self.guidance(source_mesh, driving_mesh, faces, size)
        gen = self.generator(source, guide["driving"], guide["source"], guide["displacement"])
        flow = gen["flows"][-1]
        out: dict[str, Any] = {
            "prediction": gen["prediction"],
            "flow": flow,
            "flows": gen["flows"],
            "deformed": gen["deformed"],
            "guidance": guide["driving"],
            "guidance_mask": guide["mask"],
            "displacement": guide["displacement"],
        }
        if "alpha" in gen:
            out["occlusion"] = gen["alpha"]  # where the image is synthesised rather than warped
        head = self._head  # its vertex count equals the meshes' (checked at construction and above)
        if head is not None and head.landmark_indices.numel():
            index = head.landmark_indices.to(driving_mesh.device)
            out["keypoints"] = {"value": driving_mesh[:, index, :2]}
            out["source_keypoints"] = {"value": source_mesh[:, index, :2]}
        return out

    def _params(self, batch: dict[str, Any], prefix: str) -> HeadParams | None:
        keys = {name: f"{prefix}_mesh_param_{name}" for name in HeadParams.FIELDS}
        if not all(k in batch for k in keys.values()):
            return None
        return HeadParams(**{name: batch[key].float() for name, key in keys.items()})

    def cross_identity_mesh(self, batch: dict[str, Any]) -> Tensor | None:
        """The driving mesh rebuilt with the source's identity (shape) parameters, or None when
        the batch carries no morphable-model parameters or the model has no head."""
        if self._head is None:
            return None
        source, driving = self._params(batch, "source"), self._params(batch, "driving")
        if source is None or driving is None or source.identity.shape != driving.identity.shape:
            return None
        head = self._head_on(batch["driving_mesh"].device)
        swapped = HeadParams(source.identity, driving.expression, driving.gaze, driving.pose)
        return head.vertices(swapped.to(batch["driving_mesh"].device)).to(batch["driving_mesh"].dtype)

    def animate(self, batch: dict[str, Any]) -> dict[str, Any]:
        missing = [k for k in _MESH_KEYS if k not in batch]
        if missing:
            raise AnimzooInputError(
                f"PWM needs {missing} in the batch: use AnimationDataModule (it loads <video>.mesh.npz sidecars "
                "for methods that require meshes); fit meshes with DECA / FLAME and convert them (docs/data.md)"
            )
        driving_mesh = batch["driving_mesh"]
        if batch.get("mode") == "cross" and self.cross_identity_shape:
            swapped = self.cross_identity_mesh(batch)
            if swapped is not None:
                driving_mesh = swapped
        return self.generate(batch["source"], batch["source_mesh"], driving_mesh, batch["mesh_faces"])

    @torch.no_grad()
    def edit(self, source: Tensor, source_params: HeadParams, edited_params: HeadParams) -> dict[str, Any]:
        """Render ``source`` (B or 1 x C x H x W) under edited morphable-model parameters.

        The source mesh comes from ``source_params`` (the source image's fit) and the driving mesh
        from ``edited_params`` (B rows; e.g. the source's with another pose, expression or gaze),
        both through the model's head. Returns :meth:`generate`'s output.
        """
        head = self._head_on(source.device)
        n = edited_params.batch_size
        if source_params.batch_size == 1 and n > 1:
            source_params = HeadParams.cat([source_params] * n)
        if source.shape[0] == 1 and n > 1:
            source = source.expand(n, *source.shape[1:])
        source_mesh = head.vertices(source_params.to(source.device))
        driving_mesh = head.vertices(edited_params.to(source.device))
        return self.generate(source, source_mesh.to(source.dtype), driving_mesh.to(source.dtype), head.faces)

    # ------------------------------------------------------------------ training

    def setup(self, stage: str) -> None:
        super().setup(stage)
        if stage == "fit":
            self.perceptual.prepare()  # a missing VGG19 file fails now, not after the first batch

    def _gan_generator(self, logits: Any) -> Tensor:
        return hinge_generator_loss(logits) if self.gan_mode == "hinge" else lsgan_generator_loss(logits)

    def _warp_terms(self, source: Tensor, driving: Tensor, out: dict[str, Any]) -> dict[str, Tensor]:
        w = self.loss_weights
        terms: dict[str, Tensor] = {}
        if w["warp"]:
            deformed = out["deformed"]
            value = F.l1_loss(deformed, driving) * float(w["pixel"])
            if any(w["perceptual"]):
                value = value + self.perceptual(deformed, driving)
            terms["warp"] = float(w["warp"]) * value
        if w["warp_pyramid"] and len(out["flows"]) > 1:
            losses = []
            for flow in out["flows"][:-1]:
                size = tuple(flow.shape[-2:])
                src = F.interpolate(source, size=size, mode="bilinear", align_corners=True, antialias=True)
                drv = F.interpolate(driving, size=size, mode="bilinear", align_corners=True, antialias=True)
                losses.append(F.l1_loss(warp_with_flow(src, flow), drv))
            terms["warp_pyramid"] = float(w["warp_pyramid"]) * torch.stack(losses).mean()
        return terms

    def generator_step(self, batch: dict[str, Any]) -> tuple[Tensor, dict[str, Tensor], dict[str, Any]]:
        out = self.animate(batch)
        driving, prediction = batch["driving"], out["prediction"]
        w = self.loss_weights
        logs: dict[str, Tensor] = {}
        if any(w["perceptual"]):
            logs["perceptual"] = self.perceptual(prediction, driving)
        if w["pixel"]:
            logs["pixel"] = float(w["pixel"]) * F.l1_loss(prediction, driving)
        if w["generator_gan"] or w["feature_matching"]:
            fake_feats, fake_logits = self.discriminator(prediction)
            if w["generator_gan"]:
                logs["gen_gan"] = float(w["generator_gan"]) * self._gan_generator(fake_logits)
            if w["feature_matching"]:
                with torch.no_grad():
                    real_feats, _ = self.discriminator(driving)
                logs["feature_matching"] = float(w["feature_matching"]) * feature_matching_loss(real_feats, fake_feats)
        logs.update(self._warp_terms(batch["source"], driving, out))
        loss = prediction.new_zeros(())
        for value in logs.values():
            loss = loss + value
        return loss, logs, out

    def discriminator_step(self, batch: dict[str, Any], out: dict[str, Any]) -> tuple[Tensor, dict[str, Tensor]] | None:
        return self.image_discriminator_step(batch, out, self.loss_weights["discriminator_gan"], self.gan_mode)
