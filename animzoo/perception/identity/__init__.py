"""Identity embedder: a small timm backbone trained with the ArcFace loss on SyntheticHeads identities.

    from animzoo.perception.identity import load_identity_embedder
    embedder = load_identity_embedder()      # the SyntheticHeads 64 px model shipped in the package
    e = embedder(frames)                     # B x 3 x H x W in [0, 1] -> B x 128, unit norm
"""

from __future__ import annotations

import os
from typing import Any

from animzoo.perception.identity.torch_model import (
    ArcFaceHead,
    IdentityEmbedder,
    arcface_logits,
)

__all__ = ["DEFAULT_NAME", "ArcFaceHead", "IdentityEmbedder", "IdentityEmbedderModule", "arcface_logits",
           "load_identity_embedder"]

DEFAULT_NAME = "identity_embedder.synthetic64"


def __getattr__(name: str) -> Any:
    if name == "IdentityEmbedderModule":  # lazy: lightning is heavy to import
        from animzoo.perception.identity.lightning_model import IdentityEmbedderModule

        return IdentityEmbedderModule
    raise AttributeError(name)


def load_identity_embedder(path_or_name: str | os.PathLike | None = None, map_location: Any = "cpu") -> IdentityEmbedder:
    """A trained :class:`IdentityEmbedder` in eval mode (the ArcFace head is not part of it).

    Args:
        path_or_name: None = the embedder shipped in the package (``animzoo/pretrained/
            identity_synthetic64``); a registered pretrained name; a folder written by
            :func:`animzoo.hub.save_pretrained`; or a ``.ckpt`` of ``animzoo fit``.
        map_location: device of the returned module.

    Raises:
        animzoo.hub.PretrainedError: missing / corrupt files (the message names the file and the fix).
    """
    from animzoo.perception._loading import load_perception_module
    from animzoo.perception.identity.lightning_model import IdentityEmbedderModule

    module = load_perception_module(
        path_or_name, default_name=DEFAULT_NAME, expected=IdentityEmbedderModule, method="identity_embedder",
        map_location=map_location,
    )
    embedder = module.embedder.eval()
    embedder.pretrained_config = getattr(module, "animzoo_config", {})
    return embedder
