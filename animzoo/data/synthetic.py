"""SyntheticHeads: procedural talking-head videos with exact landmarks, meshes, face-parsing
maps and identities.

Each identity (shape + colours of :class:`~animzoo.geometry.heads.ProceduralHead`) gets a few
clips of smooth random motion (pose, expression, blinks, gaze), rendered with the torch
rasterizer over a procedural background and written in the dataset layout of DESIGN.md::

    out_dir/train/id0000#clip00.mp4            (or a folder of PNG frames)
    out_dir/train/id0000#clip00.mp4.landmarks.npy   T x 70 x 2 float32, pixel coords
    out_dir/train/id0000#clip00.mp4.mesh.npz        verts T x V x 3 (pixels, z scaled like x),
                                                    faces F x 3 int32, flip_index V int32,
                                                    param_identity / expression / gaze / pose (T x n)
    out_dir/train/id0000#clip00.mp4.parsing.npy     T x H x W uint8 labels (PARSING_LABELS), from
                                                    the rasterizer's visible faces and the texture
    out_dir/test/...                           identities unseen in train
    out_dir/pairs.csv                          source,driving: cross-identity test pairs
    out_dir/synthetic.json                     generator version, seed and arguments

The output is a pure function of the arguments: every random draw comes from a generator seeded
from ``(seed, stream, index)``, and all writers are deterministic, so one seed gives the same bytes.
"""

from __future__ import annotations

import csv
import io as _stdio
import json
import math
import os
import re
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from animzoo.data.annotations import (
    PARSING_LABELS,
    landmarks_path,
    mesh_path,
    save_landmarks,
    save_mesh,
    save_parsing,
)
from animzoo.errors import AnimzooInputError
from animzoo.geometry.grid import mesh_normalized_to_pixel
from animzoo.geometry.heads import HeadParams, ProceduralHead, sample_identity, sample_motion

__all__ = ["GENERATOR_VERSION", "synthesize", "render_clip", "random_background"]

#: Bumped whenever the same arguments would produce different data (2: parsing sidecars).
GENERATOR_VERSION = "synthetic-heads/2"

_STREAM_IDENTITY, _STREAM_VIDEO, _STREAM_PAIRS = 0, 1, 2
_OUR_NAME = re.compile(r"^id\d{4,}#clip\d{2,}")


def _generator(seed: int, stream: int, index: int) -> torch.Generator:
    """An independent torch generator for one (seed, stream, index) triple."""
    state = np.random.SeedSequence([int(seed) & 0xFFFFFFFF, stream, index]).generate_state(2, np.uint32)
    return torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1]))


def random_background(generator: torch.Generator, size: int) -> Tensor:
    """A smooth procedural background: a two-colour gradient plus soft blobs and noise.

    Returns:
        3 x size x size float in [0, 1].
    """
    g = generator
    c0, c1 = torch.rand(3, generator=g) * 0.8 + 0.1, torch.rand(3, generator=g) * 0.8 + 0.1
    angle = torch.rand(1, generator=g) * 2 * math.pi
    lin = torch.linspace(-1, 1, size)
    yy, xx = torch.meshgrid(lin, lin, indexing="ij")
    t = (0.5 + 0.35 * (xx * torch.cos(angle) + yy * torch.sin(angle))).clamp(0, 1)
    bg = c0[:, None, None] * (1 - t) + c1[:, None, None] * t
    for cells, amp in ((4, 0.22), (9, 0.08)):
        noise = torch.rand(1, 3, cells, cells, generator=g) - 0.5
        bg = bg + amp * F.interpolate(noise, size=(size, size), mode="bicubic", align_corners=True)[0]
    # A few soft blobs (lamps, furniture): out of focus shapes behind the head.
    for _ in range(3):
        cx, cy = torch.rand(2, generator=g) * 2 - 1
        rad = 0.15 + 0.35 * float(torch.rand(1, generator=g))
        col = torch.rand(3, generator=g)
        blob = torch.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * rad**2)) * 0.5
        bg = bg * (1 - blob) + col[:, None, None] * blob
    return bg.clamp(0, 1)


def render_clip(
    head: ProceduralHead,
    params: HeadParams,
    size: int,
    generator: torch.Generator,
    *,
    supersample: int = 1,
    parsing: bool = False,
) -> tuple[Tensor, Tensor] | tuple[Tensor, Tensor, Tensor]:
    """Render one clip (all frames in one batch) over a random background with a random light.

    Args:
        head: the head model.
        params: T frames of parameters.
        size: output height = width.
        generator: draws the light, ambient level and background.
        supersample: anti-aliasing factor (see :meth:`ProceduralHead.render`).
        parsing: also return the face-parsing maps of the frames (same rasterization).

    Returns:
        (frames T x 3 x size x size in [0, 1], posed vertices T x V x 3 normalised), plus
        labels T x size x size uint8 (indices of ``PARSING_LABELS``) when ``parsing``.
    """
    g = generator
    frames = params.batch_size
    light = torch.stack([
        (torch.rand(1, generator=g) - 0.5) * 1.4,
        -0.2 - 0.6 * torch.rand(1, generator=g),
        -torch.ones(1),
    ], -1).expand(frames, 3)  # fmt: skip
    ambient = 0.35 + 0.25 * float(torch.rand(1, generator=g))
    tint = 1 + 0.12 * (torch.rand(3, generator=g) - 0.5)  # warm / cool light
    background = random_background(g, size)
    verts = head.vertices(params)
    kwargs = {"light": light, "ambient": ambient, "supersample": supersample, "vertices": verts}
    if parsing:
        image, mask, labels = head.render_with_parsing(params, (size, size), **kwargs)
    else:
        image, mask = head.render(params, (size, size), **kwargs)
    image = (image * tint[None, :, None, None] + (1 - mask) * background[None]).clamp(0, 1)
    return (image, verts, labels) if parsing else (image, verts)


def _check_args(out_dir: Path, videos: int, frames: int, size: int, clips_per_identity: int,
                test_fraction: float, video_format: str, fps: float, supersample: int) -> None:  # fmt: skip
    def bad(msg: str) -> AnimzooInputError:
        return AnimzooInputError(f"{out_dir}: cannot synthesize: {msg}")

    if videos < 1 or frames < 1:
        raise bad(f"videos and frames must be >= 1, got videos={videos}, frames={frames}")
    if size < 16:
        raise bad(f"size must be >= 16 pixels, got {size}")
    if video_format not in ("mp4", "png"):
        raise bad(f"video_format must be 'mp4' or 'png', got {video_format!r}")
    if video_format == "mp4" and size % 2:
        raise bad(f"mp4 (H.264 yuv420p) needs an even size, got {size}; use {size + 1} or video_format='png'")
    if clips_per_identity < 1:
        raise bad(f"clips_per_identity must be >= 1, got {clips_per_identity}")
    if not 0.0 <= test_fraction < 1.0:
        raise bad(f"test_fraction must be in [0, 1), got {test_fraction}")
    if supersample < 1:
        raise bad(f"supersample must be >= 1, got {supersample}")
    if fps <= 0:
        raise bad(f"fps must be > 0, got {fps}")
    if out_dir.exists() and not out_dir.is_dir():
        raise bad("it exists and is not a folder; pass a folder path")


def _clear_previous(out_dir: Path) -> None:
    """Remove files a previous synthesis wrote here, so a rerun leaves no stale videos."""
    import shutil

    for split in ("train", "test"):
        folder = out_dir / split
        if folder.is_dir():
            for item in folder.iterdir():
                if _OUR_NAME.match(item.name):
                    shutil.rmtree(item) if item.is_dir() else item.unlink()


def synthesize(
    out_dir: str | os.PathLike[str],
    *,
    videos: int,
    frames: int,
    size: int,
    seed: int,
    clips_per_identity: int = 4,
    test_fraction: float = 0.2,
    video_format: str = "mp4",
    fps: float = 25.0,
    progress: Callable[[int, int], None] | None = None,
    supersample: int = 1,
) -> dict[str, Any]:
    """Render a SyntheticHeads dataset into ``out_dir`` (layout in the module docstring).

    Args:
        out_dir: destination folder (created; earlier ``id*#clip*`` outputs in it are replaced).
        videos: number of clips in total.
        frames: frames per clip.
        size: frame height = width in pixels (even for mp4).
        seed: the dataset is a pure function of the arguments.
        clips_per_identity: clips of each identity (the last identity may have fewer).
        test_fraction: share of the identities held out for test (at least one when there are
            two or more identities and the fraction is > 0).
        video_format: ``"mp4"`` (H.264) or ``"png"`` (a folder of frames per clip).
        fps: frame rate written into mp4 files.
        progress: called as ``progress(done, total)`` after each clip.
        supersample: anti-aliasing factor (render s times larger, average-pool); 1 is fastest.

    Returns:
        A summary: the arguments, identity lists per split, counts, mesh size and ``seconds``.
    """
    out = Path(out_dir)
    _check_args(out, videos, frames, size, clips_per_identity, test_fraction, video_format, fps, supersample)
    # Per-clip tensors are small: intra-op threads gain little and cost a lot (spinning) when the
    # cores are shared with other processes, so render single-threaded and restore afterwards.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _synthesize(out, videos, frames, size, seed, clips_per_identity, test_fraction,
                           video_format, fps, progress, supersample)  # fmt: skip
    finally:
        torch.set_num_threads(threads)


def _synthesize(out: Path, videos: int, frames: int, size: int, seed: int, clips_per_identity: int,
                test_fraction: float, video_format: str, fps: float,
                progress: Callable[[int, int], None] | None, supersample: int) -> dict[str, Any]:  # fmt: skip
    from animzoo import __version__
    from animzoo.io import write_video

    start = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    _clear_previous(out)

    num_ids = math.ceil(videos / clips_per_identity)
    num_test = 0
    if num_ids >= 2 and test_fraction > 0:
        num_test = min(num_ids - 1, max(1, round(num_ids * test_fraction)))
    test_ids = set(range(num_ids - num_test, num_ids))

    head = ProceduralHead()
    faces = head.faces.numpy().astype(np.int32)
    flip = head.vertex_flip_index.numpy().astype(np.int32)
    identities: dict[int, Tensor] = {}
    written: dict[str, list[str]] = {"train": [], "test": []}
    for v in range(videos):
        ident_idx, clip = divmod(v, clips_per_identity)
        if ident_idx not in identities:
            identities[ident_idx] = sample_identity(_generator(seed, _STREAM_IDENTITY, ident_idx))[0]
        g = _generator(seed, _STREAM_VIDEO, v)
        params = sample_motion(identities[ident_idx], frames, g)
        with torch.no_grad():
            image, verts, labels = render_clip(head, params, size, g, supersample=supersample, parsing=True)
        split = "test" if ident_idx in test_ids else "train"
        name = f"id{ident_idx:04d}#clip{clip:02d}" + (".mp4" if video_format == "mp4" else "")
        video_path = out / split / name
        write_video(video_path, image, fps=fps)
        verts_pix = mesh_normalized_to_pixel(verts.double().numpy(), (size, size)).astype(np.float32)
        landmarks = verts_pix[:, head.landmark_indices.numpy(), :2]
        save_landmarks(landmarks_path(video_path), landmarks, num_frames=frames)
        save_mesh(
            mesh_path(video_path), verts_pix, faces, flip_index=flip,
            params=params.to_dict(prefix=""), num_frames=frames,
        )
        save_parsing(video_path, labels.numpy(), num_frames=frames, frame_size=(size, size))
        written[split].append(f"{split}/{name}")
        if progress is not None:
            progress(v + 1, videos)

    # Cross-identity pairs among test videos: each test video drives once with another identity.
    rows: list[tuple[str, str]] = []
    test_videos = written["test"]
    g = _generator(seed, _STREAM_PAIRS, 0)
    for src in test_videos:
        others = [d for d in test_videos if d.split("/")[1].split("#")[0] != src.split("/")[1].split("#")[0]]
        if others:
            rows.append((src, others[int(torch.randint(len(others), (1,), generator=g))]))
    buf = _stdio.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["source", "driving"])
    writer.writerows(rows)
    (out / "pairs.csv").write_text(buf.getvalue())

    record: dict[str, Any] = {
        "generator": "animzoo.data.synthetic",
        "version": GENERATOR_VERSION,
        "animzoo_version": __version__,
        "seed": seed,
        "videos": videos,
        "frames": frames,
        "size": size,
        "clips_per_identity": clips_per_identity,
        "test_fraction": test_fraction,
        "video_format": video_format,
        "fps": fps,
        "supersample": supersample,
        "identities": {"train": sorted(f"id{i:04d}" for i in range(num_ids) if i not in test_ids),
                       "test": sorted(f"id{i:04d}" for i in test_ids)},  # fmt: skip
        "num_landmarks": int(head.landmark_indices.numel()),
        "parsing_labels": list(PARSING_LABELS),
        "num_vertices": head.num_vertices,
        "num_faces": int(faces.shape[0]),
        "pairs": len(rows),
    }
    (out / "synthetic.json").write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")
    return {
        **record,
        "out_dir": str(out),
        "train_videos": len(written["train"]),
        "test_videos": len(written["test"]),
        "seconds": round(time.perf_counter() - start, 3),
    }
