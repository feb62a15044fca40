"""Speed of animzoo.geometry.raster on a FLAME-sized mesh.

Builds a closed UV ellipsoid with 9,976 faces (FLAME's face count; 5,023 vertices after padding
with unused vertices, FLAME's vertex count) that covers most of the image, so about half of the
faces are back-facing and culled, and times ``rasterize`` and ``rasterize + interpolate`` of 16-d
per-vertex attributes. Also times a 2,000-face mesh at 64 px, batch 32 (the synthetic data
generator's setting).

Usage::

    python benchmarks/raster_speed.py [--threads 2] [--device cpu] [--repeats 5]
"""

from __future__ import annotations

import argparse
import math
import time

import torch

from animzoo.geometry.raster import interpolate, rasterize


def uv_ellipsoid(
    n_lon: int, n_lat: int, radii: tuple[float, float, float], pad_to: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Closed UV ellipsoid with outward right-hand winding.

    Returns:
        vertices V x 3 (x right, y down, z into the screen) and faces F x 3 long with
        F = 2 * n_lon * (n_lat - 1) and V = n_lon * (n_lat - 1) + 2 (+ unused padding).
    """
    rings = []
    for i in range(1, n_lat):
        theta = math.pi * i / n_lat  # polar angle from the top pole
        for j in range(n_lon):
            phi = 2 * math.pi * j / n_lon
            rings.append((math.sin(theta) * math.cos(phi), -math.cos(theta), math.sin(theta) * math.sin(phi)))
    verts = torch.tensor([(0.0, -1.0, 0.0)] + rings + [(0.0, 1.0, 0.0)])
    top, bottom = 0, len(verts) - 1
    ring = lambda i, j: 1 + i * n_lon + j % n_lon  # noqa: E731
    faces = []
    for j in range(n_lon):
        faces.append((top, ring(0, j), ring(0, j + 1)))
        faces.append((bottom, ring(n_lat - 2, j + 1), ring(n_lat - 2, j)))
    for i in range(n_lat - 2):
        for j in range(n_lon):
            a, b, c, d = ring(i, j), ring(i, j + 1), ring(i + 1, j), ring(i + 1, j + 1)
            faces += [(a, c, b), (b, c, d)]
    faces_t = torch.tensor(faces, dtype=torch.long)
    # Orient every face outwards (right-hand normal along the centroid direction).
    tri = verts[faces_t]
    normal = torch.linalg.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
    flip = (normal * tri.mean(1)).sum(-1) < 0
    faces_t[flip] = faces_t[flip][:, [0, 2, 1]]
    verts = verts * torch.tensor(radii)
    if pad_to is not None and pad_to > len(verts):
        verts = torch.cat([verts, torch.zeros(pad_to - len(verts), 3)])
    return verts, faces_t


def _time(fn, repeats: int) -> float:
    fn()  # warm-up
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads (CPU)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs; the best is reported")
    parser.add_argument("--channels", type=int, default=16)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    gen = torch.Generator().manual_seed(0)

    flame_v, flame_f = uv_ellipsoid(86, 59, (0.8, 0.9, 0.7), pad_to=5023)
    small_v, small_f = uv_ellipsoid(40, 26, (0.8, 0.9, 0.7))
    print(f"device={device} threads={torch.get_num_threads()} torch={torch.__version__}")
    print(f"FLAME-size mesh: V={len(flame_v)} F={len(flame_f)}; small mesh: V={len(small_v)} F={len(small_f)}")
    settings = [
        ("flame", 256, 1),
        ("flame", 256, 8),
        ("flame", 64, 1),
        ("flame", 64, 8),
        ("small", 64, 32),
    ]
    print(f"{'mesh':>6} {'size':>5} {'batch':>5} {'raster ms/img':>14} {'+interp ms/img':>15} {'coverage':>9}")
    for name, size, batch in settings:
        v0, faces = (flame_v, flame_f) if name == "flame" else (small_v, small_f)
        # Per-sample random rotation about y so the batch is not one repeated mesh.
        angles = torch.rand(batch, generator=gen) * 0.6 - 0.3
        c, s = torch.cos(angles), torch.sin(angles)
        rot = torch.zeros(batch, 3, 3)
        rot[:, 0, 0], rot[:, 0, 2], rot[:, 1, 1], rot[:, 2, 0], rot[:, 2, 2] = c, s, 1, -s, c
        verts = (v0 @ rot.transpose(1, 2)).to(device)
        attrs = torch.randn(batch, len(v0), args.channels, generator=gen).to(device)
        faces = faces.to(device)

        def run_raster():
            out = rasterize(verts, faces, (size, size))
            sync()
            return out

        def run_both():
            out = interpolate(rasterize(verts, faces, (size, size)), faces, attrs)
            sync()
            return out

        t_r = _time(run_raster, args.repeats)
        t_b = _time(run_both, args.repeats)
        cov = float(run_raster().mask.mean())
        print(f"{name:>6} {size:>5} {batch:>5} {1e3 * t_r / batch:>14.2f} {1e3 * t_b / batch:>15.2f} {cov:>9.2f}")


if __name__ == "__main__":
    main()
