"""Training augmentation that runs on the device, on whole batches (after the transfer).

Two augmentations, both identical for the source and the driving frame of a sample, so the
motion between them is untouched:

- horizontal flip: images mirrored; landmarks mirrored (``x -> -x``) AND re-indexed with a
  left/right permutation (``IBUG68_FLIP`` / ``LANDMARK_FLIP_70`` for 68 / 70 points), so that
  point 36 (an eye corner) stays "the same" eye corner of the flipped face; mesh vertices
  mirrored and re-indexed with the mesh sidecar's ``flip_index``. A mirror reverses the
  orientation of the triangles and the re-indexing reverses it again, so the face winding
  (and back-face culling) stays valid for a left/right symmetric topology; face-parsing maps
  mirrored and relabelled with ``PARSING_FLIP`` (a left-eye pixel becomes a right-eye pixel).
- colour jitter (brightness, contrast, saturation, hue) with kornia, one set of factors per
  sample.

Randomness: every decision is drawn from a CPU ``torch.Generator`` seeded from
``(seed, rank, step)`` (the datamodule passes Lightning's total batch index as the step), then
moved to the device. The same run therefore sees the same augmentations on CPU and GPU,
whatever ``num_workers``, and again after resuming; kornia's global RNG is not used.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from typing import Any

import numpy as np
import torch
from kornia import enhance

from animzoo.data.annotations import PARSING_FLIP

__all__ = [
    "AugmentConfig",
    "PairAugmentation",
    "landmark_flip_permutation",
    "flip_batch",
    "jitter_batch",
    "make_generator",
]

IMAGE_KEYS = ("source", "driving")
LANDMARK_KEYS = ("source_landmarks", "driving_landmarks")
MESH_KEYS = ("source_mesh", "driving_mesh")
PARSING_KEYS = ("source_parsing", "driving_parsing")


@dataclass(frozen=True)
class AugmentConfig:
    """Augmentation settings (the ``augment`` dict of the datamodule).

    Attributes:
        flip_prob: probability of a horizontal flip of a sample (0 = off).
        brightness, contrast, saturation: factors drawn from ``[1 - v, 1 + v]`` (0 = off).
        hue: shift drawn from ``[-v, v]`` of a full turn, ``v <= 0.5`` (0 = off).
        time_flip_prob: probability of swapping source and driving (first-order-model's
            time flip; 0 = off, the default, so the source stays the earlier frame).
    """

    flip_prob: float = 0.5
    brightness: float = 0.1
    contrast: float = 0.1
    saturation: float = 0.1
    hue: float = 0.1
    time_flip_prob: float = 0.0

    def __post_init__(self) -> None:
        for name in ("flip_prob", "time_flip_prob"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"augment.{name} must be in [0, 1], got {value}")
        for name in ("brightness", "contrast", "saturation"):
            if getattr(self, name) < 0:
                raise ValueError(f"augment.{name} must be >= 0, got {getattr(self, name)}")
        if not 0.0 <= self.hue <= 0.5:
            raise ValueError(f"augment.hue must be in [0, 0.5], got {self.hue}")

    @classmethod
    def from_dict(cls, values: Mapping[str, Any] | None) -> AugmentConfig:
        """Build from a (recipe) dict; unknown keys are refused with the list of valid ones."""
        values = dict(values or {})
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown augment key(s) {unknown}; valid keys: {sorted(known)}")
        return cls(**{k: float(v) for k, v in values.items()})

    @property
    def jitter(self) -> bool:
        return any(v > 0 for v in (self.brightness, self.contrast, self.saturation, self.hue))

    def to_dict(self) -> dict[str, float]:
        return asdict(self)


def landmark_flip_permutation(count: int) -> tuple[int, ...] | None:
    """The left/right permutation of a landmark layout with ``count`` points, or ``None``.

    68 -> iBUG ``IBUG68_FLIP``; 70 -> ``LANDMARK_FLIP_70`` (iBUG + two pupils), both from
    :mod:`animzoo.geometry.heads`. Other layouts are unknown (``None``: flips disabled).
    """
    if count not in (68, 70):
        return None
    try:  # imported here: the data layer works without the head models being importable
        from animzoo.geometry import heads
    except ImportError:
        return None
    perm = heads.IBUG68_FLIP if count == 68 else heads.LANDMARK_FLIP_70
    return tuple(int(i) for i in perm)


def make_generator(seed: int, *parts: int) -> torch.Generator:
    """A CPU generator seeded by the tuple ``(seed, *parts)`` (no collisions between tuples)."""
    mask = (1 << 63) - 1
    state = np.random.SeedSequence([seed & mask, *(p & mask for p in parts)]).generate_state(2)
    generator = torch.Generator()
    generator.manual_seed((int(state[0]) << 31) ^ int(state[1]))
    return generator


def _select(mask: torch.Tensor, flipped: torch.Tensor, original: torch.Tensor) -> torch.Tensor:
    shape = (-1,) + (1,) * (original.dim() - 1)
    return torch.where(mask.view(shape), flipped, original)


def flip_batch(
    batch: Mapping[str, Any],
    mask: torch.Tensor,
    *,
    landmark_permutation: Sequence[int] | torch.Tensor | None = None,
) -> dict[str, Any]:
    """Horizontally flip the samples of ``batch`` where ``mask`` (``B`` bool) is true.

    Images ``B x 3 x H x W`` are mirrored; landmarks ``B x L x 2`` become
    ``new[:, i] = mirror(old[:, perm[i]])`` with ``mirror(x, y) = (-x, y)``; meshes
    ``B x V x 3`` likewise with ``batch["mesh_flip_index"]``; parsing maps ``B x H x W`` are
    mirrored and relabelled, ``new = PARSING_FLIP[old]`` (left and right parts swap). Flipping
    twice with an involutive permutation is the identity. Returns a new dict (inputs untouched).

    Raises:
        ValueError: the batch has landmarks but no ``landmark_permutation``, or meshes but
            no ``mesh_flip_index``: mirroring them without re-indexing swaps left and right.
    """
    out = dict(batch)
    mask = mask.to(device=batch["source"].device, dtype=torch.bool)
    for key in IMAGE_KEYS:
        if key in batch:
            out[key] = _select(mask, batch[key].flip(-1), batch[key])
    if any(k in batch for k in LANDMARK_KEYS):
        if landmark_permutation is None:
            raise ValueError("cannot flip landmarks without their left/right permutation")
        perm = torch.as_tensor(landmark_permutation, dtype=torch.long, device=mask.device)
        for key in LANDMARK_KEYS:
            if key in batch:
                points = batch[key][:, perm]
                mirrored = torch.cat([-points[..., :1], points[..., 1:]], dim=-1)
                out[key] = _select(mask, mirrored, batch[key])
    if any(k in batch for k in MESH_KEYS):
        if "mesh_flip_index" not in batch:
            raise ValueError("cannot flip meshes without a flip_index in their sidecars")
        index = batch["mesh_flip_index"].to(device=mask.device, dtype=torch.long)
        for key in MESH_KEYS:
            if key in batch:
                verts = batch[key][:, index]
                mirrored = torch.cat([-verts[..., :1], verts[..., 1:]], dim=-1)
                out[key] = _select(mask, mirrored, batch[key])
    for key in PARSING_KEYS:
        if key in batch:
            maps = batch[key]
            # A mirror turns the subject's left eye into a right eye: relabel after mirroring.
            table = torch.as_tensor(PARSING_FLIP, dtype=maps.dtype, device=maps.device)
            out[key] = _select(mask, table[maps.flip(-1).long()], maps)
    return out


def jitter_batch(
    batch: Mapping[str, Any],
    *,
    brightness: torch.Tensor,
    contrast: torch.Tensor,
    saturation: torch.Tensor,
    hue: torch.Tensor,
) -> dict[str, Any]:
    """Colour-jitter source and driving with the same per-sample factors (each ``B``).

    brightness multiplies, contrast scales around the image mean, saturation blends with
    grey, hue rotates by ``hue`` radians (kornia.enhance). Factors of 1 / 1 / 1 / 0 leave
    an image unchanged. Output stays in [0, 1].
    """
    out = dict(batch)
    for key in IMAGE_KEYS:
        if key not in batch:
            continue
        img = batch[key]
        img = (img * brightness.view(-1, 1, 1, 1)).clamp(0.0, 1.0)
        img = enhance.adjust_contrast_with_mean_subtraction(img, contrast)
        img = enhance.adjust_saturation(img, saturation)
        img = enhance.adjust_hue(img, hue)
        out[key] = img.clamp(0.0, 1.0)
    return out


class PairAugmentation:
    """Flip + colour jitter of a training batch (source and driving treated alike).

    Args:
        config: the settings.
        landmark_permutation: left/right permutation of the landmark layout; needed to flip
            batches with landmarks.
        flip: set ``False`` to disable flips (e.g. unknown landmark layout, meshes without
            ``flip_index``); the datamodule decides this at ``setup()`` and warns.
    """

    def __init__(
        self,
        config: AugmentConfig,
        *,
        landmark_permutation: Sequence[int] | None = None,
        flip: bool = True,
    ) -> None:
        self.config = config
        self.landmark_permutation = (
            None if landmark_permutation is None else tuple(int(i) for i in landmark_permutation)
        )
        self.flip = flip and config.flip_prob > 0
        self._warned = False

    @property
    def active(self) -> bool:
        return self.flip or self.config.jitter or self.config.time_flip_prob > 0

    def _can_flip(self, batch: Mapping[str, Any]) -> bool:
        reason = None
        if any(k in batch for k in LANDMARK_KEYS) and self.landmark_permutation is None:
            reason = "landmarks without a known left/right permutation"
        elif any(k in batch for k in MESH_KEYS) and "mesh_flip_index" not in batch:
            reason = "meshes whose sidecars have no flip_index"
        if reason and not self._warned:
            warnings.warn(f"horizontal flip skipped: the batch has {reason}", stacklevel=3)
            self._warned = True
        return reason is None

    def __call__(self, batch: dict[str, Any], generator: torch.Generator) -> dict[str, Any]:
        """Augment ``batch`` (on any device) with decisions drawn from ``generator`` (CPU)."""
        cfg = self.config
        size = batch["source"].shape[0]
        device = batch["source"].device

        def uniform(low: float, high: float) -> torch.Tensor:
            # Always drawn (even when unused) so one setting never shifts another's randomness.
            values = low + (high - low) * torch.rand(size, generator=generator)
            return values.to(device)

        flip_mask = torch.rand(size, generator=generator) < cfg.flip_prob
        time_mask = torch.rand(size, generator=generator) < cfg.time_flip_prob
        factors = {
            "brightness": uniform(max(0.0, 1.0 - cfg.brightness), 1.0 + cfg.brightness),
            "contrast": uniform(max(0.0, 1.0 - cfg.contrast), 1.0 + cfg.contrast),
            "saturation": uniform(max(0.0, 1.0 - cfg.saturation), 1.0 + cfg.saturation),
            "hue": uniform(-cfg.hue, cfg.hue) * (2.0 * math.pi),
        }
        if self.flip and flip_mask.any() and self._can_flip(batch):
            batch = flip_batch(batch, flip_mask, landmark_permutation=self.landmark_permutation)
        if cfg.jitter:
            batch = jitter_batch(batch, **factors)
        if cfg.time_flip_prob > 0 and time_mask.any():
            batch = _swap_source_driving(batch, time_mask.to(device))
        return batch


def _swap_source_driving(batch: Mapping[str, Any], mask: torch.Tensor) -> dict[str, Any]:
    """Swap source and driving (images, sidecars, frame indices) where ``mask``."""
    out = dict(batch)
    for src, drv in (
        ("source", "driving"),
        ("source_landmarks", "driving_landmarks"),
        ("source_mesh", "driving_mesh"),
        ("source_parsing", "driving_parsing"),
        ("source_frame_index", "frame_index"),
    ):
        if src in batch and drv in batch:
            m = mask.to(batch[src].device)
            out[src] = _select(m, batch[drv], batch[src])
            out[drv] = _select(m, batch[src], batch[drv])
    return out
