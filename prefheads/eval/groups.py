"""Group scores (GLUE, GPT4All, RACE), each formed by the rule its group names.

A group's ``aggregate`` (``tasks/defs/_groups.yaml``) names a rule of :data:`GROUP_SCORES`:

* ``macro``: the mean over tasks of each task's mean official metric (GLUE; MNLI's matched and
  mismatched accuracies count as one task);
* ``mean``: the unweighted mean of the task scores (GPT4All);
* ``weighted``: the task scores weighted by the number of examples evaluated of each (RACE).

A group with ``train_exclude`` members is scored with them (when they were evaluated) and
without them (``glue`` and ``glue_no_wnli``). A group evaluated only in part is still aggregated
over what is there, flagged ``partial`` with its ``missing`` members, so it is never mistaken
for the paper's score.

Aggregates carry no interval and no margin over a baseline: the paired bootstrap of
:mod:`prefheads.eval.margins` is per task, so read a group's margin from its tasks' intervals.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from prefheads.registry import Registry

Results = Mapping[str, dict[str, Any]]
GroupScore = Callable[[Results, Sequence[str], str], float]
"""``rule(task_results, present, method)``: the group score of ``method`` over the tasks ``present``."""

GROUP_SCORES: Registry[GroupScore] = Registry("group score")


@GROUP_SCORES.register("macro")
def macro_score(results: Results, present: Sequence[str], method: str) -> float:
    """Mean over tasks of each task's mean official metric."""
    per = []
    for t in present:
        block = results[t]["methods"][method]
        per.append(np.mean([float(block["metrics"][k]) for k in block["official"]]))
    return float(np.mean(per))


@GROUP_SCORES.register("mean")
def mean_score(results: Results, present: Sequence[str], method: str) -> float:
    """Unweighted mean of the task scores."""
    return float(np.mean([results[t]["methods"][method]["score"] for t in present]))


@GROUP_SCORES.register("weighted")
def weighted_score(results: Results, present: Sequence[str], method: str) -> float:
    """Task scores weighted by the number of examples evaluated of each."""
    total = sum(results[t]["n"] for t in present)
    return float(sum(results[t]["methods"][method]["score"] * results[t]["n"] for t in present) / total)


def aggregates(task_results: Results, methods: Sequence[str]) -> dict[str, Any]:
    """Every group's score of every method, where any of its members was evaluated.

    Returns:
        Group -> ``{"tasks", "missing", "partial", "values": {method: score}}``; a method is
        scored only where every task present has it.
    """
    from prefheads import tasks

    out: dict[str, Any] = {}

    def entry(name: str, members: Sequence[str], rule: GroupScore) -> None:
        present = [t for t in members if t in task_results]
        if not present:
            return
        missing = [t for t in members if t not in task_results]
        values = {m: rule(task_results, present, m) for m in methods
                  if all(m in task_results[t]["methods"] for t in present)}
        out[name] = {"tasks": present, "missing": missing, "partial": bool(missing), "values": values}

    for name in tasks.list_groups():
        group = tasks.get_group(name)
        rule = GROUP_SCORES.get(group.aggregate)
        if not group.train_exclude:
            entry(name, group.members, rule)
            continue
        if all(t in task_results for t in group.train_exclude):
            entry(name, group.members, rule)
        kept = [t for t in group.members if t not in group.train_exclude]
        entry(f"{name}_no_" + "_".join(t.rsplit("/", 1)[-1] for t in group.train_exclude), kept, rule)
    return out
