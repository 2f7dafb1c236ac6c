"""The batching worker: pooled passes, exact routing, token budget, backpressure, shutdown."""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch

from prefheads.infer import batching
from prefheads.infer.batching import BatchSettings, Batcher, Closed, QueueFull
from prefheads.infer.serial import Serial

REQUESTS = [
    ("Question: what is the capital of France?", ["Paris", "London", "Rome"]),
    ("Hello world", ["Hi."]),
    ([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "yes or no?"}], ["yes", "no"]),
    ("The quick brown fox jumps over the lazy dog. " * 3, ["A.", "B.", "C.", "D."]),
    ("Sentence 1", ["Sentence 2 is positive", "negative"]),
    ("Question: what is the capital of France?", ["Paris"]),  # same prompt as the first: shared across requests
]


@pytest.fixture(scope="module")
def pm(two_head_pm):
    return two_head_pm


def offline(pm, prompt, cands):
    return {h: v for h, v in pm.score_all_heads(prompt, cands, shared_prefix=False).items()}


def assert_exact(pm, got, prompt, cands):
    """``got`` equals offline scoring; call it with no worker running (one pass at a time)."""
    want = offline(pm, prompt, cands)
    assert set(got.rewards) == set(want)
    for h, v in want.items():
        assert len(got.rewards[h]) == len(cands)
        assert torch.allclose(torch.tensor(got.rewards[h]), v, atol=1e-4), h


class Passes:
    """Records each pass as (requests, candidates, tokens)."""

    def __init__(self):
        self.seen = []

    def __call__(self, n, c, t, s):
        self.seen.append((n, c, t))


def gated(b: Batcher) -> threading.Event:
    """Hold the worker on a job until the returned event is set (requests pile up meanwhile)."""
    gate, started = threading.Event(), threading.Event()
    b.call(lambda: (started.set(), gate.wait(30)))
    assert started.wait(30)
    return gate


def test_pooled_requests_get_exactly_their_own_rewards(pm):
    passes = Passes()
    b = Batcher(pm, BatchSettings(max_wait_ms=0), on_pass=passes)
    gate = gated(b)
    futs = [b.submit([p] * len(c), c) for p, c in REQUESTS]
    gate.set()
    results = [f.result(30) for f in futs]
    b.close()
    for (p, c), got in zip(REQUESTS, results):
        assert_exact(pm, got, p, c)
    assert passes.seen[0][:2] == (len(REQUESTS), sum(len(c) for _, c in REQUESTS))  # one pass for all


def test_concurrent_clients_from_many_threads(pm):
    b = Batcher(pm, BatchSettings(max_wait_ms=5))
    jobs = REQUESTS * 4
    with ThreadPoolExecutor(8) as ex:
        results = list(ex.map(lambda pc: b.submit([pc[0]] * len(pc[1]), pc[1]).result(60), jobs))
    b.close()
    for (p, c), got in zip(jobs, results):
        assert_exact(pm, got, p, c)


def test_token_budget_bounds_each_pass(pm):
    prompt, cands = REQUESTS[0]
    tokens = sum(len(it.ids) for it in pm.encode([prompt] * 3, cands))
    passes = Passes()
    b = Batcher(pm, BatchSettings(max_batch_tokens=2 * tokens, max_wait_ms=0), on_pass=passes)
    gate = gated(b)
    futs = [b.submit([prompt] * 3, cands) for _ in range(5)]
    gate.set()
    results = [f.result(30) for f in futs]
    b.close()
    for got in results:
        assert_exact(pm, got, prompt, cands)
        assert got.tokens == tokens
    assert [n for n, _, _ in passes.seen] == [2, 2, 1]
    assert all(t <= 2 * tokens for _, _, t in passes.seen)


def test_a_bad_request_fails_alone(pm, monkeypatch):
    b = Batcher(pm, BatchSettings(max_wait_ms=0))
    gate = gated(b)
    good = b.submit(["Hello world"], ["Hi."])
    bad_prompt = b.submit([[{"role": "assistant", "content": "x"}]], ["y"])  # ends with an assistant turn
    gate.set()
    first = good.result(30)
    with pytest.raises(ValueError, match="user turn"):
        bad_prompt.result(30)

    real = batching.score_items

    def fails_on_seven(pm_, items, **kw):  # a pass that breaks only when the 7-candidate request is in it
        if len(items) >= 7:
            raise RuntimeError("pass failed")
        return real(pm_, items, **kw)

    monkeypatch.setattr(batching, "score_items", fails_on_seven)
    gate = gated(b)
    ok = [b.submit([p] * len(c), c) for p, c in REQUESTS[:2]]
    boom = b.submit(["x"] * 7, ["a"] * 7)
    gate.set()
    results = [f.result(30) for f in ok]
    with pytest.raises(RuntimeError, match="pass failed"):
        boom.result(30)
    b.close()
    monkeypatch.undo()
    assert_exact(pm, first, "Hello world", ["Hi."])
    for (p, c), got in zip(REQUESTS[:2], results):
        assert_exact(pm, got, p, c)


def test_full_queue_refuses_at_once_and_loses_nothing(pm):
    b = Batcher(pm, BatchSettings(max_queue=3, max_wait_ms=0))
    gate = gated(b)
    futs = [b.submit([p] * len(c), c) for p, c in REQUESTS[:3]]
    assert b.depth == 3
    with pytest.raises(QueueFull) as e:
        b.submit(["x"], ["y"])
    assert 1 <= e.value.retry_after <= 60 and "3 requests queued" in str(e.value)
    gate.set()
    results = [f.result(30) for f in futs] + [b.submit(["x"], ["y"]).result(30)]  # room again
    b.close()
    for (p, c), got in zip(REQUESTS[:3] + [("x", ["y"])], results):
        assert_exact(pm, got, p, c)


def test_close_finishes_queued_work_then_refuses(pm):
    b = Batcher(pm, BatchSettings(max_wait_ms=0))
    gate = gated(b)
    futs = [b.submit([p] * len(c), c) for p, c in REQUESTS]
    closer = threading.Thread(target=b.close)
    closer.start()
    while b.alive:  # close() marks the worker as leaving before it waits for the queue to drain
        pass
    with pytest.raises(Closed):
        b.submit(["x"], ["y"])
    gate.set()
    closer.join(60)
    assert not closer.is_alive()
    for (p, c), f in zip(REQUESTS, futs):
        assert_exact(pm, f.result(0), p, c)


def test_a_cancelled_request_is_skipped(pm):
    passes = Passes()
    b = Batcher(pm, BatchSettings(max_wait_ms=0), on_pass=passes)
    gate = gated(b)
    gone = b.submit(["Hello world"], ["Hi.", "Hello"])
    kept = b.submit(["Sentence 1"], ["negative"])
    assert gone.cancel()
    gate.set()
    got = kept.result(30)
    b.close()
    assert_exact(pm, got, "Sentence 1", ["negative"])
    assert passes.seen == [(1, 1, got.tokens)]


def test_async_interface_and_serial_give_the_same_results(pm):
    b, s = Batcher(pm), Serial(pm)

    async def one_each():  # Serial shares the model with the worker: never at the same time
        return [await b.score([p] * len(c), c) for p, c in REQUESTS] + [await s.score([p] * len(c), c)
                                                                        for p, c in REQUESTS]

    results = asyncio.run(one_each())
    assert asyncio.run(b.run(lambda: 41 + 1)) == 42 and asyncio.run(s.run(lambda: "x")) == "x"
    b.close()
    for (p, c), got in zip(REQUESTS * 2, results):
        assert_exact(pm, got, p, c)


def test_settings_are_checked_and_take_device_defaults():
    cpu = BatchSettings().resolved("cpu")
    assert {k: getattr(cpu, k) for k in batching.DEVICE_DEFAULTS["cpu"]} == batching.DEVICE_DEFAULTS["cpu"]
    gpu = BatchSettings(max_batch_tokens=100, max_wait_ms=0).resolved("cuda")
    assert (gpu.max_batch_tokens, gpu.max_wait_ms, gpu.forward_tokens) == (100, 0, batching.DEVICE_DEFAULTS["cuda"]["forward_tokens"])
    for bad in ({"max_batch_tokens": 0}, {"max_wait_ms": -1}, {"max_queue": 0}, {"forward_tokens": 0}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            BatchSettings(**bad)


def test_each_pass_uses_the_forward_budget(pm, monkeypatch):
    seen = []
    real = batching.score_items
    monkeypatch.setattr(batching, "score_items", lambda pm_, items, **kw: seen.append(kw["max_tokens"]) or real(pm_, items, **kw))
    b = Batcher(pm, BatchSettings(max_wait_ms=0, forward_tokens=64))
    got = [b.submit([p] * len(c), c).result(30) for p, c in REQUESTS[:2]]
    b.close()
    assert seen == [64, 64]
    for (p, c), g in zip(REQUESTS[:2], got):
        assert_exact(pm, g, p, c)  # small forwards, same rewards
