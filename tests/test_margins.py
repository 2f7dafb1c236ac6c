"""A head's margin over its baseline: paired bootstrap intervals, McNemar's test, the length baseline."""

from __future__ import annotations

import numpy as np
import pytest

from prefheads import tasks
from prefheads.eval import margins
from prefheads.eval import LOGPROB, ChoiceScores, baseline_of, task_metrics
from prefheads.eval.margins import (LENGTH, SIMILAR_KEY, accuracy_margin, add_margins, add_similar_length,
                               bootstrap_scores, length_table, mcnemar_p, paired_interval, similar_length)
from prefheads.eval.metrics import mcc
from prefheads.types import Example


def _synthetic(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    # per-example correctness of a ~65 % method and a ~50 % one
    rng = np.random.default_rng(seed)
    return rng.random(n) < 0.65, rng.random(n) < 0.5


def _pairs(chosen: list[str], rejected: list[str]) -> list[Example]:
    return [Example(str(i), [{"role": "user", "content": "q"}], [c, r], 0, "t") for i, (c, r) in enumerate(zip(chosen, rejected))]


# ----------------------------------------------------------------------------- bootstrap


def test_interval_contains_the_observed_margin_and_is_seeded():
    a, b = _synthetic(300)
    margin = a.mean() - b.mean()
    ci = paired_interval(a, b, 300)
    assert ci[0] < margin < ci[1] and ci[0] < ci[1]
    assert paired_interval(a, b, 300) == ci  # same seed, same interval
    assert paired_interval(a, b, 300, seed=1) != ci
    wider = paired_interval(a, b, 300, confidence=0.99)
    assert wider[0] < ci[0] and wider[1] > ci[1]


def test_interval_widens_with_fewer_examples():
    a, b = _synthetic(2000)
    widths = {n: np.diff(paired_interval(a[:n], b[:n], n))[0] for n in (50, 200, 2000)}
    assert widths[50] > widths[200] > widths[2000] > 0


@pytest.mark.filterwarnings("ignore:A single label")  # resamples of 8 examples may hold one class
def test_interval_is_degenerate_when_the_methods_agree_on_every_example():
    a, _ = _synthetic(100)
    assert paired_interval(a, a, 100) == [0.0, 0.0]
    # every example right against every example wrong: the margin is 1 on every resample
    assert paired_interval(np.ones(40), np.zeros(40), 40) == [1.0, 1.0]
    preds, labels = np.array([0, 1, 1, 0, 1, 0, 0, 1]), np.array([0, 1, 0, 0, 1, 1, 0, 1])

    def score(idx):
        return mcc(preds[idx], labels[idx])

    assert paired_interval(score, score, 8) == [0.0, 0.0]


def test_bootstrap_resamples_depend_only_on_n_and_seed(monkeypatch):
    # pairing: a per-example table and a function of the index array see the same resamples
    a, _ = _synthetic(50)
    values = bootstrap_scores(a, 50, n_resamples=200, seed=4)
    assert np.array_equal(values, bootstrap_scores(lambda idx: a[idx].mean(), 50, n_resamples=200, seed=4))
    monkeypatch.setattr(margins, "_CHUNK", 170)  # three resamples per draw instead of all at once
    assert np.array_equal(values, bootstrap_scores(a, 50, n_resamples=200, seed=4))
    with pytest.raises(ValueError):
        bootstrap_scores(a, 49)


# ----------------------------------------------------------------------------- McNemar


def test_mcnemar_exact_p_by_hand():
    # 10 discordant examples, all won by a (and 5 both right, 5 both wrong): p = 2 · 0.5^10
    a = [1] * 10 + [1] * 5 + [0] * 5
    b = [0] * 10 + [1] * 5 + [0] * 5
    assert mcnemar_p(a, b) == pytest.approx(2 * 0.5 ** 10)
    assert mcnemar_p(b, a) == pytest.approx(2 * 0.5 ** 10)
    # 3 won each way: as balanced as it gets
    assert mcnemar_p([1, 1, 1, 0, 0, 0], [0, 0, 0, 1, 1, 1]) == pytest.approx(1.0)
    # 1 against 4: P(X <= 1) + P(X >= 4) for X ~ Bin(5, 1/2) = 12 / 32
    assert mcnemar_p([1, 0, 0, 0, 0], [0, 1, 1, 1, 1]) == pytest.approx(12 / 32)
    assert mcnemar_p([1, 0], [1, 0]) == 1.0  # nothing discordant


# ----------------------------------------------------------------------------- preference pairs


def test_length_baseline_picks_the_longer_reply_and_a_tie_is_a_miss():
    spec = tasks.get_task("hh_rlhf")
    exs = _pairs(["a longer reply", "same", "no"], ["short", "size", "a longer reply"])
    assert length_table(exs) == [[14.0, 5.0], [4.0, 4.0], [2.0, 14.0]]
    scores = ChoiceScores(exs, logprob=[[0.0, 1.0]] * 3, logprob_sum=[[0.0, 1.0]] * 3,
                          extra={LENGTH: length_table(exs)})
    blocks, _ = task_metrics(spec, scores)
    assert blocks[LENGTH]["metrics"]["pair_accuracy"] == pytest.approx(1 / 3)
    assert blocks[LENGTH]["ties"] == 1
    # the length baseline is a baseline a head must beat, beside log-prob
    assert baseline_of(blocks) == {"method": LENGTH, "score": pytest.approx(1 / 3)}


def test_similar_length_counts_only_pairs_within_the_tolerance():
    # |c − r| <= 0.2 · max(c, r): 20 of 100 is in, 21 of 100 is out
    mask = similar_length([100, 100, 79, 10, 0, 50], [80, 79, 100, 10, 0, 100])
    assert mask.tolist() == [True, False, False, True, True, False]
    assert similar_length([100], [60], tolerance=0.5).tolist() == [True]
    exs = _pairs(["x" * 100, "x" * 100, "x" * 10, "x" * 50], ["y" * 85, "y" * 10, "y" * 11, "y" * 100])
    # the method is right on both dissimilar pairs and wrong on both similar ones
    table = [[0.0, 1.0], [1.0, 0.0], [0.0, 1.0], [1.0, 0.0]]
    blocks = {"dph:h": {"metrics": {}}, LENGTH: {"metrics": {}}}
    info = add_similar_length(blocks, {"dph:h": table, LENGTH: length_table(exs)}, exs)
    assert info == {"n": 2, "tolerance": 0.2, "unit": "characters"}
    assert blocks["dph:h"]["metrics"][SIMILAR_KEY] == 0.0
    assert blocks[LENGTH]["metrics"][SIMILAR_KEY] == 0.5  # 100 > 85 right, 10 < 11 wrong
    none = {"m": {"metrics": {}}}
    assert add_similar_length(none, {"m": table[1:2]}, exs[1:2])["n"] == 0 and SIMILAR_KEY not in none["m"]["metrics"]


# ----------------------------------------------------------------------------- margins of heads


def test_add_margins_on_pairs_uses_strict_correctness_and_mcnemar():
    spec = tasks.get_task("hh_rlhf")
    exs = _pairs(["a"] * 12, ["b"] * 12)
    # the head wins 10 pairs the baseline loses; on the other two the baseline ties (a miss)
    head = [[1.0, 0.0]] * 12
    base = [[0.0, 1.0]] * 10 + [[0.5, 0.5]] * 2
    scores = ChoiceScores(exs, logprob=base, logprob_sum=base, rewards={"h": head})
    blocks, preds = task_metrics(spec, scores)
    info = add_margins(spec, blocks, preds, scores.methods(), exs, LOGPROB, seed=0)
    h = blocks["dph:h"]
    assert h["vs_baseline"] == pytest.approx(1.0) and h["vs_baseline_ci"] == [1.0, 1.0]
    assert h["vs_baseline_p"] == pytest.approx(2 * 0.5 ** 12)
    assert info == {"resamples": 1000, "seed": 0, "confidence": 0.95}
    assert "vs_baseline" not in blocks[LOGPROB]


def test_add_margins_recomputes_mcc_on_each_resample_and_has_no_mcnemar():
    spec = tasks.get_task("glue/cola")
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 120)
    head_p = np.where(rng.random(120) < 0.8, labels, 1 - labels)
    base_p = np.where(rng.random(120) < 0.6, labels, 1 - labels)
    exs = [Example(str(i), [{"role": "user", "content": "q"}], list(spec.choices), int(y), "glue/cola")
           for i, y in enumerate(labels)]

    def table(p):
        return [[1.0 if j == k else 0.0 for j in range(2)] for k in p]

    scores = ChoiceScores(exs, logprob=table(base_p), logprob_sum=table(base_p), rewards={"h": table(head_p)})
    blocks, preds = task_metrics(spec, scores)
    add_margins(spec, blocks, preds, scores.methods(), exs, LOGPROB, n_resamples=300, seed=2)
    h = blocks["dph:h"]
    margin = mcc(head_p, labels) - mcc(base_p, labels)
    assert h["vs_baseline"] == pytest.approx(margin)
    assert h["vs_baseline_ci"][0] < margin < h["vs_baseline_ci"][1]
    assert h["vs_baseline_p"] is None  # the score is MCC, not an accuracy
    want = paired_interval(lambda i: mcc(head_p[i], labels[i]), lambda i: mcc(base_p[i], labels[i]), 120,
                           n_resamples=300, seed=2)
    assert h["vs_baseline_ci"] == pytest.approx(want)
    off = task_metrics(spec, scores)[0]
    add_margins(spec, off, preds, scores.methods(), exs, LOGPROB, n_resamples=0)
    assert "vs_baseline_ci" not in off["dph:h"] and off["dph:h"]["vs_baseline"] == pytest.approx(margin)


def test_accuracy_margin_of_candidate_scores():
    labels = [0, 1, 2, 0, 1, 2, 0, 1, 2, 0]
    head = [[1.0 if j == y else 0.0 for j in range(3)] for y in labels]  # always right
    base = [[1.0, 0.0, 0.0]] * 10  # always "A": right on the four label-0 questions
    m = accuracy_margin(head, base, labels)
    assert m["vs_baseline"] == pytest.approx(0.6)
    assert m["vs_baseline_ci"][0] <= 0.6 <= m["vs_baseline_ci"][1]
    assert m["vs_baseline_p"] == pytest.approx(2 * 0.5 ** 6)
