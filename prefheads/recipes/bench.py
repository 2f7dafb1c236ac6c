"""Benchmark scoring for the recipes: per-task paper metrics, GLUE / GPT4All / RACE scores, tables.

Every task is scored once by :func:`prefheads.eval.evaluate_task` (one backbone pass gives
the log-prob prediction and every head's DPH prediction; the metrics are those the task definition
names: CoLA MCC, MRPC accuracy + F1, STS-B Pearson + Spearman, MNLI matched / mismatched, others
accuracy), and aggregated by :func:`prefheads.eval.aggregates` as PAPER.md section 5 says.
A group score over fewer members than the paper's is marked ``*`` in the tables.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from prefheads.model import PreferenceModel


log = logging.getLogger(__name__)

GROUPS = ("glue", "gpt4all", "race")
LABELS = {"glue": "GLUE", "gpt4all": "GPT4All", "race": "RACE"}


PAPER_LOGPROB = "logprob:paper"
"""The chat-turn log-prob under the paper's template, added where a task is scored on another one."""


def evaluate(pm: PreferenceModel, sources: Sequence[Any], *, data_dir: str | None, seed: int,
             heads: Sequence[str] | None = None, progress: Any = None,
             route: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Score every benchmark task (its eval split, ``limit`` examples) with log-prob and every head.

    Uses :func:`prefheads.eval.evaluate_task` per task (so each task keeps its own limit)
    and :func:`prefheads.eval.aggregates` for the GLUE / GPT4All / RACE scores. A task is scored
    under its heads' template where it has one (:func:`scoring_template`); when any task is
    scored on another template than the paper's, every task also gets the paper template's
    chat-turn log-prob (method ``logprob:paper``, a log-prob pass of those rows under the paper's
    prompt), so the paper's baseline stays in the table.

    Args:
        route: Task → head: each task is scored by its own head, attached as ``heads[0]`` (the
            one head named, which must not exist yet) while that task is scored, then removed.

    Returns:
        ``{"tasks": {task: result block}, "aggregates": {group: ...}, "methods": [...]}``.
    """
    from prefheads.eval import LMEVAL_METHODS, LOGPROB, aggregates, evaluate_task, method_name
    from prefheads.eval.evaluate import heads_template
    from prefheads.recipes.data import expand

    heads = list(pm.heads) if heads is None else list(heads)
    srcs = expand(sources)
    if route is not None:
        if len(heads) != 1:
            raise ValueError(f"route serves one head name, got {heads}")
        if heads[0] in pm.heads:
            raise ValueError(f"route: a head named {heads[0]!r} is attached already")
        missing = [s.task for s in srcs if s.task not in route]
        if missing:
            raise ValueError(f"route has no head for benchmark tasks {missing}")
    results: dict[str, Any] = {}
    try:
        for src in srcs:
            if route is not None:
                pm.attach_head(heads[0], pm.heads[route[src.task]], activate=False)
            trained = heads_template(pm, heads) if heads else "paper"
            variant = scoring_template(src.task, trained)
            if variant != trained:
                log.warning("%s has no %r template: its heads (trained on it) score the paper's prompts", src.task,
                            trained)
            if progress:
                progress(f"scoring {src.task} ({src.limit or 'all'} examples, {variant} template)")
            results[src.task], _ = evaluate_task(pm, src.task, data_dir=data_dir, max_eval=src.limit, seed=seed,
                                                 heads=heads, variant=variant)
            if variant != "paper":
                paper, _ = evaluate_task(pm, src.task, data_dir=data_dir, max_eval=src.limit, seed=seed, heads=[],
                                         lm_eval_baseline=False, bootstrap=0)
                results[src.task]["methods"][PAPER_LOGPROB] = paper["methods"][LOGPROB]
    finally:
        if route is not None and heads[0] in pm.heads:
            pm.remove_head(heads[0])
    harness = [m for m in LMEVAL_METHODS if any(m in r["methods"] for r in results.values())]
    if any(PAPER_LOGPROB in r["methods"] for r in results.values()):
        for r in results.values():
            r["methods"].setdefault(PAPER_LOGPROB, r["methods"][LOGPROB])
        harness = [PAPER_LOGPROB] + harness
    methods = [LOGPROB] + harness + [method_name(h) for h in heads]
    return {"methods": methods, "tasks": results, "aggregates": aggregates(results, methods)}


def scoring_template(task: str, template: str) -> str:
    """The template ``task`` is scored with: its heads' ``template`` where the task has one, else the paper's."""
    from prefheads import tasks

    try:
        tasks.get_task(task, template)
    except (KeyError, ValueError):
        return "paper"
    return template


def group_value(res: Mapping[str, Any], method: str, group: str, glue_wnli: bool = False) -> tuple[float, bool] | None:
    """``(score, partial)`` of ``method`` on ``group`` (``glue`` / ``gpt4all`` / ``race``), or None."""
    key = "glue" if group == "glue" and glue_wnli else ("glue_no_wnli" if group == "glue" else group)
    agg = res["aggregates"].get(key)
    if not agg or method not in agg["values"]:
        return None
    return agg["values"][method], agg["partial"]


def _cell(v: tuple[float, bool] | None) -> str:
    if v is None:
        return "–"
    return f"{100 * v[0]:.2f}" + ("*" if v[1] else "")


def strongest_baseline(res: Mapping[str, Any], group: str, glue_wnli: bool = False) -> tuple[float, bool] | None:
    """The best group score of any log-prob method (paper template or lm-evaluation-harness)."""
    vals = [v for m in res["methods"] if not m.startswith("dph:")
            if (v := group_value(res, m, group, glue_wnli)) is not None]
    return max(vals, key=lambda v: v[0]) if vals else None


def probes_table(rows: Sequence[tuple[str, Mapping[str, Any]]], head: str, glue_wnli: bool = False) -> str:
    """Paper Table 6 layout: ``| model | Log GLUE / GPT4All / RACE | DPH GLUE / GPT4All / RACE |``,
    plus the strongest log-prob baseline per group (paper template or lm-evaluation-harness)."""
    cols = " / ".join(LABELS[g] for g in GROUPS)
    lines = [f"| model | Log {cols} | DPH {cols} | strongest log-prob {cols} |", "|---|---|---|---|"]
    for model, res in rows:
        paper = PAPER_LOGPROB if PAPER_LOGPROB in res["methods"] else "logprob"  # the paper's Log column
        lp = " / ".join(_cell(group_value(res, paper, g, glue_wnli)) for g in GROUPS)
        dph = " / ".join(_cell(group_value(res, f"dph:{head}", g, glue_wnli)) for g in GROUPS)
        best = " / ".join(_cell(strongest_baseline(res, g, glue_wnli)) for g in GROUPS)
        lines.append(f"| {model} | {lp} | {dph} | {best} |")
    return "\n".join(lines) + "\n"


def heads_table(res: Mapping[str, Any], heads: Sequence[str], glue_wnli: bool = False) -> str:
    """Paper Table 5 layout: one row per head (plus log-prob), one column per benchmark; best in bold."""
    methods = ["logprob"] + [f"dph:{h}" for h in heads]
    groups = [g for g in GROUPS if any(group_value(res, m, g, glue_wnli) for m in methods)]
    names = {"logprob": "log-prob"} | {f"dph:{h}": f"{h} head" for h in heads}
    vals = {(m, g): group_value(res, m, g, glue_wnli) for m in methods for g in groups}
    best = {g: max(v[0] for (m, gg), v in vals.items() if gg == g and v) for g in groups}
    lines = ["| head | " + " | ".join(LABELS[g] for g in groups) + " |", "|---|" + "---|" * len(groups)]
    for m in methods:
        cells = []
        for g in groups:
            v = vals[(m, g)]
            cells.append(f"**{_cell(v)}**" if v and v[0] == best[g] else _cell(v))
        lines.append(f"| {names[m]} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def tasks_table(res: Mapping[str, Any]) -> str:
    """Per-task score (×100: the mean of the task's official metrics) of every method."""
    methods = res["methods"]
    lines = ["| task | n | metrics | " + " | ".join(methods) + " |", "|---|---|---|" + "---|" * len(methods)]
    for t, r in res["tasks"].items():
        off = ", ".join(next(iter(r["methods"].values()))["official"])
        vals = [f"{100 * r['methods'][m]['score']:.2f}" if m in r["methods"] else "–" for m in methods]
        lines.append(f"| {t} | {r['n']} | {off} | " + " | ".join(vals) + " |")
    return "\n".join(lines) + "\n"


def accuracy_of(res: Mapping[str, Any], task: str, method: str) -> float:
    """A task's accuracy under ``method`` (fraction)."""
    return float(res["tasks"][task]["methods"][method]["metrics"]["accuracy"])


SUBSET_NOTE = "`*`: score over a subset of the group's tasks (see the per-task table)."
