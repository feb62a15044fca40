"""Make docs/images/imf_token_editing.png: free pose and expression editing by moving IMF tokens.

1. Render labelled frames: SyntheticHeads identities under random talking-head motion (the
   training distribution), each frame with its head yaw and mouth opening known.
2. Encode them and fit, per attribute, the token-space direction along which it grows
   (:func:`animzoo.methods.imf.token_direction`, least squares).
3. Take a source face of an identity the directions were not fitted on, and decode it with its
   own token moved along each direction (``t + delta * d``): a yaw row and a mouth row. A third
   row interpolates between the tokens of two frames of another person's clip
   (:meth:`IMF.interpolate`): motion transferred to the source, not the other face.

The printed line reports, for each direction, the squared correlation between the attribute and
the tokens' projection on that direction (how much of it one straight line in token space explains).

Usage::

    python benchmarks/make_imf_edit_figure.py --model CKPT_OR_PRETRAINED_DIR [--out docs/images/imf_token_editing.png]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from animzoo.data.synthetic import _generator, render_clip
from animzoo.geometry.heads import EXPRESSION_NAMES, POSE_NAMES, ProceduralHead, sample_identity, sample_motion

ZOOM, STEPS = 3, 7
YAW = np.linspace(-0.45, 0.45, STEPS)
MOUTH = np.linspace(0.0, 0.9, STEPS)


def _load(model: str):
    path = Path(model)
    if path.suffix == ".ckpt":
        from animzoo.methods.imf import IMF

        return IMF.load_from_checkpoint(path, map_location="cpu")
    from animzoo.hub import from_pretrained

    return from_pretrained(model)


def _frames(head: ProceduralHead, size: int, identities: range, frames: int, seed: int):
    images, yaw, mouth = [], [], []
    for i in identities:
        identity = sample_identity(_generator(seed, 0, i))[0]
        g = _generator(seed, 1, i)
        params = sample_motion(identity, frames, g)
        with torch.no_grad():
            image, _ = render_clip(head, params, size, g)
        images.append(image)
        yaw.append(params.pose[:, POSE_NAMES.index("yaw")])
        mouth.append(params.expression[:, EXPRESSION_NAMES.index("mouth_open")])
    return torch.cat(images), torch.cat(yaw), torch.cat(mouth)


def _r2(tokens: torch.Tensor, values: torch.Tensor, direction: torch.Tensor) -> float:
    """Squared correlation between the attribute and the tokens' projection on the direction."""
    projected = (tokens - tokens.mean(0)) @ direction
    return float(torch.corrcoef(torch.stack([projected, values.to(projected.dtype)]))[0, 1] ** 2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="an IMF checkpoint (.ckpt) or pretrained folder")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[1] / "docs/images/imf_token_editing.png")
    parser.add_argument("--seed", type=int, default=7, help="seed of the labelled frames (not the training data's 0)")
    args = parser.parse_args()
    torch.manual_seed(0)
    model = _load(args.model).eval()
    from animzoo.methods.imf import token_direction

    size = model.image_size
    head = ProceduralHead()
    images, yaw, mouth = _frames(head, size, range(0, 24), 24, args.seed)
    with torch.no_grad():
        tokens = torch.cat([model.encode_tokens(chunk) for chunk in images.split(64)])
    d_yaw, d_mouth = token_direction(tokens, yaw), token_direction(tokens, mouth)
    print(f"R^2 of a straight token direction: yaw {_r2(tokens, yaw, d_yaw):.2f}, mouth {_r2(tokens, mouth, d_mouth):.2f}")

    source_frames, _, source_mouth = _frames(head, size, range(100, 101), 24, args.seed)
    source = source_frames[int(torch.argmin(source_mouth))][None]  # a closed mouth, so opening it shows
    drive, _, _ = _frames(head, size, range(101, 102), 24, args.seed)
    with torch.no_grad():
        t0 = model.encode_tokens(source)
        rows = {
            "yaw": model.decode(source, t0 + torch.as_tensor(YAW, dtype=t0.dtype)[:, None] * d_yaw)["prediction"],
            "mouth": model.decode(source, t0 + torch.as_tensor(MOUTH, dtype=t0.dtype)[:, None] * d_mouth)["prediction"],
        }
    rows["interp."] = model.interpolate(source, drive[:1], drive[-1:], steps=STEPS)

    cell, label_w, pad = size * ZOOM, 64, 4
    width = label_w + (STEPS + 1) * (cell + pad)
    canvas = Image.new("RGB", (width, len(rows) * (cell + pad) + 20), "white")
    draw = ImageDraw.Draw(canvas)
    draw.text((label_w, 4), "source", fill="black")
    draw.text((label_w + cell + pad, 4), "decoded with the source's token moved along a direction ->", fill="black")
    for r, (name, row) in enumerate(rows.items()):
        y = 20 + r * (cell + pad)
        draw.text((4, y + cell // 2), name, fill="black")
        cells = [source[0], *row]
        for c, image in enumerate(cells):
            arr = (image.clamp(0, 1).permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
            tile = Image.fromarray(arr).resize((cell, cell), Image.NEAREST)
            canvas.paste(tile, (label_w + c * (cell + pad), y))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
