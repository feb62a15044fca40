"""The method registry: every animation method registers under a short snake_case name.

    @register_method("monkeynet")
    class MonkeyNet(AnimationModule): ...

    list_methods()            # ["monkeynet", "source_copy"]
    get_method("monkeynet")   # -> MonkeyNet

``animzoo.methods`` imports every method module, so importing it fills the registry (and makes
the class names usable as LightningCLI short names: ``--model MonkeyNet``).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import TYPE_CHECKING, TypeVar

if TYPE_CHECKING:
    from animzoo.methods.base import AnimationModule

__all__ = ["get_method", "list_methods", "method_name_of", "register_method"]

T = TypeVar("T", bound=type)

_REGISTRY: dict[str, type] = {}
_NAME = re.compile(r"^[a-z][a-z0-9_]*$")


def register_method(name: str) -> Callable[[T], T]:
    """Class decorator registering a method class under ``name`` (snake_case).

    Raises:
        ValueError: ``name`` is not snake_case, or is already taken by another class.
    """
    if not isinstance(name, str) or not _NAME.match(name):
        raise ValueError(f"method names are snake_case (a-z, 0-9, _), got {name!r}")

    def decorator(cls: T) -> T:
        existing = _REGISTRY.get(name)
        if existing is not None and existing is not cls:
            # A reload of the defining module gives a new class object with the same
            # qualified name: replace it rather than refuse (importlib.reload, notebooks).
            same = (existing.__module__, existing.__qualname__) == (cls.__module__, cls.__qualname__)
            if not same:
                raise ValueError(
                    f"method name {name!r} is already registered by "
                    f"{existing.__module__}.{existing.__qualname__}; choose another name for "
                    f"{cls.__module__}.{cls.__qualname__}"
                )
        _REGISTRY[name] = cls
        cls.method_name = name  # type: ignore[attr-defined]
        return cls

    return decorator


def _load_builtin_methods() -> None:
    import animzoo.methods  # noqa: F401  (registers the built-in methods)
    import animzoo.perception.identity.lightning_model  # noqa: F401  (and the perception models)
    import animzoo.perception.landmarks.lightning_model  # noqa: F401


def list_methods() -> list[str]:
    """Sorted names of the registered methods (the built-in ones are always included)."""
    _load_builtin_methods()
    return sorted(_REGISTRY)


def get_method(name: str) -> type[AnimationModule]:
    """The method class registered as ``name``.

    Raises:
        KeyError: unknown name; the message lists the valid names.
    """
    if name in _REGISTRY:  # already registered: loading a perception model never imports the methods
        return _REGISTRY[name]  # type: ignore[return-value]
    _load_builtin_methods()
    try:
        return _REGISTRY[name]  # type: ignore[return-value]
    except KeyError:
        valid = ", ".join(sorted(_REGISTRY)) or "(none)"
        raise KeyError(f"unknown method {name!r}; registered methods: {valid}") from None


def method_name_of(cls_or_module: object) -> str | None:
    """The registry name of a method class or instance (None when it is not registered)."""
    cls = cls_or_module if isinstance(cls_or_module, type) else type(cls_or_module)
    for name, registered in _REGISTRY.items():
        if registered is cls:
            return name
    return None
