"""Tests for prefheads.eval.metrics against values computed by hand."""

import math

import numpy as np
import pytest
import torch

from prefheads.eval.metrics import (
    METRICS,
    RACE_N_HIGH,
    RACE_N_MIDDLE,
    accuracy,
    brier_score,
    choose,
    compute_metrics,
    expected_calibration_error,
    f1,
    glue_score,
    gpt4all_score,
    mcc,
    pair_accuracy,
    pearson,
    prediction_distribution,
    race_score,
    reliability_bins,
    spearman,
)

# Binary fixture: TP = 3, FN = 1, FP = 2, TN = 4.
LABELS = [1, 1, 1, 1, 0, 0, 0, 0, 0, 0]
PREDS = [1, 1, 1, 0, 1, 1, 0, 0, 0, 0]


def test_accuracy_f1_mcc_by_formula():
    assert accuracy(PREDS, LABELS) == pytest.approx(7 / 10)
    # F1 = 2TP / (2TP + FP + FN) = 6 / 9
    assert f1(PREDS, LABELS) == pytest.approx(6 / 9)
    # class 0 as positive: TP0 = 4, FP0 = 1, FN0 = 2 → 8 / 11
    assert f1(PREDS, LABELS, pos_label=0) == pytest.approx(8 / 11)
    # MCC = (TP·TN − FP·FN) / sqrt((TP+FP)(TP+FN)(TN+FP)(TN+FN)) = (12 − 2) / sqrt(5·4·6·5)
    assert mcc(PREDS, LABELS) == pytest.approx(10 / math.sqrt(600))
    assert mcc([1] * 10, LABELS) == 0.0  # constant prediction: undefined → 0


def test_metrics_accept_arrays_and_tensors_and_return_floats():
    for conv in (np.asarray, torch.tensor):
        v = accuracy(conv(PREDS), conv(LABELS))
        assert type(v) is float and v == pytest.approx(0.7)


def test_length_mismatch_and_empty_rejected():
    with pytest.raises(ValueError):
        accuracy([1, 0], [1])
    with pytest.raises(ValueError):
        accuracy([], [])


def test_correlations_by_hand():
    # deviations (−1, 0, 1) and (−1, 1, 0): cov 1, variances 2 and 2 → r = 0.5; same ranks
    assert pearson([1, 2, 3], [1, 3, 2]) == pytest.approx(0.5)
    assert spearman([1, 2, 3], [1, 3, 2]) == pytest.approx(0.5)
    # monotone but not linear: Spearman 1, Pearson 25 / sqrt(5·129)
    assert spearman([1, 2, 3, 4], [1, 4, 9, 16]) == pytest.approx(1.0)
    assert pearson([1, 2, 3, 4], [1, 4, 9, 16]) == pytest.approx(25 / math.sqrt(645))
    assert pearson([3, 3, 3], [1, 2, 3]) == 0.0
    assert spearman([3, 3, 3], [1, 2, 3]) == 0.0


def test_pair_accuracy_ties_are_wrong():
    assert pair_accuracy([1.0, 2.0, 0.5, 1.0], [0.0, 3.0, 0.4, 1.0]) == pytest.approx(0.5)


# ---- choice and distribution ----------------------------------------------------------------

def test_choose_breaks_ties_to_lowest_index_and_counts_them():
    preds, ties = choose([[1, 3, 3], [2, 1], [0.5, 0.5, 0.5], [-1, -2], [0.1, 0.2, 0.3, 0.4]])
    assert preds == [1, 0, 0, 0, 3]
    assert ties == 2


def test_choose_rejects_nan_and_empty():
    with pytest.raises(ValueError, match="NaN"):
        choose([[0.1, float("nan")]])
    with pytest.raises(ValueError):
        choose([[]])


def test_prediction_distribution_shows_degenerate_model():
    d = prediction_distribution([1, 1, 1, 0], ["no", "yes"])
    assert d["counts"] == {"no": 1, "yes": 3}
    assert d["fractions"] == {"no": 0.25, "yes": 0.75}
    assert d["majority_choice"] == "yes" and d["majority_fraction"] == 0.75
    d = prediction_distribution([2, 2], 4)
    assert d["counts"] == {"0": 0, "1": 0, "2": 2, "3": 0}  # unpredicted choices still listed
    assert d["majority_fraction"] == 1.0
    with pytest.raises(ValueError):
        prediction_distribution([0, 2], ["no", "yes"])


# ---- calibration ----------------------------------------------------------------------------

PROBS = [0.05, 0.15, 0.15, 0.85, 0.95, 0.95]
CORRECT = [0, 0, 1, 1, 1, 0]


def test_ece_hand_fixture():
    # bins (width 0.1): b0 {0.05: 0} |0−.05|·1; b1 {0.15: 0, 1} |.5−.15|·2;
    # b8 {0.85: 1} |1−.85|·1; b9 {0.95: 1, 0} |.5−.95|·2 → (0.05 + 0.7 + 0.15 + 0.9) / 6 = 0.3
    assert expected_calibration_error(PROBS, CORRECT) == pytest.approx(0.3)
    assert expected_calibration_error([0.5, 0.5], [1, 0], n_bins=1) == pytest.approx(0.0)


def test_reliability_bins_counts_and_edges():
    bins = reliability_bins(PROBS, CORRECT, n_bins=10)
    assert len(bins) == 10
    assert [b["count"] for b in bins] == [1, 2, 0, 0, 0, 0, 0, 0, 1, 2]
    assert bins[1]["confidence"] == pytest.approx(0.15)
    assert bins[1]["accuracy"] == pytest.approx(0.5)
    assert bins[2]["confidence"] is None and bins[2]["accuracy"] is None
    assert bins[0]["lower"] == 0.0 and bins[9]["upper"] == 1.0
    # edges as sklearn's calibration_curve: 0.0 and 0.1 in bin 0, 1.0 in the last bin
    edge = reliability_bins([0.0, 0.1, 1.0], [0, 0, 1], n_bins=10)
    assert edge[0]["count"] == 2 and edge[9]["count"] == 1
    with pytest.raises(ValueError):
        reliability_bins([1.2], [1])


def test_brier_hand_fixture():
    # (.05² + .15² + .85² + .15² + .05² + .95²) / 6
    expected = (0.0025 + 0.0225 + 0.7225 + 0.0225 + 0.0025 + 0.9025) / 6
    assert brier_score(PROBS, CORRECT) == pytest.approx(expected)


# ---- dispatch -------------------------------------------------------------------------------

def test_compute_metrics_dispatch():
    out = compute_metrics(["accuracy", "f1", "mcc"], PREDS, LABELS)
    assert out == pytest.approx({"accuracy": 0.7, "f1": 6 / 9, "mcc": 10 / math.sqrt(600)})
    assert {"accuracy", "f1", "mcc", "pearson", "spearman", "ece", "brier"} <= set(METRICS.names())
    with pytest.raises(KeyError, match="accuracy"):
        compute_metrics(["bleu"], PREDS, LABELS)


def test_compute_metrics_calibration_from_candidate_probabilities():
    # two examples × two candidates, flattened: probs (.9, .2, .3, .6), correct (1, 0, 0, 1)
    scores = [[0.9, 0.2], [0.3, 0.6]]
    out = compute_metrics(["brier"], [0, 1], [0, 1], scores=scores)
    assert out["brier"] == pytest.approx((0.01 + 0.04 + 0.09 + 0.16) / 4)
    with pytest.raises(ValueError, match="scores"):
        compute_metrics(["ece"], [0, 1], [0, 1])


# ---- aggregates -----------------------------------------------------------------------------

GLUE = {
    "cola": {"mcc": 0.4},
    "glue/mrpc": {"accuracy": 0.8, "f1": 0.9},
    "stsb": {"pearson": 0.6, "spearman": 0.7},
    "mnli_matched": {"accuracy": 0.5},
    "glue/mnli_mismatched": {"accuracy": 0.6},
    "wnli": {"accuracy": 0.3},
}


def test_glue_score_with_and_without_wnli():
    # task means: cola .4, mrpc .85, stsb .65, mnli (.5 + .6)/2 = .55, wnli .3
    assert glue_score(GLUE, include_wnli=False) == pytest.approx((0.4 + 0.85 + 0.65 + 0.55) / 4)
    with_wnli = (0.4 + 0.85 + 0.65 + 0.55 + 0.3) / 5
    assert glue_score(GLUE, include_wnli=True) == pytest.approx(with_wnli)
    no_wnli = {k: v for k, v in GLUE.items() if k != "wnli"}
    assert glue_score(no_wnli, include_wnli=False) == pytest.approx(0.6125)
    with pytest.raises(ValueError, match="WNLI"):
        glue_score(no_wnli, include_wnli=True)


def test_gpt4all_score_unweighted_mean():
    tasks = {f"t{i}": 0.1 * (i + 1) for i in range(7)}  # .1 … .7 → mean .4
    assert gpt4all_score(tasks) == pytest.approx(0.4)
    with pytest.raises(ValueError, match="7"):
        gpt4all_score({"arc_easy": 0.5})
    assert gpt4all_score({"arc_easy": 0.5, "piqa": {"acc": 0.6, "acc_norm": 0.8}},
                         expected_tasks=None) == pytest.approx((0.5 + 0.7) / 2)


def test_race_score_weighted_by_counts():
    assert race_score(0.9, 1, 0.5, 3) == pytest.approx((0.9 + 1.5) / 4)
    paper = race_score(0.7, RACE_N_MIDDLE, 0.6, RACE_N_HIGH)
    assert paper == pytest.approx((0.7 * 1436 + 0.6 * 3498) / 4934)
    assert paper != pytest.approx(0.65)  # not the plain mean
    with pytest.raises(ValueError):
        race_score(0.5, 0, 0.5, 0)
