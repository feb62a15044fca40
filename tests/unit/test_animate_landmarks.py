"""Animator driven by landmark sequences (no driving video), on a landmark-driven test double.

``CentroidLandmarks``'s "landmarks" are the centroids of a red, a green and a blue square, and it
translates the source by the mean landmark displacement (rounded to whole pixels), so a landmark
sequence of square centres in pixels gives exactly known frames: ``np.roll``s of the source.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from animate_doubles import (
    LANDMARKS_NAME,
    CentroidLandmarks,
    CentroidShift,
    blobs,
    landmark_pixels,
    registered,
    shifted,
)

from animzoo.animate import Animator, draw_landmarks
from animzoo.errors import AnimzooInputError
from animzoo.methods.baselines import SourceCopy

SRC = ((10, 10), (10, 18), (18, 14))  # (row, col) of the source's squares
BASE = ((12, 8), (12, 16), (20, 12))  # the same layout moved by (dy, dx) = (2, -2)
OFFSETS = [(0, 0), (2, 4), (-4, 2), (6, -2), (2, 2)]  # (dy, dx) per driving frame


@pytest.fixture(autouse=True, scope="module")
def _register_double():
    with registered(CentroidLandmarks, LANDMARKS_NAME):
        yield


def _t(frames: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2).float() / 255


def _sequence(points=BASE, offsets=OFFSETS) -> np.ndarray:
    """``T x 3 x 2`` pixel landmarks of ``points`` moved by each offset."""
    return np.stack([landmark_pixels(points, dy, dx) for dy, dx in offsets])


def _expected(source: np.ndarray, shifts) -> torch.Tensor:
    return _t(np.stack([shifted(source, dy, dx) for dy, dx in shifts]))


@pytest.fixture
def animator() -> Animator:
    return Animator(CentroidLandmarks(image_size=32))


def test_absolute_landmarks_drive_exact_shifts(animator: Animator) -> None:
    source = blobs(points=SRC)
    out = animator.animate(source, driving_landmarks=_sequence(), batch_size=2)  # batches of 2, 2, 1
    assert out.shape == (5, 3, 32, 32)
    # absolute: the source moves onto the driving landmarks, BASE = SRC + (2, -2)
    assert torch.equal(out, _expected(source, [(2 + dy, -2 + dx) for dy, dx in OFFSETS]))
    info = animator.last_info
    assert info["num_frames"] == 5 and info["fps"] == 25.0 and info["driving_size"] == (32, 32)
    assert info["best_frame"] is None and info["driving_landmarks"].shape == (5, 3, 2)


def test_relative_landmarks_follow_displacement_from_frame_0(animator: Animator) -> None:
    source = blobs(points=SRC)
    offsets = [(4, 4), (6, 4), (4, 0), (0, 8)]
    out = animator.animate(source, driving_landmarks=torch.from_numpy(_sequence(offsets=offsets)), relative=True)
    assert torch.equal(out, _expected(source, [(dy - 4, dx - 4) for dy, dx in offsets]))
    assert torch.equal(out[0], _t(source[None])[0])  # frame 0 is the reference: the source as it is


def test_adapt_scale_halves_the_motion_of_a_face_twice_as_large(animator: Animator) -> None:
    source = blobs(points=((12, 12), (12, 16), (16, 14)))  # hull area 8 px^2
    big = ((8, 8), (8, 16), (16, 12))  # the same triangle twice as large: hull area 32 px^2
    offsets = [(0, 0), (4, 8), (-4, 4), (8, -4)]
    out = animator.animate(source, driving_landmarks=_sequence(big, offsets), relative=True, adapt_scale=True)
    assert torch.equal(out, _expected(source, [(dy // 2, dx // 2) for dy, dx in offsets]))
    without = animator.animate(source, driving_landmarks=_sequence(big, offsets), relative=True)
    assert torch.equal(without, _expected(source, offsets))


def test_landmarks_size_rescales_pixel_coordinates(animator: Animator) -> None:
    source = blobs(points=SRC)
    reference = animator.animate(source, driving_landmarks=_sequence())
    # The same normalised points in pixels of a 64 x 48 frame: pixel centre i of n <-> 2 i / (n - 1) - 1.
    scale = np.array([47 / 31, 63 / 31], np.float32)  # (x, y)
    out = animator.animate(source, driving_landmarks=_sequence() * scale, landmarks_size=(64, 48))
    assert torch.equal(out, reference) and animator.last_info["driving_size"] == (64, 48)
    # read in the source's 32 x 32 frame instead, the same pixels are another motion
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert not torch.equal(animator.animate(source, driving_landmarks=_sequence() * scale), reference)


def test_landmarks_size_defaults_to_the_source_size_before_resizing(animator: Animator) -> None:
    big = np.kron(blobs(points=SRC), np.ones((2, 2, 1), np.uint8))  # 64 x 64, resized to 32 x 32
    landmarks = _sequence() * np.float32(63 / 31)
    with pytest.warns(UserWarning, match="source image is 64x64"):
        default = animator.animate(big, driving_landmarks=landmarks)
    assert animator.last_info["driving_size"] == (64, 64) and animator.last_info["source_size"] == (64, 64)
    with pytest.warns(UserWarning, match="source image is 64x64"):
        explicit = animator.animate(big, driving_landmarks=landmarks, landmarks_size=(64, 64))
    assert torch.equal(explicit, default)
    with pytest.warns(UserWarning, match="source image is 64x64"):
        other = animator.animate(big, driving_landmarks=landmarks, landmarks_size=(32, 32))
    assert not torch.equal(other, default)


def test_source_landmarks_replace_the_detector(animator: Animator, tmp_path: Path) -> None:
    source = blobs(points=SRC)
    detected = animator.animate(source, driving_landmarks=_sequence())
    given = landmark_pixels(SRC)
    np.save(tmp_path / "src.npy", given[None])  # 1 x L x 2 is accepted too
    for src_landmarks in (given, given[None], torch.from_numpy(given), tmp_path / "src.npy", str(tmp_path / "src.npy")):
        assert torch.equal(animator.animate(source, driving_landmarks=_sequence(), source_landmarks=src_landmarks), detected)
    # source landmarks 4 px right of the squares: absolute motion moves the source 4 px less to the right
    out = animator.animate(source, driving_landmarks=_sequence(), source_landmarks=landmark_pixels(SRC, dx=4))
    assert torch.equal(out, _expected(source, [(2 + dy, -6 + dx) for dy, dx in OFFSETS]))


def test_source_landmarks_are_pixels_of_the_source_as_given(animator: Animator) -> None:
    big = np.kron(blobs(points=SRC), np.ones((2, 2, 1), np.uint8))  # 64 x 64
    landmarks_64 = landmark_pixels(SRC) * np.float32(63 / 31)  # SRC's normalised points, in 64 x 64 pixels
    with pytest.warns(UserWarning, match="source image is 64x64"):
        out = animator.animate(big, driving_landmarks=_sequence(), landmarks_size=(32, 32), source_landmarks=landmarks_64)
    resized = animator.last_info["source"][0]  # 3 x 32 x 32, as animated
    for frame, (dy, dx) in zip(out, OFFSETS):
        assert torch.equal(frame, torch.roll(resized, shifts=(2 + dy, -2 + dx), dims=(-2, -1)))


def test_find_best_frame_with_landmarks(animator: Animator) -> None:
    source = blobs(points=SRC)
    layouts = [
        ((8, 8), (20, 10), (10, 22)),
        ((8, 8), (8, 12), (22, 20)),
        ((6, 6), (6, 22), (22, 14)),  # the source's triangle x2: same shape
        ((14, 6), (8, 20), (22, 22)),
    ]
    landmarks = np.stack([landmark_pixels(p) for p in layouts])
    out = animator.animate(source, driving_landmarks=landmarks, relative=True, find_best_frame=True)
    assert animator.last_info["best_frame"] == 2
    assert animator.best_frame(source, driving_landmarks=landmarks) == 2
    assert torch.equal(out[2], _t(source[None])[0])  # relative to frame 2: no motion there
    shift = (landmarks[0] - landmarks[2]).mean(0)  # x, y pixels
    assert torch.equal(out[0], _expected(source, [(round(shift[1]), round(shift[0]))])[0])


def test_fps_is_25_without_a_driving_video_or_as_given(animator: Animator) -> None:
    animator.animate(blobs(points=SRC), driving_landmarks=_sequence(), fps=12.5)
    assert animator.last_info["fps"] == 12.5
    animator.animate(blobs(points=SRC), driving_landmarks=_sequence())
    assert animator.last_info["fps"] == 25.0
    with pytest.raises(AnimzooInputError, match="fps must be positive"):
        animator.animate(blobs(points=SRC), driving_landmarks=_sequence(), fps=0)


def test_progress_counts_one_pass_over_the_landmarks(animator: Animator) -> None:
    calls: list[tuple[int, int]] = []
    animator.animate(blobs(), driving_landmarks=_sequence(), batch_size=2, progress=lambda d, t: calls.append((d, t)))
    assert calls == [(2, 5), (4, 5), (5, 5)]


def test_a_driving_video_still_drives_a_landmark_module(animator: Animator) -> None:
    # CentroidLandmarks.animate(batch) needs dataset landmarks in the batch: the Animator must use
    # extract_motion (its "detector") / animate_with_motion instead, in absolute mode too.
    source = blobs(points=SRC)
    video = np.stack([shifted(blobs(points=BASE), dy, dx) for dy, dx in OFFSETS])
    calls: list[tuple[int, int]] = []
    out = animator.animate(source, video, batch_size=2, progress=lambda d, t: calls.append((d, t)))
    assert torch.equal(out, _expected(source, [(2 + dy, -2 + dx) for dy, dx in OFFSETS]))
    assert torch.equal(out, Animator(CentroidShift(image_size=32)).animate(source, video))
    assert calls[-1] == (10, 10)  # detection pass + animation pass
    assert torch.allclose(animator.last_info["driving_landmarks"], CentroidShift().extract_motion(_t(video))["value"])
    rel = animator.animate(source, video, relative=True)
    assert torch.equal(rel, _expected(source, OFFSETS))
    # and given source landmarks replace the detection on the source image
    out = animator.animate(source, video, source_landmarks=landmark_pixels(SRC, dx=4))
    assert torch.equal(out, _expected(source, [(2 + dy, -6 + dx) for dy, dx in OFFSETS]))


@pytest.mark.parametrize("module", [CentroidShift(), SourceCopy()], ids=["keypoints", "no_motion_api"])
def test_image_driven_methods_refuse_landmarks(module) -> None:
    animator = Animator(module, image_size=32)
    with pytest.raises(AnimzooInputError, match="is driven by images, not landmarks"):
        animator.animate(blobs(), driving_landmarks=_sequence())
    with pytest.raises(AnimzooInputError, match="is driven by images, not landmarks"):
        animator.animate(blobs(), np.stack([blobs()] * 2), source_landmarks=landmark_pixels(SRC))


def _nan(frames) -> np.ndarray:
    arr = _sequence()
    arr[list(frames), 1, 0] = np.nan
    return arr


BAD_FILES = {
    "wrong count": (np.zeros((5, 4, 2), np.float32), r"has 4 landmarks per frame but method test_centroid_landmarks uses 3"),
    "nan": (_nan([1, 3]), r"NaN or inf coordinates in frame\(s\) 1, 3; fill them"),
    "inf": (np.where(np.arange(5)[:, None, None] == 4, np.inf, _sequence()), r"in frame\(s\) 4;"),
    "2-D": (landmark_pixels(SRC), r"has shape \(3, 2\), expected T x L x 2 .*landmarks\[None\]"),
    "4-D": (_sequence()[None], r"has shape \(1, 5, 3, 2\), expected T x L x 2"),
    "xyz": (np.zeros((5, 3, 3), np.float32), r"has shape \(5, 3, 3\), expected T x L x 2"),
    "no frames": (np.zeros((0, 3, 2), np.float32), r"has no frames \(shape \(0, 3, 2\)\)"),
    "strings": (np.array([[["a", "b"]]]), r"has dtype <U1, expected float pixel coordinates"),
    "empty file": (None, r"not a readable \.npy file"),
}


@pytest.mark.parametrize("case", sorted(BAD_FILES))
def test_bad_landmark_files_are_refused_naming_the_file(animator: Animator, tmp_path: Path, case: str) -> None:
    array, message = BAD_FILES[case]
    path = tmp_path / "driving.npy"
    if array is None:
        path.write_bytes(b"")
    else:
        np.save(path, array)
    with pytest.raises(AnimzooInputError, match=message) as info:
        animator.animate(blobs(), driving_landmarks=path)
    assert str(info.value).startswith(f"driving landmarks {path}: ")


def test_other_bad_landmark_inputs(animator: Animator, tmp_path: Path) -> None:
    with pytest.raises(AnimzooInputError, match=r"driving landmarks .*missing\.npy: no such file"):
        animator.animate(blobs(), driving_landmarks=tmp_path / "missing.npy")
    (tmp_path / "lm.txt").write_text("1 2")
    with pytest.raises(AnimzooInputError, match=r"lm\.txt: not a \.npy file; save a float array"):
        animator.animate(blobs(), driving_landmarks=tmp_path / "lm.txt")
    with pytest.raises(AnimzooInputError, match=r"^driving landmarks: has shape \(3, 2\)"):  # in memory: no file
        animator.animate(blobs(), driving_landmarks=landmark_pixels(SRC))
    with pytest.raises(AnimzooInputError, match="unsupported type"):
        animator.animate(blobs(), driving_landmarks={"value": 1})
    np.save(tmp_path / "src.npy", _sequence()[:2])
    with pytest.raises(AnimzooInputError, match=r"source landmarks .*src\.npy: has shape \(2, 3, 2\), expected L x 2"):
        animator.animate(blobs(), driving_landmarks=_sequence(), source_landmarks=tmp_path / "src.npy")
    with pytest.raises(AnimzooInputError, match=r"^source landmarks: NaN or inf coordinates;"):
        animator.animate(blobs(), driving_landmarks=_sequence(), source_landmarks=_nan([0])[0])


def test_exactly_one_driving_and_sizes(animator: Animator) -> None:
    video = np.stack([blobs()] * 2)
    with pytest.raises(AnimzooInputError, match="got both of driving"):
        animator.animate(blobs(), video, driving_landmarks=_sequence())
    with pytest.raises(AnimzooInputError, match="got neither of driving"):
        animator.animate(blobs())
    with pytest.raises(AnimzooInputError, match="landmarks_size is the frame size of driving_landmarks"):
        animator.animate(blobs(), video, landmarks_size=(32, 32))
    for size in ((1, 32), (32,), "32x32", (32.5, 32)):
        with pytest.raises(AnimzooInputError, match=r"landmarks_size must be \(H, W\)"):
            animator.animate(blobs(), driving_landmarks=_sequence(), landmarks_size=size)


def test_count_mismatch_without_num_landmarks() -> None:
    class Uncounted(CentroidLandmarks):
        num_landmarks = None  # a method that does not declare its count: files are checked against the source

    four = np.concatenate([_sequence(), _sequence()[:, :1]], axis=1)
    with pytest.raises(AnimzooInputError, match=r"has 4 landmarks per frame but the landmarks .* detects on the source has 3"):
        Animator(Uncounted(image_size=32)).animate(blobs(), driving_landmarks=four)


def test_unit_mixups_warn(animator: Animator) -> None:
    normalised = _sequence() / 31 * 2 - 1
    with pytest.warns(UserWarning, match="looks like normalised coordinates"):
        animator.animate(blobs(), driving_landmarks=normalised)
    with pytest.warns(UserWarning, match=r"lie far outside the 32x32 frame.*landmarks_size"):
        animator.animate(blobs(), driving_landmarks=_sequence() * 8, relative=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        animator.animate(blobs(), driving_landmarks=_sequence())


def test_draw_landmarks() -> None:
    from animzoo.geometry.grid import pixel_to_normalized

    points = pixel_to_normalized(torch.tensor([[[3.0, 5.0], [40.0, 1.0]]]), (8, 8))  # the 2nd is outside
    frames = draw_landmarks(points, (8, 8))
    assert frames.shape == (1, 3, 8, 8)
    assert torch.equal(frames[0, 0].nonzero(), torch.tensor([[5, 3]])) and torch.equal(frames[0, 0], frames[0, 2])
    big = draw_landmarks(pixel_to_normalized(torch.tensor([[[10.0, 20.0]]]), (64, 64)), (64, 64))
    assert int(big[0, 0].sum()) == 9 and big[0, 0, 19:22, 9:12].all()  # a 3 x 3 dot


def test_detector_failures_say_which_frames(animator: Animator) -> None:
    class NoFace(CentroidLandmarks):
        def extract_motion(self, frames: torch.Tensor) -> dict:
            empty = frames.flatten(1).amax(1) == 0
            if empty.any():  # like a landmark detector finding no face; it counts frames per call
                raise AnimzooInputError(f"no face found in frame(s) {empty.nonzero().flatten().tolist()}")
            return super().extract_motion(frames)

    animator = Animator(NoFace(image_size=32))
    video = np.stack([blobs(points=BASE)] * 5)
    video[3] = 0
    with pytest.raises(AnimzooInputError, match=r"driving video, batch of frames 2-3: no face found in frame\(s\) \[1\]"):
        animator.animate(blobs(points=SRC), video, batch_size=2)
    with pytest.raises(AnimzooInputError, match=r"source image: no face .* --source-landmarks"):
        animator.animate(np.zeros((32, 32, 3), np.uint8), driving_landmarks=_sequence())
    # given source landmarks skip the detector on the source
    out = animator.animate(np.zeros((32, 32, 3), np.uint8), driving_landmarks=_sequence(), source_landmarks=landmark_pixels(SRC))
    assert out.shape == (5, 3, 32, 32)
