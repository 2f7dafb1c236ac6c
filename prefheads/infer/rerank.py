"""Best-of-N: sample N completions from the base model, score them with a head, rank them.

DPH never steers generation (PAPER.md section 1): the LM samples as it always does (LoRA
adapters that heads read are off while it samples), and the head only orders the samples. Each generation is scored as a finished assistant turn: it is
rendered as the assistant message of the chat template, which closes it with the reward
token (``<|im_end|>``) whether or not the sample emitted one (a sample cut by
``max_new_tokens`` gets it appended). The score of each text is therefore exactly
``pm.score(prompt, text)``.

Work is reused where exact: scoring goes through the shared-prefix engine, so the prompt is
encoded once for all N candidates. The generation's own KV cache is *not* reused: decoded text
re-tokenizes differently from the sampled ids in places, and the reward token must follow the
text, so reusing it would score something other than ``pm.score(prompt, text)``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from prefheads.types import Prompt, as_prompt

if TYPE_CHECKING:
    from prefheads.model import PreferenceModel


@dataclass
class GenerationSettings:
    """How candidates are sampled.

    Attributes:
        max_new_tokens: Longest sample, in tokens.
        temperature: Sampling temperature; 0 means greedy decoding (a single candidate).
        top_p: Nucleus sampling mass.
        top_k: Sample among the k most likely tokens (0: no limit).
        seed: Seed of the sampler (``None``: the global torch RNG, not reset).
    """

    max_new_tokens: int = 128
    temperature: float = 0.8
    top_p: float = 0.95
    top_k: int = 50
    seed: int | None = 0

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0, got {self.top_k}")


@dataclass
class Generation:
    """One sampled completion.

    Attributes:
        text: The decoded assistant text (without the end-of-turn token).
        finished: Whether the model closed its turn itself (else it hit ``max_new_tokens``).
        n_tokens: Tokens sampled (the stop token excluded).
    """

    text: str
    finished: bool
    n_tokens: int


def prompt_ids(pm: PreferenceModel, prompt: str | Prompt) -> list[int]:
    """Token ids that open the assistant turn of ``prompt`` (what generation continues)."""
    tok = pm.tokenizer
    msgs = as_prompt(prompt)
    if pm.chat.mode == "chat":
        text = tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
        return tok(text, add_special_tokens=False)["input_ids"]
    from prefheads.chat import _plain_text

    ids = tok(_plain_text(msgs, None), add_special_tokens=True)["input_ids"]
    return ids[:-1] if ids and ids[-1] == pm.chat.reward_token_id else ids


def _stop_ids(pm: PreferenceModel) -> list[int]:
    eos = pm.tokenizer.eos_token_id
    return [pm.chat.reward_token_id] + ([eos] if eos is not None and eos != pm.chat.reward_token_id else [])


@torch.no_grad()
def generate_candidates(pm: PreferenceModel, prompt: str | Prompt, n: int = 8, settings: GenerationSettings | None = None,
                        **gen: Any) -> list[Generation]:
    """Sample ``n`` completions of ``prompt`` from ``pm``'s backbone (``generate``).

    Args:
        pm: A :class:`~prefheads.model.PreferenceModel`.
        prompt: User string or message list.
        n: Number of samples (greedy decoding, ``temperature=0``, gives one).
        settings: Sampling settings; or pass their fields as keywords.
    """
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    s = settings or GenerationSettings(**gen)
    dev = next(pm.backbone.parameters()).device
    ids = torch.tensor([prompt_ids(pm, prompt)], device=dev)
    stop = _stop_ids(pm)
    pad = pm.tokenizer.pad_token_id if pm.tokenizer.pad_token_id is not None else stop[0]
    kw: dict[str, Any] = dict(max_new_tokens=s.max_new_tokens, eos_token_id=stop, pad_token_id=pad,
                              attention_mask=torch.ones_like(ids))
    if s.temperature > 0:
        kw.update(do_sample=True, temperature=s.temperature, top_p=s.top_p, top_k=s.top_k, num_return_sequences=n)
    else:
        kw.update(do_sample=False, num_return_sequences=1)
    devices = [dev.index or 0] if dev.type == "cuda" else []
    with torch.random.fork_rng(devices=devices, enabled=s.seed is not None):
        if s.seed is not None:
            torch.manual_seed(s.seed)
        with pm.reading(None):  # the base model samples, whatever adapters the heads read
            out = pm.backbone.generate(ids, **kw)
    result = []
    for row in out[:, ids.shape[1]:].tolist():
        cut = next((k for k, t in enumerate(row) if t in stop), None)
        toks = row if cut is None else row[:cut]
        text = pm.tokenizer.decode(toks, skip_special_tokens=True)
        if pm.chat.mode == "plain" and text.startswith(" "):
            text = text[1:]  # the plain layout puts one space after "Assistant:" itself
        result.append(Generation(text, cut is not None, len(toks)))
    return result


def rank(candidates: Sequence[str], rewards: Sequence[float]) -> list[tuple[int, str, float]]:
    """``(index, candidate, reward)`` best first; equal rewards keep their input order."""
    order = sorted(range(len(candidates)), key=lambda i: -rewards[i])
    return [(i, candidates[i], float(rewards[i])) for i in order]


def rerank_candidates(pm: PreferenceModel, prompt: str | Prompt, candidates: Sequence[str], head: str | None = None) -> list[tuple[str, float]]:
    """Score given candidates of one prompt with ``head`` (default: active) and rank them.

    The prompt is encoded once (shared prefix); rewards are fp32 and equal ``pm.score``.

    Returns:
        ``[(candidate, reward), ...]``, best first.
    """
    candidates = list(candidates)
    if not candidates:
        raise ValueError("no candidates to rerank")
    rewards = pm.score(prompt, candidates, head=head).tolist()
    return [(c, r) for _, c, r in rank(candidates, rewards)]


def rerank(pm: PreferenceModel, prompt: str | Prompt, n: int = 8, head: str | None = None, **gen: Any) -> list[tuple[str, float]]:
    """Best-of-N: sample ``n`` completions (:func:`generate_candidates`) and rank them by reward.

    Args:
        pm: Model with at least one head.
        prompt: User string or message list.
        n: Number of samples.
        head: Head to score with (default: the active head).
        **gen: :class:`GenerationSettings` fields (``max_new_tokens``, ``temperature``,
            ``top_p``, ``top_k``, ``seed``).

    Returns:
        ``[(text, reward), ...]``, best first.
    """
    pm._get(head)  # fail before sampling, not after
    gens = generate_candidates(pm, prompt, n, **gen)
    return rerank_candidates(pm, prompt, scorable(gens), head=head)


def scorable(gens: Sequence[Generation]) -> list[str]:
    """Texts of the samples that can be scored: an empty sample (the model closed its turn at
    once) has no reply to score and is left out; all empty is an error."""
    texts = [g.text for g in gens if g.text.strip()]
    if not texts:
        raise ValueError(f"all {len(gens)} samples are empty (the model closed its turn at once); "
                         "sample more, or at a higher temperature")
    return texts


def rerank_file(pm: PreferenceModel, path: str | os.PathLike, out: Any, head: str | None = None) -> int:
    """Rerank a JSONL of ``{"prompt", "candidates": [...]}`` lines; write one JSONL line each.

    Args:
        pm: Model with heads.
        path: Input JSONL.
        out: A writable text file object.
        head: Head to score with (default: active).

    Returns:
        Number of lines written. Output lines: ``{"prompt", "head", "ranked": [{"rank",
        "index", "candidate", "reward"}]}`` (extra input keys are kept).
    """
    head = head or pm.active
    pm._get(head)
    n = 0
    with open(path, encoding="utf-8") as f:
        for line_no, line in enumerate(f, 1):
            if not line.strip():
                continue
            where = f"{path}:{line_no}"
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{where}: invalid JSON ({e})") from None
            if not isinstance(row, dict) or "prompt" not in row or not isinstance(row.get("candidates"), list) \
                    or not row["candidates"] or not all(isinstance(c, str) for c in row["candidates"]):
                raise ValueError(f"{where}: expected {{\"prompt\": ..., \"candidates\": [non-empty list of strings]}}")
            try:
                rewards = pm.score(row["prompt"], row["candidates"], head=head).tolist()
            except (ValueError, TypeError) as e:
                raise ValueError(f"{where}: {e}") from None
            ranked = [{"rank": k + 1, "index": i, "candidate": c, "reward": r}
                      for k, (i, c, r) in enumerate(rank(row["candidates"], rewards))]
            rest = {k: v for k, v in row.items() if k != "candidates"}
            out.write(json.dumps({**rest, "head": head, "ranked": ranked}, ensure_ascii=False) + "\n")
            n += 1
    return n

