"""The method registry: registration, duplicates, lookup errors, built-in methods."""

from __future__ import annotations

import pytest

from animzoo import registry
from animzoo.methods.base import AnimationModule
from animzoo.registry import get_method, list_methods, register_method


@pytest.fixture
def clean_registry(monkeypatch: pytest.MonkeyPatch) -> None:
    list_methods()  # load the built-in methods first, then work on a copy
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))


def test_builtin_methods_are_registered() -> None:
    names = list_methods()
    assert "source_copy" in names
    assert names == sorted(names)
    from animzoo.methods import SourceCopy

    assert get_method("source_copy") is SourceCopy
    assert SourceCopy.method_name == "source_copy"
    assert registry.method_name_of(SourceCopy()) == "source_copy"


def test_register_and_get(clean_registry: None) -> None:
    @register_method("dummy_method")
    class Dummy(AnimationModule):
        pass

    assert get_method("dummy_method") is Dummy
    assert "dummy_method" in list_methods()


def test_duplicate_name_is_refused(clean_registry: None) -> None:
    @register_method("dup_method")
    class First(AnimationModule):
        pass

    with pytest.raises(ValueError, match="already registered.*First"):

        @register_method("dup_method")
        class Second(AnimationModule):
            pass

    assert get_method("dup_method") is First


def test_unknown_name_lists_the_valid_ones() -> None:
    with pytest.raises(KeyError) as info:
        get_method("no_such_method")
    message = str(info.value)
    assert "no_such_method" in message
    for name in list_methods():
        assert name in message


@pytest.mark.parametrize("bad", ["MonkeyNet", "monkey-net", "", "1abc"])
def test_names_must_be_snake_case(bad: str) -> None:
    with pytest.raises(ValueError, match="snake_case"):
        register_method(bad)
