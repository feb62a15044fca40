"""`animzoo data annotate --landmarks BACKEND DIR` through the CLI entry point."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from animzoo.cli import main
from animzoo.data.annotate import dataset_videos
from animzoo.data.annotations import landmarks_path
from animzoo.metrics import backends

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def bare_heads(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """SyntheticHeads (4 videos of 6 frames at 64 px) without its landmark sidecars."""
    from animzoo.data.synthetic import synthesize

    root = tmp_path_factory.mktemp("cli-annotate") / "heads"
    synthesize(root, videos=4, frames=6, size=64, seed=4, clips_per_identity=2, test_fraction=0.5)
    for sidecar in root.glob("*/*.landmarks.npy"):
        sidecar.unlink()
    return root


@pytest.fixture
def heads(bare_heads: Path, tmp_path: Path) -> Path:
    shutil.copytree(bare_heads, tmp_path / "heads")
    return tmp_path / "heads"


class _Blind:
    """A landmark backend that never finds a face."""

    name, num_landmarks, available, status = "blind", 5, True, "ok: finds nothing"

    def detect(self, frames: torch.Tensor) -> torch.Tensor:
        return torch.full((frames.shape[0], 5, 2), float("nan"))


class _Missing(_Blind):
    name, available = "missing", False
    status = "unavailable: the missing package is not installed - pip install missing-package"


def test_annotate_writes_sidecars_a_report_and_reruns_cheaply(
    heads: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    videos = sorted(heads.glob("*/*.mp4"))
    corrupt = heads / "train" / "zz#corrupt.mp4"
    corrupt.write_bytes(b"\x00\x00\x00\x18ftypmp42" + b"garbage" * 100)

    assert main(["data", "annotate", "--landmarks", "animzoo70", str(heads), "--device", "cpu",
                 "--batch-size", "4"]) == 1
    captured = capsys.readouterr()
    assert "1 video(s) failed" in captured.err and str(corrupt) in captured.err
    for video in videos:
        assert np.load(landmarks_path(video)).shape == (6, 70, 2)
        assert video.name in captured.out
    assert not landmarks_path(corrupt).exists()

    report_path = heads / "annotate-landmarks-animzoo70.json"
    report = json.loads(report_path.read_text())
    assert report["backend"] == "animzoo70" and report["totals"]["written"] == 4
    assert report["totals"]["failed"] == 1
    rows = {Path(r["video"]).name: r for r in report["videos"]}
    assert rows[corrupt.name]["status"].startswith(f"failed: {corrupt}")
    assert all(rows[v.name]["detection_rate"] == 1.0 and rows[v.name]["sms_px"] > 0 for v in videos)
    # The report in the root is no video: the listing, the datamodule and inspect ignore it.
    corrupt.unlink()
    assert sorted(v.path for v in dataset_videos(heads)[0]) == videos
    assert main(["data", "inspect", str(heads)]) == 0
    capsys.readouterr()

    before = {v: landmarks_path(v).read_bytes() for v in videos}
    assert main(["data", "annotate", "--landmarks", "animzoo70", str(heads), "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "4 already annotated" in out and "0 written" in out
    assert {v: landmarks_path(v).read_bytes() for v in videos} == before


def test_annotate_report_option_and_failures(
    heads: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(backends._LANDMARKS, "blind", _Blind)
    target = tmp_path / "reports" / "blind.json"
    assert main(["data", "annotate", "--landmarks", "blind", str(heads), "--report", str(target)]) == 1
    err = capsys.readouterr().err
    assert "4 video(s) failed" in err and "no face detected in any of 6 frames" in err
    assert json.loads(target.read_text())["totals"]["failed"] == 4
    assert not list(heads.glob("*/*.landmarks.npy")) and not (heads / "annotate-landmarks-blind.json").exists()


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--landmarks", "nope", "{root}"], "available: dlib68, mediapipe478, fan68, animzoo70"),
        (["--landmarks", "missing", "{root}"], "pip install missing-package"),
        (["--landmarks", "animzoo70", "{root}/nothing-here"], "dataset root not found"),
        (["--landmarks", "animzoo70", "{root}", "--batch-size", "0"], "batch_size must be >= 1"),
    ],
)
def test_annotate_bad_arguments_exit_2_without_writing(
    argv: list[str], message: str, heads: Path, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(backends._LANDMARKS, "missing", _Missing)
    before = sorted(heads.rglob("*"))
    assert main(["data", "annotate", *(a.format(root=heads) for a in argv)]) == 2
    assert message in capsys.readouterr().err
    assert sorted(heads.rglob("*")) == before
