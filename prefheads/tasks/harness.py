"""The ``lm-eval`` template family: lm-evaluation-harness prompts, as data.

Follows **lm-evaluation-harness v0.4.13** (PyPI ``lm_eval==0.4.13``): its zero-shot, no-chat-template
requests. A multiple-choice request of the harness is a pair ``(context, continuation)`` per
candidate, scored by the summed log-probability of the continuation given the context:

* ordinary tasks: one context (``doc_to_text``) and one continuation per choice,
  ``target_delimiter + choice`` (``" "`` by default);
* *partial* scoring (WinoGrande, ``doc_to_text`` returning the gold index): one context per
  option (the sentence up to the blank with the option substituted) and one shared continuation
  (the text after the blank, stripped).

The harness's ``acc_norm`` divides each candidate's log-prob by ``len(choice)`` in **characters**
(Python ``len`` of the ``doc_to_choice`` string, without the delimiter; ``acc_bytes`` is the
UTF-8 byte variant). For partial tasks ``doc_to_choice`` returns the *contexts*, so that is the
divisor there (the harness reports only ``acc`` for WinoGrande).

A task YAML holds the strings in an ``lm_eval`` block (templates use ``str.format`` fields of the
row adapter; ``{text}`` / ``{label}`` are a row option and its label); this module turns one row
into the raw requests (``Example.meta["lmeval"]``) and the chat-path prompt and choices (the
harness context as the user turn, the stripped continuation as the assistant reply).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from prefheads.registry import Registry

HARNESS_VERSION = "0.4.13"
LM_EVAL_VARIANT = "lm-eval"
HARNESS_METRICS = frozenset({"acc", "acc_norm", "acc_bytes", "mcc", "f1"})


@dataclass(frozen=True)
class Prep:
    """A field preprocessor (the harness's ``!function`` / ``process_docs`` hooks).

    Attributes:
        fn: ``fn(fields, options) -> (fields, options)``; must not mutate its inputs.
        adds: Template fields it adds.
    """

    fn: Callable[[dict[str, str], list[str] | None], tuple[dict[str, str], list[str] | None]]
    adds: frozenset[str]


PREPS: Registry[Prep] = Registry("lm-eval preprocessor")


def _prep(name: str, adds: tuple[str, ...] = ()) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    def deco(fn: Callable[..., Any]) -> Callable[..., Any]:
        PREPS.add(name, Prep(fn, frozenset(adds)))
        return fn
    return deco


@_prep("mnli", adds=("hypothesis_dot",))
def _mnli(fields: dict[str, str], options: list[str] | None) -> tuple[dict[str, str], list[str] | None]:
    """lm_eval/tasks/glue/mnli/utils.py: the hypothesis, stripped, ending in one full stop."""
    h = fields["hypothesis"].strip()
    return {**fields, "hypothesis_dot": h + ("" if h.endswith(".") else ".")}, options


def _hellaswag_clean(text: str) -> str:
    # WikiHow artefacts: " [title]" marks a heading; other bracketed tags are dropped
    text = text.strip().replace(" [title]", ". ")
    return re.sub(r"\[.*?\]", "", text).replace("  ", " ")


@_prep("hellaswag", adds=("query",))
def _hellaswag(fields: dict[str, str], options: list[str] | None) -> tuple[dict[str, str], list[str] | None]:
    """lm_eval/tasks/hellaswag/utils.py: ``"{activity}: {ctx_a} {Ctx_b}"`` and endings, cleaned."""
    ctx = fields["ctx_a"] + " " + fields["ctx_b"].capitalize()
    query = _hellaswag_clean(fields["activity_label"] + ": " + ctx)
    return {**fields, "query": query}, [_hellaswag_clean(o) for o in options or []]


@dataclass(frozen=True)
class LmEvalSpec:
    """The harness's definition of one task (its ``doc_to_text`` / ``doc_to_choice`` / target).

    Attributes:
        task: The harness task name (``arc_easy``, ``boolq``, ``cola``...).
        source: The harness file(s) the strings were read from.
        context: ``doc_to_text`` as a format string over the row's fields; for partial tasks it
            also uses ``{text}`` (the option put in the blank).
        choices: Fixed ``doc_to_choice`` list (BoolQ, GLUE), or ``None``.
        choice: Per-row ``doc_to_choice`` template over ``{text}``, ``{label}`` and the fields.
        continuation: Partial scoring: the shared ``doc_to_target`` (WinoGrande), else ``None``.
        delimiter: ``target_delimiter`` put before every continuation.
        metrics: The harness task's own ``metric_list``.
        prep: Name of a registered field preprocessor, if any.
        user: Chat-path user turn (default: the context; required for partial tasks).
        chat_choice: Chat-path assistant reply per option (default: the continuation, stripped;
            required for partial tasks).
    """

    task: str
    source: str
    context: str
    choices: tuple[str, ...] | None = None
    choice: str | None = None
    continuation: str | None = None
    delimiter: str = " "
    metrics: tuple[str, ...] = ("acc",)
    prep: str | None = None
    user: str | None = None
    chat_choice: str | None = None

    @property
    def partial(self) -> bool:
        """Whether candidates differ in their context, not their continuation."""
        return self.continuation is not None

    def problems(self, provided: set[str] | None, has_options: bool) -> list[str]:
        """What is wrong with this block, given the adapter's fields (``None``: not known)."""
        out = []
        if self.partial:
            if self.choices or self.choice:
                out.append("a partial task ('continuation') takes no 'choices' / 'choice'")
            if not (self.user and self.chat_choice):
                out.append("a partial task needs 'user' and 'chat_choice' for the chat path")
            if not has_options:
                out.append("partial scoring needs per-row options")
        elif bool(self.choices) == bool(self.choice):
            out.append("give exactly one of 'choices' (fixed) or 'choice' (per row)")
        elif self.choice and not has_options:
            out.append("'choice' needs an adapter with per-row options")
        bad = sorted(set(self.metrics) - HARNESS_METRICS)
        if bad or not self.metrics:
            out.append(f"unknown harness metric(s) {bad}; known: {sorted(HARNESS_METRICS)}")
        if self.prep is not None and self.prep not in PREPS:
            out.append(f"unknown prep {self.prep!r}; known: {PREPS.names()}")
        if provided is not None:
            known = set(provided) | {"text", "label"}
            if self.prep in PREPS:
                known |= PREPS.get(self.prep).adds
            for key in ("context", "choice", "continuation", "user", "chat_choice"):
                tmpl = getattr(self, key)
                missing = sorted(_fields_of(tmpl) - known) if tmpl else []
                if missing:
                    out.append(f"'{key}' uses field(s) {missing} the adapter does not provide")
        return out

    def as_dict(self) -> dict[str, Any]:
        """Plain-JSON form (template hashes, head artifacts)."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in self.__dict__.items()}


def _fields_of(template: str) -> set[str]:
    import string

    return {f for _, f, _, _ in string.Formatter().parse(template) if f}


@dataclass
class Rendered:
    """One row rendered both ways.

    Attributes:
        user: Chat-path user turn (the harness context).
        choices: Chat-path assistant replies (the continuations, stripped).
        meta: ``{"contexts", "continuations", "doc_choices", "harness"}``: one context and one
            continuation per candidate (what the harness scores), the harness's ``doc_to_choice``
            strings (their ``len`` is ``acc_norm``'s divisor) and the harness version.
    """

    user: str
    choices: list[str]
    meta: dict[str, Any]


def render_row(lm: LmEvalSpec, fields: dict[str, str], options: list[str] | None,
               labels: list[str] | None) -> Rendered:
    """The harness requests and the chat-path prompt of one row (see module docstring)."""
    if lm.prep is not None:
        fields, options = PREPS.get(lm.prep).fn(dict(fields), list(options) if options is not None else None)
    if lm.choices is not None:
        per = [{**fields, "text": c, "label": str(i)} for i, c in enumerate(lm.choices)]
    else:
        labels = labels or [str(i) for i in range(len(options or []))]
        per = [{**fields, "text": t, "label": lab} for t, lab in zip(options or [], labels)]
    if lm.partial:
        contexts = [lm.context.format_map(f) for f in per]
        cont = lm.delimiter + lm.continuation.format_map(fields)  # type: ignore[union-attr]
        continuations = [cont] * len(per)
        doc_choices = list(contexts)  # the harness's doc_to_choice returns the contexts here
        user = lm.user.format_map(fields)  # type: ignore[union-attr]
        chat = [lm.chat_choice.format_map(f).strip() for f in per]  # type: ignore[union-attr]
    else:
        ctx = lm.context.format_map(fields)
        if lm.choices is not None:
            doc_choices = list(lm.choices)
        else:
            doc_choices = [lm.choice.format_map(f) for f in per]  # type: ignore[union-attr]
        contexts = [ctx] * len(per)
        continuations = [lm.delimiter + c for c in doc_choices]
        user = lm.user.format_map(fields) if lm.user else ctx
        chat = ([lm.chat_choice.format_map(f).strip() for f in per] if lm.chat_choice
                else [c.strip() for c in continuations])
    meta = {"contexts": contexts, "continuations": continuations, "doc_choices": doc_choices,
            "harness": f"lm_eval=={HARNESS_VERSION}:{lm.task}"}
    return Rendered(user, chat, meta)
