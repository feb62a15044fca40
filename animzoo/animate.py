"""Animate a source image with a driving video: the notebook API and ``animzoo animate``.

    import animzoo
    animator = animzoo.Animator.from_pretrained("monkeynet.synthetic64")
    frames = animator.animate("face.png", "driving.mp4", relative=True)   # T x 3 x 64 x 64 in [0, 1]

Choices worth knowing:

* **Size.** A model works at the frame size it was trained at (``image_size`` from its pretrained
  config / checkpoint, or the ``image_size`` argument). A source or driving video of another size
  is **resized** to it (bilinear, antialiased) **with a warning** saying from what to what;
  non-square inputs are stretched, so crop a square around the subject first for good results.
  The output has the model's size. Without a known size, the source's size is used and the driving
  frames are resized to it.
* **Inputs.** ``source``: an image path (a video path gives its first frame), a numpy array
  ``H x W``, ``H x W x {1, 3, 4}`` (uint8, or float in [0, 1]), a tensor ``{1, 3, 4} x H x W``
  (float in [0, 1] or uint8), or a PIL image. Grayscale is repeated to RGB; **RGBA is composited
  on white** (as :func:`animzoo.io.read_image` does). ``driving``: any video path
  :mod:`animzoo.io` reads, a numpy ``T x H x W x {1, 3, 4}`` array or a ``T x 3 x H x W`` tensor;
  a single frame (``H x W x 3`` / ``3 x H x W``) is a one-frame video and gives one output frame.
* **Absolute motion** (default): every driving frame goes through ``module.animate``.
* **Relative motion** (``relative=True``, first-order-model's ``--relative``): the source keypoints
  move by the driving keypoints' displacement from a reference driving frame (frame 0, or the best
  frame), through the method's ``extract_motion`` / ``animate_with_motion`` and
  :func:`animzoo.geometry.keypoints.normalize_kp`; ``adapt_scale=True`` scales the displacement by
  ``sqrt(hull area(source keypoints) / hull area(reference keypoints))``. Methods without the
  motion API refuse ``relative`` / ``find_best_frame`` with a clear error.
* **Best frame** (``find_best_frame=True``): the reference is the driving frame whose keypoints,
  centred and divided by the square root of their convex-hull area, are closest (sum of squared
  differences) to the source's. It uses **the method's own keypoints**, not an external face
  landmark detector (first-order-model's demo uses face_alignment). first-order-model animates
  forward from that frame and backward from it to frame 0 and stitches the two; animzoo animates
  each frame independently of the others, so that is exactly "every frame relative to the best
  frame, in the driving order": the output keeps the driving order and length. The chosen index
  is in ``animator.last_info["best_frame"]``.
* **Landmark-driven methods** (``motion_kind = "landmarks"``, e.g. sparse2dense) are driven by a
  driving video (through their landmark detector, ``extract_motion``) or by a landmark sequence
  with no video at all: ``animate(source, driving_landmarks=T x L x 2 pixels or "x.npy",
  landmarks_size=(H, W), source_landmarks=...)``. Pixels are converted to normalised coordinates
  with the align_corners=True rule of :func:`animzoo.geometry.grid.pixel_to_normalized`. They
  always go through ``extract_motion`` / ``animate_with_motion`` (never ``module.animate``, which
  expects dataset landmarks in its batch). Use ``relative=True`` for the landmarks of another face
  (an audio-to-landmarks model's, ...): absolute landmarks impose that face's shape and position.

Everything runs batched over driving frames under ``torch.no_grad()`` on the animator's device;
results are collected on the CPU.
"""

from __future__ import annotations

import argparse
import os
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from animzoo.errors import AnimzooInputError

__all__ = ["Animator", "draw_landmarks", "prepare_image", "run_animate"]

ProgressFn = Callable[[int, int], None]


# --------------------------------------------------------------------------- inputs


def _composite(arr: np.ndarray | Tensor, channel_axis: int) -> Any:
    """float array/tensor in [0, 1] with 1, 3 or 4 channels on ``channel_axis`` -> 3 channels (RGBA on white)."""
    channels = arr.shape[channel_axis]
    if channels == 3:
        return arr
    if channels == 1:
        reps = [1] * arr.ndim
        reps[channel_axis] = 3
        return arr.repeat(*reps) if isinstance(arr, Tensor) else np.repeat(arr, 3, axis=channel_axis)
    if isinstance(arr, Tensor):
        rgb, alpha = arr.narrow(channel_axis, 0, 3), arr.narrow(channel_axis, 3, 1)
    else:
        rgb = np.take(arr, [0, 1, 2], axis=channel_axis)
        alpha = np.take(arr, [3], axis=channel_axis)
    return rgb * alpha + (1.0 - alpha)


def _float01(arr: np.ndarray, what: str) -> np.ndarray:
    if arr.dtype == np.uint8:
        return arr.astype(np.float32) / 255.0
    if arr.dtype == bool:
        return arr.astype(np.float32)
    if np.issubdtype(arr.dtype, np.floating):
        if arr.size and (np.nanmin(arr) < -1e-3 or np.nanmax(arr) > 1 + 1e-3):
            raise AnimzooInputError(
                f"{what}: float values must lie in [0, 1], got [{np.nanmin(arr):.3g}, {np.nanmax(arr):.3g}]; "
                f"divide by 255 or pass uint8."
            )
        return np.clip(arr.astype(np.float32), 0.0, 1.0)
    raise AnimzooInputError(f"{what}: unsupported dtype {arr.dtype}; pass uint8 (0..255) or float in [0, 1].")


def _tensor01(t: Tensor, what: str) -> Tensor:
    t = t.detach()
    if t.dtype == torch.uint8:
        return t.float() / 255.0
    if not t.is_floating_point():
        raise AnimzooInputError(f"{what}: unsupported dtype {t.dtype}; pass float in [0, 1] or uint8.")
    if t.numel() and (float(t.min()) < -1e-3 or float(t.max()) > 1 + 1e-3):
        raise AnimzooInputError(
            f"{what}: values must lie in [0, 1], got [{float(t.min()):.3g}, {float(t.max()):.3g}]."
        )
    return t.float().clamp(0.0, 1.0)


def prepare_image(source: Any) -> Tensor:
    """Any supported source (see the module docstring) -> ``1 x 3 x H x W`` float in [0, 1] on the CPU."""
    from animzoo.io import (
        GIF_EXTENSIONS,
        VIDEO_EXTENSIONS,
        _pil_to_rgb,
        read_frames,
        read_image,
    )

    what = "source image"
    if isinstance(source, (str, os.PathLike)):
        path = Path(source).expanduser()
        if path.suffix.lower() in VIDEO_EXTENSIONS + GIF_EXTENSIONS or path.is_dir():
            arr = read_frames(path, [0])[0]  # a video as source: its first frame
        else:
            arr = read_image(path)
        return torch.from_numpy(np.array(arr)).permute(2, 0, 1)[None].float() / 255.0
    if hasattr(source, "mode") and hasattr(source, "convert"):  # a PIL image
        source = _pil_to_rgb(source)
    if isinstance(source, np.ndarray):
        arr = source
        if arr.ndim == 2:
            arr = arr[..., None]
        if arr.ndim != 3 or arr.shape[-1] not in (1, 3, 4) or 0 in arr.shape:
            raise AnimzooInputError(
                f"{what}: numpy arrays must be H x W or H x W x {{1, 3, 4}}, got shape {source.shape}."
            )
        rgb = _composite(_float01(arr, what), channel_axis=-1)
        return torch.from_numpy(np.ascontiguousarray(rgb)).permute(2, 0, 1)[None].float()
    if isinstance(source, Tensor):
        t = source
        if t.ndim == 4 and t.shape[0] == 1:
            t = t[0]
        if t.ndim == 2:
            t = t[None]
        if t.ndim != 3 or t.shape[0] not in (1, 3, 4) or 0 in t.shape:
            raise AnimzooInputError(
                f"{what}: tensors must be {{1, 3, 4}} x H x W (or 1 x 3 x H x W), got shape {tuple(source.shape)}."
            )
        return _composite(_tensor01(t.cpu(), what), channel_axis=0)[None].contiguous()
    raise AnimzooInputError(
        f"{what}: unsupported type {type(source).__name__}; pass a path, a numpy array, a tensor or a PIL image."
    )


class _Driving:
    """A driving video from a path, an array or a tensor, read in batches (more than once if needed)."""

    def __init__(self, driving: Any, frame_shape: tuple[int, int] | None = None) -> None:
        self.path: Path | None = None
        self.fps: float | None = None
        self._frames: Tensor | None = None  # T x 3 x H x W float, when given in memory
        what = "driving video"
        if isinstance(driving, (str, os.PathLike)):
            from animzoo.io import VideoReader

            self.path = Path(driving).expanduser()
            self._frame_shape = frame_shape
            with VideoReader(self.path, frame_shape) as reader:
                self.num_frames, self.height, self.width = reader.num_frames, reader.height, reader.width
                self.fps = reader.fps
            return
        if isinstance(driving, np.ndarray):
            arr = driving
            if arr.ndim == 3 and arr.shape[-1] in (3, 4):
                arr = arr[None]  # one frame
            if arr.ndim == 3:
                arr = arr[..., None]  # T x H x W grayscale
            if arr.ndim != 4 or arr.shape[-1] not in (1, 3, 4) or 0 in arr.shape:
                raise AnimzooInputError(
                    f"{what}: numpy arrays must be T x H x W x {{1, 3, 4}}, got shape {driving.shape}."
                )
            frames = torch.from_numpy(np.ascontiguousarray(arr))
            if frames.dtype == torch.uint8:
                frames = frames.permute(0, 3, 1, 2)  # convert per batch later (saves memory)
            else:
                frames = torch.from_numpy(np.ascontiguousarray(_float01(arr, what))).permute(0, 3, 1, 2)
            self._frames = frames
        elif isinstance(driving, Tensor):
            t = driving.detach()
            if t.ndim == 3:
                t = t[None]
            if t.ndim != 4 or t.shape[1] not in (1, 3, 4) or 0 in t.shape:
                raise AnimzooInputError(
                    f"{what}: tensors must be T x 3 x H x W, got shape {tuple(driving.shape)}."
                )
            if t.dtype != torch.uint8:
                t = _tensor01(t, what)
            self._frames = t
        else:
            raise AnimzooInputError(
                f"{what}: unsupported type {type(driving).__name__}; pass a video path, a numpy array or a tensor."
            )
        self.num_frames, self.height, self.width = self._frames.shape[0], *self._frames.shape[2:]

    def batches(self, batch_size: int) -> Iterator[Tensor]:
        """Yield B x 3 x H x W float [0, 1] CPU tensors in order."""
        if self.path is not None:
            from animzoo.io import VideoReader

            with VideoReader(self.path, self._frame_shape) as reader:
                for _, chunk in reader.iter_chunks(batch_size):
                    yield torch.from_numpy(chunk).permute(0, 3, 1, 2).float() / 255.0
            return
        assert self._frames is not None
        for start in range(0, self.num_frames, batch_size):
            chunk = self._frames[start : start + batch_size].cpu()
            chunk = chunk.float() / 255.0 if chunk.dtype == torch.uint8 else chunk.float()
            yield _composite(chunk, channel_axis=1)


def resize_frames(frames: Tensor, size: tuple[int, int]) -> Tensor:
    """B x 3 x h x w -> B x 3 x H x W, bilinear (antialiased when shrinking), clamped to [0, 1]."""
    if tuple(frames.shape[-2:]) == tuple(size):
        return frames
    shrink = size[0] < frames.shape[-2] or size[1] < frames.shape[-1]
    out = F.interpolate(frames, size=size, mode="bilinear", align_corners=False, antialias=shrink)
    return out.clamp_(0.0, 1.0)


# --------------------------------------------------------------------------- motion helpers


def _batch_motion(motion: dict[str, Any], start: int, stop: int) -> dict[str, Any]:
    return {k: v[start:stop] if isinstance(v, Tensor) else v for k, v in motion.items()}


def _expand_motion(motion: dict[str, Any], batch: int) -> dict[str, Any]:
    return {
        k: v.expand(batch, *v.shape[1:]) if isinstance(v, Tensor) and v.ndim and v.shape[0] == 1 else v
        for k, v in motion.items()
    }


def normalized_keypoints(kp: Tensor) -> Tensor:
    """B x K x 2 keypoints centred on their mean and divided by sqrt(convex hull area)."""
    from animzoo.geometry.keypoints import convex_hull_area

    centred = kp - kp.mean(dim=1, keepdim=True)
    area = convex_hull_area(kp).clamp(min=1e-12)
    return centred / area.sqrt()[:, None, None]


def _module_device(module: nn.Module) -> torch.device:
    for tensor in list(module.parameters()) + list(module.buffers()):
        return tensor.device
    return torch.device("cpu")


def _module_dtype(module: nn.Module) -> torch.dtype:
    for param in module.parameters():
        if param.is_floating_point():
            return param.dtype
    return torch.float32


def _module_image_size(module: nn.Module) -> int | None:
    from animzoo.hub import _default_image_size

    return _default_image_size(module)


def _method_label(module: nn.Module) -> str:
    try:
        from animzoo.registry import method_name_of

        name = method_name_of(module)
    except ImportError:  # pragma: no cover
        name = None
    return name or type(module).__name__


def _has_motion_api(module: nn.Module) -> bool:
    """True when the class implements extract_motion and animate_with_motion (not the base's stubs)."""
    try:
        from animzoo.methods.base import AnimationModule
    except ImportError:  # pragma: no cover - the base class always exists in a release
        AnimationModule = None
    for name in ("extract_motion", "animate_with_motion"):
        impl = getattr(type(module), name, None)
        if not callable(impl):
            return False
        if AnimationModule is not None and impl is getattr(AnimationModule, name, None):
            return False
    return True


@contextmanager
def _progress(progress: bool | ProgressFn, total: int, description: str) -> Iterator[ProgressFn]:
    if callable(progress):
        yield progress
        return
    if not progress:
        yield lambda done, total: None
        return
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TimeRemainingColumn,
    )

    with Progress(
        "[progress.description]{task.description}", BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
        transient=True,
    ) as bar:
        task = bar.add_task(description, total=total)
        yield lambda done, total: bar.update(task, completed=done, total=total)


# --------------------------------------------------------------------------- landmark sequences


def _read_landmarks(
    landmarks: Any,
    what: str,
    *,
    single: bool = False,
    num_landmarks: int | None = None,
    method: str = "the method",
) -> tuple[np.ndarray, str]:
    """Landmarks from a ``.npy`` path, a numpy array or a tensor, checked.

    Args:
        landmarks: pixel coordinates (x, y): ``T x L x 2`` (a sequence), or with ``single``
            ``L x 2`` / ``1 x L x 2`` (one image), or the path of a ``.npy`` file holding them.
        what: ``"driving landmarks"`` / ``"source landmarks"``, for messages.
        single: one image's landmarks (the source's) rather than a sequence.
        num_landmarks: the method's landmark count ``L``, when it declares one.
        method: the method's name, for messages.

    Returns:
        ``(T x L x 2 float32 pixels, label)`` (``1 x L x 2`` with ``single``); ``label`` names
        ``what`` and the file (when from a file) for later messages.

    Raises:
        AnimzooInputError: unreadable file, wrong type / dtype / shape, no frames or points,
            ``L != num_landmarks``, NaN or inf (naming the frames).
    """
    expected = "L x 2 (or 1 x L x 2)" if single else "T x L x 2 (frames x landmarks x (x, y))"
    save_fix = f"save a float array of {expected} pixel coordinates with numpy.save(path, landmarks)"
    label = what
    if isinstance(landmarks, (str, os.PathLike)):
        path = Path(landmarks).expanduser()
        label = f"{what} {path}"
        if not path.is_file():
            raise AnimzooInputError(f"{label}: no such file; check the path.")
        if path.suffix.lower() != ".npy":
            raise AnimzooInputError(f"{label}: not a .npy file; {save_fix}.")
        try:
            arr = np.load(path, allow_pickle=False)
        except Exception as err:  # numpy raises ValueError / OSError / EOFError for broken files
            raise AnimzooInputError(f"{label}: not a readable .npy file ({err}); {save_fix}.") from err
        if not isinstance(arr, np.ndarray):  # pragma: no cover - np.load on a .npz despite the suffix
            raise AnimzooInputError(f"{label}: holds several arrays (an .npz); {save_fix}.")
    elif isinstance(landmarks, Tensor):
        if not (landmarks.is_floating_point() or landmarks.dtype in (torch.int16, torch.int32, torch.int64, torch.uint8)):
            raise AnimzooInputError(f"{label}: unsupported dtype {landmarks.dtype}; pass float pixel coordinates.")
        arr = landmarks.detach().cpu().float().numpy()
    elif isinstance(landmarks, (np.ndarray, list, tuple)):
        arr = np.asarray(landmarks)
    else:
        raise AnimzooInputError(
            f"{label}: unsupported type {type(landmarks).__name__}; pass a .npy path, a numpy array or a tensor."
        )
    if arr.dtype.kind not in "fiu":
        raise AnimzooInputError(f"{label}: has dtype {arr.dtype}, expected float pixel coordinates; {save_fix}.")
    shape = tuple(arr.shape)
    if single and arr.ndim == 3 and shape[0] == 1:
        arr = arr[0]
    if single and (arr.ndim != 2 or arr.shape[-1] != 2):
        raise AnimzooInputError(f"{label}: has shape {shape}, expected {expected}; {save_fix}.")
    if not single and (arr.ndim != 3 or arr.shape[-1] != 2):
        hint = " (one frame? add a frame axis: landmarks[None])" if arr.ndim == 2 and shape[-1] == 2 else ""
        raise AnimzooInputError(f"{label}: has shape {shape}, expected {expected}{hint}; {save_fix}.")
    if single:
        arr = arr[None]
    if arr.shape[0] == 0:
        raise AnimzooInputError(f"{label}: has no frames (shape {shape}); {save_fix}.")
    if arr.shape[1] == 0:
        raise AnimzooInputError(f"{label}: has no landmarks (shape {shape}); {save_fix}.")
    if num_landmarks is not None and arr.shape[1] != num_landmarks:
        raise AnimzooInputError(
            f"{label}: has {arr.shape[1]} landmarks per frame but method {method} uses {num_landmarks}; "
            f"produce the {num_landmarks}-point layout the method was trained with."
        )
    arr = arr.astype(np.float32)
    from animzoo.data.annotations import (  # the sidecars' wording
        _frames_text,
        _nonfinite_frames,
    )

    bad = _nonfinite_frames(arr)
    if bad.size:
        where = "" if single else f" in frame(s) {_frames_text(bad)}"
        raise AnimzooInputError(
            f"{label}: NaN or inf coordinates{where}; fill them (e.g. interpolate from the neighbouring "
            f"frames) or drop those frames."
        )
    return arr, label


def _check_driving(driving: Any, driving_landmarks: Any) -> None:
    """Exactly one source of driving motion: a video or a landmark sequence."""
    if (driving is None) == (driving_landmarks is None):
        given = "both" if driving is not None else "neither"
        raise AnimzooInputError(
            f"got {given} of driving (a video) and driving_landmarks (a T x L x 2 landmark sequence); "
            f"pass exactly one (--driving VIDEO or --driving-landmarks FILE.npy)."
        )


def _landmarks_to_normalized(pixels: np.ndarray, size: tuple[int, int], label: str) -> Tensor:
    """``... x L x 2`` pixels of an ``(H, W)`` frame -> normalised (align_corners=True), with a
    warning for coordinates that look like a unit mix-up (normalised values, or another frame size)."""
    from animzoo.geometry.grid import pixel_to_normalized

    height, width = size
    normalized = pixel_to_normalized(torch.from_numpy(pixels), size)
    if min(size) > 4 and float(np.abs(pixels).max()) <= 1.0:
        warnings.warn(
            f"{label}: every coordinate lies in [-1, 1], which looks like normalised coordinates; they are "
            f"read as pixels (x, y) of a {height}x{width} frame. Convert normalised landmarks to pixels "
            f"first (animzoo.geometry.grid.normalized_to_pixel).",
            UserWarning,
            stacklevel=4,
        )
    else:
        outside = float((normalized.abs() > 1.5).any(-1).float().mean())
        if outside > 0.5:  # most points far out of the frame: probably another frame size
            warnings.warn(
                f"{label}: {outside:.0%} of the points lie far outside the {height}x{width} frame their pixels "
                f"are read in; pass landmarks_size (--landmarks-size HxW) = the size of the frame they "
                f"were computed on.",
                UserWarning,
                stacklevel=4,
            )
    return normalized


def _check_size(size: Any, what: str) -> tuple[int, int]:
    """``(H, W)`` of a frame, each at least 2 (the align_corners=True convention needs two pixels)."""
    try:
        height, width = (int(v) for v in size)
        ok = height >= 2 and width >= 2 and (height, width) == tuple(size)
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise AnimzooInputError(f"{what} must be (H, W), two integers >= 2, got {size!r}.")
    return height, width


def draw_landmarks(landmarks: Tensor, size: tuple[int, int]) -> Tensor:
    """Plot normalised landmarks ``T x L x 2`` as white dots on black: ``T x 3 x H x W`` in [0, 1].

    The ``--side-by-side`` middle panel when the driving motion is a landmark sequence.
    """
    from animzoo.geometry.grid import normalized_to_pixel

    height, width = size
    frames = torch.zeros(landmarks.shape[0], height, width)
    pixels = normalized_to_pixel(landmarks.detach().float().cpu(), size).round().long()
    radius = 1 if min(size) >= 64 else 0  # 3 x 3 dots on larger frames, single pixels on tiny ones
    t = torch.arange(landmarks.shape[0])[:, None].expand(-1, landmarks.shape[1])
    for dy in range(-radius, radius + 1):
        for dx in range(-radius, radius + 1):
            x, y = pixels[..., 0] + dx, pixels[..., 1] + dy
            inside = (x >= 0) & (x < width) & (y >= 0) & (y < height)
            frames[t[inside], y[inside], x[inside]] = 1.0
    return frames[:, None].expand(-1, 3, -1, -1).contiguous()


# --------------------------------------------------------------------------- the Animator


class Animator:
    """Animate source images with driving videos using a trained method.

    Args:
        module: a trained animzoo method (``AnimationModule``), e.g. from :func:`animzoo.load_pretrained`.
        image_size: the square frame size the model works at; default: its pretrained config /
            checkpoint ``image_size`` (None: the source's own size).
        device: where to run (default: where the module is). The module is moved there and put in
            eval mode.

    Attributes:
        last_info: after :meth:`animate`: ``best_frame`` (or None), ``num_frames``, ``size`` (H, W),
            ``source_size``, ``driving_size`` (of the video, or ``landmarks_size``), ``fps`` (the
            ``fps`` argument, else a driving path's, 25 for landmarks, else None), ``relative``,
            ``source`` (1 x 3 x H x W as animated), ``driving_landmarks`` (landmark-driven methods:
            the normalised ``T x L x 2`` landmarks that drove it, else None).
    """

    def __init__(self, module: nn.Module, image_size: int | None = None, device: Any = None) -> None:
        if not isinstance(module, nn.Module) or not callable(getattr(module, "animate", None)):
            raise TypeError(f"Animator needs an animzoo method (an AnimationModule), got {type(module).__name__}")
        self.device = torch.device(device) if device is not None else _module_device(module)
        self.module = module.to(self.device).eval()
        self.image_size = int(image_size) if image_size is not None else _module_image_size(module)
        self.method = _method_label(module)
        self.last_info: dict[str, Any] = {}

    @classmethod
    def from_pretrained(cls, name_or_dir: str | os.PathLike, *, image_size: int | None = None, device: Any = None) -> Animator:
        """An Animator over :func:`animzoo.hub.from_pretrained` (a name such as ``"monkeynet.synthetic64"`` or a folder)."""
        from animzoo.hub import from_pretrained

        return cls(from_pretrained(name_or_dir), image_size=image_size, device=device)

    @classmethod
    def from_checkpoint(
        cls, path: str | os.PathLike, *, method: str | None = None, image_size: int | None = None, device: Any = None
    ) -> Animator:
        """An Animator over :func:`animzoo.hub.from_checkpoint` (a Lightning ``.ckpt``; ``method`` checks its kind)."""
        from animzoo.hub import from_checkpoint

        return cls(from_checkpoint(path, method=method), image_size=image_size, device=device)

    @property
    def has_motion_api(self) -> bool:
        """Whether the method supports relative motion and best-frame search."""
        return _has_motion_api(self.module)

    # -- preparation -----------------------------------------------------------------------

    def _target_size(self, source: Tensor) -> tuple[int, int]:
        if self.image_size is not None:
            return (self.image_size, self.image_size)
        return (int(source.shape[-2]), int(source.shape[-1]))

    def prepare_source(self, source: Any) -> Tensor:
        """``source`` -> ``1 x 3 x S x S`` float on the CPU, resized to the model's size (with a warning)."""
        return self._fit_source(prepare_image(source))

    def _fit_source(self, image: Tensor) -> Tensor:
        size = self._target_size(image)
        if tuple(image.shape[-2:]) != size:
            h, w = image.shape[-2:]
            stretch = " (non-square: the image is stretched; crop a square around the subject first)" if h != w else ""
            warnings.warn(
                f"source image is {h}x{w} pixels; resized to {size[0]}x{size[1]}, the size {self.method} "
                f"works at{stretch}.",
                UserWarning,
                stacklevel=3,
            )
            image = resize_frames(image, size)
        return image

    @property
    def landmark_driven(self) -> bool:
        """Whether the method's motion is facial landmarks (``motion_kind = "landmarks"`` and the
        motion API), so that it can be driven by a landmark sequence as well as by a video."""
        return getattr(self.module, "motion_kind", None) == "landmarks" and self.has_motion_api

    def _check_module(self, relative: bool, find_best_frame: bool, landmarks: bool = False) -> None:
        if landmarks and not self.landmark_driven:
            why = (
                "its motion is not facial landmarks (no motion_kind = 'landmarks')"
                if self.has_motion_api else "it has no motion API (extract_motion / animate_with_motion)"
            )
            raise AnimzooInputError(
                f"method {self.method} is driven by images, not landmarks ({why}), so driving_landmarks / "
                f"source_landmarks (--driving-landmarks / --source-landmarks) cannot drive it; pass a driving "
                f"video instead, or use a landmark-driven method such as sparse2dense."
            )
        requires = set(getattr(self.module, "requires", ()) or ())
        # A landmark-driven method gets its landmarks from extract_motion (its own detector) or from
        # the caller, never from a dataset batch, so what it requires for training does not matter here.
        if requires and not self.landmark_driven:
            raise AnimzooInputError(
                f"method {self.method} is driven by {', '.join(sorted(requires))}, not by video frames; "
                f"the Animator drives methods from frames only (or from landmarks, for methods with "
                f"motion_kind = 'landmarks'). Use a frame-driven method."
            )
        if (relative or find_best_frame) and not self.has_motion_api:
            flag = "relative=True (--relative)" if relative else "find_best_frame=True (--find-best-frame)"
            raise AnimzooInputError(
                f"method {self.method} has no explicit motion (no extract_motion / animate_with_motion), so "
                f"{flag} is not possible; use absolute motion (the default) with this method."
            )

    # -- animation ------------------------------------------------------------------------

    def _to_device(self, x: Tensor) -> Tensor:
        return x.to(self.device, _module_dtype(self.module), non_blocking=True)

    def _driving_batches(self, driving: _Driving, size: tuple[int, int], batch_size: int) -> Iterator[Tensor]:
        for frames in driving.batches(batch_size):
            yield self._to_device(resize_frames(frames, size))

    def _extract_all(self, driving: _Driving, size: tuple[int, int], batch_size: int, report: Callable[[int], None]) -> dict[str, Any]:
        parts: list[dict[str, Any]] = []
        done = 0
        for frames in self._driving_batches(driving, size, batch_size):
            try:
                parts.append(self.module.extract_motion(frames))
            except AnimzooInputError as err:  # e.g. no face found: the method counts frames per batch
                raise AnimzooInputError(
                    f"driving video, batch of frames {done}-{done + frames.shape[0] - 1}: {err}"
                ) from err
            done += frames.shape[0]
            report(done)
        motion: dict[str, Any] = {}
        for key, value in parts[0].items():
            if isinstance(value, Tensor) and value.ndim and value.shape[0] == len(parts[0]["value"]):
                motion[key] = torch.cat([p[key] for p in parts], dim=0)
            else:
                motion[key] = value
        return motion

    def _driving_landmarks(self, driving_landmarks: Any, size: tuple[int, int]) -> tuple[dict[str, Tensor], str]:
        """A landmark sequence (pixels of an ``(H, W)`` frame) -> (motion ``{"value": T x L x 2}``
        normalised, on the device; its label for messages)."""
        pixels, label = _read_landmarks(
            driving_landmarks, "driving landmarks",
            num_landmarks=getattr(self.module, "num_landmarks", None), method=self.method,
        )
        return {"value": self._to_device(_landmarks_to_normalized(pixels, size, label))}, label

    def _source_motion(self, src_dev: Tensor, source_landmarks: Any, source_size: tuple[int, int]) -> tuple[dict[str, Any], str]:
        """The source's motion: ``source_landmarks`` (pixels of the source as given, before any
        resize) when given, else ``module.extract_motion`` on the resized source."""
        if source_landmarks is None:
            try:
                motion = self.module.extract_motion(src_dev)
            except AnimzooInputError as err:  # e.g. no face found on the source
                fix = " (or pass source_landmarks / --source-landmarks)" if self.landmark_driven else ""
                raise AnimzooInputError(f"source image: {err}{fix}") from err
            return motion, f"the landmarks {self.method} detects on the source"
        pixels, label = _read_landmarks(
            source_landmarks, "source landmarks", single=True,
            num_landmarks=getattr(self.module, "num_landmarks", None), method=self.method,
        )
        return {"value": self._to_device(_landmarks_to_normalized(pixels, source_size, label))}, label

    @staticmethod
    def _check_counts(src_motion: dict[str, Any], src_label: str, drv_motion: dict[str, Any], drv_label: str) -> None:
        """Source and driving landmarks must be the same points (a method without ``num_landmarks``
        is not checked against the files, so check them against each other)."""
        n_src, n_drv = src_motion["value"].shape[1], drv_motion["value"].shape[1]
        if n_src != n_drv:
            raise AnimzooInputError(
                f"{drv_label}: has {n_drv} landmarks per frame but {src_label} has {n_src}; pass source and "
                f"driving landmarks of the same layout."
            )

    @torch.no_grad()
    def best_frame(
        self,
        source: Any,
        driving: Any = None,
        *,
        driving_landmarks: Any = None,
        landmarks_size: tuple[int, int] | None = None,
        source_landmarks: Any = None,
        batch_size: int = 16,
    ) -> int:
        """Index of the driving frame whose normalised keypoints (or landmarks) are closest to the source's.

        Takes a driving video or, for landmark-driven methods, ``driving_landmarks`` (as :meth:`animate`).
        """
        _check_driving(driving, driving_landmarks)
        self._check_module(False, True, landmarks=driving_landmarks is not None or source_landmarks is not None)
        raw = prepare_image(source)
        src = self._fit_source(raw)
        source_size = (int(raw.shape[-2]), int(raw.shape[-1]))
        src_motion, _ = self._source_motion(self._to_device(src), source_landmarks, source_size)
        if driving_landmarks is not None:
            size = _check_size(landmarks_size, "landmarks_size") if landmarks_size is not None else source_size
            motion, _ = self._driving_landmarks(driving_landmarks, size)
        else:
            drv = driving if isinstance(driving, _Driving) else _Driving(driving)
            motion = self._extract_all(drv, self._target_size(src), batch_size, lambda done: None)
        return self._closest(src_motion["value"], motion["value"])

    @staticmethod
    def _closest(src_kp: Tensor, drv_kp: Tensor) -> int:
        dist = ((normalized_keypoints(drv_kp) - normalized_keypoints(src_kp)) ** 2).sum(dim=(1, 2))
        return int(torch.argmin(dist).item())

    @torch.no_grad()
    def animate(
        self,
        source: Any,
        driving: Any = None,
        *,
        driving_landmarks: Any = None,
        landmarks_size: tuple[int, int] | None = None,
        source_landmarks: Any = None,
        fps: float | None = None,
        relative: bool = False,
        adapt_scale: bool = False,
        find_best_frame: bool = False,
        batch_size: int = 16,
        progress: bool | ProgressFn = False,
        frame_shape: tuple[int, int] | None = None,
    ) -> Tensor:
        """Animate ``source`` with ``driving``; returns ``T x 3 x S x S`` float in [0, 1] on the CPU.

        Args:
            source: image path, numpy array, tensor or PIL image (see the module docstring).
            driving: video path, numpy ``T x H x W x 3`` array or ``T x 3 x H x W`` tensor.
            driving_landmarks: instead of ``driving``, for landmark-driven methods
                (``motion_kind = "landmarks"``): ``T x L x 2`` pixel coordinates (x, y) of the
                driving face, as an array, a tensor or a ``.npy`` path (e.g. an audio-to-landmarks
                model's output). Gives ``T`` frames.
            landmarks_size: ``(H, W)`` of the frame the ``driving_landmarks`` pixels refer to;
                default: the source image's size as given (before any resize).
            source_landmarks: ``L x 2`` (or ``1 x L x 2``) pixel coordinates of the source image
                as given (array, tensor or ``.npy`` path); default: the method's ``extract_motion``.
            fps: the frame rate to report in ``last_info["fps"]`` (default: the driving video
                file's, or 25 for ``driving_landmarks``).
            relative: move the source keypoints by the driving displacement from the reference
                frame (needs the motion API). Recommended with ``driving_landmarks`` of another face.
            adapt_scale: with ``relative``, scale the displacement by the keypoint hull size ratio.
            find_best_frame: the reference is the driving frame closest to the source pose.
            batch_size: driving frames per forward pass.
            progress: show a rich progress bar, or a ``callback(done, total)``.
            frame_shape: ``(H, W)`` of one frame when ``driving`` is a png strip.

        Landmark-driven methods always go through ``extract_motion`` / ``animate_with_motion``
        (absolute: the driving landmarks as they are), also when driven by a video.
        """
        if batch_size < 1:
            raise AnimzooInputError(f"batch_size must be >= 1, got {batch_size}.")
        if fps is not None and not fps > 0:
            raise AnimzooInputError(f"fps must be positive, got {fps}.")
        _check_driving(driving, driving_landmarks)
        self._check_module(relative, find_best_frame, landmarks=driving_landmarks is not None or source_landmarks is not None)
        if landmarks_size is not None:
            if driving_landmarks is None:
                raise AnimzooInputError(
                    "landmarks_size is the frame size of driving_landmarks; it has no meaning with a driving video."
                )
            landmarks_size = _check_size(landmarks_size, "landmarks_size")
        if adapt_scale and not relative:
            warnings.warn("adapt_scale has no effect without relative=True; ignored.", UserWarning, stacklevel=3)
        if find_best_frame and not relative:
            warnings.warn(
                "find_best_frame only changes the result with relative=True (absolute motion has no "
                "reference frame); the best frame is still reported in last_info.",
                UserWarning,
                stacklevel=3,
            )
        raw = prepare_image(source)
        src = self._fit_source(raw)
        size = self._target_size(src)
        source_size = (int(raw.shape[-2]), int(raw.shape[-1]))
        drv: _Driving | None = None
        motion: dict[str, Any] | None = None
        if driving_landmarks is not None:
            driving_size = landmarks_size or source_size
            motion, drv_label = self._driving_landmarks(driving_landmarks, driving_size)
            num_frames = int(motion["value"].shape[0])
            driving_fps: float | None = 25.0
        else:
            drv = driving if isinstance(driving, _Driving) else _Driving(driving, frame_shape)
            if (drv.height, drv.width) != size:
                warnings.warn(
                    f"driving video is {drv.height}x{drv.width} pixels; its frames are resized to "
                    f"{size[0]}x{size[1]}, the size {self.method} works at.",
                    UserWarning,
                    stacklevel=3,
                )
            driving_size, num_frames, driving_fps = (drv.height, drv.width), drv.num_frames, drv.fps
            drv_label = f"the landmarks {self.method} detects on the driving video"
        # Passes over the driving frames: extracting motion from a video, then animating.
        uses_motion = relative or find_best_frame or self.landmark_driven
        total = num_frames * (2 if uses_motion and drv is not None else 1)
        self.last_info = {
            "best_frame": None, "num_frames": num_frames, "size": size, "source_size": source_size,
            "driving_size": driving_size, "fps": fps if fps is not None else driving_fps, "relative": relative,
            "source": src, "driving_landmarks": None,
        }
        src_dev = self._to_device(src)
        outputs: list[Tensor] = []
        with _progress(progress, total, f"animating with {self.method}") as update:
            if not uses_motion:
                assert drv is not None
                return self._animate_frames(src_dev, drv, size, batch_size, 0, total, update)

            src_motion, src_label = self._source_motion(src_dev, source_landmarks, source_size)
            if motion is None:
                assert drv is not None
                motion = self._extract_all(drv, size, batch_size, lambda d: update(d, total))
            done = total - num_frames  # the extraction pass, if any
            if self.landmark_driven:
                self._check_counts(src_motion, src_label, motion, drv_label)
                self.last_info["driving_landmarks"] = motion["value"].detach().float().cpu()
            ref = self._closest(src_motion["value"], motion["value"]) if find_best_frame else 0
            self.last_info["best_frame"] = ref if find_best_frame else None
            if not relative and not self.landmark_driven:  # absolute, best frame only reported
                assert drv is not None
                return self._animate_frames(src_dev, drv, size, batch_size, done, total, update)

            initial = _batch_motion(motion, ref, ref + 1)
            adapt = relative and adapt_scale and self._hull_ok(src_motion["value"], initial["value"])
            from animzoo.geometry.keypoints import normalize_kp

            use_jacobian = relative and "jacobian" in motion and "jacobian" in src_motion
            for start in range(0, num_frames, batch_size):
                stop = min(start + batch_size, num_frames)
                drv_motion = normalize_kp(
                    src_motion, _batch_motion(motion, start, stop), initial,
                    adapt_movement_scale=adapt, use_relative_movement=relative, use_relative_jacobian=use_jacobian,
                )
                n = stop - start
                out = self.module.animate_with_motion(
                    src_dev.expand(n, -1, -1, -1), _expand_motion(src_motion, n), drv_motion
                )
                outputs.append(self._prediction(out))
                update(done + stop, total)
        return torch.cat(outputs, dim=0)

    def _animate_frames(
        self, src_dev: Tensor, drv: _Driving, size: tuple[int, int], batch_size: int, done: int, total: int,
        update: ProgressFn,
    ) -> Tensor:
        """Absolute motion through ``module.animate`` on every driving frame: ``T x 3 x H x W`` on the CPU."""
        outputs: list[Tensor] = []
        for frames in self._driving_batches(drv, size, batch_size):
            batch = {"source": src_dev.expand(frames.shape[0], -1, -1, -1), "driving": frames}
            outputs.append(self._prediction(self.module.animate(batch)))
            done += frames.shape[0]
            update(done, total)
        return torch.cat(outputs, dim=0)

    def _hull_ok(self, src_kp: Tensor, ref_kp: Tensor) -> bool:
        from animzoo.geometry.keypoints import convex_hull_area

        if float(convex_hull_area(src_kp).min()) <= 1e-12 or float(convex_hull_area(ref_kp).min()) <= 1e-12:
            warnings.warn(
                "adapt_scale: the keypoints of the source or the reference frame are collinear (zero hull "
                "area), so the motion scale is undefined; using scale 1.",
                UserWarning,
                stacklevel=3,
            )
            return False
        return True

    def _prediction(self, out: Any) -> Tensor:
        pred = out["prediction"] if isinstance(out, dict) else out
        return pred.detach().float().clamp(0.0, 1.0).cpu()


# --------------------------------------------------------------------------- CLI


def run_animate(args: argparse.Namespace) -> int:
    """Handler of ``animzoo animate``; returns the exit code (2 on bad input)."""
    from rich.console import Console

    console = Console(stderr=True)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            code = _run_animate(args, console)
        for w in caught:
            console.print(f"[yellow]warning:[/yellow] {w.message}", highlight=False)
        return code
    except (AnimzooInputError, OSError) as err:  # bad input; OSError: e.g. an unwritable output folder
        console.print(f"[red]error:[/red] {err}", highlight=False, soft_wrap=True)
        return 2
    except (ValueError, RuntimeError) as err:
        # A method refusing its input (e.g. a frame size its network cannot take) or running out of
        # memory: one line, not a traceback from deep inside torch, unless debugging.
        if os.environ.get("ANIMZOO_DEBUG"):
            raise
        console.print(
            f"[red]error:[/red] {type(err).__name__}: {err} (set ANIMZOO_DEBUG=1 for the traceback)",
            highlight=False, soft_wrap=True,
        )
        return 2


def _run_animate(args: argparse.Namespace, console: Any) -> int:
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TimeRemainingColumn,
    )

    from animzoo.io import (
        GIF_EXTENSIONS,
        IMAGE_EXTENSIONS,
        VIDEO_EXTENSIONS,
        VideoReader,
        write_video,
    )

    output: Path = args.output
    suffix = output.suffix.lower()
    if suffix not in VIDEO_EXTENSIONS + GIF_EXTENSIONS + IMAGE_EXTENSIONS + ("",):
        raise AnimzooInputError(
            f"{output}: unsupported output suffix {output.suffix!r}; use .mp4 (or {', '.join(VIDEO_EXTENSIONS[1:])}, "
            f".gif, a .png strip, or no suffix for a folder of frames)."
        )
    driving: Path | None = getattr(args, "driving", None)
    driving_landmarks: Path | None = getattr(args, "driving_landmarks", None)
    source_landmarks: Path | None = getattr(args, "source_landmarks", None)
    landmarks_size: tuple[int, int] | None = getattr(args, "landmarks_size", None)
    if not args.source.exists():
        raise AnimzooInputError(f"{args.source}: no such source image. Check --source.")
    if driving is not None and not driving.exists():
        raise AnimzooInputError(f"{driving}: no such driving video. Check --driving.")
    for flag, path in (("--driving-landmarks", driving_landmarks), ("--source-landmarks", source_landmarks)):
        if path is not None and not path.is_file():
            raise AnimzooInputError(f"{path}: no such landmarks file. Check {flag}.")
    if landmarks_size is not None and driving_landmarks is None:
        raise AnimzooInputError(
            "--landmarks-size is the frame size of --driving-landmarks; drop it when driving with --driving."
        )
    inputs = [p for p in (args.source, driving, driving_landmarks, source_landmarks) if p is not None]
    if any(output.resolve() == p.resolve() for p in inputs):
        raise AnimzooInputError(f"{output}: is an input file; choose another --output.")
    if args.batch_size < 1:
        raise AnimzooInputError(f"--batch-size must be >= 1, got {args.batch_size}.")
    if args.fps is not None and not args.fps > 0:
        raise AnimzooInputError(f"--fps must be positive, got {args.fps}.")
    # Landmarks of another face (an audio-to-landmarks model's, ...) would impose that face's shape
    # and position in absolute mode, so relative is the default for them; --no-relative opts out.
    relative = args.relative if args.relative is not None else driving_landmarks is not None
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(device)
    except RuntimeError as err:
        raise AnimzooInputError(f"--device {args.device!r} is not a device ({err}); use cpu, cuda, cuda:0, mps.") from err

    if args.checkpoint is not None:
        if not args.checkpoint.is_file():
            raise AnimzooInputError(f"{args.checkpoint}: no such checkpoint file. Check --checkpoint.")
        animator = Animator.from_checkpoint(args.checkpoint, method=args.method, device=device)
    else:
        if args.method:
            raise AnimzooInputError("--method checks a --checkpoint; a --pretrained model names its own method.")
        animator = Animator.from_pretrained(args.pretrained, device=device)
    if driving_landmarks is not None or source_landmarks is not None:
        animator._check_module(relative, args.find_best_frame, landmarks=True)  # refuse before reading the video

    frames: np.ndarray | None = None
    if driving is not None:
        frame_shape = tuple(args.frame_shape) if args.frame_shape else None
        with VideoReader(driving, frame_shape) as reader:
            driving_fps = reader.fps
            frames = reader.read_all()
        fps = args.fps or driving_fps
        if fps is None:
            fps = 25.0
            console.print(
                f"note: {driving} has no frame rate (a folder of frames or a strip); writing at 25 fps "
                f"(pass --fps to change).",
                highlight=False,
            )
    else:
        fps = args.fps
        if fps is None:
            fps = 25.0
            console.print(
                "note: a landmark sequence has no frame rate; writing at 25 fps (pass --fps to match the "
                "rate the landmarks were made at, e.g. the audio's).",
                highlight=False,
            )
    with Progress(
        "[progress.description]{task.description}", BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
        console=console, transient=True,
    ) as bar:
        task = bar.add_task(f"animating with {animator.method}", total=len(frames) if frames is not None else None)

        def report(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total)

        result = animator.animate(
            args.source, frames, driving_landmarks=driving_landmarks, landmarks_size=landmarks_size,
            source_landmarks=source_landmarks, fps=fps, relative=relative, adapt_scale=args.adapt_scale,
            find_best_frame=args.find_best_frame, batch_size=args.batch_size, progress=report,
        )
    if args.side_by_side:
        size = tuple(result.shape[-2:])
        source = animator.last_info["source"].expand(len(result), -1, -1, -1)
        if frames is not None:
            middle = resize_frames(torch.from_numpy(frames).permute(0, 3, 1, 2).float() / 255.0, size)
        else:  # no driving video: plot the driving landmarks
            middle = draw_landmarks(animator.last_info["driving_landmarks"], size)
        result = torch.cat([source, middle, result], dim=-1)
    write_video(output, result, fps=fps)
    best = animator.last_info.get("best_frame")
    console.print(
        f"wrote {output}: {len(result)} frames of {result.shape[-2]}x{result.shape[-1]} at {fps:g} fps"
        + (f" (best frame {best})" if best is not None else ""),
        highlight=False,
    )
    return 0
