"""SyntheticHeads written to disk and served by the one datamodule, as a method would see it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from animzoo.data import AnimationDataModule
from animzoo.data.annotations import pixel_to_normalized
from animzoo.data.synthetic import synthesize
from animzoo.io import read_frames


@pytest.fixture(scope="module")
def synthetic_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("heads") / "synthetic-32"
    synthesize(root, videos=10, frames=8, size=32, seed=5, clips_per_identity=2)
    return root


def _check_contract(batch: dict, size: int) -> None:
    n = batch["source"].shape[0]
    for key in ("source", "driving"):
        image = batch[key]
        assert image.shape == (n, 3, size, size) and image.dtype == torch.float32
        assert 0.0 <= float(image.min()) and float(image.max()) <= 1.0
    for key in ("source_landmarks", "driving_landmarks"):
        assert batch[key].shape == (n, 70, 2)
        assert batch[key].abs().max() <= 1.0 + 1e-6
    vertices = batch["driving_mesh"]
    assert vertices.shape[0] == n and vertices.shape[2] == 3
    faces = batch["mesh_faces"]
    assert faces.dim() == 2 and faces.shape[1] == 3 and faces.dtype == torch.long
    assert int(faces.max()) < vertices.shape[1]
    assert len(batch["video_id"]) == n and batch["frame_index"].shape == (n,)


def test_train_pairs_follow_the_batch_contract(synthetic_root: Path) -> None:
    dm = AnimationDataModule(
        root=str(synthetic_root), batch_size=4, requires=["landmarks", "mesh"],
        augment={"flip_prob": 0.0, "brightness": 0.0, "contrast": 0.0, "saturation": 0.0,
                 "hue": 0.0},
    )
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    _check_contract(batch, 32)
    assert (batch["source_frame_index"] <= batch["frame_index"]).all()
    # The served driving frame is the frame on disk and its landmarks are the sidecar's.
    video = synthetic_root / "train" / batch["video_id"][0]
    index = int(batch["frame_index"][0])
    on_disk = torch.from_numpy(read_frames(video, [index])[0]).permute(2, 0, 1).float() / 255
    assert torch.allclose(batch["driving"][0], on_disk, atol=1 / 255)
    sidecar = np.load(str(video) + ".landmarks.npy")[index]
    expected = torch.from_numpy(pixel_to_normalized(sidecar, (32, 32))).float()
    assert torch.allclose(batch["driving_landmarks"][0], expected, atol=1e-5)


def test_test_chunks_cover_every_frame_from_frame_zero(synthetic_root: Path) -> None:
    dm = AnimationDataModule(
        root=str(synthetic_root), chunk_size=3, requires=["landmarks", "mesh"]
    )
    dm.setup("test")
    loaders = dm.test_dataloader()
    reconstruction = loaders[0] if isinstance(loaders, list) else loaders
    seen: dict[str, list[int]] = {}
    for batch in reconstruction:
        _check_contract(batch, 32)
        for video_id, frame in zip(batch["video_id"], batch["frame_index"].tolist()):
            seen.setdefault(video_id, []).append(frame)
        # the source of every frame is frame 0 of its video
        assert (batch["source_frame_index"] == 0).all()
    test_videos = sorted(p.name for p in (synthetic_root / "test").glob("*.mp4"))
    assert sorted(seen) == test_videos
    assert all(frames == list(range(8)) for frames in seen.values())
    if isinstance(loaders, list):  # cross-identity pairs from pairs.csv
        cross = next(iter(loaders[1]))
        assert cross["source"].shape[1:] == (3, 32, 32)
        assert not bool(cross["has_ground_truth"])
