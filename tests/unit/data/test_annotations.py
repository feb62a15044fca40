"""Sidecar paths, coordinate conversion, load / validate / save of landmarks and meshes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from animzoo.data.annotations import (
    landmarks_path,
    load_landmarks,
    load_mesh,
    mesh_normalized_to_pixel,
    mesh_path,
    mesh_pixel_to_normalized,
    normalized_to_pixel,
    pixel_to_normalized,
    save_landmarks,
    save_mesh,
    sidecar_path,
)
from animzoo.errors import AnimzooInputError, SidecarError


def test_sidecar_paths_for_files_and_frame_folders(tmp_path: Path) -> None:
    assert landmarks_path(tmp_path / "a#b.mp4") == tmp_path / "a#b.mp4.landmarks.npy"
    assert mesh_path(tmp_path / "a.gif") == tmp_path / "a.gif.mesh.npz"
    # A folder "clip/" keeps its sidecar beside it, not inside it.
    assert landmarks_path(str(tmp_path / "clip") + "/") == tmp_path / "clip.landmarks.npy"
    assert sidecar_path(tmp_path / "clip", "mesh") == tmp_path / "clip.mesh.npz"
    with pytest.raises(ValueError):
        sidecar_path(tmp_path / "clip", "depth")  # type: ignore[arg-type]


def test_pixel_to_normalized_align_corners_rule() -> None:
    size = (5, 9)  # H, W
    xy = np.array([[0.0, 0.0], [8.0, 4.0], [4.0, 2.0], [2.0, 1.0]], dtype=np.float32)
    out = pixel_to_normalized(xy, size)
    expected = np.array([[-1, -1], [1, 1], [0, 0], [2 * 2 / 8 - 1, 2 * 1 / 4 - 1]], dtype=np.float32)
    np.testing.assert_allclose(out, expected, atol=1e-6)
    assert out.dtype == np.float32
    # Torch tensors give the same numbers; the inverse round-trips.
    t = pixel_to_normalized(torch.from_numpy(xy), size)
    np.testing.assert_allclose(t.numpy(), expected, atol=1e-6)
    np.testing.assert_allclose(normalized_to_pixel(out, size), xy, atol=1e-5)


def test_mesh_z_is_scaled_like_x_without_offset() -> None:
    size = (11, 21)  # x scale = 2 / 20
    verts = np.array([[[10.0, 5.0, 4.0], [0.0, 10.0, -2.0]]], dtype=np.float32)
    out = mesh_pixel_to_normalized(verts, size)
    np.testing.assert_allclose(out[0, :, 2], [0.4, -0.2], atol=1e-6)
    np.testing.assert_allclose(out[0, 0, :2], [0.0, 0.0], atol=1e-6)
    np.testing.assert_allclose(mesh_normalized_to_pixel(out, size), verts, atol=1e-5)


def test_landmarks_round_trip_is_float32_and_atomic(tmp_path: Path) -> None:
    path = landmarks_path(tmp_path / "v.mp4")
    data = np.random.default_rng(0).uniform(0, 31, size=(4, 68, 2))  # float64 in
    save_landmarks(path, data, num_frames=4)
    loaded = load_landmarks(path, num_frames=4, landmark_count=68)
    assert loaded.dtype == np.float32 and loaded.shape == (4, 68, 2)
    np.testing.assert_allclose(loaded, data.astype(np.float32))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["v.mp4.landmarks.npy"]  # no temp files


def test_save_refuses_bad_landmarks_before_writing(tmp_path: Path) -> None:
    path = tmp_path / "v.mp4.landmarks.npy"
    bad = np.zeros((3, 5, 2), dtype=np.float32)
    bad[1, 2, 0] = np.nan
    with pytest.raises(SidecarError, match="frame"):
        save_landmarks(path, bad)
    assert not path.exists()


def test_missing_landmarks_names_file_and_annotate_command(tmp_path: Path) -> None:
    path = tmp_path / "v.mp4.landmarks.npy"
    with pytest.raises(SidecarError) as info:
        load_landmarks(path)
    assert str(path) in str(info.value)
    assert "animzoo data annotate --landmarks" in str(info.value)
    assert isinstance(info.value, AnimzooInputError)


def test_wrong_frame_count_names_file_and_counts(tmp_path: Path) -> None:
    path = tmp_path / "v.mp4.landmarks.npy"
    np.save(path, np.zeros((5, 68, 2), dtype=np.float32))
    with pytest.raises(SidecarError) as info:
        load_landmarks(path, num_frames=7)
    msg = str(info.value)
    assert str(path) in msg and "5 frames" in msg and "7 frames" in msg and "annotate" in msg


def test_nan_and_inf_landmarks_name_the_frames(tmp_path: Path) -> None:
    path = tmp_path / "v.mp4.landmarks.npy"
    data = np.zeros((8, 68, 2), dtype=np.float32)
    data[3, 10, 1] = np.nan
    data[6, 0, 0] = np.inf
    np.save(path, data)
    with pytest.raises(SidecarError) as info:
        load_landmarks(path)
    msg = str(info.value)
    assert str(path) in msg and "3, 6" in msg and "re-run the detector" in msg


def test_wrong_landmark_count_and_shape(tmp_path: Path) -> None:
    path = tmp_path / "v.landmarks.npy"
    np.save(path, np.zeros((2, 5, 2), dtype=np.float32))
    with pytest.raises(SidecarError, match="expects 68"):
        load_landmarks(path, landmark_count=68)
    np.save(path, np.zeros((2, 5, 3), dtype=np.float32))
    with pytest.raises(SidecarError, match="T x L x 2"):
        load_landmarks(path)
    path.write_bytes(b"not a numpy file")
    with pytest.raises(SidecarError, match="not a readable"):
        load_landmarks(path)


def _mesh(num_frames: int = 3) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    verts = np.random.default_rng(1).uniform(0, 31, size=(num_frames, 6, 3)).astype(np.float32)
    faces = np.array([[0, 1, 2], [3, 5, 4]])
    flip = np.array([3, 4, 5, 0, 1, 2])
    return verts, faces, flip


def test_mesh_round_trip_with_flip_index_params_and_frame_selection(tmp_path: Path) -> None:
    verts, faces, flip = _mesh(4)
    path = save_mesh(
        tmp_path / "v.mp4.mesh.npz", verts, faces, flip_index=flip,
        params={"expression": np.arange(8.0).reshape(4, 2), "shape": np.ones(3)},
    )
    mesh = load_mesh(path, num_frames=4)
    np.testing.assert_array_equal(mesh.verts, verts)
    assert mesh.faces.dtype == np.int64 and mesh.faces.tolist() == faces.tolist()
    assert mesh.flip_index.tolist() == flip.tolist()
    assert set(mesh.params) == {"expression", "shape"}
    some = load_mesh(path, frames=[3, 1])
    np.testing.assert_array_equal(some.verts, verts[[3, 1]])
    np.testing.assert_array_equal(some.params["expression"], [[6.0, 7.0], [2.0, 3.0]])
    np.testing.assert_array_equal(some.params["shape"], np.ones(3))  # not per frame: kept


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"faces": np.array([[0, 1, 6]])}, "valid: 0..5"),
        ({"faces": np.array([[0.0, 1.0, 2.0]])}, "integer"),
        ({"verts": np.zeros((3, 6, 2), np.float32)}, "T x V x 3"),
        ({"flip_index": np.array([0, 0, 1, 2, 3, 4])}, "permutation"),
    ],
)
def test_malformed_mesh_is_refused(tmp_path: Path, change: dict, match: str) -> None:
    verts, faces, flip = _mesh()
    arrays = {"verts": verts, "faces": faces, "flip_index": flip, **change}
    path = tmp_path / "v.mp4.mesh.npz"
    np.savez(path, **arrays)
    with pytest.raises(SidecarError, match=match) as info:
        load_mesh(path)
    assert str(path) in str(info.value)


def test_mesh_missing_file_keys_frames_and_nan(tmp_path: Path) -> None:
    path = tmp_path / "v.mp4.mesh.npz"
    with pytest.raises(SidecarError) as info:
        load_mesh(path)
    assert str(path) in str(info.value) and "external fitter" in str(info.value)
    assert "docs/data.md" in str(info.value)
    verts, faces, _ = _mesh()
    np.savez(path, verts=verts)
    with pytest.raises(SidecarError, match="faces"):
        load_mesh(path)
    np.savez(path, verts=verts, faces=faces)
    with pytest.raises(SidecarError, match="3 frames"):
        load_mesh(path, num_frames=5)
    verts[2, 1, 2] = np.inf
    np.savez(path, verts=verts, faces=faces)
    with pytest.raises(SidecarError, match=r"frame\(s\) 2"):
        load_mesh(path)
    assert load_mesh(path, frames=[0, 1]).verts.shape == (2, 6, 3)  # only frames read are checked
