"""Recipe data: mixes of task sources as LM samples, head-training candidates or benchmarks."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from prefheads.recipes.config import TaskSource
from prefheads.training.data import Candidates, from_examples, from_pairs
from prefheads.training.sft import LMSample
from prefheads.types import Example, PreferencePair

if TYPE_CHECKING:
    from prefheads.model import PreferenceModel

log = logging.getLogger(__name__)


def expand(sources: Sequence[TaskSource]) -> list[TaskSource]:
    """One source per task: groups expanded (training splits without their excluded members)."""
    from prefheads import tasks

    out = []
    for s in sources:
        for name in tasks.expand(s.task, train=s.split == "train"):
            out.append(TaskSource(task=name, split=s.split, limit=s.limit, offset=s.offset))
    return out


def load_rows(src: TaskSource, data_dir: str | None, seed: int,
              variant: str = "paper") -> list[Example] | list[PreferencePair]:
    """Examples (choice tasks) or pairs (preference datasets) of one expanded source.

    The split's seeded order (the one benchmarks take their first ``limit`` rows of) without its
    first ``offset`` rows, then at most ``limit`` rows, rendered with template ``variant``.
    """
    from prefheads import tasks

    limit = None if src.limit is None else src.offset + src.limit
    kw = dict(split=src.split, data_dir=data_dir, limit=limit, seed=seed, shuffle=src.limit is not None or src.offset > 0,
              variant=variant)
    pairs = tasks.get_task(src.task).kind == "pairs"
    loaded = list((tasks.load_pairs if pairs else tasks.load_examples)(src.task, **kw))
    if src.offset and len({r.meta.get("split") for r in loaded}) > 1:
        raise ValueError(f"{src.task} [{src.split}]: offset needs one concrete split (this one has several): "
                         "name the split, e.g. split: validation_matched")
    if pairs:
        return loaded[src.offset:]
    rows = [ex for ex in loaded[src.offset:] if ex.label is not None]
    if not rows:
        raise ValueError(f"{src.task} [{src.split}]: no labelled examples (hub test splits hide labels)")
    return rows


def check_disjoint(mixes: Mapping[str, Sequence[TaskSource]], benchmarks: Sequence[TaskSource],
                   data_dir: str | None, seed: int) -> None:
    """Refuse a training mix that holds any row a benchmark scores (same task, same row id).

    Args:
        mixes: Config field (``train``, ``heads.<name>``) → its training mix. Each benchmark a
            mix trains on is loaded once for all of them.

    Raises:
        ValueError: Naming the field, the task, the training split, how many rows are shared and
            the ``offset`` that would skip them.
    """
    sources = {f: expand(m) for f, m in mixes.items()}
    trained = {s.task for srcs in sources.values() for s in srcs}
    scored: dict[str, tuple[set[str], int | None]] = {}
    for b in expand(benchmarks):
        if b.task not in trained:
            continue
        ids = {r.id for r in load_rows(TaskSource(task=b.task, split="eval", limit=b.limit), data_dir, seed)}
        old_ids, old_limit = scored.get(b.task, (set(), 0))
        limit = None if b.limit is None or old_limit is None else max(b.limit, old_limit)
        scored[b.task] = (old_ids | ids, limit)
    for field, srcs in sources.items():
        for s in srcs:
            if s.task not in scored:
                continue
            ids, limit = scored[s.task]
            shared = ids & {r.id for r in load_rows(s, data_dir, seed)}
            if shared:
                hint = (f"offset: {limit} skips the rows the benchmark scores" if limit is not None else
                        "the benchmark scores the whole split: give it a limit and the training source an offset")
                raise ValueError(f"{field}: {s.task} [{s.split}] holds {len(shared)} of the rows its benchmark "
                                 f"scores (e.g. {min(shared)}); {hint}")


def lm_samples(sources: Sequence[TaskSource], data_dir: str | None, seed: int) -> list[LMSample]:
    """SFT samples: each choice example with its correct answer, each preference pair with its chosen reply."""
    out = []
    for src in expand(sources):
        for r in load_rows(src, data_dir, seed):
            if isinstance(r, Example):
                out.append(LMSample(r.task, r.prompt, r.choices[r.label]))  # type: ignore[index]
            else:
                out.append(LMSample(r.task, r.prompt, r.chosen))
    return out


def encodable(pm: PreferenceModel) -> Callable[[Any, str], bool]:
    """A ``keep`` filter for :func:`candidates`: rows the model can encode (reward token within limits)."""

    def fits(prompt: Any, completion: str) -> bool:
        try:
            pm.encode([prompt], [completion])
            return True
        except ValueError:
            return False

    return fits


def merge(parts: Sequence[Candidates]) -> Candidates:
    """Concatenate candidate sets (rows renumbered)."""
    out = Candidates()
    for c in parts:
        base = len(out.completions)
        out.prompts += c.prompts
        out.completions += c.completions
        out.groups += [(w + base, [l + base for l in ls]) for w, ls in c.groups]
        out.ids += c.ids
    return out


def candidates(sources: Sequence[TaskSource], data_dir: str | None, seed: int,
               keep: Callable[[Any, str], bool] | None = None,
               variant: str = "paper") -> tuple[Candidates, dict[str, int]]:
    """Head-training candidates of a mix, and the number of examples per task.

    Choice examples keep all their choices (the loop draws a fresh wrong answer every epoch);
    preference pairs are groups of one wrong answer.

    Args:
        sources: The mix.
        data_dir: Data location.
        seed: Sampling seed.
        keep: Optional ``(prompt, completion) -> bool``; an example or pair any of whose
            candidates it rejects is left out (e.g. one that would not fit the context).
        variant: Template family the choice tasks are rendered with.
    """
    parts, counts = [], {}
    for src in expand(sources):
        rows = load_rows(src, data_dir, seed, variant)
        if keep is not None:
            before = len(rows)
            rows = [r for r in rows if all(keep(r.prompt, c) for c in _completions(r))]
            if len(rows) < before:
                log.warning("%s: %d of %d rows left out (too long for the context)", src.task, before - len(rows), before)
        if not rows:
            continue
        parts.append(from_examples(rows) if isinstance(rows[0], Example) else from_pairs(rows))  # type: ignore[arg-type]
        counts[src.task] = counts.get(src.task, 0) + len(rows)
    if not parts:
        raise ValueError("the training mix is empty")
    return merge(parts), counts


def _completions(r: Example | PreferencePair) -> list[str]:
    return list(r.choices) if isinstance(r, Example) else [r.chosen, r.rejected]
