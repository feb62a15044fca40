"""Frames per second of the whole metric suite at 256 px (and of each metric alone).

Frames are the scikit-image astronaut photo (a real face, so the dlib backends detect, align and
embed as on real data) resized to 256 px, with per-frame shifts and noise; the LPIPS AlexNet
trunk has random weights written to a temp dir (its cost is that of the real file, which cannot
be downloaded here). Run:

    python benchmarks/metric_suite_speed.py --frames 64 --threads 2 --out benchmarks/results/metric-suite-speed-cpu2core-pt2.15.json
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from speed import machine_info, write_report  # the sibling script's: every report describes the machine alike

SUITE = {
    "l1": {},
    "psnr": {},
    "ssim": {},
    "ms_ssim": {},
    "lpips": {"net": "alex"},
    "fid": {},
    "akd": {"backend": "dlib68"},
    "csim": {"backend": "dlib128"},
}


def frames(n: int, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    from skimage.data import astronaut

    image = torch.from_numpy(astronaut()).permute(2, 0, 1).float()[None] / 255
    image = F.interpolate(image, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    g = torch.Generator().manual_seed(0)
    target = torch.cat([torch.roll(image, shifts=(i % 5 - 2, i % 3 - 1), dims=(2, 3)) for i in range(n)])
    prediction = (target + 0.03 * torch.randn(target.shape, generator=g)).clamp(0, 1)
    return prediction, target


def run(names: dict, prediction: torch.Tensor, target: torch.Tensor, batch: int, device: str) -> tuple[float, dict]:
    from animzoo.metrics import AnimationMetrics, metric_status

    metrics = AnimationMetrics(metrics=list(names), metric_kwargs=names).to(device)
    n = prediction.shape[0]
    start = time.perf_counter()
    for i in range(0, n, batch):
        p, t = prediction[i:i + batch].to(device), target[i:i + batch].to(device)
        metrics.update(p, t, ["astronaut"] * p.shape[0], torch.arange(i, i + p.shape[0]), source=target[:1].expand_as(t).to(device))
    values = {k: float(v) for k, v in metrics.compute().items()}
    if device == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    return n / seconds, {"values": values, "status": metric_status(metrics)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=64)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    with tempfile.TemporaryDirectory() as weights:
        # Random AlexNet trunk under its torchvision file name: same cost as the real weights.
        import torchvision

        trunk = Path(weights) / "alexnet-owt-7be5be79.pth"
        torch.save(torchvision.models.alexnet().state_dict(), trunk)
        SUITE["lpips"]["weights_path"] = str(trunk)  # an explicit path is used as given
        prediction, target = frames(args.frames, args.size)
        run({"l1": {}}, prediction[:2], target[:2], args.batch, args.device)  # warm-up imports
        results = {}
        for name, kwargs in SUITE.items():
            fps, info = run({name: kwargs}, prediction, target, args.batch, args.device)
            results[name] = {"frames_per_s": round(fps, 2), **info}
            print(f"{name:8s} {fps:8.2f} frames/s  {info['status']}")
        fps, info = run(SUITE, prediction, target, args.batch, args.device)
        print(f"{'suite':8s} {fps:8.2f} frames/s")
    report = {
        "benchmark": "metric suite frames/s",
        "frames": args.frames, "size": args.size, "batch": args.batch, "threads": args.threads,
        "device": args.device, "machine": machine_info(args.device, args.threads), "suite_frames_per_s": round(fps, 2), "per_metric": results,
        "suite_values": info["values"], "suite_status": info["status"],
    }
    if args.out:
        write_report(args.out, report)


if __name__ == "__main__":
    main()
