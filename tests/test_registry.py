"""Tests for prefheads.registry."""

import pytest

from prefheads.registry import Registry, UnknownNameError


def test_register_and_get_returns_same_object():
    reg = Registry("widget")

    @reg.register("a")
    def a():
        return 1

    assert reg.get("a") is a
    assert a() == 1  # the decorator returns the function unchanged
    assert "a" in reg and "b" not in reg
    assert len(reg) == 1


def test_names_sorted_and_iterable():
    reg = Registry("widget")
    reg.add("zeta", 1)
    reg.add("alpha", 2)
    assert reg.names() == ["alpha", "zeta"]
    assert list(reg) == ["alpha", "zeta"]


def test_duplicate_name_is_an_error():
    reg = Registry("widget")
    reg.add("a", 1)
    with pytest.raises(ValueError, match="already registered"):
        reg.register("a")(2)
    assert reg.get("a") == 1  # the first registration survives


def test_unknown_name_lists_known_names():
    reg = Registry("widget")
    reg.add("alpha", 1)
    reg.add("beta", 2)
    with pytest.raises(KeyError) as info:
        reg.get("gamma")
    assert isinstance(info.value, UnknownNameError)
    msg = str(info.value)
    assert "unknown widget 'gamma'" in msg and "'alpha'" in msg and "'beta'" in msg


def test_empty_name_rejected():
    with pytest.raises(ValueError):
        Registry("widget").register("")
