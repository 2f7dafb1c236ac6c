"""Request and response shapes of the HTTP service: prefheads' own, and the ones reranking
clients already speak.

* ours — ``/score`` ``{prompt, candidates, head?}`` and ``/rerank`` ``{prompt, n, ...}``
  (best-of-N sampling);
* the rerank shape of Cohere (v2 ``/v2/rerank``), Jina (``/v1/rerank``) and vLLM
  (``/rerank``): ``{query, documents, top_n?, return_documents?, model?}`` →
  ``{id, model, results: [{index, relevance_score, document?}], usage}``;
* vLLM's score shape (``/score``, ``/v1/score``): ``{text_1, text_2, model?}`` →
  ``{id, object: "list", created, model, data: [{index, object: "score", score}], usage}``.

Where two shapes share a path, the body's keys decide (:func:`shape_of`). A query or
``text_1`` is the user turn; a document or ``text_2`` is an assistant reply to it; scores are the
head's raw rewards (unbounded, higher is better), not probabilities. Imported only by
:mod:`prefheads.infer.serve` (it needs pydantic, from the ``serve`` extra).
"""

from __future__ import annotations

import time
import uuid
from typing import Any, Optional, Union

from pydantic import BaseModel, Field

from prefheads.infer.rerank import rank


class Message(BaseModel):
    role: str
    content: str


class ScoreRequest(BaseModel):
    """Ours: score given candidates of one prompt."""

    prompt: Union[str, list[Message]]
    candidates: list[str] = Field(min_length=1)
    head: Optional[str] = None


class SampleRequest(BaseModel):
    """Ours: sample ``n`` replies and rank them (best-of-N)."""

    prompt: Union[str, list[Message]]
    n: int = Field(8, ge=1)
    max_new_tokens: int = Field(128, ge=1)
    temperature: float = Field(0.8, ge=0)
    top_p: float = Field(0.95, gt=0, le=1)
    top_k: int = Field(50, ge=0)
    seed: Optional[int] = 0
    head: Optional[str] = None


class Document(BaseModel):
    text: str


class RerankRequest(BaseModel):
    """Cohere / Jina / vLLM rerank: rank ``documents`` as replies to ``query``."""

    query: str
    documents: list[Union[str, Document]] = Field(min_length=1)
    top_n: Optional[int] = Field(None, ge=1)
    return_documents: bool = True
    model: Optional[str] = None

    def texts(self) -> list[str]:
        return [d if isinstance(d, str) else d.text for d in self.documents]


class PairScoreRequest(BaseModel):
    """vLLM score: ``text_2`` (one or many) as replies to ``text_1`` (one, or one per reply)."""

    text_1: Union[str, list[str]]
    text_2: Union[str, list[str]]
    model: Optional[str] = None

    def pairs(self) -> tuple[list[str], list[str]]:
        """Aligned (prompts, replies); a mismatch in lengths is a ``ValueError``."""
        t1 = [self.text_1] if isinstance(self.text_1, str) else list(self.text_1)
        t2 = [self.text_2] if isinstance(self.text_2, str) else list(self.text_2)
        if not t1 or not t2:
            raise ValueError("text_1 and text_2 must not be empty")
        if len(t1) == 1:
            t1 = t1 * len(t2)
        if len(t1) != len(t2):
            raise ValueError(f"text_1 has {len(t1)} texts and text_2 {len(t2)}: give one text_1, "
                             "or one per text_2")
        return t1, t2


SHAPES = {"rerank": ("query", "documents"), "pair-score": ("text_1", "text_2")}


def shape_of(body: Any, default: str) -> str:
    """Which shape a JSON body is in: a key of :data:`SHAPES` it carries a field of, else ``default``."""
    if isinstance(body, dict):
        for name, keys in SHAPES.items():
            if any(k in body for k in keys):
                return name
    return default


def rerank_response(texts: list[str], rewards: list[float], model: str, tokens: int, top_n: int | None,
                    return_documents: bool) -> dict[str, Any]:
    """Results best first (ties keep input order), cut to ``top_n``."""
    results = []
    for i, text, r in rank(texts, rewards)[:top_n]:
        item: dict[str, Any] = {"index": i, "relevance_score": r}
        if return_documents:
            item["document"] = {"text": text}
        results.append(item)
    return {"id": f"rerank-{uuid.uuid4().hex}", "model": model, "results": results,
            "usage": {"total_tokens": tokens}}


def pair_score_response(rewards: list[float], model: str, tokens: int) -> dict[str, Any]:
    """Scores in input order."""
    return {"id": f"score-{uuid.uuid4().hex}", "object": "list", "created": int(time.time()), "model": model,
            "data": [{"index": i, "object": "score", "score": r} for i, r in enumerate(rewards)],
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}
