"""Row adapters: one small function per dataset format, turning a raw row into a record.

A task YAML names its adapter (``adapter: arc``). Local readers (:mod:`.readers`) produce rows in
the shape of the Hugging Face hub rows wherever the two differ only in layout, so one adapter
serves both sources. Adapters know nothing about templates: they return the template fields, the
raw answer options and the raw label; :mod:`.loaders` renders and resolves them.

Choice adapters return a :class:`Record`; pair adapters return a :class:`PairRecord`. An adapter
raises :class:`~prefheads.tasks.errors.DataError` (location filled in by the loader) for a
malformed row and :class:`Drop` for a well-formed row without a usable preference signal.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from prefheads.registry import Registry
from prefheads.types import ROLES, Message

from .errors import DataError
from .spans import noun_spans

if TYPE_CHECKING:
    from .spec import SourceSpec, TaskSpec


class Drop(Exception):
    """A well-formed row that cannot become a pair (identical replies...); counted, not fatal."""


@dataclass
class Record:
    """What a choice adapter extracts from one row.

    Attributes:
        fields: Template fields (``{sentence1}``, ``{question}``...).
        options: Raw answer option texts, for tasks whose choices come from the row.
        option_labels: Labels of ``options`` ("A", "B"... or "1", "2"...), if the row has them.
        label: The raw label as stored (``"entailment"``, ``"B"``, ``True``, ``3.8``...).
        id: The dataset's own id, when it has one.
        meta: Extra fields to keep on the example.
    """

    fields: dict[str, str]
    options: list[str] | None = None
    option_labels: list[str] | None = None
    label: Any = None
    id: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass
class PairRecord:
    """What a pair adapter extracts: a message-list prompt and two assistant replies."""

    prompt: list[Message]
    chosen: str
    rejected: str
    id: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Adapter:
    """A registered adapter.

    Attributes:
        fn: ``fn(row, spec, source) -> Record | PairRecord``.
        kind: ``"choice"`` or ``"pairs"``.
        provides: Template fields it fills (``None``: the source's ``fields`` mapping decides).
        has_options: Whether it returns per-row answer options.
    """

    fn: Callable[..., Any]
    kind: str
    provides: frozenset[str] | None
    has_options: bool


ADAPTERS: Registry[Adapter] = Registry("task adapter")


def _adapter(name: str, kind: str = "choice", provides: tuple[str, ...] | None = (),
             has_options: bool = False) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    def deco(fn: Callable[..., Any]) -> Callable[..., Any]:
        ADAPTERS.add(name, Adapter(fn, kind, None if provides is None else frozenset(provides), has_options))
        return fn
    return deco


def get(row: Mapping[str, Any], key: str, types: type | tuple[type, ...] = str) -> Any:
    """``row[key]`` checked for presence and type (dotted keys walk nested dicts)."""
    cur: Any = row
    for part in key.split("."):
        if not isinstance(cur, Mapping) or part not in cur:
            raise DataError("missing field", field=key)
        cur = cur[part]
    if cur is None or not isinstance(cur, types):
        want = types.__name__ if isinstance(types, type) else "/".join(t.__name__ for t in types)
        raise DataError(f"expected {want}, got {type(cur).__name__} {cur!r:.60}", field=key)
    return cur


def _text_list(value: Any, key: str) -> list[str]:
    if not isinstance(value, list) or not value:
        raise DataError("empty choice list" if isinstance(value, list) else "expected a list", field=key)
    if not all(isinstance(v, str) for v in value):
        raise DataError("every choice must be a string", field=key)
    return list(value)


# ---------------------------------------------------------------------------- choice tasks


@_adapter("fields", provides=None)
def _fields(row: Mapping[str, Any], spec: "TaskSpec", src: "SourceSpec") -> Record:
    """Generic columns → template fields (GLUE TSVs and hub rows), per the source's mapping."""
    fields = {name: get(row, col) for name, col in src.fields.items()}
    label = row.get(src.label) if src.label in row else _missing(src.label)
    return Record(fields, label=label, id=_opt_id(row, "idx", "index", "id"))


def _missing(key: str) -> Any:
    raise DataError("missing field", field=key)


def _opt_id(row: Mapping[str, Any], *keys: str) -> str | None:
    for k in keys:
        if row.get(k) not in (None, ""):
            return str(row[k])
    return None


@_adapter("arc", provides=("question", "question_stem"), has_options=True)
def _arc(row: Mapping[str, Any], spec: "TaskSpec", src: "SourceSpec") -> Record:
    """ARC / OpenBookQA, in the release JSONL shape or either hub shape."""
    q = row.get("question")
    if isinstance(q, Mapping):  # release JSONL: question.stem, question.choices[{text, label}]
        stem = get(row, "question.stem")
        choices = get(row, "question.choices", list)
        if not choices:
            raise DataError("empty choice list", field="question.choices")
        try:
            texts = [c["text"] for c in choices]
            labels = [str(c["label"]) for c in choices]
        except (TypeError, KeyError) as e:
            raise DataError(f"each choice needs 'text' and 'label' ({e})", field="question.choices") from None
        key_field = "question.choices"
    else:  # hub: ARC {question, choices{text,label}}, OBQA {question_stem, choices{...}}
        stem = get(row, "question_stem" if "question_stem" in row else "question")
        texts = _text_list(get(row, "choices.text", list), "choices.text")
        labels = [str(x) for x in get(row, "choices.label", list)]
        key_field = "choices"
    texts = _text_list(texts, key_field)
    if len(labels) != len(texts):
        raise DataError("choice labels and texts differ in length", field=key_field)
    answer = get(row, "answerKey").strip()
    return Record({"question": stem, "question_stem": stem}, texts, labels, answer, _opt_id(row, "id"))


@_adapter("boolq", provides=("question", "passage", "title"))
def _boolq(row: Mapping[str, Any], spec: "TaskSpec", src: "SourceSpec") -> Record:
    """BoolQ release / ``google/boolq`` (``answer`` bool) or SuperGLUE (``label`` 0/1)."""
    label = get(row, "answer", bool) if "answer" in row or "label" not in row else get(row, "label", int)
    fields = {"question": get(row, "question"), "passage": get(row, "passage"),
              "title": str(row.get("title") or "")}
    return Record(fields, label=label, id=_opt_id(row, "idx"))


@_adapter("piqa", provides=("goal",), has_options=True)
def _piqa(row: Mapping[str, Any], spec: "TaskSpec", src: "SourceSpec") -> Record:
    label = row.get("label")  # the release keeps labels in a separate file; None = unlabelled
    return Record({"goal": get(row, "goal")}, [get(row, "sol1"), get(row, "sol2")], label=label,
                  id=_opt_id(row, "id"))


@_adapter("winogrande", provides=("prefix", "suffix", "sentence", "before_blank", "after_blank"), has_options=True)
def _winogrande(row: Mapping[str, Any], spec: "TaskSpec", src: "SourceSpec") -> Record:
    """Split the sentence at its blank "_": the prompt shows the prefix, each choice is
    ``"{option} {suffix}"`` (both stripped, as the reference code does); ``before_blank`` /
    ``after_blank`` are the two sides unstripped (the lm-eval template needs them raw)."""
    sentence = get(row, "sentence")
    if "_" not in sentence:
        raise DataError("sentence has no blank '_'", field="sentence")
    cut = sentence.index("_")
    fields = {"prefix": sentence[:cut].strip(), "suffix": sentence[cut + 1:].strip(), "sentence": sentence,
              "before_blank": sentence[:cut], "after_blank": sentence[cut + 1:]}
    label = row["answer"] if "answer" in row else _missing("answer")
    return Record(fields, [get(row, "option1"), get(row, "option2")], label=label, id=_opt_id(row, "qID"))


@_adapter("hellaswag", provides=("context", "activity_label", "ctx_a", "ctx_b"), has_options=True)
def _hellaswag(row: Mapping[str, Any], spec: "TaskSpec", src: "SourceSpec") -> Record:
    """HellaSwag release JSONL or ``Rowan/hellaswag``; the context is the raw ``ctx``."""
    ctx = row["ctx"] if isinstance(row.get("ctx"), str) else f"{get(row, 'ctx_a')} {get(row, 'ctx_b')}".strip()
    fields = {"context": ctx, "activity_label": str(row.get("activity_label") or ""),
              "ctx_a": str(row.get("ctx_a") or ""), "ctx_b": str(row.get("ctx_b") or "")}
    label = row["label"] if "label" in row else _missing("label")
    return Record(fields, _text_list(get(row, "endings", list), "endings"), label=label,
                  id=_opt_id(row, "ind"))


@_adapter("race", provides=("article", "question"), has_options=True)
def _race(row: Mapping[str, Any], spec: "TaskSpec", src: "SourceSpec") -> Record:
    options = _text_list(get(row, "options", list), "options")
    labels = [chr(ord("A") + i) for i in range(len(options))]
    fields = {"article": get(row, "article"), "question": get(row, "question")}
    ex_id = _opt_id(row, "example_id")
    if ex_id and ex_id.endswith(".txt"):  # hub ids name the passage, shared by its questions
        ex_id = None
    return Record(fields, options, labels, get(row, "answer").strip(), ex_id)


@_adapter("mmlu", provides=("question", "subject"), has_options=True)
def _mmlu(row: Mapping[str, Any], spec: "TaskSpec", src: "SourceSpec") -> Record:
    options = _text_list(get(row, "choices", list), "choices")
    labels = [chr(ord("A") + i) for i in range(len(options))]
    answer = get(row, "answer", (int, str))
    if isinstance(answer, int):  # cais/mmlu stores the index; the release CSV the letter
        answer = labels[answer] if 0 <= answer < len(labels) else f"#{answer}"
    fields = {"question": get(row, "question"), "subject": str(row.get("subject") or "")}
    return Record(fields, options, labels, answer.strip(), _opt_id(row, "id"))


@_adapter("squad_v2", provides=("title", "context", "question"), has_options=True)
def _squad_v2(row: Mapping[str, Any], spec: "TaskSpec", src: "SourceSpec") -> Record:
    """SQuAD v2 as a choice task (PAPER.md 4): answerable → [first gold answer, "unanswerable"];
    unanswerable → ["unanswerable", *noun spans of the context]. The gold answer is choice 0;
    :func:`~prefheads.tasks.pairs.pairs_from_examples` then samples the dispreferred uniformly."""
    context = get(row, "context")
    answers = [a for a in get(row, "answers.text", list) if isinstance(a, str) and a.strip()]
    unanswerable = str(spec.options.get("unanswerable", "unanswerable"))
    if answers:
        options = [answers[0], unanswerable]
    else:
        method = str(spec.options.get("noun_spans", "heuristic"))
        spans = [s for s in noun_spans(context, method) if s.lower() != unanswerable.lower()]
        if not spans:
            raise DataError("unanswerable question whose context has no noun span", field="context")
        options = [unanswerable, *spans]
    fields = {"title": str(row.get("title") or ""), "context": context, "question": get(row, "question").strip()}
    return Record(fields, options, label=0, id=_opt_id(row, "id"),
                  meta={"answers": answers, "answerable": bool(answers)})


# ---------------------------------------------------------------------------- preference pairs


def _with_system(prompt: list[Message], system: str | None) -> list[Message]:
    if system and not (prompt and prompt[0]["role"] == "system"):
        return [{"role": "system", "content": system}, *prompt]
    return prompt


def _messages(value: Any, key: str) -> list[Message]:
    if not isinstance(value, list) or not value:
        raise DataError("expected a non-empty list of messages", field=key)
    out = []
    for i, m in enumerate(value):
        if not isinstance(m, Mapping) or not isinstance(m.get("role"), str) or not isinstance(m.get("content"), str):
            raise DataError("each message needs string 'role' and 'content'", field=f"{key}[{i}]")
        if m["role"] not in ROLES:
            raise DataError(f"unknown role {m['role']!r}; expected one of {', '.join(ROLES)}", field=f"{key}[{i}].role")
        out.append({"role": m["role"], "content": m["content"]})
    return out


def _reply(value: Any, key: str) -> tuple[list[Message], str]:
    """(turns before the reply, reply text) of a string or message-list completion."""
    if isinstance(value, str):
        return [], value
    msgs = _messages(value, key)
    if msgs[-1]["role"] != "assistant":
        raise DataError(f"last message must be the assistant reply, got role {msgs[-1]['role']!r}",
                        field=f"{key}[-1].role")
    return msgs[:-1], msgs[-1]["content"]


def _check_pair(prompt: list[Message], chosen: str, rejected: str, prompt_field: str) -> None:
    """Drop a pair without a preference signal; a prompt not ending on a user turn is an error
    naming ``prompt_field`` (the field its last turn came from)."""
    for key, text in (("chosen", chosen), ("rejected", rejected)):
        if not text.strip():  # a few official rows (HH-RLHF) have them: dropped and counted
            raise Drop(f"field {key!r}: empty reply, nothing to score")
    if not prompt or prompt[-1]["role"] != "user":
        got = prompt[-1]["role"] if prompt else "none"
        raise DataError(f"the prompt must end with a user turn, got {got!r}", field=prompt_field)
    if chosen.strip() == rejected.strip():
        raise Drop("chosen and rejected replies are identical")


@_adapter("chat_pairs", kind="pairs")
def _chat_pairs(row: Mapping[str, Any], spec: "TaskSpec", src: "SourceSpec") -> PairRecord:
    """UltraFeedback-binarized, Orca DPO pairs, or a generic ``{prompt, chosen, rejected}`` row.

    ``chosen`` / ``rejected`` are strings or message lists; in the latter case the reply is the
    **last** (assistant) message, never message 0 (the user prompt: the reference-code bug).
    The prompt is the turns before the chosen reply when there are any, else ``prompt`` (string
    or message list), else ``question``; a row's own ``system`` text wins over the task's.
    """
    before_c, chosen = _reply(row["chosen"] if "chosen" in row else _missing("chosen"), "chosen")
    before_r, rejected = _reply(row["rejected"] if "rejected" in row else _missing("rejected"), "rejected")
    if before_c:
        prompt, prompt_field = before_c, "chosen[-2].role"
        if before_r and before_r != before_c:
            raise Drop("chosen and rejected conversations have different prompts")
    elif "prompt" in row or "question" in row:
        key = "prompt" if "prompt" in row else "question"
        raw = row[key]
        prompt = [{"role": "user", "content": get(row, key)}] if not isinstance(raw, list) else _messages(raw, key)
        prompt_field = f"{key}[-1].role"
    else:
        raise DataError("missing field (no prompt turns in 'chosen' either)", field="prompt")
    system = row.get("system") if isinstance(row.get("system"), str) and row["system"].strip() else spec.system
    prompt = _with_system(prompt, system)
    _check_pair(prompt, chosen, rejected, prompt_field)
    meta = {k: row[k] for k in ("score_chosen", "score_rejected") if k in row}
    return PairRecord(prompt, chosen, rejected, _opt_id(row, "prompt_id", "id"), meta)


_TURN = re.compile(r"\n\n(Human|Assistant):")


def parse_hh(transcript: str, key: str = "transcript") -> list[Message]:
    """Parse an HH-RLHF transcript ``"\\n\\nHuman: ...\\n\\nAssistant: ..."`` into messages.

    Consecutive turns of one speaker (a handful of rows have them) are merged with a blank line,
    so roles alternate as chat templates require. Contents are stripped.

    Raises:
        DataError: If the text does not start with a ``Human:`` turn.
    """
    parts = _TURN.split(transcript)
    if parts[0].strip() or len(parts) < 3 or parts[1] != "Human":
        raise DataError("transcript must start with '\\n\\nHuman:'", field=key)
    msgs: list[Message] = []
    for who, text in zip(parts[1::2], parts[2::2]):
        role = "user" if who == "Human" else "assistant"
        if msgs and msgs[-1]["role"] == role:
            msgs[-1]["content"] = f"{msgs[-1]['content']}\n\n{text.strip()}".strip()
        else:
            msgs.append({"role": role, "content": text.strip()})
    return msgs


@_adapter("hh_rlhf", kind="pairs")
def _hh_rlhf(row: Mapping[str, Any], spec: "TaskSpec", src: "SourceSpec") -> PairRecord:
    """Anthropic HH-RLHF: both transcripts share every turn but the final assistant reply."""
    chosen_msgs = parse_hh(get(row, "chosen"), "chosen")
    rejected_msgs = parse_hh(get(row, "rejected"), "rejected")
    for key, msgs in (("chosen", chosen_msgs), ("rejected", rejected_msgs)):
        if msgs[-1]["role"] != "assistant":  # a few official rows end on a Human turn
            raise Drop(f"{key} transcript does not end with an Assistant turn")
    prompt = chosen_msgs[:-1]
    if rejected_msgs[:-1] != prompt:
        raise Drop("chosen and rejected transcripts differ before the final reply")
    prompt = _with_system(prompt, spec.system)
    chosen, rejected = chosen_msgs[-1]["content"], rejected_msgs[-1]["content"]
    _check_pair(prompt, chosen, rejected, "chosen")  # parse_hh alternates roles: never fires
    return PairRecord(prompt, chosen, rejected)
