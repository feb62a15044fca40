"""Training and inference speed of a method (Monkey-Net, sparse-to-dense, PWM, IMF), with peak memory.

    python benchmarks/speed.py                                   # Monkey-Net, 64 px (synthetic recipe) and 256 px (vox recipe)
    python benchmarks/speed.py --method sparse2dense             # the same for sparse-to-dense
    python benchmarks/speed.py --method pwm                      # PWM (+ the share of a training step spent rendering guidance)
    python benchmarks/speed.py --method pwm --guidance displacement codes displacement,codes
    python benchmarks/speed.py --method imf                      # IMF (attention memory: benchmarks/imf_memory.py)
    python benchmarks/speed.py --sizes 64 --batch-size 16 --threads 2 --json out.json
    python benchmarks/speed.py --device cuda --sizes 256 --batch-size 20

A training step is what ``animzoo fit`` runs per batch: the method's generator step (for
Monkey-Net: keypoint detector, dense motion, generator, discriminator feature matching + LSGAN;
for sparse-to-dense: global + local motion branches, generator, perceptual + L1 + LSGAN +
parsing prior; for PWM: guidance rendering, progressive warping generator, perceptual + pixel +
feature matching + hinge GAN + warp losses; for IMF: token encoder on both frames, token
decoder, cross-attention alignment, frame decoder, L1 + perceptual + hinge GAN), backward, Adam step, then the discriminator step,
backward, Adam step. Landmark-driven methods get random face-like landmarks (and parsing maps
when they need them). Mesh-driven methods (PWM) get head meshes of
:class:`~animzoo.geometry.ProceduralHead` (random identities, poses and expressions; the driving
mesh is the source's with a small pose / expression change, so the guidance covers a face-sized
area) at the model's vertex count: when that is not the procedural head's 2,322 (e.g. FLAME's
5,023 of the vox recipe, whose head is null) a stand-in mesh is built by splitting the largest
faces at their centroids (2,322 -> 5,023 vertices, 4,384 -> 9,786 faces, FLAME: 9,976); the
JSON's ``mesh`` says which was used.
When a recipe asks for the VGG19 perceptual loss and the file is not on this machine, a VGG19
with random weights stands in (the same cost; the numbers say so). Inference is ``animate`` in eval mode without
gradients (one source against a batch of driving frames), counted in frames per second.

Guidance share (methods with a ``guidance`` renderer, i.e. PWM): the time of
``model.guidance(source_mesh, driving_mesh, faces, size)`` (rasterizing + interpolating the
guidance) forward, plus its backward when the renderer has parameters (the neural codes), as a
fraction of the whole training step: ``guidance_ms``, ``train_step_ms`` and ``guidance_share``
in the JSON and the printed line. It is clocked inside the timed training steps (module and
tensor hooks), so it is the cost the step really pays; ``guidance_isolated_*`` time the same
call on its own (median after 3 warm-ups). ``--guidance``
measures each variant (comma-separated kinds, e.g. ``displacement``, ``codes``,
``displacement,codes``) with its own model, one row per variant and size.

Each image size runs in its own subprocess so that the peak memory is that size's alone:
the resident-set high-water mark (``getrusage`` ``ru_maxrss``) on the CPU,
``torch.cuda.max_memory_allocated`` on a GPU. The model comes from a recipe's
``model.init_args`` (default: ``recipes/<method>/synthetic-64.yaml`` for sizes < 256, else
``recipes/<method>/vox-256.yaml``), so the numbers describe the configurations people run.
The JSON records the machine's load average before and after each run (other processes on the
machine slow the numbers down). When another process keeps the CPU busy, use ``--threads 1``:
two threads on two busy cores made every timing 4-10x slower and erratic (the guidance's many
small rasterizer ops worst of all; results/pwm-speed-cpu2core-pt2.15.json).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
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
    if args.guidance_variant:
        kwargs["guidance"] = [k.strip() for k in args.guidance_variant.split(",") if k.strip()]
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
    clock = _GuidanceClock(model, sync)
    step_times = []
    start = time.perf_counter()
    for _ in range(args.steps):
        step_start = time.perf_counter()
        train_step()
        sync()
        clock.step_done()
        step_times.append(time.perf_counter() - step_start)
    train_time = (time.perf_counter() - start) / args.steps
    clock.remove()
    train_peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None
    guidance = _time_guidance(model, batch, s, max(3, args.steps), max(3, args.warmup), sync)

    model.eval()
    frames = args.inference_batch_size
    source = torch.rand(1, 3, s, s, device=device).expand(frames, 3, s, s)
    inf_batch = _one_source({**_batch(model, frames, s, device), "source": source})
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
    extra: dict[str, Any] = {}
    if guidance is not None and clock.forward:
        kinds = list(getattr(model.guidance, "kinds", ()))
        forward_ms = 1000.0 * sum(clock.forward) / len(clock.forward)
        backward_ms = 1000.0 * sum(clock.backward) / len(clock.backward) if clock.backward else None
        guidance_ms = forward_ms + (backward_ms or 0.0)
        each = [1000.0 * (f + (clock.backward[i] if i < len(clock.backward) else 0.0)) for i, f in enumerate(clock.forward)]
        extra = {
            "guidance": kinds,
            "mesh": batch.get("mesh_description"),
            "mesh_vertices": int(batch["source_mesh"].shape[1]),
            "mesh_faces": int(batch["mesh_faces"].shape[0]),
            "guidance_coverage": guidance.pop("coverage"),
            "guidance_forward_ms": forward_ms,
            "guidance_backward_ms": backward_ms,
            "guidance_ms": guidance_ms,
            "train_step_ms": 1000.0 * train_time,
            "guidance_share": guidance_ms / (1000.0 * train_time),
            "train_step_ms_each": [1000.0 * x for x in step_times],
            "guidance_ms_each": each,
            **guidance,
        }
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
        **extra,
    }


class _GuidanceClock:
    """Times ``model.guidance`` inside the training steps (hooks): its forward (pre / post forward
    hooks), and, when it has trainable parameters (the neural codes), its backward: from the
    moment autograd reaches the renderer's outputs (tensor hooks; they are the oldest nodes of the
    generator's graph, so autograd visits them last) to the accumulation of the parameters'
    gradients. ``forward`` / ``backward``: seconds per step. No-op for methods without one."""

    def __init__(self, model: Any, sync: Any) -> None:
        import torch

        self.forward: list[float] = []
        self.backward: list[float] = []
        self._sync = sync
        self._handles: list[Any] = []
        self._start: float | None = None
        self._grad_start: float | None = None
        self._grad_end: float | None = None
        renderer = getattr(model, "guidance", None)
        if not isinstance(renderer, torch.nn.Module):
            return
        self._params = [p for p in renderer.parameters() if p.requires_grad]
        self._handles += [renderer.register_forward_pre_hook(self._pre), renderer.register_forward_hook(self._post)]
        self._handles += [p.register_post_accumulate_grad_hook(self._accumulated) for p in self._params]

    def _pre(self, module: Any, args: Any) -> None:
        self._sync()
        self._start = time.perf_counter()

    def _post(self, module: Any, args: Any, out: dict[str, Any]) -> None:
        import torch

        self._sync()
        if self._start is not None:
            self.forward.append(time.perf_counter() - self._start)
        if self._params and torch.is_grad_enabled():
            for key in ("driving", "source"):
                value = out.get(key)
                if isinstance(value, torch.Tensor) and value.requires_grad:
                    value.register_hook(self._grad_reached)

    def _grad_reached(self, grad: Any) -> None:
        if self._grad_start is None:
            self._sync()
            self._grad_start = time.perf_counter()

    def _accumulated(self, param: Any) -> None:
        self._sync()
        self._grad_end = time.perf_counter()

    def step_done(self) -> None:
        if self._grad_start is not None and self._grad_end is not None and self._grad_end > self._grad_start:
            self.backward.append(self._grad_end - self._grad_start)
        self._grad_start = self._grad_end = None

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []


def _time_guidance(model: Any, batch: dict[str, Any], s: int, repeats: int, warmup: int, sync: Any) -> dict[str, Any] | None:
    """Time ``model.guidance`` (rasterize + interpolate) on its own, on the training batch:
    forward, and backward (of random output gradients) when the renderer has trainable
    parameters; the median of ``repeats`` runs after ``warmup``. None for methods without a
    guidance renderer."""
    import torch

    renderer = getattr(model, "guidance", None)
    if not isinstance(renderer, torch.nn.Module) or "source_mesh" not in batch:
        return None
    params = [p for p in renderer.parameters() if p.requires_grad]
    meshes = (batch["source_mesh"], batch["driving_mesh"], batch["mesh_faces"], (s, s))

    def forward() -> dict[str, Any]:
        return renderer(*meshes)

    def outputs(out: dict[str, Any]) -> list[Any]:
        return [out[k] for k in ("driving", "source") if out.get(k) is not None and out[k].requires_grad]

    forward_s, backward_s = [], []
    for i in range(warmup + repeats):
        sync()
        start = time.perf_counter()
        out = forward()
        sync()
        mid = time.perf_counter()
        tensors = outputs(out) if params else []
        if tensors:
            torch.autograd.backward(tensors, [torch.randn_like(x) for x in tensors])
            sync()
        end = time.perf_counter()
        for p in params:
            p.grad = None
        if i >= warmup:
            forward_s.append(mid - start)
            backward_s.append(end - mid)
    fwd = 1000.0 * statistics.median(forward_s)
    bwd = 1000.0 * statistics.median(backward_s)
    return {
        "guidance_isolated_forward_ms": fwd,
        "guidance_isolated_backward_ms": bwd if params else None,
        "guidance_isolated_ms": fwd + (bwd if params else 0.0),
        "guidance_isolated_repeats": repeats,
        "coverage": float(out["mask"].mean()),
    }


def _one_source(batch: dict[str, Any]) -> dict[str, Any]:
    """Inference animates one source: make every ``source_*`` tensor row 0's, like the image."""
    import torch

    out = dict(batch)
    for key, value in batch.items():
        if key.startswith("source_") and isinstance(value, torch.Tensor) and value.dim() >= 1:
            out[key] = value[:1].expand_as(value)
    return out


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
    if "mesh" in requires:
        count = int(getattr(model, "mesh_vertex_count", PROCEDURAL_VERTICES))
        source_mesh, driving_mesh, faces, description = head_meshes(b, count)
        batch.update(source_mesh=source_mesh.to(device), driving_mesh=driving_mesh.to(device),
                     mesh_faces=faces.to(device), mesh_description=description)
    return batch


PROCEDURAL_VERTICES = 2322  # ProceduralHead().num_vertices


def head_meshes(b: int, num_vertices: int, seed: int = 0) -> tuple[Any, Any, Any, str]:
    """``b`` source / driving head-mesh pairs (B x V x 3 each, image space) and their faces (F x 3).

    ProceduralHead meshes: random identities, poses (yaw <= 0.4, pitch <= 0.25, roll <= 0.1 rad,
    scale 0.65 +- 0.05 as in SyntheticHeads: the head about 65 % of the image tall), expressions and
    gaze; the driving mesh changes the pose a little (yaw +- 0.15, pitch +- 0.1 rad, shifts
    +- 0.03) and redraws the expression. When ``num_vertices`` is larger than the procedural
    head's, a stand-in mesh of exactly that many vertices is made by splitting the largest faces
    (on the neutral mean face) at their centroids: each split adds one vertex (the centroid, so
    it moves with the mesh) and two faces, keeping the outward winding.

    Returns:
        ``(source_mesh, driving_mesh, faces, description)``.
    """
    import torch

    from animzoo.geometry import HeadParams, ProceduralHead

    head = ProceduralHead()
    base = head.num_vertices
    extra = num_vertices - base
    faces = head.faces
    if extra < 0 or extra > faces.shape[0]:
        raise ValueError(
            f"cannot build a {num_vertices}-vertex mesh from the procedural head ({base} vertices, "
            f"{faces.shape[0]} faces): use a vertex count between {base} and {base + faces.shape[0]}"
        )
    g = torch.Generator().manual_seed(seed)

    def uniform(n: int, k: int, low: float, high: float) -> Any:
        return low + (high - low) * torch.rand(n, k, generator=g)

    source = head.neutral_params(b, head.sample_identity(g, b))
    source.pose = torch.cat([
        uniform(b, 1, -0.4, 0.4), uniform(b, 1, -0.25, 0.25), uniform(b, 1, -0.1, 0.1),  # yaw, pitch, roll
        uniform(b, 2, -0.05, 0.05), torch.zeros(b, 1), uniform(b, 1, 0.6, 0.7),  # tx, ty, tz, scale
    ], 1)  # fmt: skip
    source.expression = uniform(b, 5, 0.0, 0.6)
    source.gaze = uniform(b, 2, -0.2, 0.2)
    delta = torch.cat([
        uniform(b, 1, -0.15, 0.15), uniform(b, 1, -0.1, 0.1), uniform(b, 1, -0.05, 0.05),
        uniform(b, 2, -0.03, 0.03), torch.zeros(b, 2),
    ], 1)  # fmt: skip
    driving = HeadParams(source.identity, uniform(b, 5, 0.0, 0.6), uniform(b, 2, -0.2, 0.2), source.pose + delta)
    with torch.no_grad():
        meshes = [head.vertices(p) for p in (source, driving)]
    description = f"ProceduralHead ({base} vertices, {faces.shape[0]} faces)"
    if extra:
        mean = head.mean_face_vertices()
        tri = mean[faces]
        area = torch.linalg.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0]).norm(dim=-1)
        split = torch.argsort(area, descending=True, stable=True)[:extra]
        keep = torch.ones(faces.shape[0], dtype=torch.bool)
        keep[split] = False
        centre = base + torch.arange(extra)
        a, bb, c = faces[split].unbind(-1)
        faces = torch.cat([faces[keep], torch.stack([a, bb, centre], -1), torch.stack([bb, c, centre], -1),
                           torch.stack([c, a, centre], -1)])  # fmt: skip
        meshes = [torch.cat([m, m[:, head.faces[split]].mean(2)], 1) for m in meshes]
        description = (
            f"stand-in: ProceduralHead with its {extra} largest faces split at the centroid "
            f"({num_vertices} vertices, {faces.shape[0]} faces)"
        )
    return meshes[0].float(), meshes[1].float(), faces.long(), description


def write_report(path: str | Path, report: dict[str, Any]) -> None:
    """Write a benchmark report as indented JSON, creating its folder."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {path}")


def machine_info(device: str, threads: int) -> dict[str, Any]:
    """What every benchmark report says about the machine it ran on (the benchmarks share it)."""
    import torch

    info = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cpu": platform.processor() or platform.machine(),
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "threads": threads,
    }
    if device.startswith("cuda") and torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def _summary(result: dict[str, Any]) -> str:
    line = (
        f"{result['image_size']:>4} px  batch {result['batch_size']:>3}  train {result['train_steps_per_s']:.3f} steps/s "
        f"({result['train_samples_per_s']:.1f} samples/s)  inference {result['inference_frames_per_s']:.1f} frames/s  "
        f"peak {result['peak_memory_mib']:.0f} MiB ({result['peak_memory_kind']})  [{result['recipe']}]"
    )
    if "guidance_share" in result:
        line += (
            f"  guidance {'+'.join(result['guidance'])}: {result['guidance_ms']:.1f} ms of a "
            f"{result['train_step_ms']:.0f} ms training step = {100 * result['guidance_share']:.2f} % "
            f"(alone: {result['guidance_isolated_ms']:.1f} ms)"
        )
    return line


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--method", default="monkeynet", help="registered method name (monkeynet, sparse2dense, pwm, imf)")
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 256], help="image sizes (default: 64 256)")
    parser.add_argument("--batch-size", type=int, default=None, help="training batch (default: 16 at <256 px, 4 at 256 px on CPU)")
    parser.add_argument("--inference-batch-size", type=int, default=16, help="driving frames per animate call")
    parser.add_argument("--steps", type=int, default=5, help="timed iterations")
    parser.add_argument("--warmup", type=int, default=1, help="untimed iterations first")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--recipe", default=None, help="take the model from this recipe for every size")
    parser.add_argument("--guidance", nargs="+", default=None,
                        help="PWM guidance variants to measure, each a comma-separated list of kinds "
                             "(e.g. displacement codes displacement,codes; default: the recipe's)")
    parser.add_argument("--note", default=None, help="a remark stored in the JSON (e.g. what else ran)")
    parser.add_argument("--json", dest="json_out", default=None, help="write the results here")
    parser.add_argument("--worker-guidance", dest="guidance_variant", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--worker-size", dest="size", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.size is not None:  # subprocess: one size
        print(json.dumps(_worker(args)))
        return 0

    results = []
    for size in args.sizes:
        for variant in args.guidance or [None]:
            batch = args.batch_size or (16 if size < 256 else (20 if args.device.startswith("cuda") else 4))
            cmd = [sys.executable, __file__, "--worker-size", str(size), "--batch-size", str(batch),
                   "--inference-batch-size", str(args.inference_batch_size), "--steps", str(args.steps),
                   "--warmup", str(args.warmup), "--threads", str(args.threads), "--device", args.device,
                   "--method", args.method]
            if args.recipe:
                cmd += ["--recipe", args.recipe]
            if variant:
                cmd += ["--worker-guidance", variant]
            load_before = os.getloadavg()
            proc = subprocess.run(cmd, check=False, capture_output=True, text=True, cwd=ROOT)
            if proc.returncode != 0:
                print(proc.stderr, file=sys.stderr)
                return proc.returncode
            result = json.loads(proc.stdout.strip().splitlines()[-1])
            result["load_average_before"] = [round(x, 2) for x in load_before]
            result["load_average_after"] = [round(x, 2) for x in os.getloadavg()]
            results.append(result)
            print(_summary(result), flush=True)
    report = {"machine": machine_info(args.device, args.threads), "results": results}
    if args.note:
        report["note"] = args.note
    if args.json_out:
        write_report(args.json_out, report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
