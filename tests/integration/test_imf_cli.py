"""IMF through the real entry points: `animzoo fit` from the synthetic recipe (every loss term
logged), `animzoo test`, export to a pretrained folder, `animzoo animate` from it with a real
video, and the bad-input paths (frames of the wrong size for the model; relative motion)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from animzoo import io as aio
from animzoo.cli import main
from animzoo.data.synthetic import synthesize

RECIPE = Path(__file__).resolve().parents[2] / "recipes" / "imf" / "synthetic-64.yaml"
FRAMES = 6

# The synthetic recipe's layout (a full-resolution finest scale, the attention cap) on 32 px data, tiny.
MODEL = [
    "--model.init_args.frame_size", "32", "--model.init_args.token_dim", "8",
    "--model.init_args.dense_encoder", "{stem_channels: 4, channels: [8, 8, 16], num_levels: 4, num_res: 1}",
    "--model.init_args.token_encoder", "{block_expansion: 4, max_features: 16, mlp_dim: 16, mlp_layers: 1}",
    "--model.init_args.token_decoder", "{channels: [16, 8, 8, 4], convs_per_level: 2}",
    "--model.init_args.alignment", "{num_blocks: 1, num_heads: 2, mlp_dim: 16, max_attention_resolution: 8}",
    "--model.init_args.discriminator", "{scales: [1.0, 0.5], block_expansion: 4, max_features: 16, num_blocks: 2}",
]
OVERRIDES = [
    "--data.synthetic", "null", "--data.batch_size", "2", "--data.test_batch_size", "2",
    "--data.chunk_size", "4", "--data.num_workers", "0", "--data.num_repeats", "1",
    "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false", "--trainer.log_every_n_steps", "1",
    "--trainer.max_time", "null", "--trainer.limit_val_batches", "1", "--trainer.check_val_every_n_epoch", "1",
    "--model.init_args.sample_every_n_steps", "0",
]


def _csv(folder: Path) -> list[str]:
    return ["--trainer.logger", "CSVLogger", "--trainer.logger.save_dir", str(folder)]


@pytest.fixture(scope="module")
def data_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("imf") / "data"
    synthesize(root, videos=4, frames=FRAMES, size=32, seed=0, clips_per_identity=2, test_fraction=0.5)
    return root


@pytest.fixture(scope="module")
def fitted(data_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("imf-fit")
    code = main(["fit", "--config", str(RECIPE), "--data.root", str(data_root), *OVERRIDES, *MODEL,
                 "--model.init_args.test_metrics", "{l1: {}}", "--trainer.max_steps", "3", *_csv(out)])
    assert code == 0
    return out


def test_fit_logs_every_loss_term(fitted: Path) -> None:
    (metrics,) = fitted.glob("**/metrics.csv")
    header = metrics.read_text().splitlines()[0].split(",")
    for column in ("train/pixel_step", "train/perceptual_step", "train/gen_gan_step", "train/disc_gan_step", "val/l1"):
        assert column in header, column


def test_test_export_and_animate_a_video(fitted: Path, data_root: Path, tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    (ckpt,) = fitted.glob("**/checkpoints/last.ckpt")
    out = tmp_path / "test"
    assert main(["test", "--config", str(RECIPE), "--data.root", str(data_root), *OVERRIDES, *MODEL,
                 "--model.init_args.test_metrics", "{l1: {}, psnr: {}}", "--ckpt_path", str(ckpt), *_csv(out)]) == 0
    (report,) = out.glob("**/metrics.json")
    metrics = json.loads(report.read_text())["metrics"]
    assert 0 < metrics["test/l1"] < 1 and np.isfinite(metrics["test/psnr"])

    from animzoo.hub import _main as hub_main
    from animzoo.hub import from_pretrained

    exported = tmp_path / "pretrained"
    assert hub_main(["export", str(ckpt), str(exported), "--method", "imf"]) == 0
    model = from_pretrained(exported)
    assert type(model).__name__ == "IMF" and model.alignment.max_attention_resolution == 8
    assert json.loads((exported / "config.json").read_text())["image_size"] == 32

    video = min((data_root / "test").glob("*.mp4"))
    source = tmp_path / "source.png"
    aio.write_image(source, aio.read_video(video)[-1])
    result = tmp_path / "out.mp4"
    capsys.readouterr()
    assert main(["animate", "--pretrained", str(exported), "--source", str(source), "--driving", str(video),
                 "--output", str(result)]) == 0, capsys.readouterr().err
    frames = aio.read_video(result)
    assert frames.shape[0] == FRAMES and frames.shape[1:3] == (32, 32)

    capsys.readouterr()  # IMF's motion is a token, not keypoints: relative motion is refused clearly
    assert main(["animate", "--pretrained", str(exported), "--source", str(source), "--driving", str(video),
                 "--output", str(tmp_path / "rel.mp4"), "--relative"]) == 2
    assert "relative" in capsys.readouterr().err


def test_fit_on_frames_of_another_size_names_both_sizes_and_the_fix(data_root: Path, tmp_path: Path,
                                                                    capsys: pytest.CaptureFixture[str]) -> None:
    capsys.readouterr()
    code = main(["fit", "--config", str(RECIPE), "--data.root", str(data_root), *OVERRIDES,
                 "--model.init_args.frame_size", "64", "--trainer.max_steps", "1", *_csv(tmp_path / "logs")])
    err = capsys.readouterr().err
    assert code == 2
    assert "32x32" in err and "64x64" in err and "frame_size" in err
