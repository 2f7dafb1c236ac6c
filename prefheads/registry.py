"""A small generic name → object registry.

Poolers, losses, training modes, metrics and tasks each keep one :class:`Registry` so that a
component is looked up by the name written in a config file, and adding a component is one
decorated definition. A duplicate name is an error rather than a silent override, so two files
can never fight over the same name; a definition run again (a notebook cell re-executed: the same
module and qualified name) replaces its earlier self, and ``replace=True`` replaces any entry.

A registry may name an entry-point group (``plugins=``): installed packages then add components
without being imported by hand. Each entry point of the group registers its object under the
entry point's name, the first time a lookup misses or the names are listed.

Example:
    >>> LOSSES = Registry("loss")
    >>> @LOSSES.register("separable")
    ... def separable(r_w, r_l): ...
    >>> LOSSES.get("separable") is separable
    True
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from importlib.metadata import entry_points
from typing import Generic, TypeVar

T = TypeVar("T")


class UnknownNameError(KeyError):
    """Raised by :meth:`Registry.get` for an unknown name; also a ``KeyError``."""

    def __str__(self) -> str:  # KeyError would repr-quote the message
        return str(self.args[0]) if self.args else ""


class Registry(Generic[T]):
    """Maps names to objects (functions or classes) of one kind.

    Args:
        kind: What is registered ("loss", "pooler"...); used in error messages only.
        plugins: Entry-point group whose entry points register here (``prefheads.poolers``...),
            or None.
    """

    def __init__(self, kind: str, plugins: str | None = None) -> None:
        self.kind = kind
        self.plugins = plugins
        self._items: dict[str, T] = {}
        self._scanned = False
        self._entry_points: set[tuple[str, str]] = set()  # (name, value) of those registered

    def load_plugins(self) -> list[str]:
        """Register the entry points of the ``plugins`` group not registered yet; returns their names.

        An entry point names a component and the object to register (``mine = my_pkg.poolers:Mine``).
        An object that registered itself under that name on import is kept as it is.

        Raises:
            ValueError: If an entry point reuses the name of another component.
        """
        if self.plugins is None:
            return []
        self._scanned = True
        added = []
        for ep in entry_points(group=self.plugins):
            if (ep.name, ep.value) in self._entry_points:
                continue
            obj = ep.load()
            if self._items.get(ep.name) is not obj:  # importing it may have registered it already
                self.add(ep.name, obj)
            self._entry_points.add((ep.name, ep.value))
            added.append(ep.name)
        return added

    def register(self, name: str, *, replace: bool = False) -> Callable[[T], T]:
        """Return a decorator that registers its argument under ``name`` and returns it unchanged.

        Args:
            name: The lookup key; a non-empty string.
            replace: Replace whatever is registered under ``name`` already.

        Raises:
            ValueError: If ``name`` is empty, or already registered to another definition and
                ``replace`` is false (see :meth:`add`).
        """
        if not isinstance(name, str) or not name:
            raise ValueError(f"a {self.kind} name must be a non-empty string, got {name!r}")

        def decorator(obj: T) -> T:
            self.add(name, obj, replace=replace)
            return obj

        return decorator

    def add(self, name: str, obj: T, *, replace: bool = False) -> None:
        """Register ``obj`` under ``name`` directly (the non-decorator form).

        A name taken by the same definition run again (same ``__module__`` and
        ``__qualname__``: a notebook cell or a reloaded module) is replaced without ``replace``.

        Raises:
            ValueError: If ``name`` is registered to another definition and ``replace`` is false.
        """
        old = self._items.get(name)
        if name in self._items and not replace and not _same_definition(old, obj):
            raise ValueError(
                f"{self.kind} {name!r} is already registered (by {old!r}); "
                "pick another name, or pass replace=True to replace it"
            )
        self._items[name] = obj

    def get(self, name: str) -> T:
        """Return the object registered under ``name``.

        Raises:
            UnknownNameError: (a ``KeyError``) If ``name`` is unknown; the message lists the
                known names.
        """
        if name not in self._items:
            self.load_plugins()
        try:
            return self._items[name]
        except KeyError:
            known = ", ".join(repr(n) for n in self.names()) or "none"
            raise UnknownNameError(
                f"unknown {self.kind} {name!r}; known {self.kind} names: {known}"
            ) from None

    def names(self, sort: bool = True) -> list[str]:
        """Return the registered names (plugins included), sorted, or in the order registered."""
        if not self._scanned:
            self.load_plugins()
        return sorted(self._items) if sort else list(self._items)

    def __contains__(self, name: object) -> bool:
        if name not in self._items and isinstance(name, str):
            self.load_plugins()
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self.names())

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, names={self.names()})"


def _same_definition(old: object, new: object) -> bool:
    """Whether ``new`` is ``old``'s definition run again: the same module and qualified name."""
    if old is new:
        return True
    qualname = getattr(old, "__qualname__", None)
    return (qualname is not None and qualname == getattr(new, "__qualname__", None)
            and getattr(old, "__module__", None) == getattr(new, "__module__", None))
