"""Video datasets in the first-order-model layout: training pairs, reconstruction chunks,
cross-identity pairs, an epoch-aware sampler, and a dataset inspector.

Layout of a dataset root::

    root/train/<video>   root/test/<video>    root/pairs.csv (optional: source,driving)
    <video> = a folder of frames | .mp4/.mov/.webm/.avi/.mkv | .gif | a horizontal .png/.jpg strip
    sidecars: <video>.landmarks.npy, <video>.mesh.npz, <video>.parsing.npy
              (see animzoo.data.annotations)

When neither ``train/`` nor ``test/`` exists but videos sit directly in ``root``, the videos are
split 80/20 by identity (the name before ``#``, i.e. by video name when there is no ``#``)
with a fixed ``split_seed`` (default 0, as first-order-model), independent of the training seed
so that changing the seed never moves test videos into training.
"""

from __future__ import annotations

import csv
import math
import os
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset, DistributedSampler

from animzoo import io as aio
from animzoo.data.annotations import (
    check_mesh_vertex_count,
    landmarks_path,
    load_landmarks,
    load_mesh,
    load_parsing,
    mesh_path,
    mesh_pixel_to_normalized,
    open_landmarks,
    open_parsing,
    parsing_path,
    pixel_to_normalized,
    sidecar_fix,
    sidecar_path,
    validate_landmarks,
    validate_parsing,
)
from animzoo.errors import AnimzooInputError, DatasetError, SidecarError, VideoReadError

__all__ = [
    "EpochSampler",
    "InspectionReport",
    "Problem",
    "SplitSummary",
    "VideoEntry",
    "VideoFolder",
    "collate_chunks",
    "collate_pairs",
    "identity_of",
    "inspect_dataset",
    "list_videos",
    "read_pairs_csv",
    "resize_labels",
    "split_videos",
]

Mode = Literal["pairs", "reconstruction", "cross"]
SIDECAR_KINDS = ("landmarks", "mesh", "parsing")
PAIRS_FILE = "pairs.csv"

# Batch keys that are the same for every sample and are kept once, not stacked.
SHARED_KEYS = frozenset({"mesh_faces", "mesh_flip_index", "mode", "has_ground_truth"})
# Keys of a chunk that hold one entry per driving frame; everything else is per chunk.
PER_FRAME_KEYS = frozenset(
    {"driving", "driving_landmarks", "driving_mesh", "driving_parsing", "frame_index"}
)
# Prefixes of the morphable-model parameter keys of cross batches (``<prefix><name>``): the
# driving ones hold one row per driving frame, the source ones one row per chunk.
SOURCE_PARAM_PREFIX = "source_mesh_param_"
DRIVING_PARAM_PREFIX = "driving_mesh_param_"


def _is_per_frame(key: str) -> bool:
    """Whether a chunk's entry ``key`` holds one entry per driving frame."""
    return key in PER_FRAME_KEYS or key.startswith(DRIVING_PARAM_PREFIX)


# --------------------------------------------------------------------------- listing


@dataclass(frozen=True)
class VideoEntry:
    """One video of a dataset.

    Attributes:
        path: the file or frame folder.
        video_id: its name inside the split (``id10001#abc#0001.mp4``), unique per split.
        identity: the text before the first ``#`` (the whole name without a video
            suffix when there is no ``#``); clips of one person share it.
    """

    path: Path
    video_id: str
    identity: str


def _video_kind(path: Path) -> str | None:
    """``"folder"``, ``"file"``, ``"gif"`` or ``"strip"`` for a video path, else ``None``."""
    if path.name.startswith("."):
        return None
    if path.is_dir():
        return "folder"
    suffix = path.suffix.lower()
    if suffix in aio.VIDEO_EXTENSIONS:
        return "file"
    if suffix == ".gif":
        return "gif"
    if suffix in aio.IMAGE_EXTENSIONS:
        return "strip"
    return None


def identity_of(video_id: str) -> str:
    """The identity of a video name: text before ``#``, else the name without its suffix."""
    if "#" in video_id:
        return video_id.split("#", 1)[0]
    suffix = Path(video_id).suffix.lower()
    if suffix in (*aio.VIDEO_EXTENSIONS, *aio.IMAGE_EXTENSIONS, ".gif"):
        return video_id[: -len(suffix)]
    return video_id


def _folder_has_frames(folder: Path) -> bool:
    # Stops at the first image: cheap even for folders of thousands of frames.
    with os.scandir(folder) as it:
        return any(
            e.name.lower().endswith(aio.IMAGE_EXTENSIONS) and not e.name.startswith(".") for e in it
        )


def list_videos(
    folder: str | os.PathLike[str],
    *,
    frame_shape: Sequence[int] | None = None,
    problems: list[Problem] | None = None,
) -> list[VideoEntry]:
    """The videos directly inside ``folder``, in natural order.

    Cheap checks only (no decoding): an empty frame folder, or an image strip without
    ``frame_shape``, raises :class:`DatasetError` naming the path, or, when ``problems`` is
    given, is appended there and skipped.
    """
    folder = Path(folder)
    entries: list[VideoEntry] = []
    for path in sorted(folder.iterdir(), key=lambda p: aio.natural_sort_key(p.name)):
        kind = _video_kind(path)
        if kind is None:
            continue
        error: Problem | None = None
        if kind == "folder" and not _folder_has_frames(path):
            error = Problem(
                path,
                "frame folder contains no images (.png/.jpg/.jpeg)",
                "fill it with frames named 0000000.png, 0000001.png, ... or remove it",
            )
        elif kind == "strip" and frame_shape is None:
            error = Problem(
                path,
                "image strip found but frame_shape is not set, so its frames cannot be cut",
                "set frame_shape: [H, W] (data.init_args.frame_shape) to the size of one frame",
            )
        if error is not None:
            if problems is None:
                raise DatasetError(f"{error.path}: {error.message}; fix: {error.fix}")
            problems.append(error)
            continue
        entries.append(VideoEntry(path, path.name, identity_of(path.name)))
    return entries


def split_videos(
    videos: Sequence[VideoEntry], *, test_fraction: float = 0.2, split_seed: int = 0
) -> tuple[list[VideoEntry], list[VideoEntry]]:
    """Seeded train/test split of a flat folder, by identity so a person is on one side only.

    With a single identity the split is by video. Returns ``(train, test)`` in input order.
    """
    groups = sorted({v.identity for v in videos})
    key = (lambda v: v.identity) if len(groups) >= 2 else (lambda v: v.video_id)
    if len(groups) < 2:
        groups = sorted(v.video_id for v in videos)
    if len(groups) < 2:
        return list(videos), []
    order = np.random.default_rng(split_seed).permutation(len(groups))
    num_test = min(max(1, round(test_fraction * len(groups))), len(groups) - 1)
    test_groups = {groups[i] for i in order[:num_test]}
    train = [v for v in videos if key(v) not in test_groups]
    test = [v for v in videos if key(v) in test_groups]
    return train, test


def _layout_fix(root: Path) -> str:
    return (
        f"put videos in {root / 'train'} and {root / 'test'} (first-order-model layout), or all "
        "videos directly in the root for an automatic 80/20 split, or create a synthetic "
        f"dataset with `animzoo data synth {root}`"
    )


def _resolve_split(
    root: Path, split: str, frame_shape: Sequence[int] | None, split_seed: int
) -> list[VideoEntry]:
    if not root.is_dir():
        raise DatasetError(f"{root}: dataset root not found; fix: {_layout_fix(root)}")
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    has_split = [(root / s).is_dir() for s in ("train", "test")]
    if any(has_split):
        folder = root / split
        if not folder.is_dir():
            other = "test" if split == "train" else "train"
            raise DatasetError(
                f"{folder}: missing split folder (the dataset has {other}/ but no {split}/); "
                f"fix: create {folder} and move some videos of {root / other} into it"
            )
        videos = list_videos(folder, frame_shape=frame_shape)
        where = folder
    else:
        train, test = split_videos(list_videos(root, frame_shape=frame_shape), split_seed=split_seed)
        videos = train if split == "train" else test
        where = root
    if not videos:
        raise DatasetError(
            f"{where}: no videos found for split {split!r}; fix: {_layout_fix(root)}"
        )
    return videos


def read_pairs_csv(
    root: str | os.PathLike[str],
    *,
    frame_shape: Sequence[int] | None = None,
    problems: list[Problem] | None = None,
) -> list[tuple[VideoEntry, VideoEntry]]:
    """Rows of ``root/pairs.csv`` (columns ``source,driving``) as video pairs.

    A path is relative to ``root``; a bare name that is not found there is looked up in
    ``root/test`` (first-order-model's csv files list test video names). Rows pointing to
    missing videos raise one :class:`DatasetError` listing them, or go to ``problems``.
    """
    root = Path(root)
    csv_path = root / PAIRS_FILE
    fix_csv = "write a header line 'source,driving' and one row per pair, paths relative to the root"
    if not csv_path.is_file():
        raise DatasetError(f"{csv_path}: pairs file not found; fix: {fix_csv}")
    with open(csv_path, newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        columns = [c.strip() for c in (reader.fieldnames or [])]
        if not {"source", "driving"} <= set(columns):
            err = Problem(csv_path, f"columns are {columns}, expected 'source' and 'driving'", fix_csv)
            if problems is None:
                raise DatasetError(f"{err.path}: {err.message}; fix: {err.fix}")
            problems.append(err)
            return []
        rows = [{k.strip(): (v or "").strip() for k, v in row.items() if k} for row in reader]

    def resolve(name: str) -> Path | None:
        for candidate in (root / name, root / "test" / name):
            if name and candidate.exists() and _video_kind(candidate) is not None:
                return candidate
        return None

    pairs: list[tuple[VideoEntry, VideoEntry]] = []
    missing: list[Problem] = []
    for line, row in enumerate(rows, start=2):  # line 1 is the header
        src, drv = resolve(row["source"]), resolve(row["driving"])
        for column, found in (("source", src), ("driving", drv)):
            if found is None:
                missing.append(
                    Problem(
                        root / row[column],
                        f"{csv_path} line {line}: {column} video {row[column]!r} not found",
                        "fix the path (relative to the dataset root) or remove the row",
                    )
                )
        if src is not None and drv is not None:
            pairs.append(
                (
                    VideoEntry(src, row["source"], identity_of(src.name)),
                    VideoEntry(drv, row["driving"], identity_of(drv.name)),
                )
            )
    if missing:
        if problems is None:
            shown = "; ".join(f"{p.message} ({p.path})" for p in missing[:5])
            more = f"; and {len(missing) - 5} more" if len(missing) > 5 else ""
            raise DatasetError(f"{csv_path}: {shown}{more}; fix: {missing[0].fix}")
        problems.extend(missing)
    return pairs


# --------------------------------------------------------------------------- dataset


def _with_inspect_hint(err: AnimzooInputError, root: Path) -> AnimzooInputError:
    """Same error type, message extended with the command that lists every problem."""
    hint = f" (run `animzoo data inspect {root}` to list every problem of the dataset)"
    new = type(err)(f"{err}{hint}")
    new.__cause__ = err
    return new


def check_frame_gaps(
    min_frame_gap: int | None, max_frame_gap: int | None, min_frame_gap_epochs: int | None = None
) -> tuple[int | None, int | None, int | None]:
    """Validate the training pairs' frame-gap settings (gaps >= 1 or None, min <= max;
    ``min_frame_gap_epochs`` >= 1 and only with a ``min_frame_gap``); return them as ints."""
    gaps = {"min_frame_gap": min_frame_gap, "max_frame_gap": max_frame_gap}
    for name, gap in gaps.items():
        if gap is not None and int(gap) < 1:
            raise ValueError(f"{name} must be >= 1 or None, got {gap}")
    if min_frame_gap is not None and max_frame_gap is not None and int(min_frame_gap) > int(max_frame_gap):
        raise ValueError(f"min_frame_gap ({min_frame_gap}) must not exceed max_frame_gap ({max_frame_gap})")
    if min_frame_gap_epochs is not None:
        if int(min_frame_gap_epochs) < 1:
            raise ValueError(f"min_frame_gap_epochs must be >= 1 or None, got {min_frame_gap_epochs}")
        if min_frame_gap is None:
            raise ValueError(
                f"min_frame_gap_epochs={min_frame_gap_epochs} limits min_frame_gap to the first epochs, "
                "but min_frame_gap is not set; set both or neither"
            )
    values = (min_frame_gap, max_frame_gap, min_frame_gap_epochs)
    return tuple(None if value is None else int(value) for value in values)  # type: ignore[return-value]


class VideoFolder(Dataset):
    """Frames (and sidecars) of a video dataset, in one of three modes.

    ``mode="pairs"`` (training): item ``i`` reads two frames of one video, distinct when the
    video has more than one frame, sorted: the earlier is the source, the later the driving
    frame (with ``max_frame_gap`` and/or ``min_frame_gap``: the driving frame ``min_frame_gap``
    (default 1) to ``max_frame_gap`` (default: the video's last) frames after the source, the gap
    drawn uniformly, e.g. nearby frames for a tracking loss or distant ones so that redrawing the
    source is a poor guess; a video too short for ``min_frame_gap`` gives its first and last
    frame; with ``min_frame_gap_epochs = N`` the minimum holds in epochs 0 to N - 1 only, and later
    epochs draw pairs as if it were not set: a curriculum of distant pairs first). The choice is a
    pure function of ``(seed, epoch, i)``; indices from :class:`EpochSampler` carry the epoch
    (``epoch * len(self) + i``).

    ``mode="reconstruction"`` (test protocol of first-order-model): source = frame 0 of a
    video, every frame (frame 0 included) a driving frame. An item is a chunk of up to
    ``chunk_size`` consecutive frames, so long videos never sit whole in memory; collate a
    list of chunks with :func:`collate_chunks`.

    ``mode="cross"``: rows of ``root/pairs.csv``; source = frame 0 of the source video,
    driving = chunks of the driving video; there is no ground truth of the result
    (``has_ground_truth=False``).

    A pairs sample (before collation)::

        source, driving                        3 x H x W float [0, 1]
        source_landmarks, driving_landmarks    L x 2 normalised     (if "landmarks" required)
        source_mesh, driving_mesh              V x 3 normalised     (if "mesh" required)
        source_parsing, driving_parsing        H x W long labels    (if "parsing" required)
        mesh_faces                             F x 3 long           (shared by the batch)
        mesh_flip_index                        V long               (if the sidecar has it)
        source_mesh_param_<name>               n float              (cross chunks only, below)
        driving_mesh_param_<name>              n_frames x n float   (cross chunks only, below)
        video_id, identity                     str
        frame_index, source_frame_index        int (driving / source frame)
        mode                                   str
        has_ground_truth                       bool

    A chunk has ``driving`` ``n x 3 x H x W``, ``driving_landmarks`` ``n x L x 2``,
    ``driving_mesh`` ``n x V x 3``, ``driving_parsing`` ``n x H x W`` and ``frame_index`` ``n``
    long, plus ``num_frames`` (the
    video's length, to know when a video is complete); cross chunks add ``source_video_id``,
    ``driving_video_id`` and ``driving_identity``, and ``video_id`` is
    ``"<source>__<driving>"``.

    Cross chunks with ``"mesh"`` required also carry the morphable-model parameters of the mesh
    sidecars: for every ``param_<name>`` array (``T x n``, e.g. ``identity``, ``expression``,
    ``gaze``, ``pose``) that both the source's and the driving video's sidecars hold with a
    leading frame axis, ``source_mesh_param_<name>`` ``n`` float32 (the source frame's row) and
    ``driving_mesh_param_<name>`` ``n_frames x n`` float32 (the rows of the chunk's driving
    frames, handled like ``driving_mesh``). After :func:`collate_chunks` both are ``N x n`` (the
    source row repeated for each of the ``N`` frames). Pairs and reconstruction items never
    carry them (training flips would make them disagree with the flipped meshes).

    ``mesh_vertex_count`` (with ``"mesh"`` required): the number of vertices a method's head
    model has; every mesh sidecar of the split is checked at construction (the header of its
    ``verts`` only) and a sidecar with another ``V`` raises :class:`SidecarError` naming the
    file, both counts and the fix.

    Coordinates are normalised with the video's own frame size (align_corners=True), which
    stays exact under the align-corners resize to ``image_size``. Parsing maps (indices of
    ``PARSING_LABELS``) are resized to ``image_size`` by nearest neighbour on the same grid
    (:func:`resize_labels`).
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        split: Literal["train", "test"] = "train",
        *,
        frame_shape: Sequence[int] | None = None,
        image_size: int | None = None,
        id_sampling: bool = False,
        num_repeats: int = 1,
        requires: Iterable[str] = frozenset(),
        seed: int = 0,
        mode: Mode = "pairs",
        chunk_size: int = 32,
        landmark_count: int | None = None,
        split_seed: int = 0,
        required_by: str | None = None,
        max_frame_gap: int | None = None,
        mesh_vertex_count: int | None = None,
        min_frame_gap: int | None = None,
        min_frame_gap_epochs: int | None = None,
    ) -> None:
        self.root = Path(root)
        self.split = split
        self.frame_shape = tuple(int(s) for s in frame_shape) if frame_shape is not None else None
        if self.frame_shape is not None and len(self.frame_shape) != 2:
            raise ValueError(f"frame_shape must be (H, W), got {frame_shape!r}")
        self.image_size = image_size
        self.id_sampling = id_sampling
        self.num_repeats = int(num_repeats)
        if self.num_repeats < 1:
            raise ValueError(f"num_repeats must be >= 1, got {num_repeats}")
        self.requires = frozenset(requires)
        unknown = self.requires - set(SIDECAR_KINDS)
        if unknown:
            raise ValueError(
                f"requires may hold {', '.join(repr(k) for k in SIDECAR_KINDS)}, got {sorted(unknown)}"
            )
        self.seed = int(seed)
        if mode not in ("pairs", "reconstruction", "cross"):
            raise ValueError(f"mode must be 'pairs', 'reconstruction' or 'cross', got {mode!r}")
        self.mode = mode
        if chunk_size < 1:
            raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
        self.chunk_size = int(chunk_size)
        self.landmark_count = landmark_count
        self.required_by = required_by
        self.min_frame_gap, self.max_frame_gap, self.min_frame_gap_epochs = check_frame_gaps(
            min_frame_gap, max_frame_gap, min_frame_gap_epochs
        )
        if mesh_vertex_count is not None and int(mesh_vertex_count) < 1:
            raise ValueError(f"mesh_vertex_count must be >= 1 or None, got {mesh_vertex_count}")
        self.mesh_vertex_count = None if mesh_vertex_count is None else int(mesh_vertex_count)

        self.pairs: list[tuple[VideoEntry, VideoEntry]] = []
        if mode == "cross":
            self.pairs = read_pairs_csv(self.root, frame_shape=self.frame_shape)
            if not self.pairs:
                raise DatasetError(
                    f"{self.root / PAIRS_FILE}: no rows; fix: add rows 'source,driving' or turn "
                    "cross-identity evaluation off (cross_identity: false)"
                )
            unique = {v.path: v for pair in self.pairs for v in pair}
            self.videos = list(unique.values())
        else:
            self.videos = _resolve_split(self.root, split, self.frame_shape, split_seed)
        self._check_sidecars_exist()
        self._check_mesh_vertex_counts()

        # Identity groups (pairs mode with id_sampling): the epoch iterates identities.
        groups: dict[str, list[int]] = {}
        for index, video in enumerate(self.videos):
            groups.setdefault(video.identity, []).append(index)
        self.identities = sorted(groups)
        self._groups = [groups[name] for name in self.identities]

        # Chunk index (reconstruction / cross): needs every frame count now.
        self.chunks: list[tuple[int, int, int]] = []  # (video or pair index, start, stop)
        self.num_frames: dict[Path, int] = {}
        if mode == "reconstruction":
            for index, video in enumerate(self.videos):
                self._add_chunks(index, self._count(video))
        elif mode == "cross":
            for index, (source, driving) in enumerate(self.pairs):
                self._count(source)  # known before workers start, so they never count again
                self._add_chunks(index, self._count(driving))

    # ---------------------------------------------------------------- construction helpers

    def _check_sidecars_exist(self) -> None:
        for kind in SIDECAR_KINDS:
            if kind not in self.requires:
                continue
            missing = [sidecar_path(v.path, kind) for v in self.videos]
            missing = [p for p in missing if not p.is_file()]
            if missing:
                who = f"{self.required_by} requires {kind}" if self.required_by else f"{kind} are required"
                more = f" and {len(missing) - 1} more" if len(missing) > 1 else ""
                raise SidecarError(
                    f"{who} but the sidecar {missing[0]}{more} is missing "
                    f"({len(missing)} of {len(self.videos)} videos lack one); "
                    f"fix: {sidecar_fix(kind, self.root)}"
                )

    def _check_mesh_vertex_counts(self) -> None:
        """Every mesh sidecar of the split has ``mesh_vertex_count`` vertices (headers only)."""
        if self.mesh_vertex_count is None or "mesh" not in self.requires:
            return
        for video in self.videos:
            check_mesh_vertex_count(mesh_path(video.path), self.mesh_vertex_count)

    def _count(self, video: VideoEntry) -> int:
        if video.path not in self.num_frames:
            try:
                self.num_frames[video.path] = aio.count_frames(video.path, frame_shape=self.frame_shape)
            except VideoReadError as err:
                raise _with_inspect_hint(err, self.root) from err
        return self.num_frames[video.path]

    def _add_chunks(self, index: int, num_frames: int) -> None:
        for start in range(0, num_frames, self.chunk_size):
            self.chunks.append((index, start, min(start + self.chunk_size, num_frames)))

    # ---------------------------------------------------------------- length / indexing

    @property
    def base_length(self) -> int:
        """Items per repeat in pairs mode (identities or videos); chunks otherwise."""
        if self.mode != "pairs":
            return len(self.chunks)
        return len(self.identities) if self.id_sampling else len(self.videos)

    def __len__(self) -> int:
        if self.mode != "pairs":
            return len(self.chunks)
        return self.base_length * self.num_repeats

    def decode_index(self, index: int) -> tuple[int, int]:
        """``(epoch, item)`` of an epoch-encoded index ``epoch * len(self) + item``."""
        if index < 0:
            raise IndexError(f"index {index} < 0")
        return divmod(int(index), len(self))

    def __iter__(self) -> Iterator[dict[str, Any]]:
        # Indices past the end are valid (they encode an epoch), so Python's fallback
        # iteration "until IndexError" would never stop: iterate one epoch explicitly.
        return (self[i] for i in range(len(self)))

    def __getitem__(self, index: int) -> dict[str, Any]:
        epoch, item = self.decode_index(index)
        try:
            if self.mode == "pairs":
                return self._pair_item(epoch, item)
            return self._chunk_item(item)
        except (VideoReadError, SidecarError) as err:
            raise _with_inspect_hint(err, self.root) from err

    # ---------------------------------------------------------------- reading

    def rng_for(self, epoch: int, item: int) -> np.random.Generator:
        """The random generator of one training item: a pure function of (seed, epoch, item)."""
        mask = (1 << 63) - 1
        return np.random.default_rng([self.seed & mask, epoch & mask, item & mask])

    def _read(self, video: VideoEntry, indices: Sequence[int]) -> tuple[torch.Tensor, tuple[int, int]]:
        """Frames ``indices`` of ``video`` as ``N x 3 x H x W`` float, and the original (H, W)."""
        with aio.VideoReader(video.path, frame_shape=self.frame_shape) as reader:
            frames = reader.read(list(indices))
        return self._to_tensor(frames), (int(frames.shape[1]), int(frames.shape[2]))

    def _to_tensor(self, frames: np.ndarray) -> torch.Tensor:
        images = aio.frames_to_tensor(frames)
        size = self.image_size
        if size is not None and tuple(images.shape[-2:]) != (size, size):
            # align_corners=True keeps corner pixel centres fixed, matching the normalised
            # coordinate convention, so sidecar coordinates stay exact after resizing.
            images = F.interpolate(
                images, size=(size, size), mode="bilinear", align_corners=True, antialias=True
            ).clamp_(0.0, 1.0)
        return images

    def _landmarks(
        self, video: VideoEntry, indices: Sequence[int], num_frames: int, size: tuple[int, int]
    ) -> torch.Tensor:
        """Normalised landmarks ``N x L x 2`` of frames ``indices`` (reads only those rows)."""
        path = landmarks_path(video.path)
        table = open_landmarks(path)
        # Shape checks on the memory map read the header only.
        validate_landmarks(
            table, path, num_frames=num_frames, landmark_count=self.landmark_count, check_values=False
        )
        rows = np.asarray(table[np.asarray(indices)], dtype=np.float32)
        validate_landmarks(rows, path, frame_indices=indices)
        return torch.from_numpy(pixel_to_normalized(rows, size))

    def _parsing(
        self, video: VideoEntry, indices: Sequence[int], num_frames: int, size: tuple[int, int]
    ) -> torch.Tensor:
        """Parsing labels ``N x H x W`` long of frames ``indices`` (reads only those rows),
        resized to ``image_size`` by nearest neighbour like the frames."""
        path = parsing_path(video.path)
        table = open_parsing(path)
        # Shape checks on the memory map read the header only; values only of the rows read.
        validate_parsing(table, path, num_frames=num_frames, frame_size=size, check_values=False)
        rows = np.asarray(table[np.asarray(indices)])
        validate_parsing(rows, path, frame_indices=indices)
        maps = torch.from_numpy(rows.astype(np.int64))
        if self.image_size is not None:
            maps = resize_labels(maps, (self.image_size, self.image_size))
        return maps

    def _mesh(
        self, video: VideoEntry, indices: Sequence[int], num_frames: int, size: tuple[int, int]
    ) -> dict[str, Any]:
        """Normalised vertices ``N x V x 3`` of frames ``indices``, the faces, the flip index
        (when stored) and ``params``: the rows of ``indices`` of every per-frame parameter."""
        mesh = load_mesh(
            mesh_path(video.path),
            num_frames=num_frames,
            frames=indices,
            vertex_count=self.mesh_vertex_count,
        )
        out: dict[str, Any] = {
            "verts": torch.from_numpy(mesh_pixel_to_normalized(mesh.verts, size)),
            "mesh_faces": torch.from_numpy(mesh.faces),
            # Only cross chunks serve parameters (see the class docstring).
            "params": {
                name: torch.from_numpy(np.asarray(mesh.params[name], dtype=np.float32))
                for name in sorted(mesh.frame_params)
            } if self.mode == "cross" else {},
        }
        if mesh.flip_index is not None:
            out["mesh_flip_index"] = torch.from_numpy(mesh.flip_index)
        return out

    def _sidecars(
        self,
        sample: dict[str, Any],
        source: VideoEntry,
        source_indices: Sequence[int],
        driving: VideoEntry,
        driving_indices: Sequence[int],
        num_frames: dict[Path, int],
        sizes: dict[Path, tuple[int, int]],
        per_frame: bool,
    ) -> None:
        """Add the required sidecar keys to ``sample`` (source: one frame; driving: N)."""
        pick = (lambda t: t) if per_frame else (lambda t: t[0])
        if "landmarks" in self.requires:
            src = self._landmarks(source, source_indices, num_frames[source.path], sizes[source.path])
            drv = self._landmarks(driving, driving_indices, num_frames[driving.path], sizes[driving.path])
            if src.shape[1] != drv.shape[1]:
                raise SidecarError(
                    f"{landmarks_path(driving.path)}: {drv.shape[1]} landmarks per frame, but "
                    f"{landmarks_path(source.path)} has {src.shape[1]}; annotate every video with "
                    "the same detector"
                )
            sample["source_landmarks"] = src[0]
            sample["driving_landmarks"] = pick(drv)
        if "mesh" in self.requires:
            src = self._mesh(source, source_indices, num_frames[source.path], sizes[source.path])
            drv = self._mesh(driving, driving_indices, num_frames[driving.path], sizes[driving.path])
            if not torch.equal(src["mesh_faces"], drv["mesh_faces"]):
                raise SidecarError(
                    f"{mesh_path(driving.path)}: its faces differ from those of "
                    f"{mesh_path(source.path)}; all meshes of a dataset must share one topology"
                )
            sample["source_mesh"] = src["verts"][0]
            sample["driving_mesh"] = pick(drv["verts"])
            sample["mesh_faces"] = drv["mesh_faces"]
            if "mesh_flip_index" in drv:
                sample["mesh_flip_index"] = drv["mesh_flip_index"]
            if self.mode == "cross":
                for name in sorted(set(src["params"]) & set(drv["params"])):
                    src_param, drv_param = src["params"][name], drv["params"][name]
                    if src_param.shape[1:] != drv_param.shape[1:]:
                        raise SidecarError(
                            f"{mesh_path(driving.path)}: 'param_{name}' has "
                            f"{tuple(drv_param.shape[1:])} values per frame but "
                            f"{mesh_path(source.path)} has {tuple(src_param.shape[1:])}; fit "
                            "every video with the same model and settings"
                        )
                    sample[f"{SOURCE_PARAM_PREFIX}{name}"] = src_param[0]
                    sample[f"{DRIVING_PARAM_PREFIX}{name}"] = pick(drv_param)
        if "parsing" in self.requires:
            src = self._parsing(source, source_indices, num_frames[source.path], sizes[source.path])
            drv = self._parsing(driving, driving_indices, num_frames[driving.path], sizes[driving.path])
            sample["source_parsing"] = src[0]
            sample["driving_parsing"] = pick(drv)

    def _pair_item(self, epoch: int, item: int) -> dict[str, Any]:
        rng = self.rng_for(epoch, item)
        base = item % self.base_length
        if self.id_sampling:
            clips = self._groups[base]
            video = self.videos[clips[int(rng.integers(len(clips)))]]
        else:
            video = self.videos[base]
        with aio.VideoReader(video.path, frame_shape=self.frame_shape) as reader:
            num_frames = reader.num_frames
            min_gap = self.min_frame_gap
            if self.min_frame_gap_epochs is not None and epoch >= self.min_frame_gap_epochs:
                min_gap = None  # the curriculum's distant-pairs phase is over
            if num_frames >= 2 and (self.max_frame_gap is not None or min_gap is not None):
                # Gap uniform in min..max, both clamped to what the video has (1..num_frames - 1).
                longest = num_frames - 1 if self.max_frame_gap is None else min(self.max_frame_gap, num_frames - 1)
                shortest = min(min_gap or 1, longest)
                gap = int(rng.integers(shortest, longest + 1))
                first = int(rng.integers(0, num_frames - gap))
                second = first + gap
            elif num_frames >= 2:
                first, second = sorted(int(i) for i in rng.choice(num_frames, size=2, replace=False))
            else:  # a single-frame video can only give the same frame twice
                first = second = 0
            frames = reader.read([first, second])
        images = self._to_tensor(frames)
        size = (int(frames.shape[1]), int(frames.shape[2]))
        sample: dict[str, Any] = {
            "source": images[0],
            "driving": images[1],
            "video_id": video.video_id,
            "identity": video.identity,
            "frame_index": second,
            "source_frame_index": first,
            "mode": "pairs",
            "has_ground_truth": True,
        }
        self._sidecars(
            sample, video, [first], video, [second],
            {video.path: num_frames}, {video.path: size}, per_frame=False,
        )
        return sample

    def _chunk_item(self, item: int) -> dict[str, Any]:
        index, start, stop = self.chunks[item]
        frame_indices = list(range(start, stop))
        if self.mode == "reconstruction":
            video = self.videos[index]
            # Frame 0 and the chunk in one read: the reader seeks once per run of frames.
            images, size = self._read(video, [0, *frame_indices])
            source_img, driving_img = images[0], images[1:]
            source = driving = video
            sizes = {video.path: size}
            sample: dict[str, Any] = {"video_id": video.video_id, "identity": video.identity}
        else:
            source, driving = self.pairs[index]
            source_images, source_size = self._read(source, [0])
            driving_img, driving_size = self._read(driving, frame_indices)
            source_img = source_images[0]
            sizes = {source.path: source_size, driving.path: driving_size}
            sample = {
                "video_id": f"{source.video_id}__{driving.video_id}",
                "identity": source.identity,
                "source_video_id": source.video_id,
                "driving_video_id": driving.video_id,
                "driving_identity": driving.identity,
            }
        if source_img.shape != driving_img.shape[1:]:
            raise DatasetError(
                f"{driving.path}: frames of size {tuple(driving_img.shape[-2:])} cannot pair with "
                f"{source.path} frames of size {tuple(source_img.shape[-2:])}; fix: set image_size"
            )
        num_frames = {v.path: self.num_frames[v.path] for v in (source, driving)}
        sample.update(
            source=source_img,
            driving=driving_img,
            frame_index=torch.arange(start, stop, dtype=torch.long),
            source_frame_index=0,
            num_frames=self.num_frames[driving.path],
            mode=self.mode,
            has_ground_truth=self.mode == "reconstruction",
        )
        self._sidecars(sample, source, [0], driving, frame_indices, num_frames, sizes, per_frame=True)
        return sample

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(root={str(self.root)!r}, split={self.split!r}, mode={self.mode!r}, "
            f"videos={len(self.videos)}, items={len(self)}, requires={sorted(self.requires)})"
        )


# --------------------------------------------------------------------------- label maps


def resize_labels(maps: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Nearest-neighbour resize of label maps ``... x H x W`` to ``size`` = ``(h, w)``.

    Same grid as the frames' align_corners=True resize: output pixel centre ``j`` of ``n_out``
    takes input pixel ``round(j * (n_in - 1) / (n_out - 1))`` (ties to the larger index; integer
    arithmetic, so no float rounding), so corner pixels map onto corner pixels and a label stays
    under the image feature it labels. Labels are never mixed.
    """
    out = maps
    for axis, n_out in ((-2, int(size[0])), (-1, int(size[1]))):
        n_in = int(maps.shape[axis])
        if n_in == n_out:
            continue
        j = torch.arange(n_out, dtype=torch.long)
        if n_out == 1:
            index = torch.zeros(1, dtype=torch.long)
        else:  # floor((2 j (n_in - 1) + (n_out - 1)) / (2 (n_out - 1))) = round half up
            index = torch.div(2 * j * (n_in - 1) + (n_out - 1), 2 * (n_out - 1), rounding_mode="floor")
        out = out.index_select(out.dim() + axis, index.to(out.device))
    return out


# --------------------------------------------------------------------------- collation


def _collate_value(key: str, values: list[Any]) -> Any:
    first = values[0]
    if key in SHARED_KEYS:
        for other in values[1:]:
            same = torch.equal(first, other) if isinstance(first, torch.Tensor) else first == other
            if not same:
                raise DatasetError(
                    f"batch key {key!r} differs between samples; all videos of a dataset must "
                    "share one mesh topology (check the meshes with `animzoo data inspect ROOT`)"
                )
        return first
    if isinstance(first, torch.Tensor):
        shapes = {tuple(v.shape) for v in values}
        if len(shapes) > 1:
            raise DatasetError(
                f"batch key {key!r} has samples of different shapes {sorted(shapes)}; videos of "
                "different frame sizes need image_size (data.init_args.image_size), landmark "
                "sidecars need the same number of points"
            )
        return torch.stack(values)
    if isinstance(first, bool):
        return torch.tensor(values, dtype=torch.bool)
    if isinstance(first, int):
        return torch.tensor(values, dtype=torch.long)
    if isinstance(first, float):
        return torch.tensor(values, dtype=torch.float32)
    return list(values)


def _check_same_keys(items: list[dict[str, Any]]) -> None:
    """Refuse items with different keys (e.g. cross pairs whose mesh sidecars hold different
    ``param_*`` arrays) with a message instead of a KeyError."""
    keys = [set(item) for item in items]
    if all(k == keys[0] for k in keys[1:]):
        return
    partial = sorted(set().union(*keys) - set.intersection(*keys))
    ids = [item.get("video_id") for item in items]
    raise DatasetError(
        f"batch key(s) {partial} are missing from some samples of one batch ({ids}); every "
        "mesh sidecar of a dataset must hold the same param_* arrays (fit every video with the "
        "same model), or use a batch size of 1"
    )


def collate_pairs(samples: list[dict[str, Any]]) -> dict[str, Any]:
    """Collate pairs samples into a batch (images ``B x 3 x H x W``, landmarks ``B x L x 2``,
    meshes ``B x V x 3``, parsing maps ``B x H x W``, ``mesh_faces`` ``F x 3`` once, ids as
    lists of str, indices ``B``)."""
    return {key: _collate_value(key, [s[key] for s in samples]) for key in samples[0]}


def collate_chunks(chunks: list[dict[str, Any]]) -> dict[str, Any]:
    """Flatten reconstruction / cross chunks into one batch of ``N`` frames.

    Per-frame entries are concatenated (``driving`` ``N x 3 x H x W``, ``frame_index``
    ``N``, ``driving_mesh_param_<name>`` ``N x n``), per-chunk entries are repeated once per
    frame (``source`` ``N x 3 x H x W``, ``source_mesh_param_<name>`` ``N x n``, ``video_id`` a
    list of ``N`` str), shared entries (``mesh_faces`` ``F x 3``) kept once.
    """
    lengths = [int(c["driving"].shape[0]) for c in chunks]
    _check_same_keys(chunks)
    batch: dict[str, Any] = {}
    for key in chunks[0]:
        values = [c[key] for c in chunks]
        if key in SHARED_KEYS:
            batch[key] = _collate_value(key, values)
        elif _is_per_frame(key):
            shapes = {tuple(v.shape[1:]) for v in values}
            if len(shapes) > 1:
                raise DatasetError(
                    f"batch key {key!r} has chunks of different shapes {sorted(shapes)}; set "
                    "image_size (data.init_args.image_size) for videos of different sizes"
                )
            batch[key] = torch.cat(values)
        else:
            repeated = [v for v, n in zip(values, lengths) for _ in range(n)]
            batch[key] = _collate_value(key, repeated)
    return batch


# --------------------------------------------------------------------------- sampler


class EpochSampler(DistributedSampler):
    """Shuffling, sharding sampler that yields epoch-encoded indices.

    Yields ``epoch * len(dataset) + i``; :class:`VideoFolder` decodes the epoch and draws the
    item's randomness from ``(seed, epoch, i)``. The order (a permutation from a
    ``torch.Generator`` seeded by ``(seed, epoch)``) and the samples are therefore the same
    whatever ``num_workers``, and a run resumed at an epoch sees the same data.

    Subclasses :class:`DistributedSampler` so that Lightning keeps it under DDP (it only
    replaces samplers that are not distributed) and calls :meth:`set_epoch` every epoch.
    Ranks get disjoint shards ``perm[rank::num_replicas]``; the permutation is padded by
    wrapping around (or cut with ``drop_last``) so every rank yields as many indices.
    """

    def __init__(
        self,
        dataset: Dataset,
        num_replicas: int = 1,
        rank: int = 0,
        shuffle: bool = True,
        seed: int = 0,
        drop_last: bool = False,
    ) -> None:
        if not 0 <= rank < num_replicas:
            raise ValueError(f"rank must be in [0, {num_replicas}), got {rank}")
        super().__init__(
            dataset, num_replicas=num_replicas, rank=rank, shuffle=shuffle, seed=seed, drop_last=drop_last
        )

    def _permutation_seed(self) -> int:
        # (seed, epoch) through SeedSequence: no collision between (s, e + 1) and (s + 1, e).
        mask = (1 << 63) - 1
        state = np.random.SeedSequence([self.seed & mask, self.epoch & mask]).generate_state(2)
        return int(state[0]) << 31 ^ int(state[1])

    def __iter__(self) -> Iterator[int]:
        n = len(self.dataset)
        if self.shuffle:
            generator = torch.Generator()
            generator.manual_seed(self._permutation_seed())
            order = torch.randperm(n, generator=generator).tolist()
        else:
            order = list(range(n))
        if self.drop_last:
            order = order[: self.total_size]
        elif n > 0:
            order = (order * math.ceil(self.total_size / n))[: self.total_size]
        offset = self.epoch * n
        return iter([offset + i for i in order[self.rank : self.total_size : self.num_replicas]])


# --------------------------------------------------------------------------- inspection


@dataclass
class Problem:
    """One problem found in a dataset: the file, what is wrong, and how to fix it."""

    path: Path
    message: str
    fix: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}\n    fix: {self.fix}"


@dataclass
class SplitSummary:
    """Counts of one split: readable videos, their frames, and sidecars found."""

    videos: int = 0
    frames: int = 0
    landmarks: int = 0
    meshes: int = 0
    parsing: int = 0


@dataclass
class InspectionReport:
    """Result of :func:`inspect_dataset`: every problem, and counts per split."""

    root: Path
    problems: list[Problem] = field(default_factory=list)
    splits: dict[str, SplitSummary] = field(default_factory=dict)
    pairs: int = 0

    @property
    def ok(self) -> bool:
        return not self.problems

    def format(self) -> str:
        """A human-readable report (what `animzoo data inspect` prints)."""
        lines = [f"dataset {self.root}"]
        for name, s in self.splits.items():
            lines.append(
                f"  {name}: {s.videos} videos, {s.frames} frames, "
                f"{s.landmarks} landmark sidecars, {s.meshes} mesh sidecars, "
                f"{s.parsing} parsing sidecars"
            )
        if self.pairs:
            lines.append(f"  pairs.csv: {self.pairs} pairs")
        if self.ok:
            lines.append("no problems found")
        else:
            lines.append(f"{len(self.problems)} problem(s):")
            lines.extend(f"- {p}" for p in self.problems)
        return "\n".join(lines)


def _without_path(message: str, path: Path) -> str:
    """An error message without its leading ``"<path>: "`` (a Problem shows the path already)."""
    prefix = f"{path}: "
    return message.removeprefix(prefix)


_REENCODE_FIX = (
    "re-encode it (e.g. `ffmpeg -i IN -c:v libx264 -pix_fmt yuv420p OUT.mp4`) or remove it"
)


def _inspect_video(
    video: VideoEntry,
    frame_shape: Sequence[int] | None,
    full_decode: bool,
    problems: list[Problem],
) -> tuple[int, tuple[int, int]] | None:
    """Frame count and frame size of a video, or ``None`` (with a problem) when unreadable."""
    try:
        with aio.VideoReader(video.path, frame_shape=frame_shape) as reader:
            size = (int(reader.height), int(reader.width))
            if not full_decode:
                return int(reader.num_frames), size
            decoded = sum(int(frames.shape[0]) for _, frames in reader.iter_chunks(64))
            if decoded != reader.num_frames:
                problems.append(
                    Problem(
                        video.path,
                        f"the container reports {reader.num_frames} frames but {decoded} decode",
                        _REENCODE_FIX,
                    )
                )
            if decoded == 0:
                raise VideoReadError(f"{video.path}: no frames")
            return decoded, size
    except VideoReadError as err:
        fix = (
            "fill the folder with frames or remove it" if video.path.is_dir() else _REENCODE_FIX
        )
        problems.append(Problem(video.path, _without_path(str(err), video.path), fix))
    except Exception as err:  # noqa: BLE001 - an inspector reports, it does not stop at the first failure
        problems.append(Problem(video.path, f"unreadable: {type(err).__name__}: {err}", _REENCODE_FIX))
    return None


def inspect_dataset(
    root: str | os.PathLike[str],
    *,
    frame_shape: Sequence[int] | None = None,
    landmark_count: int | None = None,
    full_decode: bool = True,
    split_seed: int = 0,
) -> InspectionReport:
    """Check a whole dataset and collect every problem instead of stopping at the first.

    Checks: the layout (root, missing split, empty split), every video (readable, not
    empty, frame count; fully decoded unless ``full_decode=False``), every sidecar (shape,
    frame count, NaN / inf, landmark count, mesh faces and flip index, one mesh topology,
    parsing maps' dtype, frame size and label range),
    sidecars without a video, mixed frame sizes, and ``pairs.csv`` rows.
    """
    root = Path(root)
    report = InspectionReport(root=root)
    problems = report.problems
    if not root.is_dir():
        problems.append(Problem(root, "dataset root not found", _layout_fix(root)))
        return report

    has = {s: (root / s).is_dir() for s in ("train", "test")}
    split_videos_: dict[str, list[VideoEntry]] = {}
    if any(has.values()):
        for split, present in has.items():
            if not present:
                other = "test" if split == "train" else "train"
                problems.append(
                    Problem(
                        root / split,
                        f"missing split folder (the dataset has {other}/ but no {split}/)",
                        f"create {root / split} and move some videos of {root / other} into it",
                    )
                )
                continue
            split_videos_[split] = list_videos(root / split, frame_shape=frame_shape, problems=problems)
        folders = [root / s for s, present in has.items() if present]
    else:
        train, test = split_videos(
            list_videos(root, frame_shape=frame_shape, problems=problems), split_seed=split_seed
        )
        split_videos_ = {"train": train, "test": test}
        folders = [root]

    landmark_counts: dict[Path, int] = {}
    reference_faces: tuple[Path, np.ndarray] | None = None
    sizes: dict[tuple[int, int], Path] = {}
    for split, videos in split_videos_.items():
        summary = report.splits.setdefault(split, SplitSummary())
        if not videos:
            problems.append(
                Problem(root / split if has.get(split) else root, f"split {split!r} has no videos",
                        _layout_fix(root))
            )
        lacking: dict[str, list[Path]] = {"landmarks": [], "mesh": [], "parsing": []}
        for video in videos:
            result = _inspect_video(video, frame_shape, full_decode, problems)
            if result is not None:
                summary.videos += 1
                summary.frames += result[0]
                sizes.setdefault(result[1], video.path)
            num_frames = None if result is None else result[0]
            lm_path = landmarks_path(video.path)
            if lm_path.is_file():
                summary.landmarks += 1
                try:
                    arr = load_landmarks(lm_path, num_frames=num_frames, landmark_count=landmark_count)
                    landmark_counts[lm_path] = int(arr.shape[1])
                except SidecarError as err:
                    fix = (
                        f"regenerate it: `animzoo data annotate --landmarks <backend> {root}` "
                        "(or fix the detector output)"
                    )
                    problems.append(Problem(lm_path, _without_path(str(err), lm_path), fix))
            else:
                lacking["landmarks"].append(lm_path)
            me_path = mesh_path(video.path)
            if me_path.is_file():
                summary.meshes += 1
                try:
                    mesh = load_mesh(me_path, num_frames=num_frames)
                    if reference_faces is None:
                        reference_faces = (me_path, mesh.faces)
                    elif not np.array_equal(reference_faces[1], mesh.faces):
                        problems.append(
                            Problem(me_path, f"its faces differ from those of {reference_faces[0]}; "
                                    "a dataset's meshes must share one topology",
                                    "fit every video with the same head model")
                        )
                except SidecarError as err:
                    problems.append(Problem(me_path, _without_path(str(err), me_path), sidecar_fix("mesh")))
            else:
                lacking["mesh"].append(me_path)
            pa_path = parsing_path(video.path)
            if pa_path.is_file():
                summary.parsing += 1
                try:
                    load_parsing(
                        pa_path, num_frames=num_frames, frame_size=None if result is None else result[1]
                    )
                except SidecarError as err:
                    problems.append(
                        Problem(pa_path, _without_path(str(err), pa_path), sidecar_fix("parsing", root))
                    )
            else:
                lacking["parsing"].append(pa_path)
        # Partial coverage: a method that requires the sidecar would refuse the dataset.
        for kind, paths in lacking.items():
            if paths and len(paths) < len(videos):
                problems.append(
                    Problem(paths[0], f"{len(paths)} of {len(videos)} {split} videos lack a {kind} "
                            f"sidecar (first: {paths[0].name})", sidecar_fix(kind, root))
                )

    if landmark_count is None and len(set(landmark_counts.values())) > 1:
        common = Counter(landmark_counts.values()).most_common(1)[0][0]
        for path, count in landmark_counts.items():
            if count != common:
                problems.append(
                    Problem(path, f"{count} landmarks per frame, most sidecars have {common}",
                            "annotate every video with the same detector")
                )
    if len(sizes) > 1:
        shown = ", ".join(f"{h}x{w} ({p.name})" for (h, w), p in list(sizes.items())[:4])
        problems.append(
            Problem(root, f"videos have different frame sizes: {shown}",
                    "set image_size (data.init_args.image_size) so frames are resized to one size")
        )

    # Sidecars whose video does not exist (renamed or deleted videos).
    for folder in folders:
        for path in sorted(folder.iterdir()):
            for suffix in (".landmarks.npy", ".mesh.npz", ".parsing.npy"):
                if path.name.endswith(suffix) and not Path(str(path)[: -len(suffix)]).exists():
                    problems.append(
                        Problem(path, "sidecar without a video", "rename it to match its video or delete it")
                    )

    if (root / PAIRS_FILE).exists():
        try:
            report.pairs = len(read_pairs_csv(root, frame_shape=frame_shape, problems=problems))
        except DatasetError as err:
            problems.append(Problem(root / PAIRS_FILE, str(err), "fix or remove pairs.csv"))
    return report
