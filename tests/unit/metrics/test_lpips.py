"""LPIPS against the lpips package's own forward with the same (random) trunk weights."""

from __future__ import annotations

from pathlib import Path

import lpips as lpips_package
import pytest
import torch
import torchvision
from torchmetrics import MetricCollection

from animzoo.metrics.lpips import LPIPS
from animzoo.metrics.pixel import deduplicate, frame_keys

pytestmark = pytest.mark.usefixtures("one_thread")

TRUNKS = {
    "alex": (torchvision.models.alexnet, "alexnet", "alexnet-owt-7be5be79.pth"),
    "squeeze": (torchvision.models.squeezenet1_1, "squeezenet1_1", "squeezenet1_1-b8a52dc0.pth"),
}


def _trunk_file(net: str, folder: Path, seed: int = 0) -> tuple[torch.nn.Module, Path]:
    """A torchvision trunk with random weights, saved under torchvision's file name."""
    builder, _, filename = TRUNKS[net]
    torch.manual_seed(seed)
    model = builder(weights=None)
    path = folder / filename
    torch.save(model.state_dict(), path)
    return model, path


def _frames(n: int = 3, size: int = 48, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    target = torch.nn.functional.avg_pool2d(torch.rand(n, 3, size, size, generator=g), 3, stride=1, padding=1)
    prediction = (target + 0.1 * torch.randn(target.shape, generator=g)).clamp(0, 1)
    return prediction, target


@pytest.mark.parametrize("net", ["alex", "squeeze"])
def test_matches_the_lpips_package_with_the_same_trunk(net: str, tmp_path, monkeypatch) -> None:
    trunk, path = _trunk_file(net, tmp_path)
    torch.manual_seed(123)  # our model's random init differs from the saved trunk: the load must happen
    metric = LPIPS(net=net, weights_path=path)
    assert metric.status.startswith("ok:"), metric.status

    # the package builds its trunk from torchvision; hand it the saved random trunk instead
    _, attr, _ = TRUNKS[net]
    monkeypatch.setattr(lpips_package.pretrained_networks.tv, attr, lambda *a, **k: trunk)
    reference = lpips_package.LPIPS(net=net, pretrained=True, pnet_rand=True, verbose=False).eval()

    prediction, target = _frames()
    ids, index = ["v0", "v0", "v1"], torch.tensor([0, 1, 0])
    metric.update(prediction, target, ids, index)
    _, ours = metric.per_frame()  # sorted by (video key, frame index)
    with torch.no_grad():
        expected = reference(prediction * 2 - 1, target * 2 - 1).flatten().double()
        unconverted = reference(prediction, target).flatten().double()  # the [0,1]-input bug
    _, expected, unconverted = deduplicate(frame_keys(ids, index), expected, unconverted)
    torch.testing.assert_close(ours, expected, atol=1e-6, rtol=1e-5)
    assert (ours - unconverted).abs().max() > 1e-3
    result = metric.compute()
    assert set(result) == {f"lpips@{net}"}
    assert float(result[f"lpips@{net}"]) == pytest.approx(float(expected.mean()), rel=1e-5)


def test_deduplicates_frozen_and_survives_moves(tmp_path) -> None:
    _, path = _trunk_file("squeeze", tmp_path)
    metric = LPIPS(net="squeeze", weights_path=path)
    metric.train()
    assert not metric.model.training
    assert all(not p.requires_grad for p in metric.model.parameters())
    prediction, target = _frames(4)
    ids, index = ["a", "a", "b", "b"], torch.tensor([0, 1, 0, 1])
    metric.to("cpu").double()
    metric.update(prediction, target, ids, index)
    once = float(metric.compute()["lpips@squeeze"])
    metric.update(prediction[:2], target[:2], ids[:2], index[:2])  # repeated frames count once
    assert float(metric.compute()["lpips@squeeze"]) == pytest.approx(once, rel=1e-7)
    per_video = metric.per_video()
    assert len(per_video) == 2 and all(set(v) == {"lpips@squeeze"} for v in per_video.values())

    metric.set_dtype(torch.float64)  # moves the network too: inputs follow its dtype
    metric.reset()
    metric.update(prediction, target, ids, index)
    assert float(metric.compute()["lpips@squeeze"]) == pytest.approx(once, rel=1e-4)

    collection = MetricCollection({"lpips": LPIPS(net="squeeze", weights_path=path)}, prefix="val/")
    collection.update(prediction, target, ids, index)
    assert list(collection.compute()) == ["val/lpips@squeeze"]


def test_missing_or_damaged_trunk_gives_nan_and_status(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("ANIMZOO_WEIGHTS_DIR", str(tmp_path / "weights"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.delenv("ANIMZOO_ALLOW_DOWNLOAD", raising=False)
    metric = LPIPS()
    assert metric.status.startswith("unavailable:")
    assert "alexnet-owt-7be5be79.pth" in metric.status
    assert "animzoo weights download lpips-alexnet" in metric.status
    prediction, target = _frames(2)
    metric.update(prediction, target, "v", torch.tensor([0, 1]))
    assert torch.isnan(metric.compute()["lpips@alex"])

    # random weights under the torchvision name in the weights dir fail the sha256 check
    (tmp_path / "weights").mkdir()
    _trunk_file("squeeze", tmp_path / "weights")
    damaged = LPIPS(net="squeeze")
    assert damaged.status.startswith("unavailable:") and "checksum" in damaged.status
    assert torch.isnan(damaged.compute()["lpips@squeeze"])
