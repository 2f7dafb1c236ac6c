"""Scoring labelled tasks and preference pairs both ways from one backbone pass.

* log-prob: the candidate with the highest *mean* log-probability of its assistant tokens
  (the end-of-turn token included, as in the reference code), ``logprob_sum / n_tokens``;
* DPH: the candidate with the highest reward at its end-of-turn token, for every head.

:func:`evaluate` runs tasks and groups (PAPER.md section 5) and returns an :class:`EvalRun`: a
versioned, JSON-ready results dict and one record per example; :func:`prefheads.report.save_run`
writes them as ``results.json`` + ``results.examples.jsonl``. Metric values are fractions
(reports show %).

Ties are broken toward the lowest candidate index (:func:`prefheads.metrics.choose`) and their
count is reported for every method; preference pairs count a tie as a miss.
"""

from __future__ import annotations

import contextlib
import math
import os
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from prefheads.metrics import (accuracy, brier_score, choose, expected_calibration_error, f1,
                               gpt4all_score, glue_score, mcc, pair_accuracy, pearson,
                               prediction_distribution, race_score, reliability_bins, spearman)
from prefheads.margins import LENGTH, N_RESAMPLES, add_margins, add_similar_length, length_table
from prefheads.types import Example

SCHEMA = "prefheads-eval"
SCHEMA_VERSION = 1
LOGPROB = "logprob"
"""Method name of mean log-prob scoring; heads are ``dph:<head>``."""
SUBSETS = ("random", "first")
LMEVAL_PREFIX = "lm-eval:"
LMEVAL_METHODS = tuple(f"{LMEVAL_PREFIX}{m}" for m in ("acc", "acc_norm", "mean"))
"""Method names of lm-evaluation-harness-exact log-prob scoring (:mod:`prefheads.lmeval`)."""


def method_name(head: str) -> str:
    """Method name of a head's reward (``dph:<head>``)."""
    return f"dph:{head}"


@dataclass
class ChoiceScores:
    """Per-example candidate scores of one task.

    Attributes:
        examples: The scored examples.
        logprob: Mean log-prob per candidate, per example.
        logprob_sum: Summed log-prob per candidate, per example.
        rewards: head name -> reward per candidate, per example.
        extra: Further baselines by method name (e.g. ``lm-eval:acc``), same layout.
    """

    examples: list[Example]
    logprob: list[list[float]] = field(default_factory=list)
    logprob_sum: list[list[float]] = field(default_factory=list)
    rewards: dict[str, list[list[float]]] = field(default_factory=dict)
    extra: dict[str, list[list[float]]] = field(default_factory=dict)

    def methods(self) -> dict[str, list[list[float]]]:
        """Score tables by method name (``logprob``, extra baselines, ``dph:<head>``)."""
        out = {LOGPROB: self.logprob}
        out.update(self.extra)
        out.update({method_name(h): r for h, r in self.rewards.items()})
        return out


@contextlib.contextmanager
def _eval_mode(modules: Sequence[torch.nn.Module]) -> Iterator[None]:
    # Heads are nn.Modules, in training mode after construction or loading: dropout on the
    # pooler output would make eval scores random. Restore the caller's mode afterwards.
    was = [m.training for m in modules]
    for m in modules:
        m.eval()
    try:
        yield
    finally:
        for m, w in zip(modules, was):
            m.train(w)


def score_examples(pm: Any, examples: Sequence[Example], heads: Sequence[str] | None = None,
                   logprobs: bool = True, *, chunk_size: int = 256,
                   on_chunk: Callable[[int], None] | None = None, **feature_kw: Any) -> ChoiceScores:
    """Score every candidate of every example, all heads and log-prob from one pass per backbone state.

    Heads reading the same state (the base model, or one LoRA adapter) share a pass; log-prob
    is the base model's (a pass with adapters off, shared with the frozen heads).

    Args:
        pm: A :class:`~prefheads.model.PreferenceModel`.
        examples: Examples to score (every choice is a candidate).
        heads: Heads to apply (default: all attached).
        logprobs: Also compute mean / summed completion log-probs.
        chunk_size: Examples per :meth:`features` call (bounds memory; results do not depend on it).
        on_chunk: Called with the number of examples after each chunk (progress bars).
        **feature_kw: Passed to :meth:`features` (``shared_prefix``, ``padding_side``).

    Returns:
        fp32 scores as :class:`ChoiceScores`; heads run in eval mode (no dropout).
    """
    examples = list(examples)
    if not examples:
        raise ValueError("no examples to score")
    heads = list(pm.heads) if heads is None else list(heads)
    if not heads and not logprobs:
        raise ValueError("nothing to compute: no heads and logprobs=False")
    # one pass per group of heads reading the same backbone state, reading every hidden state
    # the group's heads need; the log-prob columns are the base model's own (adapters off)
    groups = pm.head_groups(heads)
    if logprobs and all(adapter is not None for adapter, _ in groups):
        groups.insert(0, (None, []))
    out = ChoiceScores(examples, rewards={h: [] for h in heads})
    with torch.no_grad(), _eval_mode([pm.heads[h] for h in heads]):
        for start in range(0, len(examples), chunk_size):
            part = examples[start: start + chunk_size]
            prompts = [ex.prompt for ex in part for _ in ex.choices]
            comps = [c for ex in part for c in ex.choices]
            flat = {}
            for adapter, names in groups:
                with pm.reading(adapter):
                    feats = pm.features(prompts, comps, layers=pm.layers_for(names) or [-1],
                                        logprobs=(logprobs and adapter is None) or pm.needs_logprobs(names),
                                        **feature_kw)
                if adapter is None:
                    base = feats
                flat.update({h: pm(feats.states, h, pm.lm_scores(feats, comps, h)).float().cpu() for h in names})
            i = 0
            for ex in part:
                k = len(ex.choices)
                if logprobs:
                    s = base.logprob_sum[i: i + k].double()
                    out.logprob_sum.append(s.tolist())
                    out.logprob.append((s / base.n_tokens[i: i + k].clamp_min(1)).tolist())
                for h in heads:
                    out.rewards[h].append(flat[h][i: i + k].tolist())
                i += k
            if on_chunk is not None:
                on_chunk(len(part))
    return out


def summarize(scores: ChoiceScores) -> dict[str, Any]:
    """Accuracy, predicted-choice distribution and tie count of every method."""
    labels = [ex.label for ex in scores.examples]
    n_choices = max(len(ex.choices) for ex in scores.examples)
    out: dict[str, Any] = {"n": len(labels)}
    for name, table in scores.methods().items():
        if not table:
            continue
        preds, ties = choose(table)
        dist = prediction_distribution(preds, n_choices)
        out[name] = {"accuracy": accuracy(preds, labels), "ties": ties,
                     "predicted": dist["counts"], "majority_fraction": dist["majority_fraction"]}
    out["gold"] = prediction_distribution(labels, n_choices)["counts"]
    return out


# ----------------------------------------------------------------------------- per-task metrics

def choice_names(spec: Any, examples: Sequence[Example]) -> list[str]:
    """Names of candidate positions: the fixed choices, ``chosen``/``rejected``, or A, B, C..."""
    if spec.kind == "pairs":
        return ["chosen", "rejected"]
    if spec.choices:
        return list(spec.choices)
    n = max(len(ex.choices) for ex in examples)
    return [chr(65 + i) if n <= 26 else str(i) for i in range(n)]


def _metric(spec: Any, name: str, examples: Sequence[Example], preds: Sequence[int]) -> float:
    labels = [ex.label for ex in examples]
    if name in ("pearson", "spearman"):
        # STS-B: six choices "0".."5"; the chosen integer is correlated with the gold float
        values = [float(spec.choices[p]) for p in preds]
        gold = [float(ex.meta["score"]) if "score" in ex.meta else float(ex.label) for ex in examples]
        return (pearson if name == "pearson" else spearman)(values, gold)
    if name == "f1":
        return f1(preds, labels, pos_label=1 if spec.positive_label is None else spec.positive_label)
    if name == "mcc":
        return mcc(preds, labels)
    if name == "accuracy":
        return accuracy(preds, labels)
    raise KeyError(f"unknown task metric {name!r}")


def choice_metrics(spec: Any, examples: Sequence[Example], preds: Sequence[int]) -> tuple[dict[str, float], list[str]]:
    """The task's own metrics (``spec.metrics``) and which of them form its score.

    A task with several eval splits (MNLI matched / mismatched) gets each metric per split
    (``accuracy_matched``...), which are its official values, and over all splits.
    """
    metrics: dict[str, float] = {}
    official: list[str] = []
    if len(spec.eval_splits) > 1:
        for split in spec.eval_splits:
            idx = [i for i, ex in enumerate(examples) if ex.meta.get("split") == split]
            if not idx:
                continue
            short = split.rsplit("_", 1)[-1]
            for m in spec.metrics:
                metrics[f"{m}_{short}"] = _metric(spec, m, [examples[i] for i in idx], [preds[i] for i in idx])
                official.append(f"{m}_{short}")
        metrics.update({m: _metric(spec, m, examples, preds) for m in spec.metrics})
    else:
        metrics = {m: _metric(spec, m, examples, preds) for m in spec.metrics}
        official = list(spec.metrics)
    metrics.setdefault("accuracy", accuracy(preds, [ex.label for ex in examples]))
    return metrics, official


def calibration(table: Sequence[Sequence[float]], labels: Sequence[int], n_bins: int = 10) -> dict[str, Any]:
    """σ(reward) of every candidate against its correctness: ECE, Brier and reliability bins.

    Meaningful for separable heads, whose objective pushes σ(r) toward P(correct).
    """
    probs, correct = [], []
    for row, label in zip(table, labels):
        probs.extend(1.0 / (1.0 + math.exp(-max(min(r, 60.0), -60.0))) for r in row)
        correct.extend(float(j == label) for j in range(len(row)))
    return {"ece": expected_calibration_error(probs, correct, n_bins), "brier": brier_score(probs, correct),
            "n_candidates": len(probs), "bins": reliability_bins(probs, correct, n_bins)}


def task_metrics(spec: Any, scores: ChoiceScores, separable: Sequence[str] = ()) -> tuple[dict[str, Any], dict[str, list[int]]]:
    """Per-method metrics, predicted-choice distribution and ties of one scored task.

    Args:
        spec: The task's :class:`~prefheads.tasks.TaskSpec`.
        scores: Its scores (pairs as two-candidate examples, chosen first, label 0).
        separable: Heads trained with the separable objective; they also get calibration.

    Returns:
        ``(methods, predictions)``: method -> result block, and method -> predicted indices.
    """
    exs = scores.examples
    labels = [ex.label for ex in exs]
    names = choice_names(spec, exs)
    blocks: dict[str, Any] = {}
    all_preds: dict[str, list[int]] = {}
    for method, table in scores.methods().items():
        if not table:
            continue
        preds, ties = choose(table)
        if spec.kind == "pairs":
            metrics = {"pair_accuracy": pair_accuracy([r[0] for r in table], [r[1] for r in table])}
            official = ["pair_accuracy"]
            ties = sum(1 for r in table if r[0] == r[1])
        else:
            metrics, official = choice_metrics(spec, exs, preds)
        dist = prediction_distribution(preds, names)
        block = {"score": float(np.mean([metrics[k] for k in official])), "metrics": metrics,
                 "official": official, "ties": ties, "predicted": dist["counts"],
                 "majority_choice": dist["majority_choice"], "majority_fraction": dist["majority_fraction"]}
        if method.startswith("dph:") and method[4:] in separable:
            block["calibration"] = calibration(table, labels)
        blocks[method] = block
        all_preds[method] = preds
    return blocks, all_preds


# ----------------------------------------------------------------------------- aggregates

def aggregates(task_results: dict[str, dict[str, Any]], methods: Sequence[str]) -> dict[str, Any]:
    """GLUE (with and without WNLI), GPT4All and RACE scores of every method, where present.

    A group evaluated only in part is still aggregated over what is there, flagged
    ``partial`` with its ``missing`` members, so it is never mistaken for the paper's score.
    RACE weights middle and high by the number of questions evaluated of each.

    Aggregates carry no interval and no margin over a baseline: the paired bootstrap of
    :mod:`prefheads.margins` is per task, so read a group's margin from its tasks' intervals.
    """
    from prefheads import tasks

    out: dict[str, Any] = {}

    def entry(group: str, members: list[str], fn: Callable[[str, list[str]], float]) -> None:
        present = [t for t in members if t in task_results]
        if not present:
            return
        missing = [t for t in members if t not in task_results]
        values = {m: fn(m, present) for m in methods if all(m in task_results[t]["methods"] for t in present)}
        out[group] = {"tasks": present, "missing": missing, "partial": bool(missing), "values": values}

    def official(method: str, name: str) -> dict[str, dict[str, float]]:
        block = task_results[name]["methods"][method]
        if name == "glue/mnli":  # two GLUE entries, merged by glue_score
            return {f"glue/mnli_{k.rsplit('_', 1)[-1]}": {"accuracy": block["metrics"][k]} for k in block["official"]}
        return {name: {k: block["metrics"][k] for k in block["official"]}}

    def glue(include_wnli: bool) -> Callable[[str, list[str]], float]:
        def fn(method: str, present: list[str]) -> float:
            per: dict[str, dict[str, float]] = {}
            for t in present:
                if include_wnli or t != "glue/wnli":
                    per.update(official(method, t))
            return glue_score(per, include_wnli=include_wnli)
        return fn

    glue_members = tasks.expand("glue")
    if "glue/wnli" in task_results:
        entry("glue", glue_members, glue(True))
    if any(t in task_results for t in glue_members if t != "glue/wnli"):
        entry("glue_no_wnli", [t for t in glue_members if t != "glue/wnli"], glue(False))
    members = tasks.expand("gpt4all")
    entry("gpt4all", members, lambda m, present: gpt4all_score(
        {t: task_results[t]["methods"][m]["score"] for t in present},
        expected_tasks=len(members) if len(present) == len(members) else None))

    def race(method: str, present: list[str]) -> float:
        acc = {t: task_results[t]["methods"][method]["score"] for t in present}
        n = {t: task_results[t]["n"] for t in present}
        return race_score(acc.get("race/middle", 0.0), n.get("race/middle", 0),
                          acc.get("race/high", 0.0), n.get("race/high", 0))

    entry("race", tasks.expand("race"), race)
    return out


# ----------------------------------------------------------------------------- running

@dataclass
class EvalRun:
    """Outcome of :func:`evaluate`.

    Attributes:
        results: Versioned JSON-ready results: ``schema`` (:data:`SCHEMA`), ``schema_version``,
            ``prefheads_version``, ``model`` (id, revision, reward token, template fingerprint),
            ``heads`` (folder, names, each head's pooler / objective / meta / sha256), ``config``
            (tasks, data dir, max_eval, subset, seed, variant, lm_eval_baseline, bootstrap),
            ``methods``, ``tasks`` (per task: template hash, split sizes, seconds, gold distribution,
            ``baseline`` (strongest method without a head, and its score), ``lm_eval`` (harness version,
            boundary mismatches, truncation, seconds; or why unavailable), ``bootstrap``
            (resamples, seed, confidence), for pairs ``similar_length`` (n, tolerance, unit) and,
            per method, ``score``, ``metrics``, ``official``, ``predicted``, ``ties``,
            ``calibration``, and for heads ``vs_baseline``, ``vs_baseline_ci`` and
            ``vs_baseline_p``), ``missing``, ``aggregates`` and ``wall_seconds``.
        records: One dict per example: id, task, split, label, per-method scores and prediction.
    """

    results: dict[str, Any]
    records: list[dict[str, Any]]


def _version() -> str:
    from prefheads import __version__

    return __version__


def _heads_record(pm: Any, heads: Sequence[str], heads_dir: Any) -> dict[str, Any]:
    files: dict[str, Any] = {}
    if heads_dir is not None:
        from prefheads.headio import read_config

        files = read_config(heads_dir)["heads"]
    return {"dir": str(heads_dir) if heads_dir is not None else None, "names": list(heads), "active": pm.active,
            "heads": {h: {"pooler": pm.heads[h].config.pooler, "layer": pm.heads[h].config.reads,
                          "objective": pm.heads[h].config.meta.get("objective"),
                          "meta": pm.heads[h].config.meta, "sha256": files.get(h, {}).get("sha256")}
                      for h in heads}}


def _load(spec: Any, name: str, data_dir: Any, max_eval: int | None, seed: int, variant: str,
          shuffle: bool) -> tuple[list[Example], Any]:
    from prefheads import tasks

    kw = dict(limit=max_eval, seed=seed, shuffle=shuffle, variant=variant)
    if spec.kind == "pairs":
        loaded = tasks.load_pairs(name, "eval", data_dir, **kw)
        exs = [Example(p.id, p.prompt, [p.chosen, p.rejected], 0, p.task, p.meta) for p in loaded]
    else:
        loaded = tasks.load_examples(name, "eval", data_dir, **kw)
        exs = [ex for ex in loaded if ex.label is not None]  # unlabelled test rows cannot be scored
    return exs, loaded


def lmeval_tables(pm: Any, name: str, exs: Sequence[Example], *, variant: str = "paper", data_dir: Any = None,
                  max_eval: int | None = None, seed: int = 0,
                  shuffle: bool = False) -> tuple[dict[str, list[list[float]]], dict[str, Any]]:
    """lm-evaluation-harness-exact log-prob tables of the rows ``exs`` of task ``name``.

    ``exs`` were loaded from the eval split with template ``variant`` and ``max_eval`` / ``seed``
    / ``shuffle``; the same rows are loaded again in the ``lm-eval`` rendering (unless they are
    that already), matched by id (labels and choice counts checked) and scored by
    :func:`prefheads.lmeval.score_lmeval`.

    Returns:
        ``(tables, info)``: method (``lm-eval:acc``, ``lm-eval:acc_norm``, ``lm-eval:mean``) ->
        scores per example, and the harness version, boundary mismatches, truncation and seconds
        (``{"available": False, "why"}`` and no tables where the harness lacks the task).
    """
    from prefheads import tasks
    from prefheads.lmeval import score_lmeval
    from prefheads.tasks.harness import HARNESS_VERSION, LM_EVAL_VARIANT

    spec, base = tasks.get_task(name, variant), tasks.get_task(name)
    if spec.kind != "choice" or base.lm_eval is None:
        return {}, {"available": False,
                    "why": f"lm-evaluation-harness {HARNESS_VERSION} defines no {spec.name} task"}
    if spec.variant == LM_EVAL_VARIANT:
        lexs = list(exs)
    else:  # the same rows, rendered as the harness renders them
        loaded = tasks.load_examples(name, "eval", data_dir, limit=max_eval, seed=seed,
                                     shuffle=shuffle, variant=LM_EVAL_VARIANT)
        by_id = {ex.id: ex for ex in loaded}
        lost = [ex.id for ex in exs if ex.id not in by_id]
        if lost or len(by_id) != len(loaded):
            raise ValueError(f"task {spec.name!r}: rows {lost[:3] or 'with duplicate ids'} have no unique "
                             "lm-eval rendering")
        lexs = [by_id[ex.id] for ex in exs]
        bad = [ex.id for ex, lx in zip(exs, lexs) if lx.label != ex.label or len(lx.choices) != len(ex.choices)]
        if bad:
            raise ValueError(f"task {spec.name!r}: rows {bad[:3]} differ in label or choices between templates")
    sc = score_lmeval(pm, lexs)
    info = {"available": True, "harness": f"lm_eval=={HARNESS_VERSION}", "task": base.lm_eval.task,
            "boundary_mismatches": sc.boundary_mismatches, "truncated": sc.truncated,
            "seconds": round(sc.seconds, 3)}
    return sc.methods(prefix=LMEVAL_PREFIX), info


def baseline_of(blocks: dict[str, Any], key: str = "score") -> dict[str, Any] | None:
    """The strongest method without a head in a task's method blocks (the baseline a head must beat).

    These are the log-prob methods and, for preference pairs, the length-only baseline
    (:data:`~prefheads.margins.LENGTH`): a head that does not beat "the longer reply wins" has
    not shown it learned more than length, so the margin is taken over the stronger of them.

    Args:
        blocks: Method name -> block holding its score under ``key``.
        key: The score to compare (``score`` in results, ``accuracy`` in :func:`summarize`).

    Returns ``{"method", "score"}`` (first of equal scores), or None without log-prob methods.
    """
    base = [m for m in blocks if not m.startswith("dph:")]
    if not base:
        return None
    best = max(base, key=lambda m: blocks[m][key])
    return {"method": best, "score": blocks[best][key]}


def evaluate_task(pm: Any, name: str, *, data_dir: Any = None, max_eval: int | None = None, seed: int = 0,
                  heads: Sequence[str] | None = None, variant: str = "paper", lm_eval_baseline: bool = True,
                  subset: str = "random", bootstrap: int = N_RESAMPLES, progress: Any = None,
                  **feature_kw: Any) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Load, score and measure one task; returns its result block and per-example records.

    With ``lm_eval_baseline`` (always with ``variant="lm-eval"``) the same rows are also scored
    exactly as lm-evaluation-harness scores them (methods ``lm-eval:acc``, ``lm-eval:acc_norm``,
    ``lm-eval:mean``) where the harness defines the task. Every result names its ``baseline``:
    the strongest method without a head; each head's block gets ``vs_baseline`` (score difference),
    ``vs_baseline_ci`` (paired bootstrap interval over the examples, ``bootstrap`` resamples
    seeded by ``seed``; none when 0) and ``vs_baseline_p`` (McNemar's exact test, for plain
    accuracy scores), see :mod:`prefheads.margins`. Preference pairs add the length-only method
    ``length`` and every method's accuracy on the similar-length pairs (``similar_length``).
    """
    from prefheads import tasks
    from prefheads.tasks.harness import LM_EVAL_VARIANT

    if subset not in SUBSETS:
        raise ValueError(f"subset must be one of {SUBSETS}, got {subset!r}")
    spec = tasks.get_task(name, variant)
    heads = list(pm.heads) if heads is None else list(heads)
    shuffle = max_eval is not None and subset == "random"
    t0 = time.perf_counter()
    exs, loaded = _load(spec, name, data_dir, max_eval, seed, variant, shuffle)
    if not exs:
        raise ValueError(f"task {spec.name!r}: no labelled examples to evaluate")
    t1 = time.perf_counter()
    tid = progress.add_task(spec.name, total=len(exs)) if progress is not None else None
    scores = score_examples(pm, exs, heads, chunk_size=feature_kw.pop("chunk_size", 256),
                            on_chunk=(lambda k: progress.advance(tid, k)) if progress is not None else None,
                            **feature_kw)
    lm_info = None
    if lm_eval_baseline or variant == LM_EVAL_VARIANT:
        scores.extra, lm_info = lmeval_tables(pm, name, exs, variant=variant, data_dir=data_dir, max_eval=max_eval,
                                              seed=seed, shuffle=shuffle)
    if spec.kind == "pairs":
        scores.extra[LENGTH] = length_table(exs)
    t2 = time.perf_counter()
    separable = [h for h in heads if pm.heads[h].config.meta.get("objective") == "separable"]
    blocks, preds = task_metrics(spec, scores, separable)
    splits: dict[str, int] = {}
    for ex in exs:
        splits[ex.meta.get("split", "")] = splits.get(ex.meta.get("split", ""), 0) + 1
    names = choice_names(spec, exs)
    result = {"kind": spec.kind, "template_hash": spec.template_hash(), "variant": spec.variant,
              "n": len(exs), "splits": splits, "n_candidates": sum(len(ex.choices) for ex in exs),
              "unlabelled": len(loaded) - len(exs) if spec.kind == "choice" else 0,
              "skipped": loaded.skipped, "dropped": loaded.dropped, "choices": names,
              "gold": prediction_distribution([ex.label for ex in exs], names)["counts"],
              "seconds": {"load": round(t1 - t0, 3), "score": round(t2 - t1, 3), "total": round(t2 - t0, 3)},
              "methods": blocks, "baseline": baseline_of(blocks)}
    if lm_info is not None:
        result["lm_eval"] = lm_info
    tables = scores.methods()
    if spec.kind == "pairs":
        result["similar_length"] = add_similar_length(blocks, tables, exs)
    if result["baseline"] is not None:
        result["bootstrap"] = add_margins(spec, blocks, preds, tables, exs, result["baseline"]["method"],
                                          n_resamples=bootstrap, seed=seed)
    records = []
    for j, ex in enumerate(exs):
        rec = {"id": ex.id, "task": spec.name, "split": ex.meta.get("split"), "label": ex.label,
               "scores": {m: t[j] for m, t in tables.items() if t},
               "pred": {m: p[j] for m, p in preds.items()}}
        if "score" in ex.meta:
            rec["gold_score"] = ex.meta["score"]
        records.append(rec)
    return result, records


def expand_tasks(names: Sequence[str]) -> list[str]:
    """Task names of ``names`` (groups expanded, comma lists split, duplicates removed)."""
    from prefheads import tasks

    out: list[str] = []
    for raw in names:
        for name in (n.strip() for n in str(raw).split(",")):
            if not name:
                continue
            members = [name] if name.startswith("pairs:") else tasks.expand(name)
            out.extend(m for m in members if m not in out)
    if not out:
        raise ValueError("no task given")
    return out


def heads_template(pm: Any, heads: Sequence[str]) -> str:
    """The template family the heads were trained on (their ``meta["template"]``), ``paper`` for
    none. Heads trained on different families cannot share one evaluation: a ValueError says so."""
    found = {h: pm.heads[h].config.meta.get("template") for h in heads}
    families = sorted({t for t in found.values() if t})
    if len(families) > 1:
        raise ValueError(f"the heads were trained on different templates ({found}): evaluate them separately "
                         "or choose one with --template")
    return families[0] if families else "paper"


def evaluate(pm: Any, task_names: Sequence[str], *, data_dir: str | os.PathLike | None = None,
             max_eval: int | None = None, seed: int = 0, heads: Sequence[str] | None = None,
             heads_dir: str | os.PathLike | None = None, variant: str | None = None, lm_eval_baseline: bool = True,
             subset: str = "random", skip_missing: bool = False, bootstrap: int = N_RESAMPLES,
             progress: bool = False, **feature_kw: Any) -> EvalRun:
    """Evaluate log-prob scoring and every head on tasks and groups.

    Args:
        pm: The model, with the heads to evaluate attached (none: log-prob only).
        task_names: Tasks and/or groups (``glue``, ``gpt4all``, ``race``, ``glue/rte``...).
        data_dir: Data folder (see :func:`prefheads.tasks.load_examples`).
        max_eval: Evaluate at most this many examples per split.
        seed: Seed of the subset and of the bootstrap resamples.
        subset: Which ``max_eval`` examples: ``random`` (a seeded random subset) or ``first``
            (the first rows of each file, as lm-evaluation-harness's ``--limit``).
        heads: Heads to evaluate (default: all attached).
        heads_dir: The folder they came from (recorded, with each head's sha256).
        variant: Template family of the inputs: ``paper`` (PAPER.md section 6), ``paper_fixed``,
            ``reference``, or ``lm-eval`` (lm-evaluation-harness's prompts; heads read them in
            the chat turn, the ``lm-eval:*`` methods score the raw harness requests). Default:
            the template the heads were trained on (:func:`heads_template`), else ``paper``.
        lm_eval_baseline: Also score every task the harness defines exactly as
            lm-evaluation-harness does (``lm-eval:acc``, ``lm-eval:acc_norm``, ``lm-eval:mean``),
            on the same rows, so each head is compared with the stronger log-prob baseline.
        skip_missing: Record tasks whose data files are missing, or that have no ``variant``
            template (e.g. STS-B under ``lm-eval``), instead of raising.
        bootstrap: Resamples of the paired bootstrap behind each head's ``vs_baseline_ci``
            (0: no intervals); see :func:`evaluate_task`.
        progress: Show a progress bar.
        **feature_kw: ``shared_prefix``, ``padding_side``, ``chunk_size`` (results do not depend on them).
    """
    from prefheads import tasks
    from prefheads.progress import bar
    from prefheads.tasks.harness import LM_EVAL_VARIANT
    from prefheads.tasks.spec import SpecError

    if subset not in SUBSETS:
        raise ValueError(f"subset must be one of {SUBSETS}, got {subset!r}")
    heads = list(pm.heads) if heads is None else list(heads)
    variant = variant or heads_template(pm, heads)
    names = expand_tasks(task_names)
    unavailable: dict[str, str] = {}
    for name in names:  # every template is checked before any scoring starts
        try:
            tasks.get_task(name, variant)
        except SpecError as e:
            unavailable[name] = str(e)
    if unavailable and not skip_missing:
        raise ValueError("; ".join(unavailable.values()) + " (pass skip_missing / --skip-missing to evaluate the rest)")
    names = [n for n in names if n not in unavailable]
    lm_eval_baseline = lm_eval_baseline or variant == LM_EVAL_VARIANT
    pairs = any(tasks.get_task(n, variant).kind == "pairs" for n in names)
    methods = ([LOGPROB] + (list(LMEVAL_METHODS) if lm_eval_baseline else []) + ([LENGTH] if pairs else [])
               + [method_name(h) for h in heads])
    t0 = time.perf_counter()
    results: dict[str, Any] = {
        "schema": SCHEMA, "schema_version": SCHEMA_VERSION, "prefheads_version": _version(),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "model": {"id": pm.model_id, "revision": pm.revision, "chat_mode": pm.chat.mode,
                  "reward_token": pm.chat.reward_token, "template_fingerprint": pm.chat.fingerprint},
        "heads": _heads_record(pm, heads, heads_dir),
        "config": {"tasks": list(task_names), "data_dir": str(data_dir) if data_dir is not None else None,
                   "max_eval": max_eval, "subset": subset, "seed": seed, "variant": variant, "lm_eval_baseline": lm_eval_baseline,
                   "bootstrap": bootstrap,
                   "features": {k: v for k, v in feature_kw.items()}, "max_tokens": pm.max_tokens},
        "methods": methods, "tasks": {}, "missing": dict(unavailable), "aggregates": {},
    }
    records: list[dict[str, Any]] = []
    with bar(progress) as pb:
        for name in names:
            try:
                result, recs = evaluate_task(pm, name, data_dir=data_dir, max_eval=max_eval, seed=seed, heads=heads,
                                             variant=variant, lm_eval_baseline=lm_eval_baseline, subset=subset,
                                             bootstrap=bootstrap, progress=pb if progress else None, **feature_kw)
            except FileNotFoundError as e:
                if not skip_missing:
                    raise
                results["missing"][tasks.get_task(name).name] = str(e)
                continue
            results["tasks"][name] = result
            records.extend(recs)
    results["aggregates"] = aggregates(results["tasks"], methods)
    results["wall_seconds"] = round(time.perf_counter() - t0, 3)
    return EvalRun(results, records)
