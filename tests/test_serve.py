"""The HTTP service on a tiny model: multi-head scoring, reranking, limits and errors, both ways of
running the model (batching worker, lock per request); backpressure, health, metrics, shutdown."""

from __future__ import annotations

import json
import threading
import time

import pytest
import torch
from typer.testing import CliRunner

pytest.importorskip("fastapi")
pytest.importorskip("httpx")
from fastapi.testclient import TestClient  # noqa: E402

from prefheads import PreferenceModel  # noqa: E402
from prefheads.infer.serve import create_app  # noqa: E402
from test_evaluation import tiny_pm  # noqa: E402

PROMPT = "Question: what is the capital of France?"


@pytest.fixture(scope="module")
def pm():
    pm = tiny_pm()
    pm.add_head("a", "swiglu", init_std=0.5, meta={"objective": "separable"})
    pm.add_head("b", "bert", init_std=0.5, activate=False)
    return pm


@pytest.fixture(scope="module", params=[True, False], ids=["batching", "lock"])
def client(pm, request):
    app = create_app(pm, max_candidates=4, max_chars=300, max_new_tokens=16, batching=request.param)
    yield TestClient(app)
    app.state.scorer.close()


def test_heads_lists_every_head(client):
    r = client.get("/heads")
    assert r.status_code == 200
    body = r.json()
    assert body["active"] == "a" and [h["name"] for h in body["heads"]] == ["a", "b"]
    assert body["heads"][0]["objective"] == "separable" and body["limits"]["max_candidates"] == 4
    health = client.get("/health")
    assert health.status_code == 200
    assert health.json()["status"] == "ok" and health.json()["model_loaded"] is True


def test_score_ranks_by_the_chosen_head_and_returns_every_head(client, pm):
    cands = ["Paris", "London", "Rome"]
    want = {h: pm.score(PROMPT, cands, head=h).tolist() for h in ("a", "b")}
    for head in ("a", "b", None):
        body = client.post("/score", json={"prompt": PROMPT, "candidates": cands, **({"head": head} if head else {})}).json()
        h = head or "a"
        assert body["head"] == h
        ranked = body["ranked"]
        assert [x["rank"] for x in ranked] == [1, 2, 3]
        assert [x["reward"] for x in ranked] == sorted((x["reward"] for x in ranked), reverse=True)
        for x in ranked:
            assert x["candidate"] == cands[x["index"]]
            for hh in ("a", "b"):
                assert abs(x["rewards"][hh] - want[hh][x["index"]]) < 1e-4
            assert x["reward"] == x["rewards"][h]


def test_score_accepts_message_lists(client, pm):
    msgs = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"}]
    body = client.post("/score", json={"prompt": msgs, "candidates": ["hello"]}).json()
    assert abs(body["ranked"][0]["reward"] - pm.score(msgs, "hello").item()) < 1e-4


@pytest.mark.parametrize("payload", [
    {"candidates": ["x"]},                                  # no prompt
    {"prompt": "x"},                                        # no candidates
    {"prompt": "x", "candidates": []},                      # empty list
    {"prompt": "x", "candidates": "x"},                     # not a list
    {"prompt": [{"role": "user"}], "candidates": ["x"]},    # message without content
    {"prompt": [], "candidates": ["x"]},                    # empty message list
])
def test_malformed_requests_are_422(client, payload):
    r = client.post("/score", json=payload)
    assert r.status_code == 422, r.text
    assert "detail" in r.json()


def test_size_limits_are_413_and_unknown_head_404(client):
    r = client.post("/score", json={"prompt": "x", "candidates": ["a"] * 5})
    assert r.status_code == 413 and "limit of 4" in r.json()["detail"]
    r = client.post("/score", json={"prompt": "x" * 290, "candidates": ["a" * 20]})
    assert r.status_code == 413 and "characters" in r.json()["detail"]
    r = client.post("/score", content=json.dumps({"prompt": "x", "candidates": ["a" * 100_000]}),
                    headers={"content-type": "application/json"})
    assert r.status_code == 413 and "body" in r.json()["detail"]
    r = client.post("/score", json={"prompt": "x", "candidates": ["a"], "head": "nope"})
    assert r.status_code == 404 and "nope" in r.json()["detail"] and "'a'" in r.json()["detail"]
    r = client.post("/rerank", json={"prompt": "x", "n": 5})
    assert r.status_code == 413
    r = client.post("/rerank", json={"prompt": "x", "n": 2, "max_new_tokens": 17})
    assert r.status_code == 413 and "max_new_tokens" in r.json()["detail"]
    r = client.post("/rerank", json={"prompt": "x", "n": 2, "head": "nope"})
    assert r.status_code == 404
    r = client.post("/rerank", json={"prompt": "x", "n": 2, "temperature": -1})
    assert r.status_code == 422
    # a chunked upload has no Content-Length: its size is checked when read
    chunks = (piece.encode() for piece in ['{"prompt": "x", "candidates": ["', "a" * 100_000, '"]}'])
    r = client.post("/score", content=chunks, headers={"content-type": "application/json"})
    assert r.status_code == 413 and "body" in r.json()["detail"]


def test_best_of_n_defaults_follow_the_servers_limits(client):
    """A request that leaves n and max_new_tokens out gets the server's limits (4 and 16 here),
    not a 413 for defaults (8, 128) it never asked for."""
    body = client.post("/rerank", json={"prompt": PROMPT, "seed": 1}).json()
    assert len(body["ranked"]) <= 4 and all(x["n_tokens"] <= 16 for x in body["ranked"])


def test_rerank_samples_and_ranks(client, pm):
    body = client.post("/rerank", json={"prompt": PROMPT, "n": 3, "max_new_tokens": 6, "seed": 1, "head": "b"}).json()
    assert body["head"] == "b" and len(body["ranked"]) == 3
    for x in body["ranked"]:
        assert abs(pm.score(PROMPT, x["candidate"], head="b").item() - x["reward"]) < 1e-4
        assert isinstance(x["finished"], bool) and x["n_tokens"] <= 6
    again = client.post("/rerank", json={"prompt": PROMPT, "n": 3, "max_new_tokens": 6, "seed": 1, "head": "b"}).json()
    assert again == body  # seeded


def test_app_needs_a_head():
    with pytest.raises(ValueError, match="at least one head"):
        create_app(tiny_pm())


def test_cli_serve_builds_the_app(tmp_path, monkeypatch):
    import uvicorn

    from prefheads.cli import app

    pm = tiny_pm()
    pm.backbone.save_pretrained(tmp_path / "base")
    pm.tokenizer.save_pretrained(tmp_path / "base")
    pm = PreferenceModel.from_pretrained(str(tmp_path / "base"))
    pm.add_head("h", "identity")
    pm.save_heads(tmp_path / "heads")
    seen = {}
    monkeypatch.setattr(uvicorn, "run", lambda app, host, port, **kw: seen.update(app=app, host=host, port=port))
    res = CliRunner().invoke(app, ["serve", "--heads", str(tmp_path / "heads"), "--base", str(tmp_path / "base"),
                                   "--port", "8123", "--max-candidates", "2", "--max-queue", "7",
                                   "--max-batch-tokens", "999", "--served-model-name", "rerank-v3.5"])
    assert res.exit_code == 0, res.output
    assert seen["host"] == "127.0.0.1" and seen["port"] == 8123
    c = TestClient(seen["app"])
    assert c.get("/heads").json()["heads"][0]["name"] == "h"
    assert c.post("/score", json={"prompt": "x", "candidates": ["a", "b", "c"]}).status_code == 413
    scorer = seen["app"].state.scorer
    assert (scorer.settings.max_queue, scorer.settings.max_batch_tokens) == (7, 999)
    assert c.post("/rerank", json={"model": "rerank-v3.5", "query": "x", "documents": ["a"]}).json()["model"] == "h"
    scorer.close()
    res = CliRunner().invoke(app, ["serve", "--heads", str(tmp_path / "heads"), "--base", str(tmp_path / "base"),
                                   "--no-batching"])
    assert res.exit_code == 0, res.output
    assert type(seen["app"].state.scorer).__name__ == "Serial"
    assert TestClient(seen["app"]).post("/score", json={"prompt": "x", "candidates": ["a"]}).status_code == 200
    res = CliRunner().invoke(app, ["serve", "--heads", str(tmp_path / "heads"), "--max-queue", "0"])
    assert res.exit_code != 0 and "max_queue" in res.output


def gate_worker(app):
    """Hold the batching worker on a job until the returned event is set."""
    gate, started = threading.Event(), threading.Event()
    app.state.scorer.call(lambda: (started.set(), gate.wait(30)))
    assert started.wait(30)
    return gate


def test_a_full_queue_is_503_with_retry_after_and_the_server_stays_healthy(pm):
    from prefheads.infer.batching import BatchSettings

    app = create_app(pm, batch=BatchSettings(max_queue=2, max_wait_ms=0))
    c = TestClient(app)
    gate = gate_worker(app)
    queued = [app.state.scorer.submit([PROMPT], [x]) for x in ("Paris", "Rome")]
    r = c.post("/score", json={"prompt": PROMPT, "candidates": ["Paris"]})
    assert r.status_code == 503 and "capacity" in r.json()["detail"]
    assert r.headers["retry-after"].isdigit() and int(r.headers["retry-after"]) >= 1
    assert c.post("/v1/rerank", json={"query": PROMPT, "documents": ["Paris"]}).status_code == 503
    assert c.get("/health").status_code == 200  # refusing work is not being unhealthy
    gate.set()
    got = [f.result(30).rewards["a"][0] for f in queued]
    body = c.post("/score", json={"prompt": PROMPT, "candidates": ["Paris", "Rome"]}).json()
    app.state.scorer.close()
    want = pm.score(PROMPT, ["Paris", "Rome"], head="a").tolist()
    assert got == pytest.approx(want, abs=1e-4)
    assert {x["candidate"]: x["reward"] for x in body["ranked"]} == pytest.approx(dict(zip(["Paris", "Rome"], want)), abs=1e-4)
    assert 'prefheads_rejected_total{reason="queue_full"} 2' in c.get("/metrics").text


def test_metrics_are_prometheus_text(pm):
    app = create_app(pm)
    c = TestClient(app)
    for _ in range(2):
        assert c.post("/score", json={"prompt": PROMPT, "candidates": ["Paris", "Rome"]}).status_code == 200
    assert c.post("/score", json={"prompt": PROMPT, "candidates": []}).status_code == 422
    r = c.get("/metrics")
    app.state.scorer.close()
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    text = r.text
    assert 'prefheads_requests_total{path="/score",code="200"} 2' in text
    assert 'prefheads_requests_total{path="/score",code="422"} 1' in text
    assert 'prefheads_request_duration_seconds_count{path="/score"} 3' in text
    assert "prefheads_batch_requests_count 2" in text and 'prefheads_batch_candidates_bucket{le="2"} 2' in text
    assert "# TYPE prefheads_queue_depth gauge" in text and "prefheads_queue_depth 0" in text
    assert "prefheads_model_loaded 1" in text


def test_without_batching_max_queue_and_shutdown_still_hold(pm):
    """--no-batching: requests waiting for the model lock count against max_queue (503 past
    it), and after shutdown new requests are refused as /health says."""
    from prefheads.infer.batching import BatchSettings

    app = create_app(pm, batching=False, batch=BatchSettings(max_queue=1))
    c = TestClient(app)
    scorer = app.state.scorer
    scorer._lock.acquire()  # a pass in progress
    try:
        waiting = threading.Thread(target=scorer._score, args=([PROMPT], ["Paris"]))
        waiting.start()
        for _ in range(200):
            if scorer.depth == 1:
                break
            time.sleep(0.01)
        assert scorer.depth == 1 and c.get("/health").json()["queue_depth"] == 1
        r = c.post("/score", json={"prompt": PROMPT, "candidates": ["Rome"]})
        assert r.status_code == 503 and r.headers["retry-after"].isdigit()
    finally:
        scorer._lock.release()
    waiting.join(30)
    assert c.post("/score", json={"prompt": PROMPT, "candidates": ["Rome"]}).status_code == 200
    scorer.close()
    assert c.get("/health").status_code == 503
    assert c.post("/score", json={"prompt": PROMPT, "candidates": ["Rome"]}).status_code == 503


def test_an_unhandled_error_is_counted_as_a_500(pm, monkeypatch):
    app = create_app(pm, batching=False)
    c = TestClient(app, raise_server_exceptions=False)

    def boom(*a, **k):
        raise RuntimeError("out of memory")

    monkeypatch.setattr(app.state.scorer, "score", boom)
    assert c.post("/score", json={"prompt": PROMPT, "candidates": ["Paris"]}).status_code == 500
    text = c.get("/metrics").text
    app.state.scorer.close()
    assert 'prefheads_requests_total{path="/score",code="500"} 1' in text


def test_shutdown_finishes_queued_work_and_health_says_so(pm):
    app = create_app(pm, max_candidates=4)
    with TestClient(app) as c:
        gate = gate_worker(app)
        futs = [app.state.scorer.submit([PROMPT], [x]) for x in ("Paris", "London", "Rome")]
        threading.Timer(0.2, gate.set).start()
    # leaving the block ran the app's shutdown: it waited for the queued requests
    assert all(f.done() and not f.exception() for f in futs)
    got = [f.result().rewards["a"][0] for f in futs]
    assert got == pytest.approx(pm.score(PROMPT, ["Paris", "London", "Rome"], head="a").tolist(), abs=1e-4)
    r = TestClient(app).get("/health")
    assert r.status_code == 503 and r.json()["status"] == "unavailable"
    r = TestClient(app).post("/score", json={"prompt": PROMPT, "candidates": ["Paris"]})
    assert r.status_code == 503 and "shutting down" in r.json()["detail"]


@pytest.mark.parametrize("payload, match", [
    ({"prompt": "x", "candidates": ["fine", "  "]}, "candidates\\[1\\].*empty"),
    ({"prompt": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}],
      "candidates": ["x"]}, "must end with a user turn"),
    ({"prompt": [{"role": "wizard", "content": "hi"}], "candidates": ["x"]}, "unknown role 'wizard'"),
])
def test_the_server_rejects_what_fit_rejects(client, payload, match):
    """An empty candidate, a prompt ending in an assistant turn, an unknown role: 422, as fit refuses them."""
    import re

    r = client.post("/score", json=payload)
    assert r.status_code == 422, r.text
    assert re.search(match, json.dumps(r.json()["detail"])), r.text
