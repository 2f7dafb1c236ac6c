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


@contextlib.contextmanager
def tqdm_as_rich(module: Any, description: str) -> Iterator[None]:
    """Inside the block, the raw ``tqdm`` bar ``module`` draws over an iterable becomes a transient
    rich bar on a terminal (gone once done), and nothing when output is not a terminal.

    For libraries that call ``tqdm(iterable, desc=...)`` directly; other uses keep a disabled tqdm.
    """
    real = getattr(module, "tqdm", None)
    if real is None:
        yield
        return
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    console = Console(stderr=True)
    with contextlib.ExitStack() as stack:
        progress = (stack.enter_context(Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                                 TimeElapsedColumn(), console=console, transient=True))
                    if console.is_terminal else None)

        def tqdm(iterable: Any = None, *args: Any, total: Any = None, **kw: Any) -> Any:
            if iterable is None:
                return real(*args, total=total, disable=True, **{k: v for k, v in kw.items() if k != "disable"})
            if progress is None:
                return iterable
            return progress.track(iterable, total=total, description=description)

        module.tqdm = tqdm
        try:
            yield
        finally:
            module.tqdm = real
