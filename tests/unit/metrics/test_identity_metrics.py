"""CSIM / identity AED (IdentityMetrics): exact formulas on a stand-in backend, then dlib on a real face."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from animzoo.metrics.identity import IdentityMetrics
from animzoo.metrics.pixel import video_key

pytestmark = pytest.mark.usefixtures("one_thread")


class TableEmbeddings:
    """An IdentityBackend stand-in: frame ``i`` carries ``i / 1000`` in pixel (0, 0) of channel 0 and
    embeds to ``table[i]`` (L2-normalised; NaN rows = no face)."""

    name = "table"
    status = "ok: test table"
    available = True

    def __init__(self, table: torch.Tensor) -> None:
        self.table = F.normalize(table.float(), dim=1)
        self.dim = table.shape[1]
        self.calls = 0

    def embed(self, frames: torch.Tensor) -> torch.Tensor:
        self.calls += frames.shape[0]
        return self.table[(frames[:, 0, 0, 0] * 1000).round().long()]


def frames_for(ids) -> torch.Tensor:
    ids = torch.as_tensor(list(ids))
    out = torch.zeros(len(ids), 3, 8, 8)
    out[:, 0, 0, 0] = ids.float() / 1000
    return out


def test_csim_aed_and_detection_rate_match_the_formulas() -> None:
    g = torch.Generator().manual_seed(0)
    table = torch.randn(10, 16, generator=g)
    table[2] = float("nan")  # prediction of frame 2: no face
    table[9] = float("nan")  # ground truth of frame 4: no face
    backend = TableEmbeddings(table)
    metric = IdentityMetrics(backend=backend)
    metric.update(frames_for(range(5)), frames_for(range(5, 10)), "v", torch.arange(5))
    out = {k: float(v) for k, v in metric.compute().items()}
    e = backend.table
    pairs = [(0, 5), (1, 6), (3, 8)]  # frame 2: pred missing; frame 4: gt missing (excluded)
    csim = sum(float(e[p] @ e[t]) for p, t in pairs) / 3
    aed = sum(float((e[p] - e[t]).norm()) for p, t in pairs) / 3
    assert out["csim@table"] == pytest.approx(csim, rel=1e-5)
    assert out["aed_id@table"] == pytest.approx(aed, rel=1e-5)
    assert out["csim_detected@table"] == pytest.approx(3 / 4)
    assert out["csim_gt_missing@table"] == 1.0
    assert "csim_src@table" not in out  # reconstruction only: no source was given


def test_identical_frames_give_csim_one_and_aed_zero() -> None:
    metric = IdentityMetrics(backend=TableEmbeddings(torch.randn(3, 8)))
    metric.update(frames_for(range(3)), frames_for(range(3)), ["a", "b", "c"], 0)
    out = {k: float(v) for k, v in metric.compute().items()}
    assert out["csim@table"] == pytest.approx(1.0, abs=1e-6)
    assert out["aed_id@table"] == pytest.approx(0.0, abs=1e-6)


def test_cross_identity_source_and_duplicates() -> None:
    g = torch.Generator().manual_seed(1)
    table = torch.randn(7, 8, generator=g)
    backend = TableEmbeddings(table)
    metric = IdentityMetrics(backend=backend)
    pred, gt, source = frames_for([0, 1, 2]), frames_for([3, 4, 5]), frames_for([6])
    metric.update(pred, gt, "v", torch.tensor([0, 1, 2]), source=source)
    metric.update(pred[:1], gt[:1], "v", torch.tensor([0]), source=source)  # a padded repeat
    out = {k: float(v) for k, v in metric.compute().items()}
    e = backend.table
    assert out["csim_src@table"] == pytest.approx(float((e[0:3] @ e[6]).mean()), rel=1e-5)
    assert out["csim_src_detected@table"] == 1.0
    assert out["csim@table"] == pytest.approx(float((e[0:3] * e[3:6]).sum(1).mean()), rel=1e-5)
    assert backend.calls == 3 + 3 + 1 + 1 + 1 + 1  # one source embedding per batch, not per frame
    per_video = metric.per_video()
    assert list(per_video) == [video_key("v")]
    assert per_video[video_key("v")]["csim_src@table"] == pytest.approx(out["csim_src@table"], rel=1e-6)


def test_unavailable_backend_gives_nan_and_a_status(tmp_path) -> None:
    metric = IdentityMetrics("arcface", backend_kwargs={"weights": str(tmp_path / "missing.pth")})
    assert metric.status.startswith("unavailable") and "backbone.pth" in metric.status
    metric.update(torch.rand(1, 3, 16, 16), torch.rand(1, 3, 16, 16), "v", 0)
    out = metric.compute()
    assert set(out) == {"csim@arcface", "aed_id@arcface", "csim_detected@arcface", "csim_gt_missing@arcface"}
    assert all(torch.isnan(v) for v in out.values())


# ---------------------------------------------------------------------------------------------
# dlib on a real face


@pytest.fixture(scope="module")
def astronaut256() -> torch.Tensor:
    from skimage.data import astronaut

    image = torch.from_numpy(astronaut()).permute(2, 0, 1).float().div(255)[None]
    return F.interpolate(image, size=(256, 256), mode="bilinear", antialias=True, align_corners=False)


def test_dlib_csim_identity_mirror_and_no_face(astronaut256: torch.Tensor) -> None:
    x = astronaut256
    grey = torch.full_like(x, 0.5)
    metric = IdentityMetrics("dlib128")
    assert metric.status.startswith("ok")
    metric.update(torch.cat([x, x.flip(-1), grey]), torch.cat([x, x, x]), ["same", "mirror", "grey"], 0,
                  source=x)
    per_video = metric.per_video()
    out = {k: float(v) for k, v in metric.compute().items()}
    assert per_video[video_key("same")]["csim@dlib128"] == pytest.approx(1.0, abs=1e-5)
    assert per_video[video_key("same")]["aed_id@dlib128"] == pytest.approx(0.0, abs=1e-3)
    assert per_video[video_key("mirror")]["csim@dlib128"] > 0.9  # dlib gives ~0.99
    assert out["csim_detected@dlib128"] == pytest.approx(2 / 3)  # the grey frame: a counted miss
    assert out["csim_src@dlib128"] == pytest.approx(out["csim@dlib128"], abs=1e-5)  # source = target here
