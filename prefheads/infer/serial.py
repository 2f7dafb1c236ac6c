"""``Serial``: the service without batching — each request runs its own pass under a lock.

What ``prefheads serve --no-batching`` runs: no worker thread and no pooling, but the same
queue limit (:class:`~prefheads.infer.batching.QueueFull`, a 503) and shutdown refusal
(:class:`~prefheads.infer.batching.Closed`) as :class:`~prefheads.infer.batching.Batcher`.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from prefheads.infer.batching import Closed, OnPass, QueueFull, Scored, heads_to_score
from prefheads.infer.scoring import encode_all, score_items

if TYPE_CHECKING:
    from prefheads.model import PreferenceModel


class Serial:
    """Each request runs its own pass in a handler thread, one at a time under a lock.

    Args:
        pm: The model (its own ``shared_prefix`` setting is used, as ``pm.score_all_heads`` does).
        on_pass: As for :class:`Batcher` (``requests`` is always 1).
        max_queue: Most requests waiting for the lock; past it new ones are refused
            (:class:`QueueFull`, a 503), as :class:`Batcher`'s queue does. After :meth:`close`
            new requests are refused (:class:`Closed`).
    """

    def __init__(self, pm: PreferenceModel, on_pass: OnPass | None = None, max_queue: int = 256) -> None:
        if max_queue < 1:
            raise ValueError(f"max_queue must be >= 1, got {max_queue}")
        self.pm = pm
        self.on_pass = on_pass
        self.max_queue = max_queue
        self._lock = threading.Lock()
        self._count = threading.Lock()
        self.depth = 0  # requests waiting for the lock (each holds a handler thread)
        self.alive = True
        self._seconds = 1.0  # the last pass's duration: the Retry-After estimate

    def _enter(self) -> None:
        with self._count:
            if not self.alive:
                raise Closed("the server is shutting down")
            if self.depth >= self.max_queue:
                raise QueueFull(self.depth, max(1, math.ceil(self._seconds * self.depth)))
            self.depth += 1

    def _leave(self) -> None:
        with self._count:
            self.depth -= 1

    def _score(self, prompts: Sequence[Any], candidates: Sequence[str], heads: Sequence[str] | None = None) -> Scored:
        self._enter()
        with self._lock:
            self._leave()  # waiting is over: this request runs
            t0 = time.perf_counter()
            items = encode_all(self.pm, prompts, candidates)
            rewards = score_items(self.pm, items, heads=heads_to_score(self.pm, heads),
                                  shared_prefix=self.pm.shared_prefix)
            seconds = self._seconds = time.perf_counter() - t0
        tokens = sum(len(it.ids) for it in items)
        if self.on_pass is not None:
            self.on_pass(1, len(items), tokens, seconds)
        return Scored({h: v.tolist() for h, v in rewards.items()}, tokens)

    def _run(self, fn: Callable[[], Any]) -> Any:
        self._enter()
        with self._lock:
            self._leave()
            return fn()

    async def score(self, prompts: Sequence[Any], candidates: Sequence[str],
                    heads: Sequence[str] | None = None) -> Scored:
        """Score in a worker thread of the server's pool (blocking the event loop never)."""
        import anyio.to_thread

        return await anyio.to_thread.run_sync(self._score, prompts, candidates, heads)

    async def run(self, fn: Callable[[], Any]) -> Any:
        """Run ``fn`` under the model lock in a worker thread."""
        import anyio.to_thread

        return await anyio.to_thread.run_sync(self._run, fn)

    def close(self, timeout: float | None = None) -> None:
        """Refuse new requests; those already running or waiting finish in their own threads."""
        with self._count:
            self.alive = False
