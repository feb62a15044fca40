"""Pixel metrics against scikit-image / numpy, and de-duplication by (video_id, frame_index)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from animzoo.metrics import L1, PSNR, SSIM, AnimationMetrics, available_metrics
from animzoo.metrics.pixel import PSNR_MSE_FLOOR


def _images(n: int = 5, size: int = 32, noise: float = 0.08, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    target = torch.rand(n, 3, size, size, generator=g)
    # Smooth targets (closer to real images than white noise) with per-frame noise levels.
    target = torch.nn.functional.avg_pool2d(target, 5, stride=1, padding=2)
    levels = torch.linspace(0.5, 1.5, n).view(n, 1, 1, 1) * noise
    prediction = (target + levels * torch.randn(target.shape, generator=g)).clamp(0, 1)
    return prediction, target


def _hwc(t: torch.Tensor) -> list[np.ndarray]:
    return [x.permute(1, 2, 0).double().numpy() for x in t]


def test_values_match_skimage_and_numpy() -> None:
    prediction, target = _images()
    ids = ["a", "a", "b", "b", "c"]
    index = torch.tensor([0, 1, 0, 1, 0])
    metrics = AnimationMetrics()
    metrics.update(prediction, target, ids, index)
    result = {k: float(v) for k, v in metrics.compute().items()}

    p, t = _hwc(prediction), _hwc(target)
    l1 = np.mean([np.abs(a - b).mean() for a, b in zip(p, t)])
    psnr = np.mean([peak_signal_noise_ratio(b, a, data_range=1) for a, b in zip(p, t)])
    ssim = np.mean([
        structural_similarity(a, b, data_range=1, channel_axis=-1, gaussian_weights=True, sigma=1.5,
                              use_sample_covariance=False)
        for a, b in zip(p, t)
    ])
    assert result["l1"] == pytest.approx(l1, rel=1e-5)
    assert result["psnr"] == pytest.approx(psnr, rel=1e-5)
    assert result["ssim"] == pytest.approx(ssim, abs=1e-5)
    # Per image, then averaged: not the PSNR of the pooled MSE.
    pooled = 10 * np.log10(1 / np.mean([((a - b) ** 2).mean() for a, b in zip(p, t)]))
    assert abs(result["psnr"] - pooled) > 1e-3


def test_duplicated_frames_do_not_change_the_result() -> None:
    prediction, target = _images(n=6, seed=1)
    ids = ["v0", "v0", "v0", "v1", "v1", "v1"]
    index = torch.tensor([0, 1, 2, 0, 1, 2])
    once = AnimationMetrics()
    once.update(prediction, target, ids, index)
    expected = {k: float(v) for k, v in once.compute().items()}

    # The same frames in other chunks, repeated (as a distributed sampler pads), in another order.
    twice = AnimationMetrics()
    twice.update(prediction[:4], target[:4], ids[:4], index[:4])
    twice.update(prediction[2:], target[2:], ids[2:], index[2:])
    twice.update(prediction[:1], target[:1], ids[:1], index[:1])
    got = {k: float(v) for k, v in twice.compute().items()}
    assert got == pytest.approx(expected, rel=1e-6)

    # The key is (video_id, frame_index): the same frame index of another video counts.
    other = AnimationMetrics()
    other.update(prediction, target, ids, index)
    other.update(prediction[:1] * 0, target[:1], ["v2"], torch.tensor([0]))
    assert float(other.compute()["l1"]) > expected["l1"]


def test_dedup_after_merging_states_like_ddp() -> None:
    """Two 'ranks' each see a shard plus a padded repeat; merged states count each frame once."""
    prediction, target = _images(n=4, seed=2)
    ids = ["x", "x", "y", "y"]
    index = torch.tensor([0, 1, 0, 1])
    rank0, rank1, whole = L1(), L1(), L1()
    rank0.update(prediction[[0, 2]], target[[0, 2]], [ids[0], ids[2]], index[[0, 2]])
    rank1.update(prediction[[1, 3, 0]], target[[1, 3, 0]], [ids[1], ids[3], ids[0]], index[[1, 3, 0]])
    whole.update(prediction, target, ids, index)
    merged = L1()
    merged.keys = [torch.cat(rank0.keys + rank1.keys)]  # what dist_reduce_fx="cat" yields
    merged.values = [torch.cat(rank0.values + rank1.values)]
    merged._update_count = 1
    assert float(merged.compute()) == pytest.approx(float(whole.compute()), rel=1e-7)


def test_perfect_frames_have_a_finite_psnr() -> None:
    _, target = _images(n=2)
    psnr = PSNR()
    psnr.update(target, target, ["a", "a"], torch.tensor([0, 1]))
    assert float(psnr.compute()) == pytest.approx(-10 * np.log10(PSNR_MSE_FLOOR), rel=1e-6)
    ssim = SSIM()
    ssim.update(target, target, ["a", "a"], torch.tensor([0, 1]))
    assert float(ssim.compute()) == pytest.approx(1.0, abs=1e-6)


def test_empty_is_nan_and_bad_shapes_are_refused() -> None:
    assert torch.isnan(L1().compute())
    with pytest.raises(ValueError, match="B x C x H x W"):
        L1().update(torch.zeros(2, 3, 8, 8), torch.zeros(2, 3, 8, 9), ["a", "a"], torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="at least 11 x 11"):
        SSIM().update(torch.zeros(1, 3, 8, 8), torch.zeros(1, 3, 8, 8), ["a"], torch.tensor([0]))


def test_suite_names_and_prefix() -> None:
    assert {"l1", "psnr", "ssim"} <= set(available_metrics())
    collection = AnimationMetrics(prefix="test/")
    prediction, target = _images(n=2)
    collection.update(prediction, target, ["a", "a"], torch.tensor([0, 1]))
    assert set(collection.compute()) == {"test/l1", "test/psnr", "test/ssim"}
    with pytest.raises(KeyError, match="available"):
        AnimationMetrics(metrics=["l1", "fid@nothing"])


@pytest.mark.parametrize("name", ["l1", "fid", "akd", "csim"])
def test_every_metric_refuses_mismatched_batches(name: str) -> None:
    """Shapes that disagree, or ids that do not give one key per frame, are refused by name."""
    kwargs = {"akd": {"backend": "animzoo70"}, "csim": {"backend": "animzoo"}}.get(name, {})
    metrics = AnimationMetrics(metrics=[name], metric_kwargs={name: kwargs})
    frames = torch.rand(2, 3, 32, 32)
    with pytest.raises(ValueError, match="must both be B x C x H x W"):
        metrics.update(frames, frames[:, :, :16], ["a", "a"], torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="3 video ids for 2 frame indices"):
        metrics.update(frames, frames, ["a", "a", "b"], torch.tensor([0, 1]))
