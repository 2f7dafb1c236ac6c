"""Rich progress bars that vanish when disabled (tests, notebooks without a terminal)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any


class _Null:
    def add_task(self, *a: Any, **k: Any) -> int:
        return 0

    def update(self, *a: Any, **k: Any) -> None:
        pass


@contextlib.contextmanager
def bar(enabled: bool = True) -> Iterator[Any]:
    """A ``rich.progress.Progress`` (or a no-op stand-in) with an ``info`` column."""
    if not enabled:
        yield _Null()
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TimeElapsedColumn(), TextColumn("{task.fields[info]}")) as p:
        orig = p.add_task
        p.add_task = lambda *a, **k: orig(*a, **{"info": "", **k})  # type: ignore[method-assign]
        yield p
