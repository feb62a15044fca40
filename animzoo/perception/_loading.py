"""Shared loader of the perception models: a shipped name, a pretrained folder or a ``.ckpt``."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from torch import nn

__all__ = ["load_perception_module"]


def load_perception_module(
    path_or_name: str | os.PathLike | None, *, default_name: str, expected: type[nn.Module], method: str,
    map_location: Any = "cpu",
) -> Any:
    """The LightningModule of a perception model, in eval mode, checked to be an ``expected``.

    ``None`` loads the model shipped in the package (``default_name`` in
    :data:`animzoo.hub.PRETRAINED`, sha256 checked); a registered name loads that model; a folder
    loads with :func:`animzoo.hub.from_pretrained`; a ``.ckpt`` with :func:`animzoo.hub.from_checkpoint`.

    Raises:
        animzoo.hub.PretrainedError: missing / corrupt files (the message names the file and the
            fix), or a model of another kind.
    """
    from animzoo import hub

    source = default_name if path_or_name is None else path_or_name
    if isinstance(source, str) and source in hub.PRETRAINED:
        module = hub.load_pretrained(source, map_location=map_location)
    else:
        path = Path(source).expanduser()
        if path.is_file() and path.suffix == ".ckpt":
            module = hub.from_checkpoint(path, method=method, map_location=map_location)
        else:
            module = hub.from_pretrained(path, map_location=map_location)
    if not isinstance(module, expected):
        raise hub.PretrainedError(f"{source}: holds a {type(module).__name__}, not a {method}")
    return module
