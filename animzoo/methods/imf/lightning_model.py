"""The implicit motion function (IMF) as an :class:`~animzoo.methods.base.AnimationModule`.

Training (supplement sec. 2 and 3.3) reconstructs the current frame ``x_c`` (the batch's
``driving``) from the reference frame ``x_r`` (``source``): one generator step on

* ``pixel`` x L1(x̂_c, x_c) (eq. 1; paper: 10),
* the VGG19 perceptual loss over 4 image scales and 5 layers (eq. 2; one weight per layer,
  ``perceptual``, paper: 10 each),
* ``generator_gan`` x the hinge generator loss ``-D(x̂_c)`` on a two-scale patch discriminator
  with spectral norm (eq. 3; paper: 1),

then one discriminator step ``discriminator_gan`` x the hinge loss. Adam (0.5, 0.999), 2e-4.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar, Literal, TypedDict

import torch
import torch.nn.functional as F
from torch import Tensor

from animzoo.errors import AnimzooInputError
from animzoo.methods.base import AnimationModule, merge_params, nonfinite_rows
from animzoo.methods.imf.torch_model import (
    DenseFeatureEncoder,
    FrameDecoder,
    ImplicitMotionAlignment,
    LatentTokenDecoder,
    LatentTokenEncoder,
)
from animzoo.nn.discriminator import DiscriminatorParams, MultiScaleDiscriminator
from animzoo.nn.losses import (
    PerceptualPyramidLoss,
    hinge_generator_loss,
    lsgan_generator_loss,
)
from animzoo.registry import register_method

__all__ = [
    "DEFAULT_ALIGNMENT",
    "DEFAULT_DENSE_ENCODER",
    "DEFAULT_DISCRIMINATOR",
    "DEFAULT_FRAME_DECODER",
    "DEFAULT_LOSS_WEIGHTS",
    "DEFAULT_TOKEN_DECODER",
    "DEFAULT_TOKEN_ENCODER",
    "IMF",
    "interpolate_tokens",
    "token_direction",
]


class DenseEncoderParams(TypedDict, total=False):
    """Recipe keys of :class:`~animzoo.methods.imf.torch_model.DenseFeatureEncoder` (E_F)."""

    stem_channels: int
    channels: list[int]
    num_levels: int
    num_res: int


class TokenEncoderParams(TypedDict, total=False):
    """Recipe keys of :class:`~animzoo.methods.imf.torch_model.LatentTokenEncoder` (E_T)."""

    block_expansion: int
    max_features: int
    mlp_dim: int
    mlp_layers: int


class TokenDecoderParams(TypedDict, total=False):
    """Recipe keys of :class:`~animzoo.methods.imf.torch_model.LatentTokenDecoder` (IMF_D)."""

    channels: list[int]
    convs_per_level: int
    input_features: str


class AlignmentParams(TypedDict, total=False):
    """Recipe keys of :class:`~animzoo.methods.imf.torch_model.ImplicitMotionAlignment` (IMF_A)."""

    num_blocks: int
    num_heads: int
    mlp_dim: int
    max_attention_resolution: int | None
    initial_self_logit: float
    motion_gain: float
    learn_motion_gain: bool
    relative_motion: bool


class FrameDecoderParams(TypedDict, total=False):
    """Recipe keys of :class:`~animzoo.methods.imf.torch_model.FrameDecoder` (D_F); ``channels``
    defaults to the dense encoder's in reverse. ``image_skip`` (not the paper's, off by default):
    the reference's pixels travel with the finest dense features through the attention (past its
    transformer blocks) and D_F draws a correction to them."""

    channels: list[int] | None
    num_res: int
    image_skip: bool


class LossWeights(TypedDict, total=False):
    """Loss weights (supplement eq. 4: lambda_p = 10, lambda_v = 10, lambda_G = 1)."""

    pixel: float
    perceptual: list[float]
    generator_gan: float
    discriminator_gan: float


# The paper's 256 px model (supplement Fig. 1, reference notes (d)).
DEFAULT_DENSE_ENCODER: DenseEncoderParams = {"stem_channels": 64, "channels": [64, 128, 256, 512, 512], "num_levels": 4, "num_res": 2}
DEFAULT_TOKEN_ENCODER: TokenEncoderParams = {"block_expansion": 64, "max_features": 512, "mlp_dim": 512, "mlp_layers": 4}
DEFAULT_TOKEN_DECODER: TokenDecoderParams = {"channels": [512, 512, 512, 256], "convs_per_level": 3, "input_features": "constant"}
DEFAULT_ALIGNMENT: AlignmentParams = {
    "num_blocks": 4, "num_heads": 8, "mlp_dim": 1024, "max_attention_resolution": None, "initial_self_logit": 16.0,
    "motion_gain": 0.1, "learn_motion_gain": True, "relative_motion": False,
}
DEFAULT_FRAME_DECODER: FrameDecoderParams = {"channels": None, "num_res": 1, "image_skip": False}
# 64, 128, 256, 512 channels on two scales (supplement: "two different scale patch discriminator").
DEFAULT_DISCRIMINATOR: DiscriminatorParams = {
    "scales": [1.0, 0.5], "block_expansion": 32, "max_features": 512, "num_blocks": 4, "sn": True,
    "use_instance_norm": True,
}
DEFAULT_LOSS_WEIGHTS: LossWeights = {
    "pixel": 10.0, "perceptual": [10.0, 10.0, 10.0, 10.0, 10.0], "generator_gan": 1.0, "discriminator_gan": 1.0,
}


def interpolate_tokens(token_a: Tensor, token_b: Tensor, weights: Tensor | Sequence[float]) -> Tensor:
    """Tokens on the line from ``token_a`` to ``token_b`` (each ``token_dim`` or ``1 x token_dim``):
    ``(1 - w) * a + w * b`` for every ``w`` in ``weights`` -> ``len(weights) x token_dim``.
    Weights outside [0, 1] extrapolate (exaggerate the motion from a to b)."""
    a, b = token_a.reshape(1, -1), token_b.reshape(1, -1)
    if a.shape != b.shape:
        raise ValueError(f"interpolate_tokens: tokens of widths {a.shape[-1]} and {b.shape[-1]}")
    w = torch.as_tensor(weights, dtype=a.dtype, device=a.device).reshape(-1, 1)
    return a + w * (b - a)


def token_direction(tokens: Tensor, values: Tensor) -> Tensor:
    """The direction in token space along which a known attribute grows, by least squares.

    ``tokens``: ``N x token_dim`` of N frames; ``values``: ``N`` attribute values of those frames
    (a head's yaw, a mouth opening, ...). Returns ``d`` (``token_dim``), the per-dimension slope
    of the tokens regressed on the attribute, so ``t + delta * d`` moves a token by ``delta`` units
    of the attribute (the paper's free pose / expression editing by moving tokens, with the
    direction read off labelled frames).
    """
    if tokens.dim() != 2 or values.dim() != 1 or tokens.shape[0] != values.shape[0]:
        raise ValueError(f"token_direction: tokens N x D and values N, got {tuple(tokens.shape)} and {tuple(values.shape)}")
    v = values.to(tokens.dtype) - values.to(tokens.dtype).mean()
    denom = (v * v).sum()
    if not torch.isfinite(denom) or denom <= 0:
        raise ValueError("token_direction: the attribute values are constant (or not finite): no direction to fit")
    return (v[:, None] * (tokens - tokens.mean(dim=0))).sum(dim=0) / denom


@register_method("imf")
class IMF(AnimationModule):
    """Implicit Motion Function (Gao, Li, Chu, Lu, CVPR 2024).

    Motion is a compact latent token per frame; a StyleGAN2-style decoder turns the reference's
    and the current frame's tokens into multi-scale motion features, cross-attention between the
    two aligns the reference's dense features to the current frame, and a decoder draws it. No
    flow, keypoint or mesh is involved.

    Args:
        frame_size: the (square) frame side the model is built for (paper: 256). The token
            decoder's constant and the positional embeddings have fixed sizes, so frames of other
            sizes are refused. (Not ``image_size``: that name is the datamodule's, and Lightning
            refuses one hyperparameter name with two values.)
        token_dim: the token width dm (paper: 32).
        num_channels: image channels (3).
        dense_encoder, token_encoder, token_decoder, alignment, frame_decoder, discriminator:
            sub-network recipe keys (``DEFAULT_*``); ``alignment.max_attention_resolution`` caps
            the finest scale that attention runs at (patch attention above it, for memory).
        loss_weights: :class:`LossWeights`.
        gan_mode: ``"hinge"`` (the paper) or ``"lsgan"``.
        perceptual_weights: ``"vgg19"`` (the registered torchvision file), a path to a VGG19 state
            dict, or ``"none"``: a pixel-pyramid L1 instead (machines without the file).
        perceptual_scales: the image pyramid of the perceptual loss (paper: 4 scales).
        **kwargs: :class:`~animzoo.methods.base.AnimationModule` arguments.
    """

    requires: ClassVar[frozenset[str]] = frozenset()

    def __init__(
        self,
        *,
        frame_size: int = 256,
        token_dim: int = 32,
        num_channels: int = 3,
        dense_encoder: DenseEncoderParams | None = None,
        token_encoder: TokenEncoderParams | None = None,
        token_decoder: TokenDecoderParams | None = None,
        alignment: AlignmentParams | None = None,
        frame_decoder: FrameDecoderParams | None = None,
        discriminator: DiscriminatorParams | None = None,
        loss_weights: LossWeights | None = None,
        gan_mode: Literal["hinge", "lsgan"] = "hinge",
        perceptual_weights: str | None = "vgg19",
        perceptual_scales: Sequence[float] = (1.0, 0.5, 0.25, 0.125),
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if gan_mode not in ("hinge", "lsgan"):
            raise ValueError(f"gan_mode must be 'hinge' or 'lsgan', got {gan_mode!r}")
        self.gan_mode = gan_mode
        self.image_size = int(frame_size)
        self.token_dim = int(token_dim)
        self.num_channels = int(num_channels)
        self.dense_params = merge_params(DEFAULT_DENSE_ENCODER, dense_encoder, "IMF dense_encoder")
        self.token_encoder_params = merge_params(DEFAULT_TOKEN_ENCODER, token_encoder, "IMF token_encoder")
        self.token_decoder_params = merge_params(DEFAULT_TOKEN_DECODER, token_decoder, "IMF token_decoder")
        self.alignment_params = merge_params(DEFAULT_ALIGNMENT, alignment, "IMF alignment")
        self.frame_decoder_params = merge_params(DEFAULT_FRAME_DECODER, frame_decoder, "IMF frame_decoder")
        self.disc_params = merge_params(DEFAULT_DISCRIMINATOR, discriminator, "IMF discriminator")
        self.loss_weights = merge_params(DEFAULT_LOSS_WEIGHTS, loss_weights, "IMF loss_weights")
        if len(self.loss_weights["perceptual"]) != 5:
            raise ValueError("loss_weights.perceptual needs 5 weights (VGG19 relu1_1 ... relu5_1)")

        self.dense_encoder = DenseFeatureEncoder(num_channels=num_channels, **self.dense_params)
        factor = self.dense_encoder.downsampling
        num_levels = self.dense_encoder.num_levels
        coarsest = self.image_size // factor
        if self.image_size % factor or coarsest < 2 or coarsest % 2:
            raise ValueError(
                f"IMF: frame_size={frame_size} must be a multiple of {2 * factor} (the dense encoder halves it "
                f"{len(self.dense_params['channels'])} times, and the token decoder starts at half the coarsest scale)"
            )
        if len(self.token_decoder_params["channels"]) != num_levels:
            raise ValueError(
                f"IMF: token_decoder.channels needs one entry per scale of the dense encoder (num_levels={num_levels}), "
                f"got {self.token_decoder_params['channels']}"
            )
        self.token_encoder = LatentTokenEncoder(
            num_channels=num_channels, image_size=self.image_size, token_dim=self.token_dim, **self.token_encoder_params
        )
        self.token_decoder = LatentTokenDecoder(token_dim=self.token_dim, const_size=coarsest // 2, **self.token_decoder_params)
        sizes = [coarsest * 2**i for i in range(num_levels)]
        # frame_decoder.image_skip: the reference's pixels ride along with the finest dense
        # features (pixel-unshuffled to that scale), moved by the attention, past its blocks.
        self.image_skip = bool(self.frame_decoder_params["image_skip"])
        value_channels = list(self.dense_encoder.level_channels)
        passthrough = [0] * num_levels
        if self.image_skip:
            passthrough[-1] = num_channels * (self.image_size // sizes[-1]) ** 2
            value_channels[-1] += passthrough[-1]
        self.alignment = ImplicitMotionAlignment(
            query_channels=self.token_decoder.channels, value_channels=value_channels, sizes=sizes,
            passthrough_channels=passthrough, **self.alignment_params,
        )
        decoder_channels = self.frame_decoder_params["channels"] or self.dense_params["channels"][::-1]
        if len(decoder_channels) != len(self.dense_params["channels"]):
            raise ValueError(
                f"IMF: frame_decoder.channels needs {len(self.dense_params['channels'])} entries (one up block per "
                f"dense encoder block, back to the image size), got {decoder_channels}"
            )
        self.frame_decoder = FrameDecoder(
            value_channels, decoder_channels, num_channels, self.frame_decoder_params["num_res"], self.image_skip
        )
        self.discriminator = MultiScaleDiscriminator(num_channels=num_channels, kp_conditioning=False, **self.disc_params)
        self.perceptual = PerceptualPyramidLoss(perceptual_scales, self.loss_weights["perceptual"], perceptual_weights)

    # ------------------------------------------------------------------ checks

    def _check_frames(self, frames: Tensor, what: str) -> None:
        if frames.dim() != 4 or frames.shape[1] != self.num_channels:
            raise AnimzooInputError(
                f"IMF: {what} must be B x {self.num_channels} x H x W, got shape {tuple(frames.shape)}"
            )
        h, w = frames.shape[-2:]
        if (h, w) != (self.image_size, self.image_size):
            raise AnimzooInputError(
                f"IMF: {what} is {h}x{w} but this model is built for {self.image_size}x{self.image_size} frames "
                f"(its token decoder constant and positional embeddings have fixed sizes); resize the frames "
                f"(data.init_args.image_size, or Animator's resizing) or build the model with "
                f"model.init_args.frame_size={h if h == w else 'the frame side'}"
            )
        bad = nonfinite_rows(frames)
        if bad:
            raise AnimzooInputError(f"IMF: {what} holds NaN or inf in batch rows {bad[:10]}")

    def _check_pair(self, reference: Tensor, current: Tensor, names: tuple[str, str]) -> None:
        if reference.shape[-2:] != current.shape[-2:]:
            raise AnimzooInputError(
                f"IMF: the {names[0]} frame is {tuple(reference.shape[-2:])} and the {names[1]} frame "
                f"{tuple(current.shape[-2:])}: both must be {self.image_size}x{self.image_size}; resize them to "
                f"the model's size first"
            )
        self._check_frames(reference, f"the {names[0]} frame")
        self._check_frames(current, f"the {names[1]} frame")

    def _check_tokens(self, tokens: Tensor, what: str = "tokens") -> None:
        if tokens.dim() != 2 or tokens.shape[-1] != self.token_dim:
            raise AnimzooInputError(
                f"IMF: {what} must be N x {self.token_dim} (this model's token width, token_dim), got shape "
                f"{tuple(tokens.shape)}; make tokens with encode_tokens() of this model"
            )
        bad = nonfinite_rows(tokens)
        if bad:
            raise AnimzooInputError(f"IMF: {what} hold NaN or inf in rows {bad[:10]}")

    # ------------------------------------------------------------------ token-space API

    def encode_tokens(self, frames: Tensor) -> Tensor:
        """Latent tokens of ``frames`` (``B x 3 x S x S`` in [0, 1]): ``B x token_dim``."""
        self._check_frames(frames, "frames")
        return self.token_encoder(frames)

    def _render(self, reference: Tensor, reference_tokens: Tensor, tokens: Tensor) -> dict[str, Any]:
        n = tokens.shape[0]
        if reference.shape[0] == 1 and n > 1:
            reference = reference.expand(n, *reference.shape[1:])
            reference_tokens = reference_tokens.expand(n, -1)
        if reference.shape[0] != n:
            raise AnimzooInputError(f"IMF: {reference.shape[0]} reference frames for {n} tokens (give 1 or {n})")
        motion = self.token_decoder(torch.cat([reference_tokens, tokens]))
        m_r = [m[:n] for m in motion]
        m_c = [m[n:] for m in motion]
        dense = self.dense_encoder(reference)
        if self.image_skip:
            dense[-1] = torch.cat([dense[-1], FrameDecoder.image_to_level(reference, dense[-1].shape[-1])], dim=1)
        aligned = self.alignment(m_c, m_r, dense)
        return {"prediction": self.frame_decoder(aligned), "tokens": tokens, "reference_tokens": reference_tokens}

    def decode(self, reference: Tensor, tokens: Tensor, reference_tokens: Tensor | None = None) -> dict[str, Any]:
        """Draw ``reference`` (``1`` or ``N x 3 x S x S``) under the motion of ``tokens`` (``N x token_dim``).

        ``reference_tokens`` (``1`` or ``N x token_dim``) default to the reference's own. Returns
        ``{"prediction": N x 3 x S x S, "tokens", "reference_tokens"}``.
        """
        self._check_frames(reference, "the reference frame")
        self._check_tokens(tokens)
        if reference_tokens is None:
            reference_tokens = self.token_encoder(reference)
        else:
            self._check_tokens(reference_tokens, "reference_tokens")
        return self._render(reference, reference_tokens, tokens)

    @torch.no_grad()
    def interpolate(self, reference: Tensor, frame_a: Tensor, frame_b: Tensor, steps: int = 8) -> Tensor:
        """Draw ``reference`` (``1 x 3 x S x S``) under ``steps`` tokens on the line from
        ``frame_a``'s token to ``frame_b``'s (each ``1 x 3 x S x S``): ``steps x 3 x S x S``."""
        if steps < 2:
            raise ValueError(f"steps must be >= 2, got {steps}")
        tokens = self.encode_tokens(torch.cat([frame_a, frame_b]))
        path = interpolate_tokens(tokens[0], tokens[1], torch.linspace(0, 1, steps))
        return self.decode(reference, path)["prediction"]

    def animate(self, batch: dict[str, Any]) -> dict[str, Any]:
        reference, current = batch["source"], batch["driving"]
        self._check_pair(reference, current, ("source", "driving"))
        n = reference.shape[0]
        if current.shape[0] != n:
            raise AnimzooInputError(f"IMF: {n} source frames and {current.shape[0]} driving frames")
        tokens = self.token_encoder(torch.cat([reference, current]))  # one pass for both frames
        return self._render(reference, tokens[:n], tokens[n:])

    # ------------------------------------------------------------------ training

    def setup(self, stage: str) -> None:
        super().setup(stage)
        if stage == "fit":
            self.perceptual.prepare()  # a missing VGG19 file fails now, not after the first batch

    def generator_step(self, batch: dict[str, Any]) -> tuple[Tensor, dict[str, Tensor], dict[str, Any]]:
        out = self.animate(batch)
        driving, prediction = batch["driving"], out["prediction"]
        w = self.loss_weights
        logs: dict[str, Tensor] = {}
        if w["pixel"]:
            logs["pixel"] = float(w["pixel"]) * F.l1_loss(prediction, driving)
        if any(w["perceptual"]):
            logs["perceptual"] = self.perceptual(prediction, driving)
        if w["generator_gan"]:
            _, logits = self.discriminator(prediction)
            gan = hinge_generator_loss if self.gan_mode == "hinge" else lsgan_generator_loss
            logs["gen_gan"] = float(w["generator_gan"]) * gan(logits)
        loss = prediction.new_zeros(())
        for value in logs.values():
            loss = loss + value
        return loss, logs, out

    def discriminator_step(self, batch: dict[str, Any], out: dict[str, Any]) -> tuple[Tensor, dict[str, Tensor]] | None:
        return self.image_discriminator_step(batch, out, self.loss_weights["discriminator_gan"], self.gan_mode)
