"""How much an IMF model's tokens carry motion (the number docs/methods/imf.md follows in training).

For the first two test clips of SyntheticHeads 64 (the synthetic-64 data config): the spread of the
tokens of one clip's frames around their mean, the distance between the two clips' mean tokens
(another person), and how much IMF_D's motion features vary across 8 frames of a clip relative to
their overall spread, per scale. A model that transfers motion has within-clip spread of the order
of the between-clip distance and features that vary with the frame.

Then, on both clips (frame 0 as the reference, as in the reconstruction protocol), the L1 errors
that separate the two things a model must learn: redrawing (``self-reconstruction``: every frame
as its own reference) and moving (``animated`` against ``still``, the reference redrawn under its
own token, and ``copy``, the reference itself). A model moves the head when ``animated`` is well
below ``still``; it can beat SourceCopy only once ``self-reconstruction`` is well below ``copy``.

    python benchmarks/imf_token_spread.py --model runs/animzoo/<id>/checkpoints/last.ckpt
"""

from __future__ import annotations

import argparse

import torch

from animzoo.data import AnimationDataModule
from animzoo.methods.imf import IMF


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="an IMF checkpoint (.ckpt)")
    args = parser.parse_args()
    model = IMF.load_from_checkpoint(args.model, map_location="cpu").eval()
    data = AnimationDataModule(
        root=None, synthetic={"videos": 200, "frames": 32, "size": 64, "seed": 0, "clips_per_identity": 4,
                              "test_fraction": 0.2},
        test_batch_size=1, chunk_size=32, num_workers=0,
    )
    data.prepare_data()
    data.setup("test")
    loader = data.test_dataloader()
    loader = loader[0] if isinstance(loader, list) else loader
    batches = iter(loader)
    first, second = next(batches), next(batches)
    with torch.no_grad():
        tokens = model.encode_tokens(first["driving"])
        other = model.encode_tokens(second["driving"])
        within = (tokens - tokens.mean(0)).norm(dim=-1).mean()
        between = (tokens.mean(0) - other.mean(0)).norm()
        print(f"token norm {tokens.norm(dim=-1).mean():.3f}  within-clip spread {within:.3f}  "
              f"between clips {between:.3f}")
        for scale, features in enumerate(model.token_decoder(tokens[:8])):
            print(f"scale {scale} ({features.shape[-1]} px): motion features vary "
                  f"{features.std(0).mean() / features.std():.2%} across frames")
        for name, batch in (("clip 1", first), ("clip 2", second)):
            clip = batch["driving"]
            reference = clip[:1].expand_as(clip)
            animated = model.animate({"source": reference, "driving": clip})
            errors = {
                "self-reconstruction": model.animate({"source": clip, "driving": clip})["prediction"],
                "animated": animated["prediction"],
                # the reference under its own token (already encoded by animate): motion switched off
                "still": model.decode(reference, animated["reference_tokens"])["prediction"],
                "copy": reference,
            }
            print(f"{name} L1: " + "  ".join(f"{k} {(v - clip).abs().mean():.4f}" for k, v in errors.items()))


if __name__ == "__main__":
    main()
