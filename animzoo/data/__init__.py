"""Datasets, sidecars and the datamodule.

Names are imported lazily (PEP 562), so ``import animzoo.data.annotations`` stays light (no
Lightning, no kornia). ``animzoo.data.synthetic`` (the procedural talking heads) is not
exported here: it pulls in the renderer, and the datamodule imports it only when
``synthetic=`` asks for it.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_EXPORTS = {
    "annotations": (
        "LANDMARKS_SUFFIX", "MESH_SUFFIX", "MeshSidecar", "PARSING_FLIP", "PARSING_LABELS",
        "PARSING_SUFFIX", "landmarks_path", "load_landmarks", "load_mesh", "load_parsing",
        "mesh_normalized_to_pixel", "mesh_path", "mesh_pixel_to_normalized", "normalized_to_pixel",
        "parsing_path", "pixel_to_normalized", "save_landmarks", "save_mesh", "save_parsing",
        "sidecar_path",
    ),
    "datamodule": ("AnimationDataModule",),
    "transforms": ("AugmentConfig", "PairAugmentation", "flip_batch"),
    "videos": (
        "EpochSampler", "InspectionReport", "Problem", "SplitSummary", "VideoEntry", "VideoFolder",
        "collate_chunks", "collate_pairs", "inspect_dataset",
    ),
}
_WHERE = {name: module for module, names in _EXPORTS.items() for name in names}

__all__ = sorted(_WHERE)


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        value = getattr(importlib.import_module(f"{__name__}.{_WHERE[name]}"), name)
        globals()[name] = value  # cache: later lookups skip this function
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


if TYPE_CHECKING:  # static analysers and IDEs see the real names
    from animzoo.data.annotations import (  # noqa: F401
        LANDMARKS_SUFFIX, MESH_SUFFIX, PARSING_FLIP, PARSING_LABELS, PARSING_SUFFIX, MeshSidecar,
        landmarks_path, load_landmarks, load_mesh, load_parsing, mesh_normalized_to_pixel,
        mesh_path, mesh_pixel_to_normalized, normalized_to_pixel, parsing_path,
        pixel_to_normalized, save_landmarks, save_mesh, save_parsing, sidecar_path,
    )
    from animzoo.data.datamodule import AnimationDataModule  # noqa: F401
    from animzoo.data.transforms import AugmentConfig, PairAugmentation, flip_batch  # noqa: F401
    from animzoo.data.videos import (  # noqa: F401
        EpochSampler, InspectionReport, Problem, SplitSummary, VideoEntry, VideoFolder,
        collate_chunks, collate_pairs, inspect_dataset,
    )
