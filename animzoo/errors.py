"""Exceptions for bad input. Every message names the offending file and says how to fix it."""

from __future__ import annotations

__all__ = ["AnimzooInputError", "VideoReadError", "SidecarError", "DatasetError"]


class AnimzooInputError(ValueError):
    """Base class: bad user input (a file, a shape, a config value), with a fix in the message."""


class VideoReadError(AnimzooInputError):
    """A video (file, folder of frames, gif or png strip) cannot be read."""


class SidecarError(AnimzooInputError):
    """A landmarks / mesh sidecar is missing, unreadable or inconsistent with its video."""


class DatasetError(AnimzooInputError):
    """A dataset root has the wrong layout (missing split, no videos, bad pairs.csv, ...)."""
