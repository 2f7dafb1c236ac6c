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


def test_the_same_definition_run_again_replaces_itself():
    # a notebook cell re-executed: a new class object of the same module and qualified name
    reg = Registry("widget")
    for _ in range(2):
        @reg.register("w")
        class Widget:
            pass

    assert reg.get("w") is Widget


def test_replace_puts_another_definition_under_a_taken_name():
    reg = Registry("widget")
    reg.add("a", 1)
    with pytest.raises(ValueError, match="replace=True"):
        reg.add("a", 2)

    @reg.register("a", replace=True)
    def other():
        return 2

    assert reg.get("a") is other
    reg.add("a", 3, replace=True)
    assert reg.get("a") == 3
