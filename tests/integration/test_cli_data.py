"""`animzoo data synth` and `animzoo data inspect` through the real entry points."""

from __future__ import annotations

import subprocess
import sys
from importlib.metadata import entry_points
from pathlib import Path

import numpy as np
import pytest

from animzoo.cli import main


def test_console_script_is_registered() -> None:
    scripts = {ep.name: ep.value for ep in entry_points(group="console_scripts")}
    assert scripts.get("animzoo") == "animzoo.cli:main"


def test_python_dash_m_help_lists_commands() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "animzoo", "data", "synth", "--help"],
        capture_output=True, text=True, check=True,
    )
    assert "--videos" in result.stdout and "examples:" in result.stdout


@pytest.fixture(scope="module")
def synth_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("synth") / "tiny"
    code = main(["data", "synth", "--out", str(root), "--videos", "8", "--frames", "6",
                 "--size", "32", "--seed", "3", "--clips-per-identity", "2"])
    assert code == 0
    return root


def test_synth_writes_the_layout_and_inspect_passes(
    synth_root: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    videos = sorted(synth_root.glob("*/*.mp4"))
    assert len(videos) == 8
    assert {v.parent.name for v in videos} == {"train", "test"}
    for video in videos:
        assert "#" in video.name
        landmarks = np.load(str(video) + ".landmarks.npy")
        assert landmarks.shape == (6, 70, 2)
        assert Path(str(video) + ".mesh.npz").is_file()
    assert (synth_root / "pairs.csv").is_file()

    capsys.readouterr()
    assert main(["data", "inspect", str(synth_root)]) == 0
    out = capsys.readouterr().out
    assert "no problems found" in out


def test_synth_refuses_a_non_empty_folder(synth_root: Path) -> None:
    code = main(["data", "synth", "--out", str(synth_root), "--videos", "2", "--frames", "2",
                 "--size", "16"])
    assert code == 2
    # nothing already written was touched
    assert len(sorted(synth_root.glob("*/*.mp4"))) == 8


def test_inspect_reports_every_problem_with_its_file(
    synth_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(synth_root, broken)
    train_videos = sorted((broken / "train").glob("*.mp4"))
    corrupt, short_sidecar, nan_sidecar = train_videos[:3]
    corrupt.write_bytes(b"\x00\x00\x00\x18ftypmp42" + b"garbage" * 100)
    landmarks = np.load(str(short_sidecar) + ".landmarks.npy")
    np.save(str(short_sidecar) + ".landmarks.npy", landmarks[:-1])
    landmarks = np.load(str(nan_sidecar) + ".landmarks.npy")
    landmarks[2, 5] = np.nan
    np.save(str(nan_sidecar) + ".landmarks.npy", landmarks)

    capsys.readouterr()
    assert main(["data", "inspect", str(broken)]) == 1
    out = capsys.readouterr().out
    for path in (corrupt, short_sidecar, nan_sidecar):
        assert path.name in out
    assert "3 problem" in out


def test_help_does_not_import_torch() -> None:
    # `animzoo --help` and `animzoo data inspect` must start instantly, not after a torch import.
    code = "import sys, animzoo.cli as c; c._build_parser(); print('torch' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"
