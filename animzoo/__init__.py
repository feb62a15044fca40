"""animzoo: a PyTorch Lightning model zoo of one-shot image animation.

    import animzoo
    animator = animzoo.Animator.from_pretrained("monkeynet.synthetic64")
    frames = animator.animate("face.png", "driving.mp4", relative=True)

The names below are imported lazily (PEP 562), so ``import animzoo`` stays light: torch,
Lightning and the methods load on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# name -> (module, attribute)
_LAZY = {
    "list_methods": ("animzoo.registry", "list_methods"),
    "get_method": ("animzoo.registry", "get_method"),
    "load_pretrained": ("animzoo.hub", "load_pretrained"),
    "from_pretrained": ("animzoo.hub", "from_pretrained"),
    "save_pretrained": ("animzoo.hub", "save_pretrained"),
    "list_pretrained": ("animzoo.hub", "list_pretrained"),
    "Animator": ("animzoo.animate", "Animator"),
}

__all__ = [
    "Animator",
    "__version__",
    "from_pretrained",
    "get_method",
    "list_methods",
    "list_pretrained",
    "load_pretrained",
    "save_pretrained",
]

if TYPE_CHECKING:  # pragma: no cover
    from animzoo.animate import Animator
    from animzoo.hub import (
        from_pretrained,
        list_pretrained,
        load_pretrained,
        save_pretrained,
    )
    from animzoo.registry import get_method, list_methods


def __getattr__(name: str) -> Any:
    target = _LAZY.get(name)
    if target is None:
        raise AttributeError(f"module 'animzoo' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(target[0]), target[1])
    globals()[name] = value  # later look-ups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
