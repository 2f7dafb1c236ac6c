"""The *raw* view of a candidate: the prompt's plain text followed by the answer, no chat template.

A log-prob-aware head (:mod:`prefheads.lmscores`) may add the LM's scores of a candidate read
two ways: inside the chat turn the head's hidden state comes from, and as the raw text a base
model was trained on, laid out as lm-evaluation-harness lays out a multiple-choice request::

    context = the prompt's text       ("Question: ...\\nAnswer:" for the ``lm-eval`` templates)
    continuation = " " + completion   (the harness's target delimiter)

encoded jointly and split where the context's own encoding ends (``TemplateLM._encode_pair`` of
lm-evaluation-harness 0.4.13; :func:`encode_pair`; the special-token rules are described in
:mod:`prefheads.eval.lmeval`). For a prompt that is one user message the
context is that message's text, so the raw view's summed log-prob *is* the harness's ``acc``
score of the same question; a longer conversation is rendered in the plain layout of
:mod:`prefheads.chat` (``User: ...\\n\\nAssistant: ...``). Only log-probs are read from this view.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from prefheads.chat import Encoded, TooLongError, _plain_text
from prefheads.types import Prompt, as_prompt, check_completion

DELIMITER = " "
"""Put between the context and the answer (lm-evaluation-harness's ``target_delimiter``)."""


def prefix_token_id(tokenizer: Any, override: int | None = None) -> int | None:
    """The harness's prefix token: ``override``, else BOS, else EOS."""
    if override is not None:
        return override
    return tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id


def tok_encode(tokenizer: Any, text: str, *, add_bos: bool | None = None, prefix_id: int | None = None,
               add_special_tokens: bool | None = None) -> list[int]:
    """Token ids of ``text`` as ``HFLM.tok_encode`` makes them (see module docstring).

    Args:
        tokenizer: A Hugging Face tokenizer.
        text: The string.
        add_bos: HFLM's ``add_bos_token`` (``None``: the tokenizer's default).
        prefix_id: The prefix token id (its text at the start of ``text`` turns specials off).
        add_special_tokens: An explicit setting, which wins over both (as in the harness).
    """
    if add_special_tokens is None:
        special = add_bos
        if prefix_id is not None and text.startswith(tokenizer.decode(prefix_id)):
            special = False
    else:
        special = add_special_tokens
    ids = list(tokenizer.encode(text) if special is None else tokenizer.encode(text, add_special_tokens=special))
    bos = tokenizer.bos_token_id
    if special is True and add_bos and bos is not None and (not ids or ids[0] != bos):
        ids = [bos, *ids]  # HFLM passes add_bos_token to the tokenizer, which then adds it
    return ids


def encode_pair(tokenizer: Any, context: str, continuation: str, *, add_bos: bool | None = None,
                prefix_id: int | None = None) -> tuple[list[int], list[int], bool]:
    """``(context_ids, continuation_ids, boundary_mismatch)`` of one harness request.

    ``boundary_mismatch`` is true where the joint encoding does not start with the context's
    own encoding (the ids returned are still the harness's: see module docstring).

    Raises:
        ValueError: If the continuation gets no tokens of its own.
    """
    if context == "":
        cont = tok_encode(tokenizer, continuation, add_special_tokens=False)
        if prefix_id is None:
            raise ValueError("an empty context needs a prefix token (BOS or EOS)")
        if cont and cont[0] == prefix_id:
            return cont[:1], cont[1:], False
        return [prefix_id], cont, False
    n = len(context) - len(context.rstrip())
    if n:  # trailing whitespace belongs to the continuation
        context, continuation = context[:-n], context[-n:] + continuation
    whole = tok_encode(tokenizer, context + continuation, add_bos=add_bos, prefix_id=prefix_id)
    ctx = tok_encode(tokenizer, context, add_bos=add_bos, prefix_id=prefix_id)
    cont = whole[len(ctx):]
    if not cont:
        raise ValueError(f"continuation {continuation!r} gets no tokens of its own after context {context[-40:]!r}")
    return ctx, cont, whole[: len(ctx)] != ctx


def raw_context(prompt: str | Prompt) -> str:
    """The raw view's context: a lone user message's text, else the conversation in the plain layout."""
    msgs = as_prompt(prompt)
    if len(msgs) == 1 and msgs[0]["role"] == "user":
        return msgs[0]["content"]
    return _plain_text(msgs, None)


def encode_raw(tokenizer: Any, prompt: str | Prompt, completion: str, *, max_length: int | None = None,
               name: str = "example", truncation: str = "left") -> Encoded:
    """One candidate in the raw view (``ids = context + continuation``, ``prompt_len`` = the
    context's tokens).

    A sequence longer than ``max_length`` loses what the chat view's ``truncation`` policy says
    (:func:`prefheads.chat.encode`): ``"left"`` its oldest context tokens (the harness keeps the
    last ``max_length`` tokens too), ``"right"`` the end of the answer, ``"error"`` nothing.

    Raises:
        ValueError: An answer that gets no tokens of its own, or that alone exceeds ``max_length``.
        TooLongError: A longer sequence under ``truncation="error"``, or a context that fills
            the window under ``"right"``.
    """
    check_completion(completion, f"{name}: completion")
    ctx, cont, _ = encode_pair(tokenizer, raw_context(prompt), DELIMITER + completion,
                               prefix_id=prefix_token_id(tokenizer))
    ids, plen = ctx + cont, len(ctx)
    truncated = 0
    if max_length is not None and len(ids) > max_length:
        truncated = len(ids) - max_length
        if truncation == "error":
            raise TooLongError(f"{name}: {len(ids)} tokens exceed the model's context of {max_length} in the raw view "
                               "(truncation='error')")
        if truncation == "right":
            if plen >= max_length:
                raise TooLongError(f"{name}: the raw view's context alone ({plen} tokens) fills max_length={max_length}")
            return Encoded(ids[:max_length], plen, truncated, len(completion))
        if truncated >= plen:
            raise ValueError(f"{name}: the answer alone exceeds max_length={max_length} in the raw view")
        ids, plen = ids[truncated:], plen - truncated
    return Encoded(ids, plen, truncated, len(completion))


def encode_raw_all(tokenizer: Any, prompts: Sequence[str | Prompt], completions: Sequence[str], *,
                   max_length: int | None = None, truncation: str = "left") -> list[Encoded]:
    """:func:`encode_raw` of every (prompt, completion), in order."""
    return [encode_raw(tokenizer, p, c, max_length=max_length, name=f"candidate {i}", truncation=truncation)
            for i, (p, c) in enumerate(zip(prompts, completions))]


@torch.no_grad()
def raw_logprobs(backbone: Any, profile: Any, tokenizer: Any, prompts: Sequence[str | Prompt],
                 completions: Sequence[str], *, items: Sequence[Encoded] | None = None,
                 max_length: int | None = None, max_tokens: int | None = None,
                 truncation: str = "left") -> tuple[torch.Tensor, torch.Tensor]:
    """``(logprob_sum [N], n_tokens [N])`` of every completion in the raw view: one shared-prefix
    pass of ``backbone`` (log-probs only); ``items`` if already encoded (:func:`encode_raw_all`)."""
    from prefheads.engine import extract
    from prefheads.hooks import FINAL

    if items is None:
        items = encode_raw_all(tokenizer, prompts, completions, max_length=max_length, truncation=truncation)
    f = extract(backbone, profile, list(items), [FINAL], pad_id=tokenizer.pad_token_id or 0, logprobs=True,
                shared_prefix=True, **({"max_tokens": max_tokens} if max_tokens else {}))
    return f.logprob_sum, f.n_tokens
