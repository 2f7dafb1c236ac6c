"""Who runs the model for the HTTP service: one batching worker, or one request at a time.

Forward hooks are per module, so two passes must never overlap on one model. Two ways to keep
that true, with the same interface (``await scorer.score(...)``, ``await scorer.run(fn)``):

* :class:`Batcher` — one worker thread owns the model. Request handlers put their work on a
  bounded queue and await a future; the worker takes the first request, then keeps draining the
  queue for at most ``max_wait_ms`` until ``max_batch_tokens`` tokens are pooled, scores them
  all in one backbone pass per backbone state they need (the engine picks shared-prefix or
  full encoding for the pooled candidates; every head of a state from the same pass) and hands
  each request exactly its own slice of the rewards. A full queue refuses new work at once (:class:`QueueFull`, HTTP 503 with
  ``Retry-After``) rather than letting clients time out; :meth:`Batcher.close` finishes every
  queued request before the worker stops.
* :class:`~prefheads.infer.serial.Serial` — each request runs its own pass in a handler thread, under one lock: the
  service's behaviour before batching, kept to compare against (``prefheads serve --no-batching``).
"""

from __future__ import annotations

import math
import queue
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from prefheads.infer.scoring import encode_all, score_items

if TYPE_CHECKING:
    from prefheads.model import PreferenceModel

# Defaults per device type. On CPU a pass of a few thousand tokens already keeps the cores busy
# and costs seconds, so a larger pool only delays the first answers, and forwards of about a
# thousand padded tokens keep requests of different lengths apart: with the model's 4096-token
# forwards, 8 pooled HH-RLHF requests ran 3728 padded tokens against 1942 one by one, and the
# batching server answered 0.5-0.9x the requests/s of one request at a time; with 1024, 1.0-1.1x
# for 2 candidates and 1.3-2.0x for 8 (bench/serve_load.py, docs/benchmarks.md). A GPU needs
# tens of thousands of tokens in flight and a pass takes milliseconds, so the wait must be short
# next to it (GPU values not measured here). See docs/serving.md.
DEVICE_DEFAULTS: dict[str, dict[str, float]] = {
    "cpu": {"max_batch_tokens": 8192, "max_wait_ms": 10.0, "forward_tokens": 1024},
    "cuda": {"max_batch_tokens": 32768, "max_wait_ms": 2.0, "forward_tokens": 8192},
}

OnPass = Callable[[int, int, int, float], None]  # (requests, candidates, tokens, seconds)


@dataclass
class BatchSettings:
    """How the worker pools requests into backbone passes.

    Attributes:
        max_batch_tokens: Most tokens (every prompt + candidate sequence of every pooled request)
            per pass; a request larger than this runs alone. ``None``: the device's default
            (``DEVICE_DEFAULTS``).
        max_wait_ms: How long the worker waits for more requests once it holds one. ``None``:
            the device's default.
        max_queue: Most requests waiting for the worker; past it new ones are refused (503).
        forward_tokens: Padded tokens per forward inside a pass (the engine's ``max_tokens``).
            ``None``: the device's default.
    """

    max_batch_tokens: int | None = None
    max_wait_ms: float | None = None
    max_queue: int = 256
    forward_tokens: int | None = None

    def __post_init__(self) -> None:
        for name in ("max_batch_tokens", "forward_tokens"):
            v = getattr(self, name)
            if v is not None and v < 1:
                raise ValueError(f"{name} must be >= 1, got {v}")
        if self.max_wait_ms is not None and self.max_wait_ms < 0:
            raise ValueError(f"max_wait_ms must be >= 0, got {self.max_wait_ms}")
        if self.max_queue < 1:
            raise ValueError(f"max_queue must be >= 1, got {self.max_queue}")

    def resolved(self, device_type: str) -> "BatchSettings":
        """These settings with the defaults of ``device_type`` (``"cpu"``, ``"cuda"``...) filled in."""
        d = DEVICE_DEFAULTS.get(device_type, DEVICE_DEFAULTS["cuda"])
        return BatchSettings(self.max_batch_tokens or int(d["max_batch_tokens"]),
                             d["max_wait_ms"] if self.max_wait_ms is None else self.max_wait_ms, self.max_queue,
                             self.forward_tokens or int(d["forward_tokens"]))


class QueueFull(RuntimeError):
    """The queue holds ``max_queue`` requests already; retry after ``retry_after`` seconds."""

    def __init__(self, depth: int, retry_after: int) -> None:
        super().__init__(f"the server is at capacity ({depth} requests queued); retry after {retry_after} s")
        self.retry_after = retry_after


class Closed(RuntimeError):
    """The worker is shutting down (or has stopped): no new work is taken."""


@dataclass
class Scored:
    """One request's result.

    Attributes:
        rewards: ``{head: [reward per candidate]}``, in the request's candidate order: the heads
            asked for and every head reading the same backbone state (one pass gives them all).
        tokens: Tokens of its encoded sequences (prompt + candidate, each candidate).
    """

    rewards: dict[str, list[float]]
    tokens: int


def heads_to_score(pm: PreferenceModel, heads: Sequence[str] | None) -> list[str]:
    """Every head of the groups (backbone states) ``heads`` belong to; None: every head of ``pm``.

    A request names one head, but its pass gives every head of that state at no extra cost;
    the heads of other states would cost passes of their own.
    """
    if heads is None:
        return pm.head_names
    wanted = set(heads)
    chosen = {n for _, names in pm.head_groups() if wanted & set(names) for n in names}
    return [n for n in pm.head_names if n in chosen]


class _Job:
    __slots__ = ("prompts", "candidates", "heads", "fn", "future", "items", "tokens")

    def __init__(self, prompts: list | None, candidates: list[str] | None, fn: Callable[[], Any] | None,
                 heads: Sequence[str] | None = None) -> None:
        self.prompts, self.candidates, self.fn = prompts, candidates, fn
        self.heads = None if heads is None else list(heads)
        self.future: Future = Future()
        self.items: list = []
        self.tokens = 0


_STOP = object()


async def _await(fut: Future) -> Any:
    import asyncio

    # cancelling the awaiting request (client gone) cancels the future; the worker skips it
    return await asyncio.wrap_future(fut)


class Batcher:
    """One worker thread that owns ``pm`` and scores pooled requests (see the module docstring).

    Args:
        pm: A :class:`~prefheads.model.PreferenceModel` with heads. Nothing else may run it
            while the worker is alive.
        settings: Pooling limits (device defaults filled in from ``pm``'s device).
        on_pass: Called after every pass with ``(requests, candidates, tokens, seconds)``.
        shared_prefix: Engine choice for each pass (default ``"auto"``).
    """

    def __init__(self, pm: PreferenceModel, settings: BatchSettings | None = None, on_pass: OnPass | None = None,
                 shared_prefix: bool | str = "auto") -> None:
        self.pm = pm
        device = next(pm.backbone.parameters()).device.type
        self.settings = (settings or BatchSettings()).resolved(device)
        self.on_pass = on_pass
        self.shared_prefix = shared_prefix
        self._q: queue.Queue = queue.Queue(maxsize=self.settings.max_queue)
        self._lock = threading.Lock()
        self._closing = False
        self._per_request_s = 0.0  # running estimate, for Retry-After
        self._thread = threading.Thread(target=self._loop, name="prefheads-batcher", daemon=True)
        self._thread.start()

    # ------------------------------------------------------------------ submitting
    @property
    def depth(self) -> int:
        """Requests waiting for the worker."""
        return self._q.qsize()

    @property
    def alive(self) -> bool:
        """Whether the worker takes work (running and not shutting down)."""
        return self._thread.is_alive() and not self._closing

    def _put(self, job: _Job) -> Future:
        with self._lock:  # so no job can slip in behind the stop marker
            if self._closing:
                raise Closed("the server is shutting down")
            try:
                self._q.put_nowait(job)
            except queue.Full:
                raise QueueFull(self.depth, self.retry_after()) from None
        return job.future

    def submit(self, prompts: Sequence[Any], candidates: Sequence[str], heads: Sequence[str] | None = None) -> Future:
        """Queue aligned prompts and candidates; the future gives a :class:`Scored`.

        Args:
            prompts: One prompt per candidate.
            candidates: The candidates.
            heads: The heads wanted (their backbone states' passes run); None: every head.

        Raises:
            QueueFull: ``max_queue`` requests are waiting already.
            Closed: the worker is shutting down.
        """
        return self._put(_Job(list(prompts), list(candidates), None, heads))

    def call(self, fn: Callable[[], Any]) -> Future:
        """Queue ``fn`` to run on the worker alone (e.g. sampling from the backbone)."""
        return self._put(_Job(None, None, fn))

    async def score(self, prompts: Sequence[Any], candidates: Sequence[str],
                    heads: Sequence[str] | None = None) -> Scored:
        """:meth:`submit` and await the result."""
        return await _await(self.submit(prompts, candidates, heads))

    async def run(self, fn: Callable[[], Any]) -> Any:
        """:meth:`call` and await the result."""
        return await _await(self.call(fn))

    def retry_after(self) -> int:
        """Seconds until the queue has likely drained enough to take a new request (1 to 60)."""
        return int(min(60, max(1, math.ceil(self.depth * self._per_request_s))))

    def close(self, timeout: float | None = None) -> None:
        """Stop taking work, finish every queued request, then stop the worker."""
        with self._lock:
            already, self._closing = self._closing, True
        if not already and self._thread.is_alive():
            self._q.put(_STOP)  # behind every queued job: they all run first
        self._thread.join(timeout)

    # ------------------------------------------------------------------ the worker
    def _admit(self, job: _Job) -> bool:
        """Start ``job`` (False if its client gave up); encode it (a bad request fails alone)."""
        if not job.future.set_running_or_notify_cancel():
            return False
        if job.fn is not None:
            return True
        try:
            job.items = encode_all(self.pm, job.prompts, job.candidates)
        except Exception as e:  # noqa: BLE001 - the request's own error, returned to it
            job.future.set_exception(e)
            return False
        job.tokens = sum(len(it.ids) for it in job.items)
        return True

    def _next(self, timeout: float) -> Any:
        try:
            return self._q.get(timeout=timeout) if timeout > 0 else self._q.get_nowait()
        except queue.Empty:
            return None

    def _loop(self) -> None:
        carry: Any = None  # an admitted job that did not fit the previous pass, or the stop marker
        try:
            while True:
                job = carry if carry is not None else self._q.get()
                admitted, carry = job is carry, None
                if job is _STOP:
                    return
                if not admitted and not self._admit(job):
                    continue
                if job.fn is not None:
                    self._run_alone(job)
                    continue
                batch, tokens = [job], job.tokens
                deadline = time.monotonic() + self.settings.max_wait_ms / 1000
                while tokens < self.settings.max_batch_tokens:
                    nxt = self._next(deadline - time.monotonic())
                    if nxt is None:
                        break
                    if nxt is _STOP:
                        carry = nxt
                        break
                    if not self._admit(nxt):
                        continue
                    if nxt.fn is not None or tokens + nxt.tokens > self.settings.max_batch_tokens:
                        carry = nxt  # runs next: alone, or first of the next pass
                        break
                    batch.append(nxt)
                    tokens += nxt.tokens
                self._pass(batch)
        finally:
            self._fail_remaining(carry)

    def _run_alone(self, job: _Job) -> None:
        try:
            job.future.set_result(job.fn())
        except Exception as e:  # noqa: BLE001 - returned to the caller
            job.future.set_exception(e)

    def _rewards(self, batch: list[_Job]) -> list[dict[str, Any]]:
        """Each job's rewards: one pass per backbone state any job of the batch needs, over the
        items of the jobs that need it."""
        out: list[dict[str, Any]] = [{} for _ in batch]
        wanted = [set(heads_to_score(self.pm, j.heads)) for j in batch]
        for _, names in self.pm.head_groups():
            members = [k for k in range(len(batch)) if wanted[k] & set(names)]
            if not members:
                continue
            items = [it for k in members for it in batch[k].items]
            rewards = score_items(self.pm, items, heads=names, shared_prefix=self.shared_prefix,
                                  max_tokens=self.settings.forward_tokens)
            start = 0
            for k in members:
                n = len(batch[k].items)
                out[k].update({h: v[start:start + n].tolist() for h, v in rewards.items()})
                start += n
        return [{h: r[h] for h in self.pm.head_names if h in r} for r in out]

    def _pass(self, batch: list[_Job]) -> None:
        items = [it for j in batch for it in j.items]
        t0 = time.perf_counter()
        try:
            rewards = self._rewards(batch)
        except Exception as e:  # noqa: BLE001
            if len(batch) == 1:
                batch[0].future.set_exception(e)
            else:  # find the request at fault: one bad request must not fail the others
                for j in batch:
                    self._pass([j])
            return
        seconds = time.perf_counter() - t0
        for j, r in zip(batch, rewards):
            j.future.set_result(Scored(r, j.tokens))
        per_request = seconds / len(batch)
        self._per_request_s = per_request if not self._per_request_s else 0.8 * self._per_request_s + 0.2 * per_request
        if self.on_pass is not None:
            self.on_pass(len(batch), len(items), sum(j.tokens for j in batch), seconds)

    def _fail_remaining(self, carry: Any) -> None:
        """The worker is leaving (stop marker, or a fault): nothing waits on it forever."""
        with self._lock:
            self._closing = True
        pending = [carry] if isinstance(carry, _Job) else []
        while True:
            try:
                pending.append(self._q.get_nowait())
            except queue.Empty:
                break
        for job in pending:
            if job is not _STOP and not job.future.done():
                if job.future.running() or job.future.set_running_or_notify_cancel():
                    job.future.set_exception(Closed("the scoring worker stopped"))
