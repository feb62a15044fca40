"""Make docs/images/synthetic_heads.png: SyntheticHeads frames with their 70 landmarks.

Each row is one identity: four frames of one clip (128 px, as `animzoo data synth --size 128`
renders them, here 2x supersampled), then two of them again with the landmarks drawn (68 iBUG
points in green, the two pupil landmarks in red). Cells are shown at 2x (nearest) so the points
stay legible.

Usage::

    python benchmarks/make_synthetic_figure.py [--out docs/images/synthetic_heads.png]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from animzoo.data.synthetic import _generator, render_clip
from animzoo.geometry.heads import ProceduralHead, sample_identity, sample_motion

SIZE, ZOOM = 128, 2
IDENTITIES, FRAMES = 5, (0, 10, 20, 30)
LANDMARK_FRAMES = (0, 20)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[1] / "docs/images/synthetic_heads.png")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    head = ProceduralHead()
    cell = SIZE * ZOOM
    cols = len(FRAMES) + len(LANDMARK_FRAMES)
    canvas = Image.new("RGB", (cols * cell + (cols - 1) * 4, IDENTITIES * cell + (IDENTITIES - 1) * 4), "white")
    for row in range(IDENTITIES):
        identity = sample_identity(_generator(args.seed, 0, row))[0]
        g = _generator(args.seed, 1, row)
        params = sample_motion(identity, max(FRAMES) + 1, g)
        with torch.no_grad():
            frames, verts = render_clip(head, params, SIZE, g, supersample=2)
        pix = (head.landmarks(verts)[..., :2] + 1) * (SIZE - 1) / 2  # align_corners=True pixels
        images = (frames.permute(0, 2, 3, 1).numpy() * 255).round().astype(np.uint8)
        shown = [(t, False) for t in FRAMES] + [(t, True) for t in LANDMARK_FRAMES]
        for col, (t, draw_points) in enumerate(shown):
            img = Image.fromarray(images[t]).resize((cell, cell), Image.NEAREST)
            if draw_points:
                draw = ImageDraw.Draw(img)
                for k, (x, y) in enumerate(pix[t].tolist()):
                    # Pixel centre i of the 128 grid is the centre of block i in the zoomed cell.
                    cx, cy = (x + 0.5) * ZOOM - 0.5, (y + 0.5) * ZOOM - 0.5
                    if k >= 68:  # pupils: a larger red dot with a white rim
                        draw.ellipse([cx - 3, cy - 3, cx + 3, cy + 3], fill=(255, 30, 30), outline=(255, 255, 255))
                    else:
                        draw.ellipse([cx - 1.6, cy - 1.6, cx + 1.6, cy + 1.6], fill=(40, 255, 90))
            canvas.paste(img, (col * (cell + 4), row * (cell + 4)))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(args.out, optimize=True)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
