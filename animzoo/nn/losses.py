"""Losses shared by the methods: perceptual pyramid, GAN losses, feature matching, equivariance.

- :class:`Vgg19Features` / :class:`PerceptualPyramidLoss`: the multi-scale VGG19 perceptual loss of
  FOMM / Monkey-Net. The VGG19 weights are a file resolved through :mod:`animzoo.weights` (never
  downloaded by a constructor); ``weights=None`` gives a pixel-pyramid L1 instead.
- LSGAN and hinge losses for generator and discriminator, over one logits tensor or the
  list / dict a multi-scale discriminator returns.
- :func:`feature_matching_loss`: L1 between discriminator feature maps of real and fake.
- :func:`random_tps_transform` / :class:`TPSTransform` / :class:`EquivarianceLoss`: random
  affine + thin-plate-spline warps built on :mod:`kornia.geometry.transform`, and the keypoint
  equivariance loss (value and jacobian) of FOMM.

Images are float in [0, 1], B x 3 x H x W; coordinates are normalised (x, y) in [-1, 1] with
``align_corners=True`` (see :mod:`animzoo.geometry.grid`).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from animzoo.nn.blocks import AntiAliasInterpolation2d
from animzoo.weights import WeightsError, get_weight_spec, load_state_dict_file, resolve_weight

__all__ = [
    "VGG19_LAYERS",
    "EquivarianceLoss",
    "ImagePyramid",
    "PerceptualPyramidLoss",
    "TPSTransform",
    "Vgg19Features",
    "feature_matching_loss",
    "hinge_discriminator_loss",
    "hinge_generator_loss",
    "lsgan_discriminator_loss",
    "lsgan_generator_loss",
    "random_tps_transform",
]

Logits = Tensor | Sequence[Tensor] | Mapping[object, Tensor]

# --------------------------------------------------------------------------------------------
# VGG19 features

# torchvision's VGG19 ("E") feature layout: conv widths, "M" = 2x2 max-pool.
_VGG19_CFG: tuple[int | str, ...] = (
    64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M", 512, 512, 512, 512, "M",
)  # fmt: skip
#: index in torchvision's ``vgg19().features`` of each ReLU whose output is returned
VGG19_LAYERS: dict[str, int] = {"relu1_1": 1, "relu2_1": 6, "relu3_1": 11, "relu4_1": 20, "relu5_1": 29}


def _vgg19_feature_layers(last: int) -> nn.Sequential:
    """``torchvision.models.vgg19().features[: last + 1]``, same indices (so the same state-dict
    keys ``<i>.weight``), built here so that torchvision is not needed and nothing is initialised
    at random only to be overwritten."""
    layers: list[nn.Module] = []
    channels = 3
    for item in _VGG19_CFG:
        if item == "M":
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
        else:
            layers.append(nn.Conv2d(channels, int(item), kernel_size=3, padding=1, device="meta"))
            layers.append(nn.ReLU(inplace=False))
            channels = int(item)
        if len(layers) > last:
            break
    return nn.Sequential(*layers[: last + 1])


class Vgg19Features(nn.Module):
    """Frozen ImageNet VGG19 returning relu1_1, relu2_1, relu3_1, relu4_1, relu5_1.

    The layout is torchvision's ``vgg19().features`` (up to relu5_1); the weights come from a
    state-dict file (torchvision's ``vgg19-dcbb9e9d.pth`` or any file with the same
    ``features.<i>.weight/bias`` keys, with or without the ``features.`` prefix; classifier keys
    are ignored). No download ever happens here: the file is resolved by
    :func:`animzoo.weights.resolve_weight` (``weights_path`` is its explicit path).

    Args:
        weights_path: a state-dict file; None looks for the registered ``"vgg19"`` file.
        allow_download: passed to the resolver (None: ``$ANIMZOO_ALLOW_DOWNLOAD`` decides).

    Input: B x 3 x H x W in [0, 1] (ImageNet normalisation is applied inside, from buffers).
    Output: list of 5 maps: 64 x H x W, 128 x H/2, 256 x H/4, 512 x H/8, 512 x H/16. An input
    smaller than 16 px gives only the maps its size allows (8 px: 4 maps, 4 px: 3, ...).
    """

    layer_names: tuple[str, ...] = tuple(VGG19_LAYERS)

    def __init__(self, weights_path: str | os.PathLike[str] | None = None, *, allow_download: bool | None = None):
        super().__init__()
        path = resolve_weight("vgg19", weights_path, allow_download=allow_download)
        self.weights_file = Path(path)
        layers = _vgg19_feature_layers(max(VGG19_LAYERS.values()))
        layers.load_state_dict(self._features_state(path, layers), strict=True, assign=True)
        self.features = layers
        self.register_buffer("mean", torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1), persistent=False)
        self.requires_grad_(False)
        self.eval()

    @staticmethod
    def _features_state(path: Path, layers: nn.Sequential) -> dict[str, Tensor]:
        state = load_state_dict_file(path)
        if any(k.startswith("features.") for k in state):
            state = {k[len("features.") :]: v for k, v in state.items() if k.startswith("features.")}
        expected = layers.state_dict(keep_vars=True)
        missing = sorted(k for k in expected if k not in state)
        if missing:
            raise WeightsError(
                f"weight file {path} is not a torchvision VGG19 state dict: missing {', '.join(missing[:6])}"
                f"{' ...' if len(missing) > 6 else ''}. Use {get_weight_spec('vgg19').filename} from torchvision."
            )
        picked = {}
        for key, ref in expected.items():
            value = state[key]
            if tuple(value.shape) != tuple(ref.shape):
                raise WeightsError(
                    f"weight file {path}: {key} has shape {tuple(value.shape)}, VGG19 needs {tuple(ref.shape)}"
                )
            picked[key] = value.detach().to(torch.float32).clone()
        return picked

    def train(self, mode: bool = True) -> Vgg19Features:
        """Stays in eval mode: the network is a fixed feature extractor."""
        return super().train(False)

    def forward(self, image: Tensor) -> list[Tensor]:
        x = (image.to(self.mean.dtype) - self.mean) / self.std
        outputs: list[Tensor] = []
        wanted = set(VGG19_LAYERS.values())
        for index, layer in enumerate(self.features):
            if isinstance(layer, nn.MaxPool2d) and min(x.shape[-2:]) < 2:
                break  # the input is too small for the deeper layers
            x = layer(x)
            if index in wanted:
                outputs.append(x)
        return outputs


# --------------------------------------------------------------------------------------------
# image pyramid


class ImagePyramid(nn.Module):
    """Anti-aliased copies of an image at several scales: ``{scale: B x C x sH x sW}``.

    Each level is :class:`animzoo.nn.blocks.AntiAliasInterpolation2d` (gaussian blur with
    ``sigma = (1/scale - 1) / 2``, then bilinear resampling with ``align_corners=True`` to
    ``round(scale * size)``); scale 1 is the input itself. Holds no persistent state.
    """

    def __init__(self, scales: Sequence[float], channels: int = 3):
        super().__init__()
        self.scales = tuple(float(s) for s in scales)
        self.downs = nn.ModuleList(AntiAliasInterpolation2d(channels, s) for s in self.scales)

    def forward(self, x: Tensor) -> dict[float, Tensor]:
        return {s: (x if s == 1.0 else down(x)) for s, down in zip(self.scales, self.downs)}


# --------------------------------------------------------------------------------------------
# perceptual pyramid loss


class PerceptualPyramidLoss(nn.Module):
    """Multi-scale perceptual loss of FOMM / Monkey-Net.

    ``sum over scales s, layers i of layer_weights[i] * mean |VGG_i(P_s(prediction)) - VGG_i(P_s(target))|``
    with ``P_s`` an anti-aliased downsampling and the target's features detached.

    With ``weights=None`` (or ``"none"``) no network is used: the loss is the pixel-pyramid L1
    ``sum over scales s of mean |P_s(prediction) - P_s(target)|`` (unweighted by ``layer_weights``).
    Recipes choosing it say so (``perceptual_weights: none``).

    An image smaller than 16 px (e.g. 64 px at scale 0.125) has no relu5_1 (and smaller ones
    lose more layers): those terms are left out at that scale, as VGG19 cannot compute them.

    The VGG19 is built on the first forward (or by :meth:`prepare`), never in the constructor, and
    never downloads unless ``allow_download`` / ``$ANIMZOO_ALLOW_DOWNLOAD`` allows it; a missing
    file raises :class:`animzoo.weights.WeightsNotFoundError` naming the file and the fix. The
    VGG is kept out of ``state_dict()`` and ``parameters()`` (checkpoints stay small, optimisers
    never see it) and follows the input's device.

    Args:
        scales: pyramid scales, each in (0, 1].
        layer_weights: weights of relu1_1 ... relu5_1 (zeros skip a layer).
        weights: ``"vgg19"`` (the registered file), a path to a VGG19 state-dict file, or
            None / ``"none"`` for the pixel pyramid.
        allow_download: passed to the resolver.
    """

    def __init__(
        self,
        scales: Sequence[float] = (1.0, 0.5, 0.25, 0.125),
        layer_weights: Sequence[float] = (10.0, 10.0, 10.0, 10.0, 10.0),
        weights: str | os.PathLike[str] | None = "vgg19",
        *,
        allow_download: bool | None = None,
    ):
        super().__init__()
        if len(layer_weights) != len(VGG19_LAYERS):
            raise ValueError(f"layer_weights needs {len(VGG19_LAYERS)} values (relu1_1..relu5_1), got {layer_weights}")
        if not scales:
            raise ValueError("scales must not be empty")
        self.scales = tuple(float(s) for s in scales)
        self.layer_weights = tuple(float(w) for w in layer_weights)
        if isinstance(weights, str) and weights.strip().lower() in {"none", "null", ""}:
            weights = None
        self.weights = weights
        self.allow_download = allow_download
        self.pyramid = ImagePyramid(self.scales, channels=3)
        self._vgg: Vgg19Features | None = None  # set via object.__setattr__: not a submodule

    @property
    def uses_vgg(self) -> bool:
        return self.weights is not None

    def prepare(self) -> Vgg19Features | None:
        """Resolve and load the VGG19 now (e.g. in ``setup``) so a missing file fails early."""
        if self.weights is None:
            return None
        if self._vgg is None:
            if isinstance(self.weights, str) and self.weights == "vgg19":
                path = None
            else:
                path = self.weights
            object.__setattr__(self, "_vgg", Vgg19Features(path, allow_download=self.allow_download))
        return self._vgg

    def _vgg_on(self, device: torch.device) -> Vgg19Features:
        vgg = self.prepare()
        assert vgg is not None
        if vgg.mean.device != device:
            vgg.to(device)
        return vgg

    def forward(self, prediction: Tensor, target: Tensor) -> Tensor:
        if prediction.shape != target.shape:
            raise ValueError(f"prediction {tuple(prediction.shape)} and target {tuple(target.shape)} differ in shape")
        pred_pyr = self.pyramid(prediction)
        target_pyr = self.pyramid(target.detach())
        total = prediction.new_zeros(())
        if self.weights is None:
            for s in self.scales:
                total = total + (pred_pyr[s] - target_pyr[s]).abs().mean()
            return total
        vgg = self._vgg_on(prediction.device)
        for s in self.scales:
            pred_feats = vgg(pred_pyr[s])
            with torch.no_grad():
                target_feats = vgg(target_pyr[s])
            for w, pf, tf in zip(self.layer_weights, pred_feats, target_feats):
                if w != 0:
                    total = total + w * (pf - tf).abs().mean()
        return total

    def extra_repr(self) -> str:
        return f"scales={self.scales}, layer_weights={self.layer_weights}, weights={self.weights!r}"


# --------------------------------------------------------------------------------------------
# GAN losses


def _as_list(logits: Logits) -> list[Tensor]:
    if isinstance(logits, Tensor):
        return [logits]
    if isinstance(logits, Mapping):
        return list(logits.values())
    return list(logits)


def _paired(real: Logits, fake: Logits) -> list[tuple[Tensor, Tensor]]:
    if isinstance(real, Mapping) and isinstance(fake, Mapping):
        if set(real) != set(fake):
            raise ValueError(f"real and fake logits have different scales: {sorted(real)} vs {sorted(fake)}")
        return [(real[k], fake[k]) for k in real]
    r, f = _as_list(real), _as_list(fake)
    if len(r) != len(f):
        raise ValueError(f"got {len(r)} real and {len(f)} fake logits tensors")
    return list(zip(r, f))


def lsgan_generator_loss(logits: Logits) -> Tensor:
    """``sum over scales of mean (1 - D(fake))^2``. Accepts a tensor, a list or a dict of tensors."""
    items = _as_list(logits)
    return sum(((1 - x) ** 2).mean() for x in items)  # type: ignore[return-value]


def lsgan_discriminator_loss(real_logits: Logits, fake_logits: Logits) -> Tensor:
    """``sum over scales of mean [(1 - D(real))^2 + D(fake)^2]``.

    Pass logits of ``D(fake.detach())`` so the generator gets no gradient from this loss.
    """
    return sum(((1 - r) ** 2).mean() + (f**2).mean() for r, f in _paired(real_logits, fake_logits))  # type: ignore[return-value]


def hinge_generator_loss(logits: Logits) -> Tensor:
    """``sum over scales of -mean D(fake)``."""
    return sum(-x.mean() for x in _as_list(logits))  # type: ignore[return-value]


def hinge_discriminator_loss(real_logits: Logits, fake_logits: Logits) -> Tensor:
    """``sum over scales of mean relu(1 - D(real)) + mean relu(1 + D(fake))``."""
    return sum(F.relu(1 - r).mean() + F.relu(1 + f).mean() for r, f in _paired(real_logits, fake_logits))  # type: ignore[return-value]


def feature_matching_loss(
    real_feats: Sequence[Tensor] | Mapping[object, Sequence[Tensor]],
    fake_feats: Sequence[Tensor] | Mapping[object, Sequence[Tensor]],
    weights: Sequence[float] | None = None,
) -> Tensor:
    """``sum over (scales,) layers i of weights[i] * mean |fake_i - real_i.detach()|``.

    Args:
        real_feats, fake_feats: lists of feature maps of the discriminator (one per layer), or
            dicts ``{scale: list}`` from a multi-scale discriminator (same keys).
        weights: one weight per layer (Monkey-Net: ``[10, 10, 10, 10, 1]``); None: all 1.
    """
    if isinstance(real_feats, Mapping) != isinstance(fake_feats, Mapping):
        raise ValueError("real_feats and fake_feats must both be lists or both be dicts")
    if isinstance(real_feats, Mapping):
        assert isinstance(fake_feats, Mapping)
        if set(real_feats) != set(fake_feats):
            raise ValueError(
                f"real and fake features have different scales: {sorted(real_feats)} vs {sorted(fake_feats)}"
            )
        groups = [(real_feats[k], fake_feats[k]) for k in real_feats]
    else:
        groups = [(real_feats, fake_feats)]
    total: Tensor | None = None
    for real, fake in groups:
        if len(real) != len(fake):
            raise ValueError(f"got {len(real)} real and {len(fake)} fake feature maps")
        layer_weights = [1.0] * len(real) if weights is None else list(weights)
        if len(layer_weights) != len(real):
            raise ValueError(f"{len(layer_weights)} feature-matching weights for {len(real)} feature maps")
        for w, r, f in zip(layer_weights, real, fake):
            if w == 0:
                continue
            term = w * (f - r.detach()).abs().mean()
            total = term if total is None else total + term
    if total is None:
        first = groups[0][1][0] if groups and groups[0][1] else None
        return first.new_zeros(()) if first is not None else torch.zeros(())
    return total


# --------------------------------------------------------------------------------------------
# thin-plate-spline transforms and equivariance


class TPSTransform:
    """A batch of maps ``T`` of normalised coordinates: affine + thin-plate spline.

    ``T(p) = A p + t + sum_k W_k U(|p - c_k|)`` with kornia's kernel ``U(r) = r^2 log r``
    (:func:`kornia.geometry.transform.warp_points_tps`). Semantics follow FOMM's ``Transform``:
    ``T`` maps a point of the *transformed* image to the point of the *original* image it shows,

    - :meth:`transform_frame` ``(image)(p) = image(T(p))`` (kornia's ``warp_image_tps``),
    - :meth:`warp_coordinates` applies ``T`` (transformed -> original): the equivariance loss
      maps keypoints found on the transformed image back with it,
    - :meth:`inverse_coordinates` solves ``T(p) = q`` (original -> transformed) by Newton steps,
    - :meth:`jacobian` is ``dT/dp`` (B x N x 2 x 2, rows = output coordinate).

    Attributes (kornia's layout): ``kernel_centers`` B x K x 2, ``kernel_weights`` B x K x 2,
    ``affine_weights`` B x 3 x 2 (row 0 translation, rows 1-2 the transposed 2 x 2 matrix).
    """

    def __init__(self, kernel_centers: Tensor, kernel_weights: Tensor, affine_weights: Tensor):
        if kernel_centers.ndim != 3 or kernel_centers.shape[-1] != 2:
            raise ValueError(f"kernel_centers must be B x K x 2, got {tuple(kernel_centers.shape)}")
        if kernel_weights.shape != kernel_centers.shape:
            raise ValueError(f"kernel_weights {tuple(kernel_weights.shape)} must match kernel_centers")
        if affine_weights.shape != (kernel_centers.shape[0], 3, 2):
            raise ValueError(f"affine_weights must be B x 3 x 2, got {tuple(affine_weights.shape)}")
        self.kernel_centers = kernel_centers
        self.kernel_weights = kernel_weights
        self.affine_weights = affine_weights

    # --- constructors
    @classmethod
    def from_affine(
        cls, theta: Tensor, kernel_centers: Tensor | None = None, kernel_weights: Tensor | None = None
    ) -> TPSTransform:
        """From B x 2 x 3 matrices ``[A | t]`` (``T(p) = A p + t``) plus optional kernel terms."""
        b = theta.shape[0]
        affine = torch.cat([theta[:, :, 2].unsqueeze(1), theta[:, :, :2].transpose(1, 2)], dim=1)
        if kernel_centers is None:
            kernel_centers = theta.new_zeros(b, 1, 2)
            kernel_weights = theta.new_zeros(b, 1, 2)
        assert kernel_weights is not None
        return cls(kernel_centers, kernel_weights, affine)

    @classmethod
    def identity(cls, batch_size: int, *, device=None, dtype: torch.dtype = torch.float32) -> TPSTransform:
        theta = torch.eye(2, 3, device=device, dtype=dtype).expand(batch_size, 2, 3).contiguous()
        return cls.from_affine(theta)

    @classmethod
    def from_control_points(cls, points: Tensor, targets: Tensor) -> TPSTransform:
        """The spline with ``T(points) = targets`` (B x N x 2 each; kornia's ``get_tps_transform``)."""
        from kornia.geometry.transform import get_tps_transform

        kernel_weights, affine_weights = get_tps_transform(points, targets)
        return cls(targets, kernel_weights, affine_weights)

    # --- device handling
    def to(self, device=None, dtype: torch.dtype | None = None) -> TPSTransform:
        return TPSTransform(
            self.kernel_centers.to(device=device, dtype=dtype),
            self.kernel_weights.to(device=device, dtype=dtype),
            self.affine_weights.to(device=device, dtype=dtype),
        )

    @property
    def batch_size(self) -> int:
        return self.kernel_centers.shape[0]

    def _like(self, x: Tensor) -> TPSTransform:
        if self.kernel_centers.device == x.device and self.kernel_centers.dtype == x.dtype:
            return self
        return self.to(x.device, x.dtype)

    # --- the maps
    def warp_coordinates(self, points: Tensor) -> Tensor:
        """``T(points)``: B x N x 2 coordinates of the transformed image -> of the original image."""
        from kornia.geometry.transform import warp_points_tps

        t = self._like(points)
        return warp_points_tps(points, t.kernel_centers, t.kernel_weights, t.affine_weights)

    __call__ = warp_coordinates

    def jacobian(self, points: Tensor) -> Tensor:
        """``dT/dp`` at B x N x 2 points: B x N x 2 x 2, ``J[..., j, i] = dT_j / dp_i``."""
        t = self._like(points)
        diff = points.unsqueeze(2) - t.kernel_centers.unsqueeze(1)  # B N K 2
        sq = (diff**2).sum(-1)  # B N K
        safe = torch.where(sq > 0, sq, torch.ones_like(sq))
        # U(s) = 0.5 s log s with s = |p - c|^2  ->  dU/dp = (log s + 1)(p - c), 0 at the centre
        factor = torch.where(sq > 0, safe.log() + 1, torch.zeros_like(sq))  # B N K
        grad_u = factor.unsqueeze(-1) * diff  # B N K 2 (over i)
        kernel_part = torch.einsum("bnki,bkj->bnji", grad_u, t.kernel_weights)
        affine_part = t.affine_weights[:, 1:, :].transpose(1, 2).unsqueeze(1)  # B 1 j i
        return kernel_part + affine_part

    def inverse_coordinates(self, points: Tensor, iterations: int = 20) -> Tensor:
        """Solve ``T(p) = points`` for p (original -> transformed), by damped Newton steps.

        Exact to ~1e-6 for the mild, invertible warps used for augmentation; not differentiable
        (the result is detached).
        """
        with torch.no_grad():
            target = points.detach()
            guess = target.clone()
            residual = self.warp_coordinates(guess) - target
            for _ in range(iterations):
                norm = residual.norm(dim=-1)
                if norm.max() < 1e-7:
                    break
                step = torch.linalg.solve(self.jacobian(guess), residual.unsqueeze(-1)).squeeze(-1)
                scale = torch.ones_like(norm)
                for _ in range(8):  # halve the step where it does not reduce the residual
                    trial = guess - scale.unsqueeze(-1) * step
                    trial_residual = self.warp_coordinates(trial) - target
                    worse = trial_residual.norm(dim=-1) > norm
                    if not worse.any():
                        break
                    scale = torch.where(worse, scale * 0.5, scale)
                guess, residual = trial, trial_residual
        return guess

    def transform_frame(self, image: Tensor, padding_mode: str = "reflection") -> Tensor:
        """The transformed image ``out(p) = image(T(p))`` (bilinear, ``align_corners=True``)."""
        from kornia.geometry.transform import warp_image_tps

        if image.shape[0] != self.batch_size:
            raise ValueError(f"image batch {image.shape[0]} != transform batch {self.batch_size}")
        t = self._like(image)
        return warp_image_tps(
            image, t.kernel_centers, t.kernel_weights, t.affine_weights, align_corners=True, padding_mode=padding_mode
        )


def random_tps_transform(
    batch_size: int,
    sigma_affine: float = 0.05,
    sigma_tps: float = 0.005,
    points_tps: int = 5,
    generator: torch.Generator | None = None,
    *,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> TPSTransform:
    """A random affine + TPS transform per sample, with FOMM's parameters.

    ``A | t = [I | 0] + N(0, sigma_affine)`` (2 x 3), control points on a ``points_tps`` x
    ``points_tps`` grid over [-1, 1]^2 with spline weights ``N(0, sigma_tps)`` per axis. (FOMM
    adds one weight to both axes and measures L1 distances; here the Euclidean TPS kernel of
    kornia with independent x/y weights is used, so equal ``sigma_tps`` bends slightly less.)
    ``sigma_affine = sigma_tps = 0`` gives the identity. Random numbers come from ``generator``
    (on its device, default CPU) and are moved to ``device``.
    """
    gen_device = generator.device if generator is not None else torch.device("cpu")
    theta = torch.eye(2, 3, dtype=dtype, device=gen_device).expand(batch_size, 2, 3).clone()
    if sigma_affine:
        theta = theta + sigma_affine * torch.randn(
            batch_size, 2, 3, generator=generator, device=gen_device, dtype=dtype
        )
    axis = (
        torch.linspace(-1, 1, points_tps, dtype=dtype, device=gen_device)
        if points_tps > 1
        else torch.zeros(1, dtype=dtype, device=gen_device)
    )
    yy, xx = torch.meshgrid(axis, axis, indexing="ij")
    centers = torch.stack([xx.reshape(-1), yy.reshape(-1)], dim=-1).expand(batch_size, -1, -1).contiguous()
    weights = torch.zeros_like(centers)
    if sigma_tps:
        weights = sigma_tps * torch.randn(centers.shape, generator=generator, device=gen_device, dtype=dtype)
    transform = TPSTransform.from_affine(theta, centers, weights)
    return transform.to(device=device) if device is not None else transform


class EquivarianceLoss(nn.Module):
    """Keypoint equivariance under random TPS warps (FOMM).

    For a detector ``kp = detector(x)`` and a random transform ``T``:
    ``value = mean |kp(x) - T(kp(T x))|`` and, when ``jacobian_weight > 0`` and the detector
    returns ``"jacobian"``, ``jacobian = mean |I - J(x)^-1 dT(kp(T x)) J(T x)|``.

    Args:
        sigma_affine, sigma_tps, points_tps: of :func:`random_tps_transform`.
        value_weight, jacobian_weight: weights of the two terms (FOMM: 10, 10; 0 skips a term).
        padding_mode: of :meth:`TPSTransform.transform_frame`.
    """

    def __init__(
        self,
        sigma_affine: float = 0.05,
        sigma_tps: float = 0.005,
        points_tps: int = 5,
        value_weight: float = 10.0,
        jacobian_weight: float = 0.0,
        padding_mode: str = "reflection",
    ):
        super().__init__()
        self.sigma_affine = sigma_affine
        self.sigma_tps = sigma_tps
        self.points_tps = points_tps
        self.value_weight = value_weight
        self.jacobian_weight = jacobian_weight
        self.padding_mode = padding_mode

    def sample_transform(
        self, batch_size: int, *, device=None, generator: torch.Generator | None = None
    ) -> TPSTransform:
        return random_tps_transform(
            batch_size, self.sigma_affine, self.sigma_tps, self.points_tps, generator=generator, device=device
        )

    def terms(
        self, kp: Mapping[str, Tensor], kp_transformed: Mapping[str, Tensor], transform: TPSTransform
    ) -> dict[str, Tensor]:
        """The weighted loss terms from keypoints of ``x`` and of ``transform.transform_frame(x)``."""
        out: dict[str, Tensor] = {}
        if self.value_weight:
            back = transform.warp_coordinates(kp_transformed["value"])
            out["equivariance_value"] = self.value_weight * (kp["value"] - back).abs().mean()
        if self.jacobian_weight and "jacobian" in kp and "jacobian" in kp_transformed:
            jac_t = torch.matmul(transform.jacobian(kp_transformed["value"]), kp_transformed["jacobian"])
            normed = torch.matmul(torch.linalg.inv(kp["jacobian"]), jac_t)
            eye = torch.eye(2, dtype=normed.dtype, device=normed.device)
            out["equivariance_jacobian"] = self.jacobian_weight * (eye - normed).abs().mean()
        return out

    def forward(
        self,
        detector: Callable[[Tensor], Mapping[str, Tensor]],
        image: Tensor,
        kp: Mapping[str, Tensor] | None = None,
        *,
        transform: TPSTransform | None = None,
        generator: torch.Generator | None = None,
    ) -> dict[str, Tensor]:
        """Warp ``image``, detect keypoints on it and return the weighted terms.

        Args:
            detector: image -> ``{"value": B x K x 2, optional "jacobian": B x K x 2 x 2}``.
            image: B x C x H x W.
            kp: the detector's output on ``image`` (computed when None).
            transform: a transform to use (default: a fresh random one).
        """
        if kp is None:
            kp = detector(image)
        if transform is None:
            transform = self.sample_transform(image.shape[0], device=image.device, generator=generator)
        warped = transform.transform_frame(image, padding_mode=self.padding_mode)
        return self.terms(kp, detector(warped), transform)

    def extra_repr(self) -> str:
        return (
            f"sigma_affine={self.sigma_affine}, sigma_tps={self.sigma_tps}, points_tps={self.points_tps}, "
            f"value_weight={self.value_weight}, jacobian_weight={self.jacobian_weight}"
        )
