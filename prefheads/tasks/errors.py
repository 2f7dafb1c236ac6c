"""Errors and result containers shared by the task loaders."""

from __future__ import annotations

import warnings
from typing import Any, Generic, TypeVar

T = TypeVar("T")


class DataError(ValueError):
    """A row of a data file (or hub record) that cannot be turned into an example.

    Attributes:
        file: Source file path, or ``hub:<dataset id>`` for a hub record.
        line: 1-based line (JSONL/TSV), row index (hub) or question index; ``None`` if unknown.
        field: The offending field, e.g. ``"label"`` or ``"question.choices"``.
        reason: What is wrong with it.
    """

    def __init__(self, reason: str, file: str | None = None, line: int | None = None,
                 field: str | None = None) -> None:
        self.reason, self.file, self.line, self.field = reason, file, line, field
        where = f"{file or '<unknown>'}" + (f":{line}" if line is not None else "")
        what = f" field {field!r}:" if field else ""
        super().__init__(f"{where}:{what} {reason}")


class Loaded(list, Generic[T]):
    """A plain ``list`` of examples or pairs that also reports what was left out.

    Attributes:
        skipped: Bad rows skipped because ``skip_bad=True`` (each would have raised
            :class:`DataError`).
        dropped: Well-formed rows dropped because they carry no preference signal (e.g. an
            HH-RLHF pair whose chosen and rejected replies are identical). Always dropped.
        problems: Up to 20 messages describing skipped / dropped rows, for reports.
        counts: Per-task item counts, where the producer sets them (:func:`mix`).
    """

    skipped: int
    dropped: int
    problems: list[str]
    counts: dict[str, int]

    def __init__(self, items: Any = ()) -> None:
        super().__init__(items)
        self.skipped = 0
        self.dropped = 0
        self.problems = []
        self.counts = {}

    def note(self, message: str, *, skipped: bool) -> None:
        """Count one left-out row and keep its message (the first 20 only)."""
        if skipped:
            self.skipped += 1
        else:
            self.dropped += 1
        if len(self.problems) < 20:
            self.problems.append(message)

    def absorb(self, other: "Loaded[Any]") -> None:
        """Add ``other``'s counts and messages to this one (items are not copied)."""
        self.skipped += other.skipped
        self.dropped += other.dropped
        self.problems.extend(other.problems[: max(0, 20 - len(self.problems))])

    def warn(self, what: str) -> None:
        """Emit one ``UserWarning`` with the counts, if anything was left out."""
        if self.skipped or self.dropped:
            first = f"; first: {self.problems[0]}" if self.problems else ""
            warnings.warn(
                f"{what}: skipped {self.skipped} bad row(s), dropped {self.dropped} "
                f"row(s) without a preference signal{first}",
                stacklevel=4,  # Loaded.warn < collect < load_* < the caller
            )
