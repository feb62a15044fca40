"""The perception models shipped in the package load with no download and work on unseen heads."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from animzoo import hub
from animzoo.io import frames_to_tensor, read_video
from animzoo.perception.identity import IdentityEmbedder, load_identity_embedder
from animzoo.perception.landmarks import LandmarkDetector, load_landmark_detector
from animzoo.perception.landmarks.evaluation import nme

pytestmark = pytest.mark.usefixtures("one_thread")


def clips(root: Path) -> list[Path]:
    return sorted(p for p in root.glob("*/*.mp4"))


def test_shipped_landmark_detector_finds_landmarks_on_unseen_heads(unseen_heads: Path) -> None:
    detector = load_landmark_detector()
    assert isinstance(detector, LandmarkDetector) and not detector.training
    errors = []
    for video in clips(unseen_heads)[::2]:  # one clip of each of the 4 identities
        frames = frames_to_tensor(read_video(video))
        truth = torch.from_numpy(np.load(str(video) + ".landmarks.npy"))
        with torch.no_grad():
            points = detector.detect(frames)
        assert points.shape == truth.shape and points.dtype == torch.float32
        errors.append(nme(points, truth))
    # Measured: test NME 0.036 (README), 0.024-0.048 per clip on these heads; the bound leaves room
    # for these other heads and for CPU numerics.
    assert torch.cat(errors).mean() < 0.1


def test_shipped_identity_embedder_separates_unseen_identities(unseen_heads: Path) -> None:
    embedder = load_identity_embedder()
    assert isinstance(embedder, IdentityEmbedder) and not embedder.training
    videos = clips(unseen_heads)  # id0000#clip00, id0000#clip01, id0001#clip00, ...
    with torch.no_grad():
        # Mean embedding of 4 frames of each clip.
        means = torch.stack([embedder(frames_to_tensor(read_video(v))[::3]).mean(0) for v in videos])
    means = torch.nn.functional.normalize(means, dim=-1)
    identity = torch.tensor([i // 2 for i in range(len(videos))])
    cosine = means @ means.T
    other_clip = ~torch.eye(len(videos), dtype=torch.bool)
    same = cosine[(identity[:, None] == identity[None, :]) & other_clip].mean()
    different = cosine[identity[:, None] != identity[None, :]].mean()
    assert same > different + 0.2, (same, different)


def test_shipped_checkpoints_are_small_and_indexed() -> None:
    for folder in ("landmarks_synthetic64", "identity_synthetic64"):
        weights = hub.PRETRAINED_DIR / folder / hub.WEIGHTS_NAME
        assert weights.is_file() and weights.stat().st_size < 8 * 2**20


def test_missing_shipped_checkpoint_names_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(hub, "PRETRAINED_DIR", tmp_path)
    with pytest.raises(hub.PretrainedNotFoundError, match=r"landmarks_synthetic64.*model\.safetensors"):
        load_landmark_detector()
    with pytest.raises(hub.PretrainedNotFoundError, match=r"identity_synthetic64.*model\.safetensors"):
        load_identity_embedder()
    with pytest.raises(hub.PretrainedError, match="nowhere"):
        load_landmark_detector(tmp_path / "nowhere")


def test_loaders_refuse_a_model_of_the_other_kind() -> None:
    from animzoo.hub import PretrainedError
    from animzoo.perception.identity import load_identity_embedder
    from animzoo.perception.landmarks import load_landmark_detector

    with pytest.raises(PretrainedError, match="identity_embedder.synthetic64: holds a IdentityEmbedderModule, "
                                              "not a landmark_detector"):
        load_landmark_detector("identity_embedder.synthetic64")
    with pytest.raises(PretrainedError, match="not a identity_embedder"):
        load_identity_embedder("landmark_detector.synthetic64")
