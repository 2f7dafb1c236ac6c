"""An HTTP scoring service: FastAPI app over a :class:`~prefheads.model.PreferenceModel`.

Endpoints (JSON)::

    GET  /health                     {"status": "ok"}
    GET  /heads                      the model and every head (pooler, layer, objective, meta)
    POST /score   {prompt, candidates, head?}            candidates ranked by the head's reward
    POST /rerank  {prompt, n, max_new_tokens, temperature, top_p, top_k, seed, head?}
                                     best-of-n samples ranked by the head's reward

``prompt`` is a user string or a list of ``{"role", "content"}`` messages. One backbone pass
gives every head's reward (``rewards`` of each ranked item); ``head`` (default: the active
head) only chooses the ranking. Errors are 4xx with a ``detail`` message: 422 for a malformed
request, 413 past the size limits, 404 for an unknown head. The model is used by one request
at a time (forward hooks are per module, so concurrent passes would mix their captures).

Needs the ``serve`` extra: ``pip install 'prefheads[serve]'``.
"""

# No ``from __future__ import annotations``: FastAPI must resolve the request models, which
# are local to create_app, from real (not string) annotations.
import threading
from typing import Any, Optional, Union

SERVE_HINT = "the server needs fastapi and uvicorn: pip install 'prefheads[serve]'"


def _imports() -> Any:
    try:
        import fastapi
        import pydantic
    except ImportError as e:
        raise ImportError(SERVE_HINT) from e
    return fastapi, pydantic


def create_app(pm: Any, max_candidates: int = 64, max_chars: int = 20000, max_new_tokens: int = 512,
               max_body_bytes: int | None = None) -> Any:
    """Build the FastAPI app serving ``pm``'s heads.

    Args:
        pm: A model with at least one head.
        max_candidates: Most candidates per /score request, and most samples (``n``) per /rerank.
        max_chars: Most characters of prompt plus candidates per request.
        max_new_tokens: Most tokens a /rerank sample may have.
        max_body_bytes: Requests with a larger ``Content-Length`` are refused before parsing
            (default: 8 × ``max_chars`` + 64 KiB, room for JSON escapes).
    """
    fastapi, pydantic = _imports()
    from fastapi import HTTPException, Request
    from fastapi.responses import JSONResponse
    from pydantic import BaseModel, Field

    from prefheads.rerank import GenerationSettings, generate_candidates, rank
    from prefheads.types import as_prompt, check_completion

    if not pm.heads:
        raise ValueError("the server needs a model with at least one head (load_heads / add_head)")
    limit_body = max_body_bytes if max_body_bytes is not None else 8 * max_chars + 65536
    lock = threading.Lock()

    class Message(BaseModel):
        role: str
        content: str

    class ScoreRequest(BaseModel):
        prompt: Union[str, list[Message]]
        candidates: list[str] = Field(min_length=1)
        head: Optional[str] = None

    class RerankRequest(BaseModel):
        prompt: Union[str, list[Message]]
        n: int = Field(8, ge=1)
        max_new_tokens: int = Field(128, ge=1)
        temperature: float = Field(0.8, ge=0)
        top_p: float = Field(0.95, gt=0, le=1)
        top_k: int = Field(50, ge=0)
        seed: Optional[int] = 0
        head: Optional[str] = None

    app = fastapi.FastAPI(title="prefheads", description="Direct Preference Head scoring")

    @app.middleware("http")
    async def body_limit(request: Request, call_next: Any) -> Any:
        size = request.headers.get("content-length")
        if size is not None and size.isdigit() and int(size) > limit_body:
            return JSONResponse({"detail": f"request body of {size} bytes exceeds the limit of {limit_body}"}, status_code=413)
        return await call_next(request)

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

    def check_candidates(candidates: list[str]) -> None:
        for i, c in enumerate(candidates):
            try:
                check_completion(c, f"candidates[{i}]")
            except ValueError as e:
                raise HTTPException(422, str(e)) from None

    def prompt_chars(p: Any) -> int:
        return len(p) if isinstance(p, str) else sum(len(m.content) + len(m.role) for m in p)

    def check_head(head: str | None) -> str:
        name = head or pm.active
        if name not in pm.heads:
            raise HTTPException(404, f"unknown head {name!r}; heads: {pm.head_names}")
        return name

    def ranked(candidates: list[str], rewards: dict[str, list[float]], head: str, extra: list[dict] | None = None) -> list[dict]:
        out = []
        for k, (i, c, r) in enumerate(rank(candidates, rewards[head])):
            item = {"rank": k + 1, "index": i, "candidate": c, "reward": r,
                    "rewards": {h: float(v[i]) for h, v in rewards.items()}}
            if extra is not None:
                item.update(extra[i])
            out.append(item)
        return out

    def all_rewards(prompt: Any, candidates: list[str]) -> dict[str, list[float]]:
        try:
            with lock:
                return {h: v.tolist() for h, v in pm.score_all_heads(prompt, candidates).items()}
        except ValueError as e:  # e.g. a candidate longer than the model's context
            raise HTTPException(422, str(e)) from None

    @app.get("/health")
    def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/heads")
    def heads() -> dict[str, Any]:
        return {"model": {"id": pm.model_id, "revision": pm.revision, "reward_token": pm.chat.reward_token},
                "active": pm.active,
                "heads": [{"name": n, "pooler": h.config.pooler, "layer": h.config.reads,
                           "objective": h.config.meta.get("objective"), "meta": h.config.meta}
                          for n, h in pm.heads.items()],
                "limits": {"max_candidates": max_candidates, "max_chars": max_chars, "max_new_tokens": max_new_tokens}}

    @app.post("/score")
    def score(req: ScoreRequest) -> dict[str, Any]:
        head = check_head(req.head)
        if len(req.candidates) > max_candidates:
            raise HTTPException(413, f"{len(req.candidates)} candidates exceed the limit of {max_candidates}")
        chars = prompt_chars(req.prompt) + sum(len(c) for c in req.candidates)
        if chars > max_chars:
            raise HTTPException(413, f"{chars} characters of prompt and candidates exceed the limit of {max_chars}")
        prompt = prompt_of(req.prompt)
        check_candidates(req.candidates)
        rewards = all_rewards(prompt, req.candidates)
        return {"head": head, "ranked": ranked(req.candidates, rewards, head)}

    @app.post("/rerank")
    def rerank(req: RerankRequest) -> dict[str, Any]:
        head = check_head(req.head)
        if req.n > max_candidates:
            raise HTTPException(413, f"n={req.n} exceeds the limit of {max_candidates} samples")
        if req.max_new_tokens > max_new_tokens:
            raise HTTPException(413, f"max_new_tokens={req.max_new_tokens} exceeds the limit of {max_new_tokens}")
        if prompt_chars(req.prompt) > max_chars:
            raise HTTPException(413, f"the prompt's {prompt_chars(req.prompt)} characters exceed the limit of {max_chars}")
        settings = GenerationSettings(max_new_tokens=req.max_new_tokens, temperature=req.temperature,
                                      top_p=req.top_p, top_k=req.top_k, seed=req.seed)
        prompt = prompt_of(req.prompt)
        with lock:
            gens = generate_candidates(pm, prompt, req.n, settings)
        gens = [g for g in gens if g.text.strip()]  # an empty sample has no reply to score
        if not gens:
            raise HTTPException(422, f"all {req.n} samples are empty (the model closed its turn at once)")
        texts = [g.text for g in gens]
        rewards = all_rewards(prompt, texts)
        extra = [{"finished": g.finished, "n_tokens": g.n_tokens} for g in gens]
        return {"head": head, "ranked": ranked(texts, rewards, head, extra)}

    return app
