"""Human-readable rendering of examples and pairs (``prefheads tasks show``)."""

from __future__ import annotations

from typing import Any

from prefheads.types import Example, PreferencePair, Prompt


def chatml(messages: Prompt, add_generation_prompt: bool = False) -> str:
    """Plain ChatML text of ``messages`` (what the paper's model saw)."""
    text = "".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in messages)
    return text + ("<|im_start|>assistant\n" if add_generation_prompt else "")


def _prompt_text(prompt: Prompt, tokenizer: Any) -> str:
    if tokenizer is not None and getattr(tokenizer, "chat_template", None):
        return str(tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True))
    return chatml(prompt, add_generation_prompt=True)


def render(item: Example | PreferencePair, tokenizer: Any = None) -> str:
    """Render an example (prompt + every choice, the correct one marked ``[x]``) or a pair
    (prompt + chosen / rejected) as text.

    Args:
        item: An :class:`Example` or :class:`PreferencePair`.
        tokenizer: Optional Hugging Face tokenizer; with a chat template, the prompt is shown as
            that template renders it, else as plain ChatML.
    """
    meta = getattr(item, "meta", {}) or {}
    where = f"  ({meta['source']}:{meta['row']})" if "source" in meta and "row" in meta else ""
    head = f"# {item.task or '<task>'}  {item.id}{where}\n"
    body = _prompt_text(item.prompt, tokenizer)
    if isinstance(item, Example):
        lines = [f"[{'x' if i == item.label else ' '}] {c}" for i, c in enumerate(item.choices)]
        if item.label is None:
            lines.append("(unlabelled)")
        if "score" in meta:
            lines.append(f"(gold score {meta['score']})")
        if "lmeval" in meta:  # the raw harness requests the lm-eval scorer reads
            req = meta["lmeval"]
            lines.append(f"({req['harness']}: context + continuation per choice)")
            lines += [f"  {i}: {c!r} + {k!r}" for i, (c, k) in enumerate(zip(req["contexts"], req["continuations"]))]
    else:
        lines = [f"[chosen]   {item.chosen}", f"[rejected] {item.rejected}"]
    return head + body + "\n".join(lines) + "\n"
