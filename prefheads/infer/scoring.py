"""Every head's reward for already-encoded candidates, from one backbone pass per group of heads
(and a log-prob-only pass over the raw view for heads that add ``raw:`` scores).

:meth:`PreferenceModel.score_all_heads <prefheads.model.PreferenceModel.score_all_heads>` encodes
and scores in one call. Callers that encode first — to check each request on its own, count its
tokens, and only then pool several requests into one pass (the batching server, bulk scoring) —
score the pooled items here, over the same public pieces: the heads' groups and layers, the
engine, and each head's forward.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch

from prefheads.chat import Encoded
from prefheads.engine import extract
from prefheads.types import Prompt

if TYPE_CHECKING:
    from prefheads.model import PreferenceModel


def encode_all(pm: PreferenceModel, prompts: Sequence[str | Prompt], candidates: Sequence[str]) -> list[Encoded]:
    """Tokenize aligned prompts and candidates as ``pm`` scores them (its truncation policy);
    where a head adds ``raw:`` scores, each item also carries its raw view (``Encoded.raw``)."""
    items = pm.encode(list(prompts), list(candidates))
    if pm.heads and pm.needs_raw_view(pm.head_names):
        from prefheads.rawtext import encode_raw

        for i, (it, p, c) in enumerate(zip(items, prompts, candidates)):
            it.raw = encode_raw(pm.tokenizer, p, c, max_length=pm.max_length, name=f"item {i}", truncation=pm.truncation)
    return items


@torch.no_grad()
def score_items(pm: PreferenceModel, items: list[Encoded], *, heads: Sequence[str] | None = None,
                shared_prefix: bool | str = "auto", max_tokens: int | None = None) -> dict[str, torch.Tensor]:
    """Rewards ``{head: [N]}`` (fp32) of the heads of ``pm`` (default: every head) for encoded ``items``.

    Equal to ``pm.score_all_heads`` on the same prompts and candidates: one backbone pass per
    group of heads reading the same state (the base model, or one adapter), which reads the
    hidden states (and log-probs) every head of the group needs.

    Args:
        pm: A :class:`~prefheads.model.PreferenceModel` with at least one head.
        items: Encoded candidates (:func:`encode_all`); prompts may differ between items.
        heads: The heads to score (default: all); only their groups' passes run.
        shared_prefix: ``True``, ``False`` or ``"auto"`` (see :func:`prefheads.engine.extract`).
        max_tokens: Padded tokens per forward (default: ``pm.max_tokens``). The engine sorts the
            items by length and fills each forward up to this budget, so a smaller one keeps
            sequences of very different lengths apart (less padding).
    """
    if not pm.heads:
        raise ValueError("no head attached")
    from prefheads.lmscores import score_table
    from prefheads.rawtext import raw_logprobs

    chars = torch.tensor([it.n_chars for it in items], dtype=torch.float64)

    out = {}
    for adapter, names in pm.head_groups(heads):
        with pm.reading(adapter):
            feats = extract(pm.backbone, pm.profile, items, pm.layers_for(names), pad_id=pm.tokenizer.pad_token_id or 0,
                            logprobs=pm.needs_logprobs(names), shared_prefix=shared_prefix,
                            max_tokens=max_tokens or pm.max_tokens)
            if pm.needs_raw_view(names):  # in the same backbone state as the group's own pass
                if any(it.raw is None for it in items):
                    raise ValueError(f"heads {names} add raw-view scores: encode the items with encode_all")
                feats.raw_logprob_sum, feats.raw_n_tokens = raw_logprobs(
                    pm.backbone, pm.profile, pm.tokenizer, [], [], items=[it.raw for it in items],
                    max_tokens=max_tokens or pm.max_tokens)
        for name in names:
            head = pm.heads[name]
            was = head.training
            head.eval()  # dropout off; restored so a head in training stays in training
            try:
                # a log-prob-aware head adds the LM's own score of each item, from its group's pass
                scores = score_table(head.config.score_input, feats, chars) if head.uses_scores else None
                out[name] = pm(feats.states, name, scores)
            finally:
                head.train(was)
    return {name: out[name] for name in (pm.head_names if heads is None else heads)}
