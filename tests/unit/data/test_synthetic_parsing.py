"""SyntheticHeads' face-parsing maps: written for every clip, exact (background = no coverage,
eyes = the rasterizer's eyeball faces) and pixel-aligned with the frames and the landmarks."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from animzoo.data import AnimationDataModule
from animzoo.data.annotations import (
    PARSING_LABELS,
    load_parsing,
    normalized_to_pixel,
    parsing_path,
)
from animzoo.data.datamodule import synthetic_cache_dir
from animzoo.data.synthetic import GENERATOR_VERSION, synthesize
from animzoo.geometry.heads import HeadParams, ProceduralHead
from animzoo.geometry.raster import rasterize
from animzoo.io import count_frames

pytestmark = pytest.mark.usefixtures("one_thread")

LABEL = {name: i for i, name in enumerate(PARSING_LABELS)}
SIZE = 64
FRAMES = 24


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("parsing") / "data"
    synthesize(root, videos=5, frames=FRAMES, size=SIZE, seed=3, clips_per_identity=1)
    return root


@pytest.fixture(scope="module")
def head() -> ProceduralHead:
    return ProceduralHead()


def _clips(root: Path) -> list[tuple[Path, np.ndarray, np.ndarray, np.lib.npyio.NpzFile]]:
    """(video, parsing maps, landmarks in pixels, mesh sidecar) of every clip, train and test."""
    out = []
    for video in sorted(root.glob("*/*.mp4")):
        maps = load_parsing(parsing_path(video), num_frames=FRAMES, frame_size=(SIZE, SIZE))
        out.append((video, maps, np.load(f"{video}.landmarks.npy"), np.load(f"{video}.mesh.npz")))
    return out


def _label_at(maps: np.ndarray, t: int, point: np.ndarray) -> int:
    return int(maps[t, round(float(point[1])), round(float(point[0]))])


def test_every_clip_has_parsing_maps(synthetic: Path) -> None:
    videos = sorted(synthetic.glob("*/*.mp4"))
    assert {v.parent.name for v in videos} == {"train", "test"} and len(videos) == 5
    for video in videos:
        maps = np.load(parsing_path(video))
        assert maps.shape == (count_frames(video), SIZE, SIZE) and maps.dtype == np.uint8
        assert int(maps.max()) < len(PARSING_LABELS)
        # A head on a background: the face, hair and both eyes are there in most frames.
        present = {k for k in range(len(PARSING_LABELS)) if (maps == k).any()}
        assert {LABEL[n] for n in ("background", "skin", "hair", "nose", "mouth", "right_eye", "left_eye")} <= present
    meta = json.loads((synthetic / "synthetic.json").read_text())
    assert meta["version"] == GENERATOR_VERSION and meta["parsing_labels"] == list(PARSING_LABELS)


def test_background_is_exactly_where_nothing_covers_the_pixel(synthetic: Path, head: ProceduralHead) -> None:
    for video, maps, _, mesh in _clips(synthetic):
        params = HeadParams.from_dict(dict(mesh), prefix="param_")
        with torch.no_grad():
            _, coverage = head.render(params, (SIZE, SIZE))
        uncovered = coverage[:, 0].numpy() == 0
        assert uncovered.any() and (~uncovered).any()
        assert np.array_equal(maps == LABEL["background"], uncovered), video.name


def test_eye_labels_are_the_rasterized_eyeballs(synthetic: Path, head: ProceduralHead) -> None:
    """Right / left eye = pixels whose visible face is on the eyeball nearer the right / left pupil."""
    video, maps, _, mesh = _clips(synthetic)[0]
    params = HeadParams.from_dict(dict(mesh), prefix="param_")
    with torch.no_grad():
        verts = head.vertices(params)
        face_index = rasterize(verts, head.faces, (SIZE, SIZE)).face_index
    faces = head.faces
    on_eyeball = head.part[faces[:, 0]] == 1  # the eyeball part (sclera, iris, pupil)
    checked = 0
    for t in range(FRAMES):
        centre = verts[t][faces].mean(1)  # F x 3
        pupils = verts[t, head.landmark_indices[[68, 69]]]  # right, left
        nearer_right = (centre - pupils[0]).norm(dim=-1) < (centre - pupils[1]).norm(dim=-1)
        visible = face_index[t]
        covered = visible >= 0
        for name, side in (("right_eye", nearer_right), ("left_eye", ~nearer_right)):
            want = torch.zeros_like(covered)
            want[covered] = (on_eyeball & side)[visible[covered]]
            assert np.array_equal(maps[t] == LABEL[name], want.numpy()), (video.name, t, name)
            checked += int(want.sum())
    assert checked > 100


def test_open_eyes_put_the_pupils_on_their_own_eye(synthetic: Path) -> None:
    hits = []
    for _, maps, lm, mesh in _clips(synthetic):
        blink = mesh["param_expression"][:, [4, 3]]  # right, left
        for t in range(FRAMES):
            for eye, (k, name) in enumerate(((68, "right_eye"), (69, "left_eye"))):
                if blink[t, eye] < 0.3:
                    hits.append(_label_at(maps, t, lm[t, k]) == LABEL[name])
    assert len(hits) >= 150 and np.mean(hits) >= 0.95, (len(hits), np.mean(hits))


def test_open_mouth_centre_is_mouth_and_lips_are_mouth(synthetic: Path) -> None:
    centres, lips = [], []
    for _, maps, lm, mesh in _clips(synthetic):
        mouth_open = mesh["param_expression"][:, 0]
        for t in range(FRAMES):
            if mouth_open[t] > 0.25:
                x, y = np.round(lm[t, 60:68].mean(0)).astype(int)
                window = maps[t, y - 1 : y + 2, x - 1 : x + 2]
                centres.append((maps[t, y, x] == LABEL["mouth"], (window == LABEL["mouth"]).any()))
            # The outer lip landmarks lie on the lips' outline: mouth within one pixel.
            for k in range(48, 60):
                x, y = np.round(lm[t, k]).astype(int)
                lips.append((maps[t, y - 1 : y + 2, x - 1 : x + 2] == LABEL["mouth"]).any())
    assert len(centres) >= 8, len(centres)
    exact, near = np.mean(centres, axis=0)
    assert near == 1.0 and exact >= 0.9
    assert np.mean(lips) >= 0.97


def test_brows_and_nose_sit_under_their_landmarks(synthetic: Path) -> None:
    brows, noses = [], []
    for _, maps, lm, _ in _clips(synthetic):
        for t in range(FRAMES):
            # Brow landmarks trace the upper edge of the brow: the band is at or just below.
            for k in range(17, 27):
                name = "right_brow" if k < 22 else "left_brow"
                x, y = np.round(lm[t, k]).astype(int)
                window = maps[t, y - 1 : y + 3, x - 1 : x + 2]
                brows.append(((window == LABEL[name]).any(), (window == LABEL[_other(name)]).any()))
            noses.append(_label_at(maps, t, lm[t, 30]) == LABEL["nose"])  # the nose tip
    found, wrong_side = np.mean(brows, axis=0)
    assert found >= 0.97 and wrong_side == 0.0
    assert np.mean(noses) >= 0.95


def _other(name: str) -> str:
    return name.replace("right", "@").replace("left", "right").replace("@", "left")


def test_supersampled_labels_follow_the_coverage(head: ProceduralHead) -> None:
    params = head.neutral_params(2)
    params.pose[1, 0] = 0.4  # a turned head
    params.expression[1, 0] = 0.8  # with an open mouth
    with torch.no_grad():
        _, coverage, labels = head.render_with_parsing(params, (40, 40), supersample=3)
        image1, coverage1, labels1 = head.render_with_parsing(params, (40, 40))
    assert labels.shape == (2, 40, 40) and labels.dtype == torch.uint8
    cov = coverage[:, 0]
    assert (labels[cov < 0.5] == 0).all() and (labels[cov == 1] != 0).all()
    # Odd supersampling has a sample at every output pixel centre: the vote mostly agrees.
    assert (labels == labels1).float().mean() > 0.9
    assert torch.equal(labels1 == 0, coverage1[:, 0] == 0)
    # render() is render_with_parsing() without the labels: same pixels.
    with torch.no_grad():
        plain, plain_cov = head.render(params, (40, 40))
    assert torch.equal(plain, image1) and torch.equal(plain_cov, coverage1)


def test_batches_of_resized_synthetic_frames_keep_maps_aligned(synthetic: Path) -> None:
    """Served at another image_size, a pupil landmark still falls on its eye's label."""
    dm = AnimationDataModule(
        root=str(synthetic), chunk_size=FRAMES, requires=["landmarks", "parsing"], image_size=48,
    )
    dm.setup("validate")
    hits = []
    for batch in dm.val_dataloader():
        maps, lms = batch["driving_parsing"], batch["driving_landmarks"]
        assert maps.shape == (lms.shape[0], 48, 48) and maps.dtype == torch.long
        pix = np.round(normalized_to_pixel(lms.numpy(), (48, 48))).astype(int)
        for row in range(maps.shape[0]):
            for k, name in ((68, "right_eye"), (69, "left_eye")):
                x, y = pix[row, k]
                hits.append(int(maps[row, y, x]) == LABEL[name])
    # Closed eyes (blinks) are skin: most but not all frames hit.
    assert len(hits) >= 2 * FRAMES and np.mean(hits) >= 0.8, np.mean(hits)


def test_cache_folder_changes_with_the_generator_version(monkeypatch) -> None:
    import animzoo.data.synthetic as synthetic_module

    args = {"videos": 2, "frames": 3, "size": 32, "seed": 0}
    before = synthetic_cache_dir(args)
    monkeypatch.setattr(synthetic_module, "GENERATOR_VERSION", "synthetic-heads/999")
    assert synthetic_cache_dir(args) != before
