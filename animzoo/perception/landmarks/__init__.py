"""Face landmark detector: stacked hourglass + DSNT, trained with supervision-by-registration.

    from animzoo.perception.landmarks import load_landmark_detector
    detector = load_landmark_detector()          # the SyntheticHeads 64 px model shipped in the package
    points = detector.detect(frames)             # B x 3 x H x W in [0, 1] -> B x 70 x 2 pixels
"""

from __future__ import annotations

import os
from typing import Any

from animzoo.perception.landmarks.torch_model import LandmarkDetector

__all__ = ["DEFAULT_NAME", "LandmarkDetector", "LandmarkDetectorModule", "load_landmark_detector"]

#: Named pretrained entry / folder of the shipped detector.
DEFAULT_NAME = "landmark_detector.synthetic64"


def __getattr__(name: str) -> Any:
    if name == "LandmarkDetectorModule":  # lazy: lightning is heavy to import
        from animzoo.perception.landmarks.lightning_model import LandmarkDetectorModule

        return LandmarkDetectorModule
    raise AttributeError(name)


def load_landmark_detector(path_or_name: str | os.PathLike | None = None, map_location: Any = "cpu") -> LandmarkDetector:
    """A trained :class:`LandmarkDetector` in eval mode.

    Args:
        path_or_name: None = the detector shipped in the package (``animzoo/pretrained/
            landmarks_synthetic64``); a registered pretrained name; a folder written by
            :func:`animzoo.hub.save_pretrained`; or a ``.ckpt`` of ``animzoo fit``.
        map_location: device of the returned module.

    Raises:
        animzoo.hub.PretrainedError: missing / corrupt files (the message names the file and the fix).
    """
    from animzoo.perception._loading import load_perception_module
    from animzoo.perception.landmarks.lightning_model import LandmarkDetectorModule

    module = load_perception_module(
        path_or_name, default_name=DEFAULT_NAME, expected=LandmarkDetectorModule, method="landmark_detector",
        map_location=map_location,
    )
    detector = module.detector.eval()
    detector.pretrained_config = getattr(module, "animzoo_config", {})
    return detector
