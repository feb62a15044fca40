"""`animzoo fit` / `animzoo test` of the perception recipes, a few steps on a tiny dataset."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from animzoo.cli import main

RECIPES = Path(__file__).resolve().parents[3] / "recipes" / "perception"

pytestmark = pytest.mark.usefixtures("one_thread")


def run(recipe: str, root: Path, out: Path, *extra: str) -> None:
    args = [
        "--config", str(RECIPES / recipe), "--data.init_args.root", str(root),
        "--data.init_args.num_workers", "0", "--data.init_args.batch_size", "4",
        "--trainer.logger", "false", "--trainer.default_root_dir", str(out),
        "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false",
        "--trainer.limit_val_batches", "1", "--trainer.limit_test_batches", "2", *extra,
    ]
    assert main(["fit", *args, "--trainer.max_steps", "2", "--trainer.max_epochs", "1"]) == 0
    ckpt = out / "checkpoints" / "last.ckpt"
    assert ckpt.is_file()
    assert main(["test", *args, "--ckpt_path", str(ckpt)]) == 0


def test_landmark_recipe_fits_and_tests(unseen_heads: Path, tmp_path: Path) -> None:
    # registration_start_step 0: the SBR branch runs in the two steps too.
    run("landmarks-synthetic-64.yaml", unseen_heads, tmp_path, "--model.init_args.registration_start_step", "0")
    metrics = json.loads((tmp_path / "metrics.json").read_text())["metrics"]
    assert {"test/nme", "test/sms", "test/sms_gt"} <= set(metrics)
    assert metrics["test/nme"] > 0 and metrics["test/sms_gt"] > 0


def test_identity_recipe_fits_and_tests(unseen_heads: Path, tmp_path: Path) -> None:
    run("identity-synthetic-64.yaml", unseen_heads, tmp_path)
    metrics = json.loads((tmp_path / "metrics.json").read_text())["metrics"]
    assert {"test/cos_same", "test/cos_diff", "test/eer", "test/verification_acc"} <= set(metrics)
