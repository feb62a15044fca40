"""`animzoo leaderboard`: a shipped pretrained model and a recipe-only baseline, tested on one
data config with one metric suite; CSV, markdown, JSON and per-metric PNG charts."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from animzoo import io as aio
from animzoo.cli import main
from animzoo.data.synthetic import synthesize
from animzoo.errors import AnimzooInputError
from animzoo.leaderboard import parse_entry

RECIPES = Path(__file__).resolve().parents[2] / "recipes"


@pytest.fixture(scope="module")
def data_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("board") / "data"
    synthesize(root, videos=4, frames=6, size=64, seed=3, clips_per_identity=2, test_fraction=0.5)
    return root


def test_leaderboard_writes_every_file_with_the_same_suite(data_root: Path, tmp_path: Path,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    metrics = tmp_path / "metrics.yaml"
    metrics.write_text("model:\n  init_args:\n    test_metrics: {l1: {}, psnr: {}}\n", encoding="utf-8")
    out = tmp_path / "results"
    code = main([
        "leaderboard", "--name", "tiny", "--data", str(RECIPES / "data" / "synthetic-64.yaml"),
        "--data-root", str(data_root), "--metrics", str(metrics), "--output-dir", str(out),
        "--accelerator", "cpu",
        "--entry", "Monkey-Net=monkeynet.synthetic64",
        "--entry", f"SourceCopy={RECIPES / 'baselines' / 'source-copy.yaml'}",
    ])
    assert code == 0, capsys.readouterr().err

    rows = {r["model"]: r for r in csv.DictReader((out / "leaderboard-tiny.csv").open())}
    assert list(rows) == ["Monkey-Net", "SourceCopy"]
    # --metrics replaced the recipes' own suites: exactly l1 and psnr for both rows.
    assert set(rows["SourceCopy"]) == {"model", "test/l1", "test/psnr"}

    # SourceCopy's L1 is the reconstruction protocol computed by hand on the decoded test videos.
    errors = []
    for video in sorted((data_root / "test").glob("*.mp4")):
        frames = aio.read_video(video).astype(np.float64) / 255
        errors += [np.abs(frame - frames[0]).mean() for frame in frames]
    assert float(rows["SourceCopy"]["test/l1"]) == pytest.approx(np.mean(errors), rel=1e-4)
    assert 0 < float(rows["Monkey-Net"]["test/l1"]) != pytest.approx(float(rows["SourceCopy"]["test/l1"]))

    report = json.loads((out / "leaderboard-tiny.json").read_text())
    assert [e["name"] for e in report["entries"]] == ["Monkey-Net", "SourceCopy"]
    assert report["entries"][0]["results"]["test/l1"] == pytest.approx(float(rows["Monkey-Net"]["test/l1"]), rel=1e-5)
    table = (out / "leaderboard-tiny.md").read_text()
    assert "| model | l1 | psnr |" in table and "| SourceCopy |" in table
    for metric in ("l1", "psnr"):
        chart = Image.open(out / f"leaderboard-tiny-{metric}.png")
        assert chart.size[0] > 200 and chart.size[1] > 60
        # Two bars of different colours were drawn.
        colours = {c for _, c in chart.convert("RGB").getcolors(1 << 16)}
        assert {(52, 101, 164), (204, 102, 51)} <= colours


def test_entry_parsing_and_bad_entries(tmp_path: Path) -> None:
    entry = parse_entry("mine=recipes/monkeynet/synthetic-64.yaml@runs/x/last.ckpt")
    assert (entry.name, entry.source, entry.checkpoint) == (
        "mine", "recipes/monkeynet/synthetic-64.yaml", "runs/x/last.ckpt")
    assert parse_entry("m=monkeynet.synthetic64").checkpoint is None
    with pytest.raises(AnimzooInputError, match="NAME=SOURCE"):
        parse_entry("monkeynet.synthetic64")
    missing = tmp_path / "nope.yaml"
    assert main(["leaderboard", "--name", "x", "--data", str(missing), "--entry", "a=monkeynet.synthetic64",
                 "--output-dir", str(tmp_path)]) == 2


def test_chart_captions_say_which_way_is_better() -> None:
    from animzoo.leaderboard import _direction

    assert _direction("test/cross/fid@inception-pt") == "lower is better"
    assert _direction("test/akd@dlib68") == "lower is better"
    assert _direction("test/akd_detected@dlib68") == "higher is better"
    assert _direction("test/csim@dlib128") == "higher is better"
    assert _direction("test/fid_frames@inception-pt").startswith("a count")
    assert _direction("test/sms_gt@animzoo70").startswith("reference")
