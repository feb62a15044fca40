"""AnimationDataModule (prepare_data / setup / loaders without a Trainer) and the device-side
augmentation (flip with landmark / mesh remapping, colour jitter)."""

from __future__ import annotations

import warnings
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn

from animzoo.data.annotations import landmarks_path, mesh_path, normalized_to_pixel
from animzoo.data.datamodule import AnimationDataModule, synthetic_cache_dir
from animzoo.data.transforms import (
    AugmentConfig,
    PairAugmentation,
    flip_batch,
    jitter_batch,
    landmark_flip_permutation,
    make_generator,
)
from animzoo.data.videos import EpochSampler
from animzoo.errors import SidecarError

OFF = {"flip_prob": 0.0, "brightness": 0.0, "contrast": 0.0, "saturation": 0.0, "hue": 0.0}


class NeedsMesh(nn.Module):
    requires = frozenset({"mesh"})


def _attach(dm: AnimationDataModule, module: nn.Module | None = None, **trainer: object) -> None:
    # The attributes of a lightning.Trainer that the datamodule reads.
    defaults = {"global_rank": 0, "world_size": 1, "training": False, "global_step": 0}
    fake = SimpleNamespace(lightning_module=module, **{**defaults, **trainer})
    dm.trainer = fake  # type: ignore[assignment]


# ----------------------------------------------------------------------------- datamodule


def test_fit_batches_follow_the_contract(tiny_dataset, helpers) -> None:
    dm = AnimationDataModule(
        root=str(tiny_dataset.root), batch_size=2, requires=["landmarks", "mesh"], num_repeats=2
    )
    dm.prepare_data()
    dm.setup("fit")
    loader = dm.train_dataloader()
    assert isinstance(loader.sampler, EpochSampler) and loader.drop_last
    batches = list(loader)
    assert len(batches) == 4  # 4 videos x 2 repeats / batch 2
    batch = batches[0]
    size = helpers.SIZE
    assert batch["source"].shape == batch["driving"].shape == (2, 3, size, size)
    assert batch["driving_landmarks"].shape == (2, 68, 2) and batch["source_mesh"].shape == (2, 6, 3)
    assert batch["mesh_faces"].shape == (4, 3)
    assert (batch["source_frame_index"] < batch["frame_index"]).all()
    val = list(dm.val_dataloader())
    frames = sum(b["driving"].shape[0] for b in val)
    assert frames == sum(helpers.TEST_VIDEOS.values())
    assert all(b["mode"] == "reconstruction" for b in val)


def test_frame_gaps_reach_the_training_pairs_only(tiny_dataset) -> None:
    dm = AnimationDataModule(root=str(tiny_dataset.root), batch_size=2, num_repeats=4, min_frame_gap=2)
    dm.prepare_data()
    dm.setup("fit")
    gaps = torch.cat([b["frame_index"] - b["source_frame_index"] for b in dm.train_dataloader()])
    assert (gaps >= 2).all()
    # Evaluation keeps its protocol (frame 0 drives from itself on).
    assert min(int(b["frame_index"].min()) for b in dm.val_dataloader()) == 0
    with pytest.raises(ValueError, match=r"min_frame_gap \(3\) must not exceed max_frame_gap \(2\)"):
        AnimationDataModule(root=str(tiny_dataset.root), min_frame_gap=3, max_frame_gap=2)
    # A curriculum: the minimum holds for the first epoch only (the sampler carries the epoch).
    dm = AnimationDataModule(root=str(tiny_dataset.root), batch_size=2, num_repeats=4, min_frame_gap=2,
                             min_frame_gap_epochs=1)
    dm.prepare_data()
    dm.setup("fit")
    loader = dm.train_dataloader()
    for epoch, near_pairs in ((0, False), (1, True)):
        loader.sampler.set_epoch(epoch)
        gaps = torch.cat([b["frame_index"] - b["source_frame_index"] for b in loader])
        assert bool((gaps < 2).any()) is near_pairs
    with pytest.raises(ValueError, match="min_frame_gap is not set"):
        AnimationDataModule(root=str(tiny_dataset.root), min_frame_gap_epochs=2)


def test_test_loaders_add_cross_pairs_when_pairs_csv_exists(tiny_dataset) -> None:
    dm = AnimationDataModule(root=str(tiny_dataset.root), chunk_size=4, test_batch_size=2)
    dm.setup("test")
    recon, cross = dm.test_dataloader()
    assert next(iter(recon))["has_ground_truth"] is True
    first = next(iter(cross))
    assert first["mode"] == "cross" and first["has_ground_truth"] is False
    assert first["driving"].shape[0] == 7  # erin: chunks of 4 + 3 frames
    no_cross = AnimationDataModule(root=str(tiny_dataset.root), cross_identity=False)
    no_cross.setup("test")
    assert isinstance(no_cross.test_dataloader(), torch.utils.data.DataLoader)
    no_cross.setup("predict")
    assert next(iter(no_cross.predict_dataloader()))["mode"] == "reconstruction"


def test_setup_names_the_method_the_sidecar_and_the_fix(dataset_copy) -> None:
    missing = mesh_path(dataset_copy.root / "train" / "carol#1")
    missing.unlink()
    dm = AnimationDataModule(root=str(dataset_copy.root))
    _attach(dm, NeedsMesh())
    with pytest.raises(SidecarError) as info:
        dm.setup("fit")
    msg = str(info.value)
    assert "NeedsMesh requires mesh" in msg and str(missing) in msg and "external fitter" in msg
    assert dm.requires == {"mesh"}
    # Landmarks from the init arg: the fix is the annotate command.
    landmarks_path(dataset_copy.root / "train" / "bob#1.mp4").unlink()
    dm = AnimationDataModule(root=str(dataset_copy.root), requires=["landmarks"])
    with pytest.raises(SidecarError, match="animzoo data annotate --landmarks"):
        dm.setup("fit")


def test_train_sampler_uses_trainer_rank_and_world(tiny_dataset) -> None:
    shards = []
    for rank in range(2):
        dm = AnimationDataModule(root=str(tiny_dataset.root), batch_size=1, num_repeats=3, seed=5)
        _attach(dm, global_rank=rank, world_size=2)
        dm.setup("fit")
        loader = dm.train_dataloader()
        assert (loader.sampler.rank, loader.sampler.num_replicas) == (rank, 2)
        shards.append([(b["video_id"][0], int(b["frame_index"][0])) for b in loader])
    assert len(shards[0]) == len(shards[1]) == 6
    keys = lambda shard: {vid for vid, _ in shard}  # noqa: E731
    assert keys(shards[0]) | keys(shards[1]) == {"alice#1.mp4", "alice#2", "bob#1.mp4", "carol#1"}


def test_workers_give_the_same_batches(tiny_dataset) -> None:
    def run(workers: int) -> list[tuple]:
        dm = AnimationDataModule(
            root=str(tiny_dataset.root), batch_size=2, num_workers=workers, num_repeats=2
        )
        dm.setup("fit")
        loader = dm.train_dataloader()
        assert loader.persistent_workers == (workers > 0)
        loader.sampler.set_epoch(2)
        batches = [(tuple(b["video_id"]), b["frame_index"].tolist()) for b in loader]
        if workers:
            # Stop the persistent workers now, as Lightning's teardown does; left to the
            # garbage collector they were joined later, inside another test, with timeouts.
            loader._iterator._shutdown_workers()
        return batches

    assert run(0) == run(2)


def test_augmentation_only_in_training_and_reproducible(tiny_dataset) -> None:
    dm = AnimationDataModule(root=str(tiny_dataset.root), batch_size=4, requires=["landmarks"])
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    _attach(dm, training=False)
    assert dm.on_after_batch_transfer(batch, 0) is batch  # validation / test: untouched
    # Lightning's counter lags by one during the transfer: batch 8 sees total_batch_idx 7.
    _attach(dm, training=True, fit_loop=SimpleNamespace(total_batch_idx=7))
    a = dm.on_after_batch_transfer(dict(batch), 0)
    b = dm.augment_batch(dict(batch), step=8)
    c = dm.augment_batch(dict(batch), step=9)
    assert torch.equal(a["source"], b["source"])
    assert torch.equal(a["driving_landmarks"], b["driving_landmarks"])
    assert not torch.equal(a["source"], c["source"])
    assert not torch.equal(a["source"], batch["source"])
    off = AnimationDataModule(root=str(tiny_dataset.root), augment=OFF)
    off.setup("fit")
    assert off.augmentation is None


def test_flip_disabled_with_a_warning_for_unknown_layouts(dataset_copy) -> None:
    path = landmarks_path(dataset_copy.root / "train" / "alice#1.mp4")
    np.save(path, np.zeros((8, 5, 2), np.float32))
    dm = AnimationDataModule(root=str(dataset_copy.root), requires=["landmarks"])
    with pytest.warns(UserWarning, match="no left/right permutation is known for 5"):
        dm.setup("fit")
    assert dm.augmentation is not None and not dm.augmentation.flip
    with np.load(mesh_path(dataset_copy.root / "train" / "alice#1.mp4")) as npz:
        arrays = {k: npz[k] for k in npz.files if k != "flip_index"}
    np.savez(mesh_path(dataset_copy.root / "train" / "alice#1.mp4"), **arrays)
    dm = AnimationDataModule(root=str(dataset_copy.root), requires=["mesh"], augment={"flip_prob": 1.0})
    with pytest.warns(UserWarning, match="has no flip_index"):
        dm.setup("fit")
    assert not dm.augmentation.flip
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        dm = AnimationDataModule(
            root=str(dataset_copy.root), requires=["landmarks"], augment={"flip_prob": 0}
        )
        dm.setup("fit")
    with pytest.raises(ValueError, match="unknown augment key"):
        AnimationDataModule(root=str(dataset_copy.root), augment={"flip": 0.5})


def test_synthetic_root_is_generated_once(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("ANIMZOO_CACHE_DIR", str(tmp_path / "cache"))
    args = {"videos": 6, "frames": 4, "size": 32, "clips_per_identity": 2}
    dm = AnimationDataModule(synthetic=args, batch_size=2, requires=["landmarks", "mesh"])
    assert dm.root == synthetic_cache_dir({"seed": 0, **args})
    assert dm.root.is_relative_to(tmp_path / "cache")
    dm.prepare_data()
    assert (dm.root / "train").is_dir() and (dm.root / "test").is_dir()
    stamp = (dm.root / "train").stat().st_mtime_ns
    dm.prepare_data()  # already there: not regenerated
    assert (dm.root / "train").stat().st_mtime_ns == stamp
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert batch["source"].shape == (2, 3, 32, 32)
    assert batch["source_landmarks"].shape[1:] == (70, 2) and batch["mesh_faces"].shape[1] == 3
    # An explicit empty root is filled in place.
    root = tmp_path / "mine"
    root.mkdir()
    AnimationDataModule(root=str(root), synthetic=args).prepare_data()
    assert (root / "train").is_dir() and not list(tmp_path.glob(".mine.tmp-*"))


# ----------------------------------------------------------------------------- transforms


def _dots_image(points_pix: np.ndarray, size: int) -> torch.Tensor:
    """A black 3 x size x size image with a dot of a distinct colour at each point."""
    image = torch.zeros(3, size, size)
    for i, (x, y) in enumerate(np.round(points_pix).astype(int)):
        image[:, y, x] = torch.tensor([(i + 1) / len(points_pix), 1.0, 0.5])
    return image


def _colour_at(image: torch.Tensor, points: torch.Tensor, size: int) -> torch.Tensor:
    pix = np.round(normalized_to_pixel(points.numpy(), (size, size))).astype(int)
    return torch.stack([image[:, y, x] for x, y in pix])


@pytest.mark.parametrize("count", [68, 70])
def test_flip_keeps_landmarks_on_their_image_features(count: int) -> None:
    permutation = landmark_flip_permutation(count)
    assert permutation is not None and len(permutation) == count
    size = 41
    rng = np.random.default_rng(count)
    # Distinct integer pixels, so each dot is its own feature.
    flat = rng.choice(size * size, size=count, replace=False)
    pix = np.stack([flat % size, flat // size], axis=-1).astype(np.float32)
    points = torch.from_numpy(2 * pix / (size - 1) - 1)
    image = _dots_image(pix, size)
    batch = {
        "source": image[None], "driving": image[None].clone(),
        "source_landmarks": points[None], "driving_landmarks": points[None].clone(),
    }
    flipped = flip_batch(batch, torch.tensor([True]), landmark_permutation=permutation)
    for key in ("source", "driving"):
        lm_key = f"{key}_landmarks"
        # Landmark i of the flipped sample sits on the dot of landmark perm[i] of the original.
        got = _colour_at(flipped[key][0], flipped[lm_key][0], size)
        want = _colour_at(image, points, size)[list(permutation)]
        assert torch.equal(got, want)
        assert not torch.equal(flipped[lm_key], batch[lm_key])
    twice = flip_batch(flipped, torch.tensor([True]), landmark_permutation=permutation)
    for key, value in batch.items():
        assert torch.equal(twice[key], value)


def _area2(v: torch.Tensor, faces: torch.Tensor) -> torch.Tensor:
    p0, p1, p2 = v[faces[:, 0]], v[faces[:, 1]], v[faces[:, 2]]
    return (p1[:, 0] - p0[:, 0]) * (p2[:, 1] - p0[:, 1]) - (p2[:, 0] - p0[:, 0]) * (p1[:, 1] - p0[:, 1])


def test_mesh_flip_remaps_vertices_and_keeps_winding() -> None:
    left = torch.tensor([[-0.8, 0.1, 0.2], [-0.2, -0.3, 0.1], [-0.3, 0.5, 0.0]])
    right = left * torch.tensor([-1.0, 1.0, 1.0])
    verts = torch.cat([left, right]) + torch.tensor([0.1, 0.05, 0.0])  # an off-centre pose
    faces = torch.tensor([[0, 2, 1], [3, 4, 5]])
    flip_index = torch.tensor([3, 4, 5, 0, 1, 2])
    assert (_area2(verts, faces) < 0).all()  # both front-facing
    batch = {
        "source": torch.rand(2, 3, 8, 8), "driving": torch.rand(2, 3, 8, 8),
        "source_mesh": verts.expand(2, -1, -1), "driving_mesh": verts.expand(2, -1, -1),
        "mesh_faces": faces, "mesh_flip_index": flip_index,
    }
    mask = torch.tensor([True, False])
    out = flip_batch(batch, mask)
    assert torch.equal(out["source"][1], batch["source"][1])  # unflipped sample untouched
    assert torch.equal(out["source"][0], batch["source"][0].flip(-1))
    flipped = out["source_mesh"][0]
    assert torch.allclose(flipped[3], verts[0] * torch.tensor([-1.0, 1.0, 1.0]))
    assert (_area2(flipped, faces) < 0).all()  # still front-facing after the flip
    twice = flip_batch(out, mask)
    assert torch.equal(twice["source_mesh"], batch["source_mesh"])
    with pytest.raises(ValueError, match="flip_index"):
        flip_batch({k: v for k, v in batch.items() if k != "mesh_flip_index"}, mask)


def test_colour_jitter_is_shared_by_source_and_driving() -> None:
    image = torch.rand(3, 3, 16, 16)
    batch = {"source": image, "driving": image.clone()}
    config = AugmentConfig(flip_prob=0.0, brightness=0.4, contrast=0.4, saturation=0.4, hue=0.1)
    aug = PairAugmentation(config)
    out = aug(batch, make_generator(0, 1))
    assert torch.equal(out["source"], out["driving"])
    assert not torch.allclose(out["source"], image, atol=1e-3)
    assert 0.0 <= out["source"].min() and out["source"].max() <= 1.0
    again = aug({"source": image, "driving": image.clone()}, make_generator(0, 1))
    assert torch.equal(again["source"], out["source"])
    ones = torch.ones(3)
    same = jitter_batch(batch, brightness=ones, contrast=ones, saturation=ones, hue=torch.zeros(3))
    assert torch.allclose(same["source"], image, atol=1e-5)


def test_time_flip_swaps_source_and_driving() -> None:
    batch = {
        "source": torch.zeros(2, 3, 4, 4), "driving": torch.ones(2, 3, 4, 4),
        "source_frame_index": torch.tensor([0, 1]), "frame_index": torch.tensor([5, 6]),
    }
    cfg = AugmentConfig(flip_prob=0.0, brightness=0, contrast=0, saturation=0, hue=0, time_flip_prob=1.0)
    out = PairAugmentation(cfg)(batch, make_generator(0))
    assert out["source"].eq(1).all() and out["frame_index"].tolist() == [0, 1]
