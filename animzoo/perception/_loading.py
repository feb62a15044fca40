"""Shared loader of the perception models: a shipped name, a pretrained folder or a ``.ckpt``."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from torch import nn

__all__ = ["load_perception_module"]


def load_perception_module(
    path_or_name: str | os.PathLike | None, *, default_name: str, default_folder: str, recipe: str,
    method: str, map_location: Any = "cpu",
) -> nn.Module:
    """The LightningModule of a perception model, in eval mode.

    ``None`` loads the checkpoint shipped in the package: the named entry ``default_name`` of
    :data:`animzoo.hub.PRETRAINED` when it is registered (sha256 checked against ``index.json``),
    else the folder ``animzoo/pretrained/<default_folder>``. A string that names a registered
    model loads it; a folder loads with :func:`animzoo.hub.from_pretrained`; a ``.ckpt`` file
    with :func:`animzoo.hub.from_checkpoint`.

    Raises:
        animzoo.hub.PretrainedNotFoundError: the file is missing (the message names it and the
            command that makes it).
    """
    from animzoo import hub

    if path_or_name is None:
        if default_name in hub.PRETRAINED:
            return hub.load_pretrained(default_name, map_location=map_location)
        folder = hub.PRETRAINED_DIR / default_folder
        for needed in (hub.WEIGHTS_NAME, hub.CONFIG_NAME):
            if not (folder / needed).is_file():
                raise hub.PretrainedNotFoundError(
                    f"{folder / needed}: missing, so the shipped {method} cannot be loaded. Reinstall "
                    f"animzoo, or train it with `animzoo fit --config {recipe}` and export it with "
                    f"`python -m animzoo.hub export CKPT {folder}`."
                )
        return hub.from_pretrained(folder, map_location=map_location)
    if isinstance(path_or_name, str) and path_or_name in hub.PRETRAINED:
        return hub.load_pretrained(path_or_name, map_location=map_location)
    path = Path(path_or_name).expanduser()
    if path.is_file() and path.suffix == ".ckpt":
        return hub.from_checkpoint(path, method=method, map_location=map_location)
    return hub.from_pretrained(path, map_location=map_location)
