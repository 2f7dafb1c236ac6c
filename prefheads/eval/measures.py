"""What a scored task measures: its own metrics (MCC, F1, correlations, per split), each method's
predicted-choice distribution and ties, and the calibration of separable heads.

Metric values are fractions (reports show %).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from prefheads.eval.metrics import (accuracy, brier_score, choose, expected_calibration_error, f1, mcc,
                                    pair_accuracy, pearson, prediction_distribution, reliability_bins, spearman)
from prefheads.eval.scores import ChoiceScores
from prefheads.types import Example

if TYPE_CHECKING:
    from prefheads.tasks import TaskSpec


def choice_names(spec: TaskSpec, examples: Sequence[Example]) -> list[str]:
    """Names of candidate positions: the fixed choices, ``chosen``/``rejected``, or A, B, C..."""
    if spec.kind == "pairs":
        return ["chosen", "rejected"]
    if spec.choices:
        return list(spec.choices)
    n = max(len(ex.choices) for ex in examples)
    return [chr(65 + i) if n <= 26 else str(i) for i in range(n)]


def _metric(spec: TaskSpec, name: str, examples: Sequence[Example], preds: Sequence[int]) -> float:
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


def choice_metrics(spec: TaskSpec, examples: Sequence[Example], preds: Sequence[int]) -> tuple[dict[str, float], list[str]]:
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


def task_metrics(spec: TaskSpec, scores: ChoiceScores, separable: Sequence[str] = ()) -> tuple[dict[str, Any], dict[str, list[int]]]:
    """Per-method metrics, predicted-choice distribution and ties of one scored task.

    Args:
        spec: The task's :class:`~prefheads.tasks.TaskSpec`.
        scores: Its scores (pairs as two-candidate examples, chosen first, label 0).
        separable: Heads trained with a calibrated objective (``separable``; see
            :func:`prefheads.losses.is_calibrated`); they also get calibration.

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
            # a tie is its own prediction (index 2, "tie"), as pair accuracy counts it: a miss
            preds = [0 if r[0] > r[1] else 1 if r[1] > r[0] else 2 for r in table]
            ties = preds.count(2)
        else:
            metrics, official = choice_metrics(spec, exs, preds)
        dist = prediction_distribution(preds, names + ["tie"] if spec.kind == "pairs" else names)
        block = {"score": float(np.mean([metrics[k] for k in official])), "metrics": metrics,
                 "official": official, "ties": ties, "predicted": dist["counts"],
                 "majority_choice": dist["majority_choice"], "majority_fraction": dist["majority_fraction"]}
        if method.startswith("dph:") and method[4:] in separable:
            block["calibration"] = calibration(table, labels)
        blocks[method] = block
        all_preds[method] = preds
    return blocks, all_preds
