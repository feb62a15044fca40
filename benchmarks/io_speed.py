"""Training-pair read speed: animzoo's seeking reader against decoding whole clips.

Writes ``--clips`` H.264 mp4 clips (``--size`` squared, ``--frames`` long, smooth moving
content, keyframe every ``--gop`` frames) into a temporary folder, then measures how many
training pairs per second can be read

* as animzoo's dataset does: open a :class:`animzoo.io.VideoReader`, read two random frames
  (sorted: source before driving), close;
* as first-order-model does: decode the whole clip, keep two frames.

Example::

    python benchmarks/io_speed.py --clips 8 --samples 64 --json benchmarks/results/io_speed.json
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from animzoo import io
from speed import machine_info, write_report  # the sibling script's: every report describes the machine alike


def moving_clip(frames: int, size: int, seed: int) -> np.ndarray:
    """T x S x S x 3 uint8: smooth gradients and a soft blob that drift over time."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    phase = rng.uniform(0, 2 * np.pi, 3).astype(np.float32)
    out = np.empty((frames, size, size, 3), np.uint8)
    for t in range(frames):
        s = t / frames
        cx, cy = 0.5 + 0.3 * np.cos(2 * np.pi * s + phase[0]), 0.5 + 0.3 * np.sin(2 * np.pi * s + phase[1])
        blob = np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / 0.02)
        out[t, ..., 0] = np.clip(60 + 120 * xx + 70 * blob, 0, 255)
        out[t, ..., 1] = np.clip(128 + 90 * np.sin(6 * (xx + yy) + 4 * s + phase[2]), 0, 255)
        out[t, ..., 2] = np.clip(40 + 150 * yy * (1 - blob), 0, 255)
    return out


def pairs_per_second(paths: list[Path], samples: int, seed: int, whole_clip: bool) -> tuple[float, float]:
    """(pairs per second, mean frames decoded per pair)."""
    rng = np.random.default_rng(seed)
    decoded = 0
    start = time.perf_counter()
    for _ in range(samples):
        path = paths[int(rng.integers(len(paths)))]
        if whole_clip:
            frames = io.read_video(path)
            pick = np.sort(rng.choice(len(frames), 2, replace=False))
            pair = frames[pick]
            decoded += len(frames)
        else:
            with io.VideoReader(path) as reader:
                pick = np.sort(rng.choice(reader.num_frames, 2, replace=False))
                pair = reader.read(pick)
                decoded += reader.frames_decoded
        assert pair.shape[0] == 2
    elapsed = time.perf_counter() - start
    return samples / elapsed, decoded / samples


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clips", type=int, default=8, help="number of mp4 clips to write")
    parser.add_argument("--frames", type=int, default=150, help="frames per clip")
    parser.add_argument("--size", type=int, default=256, help="frame height = width")
    parser.add_argument("--gop", type=int, default=25, help="keyframe interval of the written clips")
    parser.add_argument("--samples", type=int, default=64, help="training pairs to read per method")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, default=None, help="write the numbers to this JSON file")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="animzoo-io-bench-") as tmp:
        t0 = time.perf_counter()
        paths = [
            io.write_video(Path(tmp) / f"clip{i:03d}.mp4", moving_clip(args.frames, args.size, i), fps=25, gop=args.gop)
            for i in range(args.clips)
        ]
        write_s = time.perf_counter() - t0
        # warm-up: file cache and library initialisation should not count for either side
        pairs_per_second(paths, 2, args.seed + 1, whole_clip=False)
        fast, fast_decoded = pairs_per_second(paths, args.samples, args.seed, whole_clip=False)
        slow, slow_decoded = pairs_per_second(paths, args.samples, args.seed, whole_clip=True)

    result = {
        "clips": args.clips,
        "frames": args.frames,
        "size": args.size,
        "gop": args.gop,
        "samples": args.samples,
        "write_seconds": round(write_s, 3),
        "animzoo_pairs_per_s": round(fast, 2),
        "animzoo_frames_decoded_per_pair": round(fast_decoded, 1),
        "whole_clip_pairs_per_s": round(slow, 2),
        "whole_clip_frames_decoded_per_pair": round(slow_decoded, 1),
        "speedup": round(fast / slow, 2),
        "machine": machine_info("cpu", torch.get_num_threads()),
    }
    print(
        f"{args.clips} clips of {args.frames} frames, {args.size}x{args.size}, gop {args.gop} "
        f"(written in {write_s:.1f} s)\n"
        f"animzoo VideoReader.read(2 frames): {fast:8.1f} pairs/s  ({fast_decoded:.1f} frames decoded per pair)\n"
        f"decode whole clip (FOMM-style):     {slow:8.1f} pairs/s  ({slow_decoded:.1f} frames decoded per pair)\n"
        f"speed-up: {fast / slow:.1f}x"
    )
    if args.json is not None:
        write_report(args.json, result)


if __name__ == "__main__":
    main()
