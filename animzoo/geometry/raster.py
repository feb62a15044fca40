"""A triangle rasterizer in plain torch (CPU and GPU, no extension).

Orthographic projection: a vertex ``(x, y, z)`` lands at normalised image position ``(x, y)``
(``align_corners=True``: pixel centre ``i`` of an axis of ``n`` pixels sits at ``2 i / (n - 1) - 1``;
x grows right, y grows down). ``z`` is depth into the screen; the smallest ``z`` wins.

How it works (all vectorised, no Python loop over faces):

1. Per face: pixel bounding box clipped to the image, back-face / degenerate culling, and the
   three edge functions in a *canonical* form (see :func:`_face_setup`).
2. Every (face, pixel-in-bounding-box) pair is a candidate fragment. Candidates are enumerated in
   chunks of at most ``max_fragments`` with ``repeat_interleave`` + ``arange``, which bounds memory.
3. A candidate is kept when the pixel centre is inside the triangle. Pixel centres exactly on an
   edge follow a top-left style tie rule, and the edge functions of a shared edge are computed
   from the same canonical endpoints in both faces, so they are exact negations of each other:
   meshes are watertight (no holes, no double coverage along shared edges).
4. Z-buffer: depth (as an order-preserving int32) and the face id are packed into one int64 key
   and reduced with ``scatter_reduce(amin)``; this finds the nearest face and breaks exact depth
   ties by the smallest face index, in a single pass over the candidates.
5. Barycentrics of the winning faces are recomputed from the vertices with differentiable ops, so
   :func:`interpolate` is differentiable w.r.t. attributes (and barycentrics w.r.t. vertex positions
   inside faces; visibility itself is not differentiable).

The depth test runs in float32 even for float64 vertices: faces whose depths differ by less than
float32 resolution are treated as ties (smallest face index wins).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ["Fragments", "rasterize", "interpolate", "render", "coverage_count"]

_INT64_MAX = torch.iinfo(torch.int64).max


@dataclass
class Fragments:
    """Per-pixel result of :func:`rasterize`.

    Attributes:
        face_index: B x H x W long, index into ``faces`` of the visible face, -1 where no face.
        barycentric: B x H x W x 3 float, weights of the face's three vertices (0 where no face).
        depth: B x H x W float, interpolated z of the visible face (+inf where no face).
    """

    face_index: Tensor
    barycentric: Tensor
    depth: Tensor

    @property
    def mask(self) -> Tensor:
        """B x 1 x H x W float coverage: 1 where a face is visible, 0 elsewhere."""
        return (self.face_index >= 0).unsqueeze(1).to(self.barycentric.dtype)

    @property
    def image_size(self) -> tuple[int, int]:
        """(H, W) of the rasterized image."""
        return int(self.face_index.shape[1]), int(self.face_index.shape[2])


def _check_inputs(vertices: Tensor, faces: Tensor, image_size: tuple[int, int]) -> tuple[int, int]:
    if vertices.dim() != 3 or vertices.shape[-1] != 3:
        raise ValueError(f"vertices must be B x V x 3, got shape {tuple(vertices.shape)}")
    if faces.dim() != 2 or faces.shape[-1] != 3:
        raise ValueError(f"faces must be F x 3, got shape {tuple(faces.shape)}")
    if faces.dtype.is_floating_point or faces.dtype == torch.bool:
        raise ValueError(f"faces must be an integer tensor, got {faces.dtype}")
    height, width = (int(s) for s in image_size)
    if height < 2 or width < 2:
        # align_corners=True places pixel centres at 2i/(n-1)-1, undefined for n < 2.
        raise ValueError(f"image_size must be at least (2, 2), got {tuple(image_size)}")
    if faces.numel() and (int(faces.min()) < 0 or int(faces.max()) >= vertices.shape[1]):
        raise ValueError(
            f"faces index vertices outside [0, {vertices.shape[1]}); check the faces array"
        )
    return height, width


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return dtype if dtype in (torch.float32, torch.float64) else torch.float32


def _face_setup(
    verts_pix: Tensor, faces: Tensor, cull_backfaces: bool, height: int, width: int
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Per-face data for the candidate faces.

    Args:
        verts_pix: B x V x 3 vertices with x, y in pixel units (z unchanged).
        faces: F x 3 long.

    Returns:
        ``(ids, fparams, iparams, counts)`` for the N faces that can cover a pixel:
        ``ids`` N long (flat ``b * F + f``, ascending), ``fparams`` 20 x N float (edge origin
        x, origin y, direction x, direction y, tie threshold, three edges each; then bbox origin
        x, y and the depth plane: z at the bbox origin, dz/dx, dz/dy), ``iparams`` 2 x N long
        (bbox width, flat pixel index of the bbox origin), ``counts`` N long (bbox pixels).
    """
    batch = verts_pix.shape[0]
    fv = verts_pix.index_select(1, faces.reshape(-1)).view(batch, -1, 3, 3)  # B x F x 3 (vertex) x 3 (xyz)
    x, y, z = fv.unbind(-1)  # each B x F x 3
    x0, x1, x2 = x.unbind(-1)
    y0, y1, y2 = y.unbind(-1)
    z0, z1, z2 = z.unbind(-1)
    area2 = (x1 - x0) * (y2 - y0) - (x2 - x0) * (y1 - y0)

    keep = (area2 != 0) & torch.isfinite(fv).all(-1).all(-1)
    if cull_backfaces:
        keep &= area2 < 0  # front-facing in screen space (y down, z into the screen)

    xmin = torch.ceil(x.amin(-1)).clamp(0, width - 1)
    xmax = torch.floor(x.amax(-1)).clamp(-1, width - 1)
    ymin = torch.ceil(y.amin(-1)).clamp(0, height - 1)
    ymax = torch.floor(y.amax(-1)).clamp(-1, height - 1)
    keep &= (xmin <= xmax) & (ymin <= ymax)
    keep &= (x.amin(-1) <= width - 1) & (y.amin(-1) <= height - 1)

    ids = keep.flatten().nonzero().squeeze(1)  # ascending (b, f): the z-buffer tie rule relies on it
    num_faces = faces.shape[0]
    ids32 = ids.to(torch.int32) if keep.numel() < 2**31 - 1 else ids
    sel = lambda t: t.reshape(-1).index_select(0, ids32)  # noqa: E731

    x0, x1, x2, y0, y1, y2, z0, z1, z2, area2 = (
        sel(t) for t in (x0, x1, x2, y0, y1, y2, z0, z1, z2, area2)
    )
    bx, by = sel(xmin), sel(ymin)
    bw = (sel(xmax) - bx + 1).long()
    bh = (sel(ymax) - by + 1).long()
    orient = torch.where(area2 > 0, 1.0, -1.0).to(area2.dtype)

    cols = []
    # Edge i is opposite vertex i: (v1 -> v2), (v2 -> v0), (v0 -> v1).
    for (ax, ay), (qx, qy) in (((x1, y1), (x2, y2)), ((x2, y2), (x0, y0)), ((x0, y0), (x1, y1))):
        # Canonical origin = lexicographically smaller endpoint, so a shared edge gets identical
        # origin and (up to an exact sign flip) direction in both faces: watertight coverage.
        swap = (qx < ax) | ((qx == ax) & (qy < ay))
        ox, oy = torch.where(swap, qx, ax), torch.where(swap, qy, ay)
        ex, ey = torch.where(swap, ax, qx), torch.where(swap, ay, qy)
        sign = torch.where(swap, -orient, orient)
        # sign * (e - o) == orient * (q - a) exactly; orienting by the face makes inside positive.
        dx, dy = sign * (ex - ox), sign * (ey - oy)
        # Tie rule for pixel centres exactly on an edge: of the two faces sharing an edge exactly
        # one sees a "positive" direction, and only that face takes w == 0 (threshold -tiny).
        tie = (dy > 0) | ((dy == 0) & (dx < 0))
        thr = torch.where(tie, -torch.finfo(area2.dtype).tiny, torch.zeros_like(area2))
        cols.append((ox, oy, dx, dy, thr))

    # Depth plane z = zc + gx * u + gy * v with (u, v) the offset from the bbox origin.
    gx = ((z1 - z0) * (y2 - y0) - (z2 - z0) * (y1 - y0)) / area2
    gy = ((x1 - x0) * (z2 - z0) - (x2 - x0) * (z1 - z0)) / area2
    zc = z0 + gx * (bx - x0) + gy * (by - y0)
    # Rows: origin x (3 edges), origin y (3), direction x (3), direction y (3), threshold (3),
    # then bx, by, zc, gx, gy. Row-major 20 x N so the per-fragment gathers are contiguous rows.
    rows = [col[k] for k in range(5) for col in cols] + [bx, by, zc, gx, gy]
    fparams = torch.stack(rows, 0)

    b = torch.div(ids, num_faces, rounding_mode="floor")
    base = (b * height + by.long()) * width + bx.long()
    return ids, fparams, torch.stack([bw, base], 0), bw * bh


def _chunk_fragments(
    fparams: Tensor,
    iparams: Tensor,
    starts: Tensor,
    ends: Tensor,
    lo: int,
    hi: int,
    width: int,
) -> tuple[Tensor, Tensor, Tensor]:
    """The inside fragments among the candidates with global numbers [lo, hi).

    Returns:
        ``(pix, cand, depth)``: flat pixel index (long), candidate face number (``iparams`` dtype)
        and plane depth (float32) of each fragment whose pixel centre is inside its face.
    """
    # Faces whose fragment range overlaps [lo, hi).
    n0 = int(torch.searchsorted(ends, torch.tensor([lo], device=ends.device), right=True))
    n1 = int(torch.searchsorted(starts, torch.tensor([hi], device=ends.device), right=False))
    counts = ends[n0:n1].clamp(max=hi) - starts[n0:n1].clamp(min=lo)
    idx_dtype = iparams.dtype
    face = torch.repeat_interleave(
        torch.arange(n0, n1, device=ends.device, dtype=idx_dtype), counts, output_size=hi - lo
    )
    # Row by row: 1-d index_select is several times faster on CPU than gathering 2-d columns.
    start, bw, base = (row.index_select(0, face) for row in iparams)
    local = torch.arange(lo, hi, device=ends.device, dtype=idx_dtype) - start
    v = torch.div(local, bw, rounding_mode="floor")
    u = local - v * bw
    p = [row.index_select(0, face) for row in fparams]
    uf, vf = u.to(fparams.dtype), v.to(fparams.dtype)
    px, py = p[15] + uf, p[16] + vf
    inside = None
    for e in range(3):  # see _face_setup for the row layout
        w = p[6 + e] * (py - p[3 + e]) - p[9 + e] * (px - p[e])
        ok = w > p[12 + e]
        inside = ok if inside is None else inside.logical_and_(ok)

    sel = inside.nonzero().squeeze(1).to(idx_dtype)
    take = lambda t: t.index_select(0, sel)  # noqa: E731
    depth = (p[17] + p[18] * uf + p[19] * vf).float() + 0.0  # + 0.0 turns -0 into +0
    pix = (base + v * width + u).long()
    return take(pix), take(face), take(depth)


def _iter_fragments(
    vertices: Tensor,
    faces: Tensor,
    height: int,
    width: int,
    cull_backfaces: bool,
    max_fragments: int,
) -> tuple[Tensor, Iterable[tuple[Tensor, Tensor, Tensor]]]:
    """Candidate face ids (N, flat ``b * F + f``) and a lazy sequence of per-chunk inside fragments."""
    dtype = _compute_dtype(vertices.dtype)
    v = vertices.detach().to(dtype)
    scale = torch.tensor([(width - 1) / 2, (height - 1) / 2], dtype=dtype, device=v.device)
    verts_pix = torch.cat([(v[..., :2] + 1) * scale, v[..., 2:]], -1)
    ids, fparams, iparams, counts = _face_setup(verts_pix, faces, cull_backfaces, height, width)
    if not ids.numel():
        return ids, []
    ends = torch.cumsum(counts, 0)
    starts = ends - counts
    total = int(ends[-1])
    # int32 index arithmetic is cheaper than int64 and enough for any realistic image.
    small = max(total, v.shape[0] * height * width) < 2**31 - 1
    iparams = torch.cat([starts[None], iparams], 0).to(torch.int32 if small else torch.int64)
    chunks = (
        _chunk_fragments(fparams, iparams, starts, ends, lo, min(lo + max_fragments, total), width)
        for lo in range(0, total, max_fragments)
    )
    return ids, chunks


def coverage_count(
    vertices: Tensor,
    faces: Tensor,
    image_size: tuple[int, int],
    *,
    cull_backfaces: bool = True,
    max_fragments: int = 2**22,
) -> Tensor:
    """How many faces cover each pixel centre (a diagnostic: 1 everywhere on a flat mesh).

    Args:
        vertices: B x V x 3; faces: F x 3; as :func:`rasterize`.

    Returns:
        B x H x W long.
    """
    height, width = _check_inputs(vertices, faces, image_size)
    faces = faces.to(device=vertices.device, dtype=torch.long)
    count = torch.zeros(vertices.shape[0] * height * width, dtype=torch.long, device=vertices.device)
    with torch.no_grad():
        _, chunks = _iter_fragments(vertices, faces, height, width, cull_backfaces, max_fragments)
        for pix, _, _ in chunks:
            count.index_add_(0, pix, torch.ones_like(pix))
    return count.view(vertices.shape[0], height, width)


def rasterize(
    vertices: Tensor,
    faces: Tensor,
    image_size: tuple[int, int],
    *,
    cull_backfaces: bool = True,
    max_fragments: int = 2**22,
) -> Fragments:
    """Rasterize a batch of triangle meshes (orthographic, z-buffered).

    A pixel is covered by a face when its centre (``align_corners=True`` grid) lies inside the
    triangle; pixel centres on an edge shared by two faces are covered by exactly one of them.

    Args:
        vertices: B x V x 3 float; x, y normalised to [-1, 1] (x right, y down), z depth
            (smaller = nearer).
        faces: F x 3 integer vertex indices, shared by the batch.
        image_size: (H, W), both >= 2.
        cull_backfaces: drop faces with ``area2 >= 0`` (back-facing under the right-hand rule,
            see docs/index.md, "Conventions"). Degenerate (zero-area) faces are always dropped.
        max_fragments: at most this many candidate (face, pixel) pairs are processed at once;
            bounds peak memory to roughly ``max_fragments * 200`` bytes.

    Returns:
        :class:`Fragments` with B x H x W face index / depth and B x H x W x 3 barycentrics in the
        vertices' dtype (float32 for half precision input). Barycentrics and depth carry
        gradients w.r.t. ``vertices``; face visibility does not.
    """
    height, width = _check_inputs(vertices, faces, image_size)
    if max_fragments < 1:
        raise ValueError(f"max_fragments must be >= 1, got {max_fragments}")
    faces = faces.to(device=vertices.device, dtype=torch.long)
    dtype = _compute_dtype(vertices.dtype)
    batch, num_verts = vertices.shape[:2]
    num_faces = faces.shape[0]
    device = vertices.device

    keybuf = torch.full((batch * height * width,), _INT64_MAX, dtype=torch.long, device=device)
    with torch.no_grad():
        ids, chunks = _iter_fragments(vertices, faces, height, width, cull_backfaces, max_fragments)
        for pix, cand, depth in chunks:
            # Order-preserving float32 -> int32 map: flip the magnitude bits of negative numbers.
            bits = depth.view(torch.int32)
            key = bits ^ ((bits >> 31) & 0x7FFFFFFF)
            # One int64 key = (depth, candidate number): amin finds the nearest face and breaks
            # exact depth ties by the smallest face index (candidates ascend with b * F + f).
            packed = (key.long() << 32) | cand.long()
            keybuf.scatter_reduce_(0, pix, packed, reduce="amin", include_self=True)

    pix = (keybuf != _INT64_MAX).nonzero().squeeze(1)
    # Low 32 bits hold the candidate number n; ids[n] = b * F + f.
    flat_face = ids[keybuf[pix] & 0xFFFFFFFF]
    b = torch.div(flat_face, num_faces, rounding_mode="floor")
    f = flat_face - b * num_faces

    # Differentiable barycentrics of the winners, in normalised coordinates (affine invariant).
    yy = torch.div(pix, width, rounding_mode="floor") % height
    xx = pix % width
    cx = xx.to(dtype) * (2.0 / (width - 1)) - 1.0
    cy = yy.to(dtype) * (2.0 / (height - 1)) - 1.0
    # Per-coordinate gathers keep every operand contiguous (3 x M each).
    coords = vertices.to(dtype).reshape(batch * num_verts, 3).t().contiguous()
    vidx = (faces.t().contiguous().index_select(1, f) + b * num_verts).reshape(-1)
    (ax, bx_, cx_), (ay, by_, cy_), (az, bz, cz) = (
        coords[k].index_select(0, vidx).view(3, -1) for k in range(3)
    )
    w0 = (cx_ - bx_) * (cy - by_) - (cy_ - by_) * (cx - bx_)
    w1 = (ax - cx_) * (cy - cy_) - (ay - cy_) * (cx - cx_)
    w2 = (bx_ - ax) * (cy - ay) - (by_ - ay) * (cx - ax)
    inv_area = 1.0 / (w0 + w1 + w2)
    b0, b1, b2 = w0 * inv_area, w1 * inv_area, w2 * inv_area
    bary = torch.stack([b0, b1, b2], -1)
    depth_w = b0 * az + b1 * bz + b2 * cz

    n_pix = batch * height * width
    face_index = torch.full((n_pix,), -1, dtype=torch.long, device=device)
    face_index[pix] = f
    barycentric = torch.zeros(n_pix, 3, dtype=dtype, device=device).index_copy(0, pix, bary)
    depth = torch.full((n_pix,), float("inf"), dtype=dtype, device=device).index_copy(
        0, pix, depth_w
    )
    return Fragments(
        face_index=face_index.view(batch, height, width),
        barycentric=barycentric.view(batch, height, width, 3),
        depth=depth.view(batch, height, width),
    )


def interpolate(fragments: Fragments, faces: Tensor, attributes: Tensor) -> Tensor:
    """Barycentric interpolation of per-vertex attributes at every covered pixel.

    Args:
        fragments: output of :func:`rasterize` (B x H x W).
        faces: F x 3 integer, the faces given to :func:`rasterize`.
        attributes: B x V x C (or V x C, shared by the batch) float: colours, displacements,
            feature codes, ...

    Returns:
        B x C x H x W, 0 where no face is visible. Differentiable w.r.t. ``attributes`` (a gather
        plus a weighted sum) and w.r.t. the barycentrics.
    """
    batch, height, width = fragments.face_index.shape
    if attributes.dim() == 2:
        attributes = attributes.unsqueeze(0).expand(batch, -1, -1)
    if attributes.dim() != 3 or attributes.shape[0] != batch:
        raise ValueError(
            f"attributes must be B x V x C with B = {batch}, got shape {tuple(attributes.shape)}"
        )
    num_verts, channels = attributes.shape[1:]
    faces = faces.to(device=attributes.device, dtype=torch.long)
    face_flat = fragments.face_index.reshape(-1)
    pix = (face_flat >= 0).nonzero().squeeze(1)  # ascending, so grouped by sample
    b = torch.div(pix, height * width, rounding_mode="floor")
    vidx = (faces[face_flat[pix]] + (b * num_verts)[:, None]).t()  # 3 x M rows of flat attributes
    dtype = torch.promote_types(attributes.dtype, fragments.barycentric.dtype)
    # Channel-first C x (B V) table: the gathers then give C x M, already in output layout.
    table = attributes.to(dtype).permute(2, 0, 1).reshape(channels, batch * num_verts)
    bary = fragments.barycentric.reshape(-1, 3)[pix].to(dtype).t()  # 3 x M
    # Three gathers with fused multiply-adds: no M x 3 x C intermediate.
    values = table.index_select(1, vidx[0]) * bary[0]
    values = values.addcmul(table.index_select(1, vidx[1]), bary[1])
    values = values.addcmul(table.index_select(1, vidx[2]), bary[2])  # C x M

    out = torch.zeros(batch, channels, height * width, dtype=dtype, device=attributes.device)
    hw = pix - b * (height * width)
    start = 0
    for i, n in enumerate(torch.bincount(b, minlength=batch).tolist()):
        if n:
            out[i].index_copy_(1, hw[start : start + n], values[:, start : start + n])
        start += n
    return out.view(batch, channels, height, width)


def render(
    vertices: Tensor,
    faces: Tensor,
    attributes: Tensor,
    image_size: tuple[int, int],
    *,
    cull_backfaces: bool = True,
    max_fragments: int = 2**22,
) -> tuple[Tensor, Tensor]:
    """Rasterize and interpolate in one call.

    Args:
        vertices: B x V x 3 (see :func:`rasterize`).
        faces: F x 3 integer.
        attributes: B x V x C or V x C.
        image_size: (H, W).

    Returns:
        ``(image, mask)``: B x C x H x W interpolated attributes (0 outside) and B x 1 x H x W
        coverage.
    """
    fragments = rasterize(
        vertices, faces, image_size, cull_backfaces=cull_backfaces, max_fragments=max_fragments
    )
    image = interpolate(fragments, faces, attributes)
    return image, fragments.mask.to(image.dtype)
