"""Training rows: flat (prompt, completion) candidates plus which one is preferred.

Labelled multiple-choice examples keep every choice, so that the features of all candidates are
computed once and each epoch can pair the correct answer with a freshly, uniformly sampled
incorrect one (the paper's pairing, re-drawn per epoch at no backbone cost). Preference pairs
are the special case of one dispreferred candidate.
"""

from __future__ import annotations

import json
import random
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor

from prefheads.types import Example, PreferencePair, Prompt


@dataclass
class Candidates:
    """Rows to encode and how they pair up.

    Attributes:
        prompts: Prompt of each row.
        completions: Completion of each row.
        groups: ``(preferred_row, [dispreferred_rows])`` per example.
        ids: Example id per group (for reports and errors).
        source: Where the rows came from (a file or task name), for error messages.
        skipped: Bad rows the loader skipped (``skip_bad``).
        dropped: Rows the loader dropped for carrying no preference signal.
    """

    prompts: list[Prompt | str] = field(default_factory=list)
    completions: list[str] = field(default_factory=list)
    groups: list[tuple[int, list[int]]] = field(default_factory=list)
    ids: list[str] = field(default_factory=list)
    source: str = ""
    skipped: int = 0
    dropped: int = 0

    def __len__(self) -> int:
        return len(self.groups)

    def subset(self, group_idx: Sequence[int]) -> "Candidates":
        """The candidates of the given groups, renumbered."""
        out = Candidates(source=self.source)
        for g in group_idx:
            w, ls = self.groups[g]
            base = len(out.completions)
            rows = [w] + ls
            for r in rows:
                out.prompts.append(self.prompts[r])
                out.completions.append(self.completions[r])
            out.groups.append((base, list(range(base + 1, base + len(rows)))))
            out.ids.append(self.ids[g])
        return out


def _counted(rows: Sequence, source: str) -> Candidates:
    # a loader's Loaded list carries what it left out; keep the counts for the run's report
    return Candidates(source=source, skipped=getattr(rows, "skipped", 0), dropped=getattr(rows, "dropped", 0))


def from_examples(examples: Sequence[Example], source: str = "") -> Candidates:
    """Candidates of labelled multiple-choice examples (unlabelled ones are an error).

    A wrong choice whose text equals the correct one is left out (it would pair an answer with
    itself); an example with no distinct wrong choice left is dropped and counted in ``dropped``.
    """
    out = _counted(examples, source)
    for ex in examples:
        if ex.label is None:
            raise ValueError(f"{ex.id}: example has no label; it cannot train a head")
        if len(ex.choices) < 2:
            raise ValueError(f"{ex.id}: needs at least 2 choices, got {len(ex.choices)}")
        right = ex.choices[ex.label]
        keep = [j for j, c in enumerate(ex.choices) if j == ex.label or c != right]
        if len(keep) < 2:
            out.dropped += 1
            continue
        base = len(out.completions)
        for j in keep:
            out.prompts.append(ex.prompt)
            out.completions.append(ex.choices[j])
        out.groups.append((base + keep.index(ex.label),
                           [base + i for i, j in enumerate(keep) if j != ex.label]))
        out.ids.append(ex.id)
    return out


def from_pairs(pairs: Sequence[PreferencePair], source: str = "") -> Candidates:
    """Candidates of preference pairs."""
    out = _counted(pairs, source)
    for p in pairs:
        base = len(out.completions)
        out.prompts += [p.prompt, p.prompt]
        out.completions += [p.chosen, p.rejected]
        out.groups.append((base, [base + 1]))
        out.ids.append(p.id)
    return out


def prompt_keys(cands: Candidates) -> list[str]:
    """One key per group: its prompt (the messages as JSON), so that the groups of one prompt
    (several preference pairs of one conversation) can be kept on one side of a split."""
    return [json.dumps(cands.prompts[w], sort_keys=True, ensure_ascii=False) for w, _ in cands.groups]


def split(n: int, val_fraction: float, seed: int,
          keys: Sequence[Hashable] | None = None) -> tuple[list[int], list[int]]:
    """Seeded (train, validation) split of ``range(n)``; validation is empty for fraction 0.

    With ``keys`` (one per item, e.g. :func:`prompt_keys`), items that share a key fall on the
    same side: validation never scores a prompt that training saw, so choosing an epoch or a layer
    on it is not flattered by memorised prompts. Each key goes where the split without keys puts
    its first item (in data order), so items of a key of their own stay where they were.
    """
    idx = list(range(n))
    random.Random(seed).shuffle(idx)
    n_val = int(round(n * val_fraction)) if n > 1 else 0
    n_val = min(n_val, n - 1)
    if keys is not None and len(keys) != n:
        raise ValueError(f"{len(keys)} keys for {n} items")
    if keys is None or not n_val or len(set(keys)) == n:
        return sorted(idx[n_val:]), sorted(idx[:n_val])
    held = set(idx[:n_val])
    side: dict[Hashable, bool] = {}
    for i in range(n):  # a key's first item in data order: its side is a fair draw
        side.setdefault(keys[i], i in held)
    va = sorted(i for i in idx if side[keys[i]])
    tr = sorted(i for i in idx if not side[keys[i]])
    if not va:  # no key's first item fell in validation: the first drawn item's key validates
        first = keys[idx[0]]
        tr, va = sorted(i for i in tr if keys[i] != first), sorted(i for i in tr if keys[i] == first)
    if not tr:  # every key's first item fell in validation: the last drawn item's key trains
        last = keys[idx[-1]]
        tr, va = sorted(i for i in va if keys[i] == last), sorted(i for i in va if keys[i] != last)
    return tr, va


def choice_share(score: Mapping[int, float] | Sequence[float], groups: Sequence[tuple[int, list[int]]]) -> float:
    """Share of groups whose preferred row scores strictly above every other row (ties miss);
    ``score`` maps a row to its score (a list indexed by row, or a dict). NaN without groups."""
    if not groups:
        return float("nan")
    return sum(score[w] > max(score[r] for r in ls) for w, ls in groups) / len(groups)


def sample_pairs(groups: Sequence[tuple[int, list[int]]], gen: torch.Generator) -> torch.Tensor:
    """One ``(preferred, dispreferred)`` row pair per group, dispreferred drawn uniformly: ``[G, 2]``."""
    out = torch.empty((len(groups), 2), dtype=torch.long)
    for i, (w, ls) in enumerate(groups):
        out[i, 0] = w
        out[i, 1] = ls[int(torch.randint(len(ls), (1,), generator=gen))]
    return out


def padded_groups(groups: Sequence[tuple[int, list[int]]]) -> Tensor:
    """``[G, K]`` rows of each group, preferred first, padded with -1."""
    k = max(1 + len(ls) for _, ls in groups)
    out = torch.full((len(groups), k), -1, dtype=torch.long)
    for i, (w, ls) in enumerate(groups):
        out[i, : 1 + len(ls)] = torch.tensor([w, *ls])
    return out


def group_wins(r: Tensor, lists: Tensor) -> Tensor:
    """Whether each group's preferred row scores strictly above its others (ties miss).

    Args:
        r: ``[..., M]`` scores of every row.
        lists: ``[G, K]`` rows of each group, preferred first, -1 padding (:func:`padded_groups`).

    Returns:
        ``[..., G]`` bool.
    """
    x = r[..., lists.clamp_min(0)].masked_fill(lists < 0, float("-inf"))  # [..., G, K]
    return x[..., 0] > x[..., 1:].max(-1).values


def choice_hits(r: Tensor, lists: Tensor) -> Tensor:
    """``[N]`` groups whose preferred row out-scores every other (ties miss), per head.

    Args:
        r: ``[N, M]`` rewards of every row, per head.
        lists: ``[G, K]`` rows of each group, preferred first, -1 padding.
    """
    return group_wins(r, lists).sum(-1)


def pair_hits(r: Tensor, pairs: Tensor) -> Tensor:
    """``[N]`` share of ``[P, 2]`` row pairs whose first row out-scores the second, per head (fp32)."""
    x = r[:, pairs]
    return (x[:, :, 0] > x[:, :, 1]).float().mean(-1)
