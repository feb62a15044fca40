"""Training and inference speed of a method (Monkey-Net, sparse-to-dense), with peak memory.

    python benchmarks/speed.py                                   # Monkey-Net, 64 px (synthetic recipe) and 256 px (vox recipe)
    python benchmarks/speed.py --method sparse2dense             # the same for sparse-to-dense
    python benchmarks/speed.py --sizes 64 --batch-size 16 --threads 2 --json out.json
    python benchmarks/speed.py --device cuda --sizes 256 --batch-size 20

A training step is what ``animzoo fit`` runs per batch: the method's generator step (for
Monkey-Net: keypoint detector, dense motion, generator, discriminator feature matching + LSGAN;
for sparse-to-dense: global + local motion branches, generator, perceptual + L1 + LSGAN +
parsing prior), backward, Adam step, then the discriminator step, backward, Adam step.
Landmark-driven methods get random face-like landmarks (and parsing maps when they need them).
When a recipe asks for the VGG19 perceptual loss and the file is not on this machine, a VGG19
with random weights stands in (the same cost; the numbers say so). Inference is ``animate`` in eval mode without
gradients (one source against a batch of driving frames), counted in frames per second.

Each image size runs in its own subprocess so that the peak memory is that size's alone:
the resident-set high-water mark (``getrusage`` ``ru_maxrss``) on the CPU,
``torch.cuda.max_memory_allocated`` on a GPU. The model comes from a recipe's
``model.init_args`` (default: ``recipes/<method>/synthetic-64.yaml`` for sizes < 256, else
``recipes/<method>/vox-256.yaml``), so the numbers describe the configurations people run.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


def _recipe_for(size: int, recipe: str | None, method: str = "monkeynet") -> Path:
    if recipe:
        return Path(recipe)
    name = "synthetic-64.yaml" if size < 256 else "vox-256.yaml"
    return ROOT / "recipes" / method / name


def _model_kwargs(recipe: Path) -> dict[str, Any]:
    import yaml

    config = yaml.safe_load(recipe.read_text(encoding="utf-8"))
    args = dict(config["model"]["init_args"])
    for key in ("optimizer", "scheduler", "discriminator_optimizer", "discriminator_scheduler"):
        args.pop(key, None)
    return args


def _worker(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    torch.set_num_threads(args.threads)
    from animzoo.registry import get_method

    device = torch.device(args.device)
    recipe = _recipe_for(args.size, args.recipe, args.method)
    torch.manual_seed(0)
    kwargs = _model_kwargs(recipe)
    perceptual = _perceptual_stand_in(kwargs)
    model = get_method(args.method)(**kwargs).to(device)
    g_opt = torch.optim.Adam(model.generator_parameters(), lr=2e-4, betas=(0.5, 0.999))
    d_opt = torch.optim.Adam(model.discriminator.parameters(), lr=2e-4, betas=(0.5, 0.999))
    b, s = args.batch_size, args.size
    batch = _batch(model, b, s, device)

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    def train_step() -> None:
        for p in model.discriminator.parameters():
            p.requires_grad_(False)
        loss, _, out = model.generator_step(batch)
        g_opt.zero_grad(set_to_none=True)
        loss.backward()
        g_opt.step()
        for p in model.discriminator.parameters():
            p.requires_grad_(True)
        d_loss, _ = model.discriminator_step(batch, out)
        d_opt.zero_grad(set_to_none=True)
        d_loss.backward()
        d_opt.step()

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    model.train()
    for _ in range(args.warmup):
        train_step()
    sync()
    start = time.perf_counter()
    for _ in range(args.steps):
        train_step()
    sync()
    train_time = (time.perf_counter() - start) / args.steps
    train_peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None

    model.eval()
    frames = args.inference_batch_size
    source = torch.rand(1, 3, s, s, device=device).expand(frames, 3, s, s)
    inf_batch = {**_batch(model, frames, s, device), "source": source}
    with torch.no_grad():
        for _ in range(max(1, args.warmup)):
            model.animate(inf_batch)
        sync()
        start = time.perf_counter()
        for _ in range(args.steps):
            model.animate(inf_batch)
        sync()
    infer_time = (time.perf_counter() - start) / args.steps
    peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None
    rss_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    params = sum(p.numel() for p in model.parameters())
    return {
        "method": args.method,
        "perceptual": perceptual,
        "recipe": str(recipe.relative_to(ROOT)) if recipe.is_relative_to(ROOT) else str(recipe),
        "image_size": s,
        "batch_size": b,
        "device": str(device),
        "threads": args.threads,
        "params": params,
        "train_step_s": train_time,
        "train_steps_per_s": 1.0 / train_time,
        "train_samples_per_s": b / train_time,
        "inference_batch": frames,
        "inference_frames_per_s": frames / infer_time,
        "peak_memory_mib": (peak / 2**20) if peak is not None else rss_kb / 1024,
        "peak_memory_kind": "cuda max_memory_allocated" if peak is not None else "process max RSS",
        "train_peak_memory_mib": (train_peak / 2**20) if train_peak is not None else None,
    }


def _perceptual_stand_in(kwargs: dict[str, Any]) -> str | None:
    """Swap a missing VGG19 file for random VGG19 weights (same layers, same cost)."""
    if kwargs.get("perceptual_weights") != "vgg19":
        return kwargs.get("perceptual_weights")
    from animzoo.weights import WeightsError, resolve_weight

    try:
        resolve_weight("vgg19", None, allow_download=False)
        return "vgg19"
    except WeightsError:
        import tempfile

        import torch
        import torchvision

        path = Path(tempfile.mkdtemp()) / "vgg19-random.pth"
        torch.save(torchvision.models.vgg19(weights=None).state_dict(), path)
        kwargs["perceptual_weights"] = str(path)
        return "vgg19 (random weights: the file is not on this machine; same cost)"


def _batch(model: Any, b: int, s: int, device: Any) -> dict[str, Any]:
    """Random images, plus face-like landmarks / parsing maps when the method requires them."""
    import torch

    batch: dict[str, Any] = {"source": torch.rand(b, 3, s, s, device=device),
                             "driving": torch.rand(b, 3, s, s, device=device)}
    requires = getattr(model, "requires", frozenset())
    if "landmarks" in requires:
        # The cost does not depend on where the landmarks are: one random layout, jittered per sample.
        lm = 0.5 * torch.rand(1, model.num_landmarks, 2) - 0.25 + 0.02 * torch.randn(2 * b, model.num_landmarks, 2)
        batch["source_landmarks"], batch["driving_landmarks"] = lm.to(device).chunk(2)
    if "parsing" in requires:
        labels = getattr(model, "num_parsing_labels", 2)
        batch["source_parsing"] = torch.randint(0, labels, (b, s, s), device=device)
        batch["driving_parsing"] = torch.randint(0, labels, (b, s, s), device=device)
    return batch


def _machine(device: str, threads: int) -> dict[str, Any]:
    import torch

    info = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cpu": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "threads": threads,
    }
    if device.startswith("cuda") and torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--method", default="monkeynet", help="registered method name (monkeynet, sparse2dense)")
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 256], help="image sizes (default: 64 256)")
    parser.add_argument("--batch-size", type=int, default=None, help="training batch (default: 16 at <256 px, 4 at 256 px on CPU)")
    parser.add_argument("--inference-batch-size", type=int, default=16, help="driving frames per animate call")
    parser.add_argument("--steps", type=int, default=5, help="timed iterations")
    parser.add_argument("--warmup", type=int, default=1, help="untimed iterations first")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--recipe", default=None, help="take the model from this recipe for every size")
    parser.add_argument("--json", dest="json_out", default=None, help="write the results here")
    parser.add_argument("--worker-size", dest="size", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.size is not None:  # subprocess: one size
        print(json.dumps(_worker(args)))
        return 0

    results = []
    for size in args.sizes:
        batch = args.batch_size or (16 if size < 256 else (20 if args.device.startswith("cuda") else 4))
        cmd = [sys.executable, __file__, "--worker-size", str(size), "--batch-size", str(batch),
               "--inference-batch-size", str(args.inference_batch_size), "--steps", str(args.steps),
               "--warmup", str(args.warmup), "--threads", str(args.threads), "--device", args.device,
               "--method", args.method]
        if args.recipe:
            cmd += ["--recipe", args.recipe]
        proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
        if proc.returncode != 0:
            print(proc.stderr, file=sys.stderr)
            return proc.returncode
        result = json.loads(proc.stdout.strip().splitlines()[-1])
        results.append(result)
        print(
            f"{size:>4} px  batch {result['batch_size']:>3}  train {result['train_steps_per_s']:.3f} steps/s "
            f"({result['train_samples_per_s']:.1f} samples/s)  inference {result['inference_frames_per_s']:.1f} frames/s  "
            f"peak {result['peak_memory_mib']:.0f} MiB ({result['peak_memory_kind']})  [{result['recipe']}]",
            flush=True,
        )
    report = {"machine": _machine(args.device, args.threads), "results": results}
    if args.json_out:
        Path(args.json_out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json_out).write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
        print(f"wrote {args.json_out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
