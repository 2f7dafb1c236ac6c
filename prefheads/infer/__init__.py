"""Inference with trained heads: rerank (best-of-N), serve (HTTP), and score files in bulk.

* :mod:`.rerank` — sample candidates and rank them by a head;
* :mod:`.serve` — the FastAPI app (:mod:`.shapes` its request and response shapes,
  :mod:`.batching` pooled passes over concurrent requests, :mod:`.promtext` its metrics);
* :mod:`.bulk` — resumable, sharded scoring of JSONL files;
* :mod:`.scoring` — one pooled pass over the rows of several requests (both of the above).
"""
