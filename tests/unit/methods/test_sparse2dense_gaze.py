"""Gaze with the shipped sparse-to-dense model: moving only the two pupil landmarks changes the
output almost only inside the eye regions (the paper's reason for the local branches).

A SyntheticHeads head is rendered twice, identical but for its gaze; the source is the first
render, and the driving landmarks are the second render's, where only the pupils (68, 69) moved.
The test measures where the output's change lands: the eye windows of the two eye branches
cover about 9 % of the image and must receive at least 90 % of the change, and the change must
be visible (the model does respond to the pupils).
"""

from __future__ import annotations

import pytest
import torch

from animzoo.data.synthetic import render_clip
from animzoo.geometry.grid import make_coordinate_grid
from animzoo.geometry.heads import HeadParams, ProceduralHead, sample_identity, sample_motion
from animzoo.hub import load_pretrained
from animzoo.methods.sparse2dense.torch_model import crop_half_extent

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def model():
    return load_pretrained("sparse2dense.synthetic64")


def _gaze_pair(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Two 64 px renders of one head, gaze straight then 0.45 rad to the side; and their landmarks."""
    head = ProceduralHead()
    g = torch.Generator().manual_seed(1000 + seed)
    motion = sample_motion(sample_identity(g), 1, g)
    expression = motion.expression.expand(2, -1).clone()
    expression[:, 3:5] = 0  # eyes open
    params = HeadParams(identity=motion.identity.expand(2, -1), expression=expression,
                        gaze=torch.tensor([[0.0, 0.0], [0.45, 0.0]]), pose=motion.pose.expand(2, -1))
    frames, verts = render_clip(head, params, 64, g)
    return frames, head.landmarks(verts)[..., :2]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_moving_only_the_pupils_changes_only_the_eyes(model, seed: int) -> None:
    frames, landmarks = _gaze_pair(seed)
    moved = (landmarks[1] - landmarks[0]).abs().amax(-1) > 1e-5
    assert moved.nonzero().flatten().tolist() == [68, 69]  # the renders differ in the pupils only
    source = frames[:1]
    with torch.no_grad():
        still = model.generate(source, landmarks[:1], landmarks[:1])["prediction"]
        gazing = model.generate(source, landmarks[:1], landmarks[1:])["prediction"]
    change = (gazing - still).abs().sum(1)[0]  # H x W
    assert float(change.max()) > 0.05  # the pupils do move something

    net = model.dense_motion
    half = crop_half_extent(net.crop_size(64), 64)
    grid = make_coordinate_grid(64, 64)
    eyes = torch.zeros(64, 64, dtype=torch.bool)
    for name in ("right_eye", "left_eye"):
        centre = net.region_centres(landmarks[1:], name)[0]
        eyes |= (((grid - centre) / half).abs() <= 1).all(-1)
    assert float(eyes.float().mean()) < 0.15
    inside = float(change[eyes].sum() / change.sum())
    assert inside > 0.9, f"only {inside:.0%} of the change is inside the eye windows"
