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

__all__ = ["Animator", "prepare_image", "run_animate"]

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
            ``source_size``, ``driving_size``, ``fps`` (of a driving path, else None), ``relative``.
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

    def _check_module(self, relative: bool, find_best_frame: bool) -> None:
        requires = set(getattr(self.module, "requires", ()) or ())
        if requires:
            raise AnimzooInputError(
                f"method {self.method} is driven by {', '.join(sorted(requires))}, not by video frames; "
                f"the Animator drives methods from frames only. Use a frame-driven method."
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
            parts.append(self.module.extract_motion(frames))
            done += frames.shape[0]
            report(done)
        motion: dict[str, Any] = {}
        for key, value in parts[0].items():
            if isinstance(value, Tensor) and value.ndim and value.shape[0] == len(parts[0]["value"]):
                motion[key] = torch.cat([p[key] for p in parts], dim=0)
            else:
                motion[key] = value
        return motion

    @torch.no_grad()
    def best_frame(self, source: Any, driving: Any, *, batch_size: int = 16) -> int:
        """Index of the driving frame whose normalised keypoints are closest to the source's."""
        self._check_module(False, True)
        src = self.prepare_source(source)
        drv = driving if isinstance(driving, _Driving) else _Driving(driving)
        size = self._target_size(src)
        src_kp = self.module.extract_motion(self._to_device(src))["value"]
        kp = self._extract_all(drv, size, batch_size, lambda done: None)["value"]
        return self._closest(src_kp, kp)

    @staticmethod
    def _closest(src_kp: Tensor, drv_kp: Tensor) -> int:
        dist = ((normalized_keypoints(drv_kp) - normalized_keypoints(src_kp)) ** 2).sum(dim=(1, 2))
        return int(torch.argmin(dist).item())

    @torch.no_grad()
    def animate(
        self,
        source: Any,
        driving: Any,
        *,
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
            relative: move the source keypoints by the driving displacement from the reference
                frame (needs the motion API).
            adapt_scale: with ``relative``, scale the displacement by the keypoint hull size ratio.
            find_best_frame: the reference frame is the driving frame closest to the source pose.
            batch_size: driving frames per forward pass.
            progress: show a rich progress bar, or a ``callback(done, total)``.
            frame_shape: ``(H, W)`` of one frame when ``driving`` is a png strip.
        """
        if batch_size < 1:
            raise AnimzooInputError(f"batch_size must be >= 1, got {batch_size}.")
        self._check_module(relative, find_best_frame)
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
        drv = driving if isinstance(driving, _Driving) else _Driving(driving, frame_shape)
        size = self._target_size(src)
        if (drv.height, drv.width) != size:
            warnings.warn(
                f"driving video is {drv.height}x{drv.width} pixels; its frames are resized to "
                f"{size[0]}x{size[1]}, the size {self.method} works at.",
                UserWarning,
                stacklevel=3,
            )
        total = drv.num_frames * (2 if (relative or find_best_frame) else 1)
        self.last_info = {
            "best_frame": None, "num_frames": drv.num_frames, "size": size,
            "source_size": tuple(raw.shape[-2:]),
            "driving_size": (drv.height, drv.width), "fps": drv.fps, "relative": relative, "source": src,
        }
        src_dev = self._to_device(src)
        outputs: list[Tensor] = []
        with _progress(progress, total, f"animating with {self.method}") as update:
            if not (relative or find_best_frame):
                done = 0
                for frames in self._driving_batches(drv, size, batch_size):
                    batch = {"source": src_dev.expand(frames.shape[0], -1, -1, -1), "driving": frames}
                    outputs.append(self._prediction(self.module.animate(batch)))
                    done += frames.shape[0]
                    update(done, total)
                return torch.cat(outputs, dim=0)

            src_motion = self.module.extract_motion(src_dev)
            motion = self._extract_all(drv, size, batch_size, lambda d: update(d, total))
            ref = self._closest(src_motion["value"], motion["value"]) if find_best_frame else 0
            self.last_info["best_frame"] = ref if find_best_frame else None
            if not relative:  # absolute, best frame only reported
                done = drv.num_frames
                for frames in self._driving_batches(drv, size, batch_size):
                    batch = {"source": src_dev.expand(frames.shape[0], -1, -1, -1), "driving": frames}
                    outputs.append(self._prediction(self.module.animate(batch)))
                    done += frames.shape[0]
                    update(done, total)
                return torch.cat(outputs, dim=0)

            initial = _batch_motion(motion, ref, ref + 1)
            adapt = adapt_scale and self._hull_ok(src_motion["value"], initial["value"])
            from animzoo.geometry.keypoints import normalize_kp

            use_jacobian = "jacobian" in motion and "jacobian" in src_motion
            for start in range(0, drv.num_frames, batch_size):
                stop = min(start + batch_size, drv.num_frames)
                drv_motion = normalize_kp(
                    src_motion, _batch_motion(motion, start, stop), initial,
                    adapt_movement_scale=adapt, use_relative_movement=True, use_relative_jacobian=use_jacobian,
                )
                n = stop - start
                out = self.module.animate_with_motion(
                    src_dev.expand(n, -1, -1, -1), _expand_motion(src_motion, n), drv_motion
                )
                outputs.append(self._prediction(out))
                update(drv.num_frames + stop, total)
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
    if not args.source.exists():
        raise AnimzooInputError(f"{args.source}: no such source image. Check --source.")
    if not args.driving.exists():
        raise AnimzooInputError(f"{args.driving}: no such driving video. Check --driving.")
    if output.resolve() == args.driving.resolve() or output.resolve() == args.source.resolve():
        raise AnimzooInputError(f"{output}: is an input file; choose another --output.")
    if args.batch_size < 1:
        raise AnimzooInputError(f"--batch-size must be >= 1, got {args.batch_size}.")
    if args.fps is not None and not args.fps > 0:
        raise AnimzooInputError(f"--fps must be positive, got {args.fps}.")
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

    frame_shape = tuple(args.frame_shape) if args.frame_shape else None
    with VideoReader(args.driving, frame_shape) as reader:
        driving_fps = reader.fps
        frames = reader.read_all()
    fps = args.fps or driving_fps
    if fps is None:
        fps = 25.0
        console.print(
            f"note: {args.driving} has no frame rate (a folder of frames or a strip); writing at 25 fps "
            f"(pass --fps to change).",
            highlight=False,
        )
    with Progress(
        "[progress.description]{task.description}", BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
        console=console, transient=True,
    ) as bar:
        task = bar.add_task(f"animating with {animator.method}", total=len(frames))

        def report(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total)

        result = animator.animate(
            args.source, frames, relative=args.relative, adapt_scale=args.adapt_scale,
            find_best_frame=args.find_best_frame, batch_size=args.batch_size, progress=report,
        )
    if args.side_by_side:
        size = tuple(result.shape[-2:])
        source = animator.last_info["source"].expand(len(result), -1, -1, -1)
        driving = resize_frames(torch.from_numpy(frames).permute(0, 3, 1, 2).float() / 255.0, size)
        result = torch.cat([source, driving, result], dim=-1)
    write_video(output, result, fps=fps)
    best = animator.last_info.get("best_frame")
    console.print(
        f"wrote {output}: {len(result)} frames of {result.shape[-2]}x{result.shape[-1]} at {fps:g} fps"
        + (f" (best frame {best})" if best is not None else ""),
        highlight=False,
    )
    return 0
