"""VideoFolder (pairs / reconstruction / cross), collation, EpochSampler, bad input."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from animzoo import io as aio
from animzoo.data.annotations import landmarks_path, mesh_path, pixel_to_normalized
from animzoo.data.videos import (
    EpochSampler,
    VideoFolder,
    collate_chunks,
    collate_pairs,
    split_videos,
    list_videos,
)
from animzoo.errors import DatasetError, SidecarError, VideoReadError

SIZE = 32  # frame size of the conftest datasets
TEST_VIDEOS = {"dave#1.mp4": 12, "erin#1": 7}  # as in conftest.TEST_VIDEOS


@pytest.fixture(autouse=True)
def _helpers(helpers) -> None:
    # conftest helpers as module globals (the test folders are not packages).
    global frame_index_of, make_frames, write_video_with_sidecars
    assert helpers.SIZE == SIZE and helpers.TEST_VIDEOS == TEST_VIDEOS
    frame_index_of = helpers.frame_index_of
    make_frames = helpers.make_frames
    write_video_with_sidecars = helpers.write_video_with_sidecars

BOTH = {"landmarks", "mesh"}


def _pairs(ds: VideoFolder, indices) -> list[tuple[str, int, int]]:
    return [(s["video_id"], s["source_frame_index"], s["frame_index"]) for s in map(ds.__getitem__, indices)]


# ----------------------------------------------------------------------------- pairs


def test_pairs_read_two_sorted_distinct_frames_with_matching_pixels(tiny_dataset) -> None:
    ds = VideoFolder(tiny_dataset.root, "train", num_repeats=3)
    seen = set()
    for index in range(len(ds)):
        sample = ds[index]
        src, drv = sample["source_frame_index"], sample["frame_index"]
        assert 0 <= src < drv < tiny_dataset.info(f"train/{sample['video_id']}").num_frames
        # The pixels are those of the frames the sample claims (frames encode their index).
        assert frame_index_of(sample["source"].numpy()) == src
        assert frame_index_of(sample["driving"].numpy()) == drv
        seen.add(sample["video_id"])
    assert seen == {"alice#1.mp4", "alice#2", "bob#1.mp4", "carol#1"}


def test_single_frame_video_gives_frame_zero_twice(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    for split in ("train", "test"):
        write_video_with_sidecars(tmp_path / split / "solo", 1, 0, rng=rng)
    sample = VideoFolder(tmp_path, "train")[0]
    assert sample["source_frame_index"] == sample["frame_index"] == 0


def test_pairs_batch_contract_and_sidecar_values(tiny_dataset) -> None:
    ds = VideoFolder(tiny_dataset.root, "train", requires=BOTH)
    samples = [ds[i] for i in range(len(ds))]
    batch = collate_pairs(samples)
    b = len(samples)
    for key in ("source", "driving"):
        assert batch[key].shape == (b, 3, SIZE, SIZE) and batch[key].dtype == torch.float32
        assert 0.0 <= batch[key].min() and batch[key].max() <= 1.0
    assert batch["source_landmarks"].shape == (b, 68, 2) == batch["driving_landmarks"].shape
    assert batch["source_landmarks"].abs().max() <= 1.0
    assert batch["source_mesh"].shape == (b, 6, 3) and batch["driving_mesh"].dtype == torch.float32
    assert batch["mesh_faces"].shape == (4, 3) and batch["mesh_faces"].dtype == torch.long  # once
    assert batch["mesh_flip_index"].tolist() == [3, 4, 5, 0, 1, 2]
    assert batch["frame_index"].dtype == torch.long and batch["frame_index"].shape == (b,)
    assert batch["video_id"] == [s["video_id"] for s in samples]
    assert batch["identity"] == ["alice", "alice", "bob", "carol"]
    for row, sample in enumerate(samples):
        info = tiny_dataset.info(f"train/{sample['video_id']}")
        src, drv = sample["source_frame_index"], sample["frame_index"]
        want = pixel_to_normalized(info.landmarks[[src, drv]], (SIZE, SIZE))
        np.testing.assert_allclose(batch["source_landmarks"][row].numpy(), want[0], atol=1e-6)
        np.testing.assert_allclose(batch["driving_landmarks"][row].numpy(), want[1], atol=1e-6)
        verts = info.verts[drv]
        np.testing.assert_allclose(
            batch["driving_mesh"][row, :, 2].numpy(), verts[:, 2] * 2 / (SIZE - 1), atol=1e-6
        )


def test_only_required_sidecars_are_loaded(tiny_dataset) -> None:
    plain = VideoFolder(tiny_dataset.root, "train")[0]
    assert not {k for k in plain if "landmarks" in k or "mesh" in k}
    lms = VideoFolder(tiny_dataset.root, "train", requires={"landmarks"})[0]
    assert "source_landmarks" in lms and not {k for k in lms if "mesh" in k}


def test_image_size_resizes_frames_not_coordinates(tiny_dataset) -> None:
    full = VideoFolder(tiny_dataset.root, "train", requires={"landmarks"})[1]
    small = VideoFolder(tiny_dataset.root, "train", requires={"landmarks"}, image_size=16)[1]
    assert small["source"].shape == (3, 16, 16)
    assert torch.equal(small["source_landmarks"], full["source_landmarks"])
    # align_corners resize keeps the ends of the blue ramp at the ends (up to the antialias blur).
    assert torch.isclose(small["source"][2, 0, 0], full["source"][2, 0, 0], atol=0.03)
    assert torch.isclose(small["source"][2, 0, -1], full["source"][2, 0, -1], atol=0.03)


def test_id_sampling_iterates_identities(tiny_dataset) -> None:
    ds = VideoFolder(tiny_dataset.root, "train", id_sampling=True)
    assert len(ds) == 3 and ds.identities == ["alice", "bob", "carol"]
    clips = {ds[epoch * len(ds) + 0]["video_id"] for epoch in range(20)}
    assert clips == {"alice#1.mp4", "alice#2"}  # item 0 = alice, any of her clips
    assert {ds[1]["identity"], ds[2]["identity"]} == {"bob", "carol"}


def test_num_repeats_multiplies_length_with_fresh_pairs(tiny_dataset) -> None:
    once = VideoFolder(tiny_dataset.root, "train")
    many = VideoFolder(tiny_dataset.root, "train", num_repeats=5)
    assert len(many) == 5 * len(once) == 20
    bob = [many[i] for i in range(2, 20, 4)]  # the same video in each repeat
    assert {s["video_id"] for s in bob} == {"bob#1.mp4"}
    assert len({(s["source_frame_index"], s["frame_index"]) for s in bob}) > 1


def test_pairs_are_a_pure_function_of_seed_epoch_and_index(tiny_dataset) -> None:
    a = VideoFolder(tiny_dataset.root, "train", num_repeats=4, seed=3)
    b = VideoFolder(tiny_dataset.root, "train", num_repeats=4, seed=3)
    c = VideoFolder(tiny_dataset.root, "train", num_repeats=4, seed=4)
    n = len(a)
    epoch0 = _pairs(a, range(n))
    assert epoch0 == _pairs(b, range(n))
    assert epoch0 != _pairs(a, range(n, 2 * n))  # next epoch: new frames
    assert epoch0 != _pairs(c, range(n))
    assert [(s["video_id"], s["source_frame_index"], s["frame_index"]) for s in a] == epoch0  # one epoch


def _loader_pairs(ds: VideoFolder, num_workers: int, epoch: int) -> list[tuple[str, int, int]]:
    sampler = EpochSampler(ds, seed=7)
    sampler.set_epoch(epoch)
    loader = DataLoader(ds, batch_size=3, sampler=sampler, num_workers=num_workers, collate_fn=collate_pairs)
    out = []
    for batch in loader:
        sources, drivings = batch["source_frame_index"].tolist(), batch["frame_index"].tolist()
        out += list(zip(batch["video_id"], sources, drivings))
    return out


def test_data_order_is_independent_of_num_workers(tiny_dataset) -> None:
    ds = VideoFolder(tiny_dataset.root, "train", num_repeats=2)
    serial = _loader_pairs(ds, 0, epoch=1)
    assert serial == _loader_pairs(ds, 2, epoch=1)
    assert serial != _loader_pairs(ds, 0, epoch=2)
    assert len(serial) == len(ds)


# ----------------------------------------------------------------------------- sampler


class _Sized(torch.utils.data.Dataset):
    def __init__(self, n: int) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> int:
        return i


def test_epoch_sampler_shards_disjointly_and_encodes_the_epoch() -> None:
    ds = _Sized(10)
    ranks = [EpochSampler(ds, num_replicas=2, rank=r, seed=1) for r in range(2)]
    for s in ranks:
        s.set_epoch(3)
    shards = [list(s) for s in ranks]
    assert len(shards[0]) == len(shards[1]) == 5
    assert not set(shards[0]) & set(shards[1])
    assert sorted(shards[0] + shards[1]) == list(range(30, 40))  # epoch * len + i
    assert shards[0] == list(ranks[0])  # same epoch, same order
    ranks[0].set_epoch(4)
    other = list(ranks[0])
    assert all(40 <= i < 50 for i in other) and [i - 40 for i in other] != [i - 30 for i in shards[0]]
    # Uneven sizes are padded so every rank yields as many indices.
    odd = [list(EpochSampler(_Sized(7), num_replicas=2, rank=r)) for r in range(2)]
    assert len(odd[0]) == len(odd[1]) == 4 and set(odd[0]) | set(odd[1]) == set(range(7))
    assert isinstance(ranks[0], torch.utils.data.DistributedSampler)


def test_epoch_sampler_seed_and_epoch_do_not_collide() -> None:
    ds = _Sized(50)
    a = EpochSampler(ds, seed=0)
    a.set_epoch(1)
    b = EpochSampler(ds, seed=1)
    b.set_epoch(0)
    assert [i - 50 for i in a] != list(b)


# ----------------------------------------------------------------------------- reconstruction / cross


def test_reconstruction_chunks_cover_every_frame_once_in_order(tiny_dataset) -> None:
    ds = VideoFolder(tiny_dataset.root, "test", mode="reconstruction", chunk_size=5, requires=BOTH)
    assert len(ds) == 3 + 2  # 12 frames -> 5+5+2, 7 frames -> 5+2
    batch = collate_chunks([ds[i] for i in range(len(ds))])
    n = sum(TEST_VIDEOS.values())
    assert batch["driving"].shape == (n, 3, SIZE, SIZE) and batch["source"].shape == (n, 3, SIZE, SIZE)
    expected = [(name, t) for name, count in TEST_VIDEOS.items() for t in range(count)]
    assert list(zip(batch["video_id"], batch["frame_index"].tolist())) == expected
    for row, (name, t) in enumerate(expected):
        assert frame_index_of(batch["driving"][row].numpy()) == t
        assert frame_index_of(batch["source"][row].numpy()) == 0  # source = frame 0
    assert batch["num_frames"].tolist() == [TEST_VIDEOS[name] for name, _ in expected]
    assert batch["mode"] == "reconstruction" and batch["has_ground_truth"] is True
    assert batch["mesh_faces"].shape == (4, 3)
    info = tiny_dataset.info("test/erin#1")
    rows = [i for i, (name, _) in enumerate(expected) if name == "erin#1"]
    want = pixel_to_normalized(info.landmarks, (SIZE, SIZE))
    np.testing.assert_allclose(batch["driving_landmarks"][rows].numpy(), want, atol=1e-6)
    np.testing.assert_allclose(batch["source_landmarks"][rows].numpy(), want[[0] * len(rows)], atol=1e-6)


def test_cross_pairs_from_pairs_csv(tiny_dataset) -> None:
    ds = VideoFolder(tiny_dataset.root, mode="cross", chunk_size=32, requires={"landmarks"})
    assert len(ds) == 2
    first, second = ds[0], ds[1]
    assert first["video_id"] == "test/dave#1.mp4__test/erin#1"
    assert first["source_video_id"] == "test/dave#1.mp4" and first["identity"] == "dave"
    assert first["driving_identity"] == "erin" and first["has_ground_truth"] is False
    assert first["driving"].shape[0] == TEST_VIDEOS["erin#1"]
    assert second["driving"].shape[0] == TEST_VIDEOS["dave#1.mp4"]  # bare names resolved in test/
    # Source frame 0 of dave (green encodes the video) vs driving frames of erin.
    assert frame_index_of(first["source"].numpy()) == 0
    assert first["source"][1].mean() != pytest.approx(first["driving"][0, 1].mean().item(), abs=0.05)
    assert [frame_index_of(f.numpy()) for f in first["driving"]] == list(range(7))
    info = tiny_dataset.info("test/dave#1.mp4")
    np.testing.assert_allclose(
        first["source_landmarks"].numpy(), pixel_to_normalized(info.landmarks[0], (SIZE, SIZE)), atol=1e-6
    )
    batch = collate_chunks([first, second])
    assert batch["mode"] == "cross" and batch["driving"].shape[0] == 19


def test_flat_root_is_split_80_20_by_identity_deterministically(tmp_path: Path) -> None:
    for i in range(10):
        aio.write_video(tmp_path / f"p{i}#clip", make_frames(2, i % 5, 8))
        aio.write_video(tmp_path / f"p{i}#other", make_frames(2, i % 5, 8))
    train = VideoFolder(tmp_path, "train")
    test = VideoFolder(tmp_path, "test")
    train_ids = {v.identity for v in train.videos}
    test_ids = {v.identity for v in test.videos}
    assert len(test_ids) == 2 and len(train_ids) == 8 and not train_ids & test_ids
    assert len(test.videos) == 4  # both clips of a test identity
    assert [v.video_id for v in VideoFolder(tmp_path, "test", seed=9).videos] == [
        v.video_id for v in test.videos
    ]  # the training seed does not move videos between splits
    other = split_videos(list_videos(tmp_path), split_seed=1)[1]
    assert {v.identity for v in other} != test_ids


def test_strip_and_gif_videos(tmp_path: Path) -> None:
    frames = make_frames(4, 0, 16)
    for split in ("train", "test"):
        aio.write_video(tmp_path / split / "strip.png", frames)
        aio.write_video(tmp_path / split / "anim.gif", frames)
    with pytest.raises(DatasetError, match="frame_shape"):
        VideoFolder(tmp_path, "train")
    ds = VideoFolder(tmp_path, "test", frame_shape=(16, 16), mode="reconstruction")
    batch = collate_chunks([ds[i] for i in range(len(ds))])
    assert batch["video_id"] == ["anim.gif"] * 4 + ["strip.png"] * 4
    assert [frame_index_of(f.numpy()) for f in batch["driving"]] == [0, 1, 2, 3] * 2


# ----------------------------------------------------------------------------- bad input


def test_corrupt_mp4_names_file_and_fix(dataset_copy) -> None:
    path = dataset_copy.root / "train" / "bob#1.mp4"
    path.write_bytes(path.read_bytes()[:200])
    ds = VideoFolder(dataset_copy.root, "train")  # construction stays cheap
    with pytest.raises(VideoReadError) as info:
        ds[2]
    msg = str(info.value)
    assert str(path) in msg and "re-encode" in msg and "animzoo data inspect" in msg


def test_empty_frame_folder_is_refused_at_construction(dataset_copy) -> None:
    folder = dataset_copy.root / "train" / "zed#1"
    folder.mkdir()
    with pytest.raises(DatasetError) as info:
        VideoFolder(dataset_copy.root, "train")
    assert str(folder) in str(info.value) and "fill it with frames" in str(info.value)


def test_sidecar_with_wrong_frame_count(dataset_copy) -> None:
    path = landmarks_path(dataset_copy.root / "train" / "alice#2")
    np.save(path, np.zeros((3, 68, 2), np.float32))
    ds = VideoFolder(dataset_copy.root, "train", requires={"landmarks"})
    with pytest.raises(SidecarError) as info:
        ds[1]
    msg = str(info.value)
    assert str(path) in msg and "3 frames" in msg and "6 frames" in msg and "annotate" in msg


def test_nan_landmarks_name_the_frame(dataset_copy) -> None:
    path = landmarks_path(dataset_copy.root / "train" / "carol#1")
    data = np.load(path)
    data[:, 5, 0] = np.nan
    np.save(path, data)
    ds = VideoFolder(dataset_copy.root, "train", requires={"landmarks"})
    with pytest.raises(SidecarError) as info:
        ds[3]
    sample = VideoFolder(dataset_copy.root, "train")[3]
    # The source frame is checked first; every frame of the video has a NaN.
    frames = f"frame(s) {sample['source_frame_index']};"
    assert str(path) in str(info.value) and frames in str(info.value) and "re-run" in str(info.value)


def test_missing_split_names_folder_and_fix(dataset_copy) -> None:
    shutil.rmtree(dataset_copy.root / "test")
    with pytest.raises(DatasetError) as info:
        VideoFolder(dataset_copy.root, "test", mode="reconstruction")
    msg = str(info.value)
    assert str(dataset_copy.root / "test") in msg and "create" in msg
    assert len(VideoFolder(dataset_copy.root, "train")) == 4  # the present split still works


def test_missing_required_sidecar_at_construction(dataset_copy) -> None:
    path = mesh_path(dataset_copy.root / "train" / "bob#1.mp4")
    path.unlink()
    with pytest.raises(SidecarError) as info:
        VideoFolder(dataset_copy.root, "train", requires={"mesh"}, required_by="PWM")
    msg = str(info.value)
    assert "PWM requires mesh" in msg and str(path) in msg and "external fitter" in msg
    VideoFolder(dataset_copy.root, "train", requires={"landmarks"})  # landmarks are all there


def test_missing_root_and_pairs_rows(tmp_path: Path, dataset_copy) -> None:
    with pytest.raises(DatasetError, match="animzoo data synth"):
        VideoFolder(tmp_path / "nope")
    (dataset_copy.root / "pairs.csv").write_text("source,driving\ntest/dave#1.mp4,test/ghost.mp4\n")
    with pytest.raises(DatasetError) as info:
        VideoFolder(dataset_copy.root, mode="cross")
    assert "ghost.mp4" in str(info.value) and "line 2" in str(info.value)
