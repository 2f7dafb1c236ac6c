"""A head's margin over its task's baseline, with its uncertainty; the length-only pair baseline.

Every head's method block gets, beside ``vs_baseline`` (its score minus the baseline's):

* ``vs_baseline_ci``: ``[lo, hi]``, a **paired bootstrap** percentile interval of that margin.
  The task's examples (questions, or preference pairs) are resampled with replacement
  ``n_resamples`` times from a seeded generator; on each resample both methods' task scores
  are recomputed on the *same* examples — the mean per-example correctness for accuracy tasks,
  the metric itself (MCC, F1, Pearson / Spearman, per-split accuracies) for the others — and
  the (1 − confidence)/2 and (1 + confidence)/2 percentiles of the differences are the bounds.
  The same seed gives the same interval.
* ``vs_baseline_p``: the two-sided p-value of **McNemar's exact test** where the task score is
  a plain accuracy (one split; ``accuracy`` or ``pair_accuracy``): of the examples exactly one
  of the two methods gets right, how lopsided the split is under "equally accurate"
  (:func:`mcnemar_p`). ``None`` for other scores.

Preference pairs also get the **length-only baseline** (method :data:`LENGTH`: the longer reply
wins, ties count as misses as for every pair method) and every method's accuracy on the pairs
whose replies are of similar length (:func:`similar_length`), where a head that only learned
"longer is better" falls to chance. Lengths are in characters of the reply text, so the same
pairs count as similar whatever the tokenizer.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
from scipy import stats

from prefheads.eval.measures import choice_metrics
from prefheads.eval.metrics import choose, pair_accuracy
from prefheads.types import Example

if TYPE_CHECKING:
    from prefheads.tasks import TaskSpec

LENGTH = "length"
"""Method name of the length-only baseline of preference pairs (the longer reply wins)."""
N_RESAMPLES = 1000
"""Default number of bootstrap resamples."""
CONFIDENCE = 0.95
"""Coverage of the reported interval."""
SIMILAR_LENGTH = 0.2
"""Two replies are of similar length when they differ by at most this fraction of the longer."""
SIMILAR_KEY = "pair_accuracy_similar_length"
"""Metric name of pair accuracy on the similar-length pairs."""
_CHUNK = 4_000_000  # resampled indices held at once (32 MB): QQP has 40k validation pairs

Scorer = Callable[[np.ndarray], float]


# ----------------------------------------------------------------------------- statistics

def bootstrap_scores(score: Sequence[float] | np.ndarray | Scorer, n: int, *, n_resamples: int = N_RESAMPLES,
                     seed: int = 0) -> np.ndarray:
    """A task score on each of ``n_resamples`` seeded resamples (with replacement) of n examples.

    The resamples depend only on ``n``, ``n_resamples`` and ``seed``, so two methods scored with
    the same arguments are scored on the same examples each time: their differences form a
    *paired* bootstrap distribution.

    Args:
        score: Per-example values whose mean is the score (0/1 correctness for accuracy),
            shape ``(n,)``; or a function giving the score of the examples at an index array.
        n: Number of examples.
        n_resamples: Number of resamples.
        seed: Seed of the resampling generator.

    Returns:
        Scores, shape ``(n_resamples,)``.
    """
    if n < 1 or n_resamples < 1:
        raise ValueError(f"need n >= 1 examples and n_resamples >= 1, got {n}, {n_resamples}")
    values = None if callable(score) else np.asarray(score, dtype=float)
    if values is not None and values.shape != (n,):
        raise ValueError(f"expected {n} per-example values, got shape {values.shape}")
    # Indices are drawn here rather than by scipy.stats.bootstrap so that the baseline's
    # resampled scores are computed once per task and reused for every head.
    rng = np.random.default_rng(seed)
    rows = max(1, _CHUNK // n)
    out = np.empty(n_resamples)
    for start in range(0, n_resamples, rows):
        idx = rng.integers(0, n, size=(min(rows, n_resamples - start), n))
        if values is not None:
            out[start: start + len(idx)] = values[idx].mean(axis=1)
        else:
            out[start: start + len(idx)] = [score(i) for i in idx]
    return out


def percentile_interval(values: Any, confidence: float = CONFIDENCE) -> list[float]:
    """``[lo, hi]``: the central ``confidence`` percentile interval of bootstrap values."""
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must lie in (0, 1), got {confidence}")
    tail = 50 * (1 - confidence)
    lo, hi = np.percentile(np.asarray(values, dtype=float), [tail, 100 - tail])
    return [float(lo), float(hi)]


def paired_interval(a: Sequence[float] | np.ndarray | Scorer, b: Sequence[float] | np.ndarray | Scorer, n: int, *,
                    n_resamples: int = N_RESAMPLES, seed: int = 0, confidence: float = CONFIDENCE) -> list[float]:
    """Paired bootstrap interval of score(a) − score(b) over the same n examples.

    ``a`` and ``b`` are per-example values or scorers, as for :func:`bootstrap_scores`.
    """
    kw = dict(n_resamples=n_resamples, seed=seed)
    return percentile_interval(bootstrap_scores(a, n, **kw) - bootstrap_scores(b, n, **kw), confidence)


def mcnemar_p(correct_a: Any, correct_b: Any) -> float:
    """Two-sided p-value of McNemar's exact test that two methods are equally accurate.

    Only the discordant examples (one method right, the other wrong) carry information; under
    the null hypothesis each goes either way with probability 1/2, so the count won by ``a`` is
    Binomial(discordant, 1/2) (``scipy.stats.binomtest``). 1.0 when there are none.

    Args:
        correct_a: Per-example correctness of method a, shape ``(n,)`` (bools or 0/1).
        correct_b: The same examples under method b.
    """
    a, b = np.asarray(correct_a, dtype=bool), np.asarray(correct_b, dtype=bool)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f"correctness must be 1-D of equal length, got {a.shape}, {b.shape}")
    a_only, b_only = int(np.sum(a & ~b)), int(np.sum(~a & b))
    if a_only + b_only == 0:
        return 1.0
    return float(stats.binomtest(a_only, a_only + b_only, 0.5).pvalue)


# ----------------------------------------------------------------------------- preference pairs

def length_table(examples: Sequence[Example]) -> list[list[float]]:
    """Length-only baseline scores: each candidate reply's length in characters."""
    return [[float(len(c)) for c in ex.choices] for ex in examples]


def similar_length(chosen: Any, rejected: Any, tolerance: float = SIMILAR_LENGTH) -> np.ndarray:
    """Which pairs have replies of similar length: |chosen − rejected| ≤ tolerance · the longer.

    Args:
        chosen: Length of each chosen reply, shape ``(n,)`` (characters in evaluation).
        rejected: Length of each rejected reply, shape ``(n,)``.
        tolerance: Largest allowed difference as a fraction of the longer reply.

    Returns:
        Boolean mask, shape ``(n,)``.
    """
    c, r = np.asarray(chosen, dtype=float), np.asarray(rejected, dtype=float)
    return np.abs(c - r) <= tolerance * np.maximum(c, r)


def add_similar_length(blocks: Mapping[str, dict[str, Any]], tables: Mapping[str, Sequence[Sequence[float]]],
                       examples: Sequence[Example], tolerance: float = SIMILAR_LENGTH) -> dict[str, Any]:
    """Add :data:`SIMILAR_KEY` (pair accuracy on similar-length pairs) to every method's metrics.

    Not added when no pair qualifies. Returns what the subset is: ``n`` (pairs in it),
    ``tolerance`` and ``unit``.
    """
    lengths = np.asarray(length_table(examples))
    mask = similar_length(lengths[:, 0], lengths[:, 1], tolerance)
    if mask.any():
        for method, block in blocks.items():
            t = np.asarray(tables[method], dtype=float)
            block["metrics"][SIMILAR_KEY] = pair_accuracy(t[mask, 0], t[mask, 1])
    return {"n": int(mask.sum()), "tolerance": tolerance, "unit": "characters"}


# ----------------------------------------------------------------------------- margins of heads

def _correct(kind: str, table: Sequence[Sequence[float]], preds: Sequence[int], labels: Sequence[int]) -> np.ndarray:
    if kind == "pairs":  # strictly above, as pair_accuracy: a tie is a miss
        return np.asarray([row[0] > row[1] for row in table], dtype=bool)
    return np.asarray(preds) == np.asarray(labels)


def _plain_accuracy(kind: str, official: Sequence[str]) -> bool:
    return list(official) == (["pair_accuracy"] if kind == "pairs" else ["accuracy"])


def _scorer(spec: TaskSpec, examples: Sequence[Example], preds: Sequence[int]) -> Scorer:
    # the task's score (mean of its official metrics) recomputed on the resampled examples
    def score(idx: np.ndarray) -> float:
        with warnings.catch_warnings():  # a small resample may hold one class only; MCC is then 0
            warnings.simplefilter("ignore", UserWarning)
            metrics, official = choice_metrics(spec, [examples[i] for i in idx], [preds[i] for i in idx])
        return float(np.mean([metrics[k] for k in official]))
    return score


def add_margins(spec: TaskSpec, blocks: Mapping[str, dict[str, Any]], preds: Mapping[str, Sequence[int]],
                tables: Mapping[str, Sequence[Sequence[float]]], examples: Sequence[Example], baseline: str, *,
                n_resamples: int = N_RESAMPLES, seed: int = 0, confidence: float = CONFIDENCE) -> dict[str, Any]:
    """Give every head's block (``dph:*``) its margin over ``baseline`` and how sure it is.

    Sets ``vs_baseline`` (score difference), ``vs_baseline_ci`` (paired bootstrap interval;
    left out when ``n_resamples`` is 0) and ``vs_baseline_p`` (McNemar's exact test where the
    score is a plain accuracy, else ``None``).

    Args:
        spec: The task's :class:`~prefheads.tasks.TaskSpec`.
        blocks: Method -> result block, as from :func:`prefheads.eval.measures.task_metrics`.
        preds: Method -> predicted index per example.
        tables: Method -> candidate scores per example.
        examples: The scored examples.
        baseline: The baseline method (:func:`prefheads.eval.baselines.baseline_of`).
        n_resamples: Bootstrap resamples (0: no interval).
        seed: Seed of the resamples.
        confidence: Coverage of the interval.

    Returns:
        The bootstrap settings (``resamples``, ``seed``, ``confidence``), kept with the result.
    """
    labels = [ex.label for ex in examples]
    plain = _plain_accuracy(spec.kind, blocks[baseline]["official"])

    def target(method: str) -> np.ndarray | Scorer:
        if plain:
            return _correct(spec.kind, tables[method], preds[method], labels).astype(float)
        return _scorer(spec, examples, preds[method])

    kw = dict(n_resamples=n_resamples, seed=seed)
    base_boot = None
    for method, block in blocks.items():
        if not method.startswith("dph:"):
            continue
        block["vs_baseline"] = block["score"] - blocks[baseline]["score"]
        if n_resamples:
            if base_boot is None:  # computed once, reused for every head: the same resamples
                base_boot = bootstrap_scores(target(baseline), len(examples), **kw)
            diffs = bootstrap_scores(target(method), len(examples), **kw) - base_boot
            block["vs_baseline_ci"] = percentile_interval(diffs, confidence)
        block["vs_baseline_p"] = (mcnemar_p(target(method), target(baseline)) if plain else None)
    return {"resamples": n_resamples, "seed": seed, "confidence": confidence}


def accuracy_margin(head: Sequence[Sequence[float]], base: Sequence[Sequence[float]], labels: Sequence[int], *,
                    n_resamples: int = N_RESAMPLES, seed: int = 0, confidence: float = CONFIDENCE) -> dict[str, Any]:
    """Accuracy margin of one method's candidate scores over another's, with interval and p.

    Args:
        head: Candidate scores per example of the method measured.
        base: The baseline's, same examples.
        labels: Gold index per example.

    Returns:
        ``vs_baseline``, ``vs_baseline_ci`` and ``vs_baseline_p`` (McNemar), as in :func:`add_margins`.
    """
    a = np.asarray(choose(head)[0]) == np.asarray(labels)
    b = np.asarray(choose(base)[0]) == np.asarray(labels)
    return {"vs_baseline": float(a.mean() - b.mean()),
            "vs_baseline_ci": paired_interval(a, b, len(labels), n_resamples=n_resamples, seed=seed,
                                              confidence=confidence),
            "vs_baseline_p": mcnemar_p(a, b)}
