"""Sparse-to-dense through the real entry points: `animzoo fit` with the parsing prior on
SyntheticHeads (landmark and parsing sidecars), `animzoo test`, export, `animzoo animate` from a
landmark file; and the bad-input paths (no landmark sidecars, wrong count, NaN)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from animzoo import io as aio
from animzoo.cli import main
from animzoo.data.annotations import landmarks_path
from animzoo.data.synthetic import synthesize

RECIPE = Path(__file__).resolve().parents[2] / "recipes" / "sparse2dense" / "synthetic-64.yaml"
FRAMES = 6

# The synthetic recipe's model on 32 px data (the crops become 8 x 8), tiny and fast.
OVERRIDES = [
    "--data.synthetic", "null", "--data.batch_size", "2", "--data.test_batch_size", "2",
    "--data.chunk_size", "4", "--data.num_workers", "0", "--data.num_repeats", "1",
    "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false", "--trainer.log_every_n_steps", "1",
    "--trainer.max_time", "null", "--trainer.limit_val_batches", "1", "--trainer.check_val_every_n_epoch", "1",
    "--model.init_args.sample_every_n_steps", "0",
    "--model.init_args.discriminator", "{block_expansion: 16, max_features: 256, num_blocks: 3, sn: true}",
    "--model.init_args.test_metrics", "{l1: {}, akd: {backend: animzoo70}}",
]


def _csv(folder: Path) -> list[str]:
    return ["--trainer.logger", "CSVLogger", "--trainer.logger.save_dir", str(folder)]


@pytest.fixture(scope="module")
def data_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("s2d") / "data"
    synthesize(root, videos=8, frames=FRAMES, size=32, seed=0, clips_per_identity=2, test_fraction=0.5)
    return root


@pytest.fixture(scope="module")
def fitted(data_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("s2d-fit")
    # Trained with an L1-only test suite: `test` below asks for L1 + AKD on the command line.
    code = main(["fit", "--config", str(RECIPE), "--data.root", str(data_root), *OVERRIDES,
                 "--model.init_args.test_metrics", "{l1: {}}", "--trainer.max_steps", "4", *_csv(out)])
    assert code == 0
    return out


def test_fit_trains_with_the_parsing_prior(fitted: Path) -> None:
    (metrics,) = fitted.glob("**/metrics.csv")
    header = metrics.read_text().splitlines()[0].split(",")
    # The differentiable prior is trained and the paper's hard form reported, in training and validation.
    for column in ("train/parsing_step", "train/parsing_mismatch_step", "train/perceptual_step",
                   "train/gen_gan_step", "train/disc_gan_step", "val/l1", "val/parsing_mismatch"):
        assert column in header, column
    rows = [dict(zip(header, line.split(","))) for line in metrics.read_text().splitlines()[1:]]
    values = [float(r["train/parsing_mismatch_step"]) for r in rows if r.get("train/parsing_mismatch_step")]
    assert values and all(0.0 <= v <= 1.0 for v in values)
    assert list(fitted.glob("**/checkpoints/last.ckpt"))


def test_test_export_and_animate_from_a_landmark_file(fitted: Path, data_root: Path, tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    (ckpt,) = fitted.glob("**/checkpoints/last.ckpt")
    out = tmp_path / "test"
    assert main(["test", "--config", str(RECIPE), "--data.root", str(data_root), *OVERRIDES,
                 "--ckpt_path", str(ckpt), *_csv(out)]) == 0
    (report,) = out.glob("**/metrics.json")
    metrics = json.loads(report.read_text())["metrics"]
    # The command line's suite, not the checkpoint's (Lightning would restore the latter).
    assert 0 < metrics["test/l1"] < 1 and np.isfinite(metrics["test/akd@animzoo70"])

    from animzoo.hub import _main as hub_main

    exported = tmp_path / "pretrained"
    assert hub_main(["export", str(ckpt), str(exported), "--method", "sparse2dense"]) == 0
    video = min((data_root / "test").glob("*.mp4"))
    source = tmp_path / "source.png"
    aio.write_image(source, aio.read_video(video)[0])
    drive = tmp_path / "drive.npy"
    np.save(drive, np.load(landmarks_path(video)))  # another clip's landmarks, in its pixels
    result = tmp_path / "out.mp4"
    capsys.readouterr()
    code = main(["animate", "--pretrained", str(exported), "--source", str(source),
                 "--driving-landmarks", str(drive), "--output", str(result)])
    assert code == 0, capsys.readouterr().err
    frames = aio.read_video(result)
    assert frames.shape[0] == FRAMES and frames.shape[1:3] == (32, 32)


def test_fit_without_landmark_sidecars_names_the_annotate_command(data_root: Path, tmp_path: Path,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    bare = tmp_path / "bare"
    shutil.copytree(data_root, bare)
    for sidecar in bare.glob("**/*.landmarks.npy"):
        sidecar.unlink()
    capsys.readouterr()
    code = main(["fit", "--config", str(RECIPE), "--data.root", str(bare), *OVERRIDES,
                 "--trainer.max_steps", "1", *_csv(tmp_path / "logs")])
    err = capsys.readouterr().err
    assert code == 2
    assert "animzoo data annotate --landmarks" in err and ".landmarks.npy" in err and "Sparse2Dense" in err


@pytest.mark.parametrize("problem", ["count", "nan"])
def test_bad_landmark_sidecar_is_refused_naming_the_file(problem: str, data_root: Path, tmp_path: Path,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    broken = tmp_path / "broken"
    shutil.copytree(data_root, broken)
    sidecar = min((broken / "train").glob("*.landmarks.npy"))
    landmarks = np.load(sidecar)
    if problem == "count":
        np.save(sidecar, landmarks[:, :68])  # one video annotated by a 68-point detector
        expected = "68 landmarks"
    else:
        landmarks[2, 5] = np.nan
        np.save(sidecar, landmarks)
        expected = "NaN"
    capsys.readouterr()
    code = main(["fit", "--config", str(RECIPE), "--data.root", str(broken), *OVERRIDES,
                 "--data.landmark_count", "70",
                 "--data.augment.flip_prob", "0", "--trainer.max_steps", "8", *_csv(tmp_path / "logs")])
    message = capsys.readouterr().err
    assert code == 2  # a clear one-line error, not a traceback
    assert expected in message and sidecar.name in message
