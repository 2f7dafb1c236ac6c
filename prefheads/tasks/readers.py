"""Readers for the datasets' original release file formats.

Each reader yields :class:`Row` objects: the file, a 1-based line number (or question number,
for files that hold several examples) and the parsed row as a dict shaped like the matching hub
row where practical, or an ``error`` when the line itself is unreadable (malformed JSON, a wrong
TSV column count). Readers never raise for one bad row, so ``skip_bad`` can count it.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prefheads.registry import Registry

from .errors import DataError


@dataclass
class Row:
    """One raw row: ``data`` or, for an unreadable line, ``error`` (with ``field``)."""

    file: str
    line: int
    data: dict[str, Any] | None = None
    error: str | None = None
    field: str | None = None


Reader = Callable[..., Iterator[Row]]
READERS: Registry[Reader] = Registry("file reader")


def _open_bytes(path: Path) -> io.BufferedIOBase:
    return gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")  # type: ignore[return-value]


def _text_lines(path: Path) -> Iterator[tuple[int, str | None, str | None]]:
    """``(line number, text, error)`` per line, split on LF only (a stray CR inside a TSV field
    must not end the row); a line that is not UTF-8 gives an error naming the byte instead of
    stopping the whole file with a bare ``UnicodeDecodeError``."""
    with _open_bytes(path) as f:
        for no, raw in enumerate(f, 1):
            if no == 1 and raw.startswith(b"\xef\xbb\xbf"):
                raw = raw[3:]  # a UTF-8 byte-order mark
            try:
                yield no, raw.decode("utf-8"), None
            except UnicodeDecodeError as e:
                yield no, None, f"not valid UTF-8: byte 0x{raw[e.start]:02x} at column {e.start + 1}"


def _decode_whole(path: Path) -> tuple[str | None, Row | None]:
    """The whole file as text, or a :class:`Row` error naming the line of the first bad byte."""
    with _open_bytes(path) as f:
        data = f.read()
    try:
        return data.decode("utf-8-sig"), None
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        col = e.start - (data.rfind(b"\n", 0, e.start) + 1) + 1
        return None, Row(str(path), line, error=f"not valid UTF-8: byte 0x{data[e.start]:02x} at column {col}",
                         field="<encoding>")


def _need(path: Path) -> Path:
    if not path.exists():
        raise FileNotFoundError(
            f"data file not found: {path} (point data_dir / PREFHEADS_DATA at a folder laid out "
            "like shared/data, or leave both unset to read from the Hugging Face hub)"
        )
    return path


@READERS.register("jsonl")
def read_jsonl(path: Path, **_: Any) -> Iterator[Row]:
    """One JSON object per line (``.jsonl`` or ``.jsonl.gz``); blank lines are ignored."""
    for no, line, bad in _text_lines(_need(path)):
        if bad is not None:
            yield Row(str(path), no, error=bad, field="<encoding>")
            continue
        if not line.strip():
            continue
        try:
            data = json.loads(line)
        except json.JSONDecodeError as e:
            yield Row(str(path), no, error=f"malformed JSON ({e.msg} at column {e.colno})", field="<json>")
            continue
        if not isinstance(data, dict):
            yield Row(str(path), no, error=f"expected a JSON object, got {type(data).__name__}", field="<json>")
            continue
        yield Row(str(path), no, data)


@READERS.register("tsv")
def read_tsv(path: Path, header: bool = True, columns: tuple[str, ...] | None = None, **_: Any) -> Iterator[Row]:
    """GLUE-style TSV: tab-separated, no quoting (quotes are literal text, as GLUE's own
    loaders read them), an optional header row naming the columns."""
    names = list(columns or ())
    for no, line, bad in _text_lines(_need(path)):
        if bad is not None:
            yield Row(str(path), no, error=bad, field="<encoding>")
            continue
        line = line.rstrip("\n").rstrip("\r")
        if header and no == 1:
            names = line.split("\t")
            continue
        if not line.strip():
            continue
        cells = line.split("\t")
        if len(cells) != len(names):
            yield Row(str(path), no, error=f"expected {len(names)} tab-separated columns, got {len(cells)}",
                      field="<columns>")
            continue
        yield Row(str(path), no, dict(zip(names, cells)))


@READERS.register("piqa")
def read_piqa(path: Path, **_: Any) -> Iterator[Row]:
    """PIQA release: ``valid.jsonl`` plus ``valid-labels.lst`` (one 0/1 per line) beside it.

    Without a labels file (the test split) the rows are unlabelled (``label: None``).
    """
    labels_path = path.with_name(path.name.replace(".jsonl", "-labels.lst"))
    labels = labels_path.read_text(encoding="utf-8").split() if labels_path.exists() else None
    n = 0
    for row in read_jsonl(path):
        n += 1
        if row.data is not None:
            if labels is None:
                row.data["label"] = None
            elif n <= len(labels):
                row.data["label"] = labels[n - 1]
            else:
                row.data, row.error, row.field = None, f"no label on line {n} of {labels_path.name}", "label"
        yield row
    if labels is not None and len(labels) != n:
        yield Row(str(labels_path), n + 1, error=f"{len(labels)} labels for {n} rows", field="label")


@READERS.register("race_dir")
def read_race_dir(path: Path, **_: Any) -> Iterator[Row]:
    """RACE release: a folder of ``*.txt`` files, each a JSON passage with parallel lists
    ``questions`` / ``options`` / ``answers``; yields one row per question (``line`` = the
    question's 1-based number within its file), shaped like the ``ehovy/race`` hub rows."""
    files = sorted(_need(path).glob("*.txt"), key=lambda p: (len(p.stem), p.stem))
    for fp in files:
        text, bad = _decode_whole(fp)
        if bad is not None:
            yield bad
            continue
        try:
            doc = json.loads(text)
            if not isinstance(doc, dict):
                yield Row(str(fp), 1, error=f"expected a JSON object, got {type(doc).__name__}", field="<json>")
                continue
            article, qs, opts, ans = doc["article"], doc["questions"], doc["options"], doc["answers"]
        except json.JSONDecodeError as e:
            yield Row(str(fp), 1, error=f"malformed JSON ({e.msg})", field="<json>")
            continue
        except KeyError as e:
            yield Row(str(fp), 1, error="missing field", field=str(e.args[0]))
            continue
        if not (isinstance(qs, list) and isinstance(opts, list) and isinstance(ans, list)) or not (
            len(qs) == len(opts) == len(ans)
        ):
            yield Row(str(fp), 1, error="questions / options / answers differ in length", field="questions")
            continue
        stem = str(doc.get("id", fp.name)).removesuffix(".txt")
        for i, (q, o, a) in enumerate(zip(qs, opts, ans)):
            yield Row(str(fp), i + 1, {"example_id": f"{stem}-{i}", "article": article, "question": q,
                                       "options": o, "answer": a})


@READERS.register("squad_json")
def read_squad_json(path: Path, **_: Any) -> Iterator[Row]:
    """SQuAD release JSON (``data[].paragraphs[].qas[]``), flattened to hub-shaped rows;
    ``line`` counts questions from 1."""
    text, bad = _decode_whole(_need(path))
    if bad is not None:
        yield bad
        return
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as e:
        yield Row(str(path), e.lineno, error=f"malformed JSON ({e.msg})", field="<json>")
        return
    no = 0
    for article in doc.get("data", []):
        for para in article.get("paragraphs", []):
            for qa in para.get("qas", []):
                no += 1
                answers = [a.get("text", "") for a in qa.get("answers", [])]
                if qa.get("is_impossible"):
                    answers = []
                yield Row(str(path), no, {"id": qa.get("id"), "title": article.get("title", ""),
                                          "context": para.get("context"), "question": qa.get("question"),
                                          "answers": {"text": answers}})


@READERS.register("mmlu_csv")
def read_mmlu_csv(path: Path, **_: Any) -> Iterator[Row]:
    """MMLU release: ``<subject>_<split>.csv`` files (question, A, B, C, D, answer letter), a
    folder of them or one file; rows shaped like ``cais/mmlu``."""
    files = sorted(path.glob("*.csv")) if _need(path).is_dir() else [path]
    for fp in files:
        subject = fp.stem.rsplit("_", 1)[0]
        text, bad = _decode_whole(fp)
        if bad is not None:
            yield bad
            continue
        for no, cells in enumerate(csv.reader(io.StringIO(text, newline="")), 1):
            if len(cells) < 3:
                yield Row(str(fp), no, error=f"expected question, choices, answer; got {len(cells)} cells",
                          field="<columns>")
                continue
            yield Row(str(fp), no, {"question": cells[0], "choices": cells[1:-1], "answer": cells[-1],
                                    "subject": subject})


def read_files(reader: str, paths: list[Path], **kwargs: Any) -> Iterator[Row]:
    """All rows of ``paths`` in order, read with the named reader."""
    fn = READERS.get(reader)
    for p in paths:
        yield from fn(p, **kwargs)


def row_error(row: Row) -> DataError:
    """The :class:`DataError` for an unreadable row."""
    return DataError(row.error or "unreadable row", row.file, row.line, row.field)
