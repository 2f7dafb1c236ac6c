"""The rerank and score shapes other rerankers speak, served beside ours.

Each request body below is written as the peer's API documentation shows it (the source is
named above each one); the responses are checked against the fields those documents describe
and against offline scoring (the query as the user turn, each document as a reply).
"""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("fastapi")
pytest.importorskip("httpx")
from fastapi.testclient import TestClient  # noqa: E402

from prefheads.infer.serve import create_app  # noqa: E402
from test_evaluation import tiny_pm  # noqa: E402

# Cohere API reference, "Rerank V2" (POST https://api.cohere.com/v2/rerank), request example
COHERE_V2 = {
    "model": "rerank-v3.5",
    "query": "What is the capital of the United States?",
    "top_n": 3,
    "documents": [
        "Carson City is the capital city of the American state of Nevada.",
        "The Commonwealth of the Northern Mariana Islands is a group of islands in the Pacific Ocean. Its capital is Saipan.",
        "Washington, D.C. (also known as simply Washington or D.C., and officially as the District of Columbia) is the capital of the United States. It is a federal district.",
        "Capitalization or capitalisation in English grammar is the use of a capital letter at the start of a word. English usage varies from capitalization in other languages.",
        "Capital punishment has existed in the United States since beforethe United States was a country. As of 2017, capital punishment is legal in 30 of the 50 states.",
    ],
}

# Jina AI Reranker API (POST https://api.jina.ai/v1/rerank), the example on jina.ai/reranker,
# abridged to its first four documents
JINA = {
    "model": "jina-reranker-v2-base-multilingual",
    "query": "Organic skincare products for sensitive skin",
    "top_n": 3,
    "documents": [
        "Organic skincare for sensitive skin with aloe vera and chamomile: Imagine the soothing embrace of nature with our organic skincare range, crafted specifically for sensitive skin. Infused with the calming properties of aloe vera and chamomile, each product provides gentle nourishment and protection. Say goodbye to irritation and hello to a glowing, healthy complexion.",
        "New makeup trends focus on bold colors and innovative techniques: Step into the world of cutting-edge beauty with this seasons makeup trends. Bold, vibrant colors and groundbreaking techniques are redefining the art of makeup. From neon eyeliners to holographic highlighters, unleash your creativity and make a statement with every look.",
        "Bio-Hautpflege für empfindliche Haut mit Aloe Vera und Kamille: Erleben Sie die wohltuende Wirkung unserer Bio-Hautpflege, speziell für empfindliche Haut entwickelt. Mit den beruhigenden Eigenschaften von Aloe Vera und Kamille pflegen und schützen unsere Produkte Ihre Haut auf natürliche Weise. Verabschieden Sie sich von Hautirritationen und genießen Sie einen strahlenden Teint.",
        "Neue Make-up-Trends setzen auf kräftige Farben und innovative Techniken: Tauchen Sie ein in die Welt der modernen Schönheit mit den neuesten Make-up-Trends. Kräftige, lebendige Farben und innovative Techniken setzen neue Maßstäbe. Von auffälligen Eyelinern bis hin zu holografischen Highlightern – lassen Sie Ihrer Kreativität freien Lauf und setzen Sie jedes Mal ein Statement.",
    ],
}

# vLLM docs, "OpenAI-Compatible Server" > "Re-rank API" (POST /v1/rerank), example request
VLLM_RERANK = {
    "model": "BAAI/bge-reranker-base",
    "query": "What is the capital of France?",
    "documents": ["The capital of Brazil is Brasilia.", "The capital of France is Paris.", "Horses and cows are both animals"],
}

# vLLM docs, "Score API" (POST /score): single pair, one text_1 with a list of text_2, and lists
VLLM_SCORE_SINGLE = {"model": "BAAI/bge-reranker-v2-m3", "encoding_format": "float",
                     "text_1": "What is the capital of France?", "text_2": "The capital of France is Paris."}
VLLM_SCORE_ONE_TO_MANY = {"model": "BAAI/bge-reranker-v2-m3", "text_1": "What is the capital of France?",
                          "text_2": ["The capital of Brazil is Brasilia.", "The capital of France is Paris."]}
VLLM_SCORE_PAIRS = {"model": "BAAI/bge-reranker-v2-m3",
                    "encoding_format": "float",
                    "text_1": ["What is the capital of Brazil?", "What is the capital of France?"],
                    "text_2": ["The capital of Brazil is Brasilia.", "The capital of France is Paris."]}

NAMES = ["rerank-v3.5", "jina-reranker-v2-base-multilingual", "BAAI/bge-reranker-base", "BAAI/bge-reranker-v2-m3"]


@pytest.fixture(scope="module")
def pm():
    pm = tiny_pm()
    pm.add_head("helpful", "swiglu", init_std=0.5)
    pm.add_head("short", "bert", init_std=0.5, activate=False)
    return pm


@pytest.fixture(scope="module", params=[True, False], ids=["batching", "lock"])
def client(pm, request):
    app = create_app(pm, max_candidates=8, batching=request.param, served_model_names=NAMES)
    yield TestClient(app)
    app.state.scorer.close()


def offline(pm, query, docs, head="helpful"):
    return pm.score(query, docs, head=head, shared_prefix=False).tolist()


def check_rerank(pm, body, req, top_n, with_documents):
    docs = [d if isinstance(d, str) else d["text"] for d in req["documents"]]
    want = offline(pm, req["query"], docs)
    results = body["results"]
    assert len(results) == top_n
    assert [r["relevance_score"] for r in results] == sorted((r["relevance_score"] for r in results), reverse=True)
    best = sorted(range(len(docs)), key=lambda i: -want[i])[:top_n]
    assert [r["index"] for r in results] == best
    for r in results:
        assert abs(r["relevance_score"] - want[r["index"]]) < 1e-4
        assert (r.get("document") == {"text": docs[r["index"]]}) if with_documents else "document" not in r
    assert body["model"] == "helpful" and body["usage"]["total_tokens"] > 0 and body["id"]


@pytest.mark.parametrize("path", ["/rerank", "/v1/rerank", "/v2/rerank"])
def test_cohere_v2_example(client, pm, path):
    r = client.post(path, json=COHERE_V2)
    assert r.status_code == 200, r.text
    check_rerank(pm, r.json(), COHERE_V2, top_n=3, with_documents=True)


def test_jina_example_with_strings_and_text_objects(client, pm):
    r = client.post("/v1/rerank", json=JINA)
    assert r.status_code == 200, r.text
    check_rerank(pm, r.json(), JINA, top_n=3, with_documents=True)
    as_objects = {**JINA, "documents": [{"text": d} for d in JINA["documents"]], "return_documents": False}
    r = client.post("/v1/rerank", json=as_objects)
    assert r.status_code == 200, r.text
    check_rerank(pm, r.json(), as_objects, top_n=3, with_documents=False)


def test_vllm_rerank_example_returns_every_document(client, pm):
    r = client.post("/rerank", json=VLLM_RERANK)
    assert r.status_code == 200, r.text
    check_rerank(pm, r.json(), VLLM_RERANK, top_n=3, with_documents=True)


@pytest.mark.parametrize("path", ["/score", "/v1/score"])
@pytest.mark.parametrize("req", [VLLM_SCORE_SINGLE, VLLM_SCORE_ONE_TO_MANY, VLLM_SCORE_PAIRS],
                         ids=["single", "one-to-many", "pairs"])
def test_vllm_score_examples(client, pm, path, req):
    r = client.post(path, json=req)
    assert r.status_code == 200, r.text
    body = r.json()
    t2 = [req["text_2"]] if isinstance(req["text_2"], str) else req["text_2"]
    t1 = [req["text_1"]] * len(t2) if isinstance(req["text_1"], str) else req["text_1"]
    want = pm.score(t1, t2, head="helpful", shared_prefix=False).tolist()
    assert body["object"] == "list" and body["model"] == "helpful" and isinstance(body["created"], int)
    assert [d["index"] for d in body["data"]] == list(range(len(t2)))  # input order, not ranked
    assert all(d["object"] == "score" for d in body["data"])
    assert torch.allclose(torch.tensor([d["score"] for d in body["data"]]), torch.tensor(want), atol=1e-4)
    assert body["usage"]["total_tokens"] > 0


def test_model_names_a_head_and_an_unknown_model_is_404(client, pm):
    r = client.post("/v1/rerank", json={**VLLM_RERANK, "model": "short"})
    assert r.status_code == 200 and r.json()["model"] == "short"
    want = offline(pm, VLLM_RERANK["query"], VLLM_RERANK["documents"], head="short")
    assert {x["index"]: x["relevance_score"] for x in r.json()["results"]} == pytest.approx(dict(enumerate(want)), abs=1e-4)
    no_model = {k: v for k, v in VLLM_RERANK.items() if k != "model"}
    assert client.post("/v1/rerank", json=no_model).json()["model"] == "helpful"
    for path, body in (("/v1/rerank", {**VLLM_RERANK, "model": "gpt-4"}), ("/score", {**VLLM_SCORE_SINGLE, "model": "gpt-4"})):
        r = client.post(path, json=body)
        assert r.status_code == 404
        assert "'gpt-4'" in r.json()["detail"] and "'helpful'" in r.json()["detail"]  # names what is served


@pytest.mark.parametrize("path, body, code", [
    ("/v1/rerank", {"query": "q", "documents": []}, 422),
    ("/v1/rerank", {"query": "q"}, 422),
    ("/v1/rerank", {"documents": ["a"]}, 422),
    ("/v1/rerank", {"query": "q", "documents": ["a"], "top_n": 0}, 422),
    ("/v1/rerank", {"query": "q", "documents": [{"txt": "a"}]}, 422),
    ("/v1/rerank", {"query": "q", "documents": ["   "]}, 422),
    ("/v1/rerank", {"query": "q", "documents": ["a"] * 9}, 413),
    ("/score", {"text_1": ["a", "b", "c"], "text_2": ["x", "y"]}, 422),
    ("/score", {"text_1": "a"}, 422),
    ("/v1/score", {"text_1": "a", "text_2": []}, 422),
    ("/rerank", [1, 2], 422),
])
def test_bad_peer_requests_are_clear_errors(client, path, body, code):
    r = client.post(path, json=body)
    assert r.status_code == code, r.text
    assert r.json()["detail"]


def test_invalid_json_is_422(client):
    r = client.post("/v1/rerank", content=b"{not json", headers={"content-type": "application/json"})
    assert r.status_code == 422 and "JSON" in str(r.json()["detail"])


def test_top_n_past_the_documents_returns_them_all(client):
    r = client.post("/v1/rerank", json={**VLLM_RERANK, "top_n": 10})
    assert r.status_code == 200 and len(r.json()["results"]) == 3
