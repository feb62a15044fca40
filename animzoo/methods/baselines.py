"""Baselines every method must beat."""

from __future__ import annotations

from typing import Any

from animzoo.methods.base import AnimationModule
from animzoo.registry import register_method

__all__ = ["SourceCopy"]


@register_method("source_copy")
class SourceCopy(AnimationModule):
    """The prediction is the source image, whatever the driving signal.

    It has no parameters: ``animzoo test --model SourceCopy --config RECIPE`` evaluates it
    without a checkpoint, and ``animzoo fit`` refuses it with a message saying so (there is
    nothing to train). Its scores are the floor of the leaderboard: a method that does not
    beat it has learned no motion.
    """

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)

    def animate(self, batch: dict[str, Any]) -> dict[str, Any]:
        return {"prediction": batch["source"]}
