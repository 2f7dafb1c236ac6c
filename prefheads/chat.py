"""Rendering prompts and completions into token ids, and finding the reward token.

The reward is read at the end-of-turn token that closes the final assistant message
(``<|im_end|>`` for ChatML). It is detected from the tokenizer's chat template. Tokenizers
without a template use a documented *plain* layout instead::

    [system]\\n\\nUser: {user}\\n\\nAssistant: {completion}<eos>

and the reward is read at the EOS token, which a pretrained base model has seen at the end of
every document (never a freshly added, untrained token).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

from prefheads.types import Prompt, as_prompt, check_completion

_SENTINEL = "PREFHEADS_SENTINEL_7Q"


TRUNCATION = ("left", "right", "error")


class RewardTokenError(ValueError):
    """A sequence has no reward token where one is required."""


class TooLongError(ValueError):
    """A sequence longer than the model's context under ``truncation="error"`` (or one that no
    policy can fit: an answer longer than the context on its own)."""


@dataclass(frozen=True)
class ChatFormat:
    """How sequences are laid out for one tokenizer.

    Attributes:
        mode: ``"chat"`` (tokenizer chat template) or ``"plain"`` (fallback layout).
        reward_token: The token the reward is read at.
        reward_token_id: Its id.
        fingerprint: Hash of the template, reward token and vocabulary size; stored with heads.
    """

    mode: str
    reward_token: str
    reward_token_id: int
    fingerprint: str


def _special_ids(tok: Any) -> set[int]:
    ids = set(tok.all_special_ids)
    for i, t in getattr(tok, "added_tokens_decoder", {}).items():
        if getattr(t, "special", False):
            ids.add(int(i))
    return ids


def detect_format(tokenizer: Any, end_of_turn: str | None = None, force_plain: bool = False) -> ChatFormat:
    """Find the reward token of ``tokenizer``.

    Args:
        tokenizer: A Hugging Face tokenizer.
        end_of_turn: The family's end-of-turn token from its zoo profile, if any; used only
            when the template's own turn end cannot be detected.
        force_plain: Use the plain layout even if a chat template exists.
    """
    template = getattr(tokenizer, "chat_template", None)
    if template and not force_plain:
        msgs = [{"role": "user", "content": "u"}, {"role": "assistant", "content": _SENTINEL}]
        text = tokenizer.apply_chat_template(msgs, tokenize=False)
        tail = text.split(_SENTINEL, 1)[1] if _SENTINEL in text else ""
        special = _special_ids(tokenizer)
        for tid in tokenizer(tail, add_special_tokens=False)["input_ids"]:
            if tid in special:
                tok_str = tokenizer.convert_ids_to_tokens(tid)
                return ChatFormat("chat", tok_str, tid, _fingerprint(tokenizer, "chat", tok_str))
        if end_of_turn and end_of_turn in tail:
            tid = tokenizer.convert_tokens_to_ids(end_of_turn)
            return ChatFormat("chat", end_of_turn, tid, _fingerprint(tokenizer, "chat", end_of_turn))
    eos = tokenizer.eos_token
    if eos is None:
        raise RewardTokenError(
            "the tokenizer has neither a chat template with an end-of-turn token nor an EOS token: "
            "prefheads cannot place the reward token"
        )
    return ChatFormat("plain", eos, tokenizer.eos_token_id, _fingerprint(tokenizer, "plain", eos))


def _fingerprint(tok: Any, mode: str, reward_token: str) -> str:
    h = hashlib.sha256()
    h.update(mode.encode())
    h.update((getattr(tok, "chat_template", None) or "").encode() if mode == "chat" else b"plain")
    h.update(reward_token.encode())
    h.update(str(len(tok)).encode())
    h.update(str(tok("Hello world, prefheads!", add_special_tokens=False)["input_ids"]).encode())
    return h.hexdigest()[:16]


def _plain_text(prompt: Prompt, completion: str | None) -> str:
    parts = []
    for m in prompt:
        role = m["role"]
        if role == "system":
            parts.append(m["content"])
        else:
            parts.append(("User: " if role == "user" else "Assistant: ") + m["content"])
    text = "\n\n".join(parts) + "\n\nAssistant:"
    return text if completion is None else text + " " + completion


@dataclass
class Encoded:
    """One candidate sequence.

    Attributes:
        ids: Token ids, ending at the reward token.
        prompt_len: Number of leading ids that are the prompt (identical for every candidate
            of one prompt; the shared prefix). ``ids[prompt_len:]`` is the completion.
        truncated: Tokens dropped to fit ``max_length`` (from the left of the prompt, or from
            the end of the completion under ``truncation="right"``).
        n_chars: Characters of the completion text (per-character log-prob scores).
        raw: The same candidate in the raw view (:mod:`prefheads.rawtext`), where a head that
            adds ``raw:`` scores will score it.
    """

    ids: list[int]
    prompt_len: int
    truncated: int = 0
    n_chars: int = 0
    raw: "Encoded | None" = field(default=None, compare=False, repr=False)


def _lcp(a: list[int], b: list[int]) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


def encode(
    tokenizer: Any,
    fmt: ChatFormat,
    prompt: str | Prompt,
    completion: str,
    *,
    max_length: int | None = None,
    name: str = "example",
    truncation: str = "left",
) -> Encoded:
    """Tokenize one (prompt, completion) pair up to and including its reward token.

    Args:
        tokenizer: The backbone's tokenizer.
        fmt: Its :class:`ChatFormat`.
        prompt: User string or message list (ending with a user turn).
        completion: Assistant text to score.
        max_length: Longest allowed sequence.
        name: Identifier used in error messages.
        truncation: What a longer sequence loses: ``"left"`` (default) the oldest prompt tokens
            after the first, so the answer and the reward token survive; ``"right"`` the end of
            the answer (the reward token is kept as the last token); ``"error"`` nothing: it
            raises :class:`TooLongError`. ``Encoded.truncated`` counts the tokens dropped.

    Raises:
        RewardTokenError: if the rendered sequence holds no reward token.
        TooLongError: see ``truncation``.
        PromptError: a prompt that does not end with a user turn, an unknown role, an empty
            completion.
    """
    if truncation not in TRUNCATION:
        raise ValueError(f"truncation must be one of {', '.join(TRUNCATION)}, got {truncation!r}")
    msgs = as_prompt(prompt)
    check_completion(completion, f"{name}: completion")
    if fmt.mode == "chat":
        full = tokenizer.apply_chat_template(msgs + [{"role": "assistant", "content": completion}], tokenize=False)
        head = tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
        ids = tokenizer(full, add_special_tokens=False)["input_ids"]
        pids = tokenizer(head, add_special_tokens=False)["input_ids"]
        try:
            cut = len(ids) - 1 - ids[::-1].index(fmt.reward_token_id)
        except ValueError:
            raise RewardTokenError(
                f"{name}: the rendered sequence has no reward token {fmt.reward_token!r}"
            ) from None
        ids = ids[: cut + 1]
    else:
        ids = tokenizer(_plain_text(msgs, completion), add_special_tokens=True)["input_ids"]
        pids = tokenizer(_plain_text(msgs, None), add_special_tokens=True)["input_ids"]
        if ids and ids[-1] == fmt.reward_token_id:
            ids = ids[:-1]
        ids = ids + [fmt.reward_token_id]
    # Where the completion's first token merges with the prompt's tail, the shared prefix is
    # the common part only, so candidates are still encoded exactly as in full.
    plen = min(_lcp(ids, pids), len(ids) - 1)
    truncated = 0
    if max_length is not None and len(ids) > max_length:
        truncated = len(ids) - max_length
        if truncation == "error":
            raise TooLongError(f"{name}: {len(ids)} tokens exceed the model's context of {max_length} "
                               "(truncation='error'; use 'left' or 'right' to cut it)")
        if truncation == "right":
            if plen + 1 >= max_length:
                raise TooLongError(f"{name}: the prompt alone ({plen} tokens) fills the context of {max_length}; "
                                   "truncation='right' keeps the prompt whole (use 'left')")
            # the answer's tail goes; the reward token still closes the sequence
            return Encoded(ids[: max_length - 1] + ids[-1:], plen, truncated, len(completion))
        if truncated > plen - 1:
            raise TooLongError(f"{name}: the completion alone ({len(ids) - plen} tokens) exceeds max_length={max_length}")
        # keep the first token (BOS / <|im_start|>) and drop the oldest prompt tokens after it
        ids = ids[:1] + ids[1 + truncated:]
        plen -= truncated
    return Encoded(ids, plen, truncated, len(completion))
