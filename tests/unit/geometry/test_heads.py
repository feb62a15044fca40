"""ProceduralHead: landmark semantics, pose / expression conventions, mirror symmetry."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from animzoo.geometry.heads import (
    IBUG68_FLIP,
    LANDMARK_FLIP_70,
    HeadParams,
    MorphableHead,
    ProceduralHead,
    sample_identity,
    sample_motion,
    vertex_normals,
)
from animzoo.geometry.raster import render


@pytest.fixture(scope="module")
def head() -> ProceduralHead:
    return ProceduralHead()


def _params(head: ProceduralHead, n: int = 1, seed: int = 0) -> HeadParams:
    g = torch.Generator().manual_seed(seed)
    return head.neutral_params(n, sample_identity(g, 1).expand(n, -1))


def test_protocol_and_shapes(head: ProceduralHead) -> None:
    assert isinstance(head, MorphableHead)
    p = _params(head, 3)
    v = head.vertices(p)
    assert v.shape == (3, head.num_vertices, 3) and torch.isfinite(v).all()
    assert head.landmarks(v).shape == (3, 70, 3)
    assert head.faces.max() < head.num_vertices and head.faces.dtype == torch.long
    assert 1000 < head.faces.shape[0] < 6000  # small enough to render fast
    assert head.vertex_colors(p).shape == (3, head.num_vertices, 3)


def test_flip_permutations() -> None:
    assert sorted(IBUG68_FLIP) == list(range(68))
    assert all(IBUG68_FLIP[IBUG68_FLIP[i]] == i for i in range(68))
    assert IBUG68_FLIP[0] == 16 and IBUG68_FLIP[36] == 45 and IBUG68_FLIP[48] == 54 and IBUG68_FLIP[30] == 30
    assert LANDMARK_FLIP_70[68] == 69 and LANDMARK_FLIP_70[:68] == IBUG68_FLIP


def test_landmark_vertices_follow_flip(head: ProceduralHead) -> None:
    flip, lm = head.vertex_flip_index, head.landmark_indices
    assert torch.equal(flip[flip], torch.arange(head.num_vertices))
    assert torch.equal(flip[lm], lm[list(LANDMARK_FLIP_70)])


def test_mirrored_params_give_mirrored_mesh(head: ProceduralHead) -> None:
    g = torch.Generator().manual_seed(3)
    p = sample_motion(sample_identity(g)[0], 6, g)
    v = head.vertices(p)
    vm = head.vertices(p.mirrored())
    mirrored = v * torch.tensor([-1.0, 1.0, 1.0])
    assert torch.allclose(mirrored[:, head.vertex_flip_index], vm, atol=1e-4)
    # The same for landmarks through LANDMARK_FLIP_70.
    lm, lm_m = head.landmarks(v)[..., :2], head.landmarks(vm)[..., :2]
    lm_flipped = (lm * torch.tensor([-1.0, 1.0]))[:, list(LANDMARK_FLIP_70)]
    assert torch.allclose(lm_flipped, lm_m, atol=1e-4)


def test_landmark_layout_frontal(head: ProceduralHead) -> None:
    lm = head.landmarks(head.vertices(_params(head)))[0, :, :2]
    x, y = lm[:, 0], lm[:, 1]
    assert x[0] < x[8] < x[16] and y[8] > y[0]  # jaw from image left, chin at the bottom
    assert x[36] < x[39] < 0 < x[42] < x[45]  # right eye on the image left
    assert (y[17:27] < y[36:48].min()).all()  # brows above the eyes
    assert y[36:48].max() < y[30] < y[51] < y[57] < y[8]  # eyes, nose tip, lips, chin
    assert abs(float(x[30])) < 1e-5 and abs(float(x[68] + x[69])) < 1e-5
    # Pupils sit between the eye corners.
    assert x[36] < x[68] < x[39] and x[42] < x[69] < x[45]


def test_positive_yaw_turns_to_image_right(head: ProceduralHead) -> None:
    p = _params(head, 2)
    p.pose[1, 0] = 0.4
    lm = head.landmarks(head.vertices(p))[..., :2]
    assert lm[1, 30, 0] > lm[0, 30, 0] + 0.05  # the nose tip moves right
    # The far side (the subject's left = image right) compresses, the near side widens.
    far = lambda k: (lm[k, 16, 0] - lm[k, 30, 0]).item()  # noqa: E731
    near = lambda k: (lm[k, 30, 0] - lm[k, 0, 0]).item()  # noqa: E731
    assert far(1) < 0.8 * far(0) and near(1) > near(0)
    assert (lm[1, 45, 0] - lm[1, 42, 0]) < 0.9 * (lm[0, 45, 0] - lm[0, 42, 0])  # far eye narrower


def test_pitch_and_roll_signs(head: ProceduralHead) -> None:
    p = _params(head, 3)
    p.pose[1, 1] = 0.3  # pitch up
    p.pose[2, 2] = 0.3  # roll clockwise
    lm = head.landmarks(head.vertices(p))[..., :2]
    assert lm[1, 30, 1] < lm[0, 30, 1] - 0.02  # nose moves up
    assert lm[2, 27, 0] > lm[0, 27, 0] + 0.01  # upper face moves right
    assert lm[2, 8, 0] < lm[0, 8, 0] - 0.01  # chin moves left


def test_blink_closes_the_eye(head: ProceduralHead) -> None:
    p = _params(head, 2)
    p.expression[1, 4] = 1.0  # blink_right: landmarks 36-41, image left
    p.pose[:, 6] = 1.3  # zoom in so the eyes span many pixels
    v = head.vertices(p)
    lm = head.landmarks(v)[..., :2]
    gap = lambda k, a, b: (lm[k, a] - lm[k, b]).norm().item()  # noqa: E731
    assert gap(1, 37, 41) < 0.25 * gap(0, 37, 41) and gap(1, 38, 40) < 0.25 * gap(0, 38, 40)
    assert abs(gap(1, 43, 47) - gap(0, 43, 47)) < 1e-5  # the other eye stays open
    # Iris pixels of that eye disappear behind the lid.
    part_color = torch.nn.functional.one_hot(head.part, 6).float()
    img, _ = render(v, head.faces, part_color, (96, 96))
    eye = img[:, 1] > 0.5
    left_half = torch.zeros_like(eye)
    left_half[..., :48] = True
    assert (eye & left_half)[0].sum() > 30
    assert (eye & left_half)[1].sum() == 0
    assert (eye & ~left_half)[1].sum() > 30


def test_mouth_open_separates_inner_lips(head: ProceduralHead) -> None:
    p = _params(head, 2)
    p.expression[1, 0] = 1.0
    lm = head.landmarks(head.vertices(p))[..., :2]
    inner = lambda k: (lm[k, 66] - lm[k, 62]).norm().item()  # noqa: E731
    assert inner(0) < 1e-5 < 0.03 < inner(1)
    assert (lm[1, 8, 1] - lm[0, 8, 1]).item() > 0.03  # the chin drops
    assert torch.allclose(lm[1, 36:48], lm[0, 36:48])  # the eyes do not move


def test_smile_and_brow_raise(head: ProceduralHead) -> None:
    p = _params(head, 3)
    p.expression[1, 1] = 1.0
    p.expression[2, 2] = 1.0
    lm = head.landmarks(head.vertices(p))[..., :2]
    assert lm[1, 48, 1] < lm[0, 48, 1] - 0.01 and lm[1, 54, 1] < lm[0, 54, 1] - 0.01
    assert (lm[2, 17:27, 1] < lm[0, 17:27, 1] - 0.005).all()


def test_gaze_moves_pupils(head: ProceduralHead) -> None:
    p = _params(head, 2)
    p.gaze[1, 0] = 0.3
    lm = head.landmarks(head.vertices(p))[..., :2]
    assert (lm[1, 68:, 0] > lm[0, 68:, 0] + 0.01).all()
    assert torch.allclose(lm[1, :68], lm[0, :68])


def test_faces_wound_outward(head: ProceduralHead) -> None:
    p = _params(head)
    v = head.model_vertices(p)[0]
    f = head.faces
    n = torch.cross(v[f[:, 1]] - v[f[:, 0]], v[f[:, 2]] - v[f[:, 0]], dim=-1)
    centre = v[f].mean(1)
    # Skull: normals point away from the head centre.
    skin = (head.part[f[:, 0]] == 0)
    outward = ((n * centre).sum(-1) > 0)[skin].float().mean()
    assert outward > 0.97
    # Frontal view: front faces (area2 < 0 in image space) are the ones facing the viewer.
    vn = vertex_normals(head.vertices(p), f)[0]
    assert vn[head.landmark_indices[30], 2] < -0.5  # nose tip normal points at the viewer


def test_params_dict_round_trip(head: ProceduralHead) -> None:
    g = torch.Generator().manual_seed(0)
    p = sample_motion(sample_identity(g)[0], 4, g)
    d = p.to_dict(prefix="param_")
    assert set(d) == {"param_identity", "param_expression", "param_gaze", "param_pose"}
    assert all(isinstance(a, np.ndarray) and a.dtype == np.float32 and a.shape[0] == 4 for a in d.values())
    q = HeadParams.from_dict(d, prefix="param_")
    assert torch.allclose(head.vertices(p), head.vertices(q))


def test_motion_is_smooth_and_bounded() -> None:
    g = torch.Generator().manual_seed(1)
    p = sample_motion(sample_identity(g)[0], 64, g)
    yaw = p.pose[:, 0]
    assert yaw.abs().max() <= 0.53 and (yaw[1:] - yaw[:-1]).abs().max() < 0.1
    assert ((p.expression >= 0) & (p.expression <= 1)).all()
