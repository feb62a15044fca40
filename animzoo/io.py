"""Video and image reading / writing for animzoo.

A *video path* is one of:

* a file with a suffix in :data:`VIDEO_EXTENSIONS` (decoded by PyAV),
* a ``.gif`` (read with Pillow, written with PyAV's GIF encoder),
* a folder of ``.png`` / ``.jpg`` frames, in natural order (``frame2`` before ``frame10``);
  a folder is read as frames whatever its name, so first-order-model's VoxCeleb folders
  called ``<id>.mp4`` work as they are,
* a ``.png`` / ``.jpg`` horizontal strip of frames (first-order-model / Monkey-Net format),
  which needs ``frame_shape=(H, W)``.

Frames on disk and from this module are ``uint8`` RGB arrays ``T x H x W x 3``; models use
float tensors in [0, 1], ``T x 3 x H x W`` (:func:`frames_to_tensor`, :func:`tensor_to_frames`).

Reading a few frames of a video file does not decode the whole clip: the reader seeks to the
keyframe at or before the first wanted frame, decodes forward, and stops after the last wanted
frame (re-seeking when the next wanted frame is more than two keyframe intervals ahead).

Choices worth knowing:

* RGBA / LA / transparent-palette images are composited on a **white** background.
* H.264 / VP9 with yuv420p need even sizes: odd heights / widths are **padded by one
  replicated row / column** (with a warning), so such a video reads back one pixel larger.
* Writes are atomic (a temporary file or folder beside the target, then ``os.replace``) and
  deterministic (single-threaded encoders, bit-exact muxers: no dates, no random ids).
"""

from __future__ import annotations

import bisect
import os
import re
import shutil
import uuid
import warnings
from collections.abc import Callable, Iterator, Sequence
from fractions import Fraction
from pathlib import Path
from typing import Any, BinaryIO

import av
import numpy as np
import torch
from PIL import Image, ImageOps

from animzoo.errors import AnimzooInputError, VideoReadError

__all__ = [
    "VIDEO_EXTENSIONS",
    "IMAGE_EXTENSIONS",
    "GIF_EXTENSIONS",
    "natural_sort_key",
    "list_frame_files",
    "VideoReader",
    "read_video",
    "read_frames",
    "count_frames",
    "read_image",
    "write_video",
    "write_image",
    "frames_to_tensor",
    "tensor_to_frames",
    "atomic_write",
]

VIDEO_EXTENSIONS = (".mp4", ".mov", ".webm", ".avi", ".mkv")
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg")
GIF_EXTENSIONS = (".gif",)

_SUPPORTED_HINT = (
    "animzoo reads video files (" + ", ".join(VIDEO_EXTENSIONS) + "), .gif, folders of "
    ".png/.jpg frames, and .png/.jpg horizontal strips (with frame_shape=(H, W))"
)
_REENCODE_HINT = "re-encode it, e.g. `ffmpeg -i IN -c:v libx264 -pix_fmt yuv420p OUT.mp4`, or re-download it"
_MUXERS = {".mp4": "mp4", ".mov": "mov", ".mkv": "matroska", ".avi": "avi", ".webm": "webm"}
# H.264 is the default; webm may only hold VP8 / VP9 (/ AV1).
_WEBM_CODECS = ("libvpx-vp9", "libvpx")
# Without a known keyframe interval, re-seek when the next wanted frame is this far ahead: the
# seek may land on a keyframe we already passed, which wastes at most the frames since it.
_DEFAULT_RESEEK_GAP = 32


# --------------------------------------------------------------------------- names & listing


def natural_sort_key(name: str) -> tuple:
    """Sort key that orders digit runs by value: ``frame2 < frame10``, case-insensitively.

    The original string is the last element so that equal keys (``a01`` / ``a1``) still
    sort deterministically.
    """
    parts = re.split(r"([0-9]+)", name)
    key = tuple((0, int(p), p) if p.isdigit() else (1, p.lower(), p) for p in parts if p)
    return (key, name)


def list_frame_files(folder: str | os.PathLike) -> list[Path]:
    """Image files (:data:`IMAGE_EXTENSIONS`, any case) directly in ``folder``, natural order.

    Hidden files (``.name``, e.g. our own temporary files) are ignored. Returns ``[]`` for a
    folder without images; raises :class:`VideoReadError` if ``folder`` is not a directory.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise VideoReadError(f"{folder}: not a folder of frames. Pass a directory of .png/.jpg images.")
    files = [
        p
        for p in folder.iterdir()
        if p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith(".") and p.is_file()
    ]
    return sorted(files, key=lambda p: natural_sort_key(p.name))


# --------------------------------------------------------------------------- images


def _pil_to_rgb(img: Image.Image) -> np.ndarray:
    """Any Pillow image -> H x W x 3 uint8 RGB (alpha composited on white, 16-bit scaled)."""
    mode = img.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        # 16-bit grayscale (e.g. depth-like PNGs): scale 0..65535 to 0..255.
        arr = np.asarray(img).astype(np.float64)
        gray = np.clip(np.round(arr / 257.0), 0, 255).astype(np.uint8)
        return np.repeat(gray[..., None], 3, axis=2)
    if mode == "F":
        arr = np.asarray(img, dtype=np.float64)
        if arr.size and arr.max() <= 1.0:
            arr = arr * 255.0
        gray = np.clip(np.round(arr), 0, 255).astype(np.uint8)
        return np.repeat(gray[..., None], 3, axis=2)
    has_alpha = mode in ("RGBA", "LA", "PA", "RGBa", "La") or (
        mode in ("P", "L", "RGB") and "transparency" in img.info
    )
    if has_alpha:
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return np.asarray(Image.alpha_composite(white, rgba).convert("RGB"))
    return np.asarray(img.convert("RGB"))


def read_image(path: str | os.PathLike) -> np.ndarray:
    """Read one image as RGB.

    Grayscale (8 or 16 bit) is repeated to 3 channels, palette images are expanded, RGBA /
    LA / transparent images are composited on white, and EXIF orientation is applied.

    Returns:
        H x W x 3 uint8 array.
    """
    path = Path(path)
    if not path.is_file():
        raise VideoReadError(f"{path}: no such image file. Check the path.")
    try:
        with Image.open(path) as img:
            img = ImageOps.exif_transpose(img)
            return np.ascontiguousarray(_pil_to_rgb(img))
    except (OSError, SyntaxError, ValueError) as err:  # Pillow raises these for bad files
        raise VideoReadError(
            f"{path}: cannot be read as an image ({err}). The file is corrupt or not a "
            f"PNG/JPEG; re-export or delete it."
        ) from err


# --------------------------------------------------------------------------- tensors


def frames_to_tensor(frames: np.ndarray) -> torch.Tensor:
    """``T x H x W x 3`` uint8 -> ``T x 3 x H x W`` float32 in [0, 1].

    A single ``H x W x 3`` image gives ``3 x H x W``.
    """
    arr = np.asarray(frames)
    if arr.dtype != np.uint8:
        raise TypeError(f"frames_to_tensor expects uint8 frames, got {arr.dtype}")
    if arr.ndim not in (3, 4) or arr.shape[-1] != 3:
        raise ValueError(f"frames_to_tensor expects (T x) H x W x 3, got shape {arr.shape}")
    t = torch.from_numpy(np.ascontiguousarray(arr))
    return t.movedim(-1, -3).to(torch.float32).div_(255.0)


def tensor_to_frames(t: torch.Tensor) -> np.ndarray:
    """``T x 3 x H x W`` float in [0, 1] -> ``T x H x W x 3`` uint8 (clamped, rounded).

    A single ``3 x H x W`` tensor gives ``H x W x 3``; a uint8 tensor is only transposed.
    """
    if t.ndim not in (3, 4) or t.shape[-3] != 3:
        raise ValueError(f"tensor_to_frames expects (T x) 3 x H x W, got shape {tuple(t.shape)}")
    t = t.detach().cpu()
    if t.dtype != torch.uint8:
        t = t.float().clamp(0.0, 1.0).mul(255.0).round().to(torch.uint8)
    return np.ascontiguousarray(t.movedim(-3, -1).numpy())


def _as_uint8_frames(frames: Any, path: Path) -> np.ndarray:
    """Accept T x H x W x 3 uint8 / float arrays or T x 3 x H x W tensors -> T x H x W x 3 uint8."""
    if isinstance(frames, torch.Tensor):
        if frames.ndim == 4 and frames.shape[1] == 3:
            return tensor_to_frames(frames)
        frames = frames.detach().cpu().numpy()
    arr = np.asarray(frames)
    if arr.ndim == 3:  # T x H x W grayscale
        arr = arr[..., None]
    if arr.ndim != 4 or arr.shape[-1] not in (1, 3):
        raise AnimzooInputError(
            f"{path}: cannot write frames of shape {arr.shape}; pass T x H x W x 3 uint8 "
            f"frames or a T x 3 x H x W float tensor in [0, 1]."
        )
    if arr.shape[-1] == 1:
        arr = np.repeat(arr, 3, axis=-1)
    if arr.dtype != np.uint8:
        if not np.issubdtype(arr.dtype, np.floating):
            raise AnimzooInputError(f"{path}: frames must be uint8 or float in [0, 1], got {arr.dtype}.")
        arr = np.round(np.clip(arr, 0.0, 1.0) * 255.0).astype(np.uint8)
    if arr.shape[0] == 0 or arr.shape[1] == 0 or arr.shape[2] == 0:
        raise AnimzooInputError(f"{path}: refusing to write an empty video (frames shape {arr.shape}).")
    return np.ascontiguousarray(arr)


# --------------------------------------------------------------------------- reading


class _TimestampMismatch(Exception):
    """Frame pts do not fit the constant-frame-rate model; use the packet pts table."""


def _check_shape(frame_shape: Sequence[int] | None) -> tuple[int, int] | None:
    if frame_shape is None:
        return None
    if len(frame_shape) not in (2, 3):
        raise ValueError(f"frame_shape must be (H, W) (or FOMM's (H, W, 3)), got {tuple(frame_shape)}")
    return int(frame_shape[0]), int(frame_shape[1])


class VideoReader:
    """One open video of any supported kind (see the module docstring).

    Attributes:
        path: the video path.
        num_frames: number of frames T.
        fps: frames per second, or ``None`` where the format has none (frame folders, strips).
        height, width: frame size.
        frames_decoded: frames produced by the video decoder so far (video files only); shows
            that :meth:`read` decodes only what it needs.

    Args:
        path: video file, ``.gif``, folder of frames, or ``.png``/``.jpg`` strip.
        frame_shape: ``(H, W)`` of one frame of a strip (FOMM's ``(H, W, 3)`` is accepted);
            ignored for other kinds.
    """

    path: Path
    num_frames: int
    fps: float | None
    height: int
    width: int

    def __init__(self, path: str | os.PathLike, frame_shape: tuple[int, int] | None = None) -> None:
        self.path = Path(path)
        self.fps = None
        self.frames_decoded = 0
        self._container: Any = None
        self._pil: Image.Image | None = None
        self._strip: np.ndarray | None = None
        self._files: list[Path] = []
        shape = _check_shape(frame_shape)
        suffix = self.path.suffix.lower()

        if not self.path.exists():
            raise VideoReadError(
                f"{self.path}: no such file or folder. Check the path; {_SUPPORTED_HINT}."
            )
        if self.path.is_dir():
            self._kind = "folder"
            self._open_folder()
        elif suffix in VIDEO_EXTENSIONS:
            self._kind = "video"
            self._open_video()
        elif suffix in GIF_EXTENSIONS:
            self._kind = "gif"
            self._open_gif()
        elif suffix in IMAGE_EXTENSIONS:
            self._kind = "strip"
            self._open_strip(shape)
        else:
            raise VideoReadError(f"{self.path}: unsupported suffix {self.path.suffix!r}; {_SUPPORTED_HINT}.")
        if self.num_frames <= 0:
            raise VideoReadError(
                f"{self.path}: contains no frames. Re-export the video or remove it from the dataset."
            )

    # -- opening -------------------------------------------------------------------------

    def _open_folder(self) -> None:
        self._files = list_frame_files(self.path)
        if not self._files:
            raise VideoReadError(
                f"{self.path}: folder contains no frames (no .png/.jpg files). Put the frames of "
                f"the video in it (e.g. 0000000.png, 0000001.png, ...) or remove it from the dataset."
            )
        self.num_frames = len(self._files)
        first = read_image(self._files[0])
        self.height, self.width = first.shape[:2]

    def _open_strip(self, shape: tuple[int, int] | None) -> None:
        if shape is None:
            raise VideoReadError(
                f"{self.path}: a .png/.jpg is read as a horizontal strip of frames and needs "
                f"frame_shape=(H, W) (e.g. data.frame_shape: [64, 64]); use read_image() for a single image."
            )
        strip = read_image(self.path)
        h, w = shape
        if strip.shape[0] != h or w <= 0 or strip.shape[1] % w != 0:
            raise VideoReadError(
                f"{self.path}: strip of size {strip.shape[0]}x{strip.shape[1]} (HxW) does not split into "
                f"frames of {h}x{w}: its height must equal frame_shape[0] and its width must be a "
                f"multiple of frame_shape[1]. Fix frame_shape or re-export the strip."
            )
        self._strip = strip
        self.height, self.width = h, w
        self.num_frames = strip.shape[1] // w

    def _open_gif(self) -> None:
        try:
            self._pil = Image.open(self.path)
            self.num_frames = int(getattr(self._pil, "n_frames", 1))
            self.width, self.height = self._pil.size
            duration = self._pil.info.get("duration")
        except (OSError, SyntaxError, ValueError, EOFError) as err:
            self.close()
            raise VideoReadError(f"{self.path}: cannot be read as a GIF ({err}); {_REENCODE_HINT}.") from err
        self.fps = 1000.0 / float(duration) if duration else None

    def _av_error(self, err: Exception, what: str = "cannot be decoded by PyAV") -> VideoReadError:
        return VideoReadError(f"{self.path}: {what} ({err}). The file is corrupt or truncated; {_REENCODE_HINT}.")

    def _open_video(self) -> None:
        try:
            self._container = av.open(str(self.path))
            if not self._container.streams.video:
                raise VideoReadError(f"{self.path}: has no video stream; {_REENCODE_HINT}.")
            stream = self._container.streams.video[0]
            self._stream = stream
            self.width = stream.codec_context.width
            self.height = stream.codec_context.height
            avg = stream.average_rate or stream.guessed_rate
            self.fps = float(avg) if avg else None
            self._rate: Fraction | None = stream.guessed_rate or stream.average_rate
            self._time_base: Fraction = stream.time_base
            self._start = stream.start_time or 0
            self._table: list[int] | None = None
            self._sequential = False
            self._keyframes: set[int] = set()  # frame indices known to be keyframes
            self._keyframe_pts: list[int] = []
            fmt = self._container.format.name
            trusted = stream.frames > 0 and ("mp4" in fmt or "mov" in fmt) and self._rate
            if fmt == "avi":
                # AVI stores no presentation timestamps (B-frames come out with made-up pts):
                # find frames by decoding from the start and counting.
                self.num_frames = self._count_packets()
                self._sequential = True
            elif trusted:
                # mp4/mov know their sample count exactly; pts map to indices by arithmetic.
                self.num_frames = int(stream.frames)
            else:
                self._build_table(rewind=False)
        except VideoReadError:
            self.close()
            raise
        except (av.FFmpegError, OSError) as err:
            self.close()
            raise self._av_error(err, "cannot be opened by PyAV") from err
        if self.width <= 0 or self.height <= 0:
            self.close()
            raise VideoReadError(f"{self.path}: video stream has no frame size; {_REENCODE_HINT}.")

    def _build_table(self, rewind: bool = True) -> None:
        """Demux (no decoding) every packet: the frame count and the sorted pts of all frames.

        Packets without pts (some AVI files) switch the reader to sequential mode: frames are
        then found by decoding from the start and counting.
        """
        if rewind:  # a read may have left the demuxer anywhere
            self._container.seek(0, backward=True)
        self._keyframe_pts = []
        self._keyframes.clear()  # indices found by arithmetic may not be table indices
        pts: list[int] = []
        count = 0  # packets with data = frames (VP9 superframes hold their hidden frames)
        for packet in self._container.demux(self._stream):
            if packet.size == 0:  # the demuxer's final flush packet
                continue
            count += 1
            if packet.pts is not None:
                pts.append(packet.pts)
                if packet.is_keyframe:
                    self._keyframe_pts.append(packet.pts)
        self.num_frames = count
        if len(pts) < count:
            self._sequential = True
            self._table = None
        else:
            self._table = sorted(pts)
            self._keyframes.update(bisect.bisect_left(self._table, p) for p in self._keyframe_pts)

    def _count_packets(self) -> int:
        return sum(1 for packet in self._container.demux(self._stream) if packet.size > 0)

    # -- timestamps ------------------------------------------------------------------------

    def _pts_of(self, index: int) -> int:
        """Presentation timestamp (stream time_base units) of frame ``index``."""
        if self._table is not None:
            return self._table[index]
        assert self._rate is not None
        return self._start + int(round(Fraction(index) / (self._rate * self._time_base)))

    def _index_of(self, pts: int | None) -> int:
        if pts is None:
            raise _TimestampMismatch
        if self._table is not None:
            i = bisect.bisect_left(self._table, pts)
            if i < len(self._table) and self._table[i] == pts:
                return i
            # Decoder pts not among packet pts (rare): take the nearest frame.
            if i == 0:
                return 0
            if i >= len(self._table):
                return len(self._table) - 1
            return i if self._table[i] - pts < pts - self._table[i - 1] else i - 1
        assert self._rate is not None
        t = (pts - self._start) * self._time_base * self._rate
        idx = round(t)
        if abs(t - idx) > Fraction(1, 4) or not 0 <= idx < self.num_frames:
            raise _TimestampMismatch
        return int(idx)

    # -- decoding ----------------------------------------------------------------------------

    def _seek_to(self, index: int) -> None:
        if index <= 0:
            # Before any keyframe: go to the very start of the stream.
            self._container.seek(min(self._pts_of(0), self._start), stream=self._stream, backward=True)
        else:
            self._container.seek(self._pts_of(index), stream=self._stream, backward=True)

    def _decode_from(self, target: int) -> Iterator[tuple[int, Any]]:
        """Yield ``(index, av.VideoFrame)`` for frames ``>= target`` in display order.

        Seeks to the keyframe at or before ``target``; if the demuxer lands after ``target``
        (possible with B-frames and seek-by-dts), falls back to the start of the stream.
        """
        if self._sequential:
            # No timestamps to seek by: reopen and count frames from the start.
            self._container.close()
            self._container = av.open(str(self.path))
            self._stream = self._container.streams.video[0]
            for i, frame in enumerate(self._container.decode(self._stream)):
                self.frames_decoded += 1
                if i >= target:
                    yield i, frame
            return
        seek_index = target
        while True:
            self._seek_to(seek_index)
            last = -1
            restart = False
            for frame in self._container.decode(self._stream):
                self.frames_decoded += 1
                idx = self._index_of(frame.pts)
                if last == -1 and idx > target and seek_index > 0:
                    restart = True
                    break
                if idx <= last or (last != -1 and idx != last + 1):
                    # Not constant frame rate after all (arithmetic mode), or pts that do not
                    # follow display order (table mode, e.g. AVI with B-frames).
                    raise _TimestampMismatch
                if frame.key_frame:
                    self._keyframes.add(idx)
                last = idx
                if idx >= target:
                    yield idx, frame
            if not restart:
                return
            seek_index = 0

    def _should_reseek(self, pos: int, target: int) -> bool:
        """Whether seeking again beats decoding forward from frame ``pos`` to ``target``."""
        if self._sequential:
            return False  # a "seek" would restart from frame 0
        if any(pos < k <= target for k in self._keyframes):
            return True  # the seek lands at or after that keyframe, past pos
        keys = sorted(self._keyframes)
        gaps = [b - a for a, b in zip(keys, keys[1:])]
        return target - pos > (2 * max(gaps) if gaps else _DEFAULT_RESEEK_GAP)

    def _read_video(self, wanted: list[int]) -> dict[int, np.ndarray]:
        """Decode the ascending unique ``wanted`` indices -> {index: H x W x 3 uint8}."""
        out: dict[int, np.ndarray] = {}
        pending = list(wanted)
        while pending:
            gen = self._decode_from(pending[0])
            try:
                for idx, frame in gen:
                    if idx < pending[0]:
                        continue
                    if idx > pending[0]:
                        raise VideoReadError(
                            f"{self.path}: frame {pending[0]} is missing from the decoded stream "
                            f"(timestamps skip it); {_REENCODE_HINT}."
                        )
                    out[idx] = frame.to_ndarray(format="rgb24")
                    pending.pop(0)
                    if not pending or self._should_reseek(idx, pending[0]):
                        break
                else:
                    if pending:
                        raise VideoReadError(
                            f"{self.path}: frame {pending[0]} of {self.num_frames} could not be decoded: "
                            f"the file ends early (truncated?); {_REENCODE_HINT}."
                        )
            finally:
                gen.close()
        return out

    def _video_call(self, fn: Any, *args: Any) -> Any:
        """Run a decoding function; on a pts mismatch switch to the packet-pts table and retry."""
        try:
            try:
                return fn(*args)
            except _TimestampMismatch:
                self._build_table(rewind=True)
                try:
                    return fn(*args)
                except _TimestampMismatch:
                    self._sequential = True
                    return fn(*args)
        except (av.FFmpegError, OSError) as err:
            raise self._av_error(err) from err

    # -- public API -------------------------------------------------------------------------

    def _check_indices(self, indices: Sequence[int]) -> list[int]:
        if isinstance(indices, torch.Tensor):
            indices = indices.tolist()
        arr = np.asarray(indices).reshape(-1)
        if arr.size and not np.issubdtype(arr.dtype, np.integer):
            raise TypeError(f"{self.path}: frame indices must be integers, got {arr.dtype}")
        idx = [int(i) for i in arr.tolist()]
        bad = [i for i in idx if not 0 <= i < self.num_frames]
        if bad:
            raise VideoReadError(
                f"{self.path}: frame index {bad[0]} out of range; the video has {self.num_frames} "
                f"frames (valid indices 0..{self.num_frames - 1}). Check the sampler / pairs file."
            )
        return idx

    def read(self, indices: Sequence[int]) -> np.ndarray:
        """Read the frames at ``indices`` (any order, repeats allowed; no negative indices).

        Returns:
            N x H x W x 3 uint8, in the order of ``indices``.
        """
        idx = self._check_indices(indices)
        if not idx:
            return np.zeros((0, self.height, self.width, 3), np.uint8)
        wanted = sorted(set(idx))
        frames = self._read_sorted(wanted)
        return np.stack([frames[i] for i in idx])

    def _read_sorted(self, wanted: list[int]) -> dict[int, np.ndarray]:
        if self._kind == "folder":
            out = {}
            for i in wanted:
                img = read_image(self._files[i])
                if img.shape[:2] != (self.height, self.width):
                    raise VideoReadError(
                        f"{self._files[i]}: frame size {img.shape[0]}x{img.shape[1]} differs from the first "
                        f"frame of {self.path} ({self.height}x{self.width}); resize all frames to one size."
                    )
                out[i] = img
            return out
        if self._kind == "strip":
            assert self._strip is not None
            w = self.width
            return {i: np.ascontiguousarray(self._strip[:, i * w : (i + 1) * w]) for i in wanted}
        if self._kind == "gif":
            return self._read_gif(wanted)
        return self._video_call(self._read_video, wanted)

    def _read_gif(self, wanted: list[int]) -> dict[int, np.ndarray]:
        assert self._pil is not None
        out = {}
        try:
            for i in wanted:  # ascending: Pillow seeks forward without restarting
                self._pil.seek(i)
                out[i] = _pil_to_rgb(self._pil)
        except (OSError, EOFError, ValueError) as err:
            raise VideoReadError(f"{self.path}: GIF frame cannot be decoded ({err}); {_REENCODE_HINT}.") from err
        return out

    def read_all(self) -> np.ndarray:
        """All frames, T x H x W x 3 uint8."""
        chunks = [frames for _, frames in self.iter_chunks(max(self.num_frames, 1))]
        return np.concatenate(chunks, axis=0)

    def iter_chunks(self, chunk_size: int) -> Iterator[tuple[int, np.ndarray]]:
        """Yield ``(start, frames)`` with frames ``chunk_size x H x W x 3`` uint8 (last may be shorter),
        decoding the video once from the start."""
        if chunk_size <= 0:
            raise ValueError(f"chunk_size must be positive, got {chunk_size}")
        if self._kind != "video":
            for start in range(0, self.num_frames, chunk_size):
                stop = min(start + chunk_size, self.num_frames)
                frames = self._read_sorted(list(range(start, stop)))
                yield start, np.stack([frames[i] for i in range(start, stop)])
            return
        yield from self._iter_video_chunks(chunk_size)

    def _iter_video_chunks(self, chunk_size: int) -> Iterator[tuple[int, np.ndarray]]:
        buf: list[np.ndarray] = []
        start = 0
        expected = 0  # next frame index to emit
        retries = 0
        while expected < self.num_frames:
            gen = self._decode_from(expected)
            try:
                for idx, frame in gen:
                    if idx != expected:
                        raise VideoReadError(
                            f"{self.path}: frame {expected} is missing from the decoded stream; {_REENCODE_HINT}."
                        )
                    buf.append(frame.to_ndarray(format="rgb24"))
                    expected += 1
                    if len(buf) == chunk_size:
                        yield start, np.stack(buf)
                        start, buf = expected, []
                    if expected == self.num_frames:
                        break
                else:
                    raise VideoReadError(
                        f"{self.path}: only {expected} of {self.num_frames} frames could be decoded: "
                        f"the file ends early (truncated?); {_REENCODE_HINT}."
                    )
            except _TimestampMismatch:
                # Frames emitted so far are right (checked one by one); resume by the exact table.
                retries += 1
                if retries == 1:
                    self._build_table(rewind=True)
                elif retries == 2:
                    self._sequential = True
                else:
                    raise VideoReadError(f"{self.path}: frame timestamps are inconsistent; {_REENCODE_HINT}.")
            except (av.FFmpegError, OSError) as err:
                raise self._av_error(err) from err
            finally:
                gen.close()
        if buf:
            yield start, np.stack(buf)

    def close(self) -> None:
        """Release the file handles (idempotent)."""
        if self._container is not None:
            self._container.close()
            self._container = None
        if self._pil is not None:
            self._pil.close()
            self._pil = None

    def __enter__(self) -> VideoReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return (
            f"VideoReader({str(self.path)!r}, kind={self._kind}, num_frames={self.num_frames}, "
            f"size={self.height}x{self.width}, fps={self.fps})"
        )


def read_video(path: str | os.PathLike, frame_shape: tuple[int, int] | None = None) -> np.ndarray:
    """Read a whole video. Returns T x H x W x 3 uint8."""
    with VideoReader(path, frame_shape) as reader:
        return reader.read_all()


def read_frames(
    path: str | os.PathLike, indices: Sequence[int], frame_shape: tuple[int, int] | None = None
) -> np.ndarray:
    """Read some frames (any order, repeats allowed). Returns N x H x W x 3 uint8."""
    with VideoReader(path, frame_shape) as reader:
        return reader.read(indices)


def count_frames(path: str | os.PathLike, frame_shape: tuple[int, int] | None = None) -> int:
    """Number of frames T of a video, without decoding it where the format allows."""
    with VideoReader(path, frame_shape) as reader:
        return reader.num_frames


# --------------------------------------------------------------------------- writing


def _temp_sibling(path: Path, suffix: str) -> Path:
    """A hidden, unique name beside ``path`` (same filesystem, so os.replace is atomic)."""
    return path.parent / f".{path.name}.{uuid.uuid4().hex[:12]}.tmp{suffix}"


def atomic_write(path: str | os.PathLike, write: Callable[[BinaryIO], None]) -> Path:
    """Write a file through ``write(handle)`` into a hidden sibling, then rename it into place.

    A failed or interrupted write never leaves a half file, and an existing file stays intact
    until the new one is complete. Used for sidecars, pretrained models and weight indexes.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temp_sibling(path, "")
    try:
        with open(tmp, "wb") as handle:
            write(handle)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def _pad_even(frames: np.ndarray, path: Path) -> np.ndarray:
    h, w = frames.shape[1:3]
    if h % 2 == 0 and w % 2 == 0:
        return frames
    warnings.warn(
        f"{path}: frame size {h}x{w} is odd; yuv420p needs even sizes, so the video is padded to "
        f"{h + h % 2}x{w + w % 2} by repeating the last row/column. Crop or resize to even sizes to avoid this.",
        stacklevel=3,
    )
    return np.pad(frames, ((0, 0), (0, h % 2), (0, w % 2), (0, 0)), mode="edge")


def _fps_fraction(fps: float, path: Path) -> Fraction:
    if not fps or fps <= 0 or not np.isfinite(fps):
        raise AnimzooInputError(f"{path}: fps must be a positive number, got {fps}.")
    # 1001 keeps NTSC rates (30000/1001) exact and plain rates (25, 12.5) as they are.
    return Fraction(fps).limit_denominator(1001)


def _pick_codec(suffix: str, path: Path) -> str:
    candidates = _WEBM_CODECS if suffix == ".webm" else ("libx264",)
    for name in candidates:
        try:
            av.codec.Codec(name, "w")
            return name
        except Exception:  # codec not built into this FFmpeg
            continue
    raise AnimzooInputError(
        f"{path}: this PyAV/FFmpeg build has none of the encoders {candidates}; write .mp4 (libx264) "
        f"or a folder of frames instead, or install a PyAV wheel with these encoders."
    )


def _encode_video(tmp: Path, frames: np.ndarray, fps: Fraction, suffix: str, crf: int, gop: int, path: Path) -> None:
    codec = _pick_codec(suffix, path)
    frames = _pad_even(frames, path)
    # bitexact: no encoder version strings, dates or random segment ids -> same bytes each run.
    container = av.open(str(tmp), mode="w", format=_MUXERS[suffix], options={"fflags": "+bitexact"})
    try:
        stream = container.add_stream(codec, rate=fps)
        stream.width = frames.shape[2]
        stream.height = frames.shape[1]
        stream.pix_fmt = "yuv420p"
        ctx = stream.codec_context
        ctx.gop_size = int(gop)
        ctx.thread_count = 1  # multi-threaded encoders may split work differently run to run
        ctx.flags |= av.codec.context.Flags.bitexact
        if codec == "libx264":
            # x264's macroblock-tree rate control reads uninitialised memory on small or
            # non-16-aligned frames, so the same frames could give different bytes: turn it off.
            stream.options = {"crf": str(crf), "preset": "medium", "x264-params": "mbtree=0"}
        elif codec == "libvpx-vp9":
            ctx.bit_rate = 0  # constant quality mode
            stream.options = {"crf": str(min(max(crf, 0), 63)), "b": "0", "row-mt": "0"}
        else:  # VP8 needs a bit-rate cap with crf
            stream.options = {"crf": str(min(max(crf, 4), 63)), "b": "20M"}
        for i, rgb in enumerate(frames):
            vf = av.VideoFrame.from_ndarray(rgb, format="rgb24")
            vf.pts = i
            vf.time_base = 1 / fps
            container.mux(stream.encode(vf))
        container.mux(stream.encode(None))
    finally:
        container.close()


def _gif_palette(frames: np.ndarray) -> tuple[np.ndarray, list[np.ndarray]]:
    """One global palette for the clip: exact when it has <= 256 colours, else median cut.

    Returns ``(palette 256 x 4 ARGB uint8, [H x W uint8 index image per frame])``.
    """
    packed = (
        frames[..., 0].astype(np.uint32) << 16 | frames[..., 1].astype(np.uint32) << 8 | frames[..., 2]
    )
    colours = np.zeros(0, np.uint32)
    for f in packed:  # frame by frame so that colourful clips stop early
        colours = np.union1d(colours, np.unique(f))
        if colours.size > 256:
            break
    palette = np.zeros((256, 4), np.uint8)  # unused entries alpha 0: free for GIF transparency
    if colours.size <= 256:
        n = colours.size
        palette[:n, 0] = 255
        palette[:n, 1] = (colours >> 16) & 255
        palette[:n, 2] = (colours >> 8) & 255
        palette[:n, 3] = colours & 255
        return palette, [np.searchsorted(colours, f).astype(np.uint8) for f in packed]
    # Too many colours: median cut on a montage of up to 16 frames, no dithering (deterministic).
    pick = np.linspace(0, len(frames) - 1, min(16, len(frames))).round().astype(int)
    montage = Image.fromarray(np.concatenate([frames[i] for i in pick], axis=0))
    pal_img = montage.quantize(colors=256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE)
    rgb = np.asarray(pal_img.getpalette()[: 256 * 3], np.uint8).reshape(-1, 3)
    palette[: len(rgb), 0] = 255
    palette[: len(rgb), 1:] = rgb
    indices = [
        np.asarray(Image.fromarray(f).quantize(palette=pal_img, dither=Image.Dither.NONE)) for f in frames
    ]
    return palette, indices


def _encode_gif(tmp: Path, frames: np.ndarray, fps: Fraction) -> None:
    # PyAV's GIF encoder rather than Pillow: Pillow merges identical consecutive frames,
    # which would change the frame count.
    palette, indices = _gif_palette(frames)
    container = av.open(str(tmp), mode="w", format="gif", options={"fflags": "+bitexact"})
    try:
        stream = container.add_stream("gif", rate=fps)
        stream.width = frames.shape[2]
        stream.height = frames.shape[1]
        stream.pix_fmt = "pal8"
        stream.codec_context.thread_count = 1
        for i, idx in enumerate(indices):
            vf = av.VideoFrame.from_ndarray((np.ascontiguousarray(idx), palette), format="pal8")
            vf.pts = i
            vf.time_base = 1 / fps
            container.mux(stream.encode(vf))
        container.mux(stream.encode(None))
    finally:
        container.close()


def _save_pil(arr: np.ndarray, dest: Path, suffix: str) -> None:
    img = Image.fromarray(arr)
    if suffix == ".png":
        img.save(dest, format="PNG", compress_level=6)
    else:
        img.save(dest, format="JPEG", quality=95, subsampling=0)


def _replace_dir(tmp: Path, path: Path) -> None:
    """Move folder ``tmp`` to ``path``, replacing an existing folder without losing it on failure."""
    if not path.exists():
        os.replace(tmp, path)
        return
    if not path.is_dir():
        raise AnimzooInputError(f"{path}: exists and is not a folder; remove it or choose another path.")
    backup = _temp_sibling(path, ".old")
    os.replace(path, backup)
    try:
        os.replace(tmp, path)
    except BaseException:
        os.replace(backup, path)  # put the old frames back
        raise
    shutil.rmtree(backup, ignore_errors=True)


def write_video(
    path: str | os.PathLike,
    frames: np.ndarray | torch.Tensor,
    fps: float = 25.0,
    *,
    crf: int = 18,
    gop: int = 25,
) -> Path:
    """Write a video; the kind is chosen by the suffix of ``path``.

    * ``.mp4 .mov .mkv .avi``: H.264 (libx264, yuv420p, ``crf``, keyframe every ``gop`` frames),
    * ``.webm``: VP9 (or VP8 where this FFmpeg lacks VP9), same ``crf`` / ``gop``,
    * ``.gif``: one global palette (exact for clips of <= 256 colours),
    * ``.png`` / ``.jpg``: a horizontal strip of the frames,
    * no suffix: a folder of ``0000000.png, 0000001.png, ...``.

    Odd sizes are padded to even for the video codecs (see the module docstring). The write is
    atomic and deterministic (same frames, same arguments -> same bytes).

    Args:
        path: destination.
        frames: ``T x H x W x 3`` uint8 array, or ``T x 3 x H x W`` float tensor in [0, 1].
        fps: frames per second (ignored by strips and folders).
        crf: constant rate factor (lower = better quality).
        gop: maximum keyframe interval; small values make random access cheap.

    Returns:
        ``path`` as a :class:`~pathlib.Path`.
    """
    path = Path(path)
    arr = _as_uint8_frames(frames, path)
    suffix = path.suffix.lower()
    if suffix and suffix not in VIDEO_EXTENSIONS + GIF_EXTENSIONS + IMAGE_EXTENSIONS:
        raise AnimzooInputError(
            f"{path}: unsupported suffix {path.suffix!r}; use one of "
            f"{', '.join(VIDEO_EXTENSIONS + GIF_EXTENSIONS + IMAGE_EXTENSIONS)}, or a path without a "
            f"suffix for a folder of frames."
        )
    if gop < 1:
        raise AnimzooInputError(f"{path}: gop must be >= 1, got {gop}.")
    path.parent.mkdir(parents=True, exist_ok=True)

    if not suffix:
        tmp_dir = _temp_sibling(path, "")
        tmp_dir.mkdir()
        try:
            for i, frame in enumerate(arr):
                _save_pil(frame, tmp_dir / f"{i:07d}.png", ".png")
            _replace_dir(tmp_dir, path)
        except BaseException:
            shutil.rmtree(tmp_dir, ignore_errors=True)
            raise
        return path

    tmp = _temp_sibling(path, suffix)
    try:
        if suffix in VIDEO_EXTENSIONS:
            _encode_video(tmp, arr, _fps_fraction(fps, path), suffix, crf, gop, path)
        elif suffix in GIF_EXTENSIONS:
            _encode_gif(tmp, arr, _fps_fraction(fps, path))
        else:
            _save_pil(np.concatenate(list(arr), axis=1), tmp, suffix)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def write_image(path: str | os.PathLike, image: np.ndarray | torch.Tensor) -> Path:
    """Write one image (``.png`` lossless, ``.jpg`` quality 95) atomically.

    Args:
        path: destination with a ``.png`` / ``.jpg`` / ``.jpeg`` suffix.
        image: ``H x W x 3`` uint8 array or ``3 x H x W`` float tensor in [0, 1].
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in IMAGE_EXTENSIONS:
        raise AnimzooInputError(f"{path}: images are written as {', '.join(IMAGE_EXTENSIONS)}; change the suffix.")
    if isinstance(image, torch.Tensor) and image.ndim == 3 and image.shape[0] == 3:
        image = tensor_to_frames(image)
    arr = _as_uint8_frames(np.asarray(image)[None], path)[0]
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temp_sibling(path, suffix)
    try:
        _save_pil(arr, tmp, suffix)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path
