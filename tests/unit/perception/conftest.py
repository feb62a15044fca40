"""Fixtures of the perception tests: a tiny SyntheticHeads dataset of identities never trained on."""

from __future__ import annotations

from pathlib import Path

import pytest

from animzoo.data.synthetic import synthesize

#: Seed of the tiny test datasets: the shipped models were trained on seeds 0 (landmarks) and 1
#: (identity), whose identities come from other random streams, so these faces are unseen.
UNSEEN_SEED = 12345


@pytest.fixture(scope="session")
def unseen_heads(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """4 identities x 2 clips of 12 frames at 64 px (train/: 3 identities, test/: 1)."""
    root = tmp_path_factory.mktemp("perception") / "heads"
    synthesize(root, videos=8, frames=12, size=64, seed=UNSEEN_SEED, clips_per_identity=2, test_fraction=0.25)
    return root
