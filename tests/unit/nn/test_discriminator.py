"""Patch and multi-scale discriminators."""

from __future__ import annotations

import pytest
import torch

from animzoo.nn.discriminator import MultiScaleDiscriminator, PatchDiscriminator, keypoint_heatmaps


def _kp(b: int = 2, k: int = 10, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    cov = torch.eye(2).expand(b, k, 2, 2) * 0.01
    return {"value": torch.rand(b, k, 2, generator=g) * 1.6 - 0.8, "covariance": cov.clone()}


def test_monkeynet_config_returns_four_maps_of_expected_shapes() -> None:
    disc = PatchDiscriminator(num_channels=3, block_expansion=32, num_blocks=4, max_features=256)
    feats, logits = disc(torch.rand(2, 3, 64, 64))
    # 4x4 conv without padding, then 2x2 pooling: 64 -> 61 -> 30 -> 27 -> 13 -> 10 -> 5 -> 2 -> 1
    assert [tuple(f.shape) for f in feats] == [(2, 64, 30, 30), (2, 128, 13, 13), (2, 256, 5, 5), (2, 256, 1, 1)]
    assert logits.shape == (2, 1, 1, 1)


def test_instance_norm_everywhere_but_the_first_block() -> None:
    disc = PatchDiscriminator(block_expansion=8, max_features=32)
    assert disc.down_blocks[0].norm is None
    assert all(isinstance(b.norm, torch.nn.InstanceNorm2d) for b in disc.down_blocks[1:])
    assert all(b.norm is None for b in PatchDiscriminator(block_expansion=8, use_instance_norm=False).down_blocks)


def test_kp_conditioning_adds_k_channels_and_changes_the_output() -> None:
    plain = PatchDiscriminator(block_expansion=8, max_features=32)
    cond = PatchDiscriminator(block_expansion=8, max_features=32, kp_conditioning=True, num_kp=10, kp_variance="matrix")
    assert plain.down_blocks[0].conv.in_channels == 3
    assert cond.down_blocks[0].conv.in_channels == 3 + 10
    x = torch.rand(2, 3, 64, 64)
    _, a = cond(x, _kp(seed=0))
    _, b = cond(x, _kp(seed=1))
    assert not torch.allclose(a, b)
    with pytest.raises(ValueError, match="keypoint-conditioned"):
        cond(x)
    with pytest.raises(ValueError, match="expected 10 keypoints"):
        cond(x, _kp(k=5))


def test_heatmap_conditioning_matrix_needs_covariance_and_scales_by_norm_const() -> None:
    kp = _kp()
    heat = keypoint_heatmaps(kp, (32, 32), "matrix", norm_const=100.0)
    assert heat.shape == (2, 10, 32, 32)
    assert 0.0 < heat.max() <= 0.01 + 1e-6
    with pytest.raises(ValueError, match="covariance"):
        keypoint_heatmaps({"value": kp["value"]}, (32, 32), "matrix")
    iso = keypoint_heatmaps({"value": kp["value"]}, (32, 32), 0.01)
    torch.testing.assert_close(iso, heat * 100.0)  # covariance 0.01 I == isotropic 0.01


def test_spectral_norm_bounds_the_weights() -> None:
    disc = PatchDiscriminator(block_expansion=8, max_features=32, sn=True)
    assert hasattr(disc.down_blocks[0].conv, "parametrizations")
    for _ in range(20):  # power iterations run in training mode
        disc(torch.rand(1, 3, 64, 64))
    w = disc.down_blocks[1].conv.weight
    sigma = torch.linalg.matrix_norm(w.detach().flatten(1), ord=2)
    assert abs(float(sigma) - 1.0) < 0.05


def test_gradients_reach_every_parameter() -> None:
    disc = PatchDiscriminator(block_expansion=8, max_features=32, kp_conditioning=True, num_kp=10, kp_variance=0.01)
    feats, logits = disc(torch.rand(2, 3, 64, 64), _kp())
    (logits.mean() + sum(f.mean() for f in feats)).backward()
    for name, p in disc.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_multiscale_returns_dicts_keyed_by_scale() -> None:
    disc = MultiScaleDiscriminator(scales=(1, 0.5), block_expansion=8, max_features=32, kp_conditioning=True, num_kp=10)
    feats, logits = disc(torch.rand(2, 3, 128, 128), _kp())
    assert set(feats) == set(logits) == {"1", "0.5"}
    assert len(feats["1"]) == len(feats["0.5"]) == 4
    assert logits["1"].shape[-1] > logits["0.5"].shape[-1]
    assert set(disc.discs.keys()) == {"1", "0-5"}


def test_too_small_input_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="too small"):
        PatchDiscriminator(block_expansion=8, max_features=32)(torch.rand(1, 3, 24, 24))
