"""SyntheticHeads: determinism, layout, sidecars and that the landmarks sit on the right pixels."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from animzoo.data.synthetic import synthesize
from animzoo.errors import AnimzooInputError
from animzoo.geometry.heads import HeadParams, ProceduralHead
from animzoo.io import count_frames, read_video


def _files(root: Path) -> dict[str, bytes]:
    """Every file under root (png frame folders included) -> bytes."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("synth") / "data"
    summary = synthesize(root, videos=8, frames=5, size=48, seed=7, clips_per_identity=2, test_fraction=0.5)
    assert summary["train_videos"] == 4 and summary["test_videos"] == 4
    return root


def test_same_seed_same_bytes_other_seed_differs(tmp_path: Path) -> None:
    kw = dict(videos=4, frames=6, size=48, clips_per_identity=1, test_fraction=0.5)
    synthesize(tmp_path / "a", seed=3, **kw)
    synthesize(tmp_path / "b", seed=3, **kw)
    synthesize(tmp_path / "c", seed=4, **kw)
    a, b, c = (_files(tmp_path / k) for k in "abc")
    assert len(a) == 4 * 4 + 2  # video + 3 sidecars each, pairs.csv, synthetic.json
    assert a == b
    assert a.keys() == c.keys()
    differing = [k for k in a if a[k] != c[k]]
    assert all(k in differing for k in a if k.endswith((".mp4", ".npy", ".npz")))


def test_layout_split_by_identity_and_pairs(dataset: Path) -> None:
    train = sorted(p.name for p in (dataset / "train").glob("*.mp4"))
    test = sorted(p.name for p in (dataset / "test").glob("*.mp4"))
    assert train == ["id0000#clip00.mp4", "id0000#clip01.mp4", "id0001#clip00.mp4", "id0001#clip01.mp4"]
    ids = lambda names: {n.split("#")[0] for n in names}  # noqa: E731
    assert ids(train).isdisjoint(ids(test)) and len(ids(test)) == 2
    with open(dataset / "pairs.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == len(test)
    for row in rows:
        src, drv = dataset / row["source"], dataset / row["driving"]
        assert src.is_file() and drv.is_file()
        assert row["source"].startswith("test/") and row["driving"].startswith("test/")
        assert src.name.split("#")[0] != drv.name.split("#")[0]
    meta = json.loads((dataset / "synthetic.json").read_text())
    assert meta["seed"] == 7 and meta["videos"] == 8 and meta["identities"]["test"] == sorted(ids(test))


def test_sidecars_shapes_and_values(dataset: Path) -> None:
    head = ProceduralHead()
    for video in sorted((dataset / "test").glob("*.mp4")):
        frames = count_frames(video)
        lm = np.load(f"{video}.landmarks.npy")
        mesh = np.load(f"{video}.mesh.npz")
        assert frames == 5 and lm.shape == (frames, 70, 2) and lm.dtype == np.float32
        verts, faces = mesh["verts"], mesh["faces"]
        assert verts.shape == (frames, head.num_vertices, 3) and verts.dtype == np.float32
        assert faces.shape == (head.faces.shape[0], 3) and faces.dtype == np.int32
        assert mesh["flip_index"].shape == (head.num_vertices,) and mesh["flip_index"].dtype == np.int32
        assert mesh["param_pose"].shape == (frames, 7) and mesh["param_expression"].shape == (frames, 5)
        # Landmarks are the landmark vertices, and both follow the align_corners=True pixel rule.
        np.testing.assert_array_equal(lm, verts[:, head.landmark_indices.numpy(), :2])
        params = HeadParams.from_dict(dict(mesh), prefix="param_")
        norm = head.vertices(params).double().numpy()
        np.testing.assert_allclose(verts[..., :2], (norm[..., :2] + 1) * 47 / 2, atol=1e-3)
        np.testing.assert_allclose(verts[..., 2], norm[..., 2] * 47 / 2, atol=1e-3)


def test_pupil_landmarks_fall_on_dark_pixels(tmp_path: Path) -> None:
    root = tmp_path / "png"
    synthesize(root, videos=3, frames=4, size=128, seed=11, clips_per_identity=1, video_format="png")
    checked = 0
    for lm_file in sorted(root.rglob("*.landmarks.npy")):
        video = Path(str(lm_file)[: -len(".landmarks.npy")])
        assert video.is_dir()
        frames = read_video(video).astype(np.float32).mean(-1)  # T x H x W luminance
        lm = np.load(lm_file)
        blink = np.load(f"{video}.mesh.npz")["param_expression"][:, [4, 3]]  # right, left eye
        for t in range(frames.shape[0]):
            at = lambda k: frames[t, int(round(lm[t, k, 1])), int(round(lm[t, k, 0]))]  # noqa: E731
            skin = np.mean([at(k) for k in (28, 29, 30)])
            for eye, k in enumerate((68, 69)):
                if blink[t, eye] < 0.3:
                    assert at(k) < 0.45 * skin, (video.name, t, k, at(k), skin)
                    checked += 1
    assert checked >= 12


def test_bad_arguments(tmp_path: Path) -> None:
    with pytest.raises(AnimzooInputError, match="even size"):
        synthesize(tmp_path / "x", videos=1, frames=1, size=47, seed=0)
    with pytest.raises(AnimzooInputError, match="video_format"):
        synthesize(tmp_path / "x", videos=1, frames=1, size=48, seed=0, video_format="gif")
    (tmp_path / "file").write_text("x")
    with pytest.raises(AnimzooInputError, match="not a folder"):
        synthesize(tmp_path / "file", videos=1, frames=1, size=48, seed=0)
