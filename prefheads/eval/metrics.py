"""Evaluation metrics, prediction choice, calibration and the paper's benchmark aggregates.

Every metric returns a plain Python ``float`` as a **fraction** (accuracy 0..1, correlations
−1..1); reports multiply by 100. Inputs may be lists, NumPy arrays or tensors on any device.
The metric maths itself is scikit-learn's and SciPy's; this module only adapts inputs and names.

Aggregates follow PAPER.md section 5: the GLUE score is the macro average of per-task averages
(MRPC accuracy+F1, STS-B Pearson+Spearman, MNLI matched+mismatched are averaged within their
task first), the GPT4All score the unweighted mean of its seven tasks, and RACE the average of
middle and high weighted by their sizes.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
from scipy import stats
from sklearn.metrics import accuracy_score, brier_score_loss, f1_score, matthews_corrcoef

from prefheads.registry import Registry

RACE_N_MIDDLE = 1436
"""Number of RACE-middle test questions."""
RACE_N_HIGH = 3498
"""Number of RACE-high test questions."""
GPT4ALL_N_TASKS = 7
"""ARC-Easy, ARC-Challenge, OpenBookQA, HellaSwag, WinoGrande, BoolQ, PIQA."""

MetricFn = Callable[[Any, Any, Any], float]
METRICS: Registry[MetricFn] = Registry("metric")
"""Metrics by name, each called as ``fn(predictions, labels, scores)``."""


def _np(x: Any, dtype: Any = None) -> np.ndarray:
    if hasattr(x, "detach"):  # torch tensor, possibly on an accelerator
        x = x.detach().cpu().numpy()
    return np.asarray(x, dtype=dtype)


def _pair(predictions: Any, labels: Any) -> tuple[np.ndarray, np.ndarray]:
    p, y = _np(predictions), _np(labels)
    if p.shape != y.shape or p.ndim != 1:
        raise ValueError(
            f"predictions and labels must be 1-D of equal length, got {p.shape}, {y.shape}"
        )
    if p.size == 0:
        raise ValueError("cannot compute a metric on zero examples")
    return p, y


def accuracy(predictions: Any, labels: Any) -> float:
    """Fraction of predictions equal to their label."""
    p, y = _pair(predictions, labels)
    return float(accuracy_score(y, p))


def f1(predictions: Any, labels: Any, pos_label: int = 1) -> float:
    """Binary F1 of class ``pos_label`` (GLUE MRPC/QQP: 1, the "yes"/duplicate class)."""
    p, y = _pair(predictions, labels)
    return float(f1_score(y, p, pos_label=pos_label, average="binary", zero_division=0.0))


def mcc(predictions: Any, labels: Any) -> float:
    """Matthews correlation coefficient (GLUE CoLA); 0 when undefined (a constant column)."""
    p, y = _pair(predictions, labels)
    return float(matthews_corrcoef(y, p))


def _correlation(fn: Callable[..., Any], predictions: Any, labels: Any) -> float:
    p, y = _pair(predictions, labels)
    p, y = p.astype(float), y.astype(float)
    if np.all(p == p[0]) or np.all(y == y[0]):
        # Undefined for constant input; report "no correlation", as matthews_corrcoef does.
        return 0.0
    return float(fn(p, y)[0])


def pearson(predictions: Any, labels: Any) -> float:
    """Pearson correlation (GLUE STS-B); 0 when either side is constant."""
    return _correlation(stats.pearsonr, predictions, labels)


def spearman(predictions: Any, labels: Any) -> float:
    """Spearman rank correlation (GLUE STS-B); 0 when either side is constant."""
    return _correlation(stats.spearmanr, predictions, labels)


def pair_accuracy(chosen_scores: Any, rejected_scores: Any) -> float:
    """Fraction of preference pairs whose chosen score is strictly above the rejected one."""
    w, l = _pair(chosen_scores, rejected_scores)
    return float(np.mean(w.astype(float) > l.astype(float)))


def brier_score(probs: Any, correct: Any) -> float:
    """Mean squared error between probabilities and 0/1 outcomes (lower is better)."""
    p, c = _pair(probs, correct)
    return float(brier_score_loss(c.astype(int), p.astype(float), pos_label=1))


def reliability_bins(probs: Any, correct: Any, n_bins: int = 10) -> list[dict[str, Any]]:
    """Per-bin mean confidence, accuracy and count over equal-width bins of [0, 1].

    Binning is scikit-learn's ``calibration_curve`` (uniform strategy): bin 0 is [0, 1/n],
    bin i > 0 is (i/n, (i+1)/n].

    Args:
        probs: Predicted probabilities that each item is correct, shape ``(N,)``, in [0, 1]
            (for a separable head, σ(reward) of each candidate).
        correct: 0/1 outcomes, shape ``(N,)``.
        n_bins: Number of bins.

    Returns:
        One dict per bin (empty ones included, for plotting): ``lower``, ``upper``, ``count``,
        and ``confidence`` / ``accuracy`` (``None`` for an empty bin).
    """
    p, c = _pair(probs, correct)
    p, c = p.astype(float), c.astype(float)
    if n_bins < 1:
        raise ValueError(f"n_bins must be >= 1, got {n_bins}")
    if np.any((p < 0) | (p > 1)) or np.any(np.isnan(p)):
        raise ValueError("probabilities must lie in [0, 1]")
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    ids = np.searchsorted(edges[1:-1], p)  # same assignment as sklearn.calibration_curve
    counts = np.bincount(ids, minlength=n_bins)
    conf = np.bincount(ids, weights=p, minlength=n_bins)
    acc = np.bincount(ids, weights=c, minlength=n_bins)
    return [
        {
            "lower": float(edges[i]),
            "upper": float(edges[i + 1]),
            "count": int(counts[i]),
            "confidence": float(conf[i] / counts[i]) if counts[i] else None,
            "accuracy": float(acc[i] / counts[i]) if counts[i] else None,
        }
        for i in range(n_bins)
    ]


def expected_calibration_error(probs: Any, correct: Any, n_bins: int = 10) -> float:
    """ECE = Σ_b (n_b / N)·|accuracy_b − confidence_b| over :func:`reliability_bins`."""
    bins = reliability_bins(probs, correct, n_bins)
    n = sum(b["count"] for b in bins)
    gaps = [b["count"] / n * abs(b["accuracy"] - b["confidence"]) for b in bins if b["count"]]
    return float(sum(gaps))


def choose(scores: Sequence[Sequence[float]]) -> tuple[list[int], int]:
    """Pick the highest-scoring candidate of each example.

    Ties break toward the lowest index, so results are deterministic; how often that happened
    is returned, since many ties mean the scores carry little information.

    Args:
        scores: One list of candidate scores per example (lengths may differ).

    Returns:
        ``(pred_indices, n_ties)``: the chosen index per example and the number of examples
        whose maximum was shared by more than one candidate.
    """
    preds, ties = [], 0
    for i, row in enumerate(scores):
        s = _np(row, dtype=float)
        if s.ndim != 1 or s.size == 0:
            raise ValueError(f"example {i}: expected a non-empty list of scores, got {s.shape}")
        if np.isnan(s).any():
            raise ValueError(f"example {i}: scores contain NaN: {s.tolist()}")
        best = s.max()
        preds.append(int(np.argmax(s)))  # first occurrence of the maximum
        ties += int(np.count_nonzero(s == best) > 1)
    return preds, ties


def prediction_distribution(
    predictions: Any, choices: int | Sequence[str]
) -> dict[str, Any]:
    """Count how often each choice is predicted, so a degenerate "always yes" model shows.

    Args:
        predictions: Predicted choice indices, shape ``(N,)``.
        choices: The number of choices, or their names (index i is named ``choices[i]``).

    Returns:
        ``counts`` (name → count, every choice present, in index order), ``fractions``
        (name → fraction), ``majority_choice`` and ``majority_fraction``.
    """
    names = [str(c) for c in (range(choices) if isinstance(choices, int) else choices)]
    p = _np(predictions).astype(int).ravel()
    if p.size == 0:
        raise ValueError("no predictions")
    if p.min() < 0 or p.max() >= len(names):
        raise ValueError(
            f"prediction indices must lie in [0, {len(names)}), got {p.min()}..{p.max()}"
        )
    counts = np.bincount(p, minlength=len(names))
    top = int(np.argmax(counts))
    return {
        "counts": {n: int(c) for n, c in zip(names, counts)},
        "fractions": {n: float(c / p.size) for n, c in zip(names, counts)},
        "majority_choice": names[top],
        "majority_fraction": float(counts[top] / p.size),
    }


def _calibration_inputs(labels: Any, scores: Any) -> tuple[np.ndarray, np.ndarray]:
    """Flatten per-candidate probabilities and one-hot correctness for calibration metrics."""
    if scores is None:
        raise ValueError("calibration metrics need scores: per-candidate probabilities")
    probs, correct = [], []
    for row, label in zip(scores, _np(labels).astype(int)):
        row = _np(row, dtype=float)
        probs.extend(row.tolist())
        correct.extend((np.arange(row.size) == label).astype(float).tolist())
    return np.asarray(probs), np.asarray(correct)


METRICS.add("accuracy", lambda p, y, s: accuracy(p, y))
METRICS.add("f1", lambda p, y, s: f1(p, y))
METRICS.add("mcc", lambda p, y, s: mcc(p, y))
METRICS.add("pearson", lambda p, y, s: pearson(p, y))
METRICS.add("spearman", lambda p, y, s: spearman(p, y))
METRICS.add("ece", lambda p, y, s: expected_calibration_error(*_calibration_inputs(y, s)))
METRICS.add("brier", lambda p, y, s: brier_score(*_calibration_inputs(y, s)))


def compute_metrics(
    metric_names: Sequence[str],
    predictions: Any,
    labels: Any,
    scores: Sequence[Sequence[float]] | None = None,
) -> dict[str, float]:
    """Compute the named metrics of :data:`METRICS`.

    Args:
        metric_names: E.g. ``["accuracy", "f1"]``; ``"ece"`` and ``"brier"`` need ``scores``.
        predictions: Predicted choice indices (or values, for STS-B correlations), ``(N,)``.
        labels: Gold indices (or gold scores), ``(N,)``.
        scores: Optional per-example candidate scores; for ``"ece"``/``"brier"`` they must be
            probabilities that each candidate is correct (σ(reward) of a separable head).

    Returns:
        Metric name → value (fraction).
    """
    return {name: METRICS.get(name)(predictions, labels, scores) for name in metric_names}


def _task_mean(task: str, value: float | Mapping[str, float]) -> float:
    if isinstance(value, Mapping):
        if not value:
            raise ValueError(f"task {task!r} has no metrics")
        return float(np.mean([float(v) for v in value.values()]))
    return float(value)


def _base_name(task: str) -> str:
    return task.rsplit("/", 1)[-1].lower()


def glue_score(per_task: Mapping[str, Mapping[str, float]], include_wnli: bool) -> float:
    """GLUE score: macro average over tasks of each task's mean metric.

    Pass only the official metrics of each task (CoLA MCC; MRPC/QQP accuracy and F1; STS-B
    Pearson and Spearman; MNLI matched and mismatched accuracy; others accuracy). MNLI given as
    two entries (names starting ``mnli``, e.g. ``mnli_matched`` / ``glue/mnli_mismatched``) is
    merged into one task before averaging. Units are those of the inputs.

    Args:
        per_task: Task name → metric name → value.
        include_wnli: Whether a task named ``wnli`` counts (it must then be present).
    """
    merged: dict[str, list[float]] = {}
    for task, metrics in per_task.items():
        base = _base_name(task)
        key = "mnli" if base.startswith("mnli") else base
        merged.setdefault(key, []).extend(float(v) for v in metrics.values())
    if include_wnli and "wnli" not in merged:
        raise ValueError("include_wnli=True but no WNLI result was given")
    if not include_wnli:
        merged.pop("wnli", None)
    if not merged or any(not v for v in merged.values()):
        raise ValueError(f"every GLUE task needs at least one metric, got {dict(per_task)}")
    return float(np.mean([np.mean(v) for v in merged.values()]))


def gpt4all_score(
    per_task: Mapping[str, float | Mapping[str, float]],
    expected_tasks: int | None = GPT4ALL_N_TASKS,
) -> float:
    """GPT4All suite score: the unweighted mean over its tasks.

    Args:
        per_task: Task name → accuracy (or a metric dict, averaged first).
        expected_tasks: Required number of tasks (7); ``None`` accepts a partial suite.
    """
    if expected_tasks is not None and len(per_task) != expected_tasks:
        raise ValueError(
            f"the GPT4All score averages {expected_tasks} tasks, got {len(per_task)}: "
            f"{sorted(per_task)} (pass expected_tasks=None for a partial suite)"
        )
    if not per_task:
        raise ValueError("no GPT4All task results")
    return float(np.mean([_task_mean(t, v) for t, v in per_task.items()]))


def race_score(middle_acc: float, n_middle: int, high_acc: float, n_high: int) -> float:
    """RACE accuracy over middle and high together: their mean weighted by question counts.

    The paper's test split has :data:`RACE_N_MIDDLE` and :data:`RACE_N_HIGH` questions.
    """
    if n_middle < 0 or n_high < 0 or n_middle + n_high == 0:
        raise ValueError(f"need counts >= 0 with a positive total, got {n_middle}, {n_high}")
    return float((middle_acc * n_middle + high_acc * n_high) / (n_middle + n_high))
