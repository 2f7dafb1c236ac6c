"""Load a task's rows (local release files, the bundled slices, or the hub) into examples/pairs.

Data location, in order: an explicit ``data_dir`` (``"bundled"`` for the small slices shipped in
``prefheads/data``), else the ``PREFHEADS_DATA`` environment variable, else the Hugging Face hub.
"""

from __future__ import annotations

import math

import os
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from prefheads.types import Example, PreferencePair, as_prompt

from .adapters import ADAPTERS, Drop, PairRecord, Record
from .errors import DataError, Loaded
from .harness import LM_EVAL_VARIANT, render_row
from .readers import Row, read_files, row_error
from .spec import LocalSource, SourceSpec, TaskSpec, label_key

BUNDLED = "bundled"


def bundled_data_dir() -> Path:
    """The folder of small licensed data slices shipped with the package."""
    return Path(__file__).resolve().parents[1] / "data"


def resolve_data_dir(data_dir: str | os.PathLike[str] | None) -> Path | None:
    """The data dir to read from, or ``None`` for the hub (see module docstring)."""
    if data_dir is None:
        data_dir = os.environ.get("PREFHEADS_DATA") or None
    if data_dir is None:
        return None
    if str(data_dir) == BUNDLED:
        return bundled_data_dir()
    return Path(data_dir).expanduser()


def _split_names(spec: TaskSpec, split: str) -> list[str]:
    if split == "train":
        if not spec.train_split:
            raise ValueError(f"task {spec.name!r} has no training split")
        return [spec.train_split]
    if split == "eval":
        return list(spec.eval_splits)
    return [split]


def _local_rows(spec: TaskSpec, src: LocalSource, root: Path, split: str) -> Iterator[Row]:
    if split not in src.files:
        raise ValueError(f"task {spec.name!r} has no local files for split {split!r}; "
                         f"known splits: {sorted(src.files)}")
    paths = [root / p for p in src.files[split]]
    yield from read_files(src.reader, paths, header=src.header, columns=src.columns)


def _hub_rows(spec: TaskSpec, split: str, limit: int | None) -> Iterator[Row]:
    hub = spec.hub
    if hub is None:
        raise ValueError(f"task {spec.name!r} has no hub source; pass data_dir (or path=<file>) "
                         "or set PREFHEADS_DATA")
    import datasets  # heavy import, only on the hub path

    kwargs: dict[str, Any] = {"revision": hub.revision}
    if hub.data_dir:
        kwargs["data_dir"] = hub.data_dir
    hub_split = split if limit is None else f"{split}[:{limit}]"
    ds = datasets.load_dataset(hub.id, hub.config, split=hub_split, **kwargs)
    where = f"hub:{hub.id}" + (f"/{hub.config}" if hub.config else "") + f":{split}"
    for i, rec in enumerate(ds):
        yield Row(where, i, dict(rec))


def _rows(spec: TaskSpec, split: str, data_dir: Any, path: Any, limit: int | None) -> tuple[Iterator[Row], SourceSpec]:
    if path is not None:  # the generic pairs file (or any single file of the task's format)
        src = spec.local or LocalSource(reader="jsonl")
        return read_files(src.reader, [Path(path)], header=src.header, columns=src.columns), src
    root = resolve_data_dir(data_dir)
    if root is None:
        return _hub_rows(spec, split, limit), spec.hub  # type: ignore[return-value]
    if root.resolve() == bundled_data_dir().resolve():
        if spec.bundled is None:
            raise ValueError(f"task {spec.name!r} has no bundled data slice")
        return _local_rows(spec, spec.bundled, root, split), spec.bundled
    if spec.local is None:
        raise ValueError(f"task {spec.name!r} has no local file layout; read it from the hub (data_dir=None)")
    return _local_rows(spec, spec.local, root, split), spec.local


def _resolve_label(spec: TaskSpec, src: SourceSpec, rec: Record, n_choices: int) -> tuple[int | None, dict[str, Any]]:
    raw = rec.label
    if raw is None or raw == "" or (isinstance(raw, (int, float)) and not isinstance(raw, bool) and raw == -1):
        return None, {}  # unlabelled: hub test splits hide labels as -1 (-1.0 for STS-B scores) or ""
    if spec.label_kind == "score":
        try:
            score = float(raw)
        except (TypeError, ValueError):
            raise DataError(f"unknown label {raw!r}: expected a number", field=src.label) from None
        if not math.isfinite(score):
            raise DataError(f"score {raw!r} is not a finite number", field=src.label)
        idx = round(score)  # ties to even, like the reference code's round()
        if not 0 <= idx < n_choices:
            raise DataError(f"score {score} outside 0..{n_choices - 1}", field=src.label)
        return idx, {"score": score}
    key = label_key(raw)
    if src.label_map is not None:
        if key not in src.label_map:
            raise DataError(f"unknown label {raw!r}; expected one of {sorted(src.label_map)}", field=src.label)
        idx = src.label_map[key]
    elif rec.option_labels is not None:
        if key not in rec.option_labels:
            raise DataError(f"unknown label {raw!r}; expected one of {rec.option_labels}", field=src.label)
        idx = rec.option_labels.index(key)
    else:
        try:
            idx = int(key)
        except ValueError:
            raise DataError(f"unknown label {raw!r}; expected a choice index", field=src.label) from None
    if not 0 <= idx < n_choices:
        raise DataError(f"label {raw!r} is not one of the {n_choices} choices", field=src.label)
    return idx, {}


def build_example(spec: TaskSpec, src: SourceSpec, rec: Record, row: Row, split: str) -> Example:
    """Render one :class:`Record` into an :class:`Example` (prompt, choices, label, meta)."""
    if not spec.choices and not rec.options:
        raise DataError("empty choice list", field="options")
    harness = None
    if spec.variant == LM_EVAL_VARIANT and spec.lm_eval is not None:
        harness = render_row(spec.lm_eval, rec.fields, rec.options, rec.option_labels)
        choices, user = harness.choices, harness.user
    elif spec.choices:
        choices = list(spec.choices)
    else:
        opts = rec.options or []
        labels = rec.option_labels or [str(i) for i in range(len(opts))]
        choices = [spec.choice_template.format_map({**rec.fields, "label": lab, "text": t})  # type: ignore[union-attr]
                   for lab, t in zip(labels, opts)]
    label, extra = _resolve_label(spec, src, rec, len(choices))
    if harness is None:
        user = spec.user_template().format_map({**rec.fields, "choices": "\n".join(choices)})
    meta = {"source": row.file, "row": row.line, "split": split, **rec.meta, **extra}
    if harness is not None:
        meta["lmeval"] = harness.meta  # the raw harness requests (prefheads.eval.lmeval scores them)
    return Example(id=_row_id(spec, split, rec.id, row), prompt=as_prompt(user, system=spec.system), choices=choices, label=label,
                   task=spec.name, meta=meta)


def _row_id(spec: TaskSpec, split: str, own_id: str | None, row: Row) -> str:
    """The dataset's own id when it has one, else file name + line (a split may span files;
    where several of the split's files share a name, as HH-RLHF's subsets' ``test.jsonl.gz``,
    the name keeps its folder so ids stay unique)."""
    if own_id:
        return f"{split}:{own_id}"
    if row.file.startswith("hub:"):
        return f"{split}:{row.line}"
    path = Path(row.file)
    names = [Path(f).name for f in (spec.local.files.get(split, ()) if spec.local else ())]
    name = f"{path.parent.name}/{path.name}" if names.count(path.name) > 1 else path.name
    return f"{split}:{name}:{row.line}"


def _located(e: DataError, row: Row) -> DataError:
    return DataError(e.reason, e.file or row.file, e.line if e.line is not None else row.line, e.field)


def iter_records(spec: TaskSpec, split: str, *, data_dir: Any = None, path: Any = None,
                 skip_bad: bool = False, out: Loaded[Any], limit: int | None = None) -> Iterator[Any]:
    """Yield built examples (choice tasks) or pairs (pair tasks) of one concrete split.

    Bad rows raise :class:`DataError` (file, line, field) or, with ``skip_bad``, are counted in
    ``out.skipped``; rows without a preference signal are counted in ``out.dropped``.
    """
    rows, src = _rows(spec, split, data_dir, path, None if path is not None else limit)
    adapter = ADAPTERS.get(spec.adapter)
    for row in rows:
        try:
            if row.data is None:
                raise row_error(row)
            rec = adapter.fn(row.data, spec, src)
            if isinstance(rec, PairRecord):
                yield _build_pair(spec, rec, row, split)
            else:
                yield build_example(spec, src, rec, row, split)
        except DataError as e:
            err = _located(e, row)
            if not skip_bad:
                raise err from None
            out.note(str(err), skipped=True)
        except Drop as d:
            out.note(f"{row.file}:{row.line}: {d}", skipped=False)


def _build_pair(spec: TaskSpec, rec: PairRecord, row: Row, split: str) -> PreferencePair:
    pair = PreferencePair(id=_row_id(spec, split, rec.id, row), prompt=rec.prompt, chosen=rec.chosen, rejected=rec.rejected, task=spec.name)
    pair.meta.update({"source": row.file, "row": row.line, "split": split, **rec.meta})
    return pair


def collect(spec: TaskSpec, split: str, *, data_dir: Any = None, path: Any = None, limit: int | None = None,
            seed: int = 0, shuffle: bool = False, skip_bad: bool = False) -> Loaded[Any]:
    """Examples or pairs of ``split`` (``"train"``, ``"eval"`` or a concrete split name).

    ``limit`` applies per concrete split (MNLI's eval has two). Without ``shuffle`` the first
    ``limit`` rows in file order are kept and reading stops early; with it, a seeded shuffle
    of the whole split comes first.
    """
    out: Loaded[Any] = Loaded()
    names = _split_names(spec, split)
    if path is not None:  # one file is one split, read once (MNLI's eval would read it twice)
        names = names[:1]
    for name in names:
        part: Loaded[Any] = Loaded()
        it = iter_records(spec, name, data_dir=data_dir, path=path, skip_bad=skip_bad, out=part,
                          limit=None if shuffle else limit)
        if shuffle:
            items = list(it)
            random.Random(f"{seed}|{spec.name}|{name}").shuffle(items)
            part.extend(items[:limit] if limit is not None else items)
        elif limit != 0:
            for item in it:
                part.append(item)
                if limit is not None and len(part) >= limit:
                    break
        out.extend(part)
        out.absorb(part)
    if not out and limit != 0:
        where = str(path) if path is not None else f"{spec.name} [{split}]"
        if out.skipped or out.dropped:
            raise DataError(f"no usable rows: {out.skipped} bad row(s) skipped, {out.dropped} dropped without a "
                            f"preference signal; first: {out.problems[0] if out.problems else '?'}", file=where)
        raise DataError("no rows: the file is empty" if path is not None else "no rows", file=where)
    out.warn(f"{spec.name} [{split}]")
    return out
