"""An HTTP scoring service: FastAPI app over a :class:`~prefheads.model.PreferenceModel`.

Endpoints (JSON; shapes in :mod:`prefheads.infer.shapes`, usage in docs/serving.md)::

    GET  /health     200 {"status": "ok", "model_loaded": true, ...}; 503 once shutting down
    GET  /heads      the model and every head (pooler, layer, objective, meta, adapter, folder), limits
    GET  /metrics    Prometheus text: requests, latency, passes, batch sizes, queue depth
    POST /score      ours {prompt, candidates, head?} -> candidates ranked by the head's reward;
                     or vLLM's {text_1, text_2, model?} -> {data: [{index, score}]}
    POST /v1/score   vLLM's shape only
    POST /rerank     Cohere / Jina / vLLM {query, documents, top_n?, return_documents?, model?}
                     -> {results: [{index, relevance_score, document?}]}; or ours
                     {prompt, n, max_new_tokens, temperature, top_p, top_k, seed, head?}:
                     best-of-n samples ranked by the head's reward
    POST /v1/rerank, /v2/rerank   the Cohere / Jina / vLLM shape only

On a shared path the body's keys choose the shape (``text_1``/``text_2``: vLLM; ``query``/
``documents``: rerank), so existing clients of either keep working. ``prompt`` is a user string
or a list of ``{"role", "content"}`` messages; ``model`` names a head (or the served model: the
active head; see ``served_model_names``). A request runs one backbone pass for the state its head
reads (the base model, or the head's LoRA adapter), which gives the reward of every head of that
state (``rewards``); the head chooses the ranking. ``/heads`` names each head's adapter.

Only one pass may run on the model at a time (forward hooks are per module). By default one
worker owns the model and pools concurrent requests into shared passes
(:class:`~prefheads.infer.batching.Batcher`); ``batching=False`` runs each request alone under a lock.

Errors are 4xx with a ``detail`` message: 422 for a malformed request, 413 past the size limits,
404 for an unknown head; 503 with ``Retry-After`` when the queue is full or the server is
shutting down. Needs the ``serve`` extra: ``pip install 'prefheads[serve]'``.
"""

# No ``from __future__ import annotations``: FastAPI resolves annotations at runtime.
import json
import time
from contextlib import asynccontextmanager
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Optional

if TYPE_CHECKING:
    from prefheads.model import PreferenceModel

SERVE_HINT = "the server needs fastapi and uvicorn: pip install 'prefheads[serve]'"
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)


def _imports() -> Any:
    try:
        import fastapi
        import pydantic
    except ImportError as e:
        raise ImportError(SERVE_HINT) from e
    return fastapi, pydantic


def create_app(pm: "PreferenceModel", max_candidates: int = 64, max_chars: int = 20000, max_new_tokens: int = 512,
               max_body_bytes: Optional[int] = None, batching: bool = True, batch: Any = None,
               served_model_names: Sequence[str] = ()) -> Any:
    """Build the FastAPI app serving ``pm``'s heads.

    Args:
        pm: A model with at least one head.
        max_candidates: Most candidates (documents, ``text_2`` texts) per request, and most
            samples (``n``) per sampling request.
        max_chars: Most characters of prompt plus candidates per request.
        max_new_tokens: Most tokens a sampled reply may have.
        max_body_bytes: Requests with a larger ``Content-Length`` are refused before parsing
            (default: 8 × ``max_chars`` + 64 KiB, room for JSON escapes).
        batching: Pool concurrent requests into shared passes (one worker owns the model);
            ``False``: one request at a time under a lock.
        batch: :class:`~prefheads.infer.batching.BatchSettings` of the worker (token budget, wait
            bound, queue size; device defaults otherwise).
        served_model_names: Names a peer-shape request's ``model`` may give for the active head,
            besides ``pm.model_id`` (as vLLM's ``--served-model-name``: a client written for
            another reranker keeps its model name).
    """
    fastapi, _ = _imports()
    import anyio.to_thread
    from fastapi import HTTPException, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse, PlainTextResponse
    from pydantic import ValidationError

    from prefheads.infer import promtext
    from prefheads.infer.batching import Batcher, BatchSettings, Closed, QueueFull
    from prefheads.infer.serial import Serial
    from prefheads.infer.rerank import GenerationSettings, generate_candidates, rank
    from prefheads.infer.shapes import (PairScoreRequest, RerankRequest, SampleRequest, ScoreRequest, pair_score_response,
                                  rerank_response, shape_of)
    from prefheads.types import as_prompt, check_completion

    if not pm.heads:
        raise ValueError("the server needs a model with at least one head (load_heads / add_head)")
    limit_body = max_body_bytes if max_body_bytes is not None else 8 * max_chars + 65536

    reg = promtext.Registry()
    requests_total = reg.add(promtext.Counter("prefheads_requests_total", "HTTP requests by route and status code.",
                                              ("path", "code")))
    latency = reg.add(promtext.Histogram("prefheads_request_duration_seconds", "Time to answer a request.",
                                         LATENCY_BUCKETS, ("path",)))
    rejected = reg.add(promtext.Counter("prefheads_rejected_total", "Requests refused with 503.", ("reason",)))
    pass_requests = reg.add(promtext.Histogram("prefheads_batch_requests", "Requests pooled into one backbone pass.",
                                               [2 ** k for k in range(10)]))
    pass_candidates = reg.add(promtext.Histogram("prefheads_batch_candidates", "Candidates scored in one pass.",
                                                 [2 ** k for k in range(13)]))
    pass_tokens = reg.add(promtext.Histogram("prefheads_batch_tokens", "Tokens of the sequences of one pass.",
                                             [2 ** k for k in range(6, 18)]))
    pass_seconds = reg.add(promtext.Histogram("prefheads_batch_duration_seconds", "Time of one backbone pass.",
                                              LATENCY_BUCKETS))

    def on_pass(n_requests: int, n_candidates: int, n_tokens: int, seconds: float) -> None:
        pass_requests.observe(n_requests)
        pass_candidates.observe(n_candidates)
        pass_tokens.observe(n_tokens)
        pass_seconds.observe(seconds)

    scorer = (Batcher(pm, batch, on_pass=on_pass) if batching
              else Serial(pm, on_pass=on_pass, max_queue=(batch or BatchSettings()).max_queue))
    reg.add(promtext.Gauge("prefheads_queue_depth", "Requests waiting for the model.", lambda: scorer.depth))
    reg.add(promtext.Gauge("prefheads_model_loaded", "1 while the model serves requests.", lambda: int(scorer.alive)))

    @asynccontextmanager
    async def lifespan(app: Any) -> Any:
        yield
        await anyio.to_thread.run_sync(scorer.close)  # queued requests finish first

    app = fastapi.FastAPI(title="prefheads", description="Direct Preference Head scoring", lifespan=lifespan)
    app.state.scorer = scorer
    app.state.metrics = reg

    @app.middleware("http")
    async def limit_and_count(request: Request, call_next: Any) -> Any:
        t0 = time.perf_counter()
        size = request.headers.get("content-length")
        if size is not None and size.isdigit() and int(size) > limit_body:
            response = JSONResponse({"detail": f"request body of {size} bytes exceeds the limit of {limit_body}"},
                                    status_code=413)
        else:
            try:
                response = await call_next(request)
            except Exception:  # an unhandled error is a 500 the metrics must show too
                path = getattr(request.scope.get("route"), "path", "other")
                requests_total.inc(path=path, code="500")
                latency.observe(time.perf_counter() - t0, path=path)
                raise
        route = request.scope.get("route")
        path = getattr(route, "path", "other")  # the route, not the raw URL: bounded label values
        requests_total.inc(path=path, code=str(response.status_code))
        latency.observe(time.perf_counter() - t0, path=path)
        return response

    # ------------------------------------------------------------------ checks
    async def body_of(request: Request) -> Any:
        raw = await request.body()
        if len(raw) > limit_body:  # a chunked upload carries no Content-Length for the middleware to check
            raise HTTPException(413, f"request body of {len(raw)} bytes exceeds the limit of {limit_body}")
        try:
            body = json.loads(raw or b"null")
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise RequestValidationError([{"type": "json_invalid", "loc": ("body",), "msg": f"JSON decode error: {e}",
                                           "input": {}}]) from None
        if not isinstance(body, dict):
            raise RequestValidationError([{"type": "dict_type", "loc": ("body",), "msg": "expected a JSON object",
                                           "input": body}])
        return body

    def parse(model: Any, body: dict) -> Any:
        try:
            return model.model_validate(body)
        except ValidationError as e:
            raise RequestValidationError([{**err, "loc": ("body", *err["loc"])}
                                          for err in e.errors(include_url=False)]) from None

    def prompt_of(p: Any) -> Any:
        """The request's prompt, checked as fit checks training prompts (422 otherwise)."""
        if not isinstance(p, str) and not p:
            raise HTTPException(422, "prompt: an empty message list")
        prompt = p if isinstance(p, str) else [m.model_dump() for m in p]
        try:
            as_prompt(prompt)
        except ValueError as e:
            raise HTTPException(422, f"prompt: {e}") from None
        return prompt

    def check_texts(texts: list[str], name: str) -> None:
        for i, c in enumerate(texts):
            try:
                check_completion(c, f"{name}[{i}]")
            except ValueError as e:
                raise HTTPException(422, str(e)) from None

    def check_size(n: int, chars: int, what: str = "candidates") -> None:
        if n > max_candidates:
            raise HTTPException(413, f"{n} {what} exceed the limit of {max_candidates}")
        if chars > max_chars:
            raise HTTPException(413, f"{chars} characters of prompt and {what} exceed the limit of {max_chars}")

    def prompt_chars(p: Any) -> int:
        return len(p) if isinstance(p, str) else sum(len(m.content) + len(m.role) for m in p)

    def check_head(head: Optional[str]) -> str:
        name = head or pm.active
        if name not in pm.heads:
            raise HTTPException(404, f"unknown head {name!r}; heads: {pm.head_names}")
        return name

    def head_of_model(model: Optional[str]) -> str:
        """A peer shape's ``model``: a head name, or the served model (the active head)."""
        if model is None or model == pm.model_id or model in served_model_names:
            return pm.active
        if model not in pm.heads:
            names = [pm.model_id, *served_model_names]
            raise HTTPException(404, f"unknown model {model!r}: name a head ({pm.head_names}) or the served "
                                     f"model ({names})")
        return model

    async def on_model(awaitable: Any) -> Any:
        """Await work on the model; queue and input errors become 503 and 422."""
        try:
            return await awaitable
        except QueueFull as e:
            rejected.inc(reason="queue_full")
            raise HTTPException(503, str(e), headers={"Retry-After": str(e.retry_after)}) from None
        except Closed as e:
            rejected.inc(reason="closed")
            raise HTTPException(503, str(e), headers={"Retry-After": "10"}) from None
        except ValueError as e:  # e.g. a candidate that does not fit the model's context
            raise HTTPException(422, str(e)) from None

    def ranked(candidates: list[str], rewards: dict[str, list[float]], head: str,
               extra: Optional[list[dict]] = None) -> list[dict]:
        out = []
        for k, (i, c, r) in enumerate(rank(candidates, rewards[head])):
            item = {"rank": k + 1, "index": i, "candidate": c, "reward": r,
                    "rewards": {h: float(v[i]) for h, v in rewards.items()}}
            if extra is not None:
                item.update(extra[i])
            out.append(item)
        return out

    # ------------------------------------------------------------------ handlers, per shape
    async def score_ours(req: Any) -> dict[str, Any]:
        head = check_head(req.head)
        check_size(len(req.candidates), prompt_chars(req.prompt) + sum(len(c) for c in req.candidates))
        prompt = prompt_of(req.prompt)
        check_texts(req.candidates, "candidates")
        res = await on_model(scorer.score([prompt] * len(req.candidates), req.candidates, [head]))
        return {"head": head, "ranked": ranked(req.candidates, res.rewards, head)}

    async def score_pairs(req: Any) -> dict[str, Any]:
        head = head_of_model(req.model)
        try:
            prompts, texts = req.pairs()
        except ValueError as e:
            raise HTTPException(422, str(e)) from None
        check_size(len(texts), sum(map(len, set(prompts))) + sum(map(len, texts)), "text_2 texts")
        for i, p in enumerate(prompts):
            if not p.strip():
                raise HTTPException(422, f"text_1[{i}]: an empty query")
        check_texts(texts, "text_2")
        res = await on_model(scorer.score(prompts, texts, [head]))
        return pair_score_response(res.rewards[head], head, res.tokens)

    async def rerank_documents(req: Any) -> dict[str, Any]:
        head = head_of_model(req.model)
        texts = req.texts()
        check_size(len(texts), len(req.query) + sum(map(len, texts)), "documents")
        if not req.query.strip():
            raise HTTPException(422, "query: empty")
        check_texts(texts, "documents")
        res = await on_model(scorer.score([req.query] * len(texts), texts, [head]))
        return rerank_response(texts, res.rewards[head], head, res.tokens, req.top_n, req.return_documents)

    async def sample_and_rank(req: Any) -> dict[str, Any]:
        head = check_head(req.head)
        # defaults a request did not set follow the server's limits; what it set is checked
        if "n" not in req.model_fields_set:
            req.n = min(req.n, max_candidates)
        if "max_new_tokens" not in req.model_fields_set:
            req.max_new_tokens = min(req.max_new_tokens, max_new_tokens)
        if req.n > max_candidates:
            raise HTTPException(413, f"n={req.n} exceeds the limit of {max_candidates} samples")
        if req.max_new_tokens > max_new_tokens:
            raise HTTPException(413, f"max_new_tokens={req.max_new_tokens} exceeds the limit of {max_new_tokens}")
        if prompt_chars(req.prompt) > max_chars:
            raise HTTPException(413, f"the prompt's {prompt_chars(req.prompt)} characters exceed the limit of {max_chars}")
        settings = GenerationSettings(max_new_tokens=req.max_new_tokens, temperature=req.temperature,
                                      top_p=req.top_p, top_k=req.top_k, seed=req.seed)
        prompt = prompt_of(req.prompt)
        gens = await on_model(scorer.run(lambda: generate_candidates(pm, prompt, req.n, settings)))
        gens = [g for g in gens if g.text.strip()]  # an empty sample has no reply to score
        if not gens:
            raise HTTPException(422, f"all {req.n} samples are empty (the model closed its turn at once)")
        texts = [g.text for g in gens]
        res = await on_model(scorer.score([prompt] * len(texts), texts, [head]))
        extra = [{"finished": g.finished, "n_tokens": g.n_tokens} for g in gens]
        return {"head": head, "ranked": ranked(texts, res.rewards, head, extra)}

    # ------------------------------------------------------------------ routes
    @app.get("/health")
    def health() -> Any:
        body = {"status": "ok" if scorer.alive else "unavailable", "model_loaded": True, "model": pm.model_id,
                "heads": pm.head_names, "batching": batching, "queue_depth": scorer.depth}
        return JSONResponse(body, status_code=200 if scorer.alive else 503)

    @app.get("/heads")
    def heads() -> dict[str, Any]:
        return {"model": {"id": pm.model_id, "revision": pm.revision, "reward_token": pm.chat.reward_token},
                "active": pm.active,
                "heads": [{"name": n, "pooler": h.config.pooler, "layer": h.config.reads,
                           "objective": h.config.meta.get("objective"), "meta": h.config.meta,
                           "adapter": pm.adapter_of(n), "folder": pm.head_folders.get(n)}
                          for n, h in pm.heads.items()],
                "limits": {"max_candidates": max_candidates, "max_chars": max_chars, "max_new_tokens": max_new_tokens}}

    @app.get("/metrics")
    def metrics() -> Any:
        return PlainTextResponse(reg.render(), media_type=promtext.CONTENT_TYPE)

    @app.post("/score")
    async def score(request: Request) -> dict[str, Any]:
        body = await body_of(request)
        if shape_of(body, "ours") == "pair-score":
            return await score_pairs(parse(PairScoreRequest, body))
        return await score_ours(parse(ScoreRequest, body))

    @app.post("/v1/score")
    async def score_v1(request: Request) -> dict[str, Any]:
        return await score_pairs(parse(PairScoreRequest, await body_of(request)))

    @app.post("/rerank")
    async def rerank(request: Request) -> dict[str, Any]:
        body = await body_of(request)
        if shape_of(body, "ours") == "rerank":
            return await rerank_documents(parse(RerankRequest, body))
        return await sample_and_rank(parse(SampleRequest, body))

    @app.post("/v1/rerank")
    @app.post("/v2/rerank")
    async def rerank_peer(request: Request) -> dict[str, Any]:
        return await rerank_documents(parse(RerankRequest, await body_of(request)))

    return app
