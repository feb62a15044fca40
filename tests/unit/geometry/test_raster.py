"""Tests for animzoo.geometry.raster: coverage, interpolation, z-buffer, culling, watertightness."""

from __future__ import annotations

import pytest
import torch

from animzoo.geometry.raster import Fragments, coverage_count, interpolate, rasterize, render


def pix_to_norm(xy: torch.Tensor, n: int) -> torch.Tensor:
    """Pixel units (centre i at i) -> normalised align_corners=True coordinates."""
    return xy * (2.0 / (n - 1)) - 1.0


def tri(points_pix, z=0.5, n=256, dtype=torch.float64) -> torch.Tensor:
    """1 x 3 x 3 vertices of one triangle given in pixel units."""
    xy = pix_to_norm(torch.tensor(points_pix, dtype=dtype), n)
    zz = torch.as_tensor(z, dtype=dtype).expand(3)[:, None]
    return torch.cat([xy, zz], -1)[None]


FACE = torch.tensor([[0, 1, 2]])


pytestmark = pytest.mark.usefixtures("one_thread")


def front(verts: torch.Tensor) -> torch.Tensor:
    """Reorder a single triangle (1 x 3 x 3) so it is front-facing (area2 < 0)."""
    v = verts[0]
    area2 = (v[1, 0] - v[0, 0]) * (v[2, 1] - v[0, 1]) - (v[2, 0] - v[0, 0]) * (v[1, 1] - v[0, 1])
    return verts[:, [0, 2, 1]] if area2 >= 0 else verts


def centres_inside(points_pix, n: int) -> torch.Tensor:
    """Brute force: n x n bool, pixel centres strictly inside the triangle (float64)."""
    p = torch.tensor(points_pix, dtype=torch.float64)
    ys, xs = torch.meshgrid(torch.arange(n, dtype=torch.float64), torch.arange(n, dtype=torch.float64), indexing="ij")
    signs = []
    for a, b in ((0, 1), (1, 2), (2, 0)):
        signs.append((p[b, 0] - p[a, 0]) * (ys - p[a, 1]) - (p[b, 1] - p[a, 1]) * (xs - p[a, 0]))
    s = torch.stack(signs)
    return (s > 0).all(0) | (s < 0).all(0)


def test_fragments_shapes_and_empty_pixels():
    v = front(tri([[10, 10], [200, 30], [60, 220]]))
    fr = rasterize(v, FACE, (256, 128))
    assert isinstance(fr, Fragments)
    assert fr.face_index.shape == (1, 256, 128) and fr.face_index.dtype == torch.long
    assert fr.barycentric.shape == (1, 256, 128, 3)
    assert fr.depth.shape == (1, 256, 128)
    assert fr.mask.shape == (1, 1, 256, 128)
    empty = fr.face_index == -1
    assert empty.any() and (~empty).any()
    assert torch.isinf(fr.depth[empty]).all() and (fr.barycentric[empty] == 0).all()
    assert torch.equal(fr.mask[:, 0] == 1, ~empty)


def test_coverage_matches_analytic_area():
    pts = [[12.3, 20.7], [240.1, 55.2], [90.6, 230.9]]
    fr = rasterize(front(tri(pts)), FACE, (256, 256))
    (x0, y0), (x1, y1), (x2, y2) = pts
    area = 0.5 * abs((x1 - x0) * (y2 - y0) - (x2 - x0) * (y1 - y0))
    perimeter = sum(
        ((pts[i][0] - pts[j][0]) ** 2 + (pts[i][1] - pts[j][1]) ** 2) ** 0.5 for i, j in ((0, 1), (1, 2), (2, 0))
    )
    count = int((fr.face_index >= 0).sum())
    assert abs(count - area) <= 0.5 * perimeter  # at most half a pixel per unit boundary length
    assert abs(count - area) / area < 0.01
    # No pixel centre lies exactly on an edge here, so coverage equals the brute-force test.
    assert torch.equal(fr.face_index[0] >= 0, centres_inside(pts, 256))


def test_pixel_aligned_right_triangle_exact_count():
    # Legs of 100 pixels from pixel (20, 30); the hypotenuse passes through pixel centres.
    pts = [[20.0, 30.0], [120.0, 30.0], [20.0, 130.0]]
    fr = rasterize(front(tri(pts)), FACE, (256, 256))
    covered = fr.face_index[0] >= 0
    strictly = centres_inside(pts, 256)
    assert int(strictly.sum()) == 99 * 98 // 2  # (i, j) >= 1 with i + j <= 99, i + j < 100
    # Centres on the boundary (301 of them) go to one side or the other by the tie rule; the
    # count must lie between the strict interior and the closed triangle.
    assert strictly.sum() <= covered.sum() <= strictly.sum() + 3 * 100
    assert (covered | ~strictly).all()  # every strictly-inside centre is covered
    ys, xs = covered.nonzero().unbind(1)
    assert (xs >= 20).all() and (ys >= 30).all() and ((xs - 20) + (ys - 30) <= 100).all()


def test_linear_attribute_is_exact():
    pts = [[5.5, 7.25], [250.0, 100.0], [40.0, 249.5]]
    v = front(tri(pts, z=[0.1, 0.7, 0.4]))
    x, y = v[..., 0], v[..., 1]
    attr = torch.stack([0.3 * x - 1.7 * y + 0.25, 2.0 * x + 0.5 * y - 1.0, v[..., 2]], -1)
    fr = rasterize(v, FACE, (256, 256))
    out = interpolate(fr, FACE, attr)
    assert out.shape == (1, 3, 256, 256)
    m = fr.face_index[0] >= 0
    g = torch.arange(256, dtype=torch.float64) * (2 / 255) - 1
    gx, gy = g[None, :].expand(256, 256), g[:, None].expand(256, 256)
    assert torch.allclose(out[0, 0][m], (0.3 * gx - 1.7 * gy + 0.25)[m], atol=1e-5)
    assert torch.allclose(out[0, 1][m], (2.0 * gx + 0.5 * gy - 1.0)[m], atol=1e-5)
    assert torch.allclose(out[0, 2][m], fr.depth[0][m], atol=1e-6)
    assert (out[0][:, ~m] == 0).all()
    # Barycentrics: convex weights, summing to 1.
    b = fr.barycentric[0][m]
    assert torch.allclose(b.sum(-1), torch.ones_like(b[:, 0]), atol=1e-9)
    assert (b > -1e-9).all()


def test_linear_attribute_exact_in_float32_small_triangles():
    # Many small triangles in float32 (a FLAME-like density) still interpolate a linear field.
    n = 64
    verts, faces = grid_mesh(9, n, jitter=0.3, dtype=torch.float32)
    attr = (1.5 * verts[..., 0] - 0.5 * verts[..., 1] + 0.2)[..., None]
    img, mask = render(verts, faces, attr, (n, n))
    g = torch.arange(n, dtype=torch.float32) * (2 / (n - 1)) - 1
    expect = 1.5 * g[None, :] - 0.5 * g[:, None] + 0.2
    m = mask[0, 0] > 0
    assert m.sum() > 0.5 * n * n
    assert torch.allclose(img[0, 0][m], expect[m], atol=1e-5)


def test_nearer_triangle_wins_and_swap():
    a = front(tri([[10, 10], [200, 10], [10, 200]], z=0.2))
    b = front(tri([[30, 30], [250, 60], [60, 250]], z=0.8))
    verts = torch.cat([a, b], 1)
    faces = torch.tensor([[0, 1, 2], [3, 4, 5]])
    fr = rasterize(verts, faces, (256, 256))
    only_a = rasterize(a, FACE, (256, 256)).face_index[0] >= 0
    only_b = rasterize(b, FACE, (256, 256)).face_index[0] >= 0
    overlap = only_a & only_b
    assert overlap.sum() > 1000
    assert (fr.face_index[0][overlap] == 0).all()
    assert (fr.face_index[0][only_b & ~only_a] == 1).all()
    # Swap depths: now face 1 is nearer.
    verts2 = verts.clone()
    verts2[0, :3, 2], verts2[0, 3:, 2] = 0.8, 0.2
    fr2 = rasterize(verts2, faces, (256, 256))
    assert (fr2.face_index[0][overlap] == 1).all()
    assert torch.allclose(fr2.depth[0][overlap], torch.full_like(fr2.depth[0][overlap], 0.2))


def test_depth_test_with_interpenetrating_planes():
    # Two tilted planes crossing along x = 128: the nearer one switches at the crossing.
    n = 256
    a = front(tri([[0, 0], [255, 0], [0, 255]], z=[0.0, 1.0, 0.0], n=n))
    a2 = front(tri([[255, 0], [255, 255], [0, 255]], z=[1.0, 1.0, 0.0], n=n))
    b = front(tri([[0, 0], [255, 0], [0, 255]], z=[0.6, 0.4, 0.6], n=n))
    b2 = front(tri([[255, 0], [255, 255], [0, 255]], z=[0.4, 0.4, 0.6], n=n))
    verts = torch.cat([a, a2, b, b2], 1)
    faces = torch.arange(12).view(4, 3)
    fr = rasterize(verts, faces, (n, n))
    covered = fr.face_index[0] >= 0
    assert covered[1:-1, 1:-1].all()  # outer border pixels may go to the tie rule
    winner_is_a = fr.face_index[0][covered] <= 1
    xs = torch.arange(n)[None, :].expand(n, n)[covered]
    # z_a = x / 255, z_b = 0.6 - 0.2 x / 255 -> a nearer for x < 127.5.
    assert torch.equal(winner_is_a, xs < 127.5)


def test_backface_culling():
    v = tri([[10, 10], [200, 30], [60, 220]])
    v_front, v_back = front(v), front(v)[:, [0, 2, 1]]
    assert (rasterize(v_front, FACE, (64, 64)).face_index >= 0).sum() > 0
    assert (rasterize(v_back, FACE, (64, 64)).face_index >= 0).sum() == 0
    drawn = rasterize(v_back, FACE, (64, 64), cull_backfaces=False)
    ref = rasterize(v_front, FACE, (64, 64))
    assert torch.equal(drawn.face_index, ref.face_index)
    # Barycentrics follow the face's own vertex order.
    assert torch.allclose(drawn.barycentric, ref.barycentric[..., [0, 2, 1]])


def test_degenerate_face_is_skipped():
    v = tri([[10, 10], [100, 100], [200, 200]])
    fr = rasterize(v, FACE, (256, 256), cull_backfaces=False)
    assert (fr.face_index == -1).all()


def grid_mesh(k: int, n: int, jitter: float = 0.0, dtype=torch.float64, seed: int = 0):
    """A (k+1) x (k+1) vertex grid over pixels [0, n-1]^2 split into front-facing triangles.

    With jitter=0 vertices and edges pass through pixel centres when (n-1) is a multiple of k.
    """
    gen = torch.Generator().manual_seed(seed)
    t = torch.linspace(0, n - 1, k + 1, dtype=dtype)
    ys, xs = torch.meshgrid(t, t, indexing="ij")
    xy = torch.stack([xs, ys], -1).reshape(-1, 2)
    inner = ((xs > 0) & (xs < n - 1) & (ys > 0) & (ys < n - 1)).reshape(-1)
    step = (n - 1) / k
    xy[inner] += (torch.rand(int(inner.sum()), 2, generator=gen, dtype=dtype) - 0.5) * 2 * jitter * step
    z = torch.rand(xy.shape[0], 1, generator=gen, dtype=dtype)
    verts = torch.cat([pix_to_norm(xy, n), z], -1)[None]
    faces = []
    for i in range(k):
        for j in range(k):
            a, b, c, d = i * (k + 1) + j, i * (k + 1) + j + 1, (i + 1) * (k + 1) + j, (i + 1) * (k + 1) + j + 1
            if (i + j) % 2:  # alternate diagonals so both diagonal directions are tested
                faces += [(a, c, b), (b, c, d)]
            else:
                faces += [(a, c, d), (a, d, b)]
    return verts, torch.tensor(faces)


@pytest.mark.parametrize("jitter", [0.0, 0.35])
def test_shared_edges_no_holes_no_double_coverage(jitter):
    n = 65
    verts, faces = grid_mesh(8, n, jitter=jitter)
    fr = rasterize(verts, faces, (n, n))
    # The mesh covers the whole square, so every pixel centre must be covered (boundary pixels
    # of the outer square belong to one side only by the tie rule, so check the interior).
    assert (fr.face_index[0, 1:-1, 1:-1] >= 0).all()
    # Each face alone: the sum of per-face masks must never exceed 1 (no double coverage).
    per_face = torch.stack([rasterize(verts, faces[f : f + 1], (n, n)).face_index[0] >= 0 for f in range(len(faces))])
    counts = per_face.sum(0)
    assert counts.max() == 1
    assert torch.equal(counts == 1, fr.face_index[0] >= 0)


@pytest.mark.parametrize("angle", [0.0, 0.3, 1.1])
def test_float32_jittered_mesh_is_watertight(angle):
    # Thousands of float32 edges at arbitrary angles: rounding must never open a hole or cover a
    # pixel twice, which needs shared edges to be evaluated identically by both faces.
    n = 256
    verts, faces = grid_mesh(48, n, jitter=0.2, dtype=torch.float64, seed=1)
    xy = verts[0, :, :2] * 0.8
    c, s = torch.cos(torch.tensor(angle, dtype=torch.float64)), torch.sin(torch.tensor(angle, dtype=torch.float64))
    rot = torch.stack([torch.stack([c, -s]), torch.stack([s, c])])
    verts = torch.cat([xy @ rot.T, verts[0, :, 2:]], -1)[None].float()
    t = verts[0, faces, :2].double()
    area2 = (t[:, 1, 0] - t[:, 0, 0]) * (t[:, 2, 1] - t[:, 0, 1]) - (t[:, 2, 0] - t[:, 0, 0]) * (t[:, 1, 1] - t[:, 0, 1])
    assert (area2 < 0).all()  # a proper (non-folded) front-facing mesh
    count = coverage_count(verts, faces, (n, n))[0]
    assert count.max() == 1
    g = torch.arange(n, dtype=torch.float64) * (2 / (n - 1)) - 1
    centres = torch.stack([g[None, :].expand(n, n), g[:, None].expand(n, n)], -1)
    local = centres @ rot  # inverse rotation of the pixel centres
    margin = 2 * 2 / (n - 1)
    interior = (local.abs() < 0.8 - margin).all(-1)
    assert interior.sum() > 0.4 * n * n
    assert (count[interior] == 1).all()
    fr = rasterize(verts, faces, (n, n))
    assert torch.equal(fr.face_index[0] >= 0, count > 0)


@pytest.mark.parametrize("k", [51, 85])
def test_float32_edges_through_pixel_centres_are_watertight(k):
    # Vertices on pixel centres (inexact in float32 normalised units), so many edges pass
    # within rounding error of pixel centres: each such centre must still be covered once.
    n = 256
    verts, faces = grid_mesh(k, n, jitter=0.0, dtype=torch.float32)
    count = coverage_count(verts, faces, (n, n))[0]
    assert count.max() == 1
    assert (count[1:-1, 1:-1] == 1).all()


def test_fan_around_pixel_centre_vertex_covers_it_once():
    # Eight triangles meeting at a vertex that sits exactly on a pixel centre.
    n = 33
    import math

    centre = torch.tensor([16.0, 16.0])
    ring = [centre + 10 * torch.tensor([math.cos(a), math.sin(a)]) for a in [k * math.pi / 4 for k in range(8)]]
    xy = torch.stack([centre] + ring).double()
    verts = torch.cat([pix_to_norm(xy, n), torch.full((9, 1), 0.5, dtype=torch.float64)], -1)[None]
    faces = torch.tensor([[0, 1 + (k + 1) % 8, 1 + k] for k in range(8)])
    fr = rasterize(verts, faces, (n, n))
    assert (fr.face_index[0, 16, 16] >= 0).item()
    per_face = torch.stack([rasterize(verts, faces[f : f + 1], (n, n)).face_index[0] >= 0 for f in range(8)])
    assert per_face.sum(0).max() == 1
    assert per_face[:, 16, 16].sum() == 1


def test_batch_equals_individual():
    gen = torch.Generator().manual_seed(3)
    verts, faces = grid_mesh(6, 48, jitter=0.3)
    batch = verts.repeat(3, 1, 1)
    batch[..., :2] = batch[..., :2] * torch.tensor([[[0.9, 0.7]], [[1.1, 0.5]], [[0.6, 1.2]]], dtype=torch.float64)
    batch[..., 2] = torch.rand(3, verts.shape[1], generator=gen, dtype=torch.float64)
    attr = torch.randn(3, verts.shape[1], 5, generator=gen, dtype=torch.float64)
    fr = rasterize(batch, faces, (40, 48))
    img = interpolate(fr, faces, attr)
    for b in range(3):
        one = rasterize(batch[b : b + 1], faces, (40, 48))
        assert torch.equal(fr.face_index[b], one.face_index[0])
        assert torch.equal(fr.barycentric[b], one.barycentric[0])
        assert torch.equal(fr.depth[b], one.depth[0])
        assert torch.equal(img[b], interpolate(one, faces, attr[b : b + 1])[0])
    assert not torch.equal(fr.face_index[0], fr.face_index[1])


def test_chunking_gives_identical_results():
    verts, faces = grid_mesh(7, 50, jitter=0.4)
    verts = torch.cat([verts, verts * torch.tensor([0.5, 0.8, 1.0], dtype=torch.float64)])
    ref = rasterize(verts, faces, (50, 50), cull_backfaces=False)
    for max_fragments in (7, 100, 1000):
        fr = rasterize(verts, faces, (50, 50), cull_backfaces=False, max_fragments=max_fragments)
        assert torch.equal(fr.face_index, ref.face_index)
        assert torch.equal(fr.barycentric, ref.barycentric)
        assert torch.equal(fr.depth, ref.depth)


def test_equal_depth_tie_is_smallest_face_index():
    v = front(tri([[10, 10], [50, 12], [20, 55]], n=64))
    verts = torch.cat([v, v], 1)
    faces = torch.tensor([[3, 4, 5], [0, 1, 2]])
    fr = rasterize(verts, faces, (64, 64))
    covered = fr.face_index[0] >= 0
    assert covered.any() and (fr.face_index[0][covered] == 0).all()


def test_partly_offscreen_triangle_is_clipped():
    pts = [[-100.0, -50.0], [300.0, 20.0], [40.0, 400.0]]
    fr = rasterize(front(tri(pts, n=64)), FACE, (64, 64))
    assert torch.equal(fr.face_index[0] >= 0, centres_inside(pts, 64))


def test_gradcheck_attributes():
    verts, faces = grid_mesh(2, 9, jitter=0.3)
    attr = torch.randn(1, verts.shape[1], 2, dtype=torch.float64, requires_grad=True)
    fr = rasterize(verts, faces, (9, 9))
    assert torch.autograd.gradcheck(lambda a: interpolate(fr, faces, a), (attr,))
    # Through render as well, and the gradient is the barycentric weight.
    img, _ = render(verts, faces, attr, (9, 9))
    img[0, 0, 4, 4].backward()
    f = fr.face_index[0, 4, 4]
    expect = torch.zeros_like(attr)
    expect[0, faces[f], 0] = fr.barycentric[0, 4, 4]
    assert torch.allclose(attr.grad, expect)


def test_gradcheck_vertex_positions_inside_faces():
    # One triangle whose edges pass no closer than ~0.1 px to any pixel centre, so gradcheck's
    # small steps never change coverage and barycentrics / depth are smooth in the vertices.
    verts = front(tri([[1.3, 1.2], [7.6, 2.4], [2.5, 7.7]], z=[0.1, 0.5, 0.3], n=9))
    attr = torch.randn(1, 3, 2, dtype=torch.float64)
    fixed = rasterize(verts, FACE, (9, 9)).face_index

    def f(v):
        fr = rasterize(v, FACE, (9, 9))
        assert torch.equal(fr.face_index, fixed)
        return interpolate(fr, FACE, attr), fr.depth.masked_fill(fr.face_index < 0, 0)

    assert torch.autograd.gradcheck(f, (verts.clone().requires_grad_(True),))


def test_render_shared_attributes_and_dtype():
    verts, faces = grid_mesh(4, 32, jitter=0.2, dtype=torch.float32)
    colours = torch.rand(verts.shape[1], 3)
    img, mask = render(verts.repeat(2, 1, 1), faces, colours, (32, 32))
    assert img.shape == (2, 3, 32, 32) and mask.shape == (2, 1, 32, 32)
    assert img.dtype == torch.float32
    assert torch.equal(img[0], img[1])
    assert (img <= colours.max() + 1e-6).all() and (img >= 0).all()


def test_bad_inputs_raise():
    v = tri([[1, 1], [5, 1], [1, 5]], n=8)
    with pytest.raises(ValueError):
        rasterize(v[0], FACE, (8, 8))
    with pytest.raises(ValueError):
        rasterize(v, FACE.float(), (8, 8))
    with pytest.raises(ValueError):
        rasterize(v, torch.tensor([[0, 1, 3]]), (8, 8))
    with pytest.raises(ValueError):
        rasterize(v, FACE, (1, 8))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_cuda_matches_cpu():
    verts, faces = grid_mesh(8, 64, jitter=0.4, dtype=torch.float32)
    attr = torch.randn(1, verts.shape[1], 4)
    ref = rasterize(verts, faces, (64, 64))
    gpu = rasterize(verts.cuda(), faces.cuda(), (64, 64))
    assert torch.equal(gpu.face_index.cpu(), ref.face_index)
    assert torch.allclose(gpu.barycentric.cpu(), ref.barycentric, atol=1e-6)
    img = interpolate(gpu, faces.cuda(), attr.cuda())
    assert torch.allclose(img.cpu(), interpolate(ref, faces, attr), atol=1e-5)
