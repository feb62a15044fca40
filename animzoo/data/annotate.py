"""Landmark sidecars for any dataset: run a landmark backend over every video of a dataset.

``animzoo data annotate --landmarks BACKEND ROOT`` (and :func:`annotate_landmarks`) writes
``<video>.landmarks.npy`` (``T x L x 2`` float32 pixels, see :mod:`animzoo.data.annotations`)
for every video that the datamodule reads, so that landmark-driven methods train on any data:

- the videos are those of ``root/train`` and ``root/test`` (or, without split folders, every
  video directly in ``root``: both sides of the automatic 80/20 split), plus the videos that
  ``root/pairs.csv`` names (cross-identity testing reads them too);
- each video is decoded once, ``batch_size`` frames at a time, at its own frame size (a long
  video is never held whole in memory; only its ``T x L x 2`` landmarks are);
- frames where the backend finds no face (NaN rows) are filled by linear interpolation in time
  between the nearest frames with a face, and by the nearest one at the ends (the sidecar
  format refuses NaN); the report counts them;
- a video without any detection gets no sidecar (``failed: no face detected in any of N
  frames``), and an undecodable video is reported (``failed: <reason naming the file>``); the
  run goes on with the other videos;
- existing sidecars are left as they are without decoding their video (``exists``) unless
  ``overwrite=True``; writes are atomic, so an interrupted run never leaves half a file, and a
  failed video never loses the sidecar it had.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from animzoo import io as aio
from animzoo.data.annotations import landmarks_path, open_landmarks, save_landmarks
from animzoo.data.videos import (
    PAIRS_FILE,
    Problem,
    VideoEntry,
    list_videos,
    read_pairs_csv,
)
from animzoo.errors import AnimzooInputError, DatasetError, VideoReadError
from animzoo.geometry.keypoints import landmark_smoothness

__all__ = [
    "AnnotationReport",
    "VideoAnnotation",
    "annotate_landmarks",
    "dataset_videos",
    "default_report_path",
    "fill_missing_frames",
]

#: Progress callback: ``progress(done, total, row)`` after each video (``row`` is its result).
ProgressFn = Callable[[int, int, "VideoAnnotation"], None]

WRITTEN, EXISTS = "written", "exists"


# --------------------------------------------------------------------------- report


@dataclass
class VideoAnnotation:
    """The result of one video.

    Attributes:
        video: the video path (file or frame folder).
        sidecar: its ``<video>.landmarks.npy``.
        status: ``"written"``, ``"exists"`` (left untouched) or ``"failed: <why>"``.
        frames: frames decoded (``exists``: ``T`` of the existing sidecar; ``None`` if unknown).
        detected: frames where the backend found a face (``None`` when nothing was decoded).
        filled: frames filled by interpolation (``None`` when nothing was written).
        sms: landmark smoothness of the sidecar (mean of
            :func:`animzoo.geometry.keypoints.landmark_smoothness`, pixels; ``None`` with
            fewer than 3 frames or no sidecar).
    """

    video: Path
    sidecar: Path
    status: str
    frames: int | None = None
    detected: int | None = None
    filled: int | None = None
    sms: float | None = None

    @property
    def detection_rate(self) -> float | None:
        """``detected / frames``, or ``None`` when the video was not decoded."""
        if self.detected is None or not self.frames:
            return None
        return self.detected / self.frames

    @property
    def failed(self) -> bool:
        return self.status.startswith("failed")

    @property
    def reason(self) -> str:
        """Why a video failed, without the ``failed:`` prefix and the video's own path."""
        text = self.status.removeprefix("failed: ")
        return text.removeprefix(f"{self.video}: ")

    def to_dict(self) -> dict[str, Any]:
        return {
            "video": str(self.video),
            "sidecar": str(self.sidecar),
            "status": self.status,
            "frames": self.frames,
            "detected_frames": self.detected,
            "detection_rate": self.detection_rate,
            "filled_frames": self.filled,
            "sms_px": self.sms,
        }


def _number(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


@dataclass
class AnnotationReport:
    """What :func:`annotate_landmarks` did: one :class:`VideoAnnotation` per video, and totals.

    Attributes:
        root: the dataset root.
        backend: the backend's name (e.g. ``"animzoo70"``).
        backend_status: its ``status`` text (what it loaded, from where).
        num_landmarks: ``L`` of the written sidecars.
        rows: per video, in dataset order (train, test, then videos only ``pairs.csv`` names).
        seconds: wall time of the run.
    """

    root: Path
    backend: str
    backend_status: str
    num_landmarks: int
    rows: list[VideoAnnotation] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def written(self) -> list[VideoAnnotation]:
        return [r for r in self.rows if r.status == WRITTEN]

    @property
    def existing(self) -> list[VideoAnnotation]:
        return [r for r in self.rows if r.status == EXISTS]

    @property
    def failures(self) -> list[VideoAnnotation]:
        return [r for r in self.rows if r.failed]

    @property
    def ok(self) -> bool:
        """Every video has a sidecar now (written by this run or already there)."""
        return not self.failures

    def totals(self) -> dict[str, Any]:
        """Counts over all videos; frame counts and the detection rate over decoded videos only."""
        decoded = [r for r in self.rows if r.detected is not None]
        frames = sum(int(r.frames or 0) for r in decoded)
        detected = sum(int(r.detected or 0) for r in decoded)
        smooth = [r.sms for r in self.written if r.sms is not None]
        return {
            "videos": len(self.rows),
            "written": len(self.written),
            "exists": len(self.existing),
            "failed": len(self.failures),
            "decoded_frames": frames,
            "detected_frames": detected,
            "detection_rate": detected / frames if frames else None,
            "filled_frames": sum(int(r.filled or 0) for r in self.rows),
            "mean_sms_px_written": float(np.mean(smooth)) if smooth else None,
        }

    def table(self) -> tuple[list[str], list[list[str]]]:
        """Header and rows of strings (paths relative to the root), for :meth:`format` and the CLI."""
        header = ["video", "frames", "detected", "rate", "filled", "SMS px", "status"]
        rows = []
        for r in self.rows:
            try:
                name = str(r.video.relative_to(self.root))
            except ValueError:
                name = str(r.video)
            rows.append([
                name, _number(r.frames, "d"), _number(r.detected, "d"),
                _number(r.detection_rate, ".1%"), _number(r.filled, "d"), _number(r.sms, ".3f"),
                r.status,
            ])
        return header, rows

    def summary(self) -> str:
        """One line: counts and the overall detection rate."""
        t = self.totals()
        share = t["detection_rate"]
        rate = "" if share is None else f", face found in {share:.1%} of decoded frames"
        return (
            f"{t['videos']} videos: {t['written']} written, {t['exists']} already annotated, "
            f"{t['failed']} failed ({self.backend}, {self.num_landmarks} landmarks{rate}, "
            f"{t['filled_frames']} frames interpolated, {self.seconds:.1f} s)"
        )

    def format(self) -> str:
        """A plain-text table of every video, the summary line and the failures."""
        header, rows = self.table()
        widths = [max([len(h), *(len(row[i]) for row in rows)]) for i, h in enumerate(header)]
        right = {1, 2, 3, 4, 5}

        def line(cells: Sequence[str]) -> str:
            return "  ".join(
                c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths))
            ).rstrip()

        out = [f"landmarks of {self.root} with {self.backend}", line(header)]
        out += [line(row) for row in rows]
        out.append(self.summary())
        if self.failures:
            out.append(f"{len(self.failures)} video(s) failed:")
            out += [f"- {r.video}: {r.reason}" for r in self.failures]
        return "\n".join(out)

    def to_dict(self) -> dict[str, Any]:
        return {
            "root": str(self.root),
            "backend": self.backend,
            "backend_status": self.backend_status,
            "num_landmarks": self.num_landmarks,
            "seconds": self.seconds,
            "totals": self.totals(),
            "videos": [r.to_dict() for r in self.rows],
        }

    def to_json(self) -> str:
        """The report as JSON (``null`` for unknown values; no NaN, so any JSON reader parses it)."""
        return json.dumps(self.to_dict(), indent=2) + "\n"

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write :meth:`to_json` atomically to ``path``."""
        text = self.to_json().encode("utf-8")
        return aio.atomic_write(path, lambda handle: handle.write(text))


def default_report_path(root: str | os.PathLike[str], backend: str) -> Path:
    """``<root>/annotate-landmarks-<backend>.json``, where the CLI writes its report.

    A ``.json`` file directly in the root is never taken for a video (the listing keeps video,
    image and gif suffixes and folders only), nor for a sidecar, in either layout.
    """
    return Path(root) / f"annotate-landmarks-{backend}.json"


# --------------------------------------------------------------------------- listing


def dataset_videos(
    root: str | os.PathLike[str], *, frame_shape: Sequence[int] | None = None
) -> tuple[list[VideoEntry], list[Problem]]:
    """Every video the datamodule can read from ``root``, once each, and the listing's problems.

    ``root/train`` and ``root/test`` when either exists (the datamodule's layout), else the
    videos directly in ``root`` (both sides of its automatic split); then the videos of
    ``root/pairs.csv`` not listed yet (rows naming missing videos are left to
    ``animzoo data inspect``). Problems are empty frame folders and strips without
    ``frame_shape`` (the datamodule would refuse them too).

    Raises:
        DatasetError: ``root`` is not a folder, or holds no video at all.
    """
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(
            f"{root}: dataset root not found; pass the folder that holds train/ and test/ "
            "(or the videos themselves)"
        )
    problems: list[Problem] = []
    splits = [root / s for s in ("train", "test") if (root / s).is_dir()]
    videos: list[VideoEntry] = []
    for folder in splits or [root]:
        videos += list_videos(folder, frame_shape=frame_shape, problems=problems)
    if (root / PAIRS_FILE).is_file():
        seen = {v.path.resolve() for v in videos}
        ignored: list[Problem] = []  # broken rows are pairs.csv's problem, not a video's
        for pair in read_pairs_csv(root, frame_shape=frame_shape, problems=ignored):
            for video in pair:
                if video.path.resolve() not in seen:
                    seen.add(video.path.resolve())
                    videos.append(video)
    if not videos and not problems:
        where = " and ".join(str(s) for s in splits) if splits else str(root)
        raise DatasetError(
            f"{where}: no videos found (.mp4/.mov/.webm/.avi/.mkv files, .gif, folders of "
            ".png/.jpg frames, or strips with --frame-shape); check the dataset root"
        )
    return videos, problems


# --------------------------------------------------------------------------- filling


def fill_missing_frames(points: np.ndarray, detected: np.ndarray) -> np.ndarray:
    """Fill the frames without a detection by linear interpolation in time.

    Args:
        points: ``T x L x 2`` landmarks (rows of undetected frames may hold anything, NaN).
        detected: ``T`` bool, at least one True.

    Returns:
        ``T x L x 2`` float32: detected frames unchanged; a missing frame between detections
        at ``a < t < b`` gets ``p_a + (t - a) / (b - a) * (p_b - p_a)``; missing frames before
        the first (after the last) detection repeat it.
    """
    detected = np.asarray(detected, dtype=bool)
    if not detected.any():
        raise ValueError("fill_missing_frames needs at least one detected frame")
    out = np.array(points, dtype=np.float32, copy=True)
    if detected.all():
        return out
    t = np.arange(out.shape[0], dtype=np.float64)
    known = np.flatnonzero(detected).astype(np.float64)
    flat = out.reshape(out.shape[0], -1)
    values = flat[detected].astype(np.float64)
    missing = ~detected
    # np.interp extends with the end values: the constant extension the sidecar needs.
    for column in range(flat.shape[1]):
        flat[missing, column] = np.interp(t[missing], known, values[:, column])
    return out


# --------------------------------------------------------------------------- backend


def _resolve_device(device: str | torch.device | None) -> torch.device:
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise AnimzooInputError(f"device {device!r} is not a torch device ({err}); use cpu or cuda") from err
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise AnimzooInputError(f"device {device!r}: CUDA is not available here; use --device cpu")
    return resolved


# --------------------------------------------------------------------------- one video


def _detect_video(
    path: Path, backend: Any, device: torch.device, batch_size: int, frame_shape: Sequence[int] | None
) -> tuple[np.ndarray, np.ndarray]:
    """Stream the frames of ``path`` through ``backend.detect``.

    Returns:
        ``T x L x 2`` float32 pixel landmarks (NaN where no face) and ``T`` bool: face found.
    """
    shape = None if frame_shape is None else (int(frame_shape[0]), int(frame_shape[1]))
    parts: list[np.ndarray] = []
    with aio.VideoReader(path, frame_shape=shape) as reader:
        for _, frames in reader.iter_chunks(batch_size):
            images = aio.frames_to_tensor(frames).to(device)
            with torch.no_grad():
                points = backend.detect(images)
            points = torch.as_tensor(points).detach().to("cpu", torch.float32).numpy()
            expected = (len(frames), int(backend.num_landmarks), 2)
            if points.shape != expected:
                raise ValueError(
                    f"landmark backend {backend.name!r} returned shape {points.shape} for "
                    f"{len(frames)} frames of {path}, expected {expected}"
                )
            parts.append(points)
    points = np.concatenate(parts) if parts else np.zeros((0, int(backend.num_landmarks), 2), np.float32)
    # A frame counts as detected only when all its points are finite: a partial answer would
    # be refused by the sidecar format anyway, so it is filled like a miss.
    detected = np.isfinite(points).reshape(points.shape[0], -1).all(axis=1)
    return points, detected


def _smoothness(points: np.ndarray) -> float | None:
    if points.shape[0] < 3:
        return None
    return float(landmark_smoothness(torch.from_numpy(np.asarray(points, np.float32))).mean())


def _existing_row(video: Path, sidecar: Path) -> VideoAnnotation:
    """An ``exists`` row: frames and SMS from the sidecar itself (no video decoding)."""
    row = VideoAnnotation(video, sidecar, EXISTS)
    try:
        table = open_landmarks(sidecar)
        if table.ndim == 3 and table.shape[2] == 2:
            row.frames = int(table.shape[0])
            values = np.array(table, dtype=np.float32)  # a copy: the memory map is read-only
            row.sms = _smoothness(values) if np.isfinite(values).all() else None
    except (AnimzooInputError, OSError, ValueError):
        pass  # a broken sidecar is `animzoo data inspect`'s to report; it is left as it is
    return row


def _annotate_video(
    video: Path, backend: Any, device: torch.device, batch_size: int, frame_shape: Sequence[int] | None
) -> VideoAnnotation:
    sidecar = landmarks_path(video)
    row = VideoAnnotation(video, sidecar, WRITTEN)
    try:
        points, detected = _detect_video(video, backend, device, batch_size, frame_shape)
    except VideoReadError as err:  # its message names the file and the fix
        row.status = f"failed: {err}"
        return row
    except OSError as err:  # e.g. permissions (decoder errors come as VideoReadError)
        row.status = f"failed: {video}: cannot be read ({type(err).__name__}: {err})"
        return row
    row.frames, row.detected = int(points.shape[0]), int(detected.sum())
    if row.frames == 0:
        row.status = f"failed: {video}: no frames decoded"
        return row
    if row.detected == 0:
        row.status = f"failed: no face detected in any of {row.frames} frames"
        return row
    filled = fill_missing_frames(points, detected)
    row.filled = int(row.frames - row.detected)
    try:
        save_landmarks(sidecar, filled, num_frames=row.frames)
    except (OSError, AnimzooInputError) as err:
        row.status = f"failed: cannot write {sidecar} ({type(err).__name__}: {err})"
        row.filled = None
        return row
    row.sms = _smoothness(filled)
    return row


# --------------------------------------------------------------------------- the dataset


def annotate_landmarks(
    root: str | os.PathLike[str],
    backend: str | Any = "animzoo70",
    *,
    overwrite: bool = False,
    batch_size: int = 32,
    device: str | torch.device | None = None,
    progress: ProgressFn | None = None,
    backend_kwargs: Mapping[str, Any] | None = None,
    frame_shape: Sequence[int] | None = None,
) -> AnnotationReport:
    """Write ``<video>.landmarks.npy`` for every video of the dataset at ``root``.

    Args:
        root: dataset root (``train/`` + ``test/``, or videos directly in it).
        backend: a name of :func:`animzoo.metrics.backends.landmark_backend` (``animzoo70``,
            ``dlib68``, ``mediapipe478``, ``fan68``), or an object with the
            :class:`~animzoo.metrics.backends.LandmarkBackend` attributes (``name``,
            ``num_landmarks``, ``available``, ``status``, ``detect``).
        overwrite: re-annotate videos that already have a sidecar (default: leave them, without
            decoding their video).
        batch_size: frames decoded and detected at once (memory: ``batch_size x 3 x H x W``).
        device: where the frames go (default: cuda if available, else cpu); dlib runs on the
            CPU whatever the device.
        progress: called as ``progress(done, total, row)`` after each video.
        backend_kwargs: keyword arguments of the backend's constructor (``backend`` by name).
        frame_shape: ``(H, W)`` of one frame of ``.png``/``.jpg`` strips.

    Returns:
        The :class:`AnnotationReport` (``report.ok``: every video has a sidecar now).

    Raises:
        DatasetError: ``root`` is missing or has no video.
        AnimzooInputError: unknown or unavailable backend (its status names the fix), bad
            ``batch_size`` or ``device``; raised before any file is written.
    """
    start = time.perf_counter()
    root = Path(root)
    if int(batch_size) < 1:
        raise AnimzooInputError(f"batch_size must be >= 1, got {batch_size}")
    videos, problems = dataset_videos(root, frame_shape=frame_shape)
    resolved_device = _resolve_device(device)
    from animzoo.metrics.backends import ready_landmark_backend

    detector = ready_landmark_backend(backend, backend_kwargs)
    if isinstance(detector, torch.nn.Module):
        detector.to(resolved_device)
    report = AnnotationReport(
        root=root, backend=str(detector.name), backend_status=str(detector.status),
        num_landmarks=int(detector.num_landmarks),
    )
    total = len(problems) + len(videos)
    for problem in problems:  # unreadable before any decoding: empty folders, strips
        row = VideoAnnotation(
            problem.path, landmarks_path(problem.path),
            f"failed: {problem.path}: {problem.message}; fix: {problem.fix}",
        )
        report.rows.append(row)
        if progress is not None:
            progress(len(report.rows), total, row)
    for video in videos:
        sidecar = landmarks_path(video.path)
        if sidecar.is_file() and not overwrite:
            row = _existing_row(video.path, sidecar)
        else:
            row = _annotate_video(video.path, detector, resolved_device, int(batch_size), frame_shape)
        report.rows.append(row)
        if progress is not None:
            progress(len(report.rows), total, row)
    report.seconds = time.perf_counter() - start
    return report
