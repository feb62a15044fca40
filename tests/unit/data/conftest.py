"""Tiny real datasets (mp4 files and png folders written with animzoo.io, with sidecars).

Frames encode their own index: frame ``t`` of a video is flat with red ``10 + 20 t``, so a
test can tell from pixels alone which frame it got (H.264 at crf 18 keeps flat colours
within a few levels).
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from animzoo import io as aio
from animzoo.data.annotations import landmarks_path, mesh_path, save_landmarks, save_mesh

SIZE = 32
NUM_LANDMARKS = 68


def frame_index_of(image: np.ndarray) -> int:
    """Frame index encoded in a frame (``H x W x 3`` uint8, or ``3 x H x W`` float [0, 1])."""
    image = np.asarray(image, dtype=np.float64)
    red = image[0].mean() * 255.0 if image.shape[0] == 3 else image[..., 0].mean()
    return int(round((red - 10.0) / 20.0))


def make_frames(num_frames: int, video_number: int, size: int = SIZE) -> np.ndarray:
    """``T x size x size x 3`` uint8: red encodes the frame, green the video, blue a ramp."""
    frames = np.zeros((num_frames, size, size, 3), dtype=np.uint8)
    for t in range(num_frames):
        frames[t, ..., 0] = 10 + 20 * t
        frames[t, ..., 1] = 30 + 40 * video_number
    frames[..., 2] = np.linspace(0, 200, size, dtype=np.uint8)[None, None, :]
    return frames


def mesh_topology() -> tuple[np.ndarray, np.ndarray]:
    """A 6-vertex mesh: faces ``4 x 3`` and an involutive left/right ``flip_index``."""
    faces = np.array([[0, 1, 2], [3, 5, 4], [0, 2, 4], [1, 5, 3]], dtype=np.int64)
    flip_index = np.array([3, 4, 5, 0, 1, 2], dtype=np.int64)
    return faces, flip_index


@dataclass
class VideoInfo:
    path: Path
    num_frames: int
    landmarks: np.ndarray  # T x L x 2 pixels
    verts: np.ndarray  # T x V x 3 pixels


@dataclass
class TinyDataset:
    root: Path
    videos: dict[str, VideoInfo] = field(default_factory=dict)  # "split/name" -> info

    def info(self, key: str) -> VideoInfo:
        return self.videos[key]


def write_video_with_sidecars(
    path: Path,
    num_frames: int,
    video_number: int,
    *,
    rng: np.random.Generator,
    landmarks: bool = True,
    mesh: bool = True,
    size: int = SIZE,
) -> VideoInfo:
    """Write a video (kind by suffix) and its sidecars; return what was written."""
    aio.write_video(path, make_frames(num_frames, video_number, size), fps=25.0, gop=4)
    lms = rng.uniform(0, size - 1, size=(num_frames, NUM_LANDMARKS, 2)).astype(np.float32)
    verts = rng.uniform(0, size - 1, size=(num_frames, 6, 3)).astype(np.float32)
    if landmarks:
        save_landmarks(landmarks_path(path), lms, num_frames=num_frames)
    if mesh:
        faces, flip_index = mesh_topology()
        save_mesh(
            mesh_path(path), verts, faces, flip_index=flip_index,
            params={"expression": rng.normal(size=(num_frames, 5)).astype(np.float32)},
        )
    return VideoInfo(path, num_frames, lms, verts)


# name -> (number of frames); names without a suffix are png folders.
TRAIN_VIDEOS = {"alice#1.mp4": 8, "alice#2": 6, "bob#1.mp4": 10, "carol#1": 5}
TEST_VIDEOS = {"dave#1.mp4": 12, "erin#1": 7}


def build_dataset(root: Path, *, seed: int = 0) -> TinyDataset:
    """train/ (4 videos, 3 identities), test/ (2 videos), pairs.csv, all sidecars."""
    rng = np.random.default_rng(seed)
    data = TinyDataset(root)
    number = 0
    for split, videos in (("train", TRAIN_VIDEOS), ("test", TEST_VIDEOS)):
        for name, num_frames in videos.items():
            data.videos[f"{split}/{name}"] = write_video_with_sidecars(
                root / split / name, num_frames, number, rng=rng
            )
            number += 1
    (root / "pairs.csv").write_text("source,driving\ntest/dave#1.mp4,test/erin#1\nerin#1,dave#1.mp4\n")
    return data


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory: pytest.TempPathFactory) -> TinyDataset:
    """A clean dataset shared by the tests of this folder (read only: copy before changing)."""
    return build_dataset(tmp_path_factory.mktemp("tiny") / "ds")


@pytest.fixture
def dataset_copy(tiny_dataset: TinyDataset, tmp_path: Path) -> TinyDataset:
    """A private copy of :func:`tiny_dataset` that a test may break."""
    root = tmp_path / "ds"
    shutil.copytree(tiny_dataset.root, root)
    videos = {
        key: VideoInfo(root / key, v.num_frames, v.landmarks, v.verts)
        for key, v in tiny_dataset.videos.items()
    }
    return TinyDataset(root, videos)


@pytest.fixture(scope="session")
def helpers() -> SimpleNamespace:
    """The helpers of this conftest for test modules (test folders are not packages here)."""
    return SimpleNamespace(
        SIZE=SIZE,
        NUM_LANDMARKS=NUM_LANDMARKS,
        TRAIN_VIDEOS=TRAIN_VIDEOS,
        TEST_VIDEOS=TEST_VIDEOS,
        frame_index_of=frame_index_of,
        make_frames=make_frames,
        mesh_topology=mesh_topology,
        write_video_with_sidecars=write_video_with_sidecars,
        build_dataset=build_dataset,
    )
