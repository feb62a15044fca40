"""Peak memory of one IMF forward + backward, with and without the attention cap.

    python benchmarks/imf_memory.py                                  # 256 px, batch 2, CPU: the issue's table
    python benchmarks/imf_memory.py --caps none 32 16 --math         # + the math kernel (no fused attention)
    python benchmarks/imf_memory.py --device cuda --batch-size 8

The model is ``recipes/imf/vox-256.yaml``'s (the paper's, ~100 M parameters) with
``alignment.max_attention_resolution`` set per row: ``none`` (the 64 x 64 scale attends over
4096 positions), ``32`` (patch attention over 2 x 2 cells there), ``16`` (4 x 4 cells at 64 px,
2 x 2 at 32 px). ``--math`` adds rows that force SDPA's math kernel, which stores the whole
attention map (what a plain ``softmax(QK^T)V`` implementation costs); the default rows use the
fused kernel that :func:`animzoo.nn.attention.attention` makes possible.

One step is ``animate`` on random frames, an L1 loss against the driving frames, and
``backward()`` (no optimiser, no discriminator, no perceptual network: the method's own
activations). Each row runs in its own process. On the CPU the peak is the resident-set
high-water mark (``VmHWM``) of the step alone, reset after the model is built (``clear_refs``),
minus the resident set before the step: ``step_peak_mib`` is what the step adds. On a GPU it is
``torch.cuda.max_memory_allocated`` during the step minus the allocation before it.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "recipes" / "imf" / "vox-256.yaml"


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status")


def _worker(args: argparse.Namespace) -> dict[str, Any]:
    import torch
    import yaml
    from torch.nn.attention import SDPBackend, sdpa_kernel

    from animzoo.methods.imf import IMF

    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    kwargs = dict(yaml.safe_load(RECIPE.read_text())["model"]["init_args"])
    for key in ("optimizer", "scheduler", "test_metrics"):
        kwargs.pop(key, None)
    kwargs["perceptual_weights"] = "none"
    kwargs["alignment"] = {**kwargs["alignment"], "max_attention_resolution": args.cap}
    kwargs["frame_size"] = args.size
    torch.manual_seed(0)
    model = IMF(**kwargs).to(device).train()
    b, s = args.batch_size, args.size
    batch = {"source": torch.rand(b, 3, s, s, device=device), "driving": torch.rand(b, 3, s, s, device=device)}
    backends = [SDPBackend.MATH] if args.math else [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION,
                                                     SDPBackend.CUDNN_ATTENTION, SDPBackend.MATH]

    def step() -> None:
        with sdpa_kernel(backends):
            out = model.animate(batch)
            torch.nn.functional.l1_loss(out["prediction"], batch["driving"]).backward()
        model.zero_grad(set_to_none=True)

    step()  # warm-up: allocator pools, lazy kernels
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        before = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
    else:
        Path("/proc/self/clear_refs").write_text("5")  # reset the RSS high-water mark
        before = _status_kib("VmRSS") * 1024
    start = time.perf_counter()
    step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        peak = torch.cuda.max_memory_allocated(device)
    else:
        peak = _status_kib("VmHWM") * 1024
    seconds = time.perf_counter() - start
    sizes = model.alignment.sizes
    return {
        "image_size": s,
        "batch_size": b,
        "device": str(device),
        "threads": args.threads,
        "max_attention_resolution": args.cap,
        "patch_sizes": {str(size): model.alignment.patch_size(size) for size in sizes},
        "sdpa": "math only" if args.math else "fused allowed",
        "params": sum(p.numel() for p in model.parameters()),
        "memory_before_mib": before / 2**20,
        "peak_mib": peak / 2**20,
        "step_peak_mib": (peak - before) / 2**20,
        "step_s": seconds,
        "kind": "cuda max_memory_allocated" if device.type == "cuda" else "process VmHWM (reset before the step)",
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--caps", nargs="+", default=["none", "32", "16"], help="max_attention_resolution per row")
    parser.add_argument("--math", action="store_true", help="also run every cap with the math SDPA kernel only")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--json", dest="json_out", default=None)
    parser.add_argument("--worker-cap", dest="cap", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    parser.add_argument("--worker-math", dest="worker_math", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if hasattr(args, "cap"):  # subprocess: one row
        args.cap = None if args.cap == "none" else int(args.cap)
        args.math = args.worker_math
        print(json.dumps(_worker(args)))
        return 0

    rows = []
    for math in ([False, True] if args.math else [False]):
        for cap in args.caps:
            cmd = [sys.executable, __file__, "--worker-cap", cap, "--size", str(args.size), "--batch-size",
                   str(args.batch_size), "--threads", str(args.threads), "--device", args.device]
            if math:
                cmd.append("--worker-math")
            proc = subprocess.run(cmd, check=False, capture_output=True, text=True, cwd=ROOT)
            if proc.returncode != 0:
                print(proc.stderr, file=sys.stderr)
                return proc.returncode
            row = json.loads(proc.stdout.strip().splitlines()[-1])
            rows.append(row)
            print(f"cap {row['max_attention_resolution']!s:>4}  {row['sdpa']:<13}  patches {row['patch_sizes']}  "
                  f"step adds {row['step_peak_mib']:8.0f} MiB (peak {row['peak_mib']:.0f} MiB)  {row['step_s']:.1f} s",
                  flush=True)
    if args.json_out:
        # The sibling script's, so both reports describe the machine alike.
        from speed import machine_info, write_report

        report = {
            "machine": machine_info(args.device, args.threads),
            "recipe": str(RECIPE.relative_to(ROOT)),
            "rows": rows,
        }
        write_report(args.json_out, report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
