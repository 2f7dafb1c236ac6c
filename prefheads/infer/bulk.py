"""Bulk scoring: a JSONL of rows in, every head's rewards out — streaming, resumable, sharded.

Input rows (one JSON object per line; blank lines are skipped)::

    {"id": ..., "prompt": ..., "candidates": ["...", ...]}
    {"id": ..., "prompt": ..., "chosen": "...", "rejected": "..."}

``prompt`` is a user string or a message list; ``id`` (any JSON value) defaults to the row's
0-based position among the file's rows. Output rows, in input order::

    {"id": ..., "rewards": {"<head>": [reward per candidate]}}
    {"id": ..., "rewards": {"<head>": {"chosen": r, "rejected": r}}}

Rows are read a window at a time (``batch_rows``), so memory does not grow with the file; each
window's candidates are length-bucketed into forwards by the engine (shared prefix or full
encoding, whichever runs fewer tokens), and its rows are appended to the output, flushed and
fsynced before the next window is read. A run killed at any point (even ``kill -9``) leaves a
prefix of the output: ``resume=True`` drops a torn last line, checks the rows already written
against the input (each row's id, heads and number of rewards; rows without an ``id`` are
matched by position only, so give ids where inputs may change), and re-scores the window it
stopped in — windows are fixed by row position, so with the same ``batch_rows`` the resumed
output is identical to an uninterrupted run's (another window size pads other batches: the same
rewards up to float rounding).

Data parallel: with ``world`` processes (``accelerate launch --num_processes N``), process
``rank`` scores rows ``i % world == rank`` into its own part file; once every process is done
(``barrier``), rank 0 merges the parts into ``out`` in input order and removes them.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from prefheads.infer.scoring import encode_all, score_items
from prefheads.tasks.errors import DataError
from prefheads.types import as_prompt, check_completion

if TYPE_CHECKING:
    from prefheads.model import PreferenceModel


class BulkOutputError(ValueError):
    """An output file this run must not write (exists, or belongs to another input or run)."""


@dataclass
class Row:
    """One input row.

    Attributes:
        index: 0-based position among the file's rows (blank lines not counted).
        id: The row's ``id`` (default: ``index``).
        prompt: User string or message list.
        candidates: Replies to score (``[chosen, rejected]`` for a pair row).
        pair: Whether the row came as ``chosen`` / ``rejected``.
        source: Where it came from (file path), and
        line: its 1-based line there, for error messages.
    """

    index: int
    id: Any
    prompt: Any
    candidates: list[str]
    pair: bool
    source: str = "records"
    line: int | None = None


@dataclass
class BulkResult:
    """What :func:`score_file` did (for this process).

    Attributes:
        rows: Rows scored and written by this run.
        resumed: Rows found already done and skipped.
        seconds: Wall time of the scoring.
        out: The output file (merged by rank 0 when several processes ran).
    """

    rows: int
    resumed: int
    seconds: float
    out: Path


def _absent(value: Any) -> bool:
    """Whether a field value stands for "no such field": None, NaN or pandas' NA (what a
    DataFrame row holds for a key that other rows have and this one lacks)."""
    if value is None:
        return True
    if isinstance(value, float):
        return math.isnan(value)
    return type(value).__name__ == "NAType"


def _plain(value: Any) -> Any:
    """Array-likes (a DataFrame's numpy cells, numpy scalars) as plain Python values."""
    return value.tolist() if hasattr(value, "tolist") and not isinstance(value, (str, bytes)) else value


def parse_row(obj: Any, index: int, source: str = "records", line: int | None = None) -> Row:
    """A :class:`Row` from a decoded JSON object (or a DataFrame record: array cells are read as
    lists, None / NaN cells as absent keys); :class:`DataError` naming the field otherwise."""
    def bad(reason: str, field: str | None = None) -> DataError:
        return DataError(reason, source, line if line is not None else index, field)

    if not isinstance(obj, dict):
        raise bad(f"expected a JSON object, got {type(obj).__name__}")
    obj = {k: _plain(v) for k, v in obj.items() if not _absent(v)}
    if "prompt" not in obj:
        raise bad("no prompt", "prompt")
    try:
        as_prompt(obj["prompt"])
    except (TypeError, ValueError) as e:
        raise bad(str(e), "prompt") from None
    if "candidates" in obj:
        cands = obj["candidates"]
        if not isinstance(cands, list) or not cands or not all(isinstance(c, str) for c in cands):
            raise bad("expected a non-empty list of strings", "candidates")
        for i, c in enumerate(cands):
            try:
                check_completion(c, f"candidate {i}")
            except ValueError as e:
                raise bad(str(e), "candidates") from None
        return Row(index, obj.get("id", index), obj["prompt"], list(cands), False, source, line)
    if "chosen" in obj or "rejected" in obj:
        for k in ("chosen", "rejected"):
            if not isinstance(obj.get(k), str):
                raise bad("expected a string", k)
            try:
                check_completion(obj[k], k)
            except ValueError as e:
                raise bad(str(e), k) from None
        return Row(index, obj.get("id", index), obj["prompt"], [obj["chosen"], obj["rejected"]], True, source, line)
    raise bad('a row holds "candidates", or "chosen" and "rejected"')


def read_rows(path: str | os.PathLike) -> Iterator[Row]:
    """Stream the rows of a JSONL file (checked one by one; a bad row raises :class:`DataError`)."""
    index = 0
    with open(path, encoding="utf-8") as f:
        for line_no, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"invalid JSON ({e})", str(path), line_no) from None
            yield parse_row(obj, index, str(path), line_no)
            index += 1


def _record(row: Row, rewards: dict[str, list[float]]) -> dict[str, Any]:
    if row.pair:
        return {"id": row.id, "rewards": {h: {"chosen": v[0], "rejected": v[1]} for h, v in rewards.items()}}
    return {"id": row.id, "rewards": rewards}


def score_window(pm: PreferenceModel, rows: list[Row], shared_prefix: bool | str = "auto",
                 heads: list[str] | None = None) -> list[dict[str, Any]]:
    """Output records of ``rows``, in their order, from one call of the engine (``heads``;
    default: every head)."""
    items = []
    for row in rows:
        try:
            items += encode_all(pm, [row.prompt] * len(row.candidates), row.candidates)
        except (ValueError, TypeError) as e:
            where = row.line if row.line is not None else row.index
            raise DataError(f"row id {row.id!r}: {e}", row.source, where) from None
    rewards = score_items(pm, items, heads=heads, shared_prefix=shared_prefix)
    out, start = [], 0
    for row in rows:
        n = len(row.candidates)
        out.append(_record(row, {h: v[start:start + n].tolist() for h, v in rewards.items()}))
        start += n
    return out


def score_records(pm: PreferenceModel, records: Iterable[dict[str, Any]], shared_prefix: bool | str = "auto",
                  heads: list[str] | None = None) -> list[dict[str, Any]]:
    """Score a batch of row dicts (the input shape above) in one call: the step a Ray Data
    ``map_batches`` or a Spark ``mapInPandas`` function runs (``DataFrame.to_dict("records")``
    rows are read as they come: array cells as lists, None / NaN as absent keys). ``id``
    defaults to the position; ``heads`` (default: every head) picks the heads scored."""
    heads = _heads(pm, heads)
    rows = [parse_row(r, i) for i, r in enumerate(records)]
    return score_window(pm, rows, shared_prefix, heads) if rows else []


def _heads(pm: PreferenceModel, heads: list[str] | None) -> list[str]:
    """``heads`` checked against ``pm`` (default: every head of ``pm``)."""
    if heads is None:
        return list(pm.head_names)
    unknown = [h for h in heads if h not in pm.heads]
    if unknown or not heads:
        raise ValueError(f"no head named {unknown[0]!r}; heads: {pm.head_names}" if unknown else "no heads to score")
    return list(dict.fromkeys(heads))


# ----------------------------------------------------------------------------- files
def part_path(out: Path, rank: int, world: int) -> Path:
    """The file process ``rank`` of ``world`` writes (``out`` itself for one process)."""
    return out if world == 1 else out.with_name(f"{out.name}.part{rank:05d}-of-{world:05d}")


def _complete_lines(path: Path) -> int:
    """Count the complete JSON lines of ``path``, cutting off a torn or unreadable tail."""
    good_end = count = 0
    with open(path, "rb") as f:
        for line in f:
            if not line.endswith(b"\n"):
                break
            try:
                json.loads(line)
            except ValueError:
                break
            good_end += len(line)
            count += 1
    if good_end != path.stat().st_size:
        with open(path, "r+b") as f:  # a kill mid-write: drop the partial line
            f.truncate(good_end)
            f.flush()
            os.fsync(f.fileno())
    return count


def _check_outputs(out: Path, rank: int, world: int, resume: bool, overwrite: bool) -> None:
    others = sorted(p.name for p in out.parent.glob(f"{out.name}.part*-of-*")
                    if not p.name.endswith(f"-of-{world:05d}"))
    if others and not overwrite:
        raise BulkOutputError(f"{out.parent}: part files of a run with another number of processes ({others[0]}...): "
                              "resume with that many processes, or pass --overwrite")
    mine = part_path(out, rank, world)
    if world > 1 and out.exists() and not overwrite:
        raise BulkOutputError(f"{out} exists: pass --overwrite to replace it (a multi-process --resume continues "
                              "from its part files, not from a merged output)")
    if mine.exists() and not (resume or overwrite):
        raise BulkOutputError(f"{mine} exists: pass --resume to continue it, or --overwrite to replace it")


def _merge(out: Path, world: int) -> None:
    """Interleave the part files (row i is in part i % world) into ``out``, atomically."""
    parts = [part_path(out, r, world) for r in range(world)]
    tmp = out.with_name(f".{out.name}.merging")
    with contextlib.ExitStack() as stack:
        files = [stack.enter_context(open(p, "rb")) for p in parts]
        dst = stack.enter_context(open(tmp, "wb"))
        i = 0
        while True:
            line = files[i % world].readline()
            if not line:
                rest = [p.name for p, f in zip(parts, files) if f.readline()]
                if rest:
                    raise BulkOutputError(f"part files out of step at row {i}: {rest} hold more rows")
                break
            dst.write(line)
            i += 1
        dst.flush()
        os.fsync(dst.fileno())
    os.replace(tmp, out)
    for p in parts:
        p.unlink()


def _windows(rows: Iterable[Row], size: int) -> Iterator[list[Row]]:
    window: list[Row] = []
    for row in rows:
        window.append(row)
        if len(window) == size:
            yield window
            window = []
    if window:
        yield window


def score_file(pm: PreferenceModel, input: str | os.PathLike, out: str | os.PathLike, *, resume: bool = False,
               overwrite: bool = False, batch_rows: int = 256, rank: int = 0, world: int = 1,
               barrier: Callable[[], None] | None = None, progress: bool = True,
               shared_prefix: bool | str = "auto", heads: list[str] | None = None) -> BulkResult:
    """Score every row of ``input`` with every head of ``pm`` into ``out`` (see the module docstring).

    Args:
        pm: A :class:`~prefheads.model.PreferenceModel` with heads.
        input: JSONL of rows.
        out: Output JSONL.
        resume: Continue an interrupted run's output.
        overwrite: Replace an existing output.
        batch_rows: Rows per window (scored in one engine call, then written and fsynced).
        rank: This process's index among ``world``.
        world: Number of processes sharing the rows.
        barrier: Waits for every process (required when ``world > 1``).
        progress: Show a progress bar (rank 0).
        shared_prefix: Engine choice (``"auto"``: per window).
        heads: The heads scored (default: every head of ``pm``).

    Every row is checked before anything is written (so a bad row never costs an existing
    output), and ``out`` may not be ``input``.
    """
    if batch_rows < 1:
        raise ValueError(f"batch_rows must be >= 1, got {batch_rows}")
    if world > 1 and barrier is None:
        raise ValueError("several processes need a barrier to merge their parts")
    heads = _heads(pm, heads)
    input, out = Path(input), Path(out)
    if not input.is_file():
        raise FileNotFoundError(f"no input file {input}")
    mine = part_path(out, rank, world)
    if input.resolve() in (out.resolve(), mine.resolve()):
        raise BulkOutputError(f"{out} is the input file: write the scores to another file")
    _check_outputs(out, rank, world, resume, overwrite)
    n = sum(1 for _ in read_rows(input))  # every row checked before the output is touched
    total = len(range(rank, n, world))
    done = _complete_lines(mine) if resume and mine.exists() else 0
    mode = "ab" if resume else "wb"
    t0 = time.perf_counter()
    written = seen = 0
    from prefheads.progress import bar

    with open(mine, mode) as dst, bar(progress and rank == 0) as p, \
            (open(mine, "rb") if done else contextlib.nullcontext()) as old:
        task = p.add_task("scoring", total=total, completed=done)
        shard = (row for row in read_rows(input) if row.index % world == rank)
        for k, window in enumerate(_windows(shard, batch_rows)):
            start = k * batch_rows  # shard position of the window's first row
            seen = start + len(window)
            if start + len(window) <= done:  # written in full before: check its ids, skip it
                for row in window:
                    _check_done_row(old.readline(), row, heads)
                continue
            records = score_window(pm, window, shared_prefix, heads)
            for pos, (row, rec) in enumerate(zip(window, records), start):
                if pos < done:  # the window the last run stopped in: its first rows are written
                    _check_done_row(old.readline(), row, heads)
                    continue
                dst.write((json.dumps(rec, ensure_ascii=False) + "\n").encode("utf-8"))
                written += 1
            dst.flush()
            os.fsync(dst.fileno())
            rate = written / (time.perf_counter() - t0)
            p.update(task, completed=done + written, info=f"{rate:.1f} rows/s" + (f" × {world} processes" if world > 1 else ""))
        if seen < done:
            raise BulkOutputError(f"{mine} holds more rows than this input gives it: it was written from another "
                                  "input; pass --overwrite to start over")
    seconds = time.perf_counter() - t0
    if world > 1:
        barrier()
        if rank == 0:
            _merge(out, world)
        barrier()  # nobody leaves before the merged file is in place
    return BulkResult(written, done, seconds, out)


def _check_done_row(line: bytes, row: Row, heads: list[str]) -> None:
    """Check that a written output line is ``row``'s: its id, and the shape of its rewards (the
    same heads, one reward per candidate, or a chosen / rejected pair)."""
    if not line:
        raise BulkOutputError(f"the output ends before row {row.index}: it was cut mid-way")
    rec = json.loads(line)
    stored = rec.get("id") if isinstance(rec, dict) else None
    if stored != row.id:
        raise BulkOutputError(f"the output holds id {stored!r} where the input's row {row.index} has id {row.id!r}: "
                              "it was written from another input; pass --overwrite to start over")
    rewards = rec.get("rewards")
    if not isinstance(rewards, dict) or sorted(rewards) != sorted(heads):
        got = sorted(rewards) if isinstance(rewards, dict) else rewards
        raise BulkOutputError(f"the output's row {row.index} (id {row.id!r}) holds the rewards of heads {got}, this "
                              f"run scores {sorted(heads)}: pass the same heads, or --overwrite to start over")
    want = "a chosen / rejected pair" if row.pair else f"{len(row.candidates)} rewards"
    for h, v in rewards.items():
        fits = (isinstance(v, dict) and sorted(v) == ["chosen", "rejected"]) if row.pair else \
            (isinstance(v, list) and len(v) == len(row.candidates))
        if not fits:
            raise BulkOutputError(f"the output's row {row.index} (id {row.id!r}) does not hold {want} for head {h!r}, "
                                  "as the input row asks: it was written from another input; pass --overwrite to "
                                  "start over")
