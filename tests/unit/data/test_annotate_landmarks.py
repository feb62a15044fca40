"""animzoo.data.annotate: landmark sidecars for a whole dataset with any landmark backend."""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from animzoo import io as aio
from animzoo.data import annotate as annotate_module
from animzoo.data.annotate import annotate_landmarks, dataset_videos, fill_missing_frames
from animzoo.data.annotations import landmarks_path, load_landmarks, save_landmarks
from animzoo.errors import AnimzooInputError, DatasetError, SidecarError
from animzoo.geometry.keypoints import landmark_smoothness

pytestmark = pytest.mark.usefixtures("one_thread")

# --------------------------------------------------------------------------- fixtures

HEADS_SIZE = 64


@pytest.fixture(scope="module")
def heads(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[Path, np.ndarray]]:
    """SyntheticHeads without landmark sidecars (2 identities x 2 clips of 12 frames at 64 px),
    and the ground-truth landmarks that were removed, by video (read only: copy to change)."""
    from animzoo.data.synthetic import synthesize

    root = tmp_path_factory.mktemp("annotate") / "heads"
    # Seed unseen by the shipped detector (trained on seed 0).
    synthesize(root, videos=4, frames=12, size=HEADS_SIZE, seed=12345, clips_per_identity=2, test_fraction=0.5)
    truth = {}
    for sidecar in sorted(root.glob("*/*.landmarks.npy")):
        truth[Path(str(sidecar)[: -len(".landmarks.npy")])] = np.load(sidecar)
        sidecar.unlink()
    assert len(truth) == 4
    return root, truth


@pytest.fixture
def heads_copy(heads: tuple[Path, dict[Path, np.ndarray]], tmp_path: Path) -> Path:
    shutil.copytree(heads[0], tmp_path / "heads")
    return tmp_path / "heads"


@pytest.fixture(scope="module")
def animzoo70():
    """The shipped detector, loaded once for the module (passed to annotate_landmarks as an object)."""
    from animzoo.metrics.backends import landmark_backend

    backend = landmark_backend("animzoo70")
    assert backend.available, backend.status
    return backend


def index_frames(num_frames: int, marker: int, height: int = 24, width: int = 40) -> np.ndarray:
    """``T x H x W x 3`` uint8 frames whose red channel encodes the frame index (``10 + 20 t``)
    and green the video (``marker``), lossless in png folders."""
    frames = np.zeros((num_frames, height, width, 3), np.uint8)
    frames[..., 0] = (10 + 20 * np.arange(num_frames, dtype=np.uint8))[:, None, None]
    frames[..., 1] = marker
    return frames


def scripted_points(t: float | np.ndarray, num_landmarks: int = 3) -> np.ndarray:
    """The scripted backend's answer for frame ``t``: quadratic in t, so linear interpolation
    between two frames differs from the value at the frame (``... x K x 2``)."""
    t = np.asarray(t, dtype=np.float64)[..., None, None]
    base = np.arange(num_landmarks * 2, dtype=np.float64).reshape(num_landmarks, 2) + 1.0
    return (base + 0.5 * t * t + np.array([1.0, -0.25]) * t).astype(np.float32)


class ScriptedBackend:
    """A LandmarkBackend that reads the frame index (red) and video (green) from the pixels.

    Returns :func:`scripted_points` except NaN rows for frames in ``missing[marker]`` (all frames
    when ``missing[marker] is None``); records the shape of every batch it gets.
    """

    name = "scripted"
    num_landmarks = 3
    available = True
    status = "ok: scripted test backend"

    def __init__(self, missing: dict[int, set[int] | None] | None = None) -> None:
        self.missing = missing or {}
        self.batches: list[tuple[int, ...]] = []

    def detect(self, frames: torch.Tensor) -> torch.Tensor:
        self.batches.append(tuple(frames.shape))
        red = frames[:, 0].mean(dim=(1, 2)).numpy() * 255.0
        green = frames[:, 1].mean(dim=(1, 2)).numpy() * 255.0
        out = np.empty((frames.shape[0], self.num_landmarks, 2), np.float32)
        for i, (r, g) in enumerate(zip(red, green)):
            t, marker = int(np.rint((r - 10.0) / 20.0)), int(np.rint(g))
            missing = self.missing.get(marker, set())
            out[i] = np.nan if missing is None or t in missing else scripted_points(t)
        return torch.from_numpy(out)


def write_index_video(path: Path, num_frames: int, marker: int) -> Path:
    aio.write_video(path, index_frames(num_frames, marker))  # no suffix: a png folder (lossless)
    return path


def files_of(root: Path) -> dict[Path, bytes]:
    return {p: p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


# --------------------------------------------------------------------------- interpolation


def test_fill_missing_frames_interpolates_and_extends_the_ends() -> None:
    points = np.arange(7 * 2 * 2, dtype=np.float32).reshape(7, 2, 2) ** 1.5
    detected = np.array([False, True, False, False, True, True, False])
    filled = fill_missing_frames(np.where(detected[:, None, None], points, np.nan), detected)
    expected = points.copy()
    expected[0] = points[1]  # before the first detection: constant
    expected[2] = points[1] + (points[4] - points[1]) / 3
    expected[3] = points[1] + 2 * (points[4] - points[1]) / 3
    expected[6] = points[5]  # after the last detection: constant
    np.testing.assert_allclose(filled, expected, rtol=1e-6)
    assert filled.dtype == np.float32 and np.isfinite(filled).all()
    with pytest.raises(ValueError, match="at least one"):
        fill_missing_frames(points, np.zeros(7, bool))


# --------------------------------------------------------------------------- animzoo70 on SyntheticHeads


def test_animzoo70_annotations_match_the_synthetic_ground_truth(heads_copy: Path, heads, animzoo70) -> None:
    _, truth = heads
    report = annotate_landmarks(heads_copy, animzoo70, batch_size=5, device="cpu")
    assert report.ok and [r.status for r in report.rows] == ["written"] * 4
    assert report.backend == "animzoo70" and report.num_landmarks == 70
    errors = []
    for row in report.rows:
        original = heads[0] / row.video.relative_to(heads_copy)
        written = load_landmarks(landmarks_path(row.video), num_frames=12, landmark_count=70)
        errors.append(np.linalg.norm(written - truth[original], axis=-1).mean())
        assert (row.frames, row.detected, row.filled, row.detection_rate) == (12, 12, 0, 1.0)
        # The report's SMS is the mean smoothness term of the file as written.
        sms = float(landmark_smoothness(torch.tensor(written)).mean())
        assert row.sms == pytest.approx(sms, rel=1e-6)
    # Measured: 0.54 px mean point error at 64 px (seed 12345); the bound leaves margin.
    assert float(np.mean(errors)) < 1.5, errors
    totals = report.totals()
    assert totals["written"] == 4 and totals["decoded_frames"] == 48 and totals["detection_rate"] == 1.0
    parsed = json.loads(report.to_json())
    assert parsed["videos"][0]["sms_px"] == pytest.approx(report.rows[0].sms)
    assert "written" in report.format() and "animzoo70" in report.format()


def test_annotated_dataset_loads_with_landmarks_required(heads_copy: Path, animzoo70) -> None:
    from animzoo.data import AnimationDataModule

    dm = AnimationDataModule(root=str(heads_copy), requires=["landmarks"], batch_size=2)
    with pytest.raises(SidecarError, match="animzoo data annotate --landmarks"):
        dm.setup("fit")
    assert annotate_landmarks(heads_copy, animzoo70, device="cpu").ok
    dm = AnimationDataModule(root=str(heads_copy), requires=["landmarks"], batch_size=2, landmark_count=70)
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert batch["source_landmarks"].shape == (2, 70, 2)
    assert torch.isfinite(batch["driving_landmarks"]).all()
    assert batch["driving_landmarks"].abs().max() <= 1.0  # normalised inside the frame


def test_existing_sidecars_are_not_decoded_again_unless_overwrite(
    heads_copy: Path, animzoo70, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = annotate_landmarks(heads_copy, animzoo70, device="cpu")
    sidecars = {r.sidecar: r.sidecar.read_bytes() for r in first.rows}
    mtimes = {p: p.stat().st_mtime_ns for p in sidecars}

    class NoDecoding:
        def __init__(self, *args, **kwargs) -> None:
            raise AssertionError("a video with a sidecar was decoded")

    monkeypatch.setattr(annotate_module.aio, "VideoReader", NoDecoding)
    again = annotate_landmarks(heads_copy, animzoo70, device="cpu")
    assert [r.status for r in again.rows] == ["exists"] * 4 and again.ok
    assert {p: p.read_bytes() for p in sidecars} == sidecars
    assert {p: p.stat().st_mtime_ns for p in sidecars} == mtimes
    # An "exists" row still tells the length and smoothness, from the sidecar alone.
    assert [(r.frames, r.sms) for r in again.rows] == [(r.frames, pytest.approx(r.sms)) for r in first.rows]
    monkeypatch.undo()

    # overwrite=True decodes and rewrites (a different backend gives different bytes).
    shifted = _ShiftedBackend(animzoo70, dx=2.0)
    rewritten = annotate_landmarks(heads_copy, shifted, overwrite=True, device="cpu")
    assert [r.status for r in rewritten.rows] == ["written"] * 4
    for path, old in sidecars.items():
        old_points = np.load(io.BytesIO(old))
        np.testing.assert_allclose(np.load(path), old_points + [2.0, 0.0], atol=1e-4)


class _ShiftedBackend:
    """Another backend's answer moved right by ``dx`` pixels."""

    def __init__(self, inner, dx: float) -> None:
        self.inner, self.dx = inner, dx
        self.name, self.num_landmarks, self.available, self.status = "shifted", inner.num_landmarks, True, "ok"

    def detect(self, frames: torch.Tensor) -> torch.Tensor:
        points = self.inner.detect(frames).clone()
        points[..., 0] += self.dx
        return points


# --------------------------------------------------------------------------- scripted backend


def test_missing_frames_are_interpolated_and_counted(tmp_path: Path) -> None:
    root = tmp_path / "ds"
    video = write_index_video(root / "train" / "a#1", 10, marker=40)
    write_index_video(root / "test" / "b#1", 4, marker=80)
    # Misses at both ends and a gap of two across a batch boundary (batch_size 4: frames 3|4).
    backend = ScriptedBackend({40: {0, 3, 4, 9}})
    report = annotate_landmarks(root, backend, batch_size=4, device="cpu")
    assert report.ok
    row = report.rows[0]
    assert row.video == video and row.status == "written"
    assert (row.frames, row.detected, row.filled) == (10, 6, 4)
    assert row.detection_rate == pytest.approx(0.6)
    written = load_landmarks(landmarks_path(video), num_frames=10, landmark_count=3)
    expected = scripted_points(np.arange(10))
    expected[0] = expected[1]
    expected[3] = expected[2] + (expected[5] - expected[2]) / 3
    expected[4] = expected[2] + 2 * (expected[5] - expected[2]) / 3
    expected[9] = expected[8]
    np.testing.assert_allclose(written, expected, rtol=1e-6, atol=1e-5)
    assert abs(written[3] - scripted_points(3)).max() > 0.1  # the fill is not the scripted value
    assert report.rows[1].filled == 0 and report.totals()["filled_frames"] == 4
    assert report.totals()["detection_rate"] == pytest.approx(10 / 14)
    # Streamed at the native size, never more than batch_size frames at once.
    assert {b[1:] for b in backend.batches} == {(3, 24, 40)}
    assert max(b[0] for b in backend.batches) == 4 and sum(b[0] for b in backend.batches) == 14
    assert row.sms == pytest.approx(float(landmark_smoothness(torch.tensor(written)).mean()), rel=1e-6)


def test_a_video_without_any_face_gets_no_sidecar(tmp_path: Path) -> None:
    root = tmp_path / "ds"
    blind = write_index_video(root / "a#1", 5, marker=40)
    seen = write_index_video(root / "b#1", 5, marker=80)
    report = annotate_landmarks(root, ScriptedBackend({40: None}), device="cpu")
    rows = {r.video: r for r in report.rows}
    assert rows[blind].status == "failed: no face detected in any of 5 frames"
    assert rows[blind].detection_rate == 0.0 and not landmarks_path(blind).exists()
    assert rows[seen].status == "written" and landmarks_path(seen).is_file()
    assert not report.ok and report.failures == [rows[blind]]
    assert f"- {blind}: no face detected in any of 5 frames" in report.format()


def test_a_failed_video_keeps_the_sidecar_it_had(tmp_path: Path) -> None:
    root = tmp_path / "ds"
    video = write_index_video(root / "a#1", 5, marker=40)
    old = np.full((5, 3, 2), 7.0, np.float32)
    save_landmarks(landmarks_path(video), old)
    report = annotate_landmarks(root, ScriptedBackend({40: None}), overwrite=True, device="cpu")
    assert report.rows[0].failed
    np.testing.assert_array_equal(np.load(landmarks_path(video)), old)
    assert sorted(p.name for p in root.iterdir()) == ["a#1", "a#1.landmarks.npy"]  # no temporary files


def test_a_corrupt_video_is_reported_and_the_others_are_annotated(tmp_path: Path) -> None:
    root = tmp_path / "ds"
    good = write_index_video(root / "train" / "a#1", 4, marker=40)
    corrupt = root / "train" / "b#1.mp4"
    corrupt.write_bytes(b"\x00\x00\x00\x18ftypmp42" + b"garbage" * 100)
    other = write_index_video(root / "test" / "c#1", 4, marker=80)
    report = annotate_landmarks(root, ScriptedBackend(), device="cpu")
    rows = {r.video: r for r in report.rows}
    assert rows[corrupt].failed and str(corrupt) in rows[corrupt].status
    assert not landmarks_path(corrupt).exists()
    assert rows[good].status == rows[other].status == "written"
    assert [p for p in root.rglob(".*")] == []  # no temporary files left


def test_bad_backends_fail_before_touching_any_file(tmp_path: Path) -> None:
    root = tmp_path / "ds"
    write_index_video(root / "a#1", 3, marker=40)
    before = files_of(root)

    class Unavailable(ScriptedBackend):
        available = False
        status = "unavailable: the scripted package is not installed - pip install scripted"

    with pytest.raises(AnimzooInputError, match="pip install scripted"):
        annotate_landmarks(root, Unavailable())
    with pytest.raises(AnimzooInputError, match="available: .*animzoo70"):
        annotate_landmarks(root, "no-such-backend")
    with pytest.raises(AnimzooInputError, match="batch_size"):
        annotate_landmarks(root, ScriptedBackend(), batch_size=0)
    with pytest.raises(DatasetError, match="not found"):
        annotate_landmarks(tmp_path / "missing", ScriptedBackend())
    assert files_of(root) == before


def test_the_listing_is_the_datamodules(tmp_path: Path) -> None:
    # Flat root: every video (both sides of the automatic split), plus those of pairs.csv.
    root = tmp_path / "flat"
    names = ["a#1", "a#2", "b#1", "c#1", "d#1"]
    for number, name in enumerate(names):
        write_index_video(root / name, 2, marker=number)
    write_index_video(root / "extra" / "e#1", 2, marker=9)
    (root / "pairs.csv").write_text("source,driving\na#1,extra/e#1\na#1,missing#1\n")
    (root / "annotate-landmarks-scripted.json").write_text("{}")  # the CLI's report: not a video
    videos, problems = dataset_videos(root)
    listed = [v.path.relative_to(root).as_posix() for v in videos]
    # "extra" is a folder in the root: listed as a (frame-less) problem, as the datamodule would.
    assert listed == [*names, "extra/e#1"]
    assert [p.path.name for p in problems] == ["extra"]

    # Split layout: train then test; files in the root are not videos.
    split = tmp_path / "split"
    write_index_video(split / "train" / "a#1", 2, marker=1)
    write_index_video(split / "test" / "b#1", 2, marker=2)
    (split / "annotate-landmarks-scripted.json").write_text("{}")
    assert [v.video_id for v in dataset_videos(split)[0]] == ["a#1", "b#1"]
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="no videos"):
        dataset_videos(tmp_path / "empty")


# --------------------------------------------------------------------------- dlib68 on a real face


def test_dlib68_follows_a_moving_real_face(tmp_path: Path) -> None:
    pytest.importorskip("dlib")
    from skimage.data import astronaut

    from animzoo.metrics.backends import landmark_backend

    backend = landmark_backend("dlib68")
    assert backend.available, backend.status
    image = astronaut()  # 512 x 512, the face around x 180..300, y 60..200
    step, size, frames = 3, 160, 6
    # A window sliding left by `step` px per frame: the face moves right by `step` px per frame.
    clip = np.stack([image[40 : 40 + size, 150 - step * t : 150 - step * t + size] for t in range(frames)])
    video = tmp_path / "ds" / "astronaut#1"
    aio.write_video(video, clip)
    report = annotate_landmarks(tmp_path / "ds", backend, batch_size=4, device="cpu")
    row = report.rows[0]
    assert row.status == "written" and row.detected == frames, report.format()
    points = load_landmarks(landmarks_path(video), num_frames=frames, landmark_count=68)
    motion = np.diff(points.mean(axis=1), axis=0)  # per-frame shift of the landmarks' centroid
    np.testing.assert_allclose(motion[:, 0], step, atol=0.5)  # measured: within 0.12 px
    np.testing.assert_allclose(motion[:, 1], 0.0, atol=0.5)
    # The face sits where the crop put it: eyes in the upper half, the jaw below them.
    assert points[0, 36:48, 1].mean() < size / 2 < points[0, 8, 1]
