"""How fast SyntheticHeads renders: wall time of `synthesize` for a given size.

Usage::

    python benchmarks/synth_speed.py                       # 200 videos x 32 frames at 64 px (target <= 60 s on 2 CPU cores)
    python benchmarks/synth_speed.py --videos 20 --threads 1 --supersample 2
"""

from __future__ import annotations

import argparse
import platform
import tempfile
import time

import torch

from animzoo.data.synthetic import synthesize


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--videos", type=int, default=200)
    parser.add_argument("--frames", type=int, default=32)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--supersample", type=int, default=1)
    parser.add_argument("--video-format", default="mp4", choices=["mp4", "png"])
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        summary = synthesize(
            tmp, videos=args.videos, frames=args.frames, size=args.size, seed=args.seed,
            video_format=args.video_format, supersample=args.supersample,
        )
        seconds = time.perf_counter() - start
    frames = args.videos * args.frames
    print(
        f"synthesize: {args.videos} videos x {args.frames} frames at {args.size}px "
        f"(supersample {args.supersample}, {args.video_format}) in {seconds:.1f} s = "
        f"{frames / seconds:.0f} frames/s; {summary['num_faces']} faces; torch {torch.__version__} "
        f"(renders single-threaded), {platform.processor() or platform.machine()}"
    )


if __name__ == "__main__":
    main()
