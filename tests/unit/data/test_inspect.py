"""inspect_dataset: counts on a clean dataset, every problem of a broken one in one run."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np

from animzoo.data.annotations import landmarks_path, mesh_path
from animzoo.data.videos import inspect_dataset


def test_clean_dataset_has_no_problems_and_right_counts(tiny_dataset, helpers) -> None:
    report = inspect_dataset(tiny_dataset.root, landmark_count=68)
    assert report.ok, report.format()
    train, test = report.splits["train"], report.splits["test"]
    assert (train.videos, train.frames, train.landmarks, train.meshes) == (
        4, sum(helpers.TRAIN_VIDEOS.values()), 4, 4,
    )
    assert (test.videos, test.frames) == (2, sum(helpers.TEST_VIDEOS.values()))
    assert report.pairs == 2
    assert "no problems found" in report.format()


def test_every_problem_is_reported_in_one_run(dataset_copy) -> None:
    root: Path = dataset_copy.root
    train = root / "train"
    # 1. corrupt mp4
    corrupt = train / "bob#1.mp4"
    corrupt.write_bytes(corrupt.read_bytes()[:200])
    # 2. empty frame folder
    empty = train / "zed#1"
    empty.mkdir()
    # 3. sidecar with the wrong number of frames
    wrong_t = landmarks_path(train / "alice#2")
    np.save(wrong_t, np.zeros((2, 68, 2), np.float32))
    # 4. NaN landmarks
    nan = landmarks_path(train / "carol#1")
    data = np.load(nan)
    data[4, 0, 1] = np.nan
    np.save(nan, data)
    # 5. malformed mesh (faces out of range)
    bad_mesh = mesh_path(train / "alice#1.mp4")
    with np.load(bad_mesh) as npz:
        arrays = dict(npz)
    arrays["faces"] = arrays["faces"] + 10
    np.savez(bad_mesh, **arrays)
    # 6. missing split: move test/ away, keep pairs.csv pointing into it
    shutil.rmtree(root / "test")
    # 7. orphan sidecar
    orphan = train / "gone.mp4.landmarks.npy"
    shutil.copy(landmarks_path(train / "alice#1.mp4"), orphan)

    report = inspect_dataset(root)
    by_path: dict[Path, list[str]] = {}
    for problem in report.problems:
        by_path.setdefault(problem.path, []).append(problem.message)
        assert problem.fix  # every problem says how to fix it

    assert any("re-encode" in p.fix for p in report.problems if p.path == corrupt)
    assert any("no images" in m for m in by_path[empty])
    assert any("2 frames" in m and "6 frames" in m for m in by_path[wrong_t])
    assert any("NaN" in m and "4" in m for m in by_path[nan])
    assert any("faces" in m for m in by_path[bad_mesh])
    assert any("missing split" in m for m in by_path[root / "test"])
    assert any("without a video" in m for m in by_path[orphan])
    missing_rows = [m for p, ms in by_path.items() for m in ms if "pairs.csv line" in m]
    assert len(missing_rows) == 4  # both rows, both columns point into the deleted test/
    # Counts still cover what could be read.
    assert report.splits["train"].videos == 3  # alice#1, alice#2, carol#1
    text = report.format()
    assert str(corrupt) in text and str(empty) in text and "fix:" in text


def test_mixed_landmark_counts_and_frame_sizes(tmp_path: Path, helpers) -> None:
    rng = np.random.default_rng(0)
    for split in ("train", "test"):
        helpers.write_video_with_sidecars(tmp_path / split / "a", 3, 0, rng=rng)
        helpers.write_video_with_sidecars(tmp_path / split / "b", 3, 1, rng=rng, size=16)
    odd = landmarks_path(tmp_path / "test" / "b")
    np.save(odd, np.zeros((3, 5, 2), np.float32))
    report = inspect_dataset(tmp_path, full_decode=False)
    messages = {p.path: p.message for p in report.problems}
    assert "5 landmarks per frame" in messages[odd]
    assert "different frame sizes" in messages[tmp_path]
    assert "image_size" in next(p.fix for p in report.problems if p.path == tmp_path)
