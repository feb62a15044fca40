"""Resume: a run stopped after N epochs and resumed from its last checkpoint continues exactly
like an unbroken run: same global step, optimiser and scheduler states, data order (including
the device-side augmentation) and the same losses of the next steps.

The runs stop at an epoch boundary: Lightning restarts a map-style dataloader from the start of
its epoch when a checkpoint from the middle of an epoch is resumed, so only epoch-boundary
checkpoints (the ones ``ModelCheckpoint`` writes by default, and ``last.ckpt``) resume the data
order exactly.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from animzoo.cli import main
from animzoo.data.synthetic import synthesize
from animzoo.methods.base import AnimationModule


class ResumeGAN(AnimationModule):
    """A tiny generator + discriminator that records the batches it trains on."""

    def __init__(self, channels: int = 4, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.generator = nn.Sequential(
            nn.Conv2d(6, channels, 3, padding=1), nn.ReLU(), nn.Conv2d(channels, 3, 3, padding=1)
        )
        self.discriminator = nn.Sequential(nn.Conv2d(3, channels, 4, stride=2, padding=1), nn.LeakyReLU(0.2),
                                           nn.Conv2d(channels, 1, 3, padding=1))
        self.seen: list[tuple[int, tuple[str, ...], tuple[int, ...], float]] = []

    def animate(self, batch: dict[str, Any]) -> dict[str, Any]:
        return {"prediction": torch.sigmoid(self.generator(torch.cat([batch["source"], batch["driving"]], 1)))}

    def generator_step(self, batch: dict[str, Any]) -> tuple[torch.Tensor, dict, dict]:
        # Order of the data and its augmentation (the pixel sum changes with the augmentation).
        self.seen.append((self.global_step, tuple(batch["video_id"]), tuple(batch["frame_index"].tolist()),
                          float(batch["driving"].sum())))
        out = self.animate(batch)
        rec = (out["prediction"] - batch["driving"]).abs().mean()
        adv = ((self.discriminator(out["prediction"]) - 1) ** 2).mean()
        return rec + 0.1 * adv, {"rec": rec, "adv": adv}, out

    def discriminator_step(self, batch: dict[str, Any], out: dict[str, Any]) -> tuple[torch.Tensor, dict]:
        real, fake = self.discriminator(batch["driving"]), self.discriminator(out["prediction"].detach())
        return ((real - 1) ** 2).mean() + (fake**2).mean(), {}

    def on_train_start(self) -> None:
        torch.save({k: v.clone() for k, v in self.state_dict().items()}, Path(self.trainer.default_root_dir) / "start.pt")

    def on_train_end(self) -> None:
        torch.save(self.seen, Path(self.trainer.default_root_dir) / "seen.pt")


CONFIG = """
model:
  class_path: {module}.ResumeGAN
  init_args:
    sample_every_n_steps: 0
    gradient_clip_val: 1.0
    scheduler:
      class_path: torch.optim.lr_scheduler.StepLR
      init_args: {{step_size: 1, gamma: 0.7}}
data:
  class_path: AnimationDataModule
  init_args:
    root: {root}
    batch_size: 2
    test_batch_size: 4
    chunk_size: 6
    num_repeats: 2
    seed: 3
    augment: {{flip_prob: 0.5, brightness: 0.1, contrast: 0.1}}
trainer:
  accelerator: cpu
  deterministic: true
  log_every_n_steps: 1
  limit_val_batches: 1
  num_sanity_val_steps: 0
  enable_progress_bar: false
  enable_model_summary: false
"""


def _run(tmp: Path, name: str, config: Path, epochs: int, *extra: str) -> Path:
    folder = tmp / name
    code = main(["fit", "--config", str(config), "--trainer.max_epochs", str(epochs),
                 "--trainer.default_root_dir", str(folder),
                 "--trainer.logger", "CSVLogger", "--trainer.logger.save_dir", str(folder), *extra])
    assert code == 0
    return folder


def _losses(folder: Path) -> dict[int, float]:
    with open(next(folder.glob("**/metrics.csv")), encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    return {int(r["step"]): float(r["train/loss_step"]) for r in rows if r.get("train/loss_step")}


def test_resume_continues_like_an_unbroken_run(tmp_path: Path) -> None:
    root = tmp_path / "data"
    synthesize(root, videos=8, frames=6, size=32, seed=0, clips_per_identity=2, test_fraction=0.5)
    config = tmp_path / "resume.yaml"
    config.write_text(CONFIG.format(module=__name__, root=root), encoding="utf-8")

    first = _run(tmp_path, "first", config, 2)  # N = 2 epochs = 8 steps
    last = next(first.glob("**/checkpoints/last.ckpt"))
    resumed = _run(tmp_path, "resumed", config, 3, "--ckpt_path", str(last))  # + M = 4 steps
    unbroken = _run(tmp_path, "unbroken", config, 3)

    a = torch.load(next(resumed.glob("**/checkpoints/last.ckpt")), weights_only=False)
    b = torch.load(next(unbroken.glob("**/checkpoints/last.ckpt")), weights_only=False)
    assert a["global_step"] == b["global_step"] == 12
    assert a["epoch"] == b["epoch"]
    for key, value in b["state_dict"].items():
        torch.testing.assert_close(a["state_dict"][key], value, rtol=0, atol=0, msg=key)
    assert len(a["optimizer_states"]) == 2
    for opt_a, opt_b in zip(a["optimizer_states"], b["optimizer_states"]):
        assert opt_a["param_groups"] == opt_b["param_groups"]
        for state_a, state_b in zip(opt_a["state"].values(), opt_b["state"].values()):
            for key in state_b:
                torch.testing.assert_close(state_a[key], state_b[key], rtol=0, atol=0)
    assert a["lr_schedulers"] == b["lr_schedulers"]
    assert a["lr_schedulers"][0]["last_epoch"] == 3
    assert a["optimizer_states"][0]["param_groups"][0]["lr"] == pytest.approx(2e-4 * 0.7**3)

    # Data order and augmentation of the resumed steps, and their losses.
    seen_resumed = torch.load(resumed / "seen.pt")
    seen_unbroken = torch.load(unbroken / "seen.pt")
    assert [s[0] for s in seen_resumed] == [8, 9, 10, 11]
    assert seen_resumed == seen_unbroken[8:]
    losses_resumed, losses_unbroken = _losses(resumed), _losses(unbroken)
    assert sorted(losses_resumed) == [8, 9, 10, 11]
    assert losses_resumed == {step: losses_unbroken[step] for step in losses_resumed}


def test_init_weights_fine_tunes_from_a_checkpoint_with_a_fresh_schedule(tmp_path: Path, capsys) -> None:
    root = tmp_path / "data"
    synthesize(root, videos=8, frames=6, size=32, seed=0, clips_per_identity=2, test_fraction=0.5)
    config = tmp_path / "resume.yaml"
    config.write_text(CONFIG.format(module=__name__, root=root), encoding="utf-8")
    first = _run(tmp_path, "first", config, 2)
    last = next(first.glob("**/checkpoints/last.ckpt"))
    trained = torch.load(last, weights_only=False)

    tuned = _run(tmp_path, "tuned", config, 1, "--model.init_args.init_weights", str(last))
    start = torch.load(tuned / "start.pt")
    for key, value in trained["state_dict"].items():  # training started from the checkpoint's weights ...
        torch.testing.assert_close(start[key], value, rtol=0, atol=0, msg=key)
    out = torch.load(next(tuned.glob("**/checkpoints/last.ckpt")), weights_only=False)
    assert out["global_step"] == 4 and out["epoch"] == 0  # ... as a new run: its own step count,
    assert out["lr_schedulers"][0]["last_epoch"] == 1  # schedule and learning rate
    assert out["optimizer_states"][0]["param_groups"][0]["lr"] == pytest.approx(2e-4 * 0.7)

    # Weights that do not fit, and a missing file: the error names the file and what differs.
    wide = _run(tmp_path, "wide", config, 1, "--model.init_args.channels", "8")
    wide_ckpt = next(wide.glob("**/checkpoints/last.ckpt"))
    capsys.readouterr()
    code = main(["fit", "--config", str(config), "--trainer.max_epochs", "1", "--model.init_args.init_weights",
                 str(wide_ckpt), "--trainer.default_root_dir", str(tmp_path / "bad"), "--trainer.logger", "false"])
    err = capsys.readouterr().err
    assert code == 2 and str(wide_ckpt) in err and "generator.0.weight" in err and "shape mismatch" in err
    code = main(["fit", "--config", str(config), "--trainer.max_epochs", "1", "--model.init_args.init_weights",
                 str(tmp_path / "nowhere.ckpt"), "--trainer.default_root_dir", str(tmp_path / "bad"), "--trainer.logger", "false"])
    assert code == 2 and "nowhere.ckpt: no such checkpoint file" in capsys.readouterr().err
