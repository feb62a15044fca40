"""Sparse-to-dense: local-branch placement, the parsing prior, ablation switches, input checks."""

from __future__ import annotations

import pytest
import torch

from animzoo.errors import AnimzooInputError
from animzoo.geometry.grid import make_coordinate_grid, pixel_to_normalized
from animzoo.methods.sparse2dense import Sparse2Dense
from animzoo.methods.sparse2dense.lightning_model import (
    parsing_match_loss,
    parsing_mismatch,
)
from animzoo.methods.sparse2dense.torch_model import (
    DenseMotionNetwork,
    MotionBranch,
    crop_half_extent,
    default_regions,
    paste_local_flow,
)

pytestmark = pytest.mark.usefixtures("one_thread")

SMALL = {
    "scale_factor": 1.0,
    "embedding_dim": 32,
    "global_branch": {"block_expansion": 8, "max_features": 32, "num_blocks": 3},
    "local_branch": {"block_expansion": 8, "max_features": 32, "num_blocks": 2},
}


def small_model(**kwargs) -> Sparse2Dense:
    args = {
        "dense_motion": SMALL,
        "generator": {"block_expansion": 8, "max_features": 32, "num_bottleneck_blocks": 1},
        "discriminator": {"block_expansion": 8, "max_features": 32, "num_blocks": 3},
        "perceptual_weights": "none",
        "num_parsing_labels": 4,
    }
    args.update(kwargs)
    return Sparse2Dense(**args)


def face_landmarks(b: int = 2, n: int = 70, seed: int = 0) -> torch.Tensor:
    """Random but face-like landmarks: the iBUG regions in their usual places."""
    g = torch.Generator().manual_seed(seed)
    lm = torch.rand(b, n, 2, generator=g) * 0.6 - 0.3
    lm[:, 36:42] = torch.tensor([-0.35, -0.2]) + 0.05 * torch.rand(b, 6, 2, generator=g)
    lm[:, 42:48] = torch.tensor([0.3, -0.2]) + 0.05 * torch.rand(b, 6, 2, generator=g)
    lm[:, 48:68] = torch.tensor([0.0, 0.4]) + 0.08 * torch.rand(b, 20, 2, generator=g)
    return lm


# --------------------------------------------------------------------------- local branch placement


def test_paste_local_flow_places_a_known_flow_at_the_window():
    """A local branch that says "sample crop position u + d" must land, in image coordinates, at
    c_src + s (u + d) for output pixels inside the window around c_drv, and nowhere else."""
    h = w = 33
    s = torch.tensor([crop_half_extent(9, w), crop_half_extent(9, h)])  # 9-pixel window
    ident = make_coordinate_grid(h, w)[None]
    global_grid = ident + 0.0  # identity global motion
    n = 9
    base = make_coordinate_grid(n, n)[None]
    d = torch.tensor([0.5, -0.25])
    local_grid = base + d
    mask = torch.ones(1, 1, n, n)
    c_src = pixel_to_normalized(torch.tensor([[10.0, 12.0]]), (h, w))
    c_drv = pixel_to_normalized(torch.tensor([[20.0, 16.0]]), (h, w))
    grid, m = paste_local_flow(global_grid, local_grid, mask, c_src, c_drv, s, border=0.0)
    # The window: pixels 16..24 in x, 12..20 in y (centre 20, 16; half-width 4 px).
    inside = torch.zeros(h, w, dtype=torch.bool)
    inside[12:21, 16:25] = True
    assert torch.equal(m[0, 0] > 0, inside)
    expected = c_src[0] + s * ((ident[0] - c_drv[0]) / s + d)
    assert torch.allclose(grid[0][inside], expected[inside], atol=1e-5)
    assert torch.equal(grid[0][~inside], ident[0][~inside])
    # In pixels: the window's centre samples the source at (10, 12) + d * 4 px.
    centre_px = (grid[0, 16, 20] + 1) / 2 * (w - 1)
    assert torch.allclose(centre_px, torch.tensor([10.0 + 2.0, 12.0 - 1.0]), atol=1e-4)


def test_paste_local_flow_blends_with_the_mask():
    h = w = 17
    s = torch.tensor([crop_half_extent(9, w)] * 2)
    ident = make_coordinate_grid(h, w)[None]
    global_grid = ident + torch.tensor([0.1, 0.0])
    local_grid = make_coordinate_grid(9, 9)[None]  # identity in crop coordinates
    c = torch.zeros(1, 2)
    grid, m = paste_local_flow(global_grid, local_grid, torch.full((1, 1, 9, 9), 0.25), c, c, s)
    # Inside: 0.75 * (p + 0.1) + 0.25 * p = p + 0.075 in x.
    assert torch.allclose(grid[0, 8, 8], ident[0, 8, 8] + torch.tensor([0.075, 0.0]), atol=1e-6)
    assert torch.allclose(m[0, 0, 8, 8], torch.tensor(0.25))
    assert torch.allclose(grid[0, 0, 0], global_grid[0, 0, 0])


def test_dense_motion_places_each_branch_at_its_region():
    """Through the whole network: each local branch's output flow lands around its own region's
    driving landmarks, with the crop taken around the region's source landmarks."""
    torch.manual_seed(0)
    net = DenseMotionNetwork(num_landmarks=70, mask_border=0.0, **SMALL)
    src_lm = face_landmarks(1)
    drv_lm = src_lm.clone()
    drv_lm[:, 48:68] += torch.tensor([0.1, -0.05])  # the mouth moves
    d = torch.tensor([0.3, 0.2])

    def fake_local(crop, lm_src, lm_drv):  # a known flow and a full mask
        b, _, n, _ = crop.shape
        return {"flow": d.view(1, 2, 1, 1).expand(b, 2, n, n), "mask": torch.ones(b, 1, n, n)}

    for branch in net.local_branches.values():
        branch.forward = fake_local
    h = w = 64
    out = net(torch.rand(1, 3, h, w), src_lm, drv_lm)
    n = net.crop_size(h)
    s = torch.tensor([crop_half_extent(n, w), crop_half_extent(n, h)])
    ident = make_coordinate_grid(h, w)
    names = list(net.regions)
    for r, name in enumerate(names):
        c_src = net.region_centres(src_lm, name)[0]
        c_drv = net.region_centres(drv_lm, name)[0]
        u = (ident - c_drv) / s
        window = (u.abs() <= 1).all(-1)
        others = torch.zeros_like(window)
        for other in names:
            if other != name:
                uo = (ident - net.region_centres(drv_lm, other)[0]) / s
                others |= (uo.abs() <= 1).all(-1)
        mine = window & ~others
        assert mine.sum() > 20
        mask = out["local_masks"][0, r]
        assert torch.all(mask[mine] > 0.99) and torch.all(mask[~window] == 0)
        expected = c_src + s * (u + d)
        assert torch.allclose(out["grid"][0][mine], expected[mine], atol=1e-4)
    nowhere = out["local_masks"][0].sum(0) == 0
    assert torch.allclose(out["grid"][0][nowhere], out["global_grid"][0][nowhere])


def test_default_regions_cover_the_layouts():
    r70 = default_regions(70)
    assert 68 in r70["right_eye"] and 69 in r70["left_eye"] and 36 in r70["right_eye"] and 42 in r70["left_eye"]
    assert r70["mouth"] == list(range(48, 68))
    assert 68 not in default_regions(68)["right_eye"]
    assert default_regions(74)["left_eye"] == r70["left_eye"]
    with pytest.raises(ValueError, match="regions="):
        default_regions(10)


def test_crop_size_scales_with_resolution():
    net = DenseMotionNetwork(num_landmarks=70, local_branch={"num_blocks": 3})
    assert net.crop_size(256) == 64 and net.crop_size(512) == 128
    assert net.crop_size(64) == 16


def test_region_centre_ignores_a_pupil_inside_the_eye():
    net = DenseMotionNetwork(num_landmarks=70, **SMALL)
    lm = face_landmarks(1)
    moved = lm.clone()
    moved[:, 68] = (lm[:, 36:42].amin(1) + lm[:, 36:42].amax(1)) / 2 + torch.tensor([0.01, 0.0])
    lm[:, 68] = (lm[:, 36:42].amin(1) + lm[:, 36:42].amax(1)) / 2
    assert torch.allclose(net.region_centres(lm, "right_eye"), net.region_centres(moved, "right_eye"))


# --------------------------------------------------------------------------- branches


def test_motion_branch_starts_as_identity_and_sees_the_landmarks():
    torch.manual_seed(0)
    branch = MotionBranch(5, block_expansion=8, max_features=16, num_blocks=2, embedding_dim=8)
    img = torch.rand(2, 3, 16, 16)
    lm = torch.rand(2, 5, 2)
    assert torch.equal(branch(img, lm, lm)["flow"], torch.zeros(2, 2, 16, 16))
    torch.nn.init.normal_(branch.flow_head.weight, std=0.1)
    a = branch(img, lm, lm)["flow"]
    b = branch(img, lm, lm + 0.1)["flow"]
    assert not torch.allclose(a, b)  # the driving landmarks change the flow (AdaIN + Add_Motion)


@pytest.mark.parametrize(
    ("switch", "absent"),
    [
        ({"use_adain": False}, "LandmarkAdaIN"),
        ({"use_add_motion": False}, "add_motion"),
        ({"use_local_branches": False}, "local_branches."),
    ],
)
def test_ablation_switches_remove_their_part(switch, absent):
    full = small_model()
    ablated = small_model(**switch)
    names_full = {n for n, _ in full.named_modules()} | {type(m).__name__ for m in full.modules()}
    names_ablated = {n for n, _ in ablated.named_modules()} | {type(m).__name__ for m in ablated.modules()}
    assert any(absent in n for n in names_full)
    assert not any(absent in n for n in names_ablated)
    batch = make_batch(ablated)
    out = ablated.animate(batch)
    assert out["prediction"].shape == batch["source"].shape
    if switch.get("use_local_branches") is False:
        assert "local_masks" not in out
        assert torch.equal(out["flow"], out["global_flow"])


def test_no_motion_map_generator_ignores_the_flow():
    model = small_model(motion_map_input=False)
    assert model.generator.first.conv.in_channels == 3
    assert small_model().generator.first.conv.in_channels == 5


def make_batch(model: Sparse2Dense, b: int = 2, size: int = 32, parsing: bool = False) -> dict:
    g = torch.Generator().manual_seed(1)
    batch = {
        "source": torch.rand(b, 3, size, size, generator=g),
        "driving": torch.rand(b, 3, size, size, generator=g),
        "source_landmarks": face_landmarks(b, model.num_landmarks),
        "driving_landmarks": face_landmarks(b, model.num_landmarks) + 0.02,
    }
    if parsing:
        batch["source_parsing"] = torch.randint(0, 4, (b, size, size), generator=g)
        batch["driving_parsing"] = torch.randint(0, 4, (b, size, size), generator=g)
    return batch


def test_generator_starts_as_the_warped_source():
    model = small_model()
    out = model.animate(make_batch(model))
    assert float(out["occlusion"].max()) < 0.05
    assert (out["prediction"] - out["deformed"]).abs().max() < 0.05


def test_training_step_updates_every_part():
    torch.manual_seed(0)
    model = small_model(loss_weights={"parsing": 1.0})
    assert model.requires == {"landmarks", "parsing"}
    assert small_model(loss_weights={"parsing": 0.0}).requires == {"landmarks"}
    batch = make_batch(model, parsing=True)
    loss, logs, out = model.generator_step(batch)
    assert {"perceptual", "l1", "gen_gan", "parsing", "parsing_mismatch"} <= set(logs)
    loss.backward()
    for name in ("dense_motion.global_branch", "dense_motion.local_branches.mouth", "generator"):
        grads = [p.grad for n, p in model.named_parameters() if n.startswith(name) and p.grad is not None]
        assert grads and any(float(g.abs().sum()) > 0 for g in grads), name
    d_loss, d_logs = model.discriminator_step(batch, out)
    assert d_loss.requires_grad and "disc_gan" in d_logs


@pytest.mark.parametrize("count", [68, 74])
def test_other_landmark_counts(count):
    model = small_model(num_landmarks=count)
    out = model.animate(make_batch(model))
    assert out["prediction"].shape == (2, 3, 32, 32)


# --------------------------------------------------------------------------- parsing prior


def test_parsing_loss_equals_the_paper_form_on_pixel_aligned_flows():
    """With a flow that moves by whole pixels, bilinear = nearest, so the differentiable form
    equals eq. 7's hard mismatch fraction; it is exactly the share of pixels with no match."""
    g = torch.Generator().manual_seed(0)
    size = 16
    src = torch.randint(0, 4, (2, size, size), generator=g)
    drv = torch.empty_like(src)
    drv[:, :, 3:] = src[:, :, :-3]  # the driving map is the source moved right by 3 px
    drv[:, :, :3] = (src[:, :, :1] + 1) % 4  # the first 3 columns match nothing
    ident = make_coordinate_grid(size, size)[None].expand(2, -1, -1, -1)
    right = ident - torch.tensor([3 * 2 / (size - 1), 0.0])  # output x samples source x - 3
    hard = parsing_mismatch(src, drv, right)
    soft = parsing_match_loss(src, drv, right, 4)
    assert torch.allclose(hard, torch.tensor(3 / size), atol=1e-6)
    assert torch.allclose(soft, hard, atol=1e-5)
    assert float(parsing_mismatch(src, drv, ident)) > 0.5  # the identity flow is wrong


def test_parsing_loss_has_gradients_and_rejects_bad_labels():
    src = torch.zeros(1, 8, 8, dtype=torch.long)
    src[:, :, 4:] = 1
    drv = torch.zeros(1, 8, 8, dtype=torch.long)
    drv[:, :, 3:] = 1
    grid = make_coordinate_grid(8, 8)[None].clone().requires_grad_(True)
    loss = parsing_match_loss(src, drv, grid, 2)
    loss.backward()
    assert grid.grad is not None and float(grid.grad.abs().sum()) > 0
    with pytest.raises(ValueError, match="labels"):
        parsing_match_loss(src + 5, drv, grid, 2)


# --------------------------------------------------------------------------- bad input


def test_wrong_landmark_count_and_nan_are_refused():
    model = small_model()
    batch = make_batch(model)
    bad = dict(batch, driving_landmarks=batch["driving_landmarks"][:, :68])
    with pytest.raises(AnimzooInputError, match="num_landmarks=70"):
        model.animate(bad)
    nan = batch["driving_landmarks"].clone()
    nan[1, 5] = float("nan")
    with pytest.raises(AnimzooInputError, match="NaN"):
        model.animate(dict(batch, driving_landmarks=nan))
    with pytest.raises(AnimzooInputError, match="annotate"):
        model.animate({"source": batch["source"], "driving": batch["driving"]})


def test_unsupported_size_names_the_fix():
    model = small_model()
    batch = make_batch(model, size=36)
    with pytest.raises(ValueError, match="image_size"):
        model.animate(batch)


def test_pupils_reach_only_the_eye_branches_by_default():
    """Gaze is local: moving only the pupils leaves the global flow unchanged (unless the paper's
    literal wiring, local_only_landmarks=[], feeds them to the global branch too)."""
    torch.manual_seed(0)
    for hidden, changes in ((None, False), ([], True)):
        net = DenseMotionNetwork(num_landmarks=70, local_only_landmarks=hidden, **SMALL)
        for branch in [net.global_branch, *net.local_branches.values()]:
            torch.nn.init.normal_(branch.flow_head.weight, std=0.1)
        src = face_landmarks(1)
        drv = src.clone()
        drv[:, 68:70] += torch.tensor([0.03, 0.0])
        img = torch.rand(1, 3, 64, 64)
        a, b = net(img, src, src), net(img, src, drv)
        assert torch.allclose(a["global_grid"], b["global_grid"]) != changes
        # The eye branches see the pupils either way: the dense motion changes, inside their windows.
        moved = (a["grid"] - b["grid"]).abs().sum(-1)[0] > 1e-6
        assert moved.any()
        if not changes:
            eyes = a["local_masks"][0, :2].sum(0) > 0
            assert not (moved & ~eyes).any()
    assert DenseMotionNetwork(num_landmarks=68, **SMALL).local_only_landmarks == []
    assert DenseMotionNetwork(num_landmarks=70, use_local_branches=False, **SMALL).local_only_landmarks == []


def test_unknown_recipe_keys_are_refused_with_their_path():
    with pytest.raises(ValueError, match=r"unknown Sparse2Dense dense_motion.global_branch keys \['bogus'\]"):
        small_model(dense_motion={**SMALL, "global_branch": {"bogus": 1}})
    with pytest.raises(ValueError, match="unknown Sparse2Dense generator keys"):
        small_model(generator={"width": 3})
    merged = small_model(dense_motion={"global_branch": {"num_blocks": 2}}).dm_params["global_branch"]
    assert merged["num_blocks"] == 2 and merged["block_expansion"] == 32  # the other keys keep their defaults
