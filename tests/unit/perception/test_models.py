"""Shapes and conventions of LandmarkDetector / IdentityEmbedder; NME and SMS; nearby-frame pairs."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from animzoo import io as aio
from animzoo.data.videos import VideoFolder
from animzoo.perception.identity import IdentityEmbedder
from animzoo.perception.landmarks import LandmarkDetector
from animzoo.perception.landmarks.evaluation import LandmarkSequenceMetric, nme, sms

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("stride,stacks", [(4, 2), (2, 1)])
def test_landmark_detector_shapes_and_pixel_output(stride: int, stacks: int) -> None:
    model = LandmarkDetector(num_landmarks=5, num_stacks=stacks, depth=2, channels=16, heatmap_stride=stride).eval()
    frames = torch.rand(2, 3, 64, 64)
    out = model(frames)
    assert out["heatmaps"].shape == (2, 5, 64 // stride, 64 // stride)
    torch.testing.assert_close(out["heatmaps"].sum(dim=(-2, -1)), torch.ones(2, 5))
    assert out["landmarks"].shape == (2, 5, 2) and len(out["stack_landmarks"]) == stacks
    pixels = model.detect(frames)
    torch.testing.assert_close(pixels, (out["landmarks"] + 1) * 31.5)
    # Other frame sizes are resized to input_size; the answer is in the input's pixels.
    big = torch.nn.functional.interpolate(frames, size=(128, 128), mode="bilinear", align_corners=True)
    assert torch.allclose(model.detect(big), (out["landmarks"] + 1) * 63.5, atol=2.0)
    with pytest.raises(ValueError, match="divisible"):
        model(torch.rand(1, 3, 60, 60))


def test_identity_embedder_is_unit_norm() -> None:
    model = IdentityEmbedder(dim=32, backbone="resnet18", backbone_kwargs={"channels": [8, 8, 16, 16]}).eval()
    out = model(torch.rand(3, 3, 64, 64))
    assert out.shape == (3, 32)
    torch.testing.assert_close(out.norm(dim=-1), torch.ones(3))


def test_nme_normalises_by_the_outer_eye_corners() -> None:
    target = torch.zeros(1, 70, 2)
    target[0, 36], target[0, 45] = torch.tensor([10.0, 20.0]), torch.tensor([30.0, 20.0])
    prediction = target + torch.tensor([3.0, 4.0])  # every point 5 px off
    torch.testing.assert_close(nme(prediction, target), torch.tensor([0.25]))


def test_sms_is_zero_on_a_linear_trajectory_and_known_on_a_zigzag() -> None:
    t = torch.arange(6, dtype=torch.float32)
    linear = torch.stack([2 * t, -t], -1)[:, None, :].expand(6, 3, 2)
    assert sms(linear).abs().max() == 0
    zigzag = linear.clone()
    zigzag[1::2, :, 0] += 1.0  # x jumps +1 on odd frames: |second difference| = 1 per coordinate
    torch.testing.assert_close(sms(zigzag), torch.full((4,), 3.0))  # L1 over 3 points x 2 coords


def test_sequence_metric_deduplicates_and_orders_frames() -> None:
    metric = LandmarkSequenceMetric()
    t = torch.arange(5, dtype=torch.float32)
    gt = torch.stack([t, t], -1)[:, None, :].expand(5, 46, 2).clone()
    gt[:, 45, 0] += 10  # inter-ocular distance 10 (points 36 and 45)
    pred = gt + 1.0
    pred[2] += torch.tensor([0.5, 0.0])  # frame 2 off the line: SMS 0.5 x 46 on frames 1..3
    # Frames fed out of order and frame 3 twice (Lightning pads the last batch).
    order = [4, 2, 0, 3, 1, 3]
    metric.update(pred[order], gt[order], "vid#1", torch.tensor(order))
    out = metric.compute()
    assert out["frames"].item() == 5
    torch.testing.assert_close(out["sms_gt"], torch.tensor(0.0))
    torch.testing.assert_close(out["sms"], torch.tensor(0.5 * 46 * (0.5 + 1 + 0.5) / 3))
    # Every point (1, 1) px off, frame 2's (1.5, 1): NME = mean over frames of distance / 10.
    assert out["nme"].item() == pytest.approx((4 * 2**0.5 + 3.25**0.5) / 5 / 10, rel=1e-5)


def test_max_frame_gap_gives_nearby_pairs(unseen_heads: Path) -> None:
    near = VideoFolder(unseen_heads, "train", max_frame_gap=2, num_repeats=4)
    gaps = {near[i]["frame_index"] - near[i]["source_frame_index"] for i in range(len(near))}
    assert gaps <= {1, 2} and gaps
    anywhere = VideoFolder(unseen_heads, "train", num_repeats=4)
    assert max(anywhere[i]["frame_index"] - anywhere[i]["source_frame_index"] for i in range(len(anywhere))) > 2
    with pytest.raises(ValueError, match="max_frame_gap"):
        VideoFolder(unseen_heads, "train", max_frame_gap=0)


def test_min_frame_gap_gives_distant_pairs(unseen_heads: Path) -> None:
    far = VideoFolder(unseen_heads, "train", min_frame_gap=5, num_repeats=4)
    gaps = [far[i]["frame_index"] - far[i]["source_frame_index"] for i in range(len(far))]
    assert min(gaps) >= 5 and len(set(gaps)) > 1
    # With both bounds the gap stays inside them; a window of one gap gives exactly that gap.
    band = VideoFolder(unseen_heads, "train", min_frame_gap=3, max_frame_gap=3, num_repeats=2)
    assert {band[i]["frame_index"] - band[i]["source_frame_index"] for i in range(len(band))} == {3}
    # A gap longer than the videos gives their first and last frames instead of failing.
    longest = VideoFolder(unseen_heads, "train", min_frame_gap=10_000)
    with aio.VideoReader(longest.videos[0].path) as reader:
        last = reader.num_frames - 1
    item = longest[0]
    assert (item["source_frame_index"], item["frame_index"]) == (0, last)
    with pytest.raises(ValueError, match="min_frame_gap"):
        VideoFolder(unseen_heads, "train", min_frame_gap=0)
    with pytest.raises(ValueError, match=r"min_frame_gap \(4\) must not exceed max_frame_gap \(2\)"):
        VideoFolder(unseen_heads, "train", min_frame_gap=4, max_frame_gap=2)


def test_min_frame_gap_epochs_is_a_curriculum(unseen_heads: Path) -> None:
    curriculum = VideoFolder(unseen_heads, "train", min_frame_gap=5, min_frame_gap_epochs=2, num_repeats=4)
    plain = VideoFolder(unseen_heads, "train", num_repeats=4)
    n = len(curriculum)

    def pairs(dataset: VideoFolder, epoch: int) -> list[tuple[int, int]]:
        items = (dataset[epoch * n + i] for i in range(n))  # epoch-encoded indices, as EpochSampler's
        return [(item["source_frame_index"], item["frame_index"]) for item in items]

    for epoch in (0, 1):
        assert min(b - a for a, b in pairs(curriculum, epoch)) >= 5
    # From epoch 2 on, the very pairs of a dataset without the minimum (near ones included).
    later = pairs(curriculum, 2)
    assert later == pairs(plain, 2) and min(b - a for a, b in later) < 5
    with pytest.raises(ValueError, match="min_frame_gap_epochs must be >= 1"):
        VideoFolder(unseen_heads, "train", min_frame_gap=5, min_frame_gap_epochs=0)
    with pytest.raises(ValueError, match="min_frame_gap is not set"):
        VideoFolder(unseen_heads, "train", min_frame_gap_epochs=3)


def test_identity_random_crop_keeps_content_and_is_off_at_zero() -> None:
    from animzoo.perception.identity.lightning_model import IdentityEmbedderModule

    small = {"dim": 8, "backbone_kwargs": {"channels": [8, 8, 8, 8]}}
    flat = torch.full((3, 3, 64, 64), 0.25)
    cropping = IdentityEmbedderModule(embedder=small, random_crop=0.2)
    torch.testing.assert_close(cropping._random_crop(flat), flat)  # a crop of a flat image is flat
    ramp = torch.linspace(0, 1, 64).expand(3, 3, 64, 64)
    out = cropping._random_crop(ramp)
    assert out.shape == ramp.shape and not torch.equal(out, ramp)
    # Inside the frame: values stay within the image's range; the crop is at least 80 % wide.
    assert out.min() >= 0 and out.max() <= 1 and (out[..., -1] - out[..., 0]).min() >= 0.8 - 1e-4
    plain = IdentityEmbedderModule(embedder=small, random_crop=0.0)
    assert torch.equal(plain._random_crop(ramp), ramp)


def test_face_crop_uses_a_frozen_aligner() -> None:
    model = IdentityEmbedder(dim=16, backbone_kwargs={"channels": [8, 8, 8, 8]}, face_crop=1.4,
                             aligner_kwargs={"num_stacks": 1, "depth": 2, "channels": 16})
    model.train()
    assert model.aligner is not None and not model.aligner.training
    assert not any(p.requires_grad for p in model.aligner.parameters())
    frames = torch.rand(2, 3, 64, 64)
    crops = model.crop_faces(frames)
    assert crops.shape == frames.shape and not torch.equal(crops, frames)
    assert model(frames).shape == (2, 16)
    assert any(k.startswith("aligner.") for k in model.state_dict())  # saved with the embedder
