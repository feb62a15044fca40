"""Attention over feature maps: cross-attention alignment and transformer blocks, all through
:func:`torch.nn.functional.scaled_dot_product_attention` (SDPA).

Two things here go beyond a textbook block:

* **Fused kernels.** SDPA's fused (flash / memory-efficient) kernels never materialise the
  ``N x N`` attention map, but they need queries and values of one head width. Cross-attention
  with keys wider than values (IMF: 256-channel motion features against 128-channel dense
  features) would otherwise fall back to the math kernel, which holds the whole map (and two
  more copies for the backward pass). :func:`attention` zero-pads the narrower of the two to the
  wider width with the softmax scale of the real key width, so the result is exact and the fused
  kernel serves, on GPU and on CPU alike.
* **Patch attention**, a memory cap: with ``patch = p > 1`` the queries and keys are averaged
  over ``p x p`` cells and the values are moved as whole ``p x p`` patches (pixel-unshuffled into
  the channel axis, attended, and shuffled back). The map is ``(N / p^2)^2``: a 64 x 64 level
  capped at 32 x 32 holds 16 times less. Every pixel of a cell shares its cell's attention, so
  the result is exact when the motion moves whole cells, and it equals full attention whenever
  queries, keys and values are constant on cells. The parameters are the same for every ``p``:
  the cap is a run-time choice, not a different model.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["attention", "patch_attention", "sinusoidal_positions", "MultiHeadSelfAttention", "TransformerBlock", "CrossAttentionAlignment"]


def attention(query: Tensor, key: Tensor, value: Tensor, *, num_heads: int = 1, scale: float | None = None) -> Tensor:
    """Multi-head scaled dot-product attention on token sequences, without projections.

    Args:
        query: ``B x N x C_qk``; key: ``B x M x C_qk``; value: ``B x M x C_v``.
        num_heads: channels are split into this many heads (both widths must divide).
        scale: softmax temperature (default ``1 / sqrt(C_qk / num_heads)``).

    Returns ``B x N x C_v``.
    """
    batch, n, c_qk = query.shape
    c_v = value.shape[-1]
    if key.shape[-1] != c_qk or key.shape[:2] != value.shape[:2] or key.shape[0] != batch:
        raise ValueError(
            f"attention: query {tuple(query.shape)}, key {tuple(key.shape)} and value {tuple(value.shape)} do not fit "
            "(key and query need one width, key and value one length)"
        )
    if c_qk % num_heads or c_v % num_heads:
        raise ValueError(f"attention: widths {c_qk} (query/key) and {c_v} (value) must divide by num_heads={num_heads}")
    d_qk, d_v = c_qk // num_heads, c_v // num_heads
    if scale is None:
        scale = d_qk**-0.5

    def heads(x: Tensor, d: int) -> Tensor:
        return x.reshape(batch, x.shape[1], num_heads, d).transpose(1, 2)

    q, k, v = heads(query, d_qk), heads(key, d_qk), heads(value, d_v)
    # One head width for all three, so SDPA's fused kernels apply; zeros change neither q.k nor
    # the weighted sum of the real value channels.
    width = max(d_qk, d_v)
    if d_qk < width:
        q, k = F.pad(q, (0, width - d_qk)), F.pad(k, (0, width - d_qk))
    elif d_v < width:
        v = F.pad(v, (0, width - d_v))
    out = F.scaled_dot_product_attention(q, k, v, scale=scale)[..., :d_v]
    return out.transpose(1, 2).reshape(batch, n, c_v)


def _tokens_to_map(x: Tensor, size: tuple[int, int]) -> Tensor:
    return x.transpose(1, 2).reshape(x.shape[0], x.shape[2], *size)


def _map_to_tokens(x: Tensor) -> Tensor:
    return x.flatten(2).transpose(1, 2)


def patch_attention(
    query: Tensor, key: Tensor, value: Tensor, size: tuple[int, int], *, patch: int = 1, num_heads: int = 1,
    scale: float | None = None,
) -> Tensor:
    """:func:`attention` of tokens laid out on an ``H x W`` grid, over ``patch x patch`` cells.

    ``query``, ``key``: ``B x HW x C_qk``; ``value``: ``B x HW x C_v`` (row-major tokens of one
    ``H x W`` grid, ``size``). ``patch = 1`` is plain attention; ``patch = p`` (dividing H and W)
    averages queries and keys over ``p x p`` cells and moves the values cell by cell (module
    docstring). Returns ``B x HW x C_v``.
    """
    if patch == 1:
        return attention(query, key, value, num_heads=num_heads, scale=scale)
    h, w = size
    if h % patch or w % patch:
        raise ValueError(f"patch_attention: a {h}x{w} grid does not split into {patch}x{patch} patches")
    # attention() checks the widths; pooling keeps the query width, so its default scale holds.
    q = _map_to_tokens(F.avg_pool2d(_tokens_to_map(query, size), patch))
    k = _map_to_tokens(F.avg_pool2d(_tokens_to_map(key, size), patch))
    # pixel_unshuffle orders channels (c, dy, dx): each head's channels stay contiguous.
    v = _map_to_tokens(F.pixel_unshuffle(_tokens_to_map(value, size), patch))
    out = attention(q, k, v, num_heads=num_heads, scale=scale)
    return _map_to_tokens(F.pixel_shuffle(_tokens_to_map(out, (h // patch, w // patch)), patch))


class MultiHeadSelfAttention(nn.Module):
    """Multi-head self-attention with Q/K/V and output projections (paper 002 eq. 6), on tokens of
    an ``H x W`` grid so that it can run as :func:`patch_attention`.

    ``forward(x: B x HW x C, size, patch=1)`` -> ``B x HW x C``.
    """

    def __init__(self, dim: int, num_heads: int = 8) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim={dim} must divide by num_heads={num_heads}")
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor, size: tuple[int, int], patch: int = 1) -> Tensor:
        q, k, v = self.qkv(x).chunk(3, dim=-1)
        return self.proj(patch_attention(q, k, v, size, patch=patch, num_heads=self.num_heads))


class TransformerBlock(nn.Module):
    """Pre-LayerNorm transformer block: ``x + MHSA(LN(x))``, then ``x + W2 GELU(W1 LN(x))``.

    ``zero_init``: the attention's output projection and ``W2`` start at zero, so the block starts
    as the identity (the residual branches learn from there; as in ReZero / DiT's adaLN-zero).

    ``forward(x: B x HW x C, size, patch=1)`` -> ``B x HW x C``.
    """

    def __init__(self, dim: int, num_heads: int = 8, mlp_dim: int = 1024, zero_init: bool = False) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = MultiHeadSelfAttention(dim, num_heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, mlp_dim), nn.GELU(), nn.Linear(mlp_dim, dim))
        if zero_init:
            for layer in (self.attn.proj, self.mlp[2]):
                nn.init.zeros_(layer.weight)
                nn.init.zeros_(layer.bias)

    def forward(self, x: Tensor, size: tuple[int, int], patch: int = 1) -> Tensor:
        x = x + self.attn(self.norm1(x), size, patch)
        return x + self.mlp(self.norm2(x))


def sinusoidal_positions(size: tuple[int, int], channels: int, self_logit: float = 16.0, cell: int = 1) -> Tensor:
    """A 2-D sinusoidal encoding of an ``H x W`` grid: ``1 x HW x channels``.

    A quarter of the channels are ``sin`` / ``cos`` of x at frequencies from ``pi / cell`` per
    position (one period per two cells) down to one period over the grid (geometrically spaced), a
    quarter the same of y; leftover channels are zero. ``cell`` is the patch size the grid is
    attended at (:func:`patch_attention` averages positions over cells: faster frequencies would
    average away). Scaled so that a position's dot product with itself, divided by
    ``sqrt(channels)``, is ``self_logit``: used as the initial learnable positional embedding of
    :class:`CrossAttentionAlignment`, it makes attention start out local (each position prefers
    itself and its neighbours), i.e. from the identity motion, as warping methods start from the
    identity flow, instead of from a blur over the whole frame.
    """
    h, w = size
    n = channels // 4
    out = torch.zeros(h * w, channels)
    if n == 0:
        return out[None]
    longest = max(h, w)
    fastest = torch.pi / cell
    freqs = fastest * torch.pow(torch.tensor(2.0 * cell / longest), torch.arange(n) / max(1, n - 1))  # ... 2 pi / side
    ys, xs = torch.meshgrid(torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32), indexing="ij")
    for i, coord in enumerate((xs.reshape(-1), ys.reshape(-1))):
        angles = coord[:, None] * freqs[None]
        out[:, 2 * i * n:(2 * i + 1) * n] = torch.sin(angles)
        out[:, (2 * i + 1) * n:(2 * i + 2) * n] = torch.cos(angles)
    # |p|^2 = 2n (sin^2 + cos^2 per frequency and axis)
    out = out * (self_logit * channels**0.5 / (2 * n)) ** 0.5
    return out[None]


class CrossAttentionAlignment(nn.Module):
    """IMF's implicit motion alignment at one scale (paper 002 eq. 5 and 6).

    Queries are the current frame's motion features ``m_c``, keys the reference's ``m_r`` (both
    times a learnable gain, plus one learnable positional embedding), values the reference's dense
    features ``f_r``; single-head attention without projections, scaled by ``1 / sqrt(C_qk)``,
    aligns ``f_r`` to the current frame, and ``num_blocks`` :class:`TransformerBlock` refine the
    result.

    The whole module starts as the identity motion, as warping methods start from the identity
    flow: the embedding starts as :func:`sinusoidal_positions` (each position attends to itself),
    the motion features enter through a gain (``motion_gain``; at the default 0.1 they cannot
    scramble that), and the transformer blocks start as the identity (``zero_init``). Training
    then moves away from it.

    Args:
        query_channels: channels of ``m_c`` / ``m_r``.
        value_channels: channels of ``f_r`` (and of the output).
        size: ``(H, W)`` of this scale (the positional embedding has one entry per position).
        num_blocks, num_heads, mlp_dim: the refining transformer blocks.
        initial_patch: the patch this scale is built to run at (only shapes the embedding's
            initial frequencies; any patch works at run time).
        initial_self_logit: ``self_logit`` of the initial embedding: how sharply attention starts
            at the identity. At 16 it is nearly one-hot (0.88-0.99 of the weight on the position
            itself) and the motion features get ~10x less gradient than at 8 (0.3-0.9 on itself,
            a tail over the neighbourhood; tested). 8 did not make the synthetic recipe's tokens
            learn motion any sooner (640 steps; the token pathway is the slow part), so the
            default stays 16, what the trained model used.
        motion_gain: the initial gain on ``m_c`` and ``m_r``. The motion features reach the
            logits only through it, and their gradient is proportional to it. A StyleGAN-style
            decoder's demodulated features are small (per-position norm about half of
            ``sqrt(C_qk)``), so even 2 hardly moves the initial attention off the identity.
        learn_motion_gain: learn the gain (a parameter) or keep it fixed (a buffer, still saved
            in the state dict).
        relative_motion: not the paper's form. Queries are the positions plus the gain times
            ``m_c - m_r`` (the change of the motion features at each position), keys the
            positions alone. Where the two frames' motion features agree (the reference under
            its own token) attention is the positions' alone, whatever the features hold, so
            they can grow rich without disturbing the redraw; where they differ, the
            difference moves the query's position, as a flow moves a sampling point.
        passthrough_channels: the last this many channels of ``f_r`` are aligned by the attention
            but skip the transformer blocks (IMF's image skip: the reference's pixels, which the
            blocks, built for features, must not remix); the blocks see the other channels.

    ``forward(m_c, m_r, f_r, patch=1)``: ``B x C_qk x H x W``, ``B x C_qk x H x W``,
    ``B x C_v x H x W`` -> ``B x C_v x H x W``; ``patch`` as in :func:`patch_attention`.
    """

    def __init__(self, query_channels: int, value_channels: int, size: tuple[int, int], num_blocks: int = 4,
                 num_heads: int = 8, mlp_dim: int = 1024, initial_patch: int = 1,
                 initial_self_logit: float = 16.0, motion_gain: float = 0.1, learn_motion_gain: bool = True,
                 relative_motion: bool = False, passthrough_channels: int = 0) -> None:
        super().__init__()
        if not 0 <= passthrough_channels < value_channels:
            raise ValueError(f"passthrough_channels={passthrough_channels} must be in [0, {value_channels})")
        self.size = (int(size[0]), int(size[1]))
        self.passthrough_channels = int(passthrough_channels)
        self.relative_motion = bool(relative_motion)
        self.query_channels = query_channels
        self.value_channels = value_channels
        self.position = nn.Parameter(
            sinusoidal_positions(self.size, query_channels, initial_self_logit, cell=initial_patch)
        )
        gain = torch.tensor(float(motion_gain))
        if learn_motion_gain:
            self.motion_gain = nn.Parameter(gain)
        else:
            self.register_buffer("motion_gain", gain)
        self.blocks = nn.ModuleList(
            TransformerBlock(value_channels - self.passthrough_channels, num_heads, mlp_dim, zero_init=True)
            for _ in range(num_blocks)
        )

    def forward(self, m_c: Tensor, m_r: Tensor, f_r: Tensor, patch: int = 1) -> Tensor:
        size = tuple(f_r.shape[-2:])
        if size != self.size or m_c.shape[-2:] != f_r.shape[-2:] or m_r.shape[-2:] != f_r.shape[-2:]:
            raise ValueError(
                f"CrossAttentionAlignment built for {self.size[0]}x{self.size[1]} maps got m_c {tuple(m_c.shape)}, "
                f"m_r {tuple(m_r.shape)}, f_r {tuple(f_r.shape)}"
            )
        if self.relative_motion:
            q = self.motion_gain * _map_to_tokens(m_c - m_r) + self.position
            k = self.position.expand(q.shape[0], -1, -1)
        else:
            q = self.motion_gain * _map_to_tokens(m_c) + self.position
            k = self.motion_gain * _map_to_tokens(m_r) + self.position
        x = patch_attention(q, k, _map_to_tokens(f_r), self.size, patch=patch)
        if self.passthrough_channels:
            x, passed = x.split([x.shape[-1] - self.passthrough_channels, self.passthrough_channels], dim=-1)
        for block in self.blocks:
            x = block(x, self.size, patch)
        if self.passthrough_channels:
            x = torch.cat([x, passed], dim=-1)
        return _tokens_to_map(x, self.size)
