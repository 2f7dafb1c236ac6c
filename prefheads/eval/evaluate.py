"""Scoring labelled tasks and preference pairs both ways from one backbone pass.

* log-prob: the candidate with the highest *mean* log-probability of its assistant tokens
  (the end-of-turn token included, as in the reference code), ``logprob_sum / n_tokens``;
* DPH: the candidate with the highest reward at its end-of-turn token, for every head.

:func:`evaluate` runs tasks and groups (PAPER.md section 5) and returns an :class:`EvalRun`: a
versioned, JSON-ready results dict and one record per example; :func:`prefheads.eval.report.save_run`
writes them as ``results.json`` + ``results.examples.jsonl``. Metric values are fractions
(reports show %).

Ties are broken toward the lowest candidate index (:func:`prefheads.eval.metrics.choose`) and their
count is reported for every method; preference pairs count a tie as a miss.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from prefheads.eval.baselines import LMEVAL_METHODS, baseline_of, lmeval_tables
from prefheads.eval.groups import aggregates
from prefheads.eval.margins import LENGTH, N_RESAMPLES, add_margins, add_similar_length, length_table
from prefheads.eval.measures import choice_names, task_metrics
from prefheads.eval.metrics import prediction_distribution
from prefheads.eval.scores import LOGPROB, method_name, score_examples
from prefheads.losses import is_calibrated
from prefheads.types import Example

if TYPE_CHECKING:
    from prefheads.model import PreferenceModel
    from prefheads.tasks import TaskSpec

SCHEMA = "prefheads-eval"
SCHEMA_VERSION = 1
SUBSETS = ("random", "first")


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


def _heads_record(pm: PreferenceModel, heads: Sequence[str], heads_dir: Any) -> dict[str, Any]:
    files: dict[str, Any] = {}
    if heads_dir is not None:
        from prefheads.headio import read_config

        files = read_config(heads_dir)["heads"]
    return {"dir": str(heads_dir) if heads_dir is not None else None, "names": list(heads), "active": pm.active,
            "heads": {h: {"pooler": pm.heads[h].config.pooler, "layer": pm.heads[h].config.reads,
                          "objective": pm.heads[h].config.meta.get("objective"),
                          "meta": pm.heads[h].config.meta, "sha256": files.get(h, {}).get("sha256")}
                      for h in heads}}


def _load(spec: TaskSpec, name: str, data_dir: Any, max_eval: int | None, seed: int, variant: str,
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



def evaluate_task(pm: PreferenceModel, name: str, *, data_dir: Any = None, max_eval: int | None = None, seed: int = 0,
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
    accuracy scores), see :mod:`prefheads.eval.margins`. Preference pairs add the length-only method
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
    calibrated = [h for h in heads if is_calibrated(pm.heads[h].config.meta.get("objective"))]
    blocks, preds = task_metrics(spec, scores, calibrated)
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


def heads_template(pm: PreferenceModel, heads: Sequence[str]) -> str:
    """The template family the heads were trained on (their ``meta["template"]``), ``paper`` for
    none. Heads trained on different families cannot share one evaluation: a ValueError says so."""
    found = {h: pm.heads[h].config.meta.get("template") for h in heads}
    families = sorted({t for t in found.values() if t})
    if len(families) > 1:
        raise ValueError(f"the heads were trained on different templates ({found}): evaluate them separately "
                         "or choose one with --template")
    return families[0] if families else "paper"


def evaluate(pm: PreferenceModel, task_names: Sequence[str], *, data_dir: str | os.PathLike | None = None,
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
