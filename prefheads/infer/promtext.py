"""Counters, gauges and histograms rendered in the Prometheus text exposition format (0.0.4).

A few dozen lines instead of a dependency: the server exports a handful of series, and the
format is plain text (``# HELP``, ``# TYPE``, then ``name{label="value"} number`` lines;
histograms as cumulative ``_bucket{le=...}`` counts plus ``_sum`` and ``_count``).
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Sequence

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(names: Sequence[str], values: Sequence[str], extra: str = "") -> str:
    parts = [f'{n}="{_escape(str(v))}"' for n, v in zip(names, values)]
    if extra:
        parts.append(extra)
    return "{" + ",".join(parts) + "}" if parts else ""


def _num(v: float) -> str:
    if math.isinf(v):
        return "+Inf" if v > 0 else "-Inf"
    return repr(float(v)) if not float(v).is_integer() else str(int(v))


class _Metric:
    kind = ""

    def __init__(self, name: str, help: str, labels: Sequence[str] = ()) -> None:
        self.name, self.help, self.labelnames = name, help, tuple(labels)
        self._lock = threading.Lock()

    def _key(self, labels: dict[str, str]) -> tuple[str, ...]:
        if set(labels) != set(self.labelnames):
            raise ValueError(f"{self.name}: labels {sorted(labels)} given, {sorted(self.labelnames)} expected")
        return tuple(str(labels[n]) for n in self.labelnames)

    def header(self) -> list[str]:
        return [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} {self.kind}"]


class Counter(_Metric):
    """A count that only goes up, per label set."""

    kind = "counter"

    def __init__(self, name: str, help: str, labels: Sequence[str] = ()) -> None:
        super().__init__(name, help, labels)
        self._values: dict[tuple[str, ...], float] = {}

    def inc(self, amount: float = 1.0, **labels: str) -> None:
        """Add ``amount`` (≥ 0) to the series of ``labels``."""
        if amount < 0:
            raise ValueError(f"{self.name}: a counter cannot decrease")
        key = self._key(labels)
        with self._lock:
            self._values[key] = self._values.get(key, 0.0) + amount

    def value(self, **labels: str) -> float:
        """Current value of one series (0 if never incremented)."""
        return self._values.get(self._key(labels), 0.0)

    def lines(self) -> list[str]:
        with self._lock:
            items = sorted(self._values.items())
        return [f"{self.name}{_labels(self.labelnames, k)} {_num(v)}" for k, v in items]


class Gauge(_Metric):
    """A value read when the metrics are rendered (``read`` returns it)."""

    kind = "gauge"

    def __init__(self, name: str, help: str, read: Callable[[], float]) -> None:
        super().__init__(name, help)
        self.read = read

    def lines(self) -> list[str]:
        return [f"{self.name} {_num(self.read())}"]


class Histogram(_Metric):
    """Observations counted into cumulative buckets (upper bounds ``buckets``, then +Inf)."""

    kind = "histogram"

    def __init__(self, name: str, help: str, buckets: Sequence[float], labels: Sequence[str] = ()) -> None:
        super().__init__(name, help, labels)
        if list(buckets) != sorted(set(buckets)):
            raise ValueError(f"{self.name}: bucket bounds must be increasing, got {list(buckets)}")
        self.bounds = [float(b) for b in buckets] + [math.inf]
        self._series: dict[tuple[str, ...], list[float]] = {}  # per-bucket counts, then sum

    def observe(self, value: float, **labels: str) -> None:
        """Count one observation."""
        key = self._key(labels)
        with self._lock:
            s = self._series.setdefault(key, [0.0] * (len(self.bounds) + 1))
            for i, b in enumerate(self.bounds):
                if value <= b:
                    s[i] += 1
                    break
            s[-1] += value

    def count(self, **labels: str) -> int:
        """Observations of one series."""
        s = self._series.get(self._key(labels))
        return int(sum(s[:-1])) if s else 0

    def lines(self) -> list[str]:
        with self._lock:
            items = sorted((k, list(v)) for k, v in self._series.items())
        out = []
        for key, s in items:
            total = 0.0
            for b, c in zip(self.bounds, s):
                total += c
                le = f'le="{_num(b)}"'
                out.append(f"{self.name}_bucket{_labels(self.labelnames, key, le)} {_num(total)}")
            out.append(f"{self.name}_sum{_labels(self.labelnames, key)} {_num(s[-1])}")
            out.append(f"{self.name}_count{_labels(self.labelnames, key)} {_num(total)}")
        return out


class Registry:
    """The metrics one endpoint exports; a name registers once."""

    def __init__(self) -> None:
        self._metrics: dict[str, _Metric] = {}

    def add(self, metric: _Metric) -> _Metric:
        """Register ``metric`` (a duplicate name is an error) and return it."""
        if metric.name in self._metrics:
            raise ValueError(f"a metric named {metric.name!r} is registered already")
        self._metrics[metric.name] = metric
        return metric

    def render(self) -> str:
        """Every metric in the text exposition format."""
        lines: list[str] = []
        for m in self._metrics.values():
            lines += m.header() + m.lines()
        return "\n".join(lines) + "\n"
