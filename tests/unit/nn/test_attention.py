"""Attention over feature maps: exact padding to one head width, patch attention (the memory cap)
and its exactness cases, the fused SDPA kernel, the self-attention block against PyTorch's."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from animzoo.nn.attention import (
    CrossAttentionAlignment,
    MultiHeadSelfAttention,
    attention,
    patch_attention,
    sinusoidal_positions,
)

pytestmark = pytest.mark.usefixtures("one_thread")


def naive_attention(q, k, v, heads=1, scale=None):
    b, n, cq = q.shape
    cv = v.shape[-1]
    dq, dv = cq // heads, cv // heads
    scale = dq**-0.5 if scale is None else scale
    outs = []
    for h in range(heads):
        qh, kh, vh = q[..., h * dq:(h + 1) * dq], k[..., h * dq:(h + 1) * dq], v[..., h * dv:(h + 1) * dv]
        weights = torch.softmax(qh @ kh.transpose(1, 2) * scale, dim=-1)
        outs.append(weights @ vh)
    return torch.cat(outs, dim=-1)


@pytest.mark.parametrize("cq,cv,heads", [(16, 8, 1), (8, 24, 1), (32, 16, 4), (12, 12, 3)])
def test_attention_with_unequal_widths_equals_the_textbook_formula(cq: int, cv: int, heads: int) -> None:
    g = torch.Generator().manual_seed(0)
    q, k = torch.randn(2, 10, cq, generator=g), torch.randn(2, 7, cq, generator=g)
    v = torch.randn(2, 7, cv, generator=g)
    torch.testing.assert_close(attention(q, k, v, num_heads=heads), naive_attention(q, k, v, heads), atol=1e-5, rtol=1e-5)


def test_attention_refuses_mismatched_inputs() -> None:
    with pytest.raises(ValueError, match="do not fit"):
        attention(torch.randn(1, 4, 8), torch.randn(1, 5, 8), torch.randn(1, 4, 8))
    with pytest.raises(ValueError, match="num_heads"):
        attention(torch.randn(1, 4, 6), torch.randn(1, 4, 6), torch.randn(1, 4, 6), num_heads=4)


def test_attention_runs_the_fused_cpu_kernel_even_with_unequal_widths() -> None:
    # The padding exists so that SDPA's flash kernel (no N x N map) serves instead of the math path.
    q, k, v = torch.randn(1, 64, 32), torch.randn(1, 64, 32), torch.randn(1, 64, 16)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        attention(q, k, v)
    names = {e.name for e in prof.events()}
    assert any("flash_attention" in name for name in names), sorted(n for n in names if "attention" in n)
    assert "aten::_softmax" not in names


def _tokens(x: torch.Tensor) -> torch.Tensor:
    return x.flatten(2).transpose(1, 2)


def test_patch_one_is_plain_attention() -> None:
    q, k, v = torch.randn(2, 16, 8), torch.randn(2, 16, 8), torch.randn(2, 16, 4)
    torch.testing.assert_close(patch_attention(q, k, v, (4, 4), patch=1), attention(q, k, v))


def test_patch_attention_equals_full_attention_on_cell_constant_maps() -> None:
    g = torch.Generator().manual_seed(1)
    coarse = [torch.randn(2, c, 3, 4, generator=g) for c in (8, 8, 6)]
    q, k, v = (_tokens(F.interpolate(x, scale_factor=2, mode="nearest")) for x in coarse)
    # Full attention over the repeated keys weighs each cell's 4 copies equally; so does patch
    # attention with one key per cell, and the values are the same inside a cell.
    full = patch_attention(q, k, v, (6, 8), patch=1, num_heads=2)
    torch.testing.assert_close(patch_attention(q, k, v, (6, 8), patch=2, num_heads=2), full, atol=1e-5, rtol=1e-5)


def test_patch_attention_moves_whole_cells_with_their_detail() -> None:
    # Keys: one-hot cell indices; queries: the index of the cell to the right. A sharp softmax then
    # copies each right-hand cell, sub-cell detail included: exact for motion by whole cells.
    cells, p = 4, 2
    idx = torch.arange(cells * cells).reshape(1, cells, cells)
    key_cells = F.one_hot(idx, cells * cells).permute(0, 3, 1, 2).float() * 30
    shifted = torch.clamp(idx + 1, max=cells * cells - 1)
    shifted[..., -1] = idx[..., -1]  # the last column has no right neighbour: keep it
    query_cells = F.one_hot(shifted, cells * cells).permute(0, 3, 1, 2).float() * 30
    k = _tokens(F.interpolate(key_cells, scale_factor=p, mode="nearest"))
    q = _tokens(F.interpolate(query_cells, scale_factor=p, mode="nearest"))
    values = torch.randn(1, 3, cells * p, cells * p, generator=torch.Generator().manual_seed(2))
    out = patch_attention(q, k, _tokens(values), (cells * p, cells * p), patch=p)
    out = out.transpose(1, 2).reshape(1, 3, cells * p, cells * p)
    torch.testing.assert_close(out[..., : -p], values[..., p:], atol=1e-5, rtol=0)
    # Full attention on the same inputs cannot keep the detail: it averages each cell.
    full = patch_attention(q, k, _tokens(values), (cells * p, cells * p), patch=1).transpose(1, 2).reshape(out.shape)
    assert (full[..., : -p] - values[..., p:]).abs().max() > 0.1


def test_patch_attention_refuses_a_grid_that_does_not_split() -> None:
    with pytest.raises(ValueError, match="3x3 patches"):
        patch_attention(torch.randn(1, 16, 4), torch.randn(1, 16, 4), torch.randn(1, 16, 4), (4, 4), patch=3)


def test_self_attention_matches_pytorch_multihead_attention() -> None:
    torch.manual_seed(0)
    mine = MultiHeadSelfAttention(16, num_heads=4)
    ref = torch.nn.MultiheadAttention(16, 4, batch_first=True)
    with torch.no_grad():
        ref.in_proj_weight.copy_(mine.qkv.weight)
        ref.in_proj_bias.copy_(mine.qkv.bias)
        ref.out_proj.weight.copy_(mine.proj.weight)
        ref.out_proj.bias.copy_(mine.proj.bias)
    x = torch.randn(2, 12, 16)
    expected, _ = ref(x, x, x, need_weights=False)
    torch.testing.assert_close(mine(x, (3, 4)), expected, atol=1e-5, rtol=1e-5)


def test_cross_attention_alignment_keeps_its_parameters_under_any_patch_and_checks_sizes() -> None:
    torch.manual_seed(0)
    align = CrossAttentionAlignment(8, 4, (8, 8), num_blocks=2, num_heads=2, mlp_dim=16)
    m_c, m_r, f_r = torch.randn(2, 8, 8, 8), torch.randn(2, 8, 8, 8), torch.randn(2, 4, 8, 8)
    full, capped = align(m_c, m_r, f_r), align(m_c, m_r, f_r, patch=2)
    assert full.shape == capped.shape == (2, 4, 8, 8)
    assert not torch.allclose(full, capped)
    (full.sum() + capped.sum()).backward()
    assert align.position.grad is not None and align.position.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="built for 8x8"):
        align(torch.randn(2, 8, 4, 4), torch.randn(2, 8, 4, 4), torch.randn(2, 4, 4, 4))


@pytest.mark.parametrize("size,channels,cell", [(8, 128, 1), (16, 64, 1), (32, 64, 2), (64, 16, 4)])
def test_initial_positions_make_attention_start_local_but_not_saturated(size: int, channels: int, cell: int) -> None:
    positions = sinusoidal_positions((size, size), channels, 8.0, cell=cell)
    assert positions.shape == (1, size * size, channels)
    # The attention map between cells (patch_attention averages positions over cells).
    cells = size // cell
    pooled = positions[0].reshape(cells, cell, cells, cell, channels).mean((1, 3)).reshape(-1, channels)
    weights = (pooled @ pooled.T / channels**0.5).softmax(-1)
    ys, xs = torch.meshgrid(torch.arange(cells), torch.arange(cells), indexing="ij")
    grid = torch.stack([ys.flatten(), xs.flatten()], -1).float()
    near = torch.cdist(grid, grid) <= 2.01
    # Local: most of each cell's weight is within two cells of it ...
    assert (weights * near).sum(-1).min() > 0.45
    # ... and the position itself is the largest weight, but not all of it (a saturated softmax
    # passes no gradient to the motion features, see the next test).
    assert torch.equal(weights.argmax(-1), torch.arange(cells * cells))
    assert 0.3 < weights.diagonal().min() and weights.diagonal().max() < 0.9
    far = torch.roll(positions, shifts=size * size // 2, dims=1)  # queries from the other half of the frame
    values = torch.randn(1, size * size, 8, generator=torch.Generator().manual_seed(0))
    moved = patch_attention(far, positions, values, (size, size), patch=cell)
    assert (moved - values).abs().mean() / values.abs().mean() > 0.8  # positions do select where to read


def test_sharper_initial_attention_starves_the_motion_features_of_gradient() -> None:
    # The trade-off initial_self_logit sets: at 16 the initial attention is nearly one-hot and the
    # gradient that should teach the motion features to move it is ~10x smaller than at 8.
    def motion_gradients(self_logit: float) -> tuple[float, float]:
        torch.manual_seed(0)
        align = CrossAttentionAlignment(32, 8, (16, 16), num_blocks=1, num_heads=2, mlp_dim=16,
                                        initial_self_logit=self_logit)
        m_c = torch.randn(2, 32, 16, 16, requires_grad=True)
        f_r = F.interpolate(torch.randn(2, 8, 4, 4), size=(16, 16), mode="bicubic", align_corners=True)
        target = torch.roll(f_r, 1, dims=-1)  # the reference moved one position to the right
        (align(m_c, torch.randn(2, 32, 16, 16), f_r) - target).abs().mean().backward()
        return float(m_c.grad.norm()), float(align.motion_gain.grad.abs())

    soft, sharp = motion_gradients(8.0), motion_gradients(16.0)
    assert soft[0] > 5 * sharp[0] and soft[1] > 5 * sharp[1]


def test_alignment_starts_as_the_identity_motion() -> None:
    # Untrained, the module hands smooth reference features back where they were (as a warping
    # method starts from the identity flow), whatever the (random) motion features say.
    torch.manual_seed(0)
    align = CrossAttentionAlignment(32, 8, (16, 16), num_blocks=2, num_heads=2, mlp_dim=16)
    m_c, m_r = torch.randn(2, 32, 16, 16), torch.randn(2, 32, 16, 16)
    f_r = F.interpolate(torch.randn(2, 8, 4, 4), size=(16, 16), mode="bicubic", align_corners=True)
    with torch.no_grad():
        out = align(m_c, m_r, f_r)
        shifted = align(m_c, m_r, torch.roll(f_r, 4, dims=-1))
    assert (out - f_r).abs().mean() / f_r.abs().mean() < 0.35
    # Where the output reads from follows the features: moved features come out moved (compared
    # away from the left and right borders, where the wrap-around and the edges differ).
    interior = (shifted - torch.roll(out, 4, dims=-1))[..., 8:12]
    assert interior.abs().mean() / f_r.abs().mean() < 0.1
    block = align.blocks[0]
    x = torch.randn(1, 256, 8)
    torch.testing.assert_close(block(x, (16, 16)), x)  # zero-initialised residual branches


def test_motion_gain_sets_how_much_the_motion_features_move_attention_and_can_be_fixed() -> None:
    torch.manual_seed(0)
    m_c, m_r = torch.randn(1, 32, 16, 16), torch.randn(1, 32, 16, 16)
    f_r = F.interpolate(torch.randn(1, 8, 4, 4), size=(16, 16), mode="bicubic", align_corners=True)

    def build(gain: float, learn: bool = True) -> CrossAttentionAlignment:
        torch.manual_seed(1)
        return CrossAttentionAlignment(32, 8, (16, 16), num_blocks=1, num_heads=2, mlp_dim=16,
                                       motion_gain=gain, learn_motion_gain=learn)

    with torch.no_grad():
        silent = build(0.0)
        other = torch.randn(1, 32, 16, 16)
        torch.testing.assert_close(silent(m_c, m_r, f_r), silent(other, m_r, f_r))  # gain 0: motion ignored
        # A larger gain moves the output further from the identity start.
        moved = [float((build(g)(m_c, m_r, f_r) - f_r).abs().mean()) for g in (0.1, 1.0, 3.0)]
    assert moved[0] < moved[1] < moved[2]
    fixed = build(2.0, learn=False)
    assert "motion_gain" not in dict(fixed.named_parameters())
    assert float(fixed.state_dict()["motion_gain"]) == 2.0  # saved with the model all the same
    learned = build(2.0)
    assert dict(learned.named_parameters())["motion_gain"].requires_grad
    with torch.no_grad():
        torch.testing.assert_close(fixed(m_c, m_r, f_r), learned(m_c, m_r, f_r))


def test_relative_motion_ignores_shared_features_and_moves_queries_by_their_change() -> None:
    torch.manual_seed(0)
    align = CrossAttentionAlignment(32, 8, (16, 16), num_blocks=0, motion_gain=1.0, relative_motion=True,
                                    initial_self_logit=64.0)
    f_r = F.interpolate(torch.randn(1, 8, 4, 4), size=(16, 16), mode="bicubic", align_corners=True)
    m_a, m_b = 3 * torch.randn(1, 32, 16, 16), 3 * torch.randn(1, 32, 16, 16)
    with torch.no_grad():
        # The reference under its own token: the same output whatever the features hold.
        still = align(m_a, m_a, f_r)
        torch.testing.assert_close(align(m_b, m_b, f_r), still)
        # A change equal to the offset to the left neighbour's position makes every query read
        # one column to the left: the features come out moved one column right.
        position = align.position.detach().reshape(16, 16, 32).permute(2, 0, 1)[None]
        offset = torch.roll(position, 1, dims=-1) - position
        moved = align(m_a + offset, m_a, f_r)
    expected = torch.roll(still, 1, dims=-1)
    assert (moved - expected)[..., 1:].abs().mean() < 0.1 * (still - expected)[..., 1:].abs().mean()


def test_passthrough_channels_are_moved_by_the_attention_but_skip_the_blocks() -> None:
    torch.manual_seed(0)
    align = CrossAttentionAlignment(32, 11, (8, 8), num_blocks=1, num_heads=4, mlp_dim=16, motion_gain=1.0,
                                    passthrough_channels=3)
    assert align.blocks[0].norm1.normalized_shape == (8,)  # the blocks see the 8 feature channels
    m_c, m_r, f_r = torch.randn(1, 32, 8, 8), torch.randn(1, 32, 8, 8), torch.randn(1, 11, 8, 8)
    with torch.no_grad():
        for parameter in align.blocks.parameters():  # blocks that do something
            parameter.add_(torch.randn_like(parameter))
        out = align(m_c, m_r, f_r)
        q = _tokens(align.motion_gain * m_c) + align.position
        k = _tokens(align.motion_gain * m_r) + align.position
        attended = naive_attention(q, k, _tokens(f_r)).transpose(1, 2).reshape(1, 11, 8, 8)
    torch.testing.assert_close(out[:, 8:], attended[:, 8:])  # the pixels: attention alone
    assert (out[:, :8] - attended[:, :8]).abs().mean() > 0.1  # the features: refined by the blocks
    with pytest.raises(ValueError, match="passthrough_channels"):
        CrossAttentionAlignment(32, 8, (8, 8), num_blocks=1, num_heads=2, passthrough_channels=8)
