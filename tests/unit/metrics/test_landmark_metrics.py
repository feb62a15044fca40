"""AKD / SMS (LandmarkMetrics): exact formulas on a stand-in backend, then dlib on a real face."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from animzoo.metrics.keypoints import LandmarkMetrics, akd_per_frame, sms_of_video
from animzoo.metrics.pixel import video_key

pytestmark = pytest.mark.usefixtures("one_thread")


class TableLandmarks:
    """A LandmarkBackend stand-in: frame ``i`` carries the id ``i`` in pixel (0, 0) of channel 0
    (value ``i / 1000``) and "detects" ``table[i]`` (``K x 2``, NaN rows = no face)."""

    name = "table"
    status = "ok: test table"
    available = True

    def __init__(self, table: torch.Tensor) -> None:
        self.table = table.float()
        self.num_landmarks = table.shape[1]

    def detect(self, frames: torch.Tensor) -> torch.Tensor:
        ids = (frames[:, 0, 0, 0] * 1000).round().long()
        return self.table[ids].to(frames.device)


def frames_for(ids: list[int] | torch.Tensor, size: int = 8) -> torch.Tensor:
    ids = torch.as_tensor(ids)
    out = torch.zeros(len(ids), 3, size, size)
    out[:, 0, 0, 0] = ids.float() / 1000
    return out


def run(table: torch.Tensor, pred_ids, gt_ids, videos, index, size: int = 8, **kwargs) -> dict[str, float]:
    metric = LandmarkMetrics(backend=TableLandmarks(table), **kwargs)
    metric.update(frames_for(pred_ids, size), frames_for(gt_ids, size), videos, torch.as_tensor(index))
    return {k: float(v) for k, v in metric.compute().items()}


def test_akd_zero_on_identical_and_k_for_a_shift() -> None:
    g = torch.Generator().manual_seed(0)
    base = torch.rand(4, 68, 2, generator=g) * 200
    table = torch.cat([base, base + 3.0, base + torch.tensor([1.0, 5.0])])  # ids 0-3, 4-7, 8-11
    same = run(table, [0, 1, 2, 3], [0, 1, 2, 3], "v", [0, 1, 2, 3])
    assert same["akd@table"] == 0.0
    assert same["akd_detected@table"] == 1.0
    shifted = run(table, [4, 5, 6, 7], [0, 1, 2, 3], "v", [0, 1, 2, 3])
    assert shifted["akd@table"] == pytest.approx(3.0, abs=1e-4)
    # Mean absolute coordinate difference (FOMM), not Euclidean: (1 + 5) / 2 = 3, not sqrt(26).
    mixed = run(table, [8, 9, 10, 11], [0, 1, 2, 3], "v", [0, 1, 2, 3])
    assert mixed["akd@table"] == pytest.approx(3.0, abs=1e-4)
    assert akd_per_frame(table[8:9], table[0:1]).item() == pytest.approx(3.0, abs=1e-4)


def test_detection_rate_and_missing_ground_truth_are_counted() -> None:
    k = 5
    gt = torch.zeros(10, k, 2)
    pred = gt.clone() + torch.arange(10.0).view(10, 1, 1)  # frame t is off by t pixels
    gt[[0, 1]] = float("nan")  # no ground-truth face: excluded from AKD and the rate
    pred[[2, 3, 4]] = float("nan")  # prediction undetected: counted as a miss
    pred[1] = float("nan")
    table = torch.cat([pred, gt])
    out = run(table, list(range(10)), list(range(10, 20)), "v", list(range(10)))
    assert out["akd_detected@table"] == pytest.approx(5 / 8)
    assert out["akd_gt_missing@table"] == 2.0
    assert out["akd@table"] == pytest.approx((5 + 6 + 7 + 8 + 9) / 5)


def test_sms_linear_is_zero_and_zigzag_is_known() -> None:
    k, a, t = 7, 1.5, 9
    g = torch.Generator().manual_seed(1)
    start, velocity = torch.rand(k, 2, generator=g) * 50, torch.rand(k, 2, generator=g) * 3
    linear = start + velocity * torch.arange(t).view(t, 1, 1)
    sign = torch.tensor([(-1.0) ** i for i in range(t)]).view(t, 1, 1)
    zigzag = start + a * sign
    value, count = sms_of_video(torch.arange(t), linear)
    assert value == pytest.approx(0.0, abs=1e-4) and count == t - 2  # float32 inputs
    # |(-a + -a) / 2 - a| = 2a per coordinate, summed (L1) over K x 2 coordinates
    value, _ = sms_of_video(torch.arange(t), zigzag)
    assert value == pytest.approx(2 * a * k * 2)
    # Through the metric: sms on the prediction, sms_gt on the ground truth.
    table = torch.cat([zigzag, linear])
    out = run(table, list(range(t)), list(range(t, 2 * t)), "v", list(range(t)))
    assert out["sms@table"] == pytest.approx(2 * a * k * 2, rel=1e-5)
    assert out["sms_gt@table"] == pytest.approx(0.0, abs=1e-4)


def test_sms_skips_gaps_and_undetected_frames_and_averages_per_video() -> None:
    k, a = 3, 1.0
    zig = torch.tensor([(-1.0) ** i for i in range(6)]).view(6, 1, 1) * a * torch.ones(6, k, 2)
    # Frame indices with a gap: 0 1 2 | 5 6 7 -> triples (0,1,2) and (5,6,7) only.
    value, count = sms_of_video(torch.tensor([0, 1, 2, 5, 6, 7]), zig)
    assert count == 2 and value == pytest.approx(2 * a * k * 2)
    # An undetected middle frame removes the three triples that use it.
    holed = zig.clone()
    holed[2] = float("nan")
    value, count = sms_of_video(torch.arange(6), holed)
    assert count == 1 and value == pytest.approx(2 * a * k * 2)
    assert math.isnan(sms_of_video(torch.arange(2), zig[:2])[0])
    # Per-video mean first, then the mean over videos: a long linear video (SMS 0 over 8 triples)
    # and a short zigzag one (1 triple) give (0 + 12) / 2, not 12 / 9.
    lin = torch.arange(10.0).view(10, 1, 1) * torch.ones(10, k, 2)
    table = torch.cat([lin, zig[:3]])
    ids = list(range(13))
    out = run(table, ids, ids, ["long"] * 10 + ["short"] * 3, list(range(10)) + [0, 1, 2])
    assert out["sms@table"] == pytest.approx((0 + 2 * a * k * 2) / 2)


def test_eval_size_rescales_to_the_evaluation_resolution() -> None:
    base = torch.rand(2, 4, 2) * 60
    table = torch.cat([base, base + 1.0])
    native = run(table, [2, 3], [0, 1], "v", [0, 1], size=64)
    at256 = run(table, [2, 3], [0, 1], "v", [0, 1], size=64, eval_size=256)
    assert native["akd@table"] == pytest.approx(1.0, abs=1e-5)
    assert at256["akd@table"] == pytest.approx(255 / 63, abs=1e-4)  # align_corners=True scaling


def test_duplicates_are_counted_once_and_per_video() -> None:
    g = torch.Generator().manual_seed(2)
    table = torch.rand(12, 5, 2, generator=g) * 30
    pred, gt = frames_for(range(6)), frames_for(range(6, 12))
    videos, index = ["a", "a", "a", "b", "b", "b"], torch.tensor([0, 1, 2, 0, 1, 2])
    once = LandmarkMetrics(backend=TableLandmarks(table))
    once.update(pred, gt, videos, index)
    twice = LandmarkMetrics(backend=TableLandmarks(table))
    twice.update(pred[:4], gt[:4], videos[:4], index[:4])
    twice.update(pred[1:], gt[1:], videos[1:], index[1:])
    twice.update(pred[:1], gt[:1], videos[:1], index[:1])
    a, b = once.compute(), twice.compute()
    assert {k: float(v) for k, v in a.items()} == pytest.approx({k: float(v) for k, v in b.items()}, nan_ok=True)
    per_video = twice.per_video()
    assert set(per_video) == {video_key("a"), video_key("b")}
    expected_a = akd_per_frame(table[6:9], table[0:3]).mean().item()
    assert per_video[video_key("a")]["akd@table"] == pytest.approx(expected_a, rel=1e-5)
    assert set(per_video[video_key("a")]) == set(once.output_names)


def test_unavailable_backend_gives_nan_and_a_status(monkeypatch: pytest.MonkeyPatch) -> None:
    from animzoo.metrics import backends

    monkeypatch.setattr(backends, "_has_module", lambda name: False)  # as if dlib were not installed
    metric = LandmarkMetrics("dlib68")
    assert metric.status.startswith("unavailable") and "pip install" in metric.status
    metric.update(torch.rand(2, 3, 16, 16), torch.rand(2, 3, 16, 16), "v", [0, 1])  # no-op
    out = metric.compute()
    assert set(out) == {"akd@dlib68", "akd_detected@dlib68", "akd_gt_missing@dlib68", "sms@dlib68",
                        "sms_gt@dlib68"}
    assert all(torch.isnan(v) for v in out.values())
    assert metric.per_video() == {}


# ---------------------------------------------------------------------------------------------
# dlib on a real face


@pytest.fixture(scope="module")
def astronaut256() -> torch.Tensor:
    from skimage.data import astronaut

    image = torch.from_numpy(astronaut()).permute(2, 0, 1).float().div(255)[None]
    return F.interpolate(image, size=(256, 256), mode="bilinear", antialias=True, align_corners=False)


def test_dlib_akd_identity_shift_and_no_face(astronaut256: torch.Tensor) -> None:
    grey = torch.full_like(astronaut256, 0.5)
    shifted = torch.roll(astronaut256, shifts=(4, 4), dims=(2, 3))  # 4 px down and right
    metric = LandmarkMetrics("dlib68")
    assert metric.status.startswith("ok")
    metric.update(astronaut256, astronaut256, "same", 0)
    out = {k: float(v) for k, v in metric.compute().items()}
    assert out["akd@dlib68"] == 0.0 and out["akd_detected@dlib68"] == 1.0

    metric = LandmarkMetrics("dlib68")
    metric.update(torch.cat([shifted, grey]), torch.cat([astronaut256, astronaut256]), "v", [0, 1])
    out = {k: float(v) for k, v in metric.compute().items()}
    assert out["akd@dlib68"] == pytest.approx(4.0, abs=0.75)  # the landmarks move with the image
    assert out["akd_detected@dlib68"] == 0.5  # the grey frame is a counted miss
    assert out["akd_gt_missing@dlib68"] == 0.0
