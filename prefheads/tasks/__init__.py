"""Task registry and data loaders.

Tasks are YAML files in ``defs/`` (one per task; groups in ``_groups.yaml``, system prompts in
``_prompts.yaml``); the templates are exactly those of PAPER.md section 6. Typical use::

    from prefheads import tasks
    tasks.list_tasks()                                  # ['arc_challenge', 'arc_easy', ...]
    exs = tasks.load_examples("glue/rte", data_dir="/path/to/shared/data")
    pairs = tasks.load_pairs("openbookqa", data_dir="bundled", seed=0)
    print(tasks.render(exs[0]))
    train = tasks.mix(["glue", "race"], data_dir=..., limit=10_000)   # GLUE without WNLI

Data location: ``data_dir`` (or ``"bundled"``), else ``$PREFHEADS_DATA``, else the hub.
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from prefheads.types import Example, PreferencePair

from .errors import DataError, Loaded
from .loaders import bundled_data_dir, collect, resolve_data_dir
from .pairs import mix as _mix
from .pairs import pairs_from_examples
from .render import chatml, render
from .catalog import load_defs
from .spec import GroupSpec, SpecError, TaskSpec

__all__ = [
    "DataError", "GroupSpec", "Loaded", "SpecError", "TaskSpec", "bundled_data_dir", "chatml",
    "expand", "get_group", "get_task", "list_groups", "list_tasks", "load_examples", "load_pairs",
    "mix", "pairs_from_examples", "render", "resolve_data_dir", "describe", "data_files",
]

_TASKS: dict[str, TaskSpec] = {}
_GROUPS: dict[str, GroupSpec] = {}


def _registry() -> tuple[dict[str, TaskSpec], dict[str, GroupSpec]]:
    if not _TASKS:
        tasks, groups = load_defs()
        _TASKS.update(tasks)
        _GROUPS.update(groups)
    return _TASKS, _GROUPS


def list_tasks() -> list[str]:
    """Names of every defined task, sorted."""
    return sorted(_registry()[0])


def list_groups() -> list[str]:
    """Names of the task groups (``glue``, ``gpt4all``, ``race``), sorted."""
    return sorted(_registry()[1])


def _split_path(name: str) -> tuple[str, str | None]:
    # "pairs:/path/file.jsonl" → ("pairs", "/path/file.jsonl")
    if name.startswith("pairs:"):
        return "pairs", name[len("pairs:"):]
    return name, None


def get_task(name: str, variant: str = "paper") -> TaskSpec:
    """The :class:`TaskSpec` of ``name`` with template ``variant`` applied.

    Raises:
        KeyError: For an unknown name (the message suggests close names).
    """
    tasks, _ = _registry()
    name = _split_path(name)[0]
    if name not in tasks:
        close = difflib.get_close_matches(name, list(tasks) + list(_GROUPS), n=3)
        hint = f"; did you mean {close}?" if close else ""
        raise KeyError(f"unknown task {name!r}{hint} (known: {', '.join(sorted(tasks))})")
    return tasks[name].with_variant(variant)


def get_group(name: str) -> GroupSpec:
    """The :class:`GroupSpec` of group ``name``."""
    groups = _registry()[1]
    if name not in groups:
        raise KeyError(f"unknown group {name!r} (known: {', '.join(sorted(groups))})")
    return groups[name]


def expand(name_or_group: str, train: bool = False) -> list[str]:
    """Task names of a group (in reporting order), or ``[name]`` for a task.

    Args:
        name_or_group: A task or group name.
        train: Leave out the group's ``train_exclude`` members (GLUE trains without WNLI, as
            in the paper; evaluation keeps it).
    """
    tasks, groups = _registry()
    if name_or_group in groups:
        g = groups[name_or_group]
        return [m for m in g.members if not (train and m in g.train_exclude)]
    return [get_task(name_or_group).name]


def load_examples(name: str, split: str = "eval", data_dir: str | os.PathLike[str] | None = None,
                  limit: int | None = None, seed: int = 0, skip_bad: bool = False, *,
                  variant: str = "paper", shuffle: bool = False,
                  path: str | os.PathLike[str] | None = None) -> Loaded[Example]:
    """Labelled multiple-choice examples of a choice task.

    Args:
        name: Task name (``glue/rte``...).
        split: ``"eval"`` (the paper's eval split(s); MNLI: matched then mismatched, told apart
            by ``meta["split"]``), ``"train"``, or a concrete split name (``"validation"``).
        data_dir: Folder laid out like ``shared/data``, or ``"bundled"``; ``None``:
            ``$PREFHEADS_DATA``, else the Hugging Face hub.
        limit: Keep at most this many examples per concrete split.
        seed: Shuffle seed (with ``shuffle``).
        skip_bad: Skip malformed rows (counted in ``.skipped``, with a warning) instead of
            raising :class:`DataError`.
        variant: Template variant: ``paper``, ``paper_fixed``, ``reference``, or ``lm-eval``
            (lm-evaluation-harness's own prompt; ``meta["lmeval"]`` then holds the raw harness
            contexts / continuations that :func:`prefheads.eval.lmeval.score_lmeval` scores).
        shuffle: Shuffle (seeded) before ``limit``.
        path: Read this one file instead of the data dir layout.

    Returns:
        A list of :class:`~prefheads.types.Example` (a :class:`Loaded`) whose ``meta`` holds
        ``source`` (file), ``row`` (line), ``split`` and, for STS-B, ``score``.
    """
    spec = get_task(name, variant)
    if spec.kind != "choice":
        raise ValueError(f"task {spec.name!r} holds preference pairs, not labelled examples; use load_pairs")
    return collect(spec, split, data_dir=data_dir, path=path or _split_path(name)[1], limit=limit,
                   seed=seed, shuffle=shuffle, skip_bad=skip_bad)


def load_pairs(name: str, split: str = "train", data_dir: str | os.PathLike[str] | None = None,
               limit: int | None = None, seed: int = 0, skip_bad: bool = False, *,
               variant: str = "paper", shuffle: bool = False,
               path: str | os.PathLike[str] | None = None) -> Loaded[PreferencePair]:
    """Preference pairs of a task.

    Choice tasks give one pair per labelled example (:func:`pairs_from_examples`, seeded);
    preference datasets (``ultrafeedback``, ``orca_dpo``, ``hh_rlhf``) are read as they are, the
    chosen / rejected texts being the final assistant replies. The generic ``pairs`` task reads
    a JSONL of ``{prompt, chosen, rejected}`` given by ``path`` (or ``name="pairs:<path>"``).
    Arguments as for :func:`load_examples`; ``limit`` caps rows read per split.
    """
    spec = get_task(name, variant)
    path = path or _split_path(name)[1]
    loaded = collect(spec, split, data_dir=data_dir, path=path, limit=limit, seed=seed, shuffle=shuffle,
                     skip_bad=skip_bad)
    if spec.kind == "pairs":
        return loaded
    pairs = pairs_from_examples(loaded, seed=seed)
    pairs.absorb(loaded)
    return pairs


def mix(task_names: Sequence[str], split: str = "train", data_dir: str | os.PathLike[str] | None = None,
        weights: Mapping[str, float] | Sequence[float] | None = None, seed: int = 0,
        limit: int | None = None, skip_bad: bool = False, *, variant: str = "paper",
        per_task_limit: int | None = None) -> Loaded[PreferencePair]:
    """A seeded, size-aware mix of several tasks' preference pairs for training.

    Groups expand to their training members (``glue`` without WNLI). Without ``weights`` each
    task contributes in proportion to its size; ``weights`` (name → weight or a list aligned
    with ``task_names``) set each named task's / group's share, a group's share being split by
    member size. See :func:`prefheads.tasks.pairs.mix`.

    Args:
        task_names: Task and/or group names.
        split: Split to draw from (``"train"``).
        data_dir: As for :func:`load_examples`.
        weights: Optional mixture weights.
        seed: Seed for pair construction and sampling.
        limit: Size of the mix (default: all pairs of all tasks).
        skip_bad: As for :func:`load_examples`.
        variant: Template variant.
        per_task_limit: Read at most this many rows per task (quick runs).

    Returns:
        Shuffled pairs with ``.counts`` (task → number of pairs taken).
    """
    def load(t: str) -> Sequence[PreferencePair]:
        return load_pairs(t, split, data_dir, limit=per_task_limit, seed=seed, skip_bad=skip_bad, variant=variant)

    return _mix(list(task_names), load, lambda n: expand(n, train=split == "train"), weights, seed, limit)


def describe(name: str) -> dict[str, Any]:
    """A small summary of a task for listings: group, splits, system prompt id, metrics."""
    s = get_task(name)
    return {"name": s.name, "group": s.group, "kind": s.kind, "train_split": s.train_split,
            "eval_splits": list(s.eval_splits), "system": s.system_id, "metrics": list(s.metrics),
            "hub": s.hub.id if s.hub else None, "revision": s.hub.revision if s.hub else None, "bundled": bool(s.bundled), "description": s.description,
            "lm_eval": s.lm_eval.task if s.lm_eval else None}


def data_files(name: str, data_dir: str | os.PathLike[str] | None = None) -> dict[str, list[Path]]:
    """Split → local file paths of a task under ``data_dir`` (whether or not they exist)."""
    spec = get_task(name)
    root = resolve_data_dir(data_dir)
    src = spec.bundled if root is not None and root.resolve() == bundled_data_dir().resolve() else spec.local
    if root is None or src is None:
        return {}
    return {split: [root / p for p in paths] for split, paths in src.files.items()}
