"""Session-wide test settings: CPU-sized thread count, no network, no wandb prompts."""

from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")


@pytest.fixture(autouse=True, scope="session")
def _limit_threads() -> None:
    # CI and the developers' machines have 2 cores; more threads only thrash.
    torch.set_num_threads(min(2, os.cpu_count() or 1))
