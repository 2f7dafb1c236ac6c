"""Preference pairs from labelled examples, and seeded size-aware training mixes."""

from __future__ import annotations

import random
import warnings
from collections.abc import Callable, Mapping, Sequence

from prefheads.types import Example, PreferencePair

from .errors import Loaded


def _rng(seed: int, *parts: str) -> random.Random:
    # A string seed is hashed with SHA-512 by `random`, so this is stable across processes
    # and Python runs (unlike hash()), and each example's draw is independent of the others:
    # the same example yields the same pair whatever `limit` or order it was loaded with.
    return random.Random("|".join([str(seed), *parts]))


def pairs_from_examples(examples: Sequence[Example], seed: int = 0) -> Loaded[PreferencePair]:
    """One pair per labelled example: the correct choice preferred, a uniformly sampled
    incorrect choice dispreferred (PAPER.md section 4).

    Choices whose text equals the correct one are never sampled, so ``chosen != rejected``.
    Unlabelled examples and examples with no distinct wrong choice are dropped (counted in
    ``.dropped``). ``meta`` keeps the example's meta plus ``chosen_index`` / ``rejected_index``.

    Args:
        examples: Labelled examples.
        seed: Sampling seed; each example's draw depends only on (seed, task, id).
    """
    out: Loaded[PreferencePair] = Loaded()
    for ex in examples:
        if ex.label is None:
            out.note(f"{ex.task} {ex.id}: unlabelled example", skipped=False)
            continue
        right = ex.choices[ex.label]
        wrong = [i for i, c in enumerate(ex.choices) if i != ex.label and c != right]
        if not wrong:
            out.note(f"{ex.task} {ex.id}: no incorrect choice distinct from the correct one", skipped=False)
            continue
        j = _rng(seed, ex.task, ex.id).choice(wrong)
        meta = {**ex.meta, "chosen_index": ex.label, "rejected_index": j}
        out.append(PreferencePair(id=ex.id, prompt=[dict(m) for m in ex.prompt], chosen=right,
                                  rejected=ex.choices[j], task=ex.task, meta=meta))
    return out


def _allocate(total: int, rates: Mapping[str, float]) -> dict[str, int]:
    """Largest-remainder split of ``total`` items by ``rates`` (which sum to 1)."""
    raw = {k: total * r for k, r in rates.items()}
    counts = {k: int(v) for k, v in raw.items()}
    short = total - sum(counts.values())
    for k in sorted(raw, key=lambda k: (counts[k] - raw[k], k))[:short]:
        counts[k] += 1
    return counts


def mix(
    task_names: Sequence[str],
    load: Callable[[str], Sequence[PreferencePair]],
    expand: Callable[[str], list[str]],
    weights: Mapping[str, float] | Sequence[float] | None = None,
    seed: int = 0,
    limit: int | None = None,
) -> Loaded[PreferencePair]:
    """A seeded, shuffled training mix of several tasks' pairs, sized by task size.

    Rates: without ``weights`` each task contributes in proportion to its size (concatenate and
    shuffle). ``weights`` (name → weight, or a list aligned with ``task_names``) set the share of
    each named task or group; a group's share is split among its members by their sizes. The
    mix has ``limit`` pairs (default: the total size); a task asked for more pairs than it has
    is repeated in whole shuffled passes before any pair repeats a third time.

    Args:
        task_names: Task or group names (groups expand to their training members).
        load: ``name -> pairs`` for one task (the caller binds split / data dir / skip_bad).
        expand: ``name -> task names`` (group expansion for training).
        weights: Optional mixture weights.
        seed: Sampling seed.
        limit: Number of pairs in the mix.

    Returns:
        The pairs, with ``.counts`` (task → pairs taken) and the loaders' skip/drop counts.
    """
    if isinstance(weights, Sequence) and not isinstance(weights, (str, bytes)):
        if len(weights) != len(task_names):
            raise ValueError(f"{len(weights)} weights for {len(task_names)} task names")
        weights = dict(zip(task_names, weights))
    out: Loaded[PreferencePair] = Loaded()
    members: dict[str, list[str]] = {}
    data: dict[str, Sequence[PreferencePair]] = {}
    for name in task_names:
        members[name] = [t for t in expand(name) if t not in data]
        for t in members[name]:
            data[t] = load(t)
            if isinstance(data[t], Loaded):
                out.absorb(data[t])  # type: ignore[arg-type]
            if not data[t]:
                raise ValueError(f"task {t!r} has no pairs to mix")
    sizes = {t: len(v) for t, v in data.items()}
    if weights is None:
        n = sum(sizes.values())
        rates = {t: s / n for t, s in sizes.items()}
    else:
        unknown = sorted(set(weights) - set(task_names))
        if unknown:
            raise ValueError(f"weights for names not being mixed: {unknown}")
        if any(w < 0 for w in weights.values()) or not sum(weights.get(n, 0.0) for n in task_names):
            raise ValueError("weights must be non-negative and not all zero")
        z = sum(weights.get(n, 0.0) for n in task_names)
        rates = {}
        for name in task_names:
            group_size = sum(sizes[t] for t in members[name]) or 1
            for t in members[name]:
                rates[t] = weights.get(name, 0.0) / z * sizes[t] / group_size
    total = sum(sizes.values()) if limit is None else int(limit)
    counts = _allocate(total, rates)
    for t, k in counts.items():
        pool = list(data[t])
        taken: list[PreferencePair] = []
        rng = _rng(seed, "mix", t)
        while len(taken) < k:
            rng.shuffle(pool)
            taken.extend(pool[: k - len(taken)])
        if k > len(pool):
            warnings.warn(f"mix: task {t!r} repeated ({k} pairs from {len(pool)})", stacklevel=2)
        out.extend(taken)
    _rng(seed, "mix").shuffle(out)
    out.counts = counts
    return out
