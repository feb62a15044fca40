"""Face-parsing sidecars: save / load / validate, serving them in batches (pairs, chunks, nearest
resize), flips and time flips, inspection, and the missing-sidecar error at setup."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
import torch

from animzoo.data.annotations import (
    PARSING_FLIP,
    PARSING_LABELS,
    load_parsing,
    open_parsing,
    parsing_path,
    save_parsing,
    sidecar_fix,
    sidecar_path,
    validate_parsing,
)
from animzoo.data.datamodule import AnimationDataModule
from animzoo.data.transforms import (
    AugmentConfig,
    PairAugmentation,
    flip_batch,
    make_generator,
)
from animzoo.data.videos import (
    VideoFolder,
    collate_chunks,
    collate_pairs,
    inspect_dataset,
    resize_labels,
)
from animzoo.errors import SidecarError

SIZE = 32  # frame size of the conftest datasets
LABEL = {name: i for i, name in enumerate(PARSING_LABELS)}
NUM = len(PARSING_LABELS)


def _maps_for(num_frames: int, video_number: int, size: int = SIZE) -> np.ndarray:
    """``T x size x size`` uint8 labels that identify the frame, the video and the pixel:
    ``(t + 3 * video + x + 2 * y) % NUM``; no two frames of a video are equal."""
    t, y, x = np.meshgrid(np.arange(num_frames), np.arange(size), np.arange(size), indexing="ij")
    return ((t + 3 * video_number + x + 2 * y) % NUM).astype(np.uint8)


def _by_hand(n_in: int, n_out: int) -> list[int]:
    """Input pixel of each output pixel of a nearest resize on the align_corners=True grid:
    ``round(j * (n_in - 1) / (n_out - 1))``, ties up, in exact fractions."""
    return [int(Fraction(j * (n_in - 1), n_out - 1) + Fraction(1, 2)) for j in range(n_out)]


def _add_parsing(dataset) -> dict[str, np.ndarray]:
    """Write a parsing sidecar for every video of a (copied) conftest dataset."""
    written = {}
    for number, (key, info) in enumerate(sorted(dataset.videos.items())):
        maps = _maps_for(info.num_frames, number)
        save_parsing(info.path, maps, num_frames=info.num_frames, frame_size=(SIZE, SIZE))
        written[key] = maps
    return written


@pytest.fixture
def parsed(dataset_copy):
    """A private copy of the tiny dataset with parsing sidecars, and the maps written."""
    return dataset_copy, _add_parsing(dataset_copy)


# ----------------------------------------------------------------------------- the format


def test_labels_and_flip_table() -> None:
    assert PARSING_LABELS[0] == "background" and len(set(PARSING_LABELS)) == NUM
    assert {"skin", "right_eye", "left_eye", "right_brow", "left_brow", "mouth"} <= set(PARSING_LABELS)
    assert sorted(PARSING_FLIP) == list(range(NUM))  # a permutation ...
    assert all(PARSING_FLIP[PARSING_FLIP[k]] == k for k in range(NUM))  # ... and an involution
    for name, k in LABEL.items():
        mirrored = PARSING_LABELS[PARSING_FLIP[k]]
        if name.startswith("left_"):
            assert mirrored == "right_" + name[5:]
        elif name.startswith("right_"):
            assert mirrored == "left_" + name[6:]
        else:
            assert mirrored == name


def test_paths_round_trip_and_atomic_write(tmp_path: Path) -> None:
    video = tmp_path / "a#1.mp4"
    assert parsing_path(video) == tmp_path / "a#1.mp4.parsing.npy"
    assert parsing_path(str(tmp_path / "clip") + "/") == tmp_path / "clip.parsing.npy"  # beside
    assert sidecar_path(video, "parsing") == parsing_path(video)
    maps = _maps_for(5, 1, size=12)[:, :, :10]  # H != W
    # A video path and the sidecar path itself are both accepted; int64 input is stored as uint8.
    out = save_parsing(video, maps.astype(np.int64), num_frames=5, frame_size=(12, 10))
    assert out == parsing_path(video)
    assert save_parsing(parsing_path(tmp_path / "b.mp4"), torch.from_numpy(maps)) == parsing_path(
        tmp_path / "b.mp4"
    )
    for path in (out, parsing_path(tmp_path / "b.mp4")):
        loaded = load_parsing(path, num_frames=5, frame_size=(12, 10))
        assert loaded.dtype == np.uint8 and np.array_equal(loaded, maps)
        assert np.load(path).dtype == np.uint8
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp files left
    table = open_parsing(out)
    assert isinstance(table, np.memmap) and table.shape == (5, 12, 10)


@pytest.mark.parametrize(
    ("maps", "kwargs", "match"),
    [
        (np.zeros((4, 8, 8, 1), np.uint8), {}, r"shape \(4, 8, 8, 1\), expected T x H x W"),
        (np.zeros((8, 8), np.uint8), {}, "expected T x H x W"),
        (np.zeros((4, 8, 8), np.float32), {}, "dtype float32, expected integer labels"),
        (np.zeros((4, 8, 8), bool), {}, "dtype bool, expected integer labels"),
        (np.zeros((4, 8, 8), np.uint8), {"num_frames": 5}, "4 frames but its video has 5 frames"),
        (np.zeros((4, 8, 8), np.uint8), {"frame_size": (8, 9)}, "are 8x8 .* frames are 8x9"),
        (np.full((4, 8, 8), NUM, np.uint8), {}, rf"label value\(s\) {NUM} in frame\(s\) 0, 1, 2, 3 "),
        (np.full((4, 8, 8), -1, np.int16), {}, r"label value\(s\) -1 in frame"),
    ],
)
def test_validate_and_save_refuse_bad_maps(tmp_path: Path, maps, kwargs, match) -> None:
    path = parsing_path(tmp_path / "v.mp4")
    with pytest.raises(SidecarError, match=match) as info:
        validate_parsing(maps, path, **kwargs)
    assert str(path) in str(info.value) and "save_parsing" in str(info.value)
    with pytest.raises(SidecarError, match=match):
        save_parsing(path, maps, **kwargs)
    assert not path.exists()  # refused before anything was written
    # The same array written raw is refused by the loader too.
    np.save(path, maps)
    with pytest.raises(SidecarError, match=match):
        load_parsing(path, **kwargs)


def test_out_of_range_labels_name_the_video_frames(tmp_path: Path) -> None:
    maps = np.zeros((6, 4, 4), np.uint8)
    maps[2, 1, 1] = NUM + 3
    maps[5, 0, 0] = 200
    with pytest.raises(SidecarError, match=rf"label value\(s\) {NUM + 3}, 200 in frame\(s\) 2, 5 are not defined"):
        validate_parsing(maps, tmp_path / "x")
    # A selection of rows reports the video's frame numbers.
    with pytest.raises(SidecarError, match=rf"value\(s\) {NUM + 3} in frame\(s\) 11 "):
        validate_parsing(maps[[0, 2]], tmp_path / "x", frame_indices=[10, 11])
    validate_parsing(maps, tmp_path / "x", check_values=False)  # header-only checks pass


def test_missing_and_unreadable_files_name_the_file_and_fix(tmp_path: Path) -> None:
    path = parsing_path(tmp_path / "v.mp4")
    with pytest.raises(SidecarError) as info:
        load_parsing(path)
    assert str(path) in str(info.value) and "parsing sidecar not found" in str(info.value)
    assert "save_parsing" in str(info.value)
    path.write_bytes(b"not a npy file")
    with pytest.raises(SidecarError, match="not a readable .npy parsing file") as info:
        open_parsing(path)
    assert str(path) in str(info.value)
    assert "animzoo data synth" in sidecar_fix("parsing") and "save_parsing" in sidecar_fix("parsing")


# ----------------------------------------------------------------------------- resize


def test_nearest_resize_follows_the_align_corners_grid() -> None:
    # By hand: output j of n_out samples input round(j * (n_in - 1) / (n_out - 1)), ties up.
    row = torch.arange(5)[None, None]  # 1 x 1 x 5: label = column
    assert resize_labels(row, (1, 3))[0, 0].tolist() == [0, 2, 4]
    assert resize_labels(torch.arange(4)[None, None], (1, 3))[0, 0].tolist() == [0, 2, 3]  # 1.5 -> 2
    assert resize_labels(torch.arange(3)[None, None], (1, 5))[0, 0].tolist() == [0, 1, 1, 2, 2]
    assert resize_labels(torch.arange(7)[None, None], (1, 1))[0, 0].tolist() == [0]

    rng = np.random.default_rng(0)
    maps = torch.from_numpy(rng.integers(0, NUM, size=(3, 32, 32)))
    for h, w in ((12, 12), (20, 7), (64, 50)):
        out = resize_labels(maps, (h, w))
        assert out.shape == (3, h, w) and out.dtype == maps.dtype
        expected = maps[:, _by_hand(32, h)][:, :, _by_hand(32, w)]
        assert torch.equal(out, expected)
    assert torch.equal(resize_labels(maps, (32, 32)), maps)


# ----------------------------------------------------------------------------- batches


def test_pairs_carry_the_maps_of_their_frames(parsed) -> None:
    data, maps = parsed
    ds = VideoFolder(data.root, "train", requires={"parsing"}, num_repeats=2)
    samples = [ds[i] for i in range(len(ds))]
    batch = collate_pairs(samples)
    b = len(samples)
    for key in ("source_parsing", "driving_parsing"):
        assert batch[key].shape == (b, SIZE, SIZE) and batch[key].dtype == torch.long
    for row, sample in enumerate(samples):
        table = maps[f"train/{sample['video_id']}"]
        assert np.array_equal(batch["source_parsing"][row].numpy(), table[sample["source_frame_index"]])
        assert np.array_equal(batch["driving_parsing"][row].numpy(), table[sample["frame_index"]])
    assert not {k for k in samples[0] if "landmarks" in k or "mesh" in k}  # only what is required


def test_chunks_carry_one_map_per_driving_frame(parsed, helpers) -> None:
    data, maps = parsed
    ds = VideoFolder(data.root, "test", mode="reconstruction", chunk_size=5, requires={"parsing"})
    chunk = ds[0]
    assert chunk["driving_parsing"].shape == (5, SIZE, SIZE) and chunk["source_parsing"].shape == (SIZE, SIZE)
    batch = collate_chunks([ds[i] for i in range(len(ds))])
    n = sum(helpers.TEST_VIDEOS.values())
    assert batch["driving_parsing"].shape == (n, SIZE, SIZE)
    assert batch["source_parsing"].shape == (n, SIZE, SIZE) and batch["source_parsing"].dtype == torch.long
    for row, (video_id, t) in enumerate(zip(batch["video_id"], batch["frame_index"].tolist())):
        table = maps[f"test/{video_id}"]
        assert np.array_equal(batch["driving_parsing"][row].numpy(), table[t])
        assert np.array_equal(batch["source_parsing"][row].numpy(), table[0])
    # Cross pairs: the source map of the source video, driving maps of the driving video.
    cross = VideoFolder(data.root, mode="cross", requires={"parsing"})[0]  # dave -> erin
    assert np.array_equal(cross["source_parsing"].numpy(), maps["test/dave#1.mp4"][0])
    assert np.array_equal(cross["driving_parsing"].numpy(), maps["test/erin#1"])


def test_image_size_resizes_maps_by_nearest_neighbour(parsed) -> None:
    data, maps = parsed
    full = VideoFolder(data.root, "train", requires={"parsing"})[2]
    small = VideoFolder(data.root, "train", requires={"parsing"}, image_size=12)[2]
    assert small["source"].shape == (3, 12, 12) and small["driving_parsing"].shape == (12, 12)
    assert small["frame_index"] == full["frame_index"]  # the same pair of frames
    table = maps[f"train/{small['video_id']}"][small["frame_index"]]
    assert np.array_equal(full["driving_parsing"].numpy(), table)
    index = _by_hand(SIZE, 12)
    assert index[:4] == [0, 3, 6, 8]  # 0, 31/11, 62/11, 93/11 rounded
    assert np.array_equal(small["driving_parsing"].numpy(), table[index][:, index])
    assert set(small["driving_parsing"].unique().tolist()) <= set(range(NUM))  # never mixed


def test_bad_sidecar_is_refused_when_its_rows_are_read(parsed) -> None:
    data, maps = parsed
    video = data.root / "train" / "alice#2"
    path = parsing_path(video)
    np.save(path, np.zeros((6, SIZE, SIZE + 2), np.uint8))  # the frames are 32 x 32
    ds = VideoFolder(data.root, "train", requires={"parsing"})
    index = [s.video_id for s in ds.videos].index("alice#2")
    with pytest.raises(SidecarError, match=r"32x34 .* frames are 32x32") as info:
        ds[index]
    assert str(path) in str(info.value)
    # Values are validated on the rows read only: a bad label in frame 3 breaks the chunk that
    # reads frame 3 (naming the video's frame), not the others.
    bad = maps["train/alice#2"].copy()
    bad[3, 0, 0] = 77
    np.save(path, bad)
    chunks = VideoFolder(data.root, "train", mode="reconstruction", chunk_size=2, requires={"parsing"})
    mine = [i for i, (video, _, _) in enumerate(chunks.chunks) if chunks.videos[video].video_id == "alice#2"]
    assert [chunks.chunks[i][1:] for i in mine] == [(0, 2), (2, 4), (4, 6)]
    assert chunks[mine[0]]["driving_parsing"].shape == (2, SIZE, SIZE)
    assert np.array_equal(chunks[mine[2]]["driving_parsing"].numpy(), bad[4:6])
    with pytest.raises(SidecarError, match=r"label value\(s\) 77 in frame\(s\) 3 ") as info:
        chunks[mine[1]]
    assert str(path) in str(info.value)


def test_missing_parsing_fails_at_setup_with_the_file_and_the_fix(dataset_copy) -> None:
    data = dataset_copy
    _add_parsing(data)
    missing = parsing_path(data.root / "train" / "carol#1")
    missing.unlink()
    dm = AnimationDataModule(root=str(data.root), requires=["parsing"])
    with pytest.raises(SidecarError) as info:
        dm.setup("fit")
    msg = str(info.value)
    assert "parsing" in msg and str(missing) in msg and "save_parsing" in msg
    with pytest.raises(ValueError, match="'parsing'"):
        AnimationDataModule(root=str(data.root), requires=["segmentation"])


def test_datamodule_batches_and_augmentation_flip_the_maps(parsed) -> None:
    data, _ = parsed
    dm = AnimationDataModule(
        root=str(data.root), batch_size=2, requires=["parsing"],
        augment={"flip_prob": 1.0, "brightness": 0.0, "contrast": 0.0, "saturation": 0.0, "hue": 0.0},
    )
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert batch["source_parsing"].shape == (2, SIZE, SIZE) and batch["driving_parsing"].dtype == torch.long
    out = dm.augment_batch(batch, step=0)
    table = torch.tensor(PARSING_FLIP)
    for key in ("source_parsing", "driving_parsing"):
        assert torch.equal(out[key], table[batch[key].flip(-1)])
    assert torch.equal(out["source"], batch["source"].flip(-1))
    val = next(iter(dm.val_dataloader()))
    assert val["driving_parsing"].dim() == 3 and val["driving_parsing"].shape[0] == val["driving"].shape[0]


# ----------------------------------------------------------------------------- flips


def test_flip_mirrors_the_map_and_swaps_left_and_right() -> None:
    h, w = 6, 9
    maps = torch.full((2, h, w), LABEL["skin"], dtype=torch.long)
    maps[:, 2, 6] = LABEL["left_eye"]  # the subject's left eye: image right
    maps[:, 2, 1] = LABEL["right_brow"]
    maps[:, 4, 4] = LABEL["mouth"]
    maps[:, 0, 0] = LABEL["background"]
    batch = {
        "source": torch.rand(2, 3, h, w), "driving": torch.rand(2, 3, h, w),
        "source_parsing": maps, "driving_parsing": maps.clone(),
    }
    out = flip_batch(batch, torch.tensor([True, False]))
    flipped = out["source_parsing"][0]
    assert flipped[2, w - 1 - 6] == LABEL["right_eye"]  # a left-eye pixel becomes a right eye ...
    assert flipped[2, w - 1 - 1] == LABEL["left_brow"]  # ... at the mirrored column
    assert flipped[4, w - 1 - 4] == LABEL["mouth"] and flipped[0, w - 1] == LABEL["background"]
    assert (flipped == LABEL["left_eye"]).sum() == 0
    assert torch.equal(out["driving_parsing"][0], flipped)
    assert torch.equal(out["source_parsing"][1], maps[1])  # unflipped sample untouched
    assert torch.equal(batch["source_parsing"], maps)  # input untouched
    twice = flip_batch(out, torch.tensor([True, False]))
    assert torch.equal(twice["source_parsing"], maps)


def test_time_flip_swaps_source_and_driving_maps() -> None:
    batch = {
        "source": torch.zeros(2, 3, 4, 4), "driving": torch.ones(2, 3, 4, 4),
        "source_parsing": torch.zeros(2, 4, 4, dtype=torch.long),
        "driving_parsing": torch.full((2, 4, 4), LABEL["mouth"], dtype=torch.long),
    }
    cfg = AugmentConfig(flip_prob=0.0, brightness=0, contrast=0, saturation=0, hue=0, time_flip_prob=1.0)
    out = PairAugmentation(cfg)(batch, make_generator(0))
    assert out["source"].eq(1).all() and out["source_parsing"].eq(LABEL["mouth"]).all()
    assert out["driving_parsing"].eq(0).all()


# ----------------------------------------------------------------------------- inspection


def test_inspect_counts_parsing_sidecars_and_reports_broken_ones(parsed, helpers) -> None:
    data, maps = parsed
    report = inspect_dataset(data.root, landmark_count=68)
    assert report.ok, report.format()
    assert report.splits["train"].parsing == len(helpers.TRAIN_VIDEOS)
    assert report.splits["test"].parsing == len(helpers.TEST_VIDEOS)
    assert "4 parsing sidecars" in report.format()

    train = data.root / "train"
    wrong_t = parsing_path(train / "alice#2")
    np.save(wrong_t, maps["train/alice#2"][:2])
    wrong_size = parsing_path(train / "carol#1")
    np.save(wrong_size, np.zeros((5, 16, 16), np.uint8))
    floats = parsing_path(train / "bob#1.mp4")
    np.save(floats, maps["train/bob#1.mp4"].astype(np.float32))
    parsing_path(data.root / "test" / "erin#1").unlink()  # 1 of 2 test videos lacks one
    orphan = train / "gone.mp4.parsing.npy"
    orphan.write_bytes(wrong_t.read_bytes())

    report = inspect_dataset(data.root)
    by_path: dict[Path, list[str]] = {}
    for problem in report.problems:
        by_path.setdefault(problem.path, []).append(problem.message)
        assert problem.fix
    assert any("2 frames" in m and "6 frames" in m for m in by_path[wrong_t])
    assert any("16x16" in m and "32x32" in m for m in by_path[wrong_size])
    assert any("float32" in m for m in by_path[floats])
    lacking = parsing_path(data.root / "test" / "erin#1")
    assert any("lack a parsing sidecar" in m for m in by_path[lacking])
    assert any("without a video" in m for m in by_path[orphan])
    assert report.splits["train"].parsing == 4
