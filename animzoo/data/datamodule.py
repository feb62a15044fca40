"""The one datamodule of animzoo: real video folders or the synthetic heads, for every method."""

from __future__ import annotations

import functools
import hashlib
import json
import operator
import os
import random
import shutil
import warnings
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
from torch.utils.data import DataLoader

from animzoo.data.annotations import landmarks_path, mesh_path, open_landmarks
from animzoo.data.transforms import (
    AugmentConfig,
    PairAugmentation,
    landmark_flip_permutation,
    make_generator,
)
from animzoo.data.videos import (
    PAIRS_FILE,
    SIDECAR_KINDS,
    EpochSampler,
    VideoFolder,
    check_frame_gaps,
    collate_chunks,
    collate_pairs,
)
from animzoo.errors import DatasetError, SidecarError

__all__ = ["AnimationDataModule", "synthetic_cache_dir"]


def synthetic_cache_dir(synthetic: dict[str, Any]) -> Path:
    """Where a synthetic dataset with these arguments is cached.

    ``$ANIMZOO_CACHE_DIR/synthetic/<hash>`` or ``~/.cache/animzoo/synthetic/<hash>``; the hash
    covers the arguments and the generator version, so different settings never share a folder
    and a newer generator (e.g. one that writes more sidecars) never reuses an older cache.
    """
    from animzoo.data.synthetic import GENERATOR_VERSION  # only for synthetic data

    base = os.environ.get("ANIMZOO_CACHE_DIR")
    cache = Path(base) if base else Path.home() / ".cache" / "animzoo"
    key = json.dumps([GENERATOR_VERSION, synthetic], sort_keys=True, default=str)
    digest = hashlib.sha256(key.encode()).hexdigest()
    return cache / "synthetic" / digest[:16]


def _seed_worker(worker_id: int, seed: int, rank: int) -> None:
    """Seed a worker's global RNGs from (seed, rank, worker); the dataset itself needs none
    (its randomness comes from the item index) but user code in a worker may."""
    state = np.random.SeedSequence([seed, rank, worker_id]).generate_state(2)
    random.seed(int(state[0]))
    np.random.seed(int(state[0]))
    torch.manual_seed((int(state[0]) << 31) ^ int(state[1]))


def _has_pair_rows(path: Path) -> bool:
    """Whether a pairs.csv exists with at least one row below its header (small datasets,
    e.g. synthetic ones with a single test identity, may write a header only)."""
    if not path.is_file():
        return False
    with open(path, encoding="utf-8") as handle:
        return sum(1 for line in handle if line.strip()) > 1


def _is_empty(folder: Path) -> bool:
    return not folder.exists() or (folder.is_dir() and not any(folder.iterdir()))


class AnimationDataModule(pl.LightningDataModule):
    """Video folders (first-order-model layout) or synthetic talking heads, as batches.

    fit: training pairs (two frames of one video, earlier = source) through
    :class:`~animzoo.data.videos.EpochSampler`; validation = reconstruction of the test videos
    (source = frame 0, every frame driving), served as chunks flattened into frames.
    test: reconstruction, plus cross-identity pairs from ``root/pairs.csv`` when it exists and
    ``cross_identity`` (then ``test_dataloader`` returns ``[reconstruction, cross]``).
    predict: reconstruction.

    Args:
        root: dataset root (``train/`` + ``test/``, or videos directly in it: 80/20 split).
        synthetic: arguments of :func:`animzoo.data.synthetic.synthesize` (``videos``,
            ``frames``, ``size``, optional ``seed`` (default 0), ...); used when ``root`` is
            missing or empty: the data is generated there (or in the cache when ``root`` is
            None) by ``prepare_data``.
        image_size: resize frames to ``image_size x image_size`` (antialiased).
        frame_shape: ``[H, W]`` of one frame of ``.png``/``.jpg`` strips.
        batch_size: training pairs per batch.
        test_batch_size: chunks per validation / test / predict batch.
        chunk_size: frames per chunk of a test video.
        num_workers: data loader workers (persistent when > 0).
        num_repeats: training epoch = ``num_repeats`` passes over the videos (or identities).
        id_sampling: iterate identities (``<identity>#...`` names), one clip each per item.
        requires: sidecars to load (``landmarks``, ``mesh``, ``parsing``: face-parsing maps,
            served as ``source_parsing`` / ``driving_parsing`` label maps resized by nearest
            neighbour to ``image_size``); the attached method's ``requires`` is added at
            ``setup()``.

            The attached method may also have a ``mesh_vertex_count`` attribute (int or
            None): the vertex count of its head model; ``setup()`` then refuses every mesh
            sidecar of the split with another ``V`` (reading array headers only), naming the
            method, the file, both counts and the fix.
        landmark_count: expected landmarks per frame (checked when loading).
        seed: seed of data order, frame choice and augmentation.
        augment: :class:`~animzoo.data.transforms.AugmentConfig` keys (``flip_prob``,
            ``brightness``, ``contrast``, ``saturation``, ``hue``, ``time_flip_prob``).
        cross_identity: also test on ``pairs.csv``.
        max_frame_gap: training pairs are 1 to ``max_frame_gap`` frames apart (None: any two
            frames of the video, as first-order-model).
        min_frame_gap: training pairs are at least ``min_frame_gap`` frames apart (clamped to
            the video's length; with either gap set, the gap is drawn uniformly).
        min_frame_gap_epochs: ``min_frame_gap`` holds for this many epochs, then training pairs
            are drawn as without it (None: always). Distant pairs first make a method that must
            learn motion stop redrawing the source early; all pairs after sharpen the redraw.
    """

    def __init__(
        self,
        root: str | None = None,
        synthetic: dict[str, Any] | None = None,
        image_size: int | None = None,
        frame_shape: list[int] | None = None,
        batch_size: int = 8,
        test_batch_size: int = 1,
        chunk_size: int = 32,
        num_workers: int = 0,
        num_repeats: int = 1,
        id_sampling: bool = False,
        requires: list[str] | None = None,
        landmark_count: int | None = None,
        seed: int = 0,
        augment: dict[str, float] | None = None,
        cross_identity: bool = True,
        max_frame_gap: int | None = None,
        min_frame_gap: int | None = None,
        min_frame_gap_epochs: int | None = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        if root is None and synthetic is None:
            raise ValueError(
                "AnimationDataModule needs root (a dataset folder) or synthetic (arguments of "
                "animzoo.data.synthetic.synthesize), e.g. synthetic: {videos: 40, frames: 32, size: 64}"
            )
        self.synthetic = None if synthetic is None else {"seed": 0, **synthetic}
        self.root = Path(root).expanduser() if root is not None else synthetic_cache_dir(self.synthetic or {})
        self.image_size = image_size
        self.frame_shape = None if frame_shape is None else tuple(int(s) for s in frame_shape)
        self.batch_size = batch_size
        self.test_batch_size = test_batch_size
        self.chunk_size = chunk_size
        self.num_workers = num_workers
        self.num_repeats = num_repeats
        self.id_sampling = id_sampling
        self.base_requires = frozenset(requires or ())
        unknown = self.base_requires - set(SIDECAR_KINDS)
        if unknown:
            raise ValueError(
                f"requires may hold {', '.join(repr(k) for k in SIDECAR_KINDS)}, got {sorted(unknown)}"
            )
        self.landmark_count = landmark_count
        self.seed = seed
        self.augment_config = AugmentConfig.from_dict(augment)
        self.cross_identity = cross_identity
        # Checked here too, so a bad recipe fails when the config is read, not at setup().
        self.min_frame_gap, self.max_frame_gap, self.min_frame_gap_epochs = check_frame_gaps(
            min_frame_gap, max_frame_gap, min_frame_gap_epochs
        )
        self.requires: frozenset[str] = self.base_requires
        self.mesh_vertex_count: int | None = None
        self.augmentation: PairAugmentation | None = None
        self.train_set: VideoFolder | None = None
        self.val_set: VideoFolder | None = None
        self.test_set: VideoFolder | None = None
        self.cross_set: VideoFolder | None = None
        self.predict_set: VideoFolder | None = None

    # ------------------------------------------------------------------ preparation

    def prepare_data(self) -> None:
        """Generate the synthetic dataset when asked for and not on disk yet (rank 0 only)."""
        if self.synthetic is None or not _is_empty(self.root):
            return
        # Heavy (renderer): imported only when needed.
        from animzoo.data.synthetic import synthesize

        # Generate beside the target and rename: a killed run never leaves a half dataset
        # that a later run would take for a complete one.
        self.root.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.root.parent / f".{self.root.name}.tmp-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        try:
            synthesize(tmp, **self.synthetic)
            if self.root.exists():
                self.root.rmdir()  # empty (checked above)
            os.replace(tmp, self.root)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    def _method_name(self) -> str | None:
        module = getattr(self.trainer, "lightning_module", None) if self.trainer is not None else None
        return type(module).__name__ if module is not None else None

    def _resolve_requires(self) -> frozenset[str]:
        requires = set(self.base_requires)
        if self.trainer is not None:
            module = getattr(self.trainer, "lightning_module", None)
            requires |= set(getattr(module, "requires", ()) or ())
        unknown = requires - set(SIDECAR_KINDS)
        if unknown:
            raise ValueError(f"{self._method_name()}.requires holds unknown sidecars {sorted(unknown)}")
        return frozenset(requires)

    def _resolve_mesh_vertex_count(self) -> int | None:
        """The attached method's optional ``mesh_vertex_count`` (int or None)."""
        if self.trainer is None:
            return None
        module = getattr(self.trainer, "lightning_module", None)
        value = getattr(module, "mesh_vertex_count", None)
        if value is None:
            return None
        try:
            if isinstance(value, bool):
                raise TypeError
            count = operator.index(value)  # int, numpy / 0-d torch integers
        except TypeError:
            raise ValueError(
                f"{self._method_name()}.mesh_vertex_count must be an int or None, got {value!r}"
            ) from None
        if count < 1:
            raise ValueError(f"{self._method_name()}.mesh_vertex_count must be >= 1, got {count}")
        return int(count)

    def _dataset(self, split: str, mode: str) -> VideoFolder:
        if self.synthetic is not None and _is_empty(self.root):
            raise DatasetError(
                f"{self.root}: the synthetic dataset has not been generated; call prepare_data() "
                "first (Lightning does this before setup)"
            )
        method = self._method_name()
        try:
            return VideoFolder(
                self.root,
                split,  # type: ignore[arg-type]
                frame_shape=self.frame_shape,
                image_size=self.image_size,
                id_sampling=self.id_sampling,
                num_repeats=self.num_repeats if mode == "pairs" else 1,
                requires=self.requires,
                seed=self.seed,
                mode=mode,  # type: ignore[arg-type]
                chunk_size=self.chunk_size,
                landmark_count=self.landmark_count,
                required_by=method,
                max_frame_gap=self.max_frame_gap if mode == "pairs" else None,
                min_frame_gap=self.min_frame_gap if mode == "pairs" else None,
                min_frame_gap_epochs=self.min_frame_gap_epochs if mode == "pairs" else None,
                mesh_vertex_count=self.mesh_vertex_count,
            )
        except SidecarError as err:
            # Messages that name the method already start with it ("PWM requires mesh ...").
            if method is None or str(err).startswith((f"{method} ", f"{method}:")):
                raise
            raise SidecarError(f"{method}: {err}") from err

    def setup(self, stage: str | None = None) -> None:
        """Build the datasets of ``stage``; fail early on a bad layout or missing sidecars."""
        self.requires = self._resolve_requires()
        self.mesh_vertex_count = self._resolve_mesh_vertex_count()
        if stage in (None, "fit"):
            self.train_set = self._dataset("train", "pairs")
            self.augmentation = self._build_augmentation(self.train_set)
        if stage in (None, "fit", "validate"):
            self.val_set = self._dataset("test", "reconstruction")
        if stage in (None, "test"):
            self.test_set = self._dataset("test", "reconstruction")
            if self.cross_identity and _has_pair_rows(self.root / PAIRS_FILE):
                self.cross_set = self._dataset("test", "cross")
        if stage in (None, "predict"):
            self.predict_set = self._dataset("test", "reconstruction")

    def _build_augmentation(self, dataset: VideoFolder) -> PairAugmentation | None:
        config = self.augment_config
        flip = config.flip_prob > 0
        permutation = None
        first = dataset.videos[0].path
        if flip and "landmarks" in self.requires:
            count = self.landmark_count or int(open_landmarks(landmarks_path(first)).shape[1])
            permutation = landmark_flip_permutation(count)
            if permutation is None:
                warnings.warn(
                    f"horizontal flip disabled: no left/right permutation is known for {count} "
                    "landmarks (known: 68 iBUG, 70 = iBUG + pupils); set augment.flip_prob: 0 "
                    "to silence this",
                    stacklevel=2,
                )
                flip = False
        if flip and "mesh" in self.requires:
            with np.load(mesh_path(first)) as npz:
                has_flip = "flip_index" in npz.files
            if not has_flip:
                warnings.warn(
                    f"horizontal flip disabled: {mesh_path(first)} has no flip_index (the mirror "
                    "vertex of each vertex); add it with animzoo.data.annotations.save_mesh or "
                    "set augment.flip_prob: 0 to silence this",
                    stacklevel=2,
                )
                flip = False
        augmentation = PairAugmentation(config, landmark_permutation=permutation, flip=flip)
        return augmentation if augmentation.active else None

    # ------------------------------------------------------------------ loaders

    def _rank_world(self) -> tuple[int, int]:
        if self.trainer is None:
            return 0, 1
        return int(self.trainer.global_rank), int(self.trainer.world_size)

    def _loader(self, dataset: VideoFolder, **kwargs: Any) -> DataLoader:
        rank, _ = self._rank_world()
        generator = torch.Generator()
        generator.manual_seed(self.seed)
        return DataLoader(
            dataset,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            pin_memory=torch.cuda.is_available(),
            worker_init_fn=functools.partial(_seed_worker, seed=self.seed, rank=rank),
            generator=generator,
            **kwargs,
        )

    def _require(self, dataset: VideoFolder | None, stage: str) -> VideoFolder:
        if dataset is None:
            raise RuntimeError(f"call setup({stage!r}) before asking for its data loader")
        return dataset

    def train_dataloader(self) -> DataLoader:
        dataset = self._require(self.train_set, "fit")
        rank, world = self._rank_world()
        sampler = EpochSampler(dataset, num_replicas=world, rank=rank, shuffle=True, seed=self.seed)
        # Full batches only (batch statistics, GAN balance), unless the data is smaller than one.
        drop_last = len(sampler) >= self.batch_size
        return self._loader(
            dataset, batch_size=self.batch_size, sampler=sampler, drop_last=drop_last,
            collate_fn=collate_pairs,
        )

    def _chunk_loader(self, dataset: VideoFolder) -> DataLoader:
        return self._loader(
            dataset, batch_size=self.test_batch_size, shuffle=False, collate_fn=collate_chunks
        )

    def val_dataloader(self) -> DataLoader:
        return self._chunk_loader(self._require(self.val_set, "fit"))

    def test_dataloader(self) -> DataLoader | list[DataLoader]:
        loader = self._chunk_loader(self._require(self.test_set, "test"))
        if self.cross_set is None:
            return loader
        return [loader, self._chunk_loader(self.cross_set)]

    def predict_dataloader(self) -> DataLoader:
        return self._chunk_loader(self._require(self.predict_set, "predict"))

    # ------------------------------------------------------------------ augmentation

    def augment_batch(self, batch: dict[str, Any], step: int) -> dict[str, Any]:
        """Augment a training batch with the randomness of ``(seed, rank, step)``."""
        if self.augmentation is None:
            return batch
        rank, _ = self._rank_world()
        return self.augmentation(batch, make_generator(self.seed, rank, step))

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """Device-side augmentation of training batches only (never validation / test)."""
        trainer = self.trainer
        if trainer is None or not trainer.training or self.augmentation is None:
            return batch
        # The index of this batch across epochs (Lightning counts it as ready only after the
        # transfer, hence + 1); restored on resume, so augmentations replay identically.
        step = int(getattr(trainer.fit_loop, "total_batch_idx", trainer.global_step - 1)) + 1
        return self.augment_batch(batch, step)
