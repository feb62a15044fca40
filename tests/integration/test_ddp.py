"""Real multi-process DDP (gloo, CPU) through the `animzoo` command, as a user would launch it.

Lightning's DDP launcher re-runs the command for rank 1, so this covers the CLI, the
EpochSampler's sharding, gradient sync and the metrics' cross-rank de-duplication.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from animzoo.data.synthetic import synthesize

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="gloo DDP test runs on POSIX")

DATA = """
data:
  class_path: AnimationDataModule
  init_args: {{root: {root}, batch_size: 2, test_batch_size: 1, chunk_size: 3,
              augment: {{flip_prob: 0.0}}}}
trainer:
  accelerator: cpu
  enable_progress_bar: false
  enable_model_summary: false
  num_sanity_val_steps: 0
  log_every_n_steps: 1
"""

TINY_MONKEYNET = """
model:
  class_path: MonkeyNet
  init_args:
    num_kp: 2
    keypoint_detector: {block_expansion: 4, max_features: 16, num_blocks: 2, scale_factor: 1.0}
    dense_motion: {block_expansion: 4, max_features: 16, num_blocks: 2, scale_factor: 1.0}
    generator: {block_expansion: 4, max_features: 16, num_blocks: 2, num_refinement_blocks: 1}
    discriminator: {block_expansion: 4, max_features: 16, num_blocks: 2}
    loss_weights: {reconstruction: [10.0, 10.0, 1.0]}
    sample_every_n_steps: 0
"""


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # 5 test videos of 7 frames in chunks of 3: 15 chunks, an odd number, so the
    # validation sampler pads one rank with a repeated chunk that must not be counted twice.
    root = tmp_path_factory.mktemp("ddp") / "data"
    synthesize(root, videos=10, frames=7, size=32, seed=2, clips_per_identity=2, test_fraction=0.5)
    return root


def _animzoo(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "offline"}
    result = subprocess.run(
        [sys.executable, "-m", "animzoo", *args], cwd=cwd, env=env, capture_output=True,
        text=True, timeout=600,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


def _validate_metrics(config: Path, out: Path, devices: int) -> dict[str, float]:
    _animzoo(
        "validate", "--config", str(config), "--trainer.devices", str(devices),
        "--trainer.strategy", "ddp" if devices > 1 else "auto",
        "--trainer.logger", "CSVLogger", "--trainer.logger.save_dir", str(out), cwd=out.parent,
    )
    (report,) = out.glob("**/metrics.json")
    return json.loads(report.read_text())["metrics"]


def test_ddp_metrics_equal_single_process(root: Path, tmp_path: Path) -> None:
    config = tmp_path / "copy.yaml"
    # FID too: its per-frame features are de-duplicated across ranks like the pixel metrics.
    config.write_text("model:\n  class_path: SourceCopy\n  init_args: {test_metrics: [l1, psnr, ssim, fid]}\n"
                      + DATA.format(root=root), encoding="utf-8")
    single = _validate_metrics(config, tmp_path / "one", devices=1)
    double = _validate_metrics(config, tmp_path / "two", devices=2)
    assert set(single) == set(double) == {"val/l1", "val/psnr", "val/ssim", "val/fid@inception-pt",
                                          "val/fid_frames@inception-pt"}
    for name, value in single.items():
        assert double[name] == pytest.approx(value, rel=1e-5), name


def test_ddp_fit_through_the_cli_saves_a_finite_checkpoint(root: Path, tmp_path: Path) -> None:
    config = tmp_path / "monkeynet.yaml"
    config.write_text(TINY_MONKEYNET + DATA.format(root=root), encoding="utf-8")
    out = tmp_path / "fit"
    _animzoo(
        # GAN methods alternate generator and discriminator steps inside one training_step, so
        # each backward leaves the other network's parameters unused: DDP must be told.
        "fit", "--config", str(config), "--trainer.devices", "2",
        "--trainer.strategy", "ddp_find_unused_parameters_true",
        "--trainer.max_steps", "2", "--trainer.limit_val_batches", "0",
        "--trainer.logger", "CSVLogger", "--trainer.logger.save_dir", str(out), cwd=tmp_path,
    )
    (ckpt,) = out.glob("**/checkpoints/last.ckpt")
    state = torch.load(ckpt, map_location="cpu", weights_only=False)
    assert state["global_step"] == 2
    assert all(torch.isfinite(t).all() for t in state["state_dict"].values() if t.is_floating_point())
