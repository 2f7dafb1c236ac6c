"""Noun-phrase spans of a context, used as SQuAD v2 distractors for unanswerable questions.

The paper takes "a random noun span from the context" (the reference code used spaCy's
``noun_chunks``). spaCy is a heavy optional dependency, so the default here is a small
deterministic heuristic that needs nothing but :mod:`re`:

* runs of capitalised words, allowing a few lower-case joiners inside ("Bank of England"),
  without a lone sentence-initial function word ("The", "In");
* determiner phrases: "the / a / an / this / his ..." plus up to three following words,
  stopping at punctuation or a function word ("the new constitution");
* numbers with an optional following word ("1998", "2.5 billion", "44 years").

``method="spacy"`` uses ``en_core_web_sm`` noun chunks when spaCy and that model are installed,
and raises a clear error otherwise (it never silently switches method, so pairs stay
reproducible from one machine to the next).
"""

from __future__ import annotations

import functools
import re

_STOP = frozenset(
    "a an the this that these those his her its their our my your some any each every no "
    "and or but nor of in on at to for from by with as into onto over under after before "
    "is are was were be been being has have had do does did not it he she they we you i "
    "which who whom whose what when where why how than then there here also only".split()
)
_JOINERS = frozenset({"of", "the", "and", "de", "du", "la", "von", "van", "&"})
_DETS = frozenset("the a an this that these those his her its their our".split())
_TOKEN = re.compile(r"[^\W\d_][\w'\-]*|\d[\d,.]*[%\w]*|[^\w\s]")


def _capitalised(tok: str) -> bool:
    return tok[:1].isupper()


def _word(tok: str) -> bool:
    return tok[:1].isalnum()


def _join(toks: list[str]) -> str:
    # "R & B" -> "R&B"; words are otherwise space-separated as in the source text.
    return " ".join(toks).replace(" & ", "&") if len(toks) == 3 and toks[1] == "&" else " ".join(toks)


def heuristic_noun_spans(text: str) -> list[str]:
    """Return distinct noun-like spans of ``text`` in order of first appearance."""
    toks = _TOKEN.findall(text)
    spans: list[str] = []
    n = len(toks)
    i = 0
    while i < n:
        t = toks[i]
        sentence_start = i == 0 or toks[i - 1] in {".", "!", "?", '"'}
        if _word(t) and _capitalised(t) and not (sentence_start and t.lower() in _STOP):
            j = i + 1
            while j < n and (
                (_word(toks[j]) and _capitalised(toks[j]))
                or (toks[j] in _JOINERS and j + 1 < n and _capitalised(toks[j + 1]))
            ):
                j += 1
            spans.append(_join(toks[i:j]))
            i = j
            continue
        if t.lower() in _DETS and not (i + 1 < n and _capitalised(toks[i + 1])):
            j = i + 1
            while j < n and j - i <= 3 and _word(toks[j]) and toks[j].lower() not in _STOP:
                j += 1
            if j > i + 1:
                spans.append(" ".join(toks[i:j]))
            i = max(j, i + 1)
            continue
        if t[:1].isdigit():
            j = i + 1
            if j < n and _word(toks[j]) and not toks[j][:1].isdigit() and toks[j].lower() not in _STOP:
                j += 1
            spans.append(" ".join(toks[i:j]).rstrip(",."))
            i = j
            continue
        i += 1
    seen: set[str] = set()
    out = []
    for s in spans:
        s = s.strip()
        if s and s.lower() not in seen and s.lower() not in _STOP:
            seen.add(s.lower())
            out.append(s)
    return out


@functools.lru_cache(maxsize=1)
def _spacy_nlp():  # pragma: no cover - optional dependency, not installed in CI
    try:
        import spacy
    except ImportError as e:
        raise RuntimeError("noun_spans method 'spacy' needs `pip install spacy`") from e
    try:
        return spacy.load("en_core_web_sm")
    except OSError as e:
        raise RuntimeError(
            "noun_spans method 'spacy' needs the model: python -m spacy download en_core_web_sm"
        ) from e


@functools.lru_cache(maxsize=4096)
def noun_spans(text: str, method: str = "heuristic") -> tuple[str, ...]:
    """Distinct noun spans of ``text`` (cached: SQuAD repeats each context many times).

    Args:
        text: The context paragraph.
        method: ``"heuristic"`` (default, dependency-free) or ``"spacy"``.
    """
    if method == "heuristic":
        return tuple(heuristic_noun_spans(text))
    if method == "spacy":  # pragma: no cover - optional dependency
        seen: dict[str, None] = {}
        for chunk in _spacy_nlp()(text).noun_chunks:
            seen.setdefault(chunk.text.strip(), None)
        return tuple(s for s in seen if s)
    raise ValueError(f"unknown noun_spans method {method!r}; use 'heuristic' or 'spacy'")
