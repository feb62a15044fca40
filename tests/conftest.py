"""Session-wide test settings: CPU-sized thread count, no network, no wandb prompts."""

from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")
# rich folds console lines at the terminal's width (80 columns without one), so a message that
# names a tmp path broke across lines depending on the path's length: one wide width for all tests.
os.environ["COLUMNS"] = "400"


@pytest.fixture(autouse=True, scope="session")
def _limit_threads() -> None:
    # CI and the developers' machines have 2 cores; more threads only thrash.
    torch.set_num_threads(min(2, os.cpu_count() or 1))


@pytest.fixture
def one_thread():
    """Run a test on one torch thread: small tensors gain nothing from more, and on shared
    cores extra threads spin. Use with ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
