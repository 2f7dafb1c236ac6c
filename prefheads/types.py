"""Plain data records shared by tasks, training and evaluation.

A *prompt* is a list of chat messages (``{"role": ..., "content": ...}``) ending with a user
turn; a *completion* is the text of the assistant reply that is scored. Keeping these as plain
dataclasses lets every stage (rendering, feature extraction, metrics) agree on one shape.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

Message = dict[str, str]
Prompt = list[Message]
ROLES = ("system", "user", "assistant")


class PromptError(ValueError):
    """A prompt or completion that cannot be scored (bad role, wrong last turn, empty text)."""


def as_prompt(prompt: str | Prompt, system: str | None = None) -> Prompt:
    """Normalise a user string or a message list into a message list.

    Args:
        prompt: A user message string, or a list of ``{"role", "content"}`` dicts.
        system: Optional system message placed first when ``prompt`` is a string.

    Returns:
        A new list of messages.
    """
    if isinstance(prompt, str):
        msgs: Prompt = [{"role": "system", "content": system}] if system else []
        msgs.append({"role": "user", "content": prompt})
        return msgs
    if not isinstance(prompt, list) or not all(isinstance(m, dict) for m in prompt):
        raise TypeError(f"a prompt is a string or a list of message dicts, got {type(prompt).__name__}")
    if not prompt:
        raise PromptError("prompt: an empty message list")
    for i, m in enumerate(prompt):
        if "role" not in m or "content" not in m:
            raise PromptError(f"prompt message {i} lacks 'role' or 'content': {m!r}")
        if m["role"] not in ROLES:
            raise PromptError(f"prompt message {i}: unknown role {m['role']!r}; expected one of {', '.join(ROLES)}")
        if not isinstance(m["content"], str):
            raise PromptError(f"prompt message {i}: content must be a string, got {type(m['content']).__name__}")
    if prompt[-1]["role"] != "user":
        raise PromptError(f"prompt must end with a user turn (the reply to score follows it), "
                          f"got role {prompt[-1]['role']!r}")
    return [dict(m) for m in prompt]


def broadcast(prompts: Any, completions: Any) -> tuple[list, list[str]]:
    """Aligned ``(prompts, completions)`` lists: one completion string becomes a list, and one
    prompt (a string or a message list) is repeated for every completion; what is neither a
    prompt nor a list of prompts is a clear error (:func:`as_prompt`'s)."""
    if isinstance(completions, str):
        completions = [completions]
    completions = list(completions)
    if isinstance(prompts, str) or (isinstance(prompts, list) and prompts and isinstance(prompts[0], dict)):
        prompts = [prompts] * len(completions)
    elif not isinstance(prompts, (list, tuple)) or not prompts:
        as_prompt(prompts)
    return list(prompts), completions


def check_completion(text: str, name: str = "completion") -> str:
    """``text`` if it can be scored as an assistant reply; a clear error otherwise."""
    if not isinstance(text, str):
        raise PromptError(f"{name}: expected a string, got {type(text).__name__}")
    if not text.strip():
        raise PromptError(f"{name}: empty reply, there is nothing to score")
    return text


@dataclass
class Example:
    """A labelled multiple-choice example: one prompt, several candidate completions.

    Attributes:
        id: Stable identifier (file + row or dataset id), used in error messages and reports.
        prompt: Chat messages shown to the model before the answer.
        choices: Candidate assistant completions.
        label: Index of the correct choice; ``None`` when unknown (e.g. unlabelled test data).
        task: Canonical task name (``glue/rte``...).
        meta: Free-form extra fields (gold score for STS-B, source row...).
    """

    id: str
    prompt: Prompt
    choices: list[str]
    label: int | None = None
    task: str = ""
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass
class PreferencePair:
    """A preference pair: the same prompt with a preferred and a dispreferred completion.

    ``meta`` carries the source file and row, the split, and for pairs built from labelled
    examples the indices of the chosen / rejected choices.
    """

    id: str
    prompt: Prompt
    chosen: str
    rejected: str
    task: str = ""
    meta: dict[str, Any] = field(default_factory=dict)
