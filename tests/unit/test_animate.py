"""animzoo.animate.Animator on a test double with known motion (centroids of coloured squares)."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from animate_doubles import NAME, CentroidShift, blobs, registered, shifted

from animzoo import hub
from animzoo.animate import Animator, normalized_keypoints, prepare_image
from animzoo.errors import AnimzooInputError
from animzoo.io import write_image, write_video
from animzoo.methods.baselines import SourceCopy

OFFSETS = [(0, 0), (2, 4), (-4, 2), (6, -2), (2, 2)]  # (dy, dx) per driving frame



@pytest.fixture(autouse=True, scope="module")
def _register_double():
    with registered(CentroidShift, NAME):
        yield


def _t(frames: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2).float() / 255


def _video(base: np.ndarray, offsets=OFFSETS) -> np.ndarray:
    return np.stack([shifted(base, dy, dx) for dy, dx in offsets])


@pytest.fixture
def animator() -> Animator:
    return Animator(CentroidShift(image_size=32))


def test_absolute_motion_translates_by_the_keypoint_difference(animator: Animator) -> None:
    source = blobs(points=((10, 10), (10, 18), (18, 14)))
    base = blobs(points=((12, 8), (12, 16), (20, 12)))  # same layout, moved by (2, -2)
    out = animator.animate(source, _video(base), batch_size=2)  # batches of 2, 2, 1
    expected = _t(_video(shifted(source, 2, -2)))
    assert out.shape == (5, 3, 32, 32) and out.dtype == torch.float32
    assert torch.equal(out, expected)


def test_relative_motion_follows_displacement_from_frame_0(animator: Animator) -> None:
    source = blobs(points=((10, 10), (10, 18), (18, 14)))
    base = blobs(points=((12, 8), (12, 16), (20, 12)))
    out = animator.animate(source, _video(base), relative=True, batch_size=3)
    dy0, dx0 = OFFSETS[0]
    expected = _t(np.stack([shifted(source, dy - dy0, dx - dx0) for dy, dx in OFFSETS]))
    assert torch.equal(out, expected)
    # driving frame 0 in a shifted video: relative output of frame 0 is the source itself
    offsets = [(4, 4), (6, 4), (4, 0)]
    out = animator.animate(source, _video(base, offsets), relative=True)
    assert torch.equal(out[0], _t(source[None])[0])
    assert torch.equal(out[1], _t(shifted(source, 2, 0)[None])[0])
    assert torch.equal(out[2], _t(shifted(source, 0, -4)[None])[0])


def test_adapt_scale_scales_motion_by_hull_ratio(animator: Animator) -> None:
    source = blobs(points=((12, 12), (12, 16), (16, 14)))  # triangle half the size of base's
    base = blobs(points=((8, 8), (8, 16), (16, 12)))
    offsets = [(0, 0), (4, 8), (-4, 4), (8, -4)]
    out = animator.animate(source, _video(base, offsets), relative=True, adapt_scale=True)
    expected = _t(np.stack([shifted(source, dy // 2, dx // 2) for dy, dx in offsets]))
    assert torch.equal(out, expected)
    without = animator.animate(source, _video(base, offsets), relative=True)
    assert torch.equal(without, _t(np.stack([shifted(source, dy, dx) for dy, dx in offsets])))


def test_find_best_frame_picks_the_matching_pose_and_keeps_order(animator: Animator) -> None:
    source = blobs(points=((10, 10), (10, 18), (18, 14)))
    layouts = [
        ((8, 8), (20, 10), (10, 22)),
        ((8, 8), (8, 12), (22, 20)),
        ((6, 6), (6, 22), (22, 14)),  # source's triangle x2 (scale and position do not matter)
        ((14, 6), (8, 20), (22, 22)),
    ]
    frames = np.stack([blobs(points=p) for p in layouts])
    out = animator.animate(source, frames, relative=True, find_best_frame=True)
    assert animator.last_info["best_frame"] == 2
    assert animator.best_frame(source, frames) == 2
    assert out.shape[0] == len(frames)
    # every frame relative to frame 2, in the driving order
    src_kp = CentroidShift().extract_motion(_t(source[None]))["value"]
    kp = CentroidShift().extract_motion(_t(frames))["value"]
    for t in range(len(frames)):
        shift = (kp[t] - kp[2]).mean(0) * 31 / 2
        dx, dy = (int(v) for v in shift.round())
        assert torch.equal(out[t], _t(shifted(source, dy, dx)[None])[0]), t
    # frame 2's output is the source itself; without best frame, frame 0's is
    assert torch.equal(out[2], _t(source[None])[0])
    plain = animator.animate(source, frames, relative=True)
    assert torch.equal(plain[0], _t(source[None])[0]) and not torch.equal(plain[2], out[2])
    assert src_kp.shape == (1, 3, 2)


def test_normalized_keypoints_are_scale_and_translation_invariant() -> None:
    kp = torch.tensor([[[0.0, 0.0], [1.0, 0.0], [0.0, 2.0]]])
    assert torch.allclose(normalized_keypoints(kp), normalized_keypoints(kp * 3 + 0.5), atol=1e-6)
    assert normalized_keypoints(kp).mean(1).abs().max() < 1e-6


def test_methods_without_motion_api_refuse_relative() -> None:
    animator = Animator(SourceCopy(), image_size=32)
    assert not animator.has_motion_api and Animator(CentroidShift()).has_motion_api
    frames = _video(blobs())
    with pytest.raises(AnimzooInputError, match=r"source_copy has no explicit motion.*relative=True"):
        animator.animate(blobs(), frames, relative=True)
    with pytest.raises(AnimzooInputError, match=r"source_copy.*find_best_frame"):
        animator.animate(blobs(), frames, find_best_frame=True)
    out = animator.animate(blobs(), frames)  # absolute works: the source every frame
    assert torch.equal(out, _t(blobs()[None]).expand(5, -1, -1, -1))


def test_grayscale_and_rgba_sources(animator: Animator) -> None:
    gray = np.full((32, 32), 100, np.uint8)
    gray[4:8, 4:8] = 200
    image = prepare_image(gray)
    assert image.shape == (1, 3, 32, 32)
    assert torch.equal(image[0, 0], image[0, 1]) and abs(float(image[0, 0, 5, 5]) - 200 / 255) < 1e-6
    assert animator.animate(gray[..., None], _video(blobs())).shape == (5, 3, 32, 32)
    rgba = np.zeros((32, 32, 4), np.uint8)
    rgba[..., 0] = 255  # red everywhere, but transparent except a square
    rgba[10:20, 10:20, 3] = 255
    image = prepare_image(rgba)
    assert torch.allclose(image[0, :, 15, 15], torch.tensor([1.0, 0.0, 0.0]))
    assert torch.allclose(image[0, :, 0, 0], torch.ones(3))  # composited on white
    rgba[..., 3] = 128
    half = prepare_image(rgba)
    assert torch.allclose(half[0, :, 0, 0], torch.tensor([1.0, 1 - 128 / 255, 1 - 128 / 255]), atol=1e-6)
    assert animator.animate(rgba, _video(blobs())).shape == (5, 3, 32, 32)
    # tensors: 3 x H x W float, 1 x H x W, uint8
    t = _t(blobs()[None])[0]
    assert torch.equal(prepare_image(t)[0], t)
    assert prepare_image(t[:1]).shape == (1, 3, 32, 32)
    assert torch.equal(prepare_image((t * 255).round().to(torch.uint8)), t[None])


def test_image_files_as_source(tmp_path: Path, animator: Animator) -> None:
    from PIL import Image

    Image.fromarray(np.full((32, 32), 77, np.uint8), mode="L").save(tmp_path / "gray.png")
    rgba = np.zeros((32, 32, 4), np.uint8)
    rgba[..., 3] = 0
    Image.fromarray(rgba, mode="RGBA").save(tmp_path / "rgba.png")
    assert torch.allclose(prepare_image(tmp_path / "gray.png"), torch.full((1, 3, 32, 32), 77 / 255))
    assert torch.equal(prepare_image(tmp_path / "rgba.png"), torch.ones(1, 3, 32, 32))
    write_video(tmp_path / "clip.mp4", _video(blobs()), fps=10)
    assert prepare_image(tmp_path / "clip.mp4").shape == (1, 3, 32, 32)  # a video: its first frame
    write_image(tmp_path / "src.png", blobs())
    out = animator.animate(tmp_path / "src.png", _video(blobs()))
    assert torch.equal(out, _t(_video(blobs())))


def test_source_of_another_size_is_resized_with_a_warning(animator: Animator) -> None:
    big = np.kron(blobs(), np.ones((2, 2, 1), np.uint8))  # 64 x 64
    with pytest.warns(UserWarning, match=r"source image is 64x64 pixels; resized to 32x32"):
        out = animator.animate(big, _video(blobs()))
    assert out.shape == (5, 3, 32, 32)
    with pytest.warns(UserWarning, match=r"48x32.*non-square"):
        animator.prepare_source(np.zeros((48, 32, 3), np.uint8))
    with pytest.warns(UserWarning, match=r"driving video is 64x64 pixels; its frames are resized to 32x32"):
        out = animator.animate(blobs(), np.stack([big, big]))
    assert out.shape == (2, 3, 32, 32)


def test_no_image_size_uses_the_source_size() -> None:
    module = SourceCopy()
    animator = Animator(module)
    assert animator.image_size is None
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = animator.animate(np.zeros((20, 24, 3), np.uint8), np.zeros((3, 20, 24, 3), np.uint8))
    assert out.shape == (3, 3, 20, 24)


def test_one_frame_driving(tmp_path: Path, animator: Animator) -> None:
    source = blobs()
    frame = shifted(source, 2, 2)
    assert torch.equal(animator.animate(source, frame), _t(frame[None]))  # H x W x 3: one frame
    assert animator.animate(source, _t(frame[None])[0], relative=True).shape == (1, 3, 32, 32)
    write_video(tmp_path / "one.mp4", frame[None], fps=10)
    out = animator.animate(source, tmp_path / "one.mp4", relative=True, find_best_frame=True, adapt_scale=True)
    assert out.shape == (1, 3, 32, 32) and animator.last_info["best_frame"] == 0
    assert torch.equal(out[0], _t(source[None])[0])  # relative to itself: no motion


def test_driving_video_file_and_progress(tmp_path: Path, animator: Animator) -> None:
    frames = _video(blobs())
    write_video(tmp_path / "frames", frames)  # lossless folder of pngs
    calls: list[tuple[int, int]] = []
    out = animator.animate(blobs(), tmp_path / "frames", batch_size=2, progress=lambda d, t: calls.append((d, t)))
    assert torch.equal(out, _t(frames))
    assert calls[-1] == (5, 5) and [d for d, _ in calls] == [2, 4, 5]
    calls.clear()
    animator.animate(blobs(), tmp_path / "frames", relative=True, batch_size=4, progress=lambda d, t: calls.append((d, t)))
    assert calls[-1] == (10, 10)


def test_bad_inputs_are_clear_errors(animator: Animator, tmp_path: Path) -> None:
    with pytest.raises(AnimzooInputError, match="source image: numpy arrays must be"):
        animator.animate(np.zeros((4, 4, 2), np.uint8), _video(blobs()))
    with pytest.raises(AnimzooInputError, match=r"float values must lie in \[0, 1\]"):
        animator.animate(np.full((32, 32, 3), 255.0), _video(blobs()))
    with pytest.raises(AnimzooInputError, match="driving video: tensors must be T x 3 x H x W"):
        animator.animate(blobs(), torch.zeros(2, 5, 8, 8))
    with pytest.raises(AnimzooInputError, match="no such"):
        animator.animate(blobs(), tmp_path / "missing.mp4")
    with pytest.raises(AnimzooInputError, match="no such image file"):
        animator.animate(tmp_path / "missing.png", _video(blobs()))
    with pytest.raises(AnimzooInputError, match="unsupported type"):
        animator.animate(blobs(), [1, 2, 3])


def test_requires_landmarks_is_refused() -> None:
    class NeedsLandmarks(SourceCopy):
        requires = frozenset({"landmarks"})

    with pytest.raises(AnimzooInputError, match="driven by landmarks"):
        Animator(NeedsLandmarks(), image_size=32).animate(blobs(), _video(blobs()))


def test_from_pretrained_and_checkpoint(tmp_path: Path) -> None:
    module = CentroidShift(image_size=32)
    hub.save_pretrained(module, tmp_path / "pre")
    animator = Animator.from_pretrained(tmp_path / "pre")
    assert animator.image_size == 32 and animator.method == "test_centroid_shift"
    assert torch.equal(animator.animate(blobs(), _video(blobs())), _t(_video(blobs())))
    hparams = dict(module.hparams, _class_path="animate_doubles.CentroidShift")
    torch.save({"state_dict": module.state_dict(), "hyper_parameters": hparams}, tmp_path / "m.ckpt")
    animator = Animator.from_checkpoint(tmp_path / "m.ckpt", image_size=32)
    assert isinstance(animator.module, CentroidShift) and animator.image_size == 32
    with pytest.raises(AnimzooInputError, match="not of 'source_copy'"):
        Animator.from_checkpoint(tmp_path / "m.ckpt", method="source_copy")


def test_runs_without_grad_and_on_the_module_device() -> None:
    module = CentroidShift(mix=0.5)
    animator = Animator(module, device="cpu")
    out = animator.animate(blobs(), _video(blobs()))
    assert not out.requires_grad and out.device.type == "cpu"
    assert not module.training
