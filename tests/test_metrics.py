"""Tests for leukemia.metrics: hand-computed values, scikit-learn cross-checks, validation."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from sklearn import metrics as skm

from leukemia.metrics import (
    CI_KEYS,
    best_threshold,
    binary_metrics,
    confusion,
    per_patient_accuracy,
    roc_auc,
    roc_curve,
    threshold_curve,
    weighted_f1,
)

METRICS_PY = Path(__file__).resolve().parents[1] / "leukemia" / "metrics.py"

KEYS = {
    "threshold",
    "weighted_f1",
    "weighted_f1_ci95",
    "accuracy",
    "balanced_accuracy",
    "sensitivity",
    "specificity",
    "precision",
    "roc_auc",
    "confusion_matrix",
    "n",
    "n_patients",
}

# Imbalanced: 8 ALL, 2 hem. Predictions: 6 of 8 ALL right, 1 of 2 hem right.
IMB_TRUE = [1, 1, 1, 1, 1, 1, 1, 1, 0, 0]
IMB_PRED = [1, 1, 1, 1, 1, 1, 0, 0, 1, 0]


def _patients_data(n_patients: int, cells: int = 20) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Cells of ``n_patients`` patients cycling through 10 fixed per-patient behaviours."""
    correct = [20, 18, 15, 19, 12, 20, 17, 16, 14, 19]  # correct cells of each behaviour
    y_true, y_pred, ids = [], [], []
    for j in range(n_patients):
        label = j % 2
        right = correct[j % 10]
        y_true += [label] * cells
        y_pred += [label] * right + [1 - label] * (cells - right)
        ids += [f"P{j:03d}"] * cells
    return np.array(y_true), np.array(y_pred), np.array(ids)


def _assert_plain_json(value: object) -> None:
    """Fail unless ``value`` is built only from float, int, list and None (no numpy types)."""
    if isinstance(value, list):
        for item in value:
            _assert_plain_json(item)
    else:
        assert value is None or type(value) in (float, int), (value, type(value))


# --------------------------------------------------------------------------- confusion


def test_confusion_layout_matches_sklearn():
    # tn=1 (idx 9), fp=1 (idx 8), fn=2 (idx 6, 7), tp=6
    cm = confusion(IMB_TRUE, IMB_PRED)
    assert cm.tolist() == [[1, 1], [2, 6]]
    assert cm.dtype.kind == "i"
    np.testing.assert_array_equal(cm, skm.confusion_matrix(IMB_TRUE, IMB_PRED, labels=[0, 1]))


def test_confusion_accepts_bools():
    assert confusion([True, False], [True, True]).tolist() == [[0, 1], [0, 1]]


# --------------------------------------------------------------------------- weighted F1


def test_weighted_f1_imbalanced_hand_computed():
    # tp=6 fn=2 fp=1 tn=1
    # F1(ALL) = 2*6 / (2*6 + 1 + 2) = 12/15 = 0.8
    # F1(hem) = 2*1 / (2*1 + 2 + 1) = 2/5 = 0.4
    # weighted = (8*0.8 + 2*0.4) / 10 = 7.2/10 = 0.72
    assert weighted_f1(IMB_TRUE, IMB_PRED) == pytest.approx(0.72)


def test_weighted_f1_class_never_predicted_hand_computed():
    # All predicted ALL: tp=3 fp=2 fn=0 tn=0
    # F1(ALL) = 6 / (6 + 2 + 0) = 0.75; F1(hem) = 0 / (0 + 0 + 2) = 0
    # weighted = (3*0.75 + 2*0) / 5 = 0.45
    assert weighted_f1([1, 1, 1, 0, 0], [1, 1, 1, 1, 1]) == pytest.approx(0.45)
    # All predicted hem: tp=0 fn=2 tn=3 fp=0
    # F1(ALL) = 0 / (0 + 0 + 2) = 0; F1(hem) = 6 / (6 + 0 + 2) = 0.75
    # weighted = (2*0 + 3*0.75) / 5 = 0.45
    assert weighted_f1([1, 1, 0, 0, 0], [0, 0, 0, 0, 0]) == pytest.approx(0.45)


def test_weighted_f1_single_class_zero_division_like_sklearn():
    # hem has no true and no predicted cells: F1(hem) = 0 with weight 0, so the score is F1(ALL).
    assert weighted_f1([1, 1, 1], [1, 1, 1]) == 1.0
    # Only hem is true, only ALL predicted: both F1 are 0.
    assert weighted_f1([0, 0], [1, 1]) == 0.0
    for y_true, y_pred in [([1, 1, 1], [1, 1, 1]), ([0, 0], [1, 1]), ([1, 1, 0], [0, 0, 0])]:
        expected = skm.f1_score(y_true, y_pred, average="weighted", zero_division=0)
        assert weighted_f1(y_true, y_pred) == pytest.approx(expected)


def test_weighted_f1_matches_sklearn_on_random_data():
    rng = np.random.default_rng(1)
    for trial in range(50):
        n = int(rng.integers(1, 300))
        y_true = (rng.random(n) < rng.random()).astype(int)
        y_pred = (rng.random(n) < rng.random()).astype(int)
        expected = skm.f1_score(y_true, y_pred, average="weighted", zero_division=0)
        assert weighted_f1(y_true, y_pred) == pytest.approx(expected, abs=1e-12), trial


# --------------------------------------------------------------------------- ROC


def test_roc_auc_hand_computed_with_tie():
    # Pairs (pos, neg): (0.4 vs 0.1) = 1, (0.4 vs 0.4) = 1/2 (tie), (0.8 vs 0.1) = 1,
    # (0.8 vs 0.4) = 1 -> AUC = 3.5 / (2*2) = 0.875.
    # Average ranks: 0.1->1, 0.4->2.5, 0.4->2.5, 0.8->4; U = (2.5 + 4) - 2*3/2 = 3.5.
    assert roc_auc([0, 0, 1, 1], [0.1, 0.4, 0.4, 0.8]) == pytest.approx(0.875)


def test_roc_auc_perfect_and_reversed():
    assert roc_auc([0, 0, 1, 1], [0.1, 0.2, 0.3, 0.9]) == 1.0
    assert roc_auc([0, 0, 1, 1], [0.9, 0.3, 0.2, 0.1]) == 0.0
    assert roc_auc([0, 1, 0, 1], [0.5, 0.5, 0.5, 0.5]) == 0.5


def test_roc_auc_one_class_is_nan():
    assert math.isnan(roc_auc([1, 1, 1], [0.2, 0.5, 0.9]))
    assert math.isnan(roc_auc([0, 0], [0.2, 0.5]))


def test_roc_auc_matches_sklearn_on_random_data_with_ties():
    rng = np.random.default_rng(2)
    for trial in range(50):
        n = int(rng.integers(2, 400))
        y_true = (rng.random(n) < 0.3).astype(int)
        y_true[:2] = [0, 1]
        # Rounded scores give many ties, correlated with the label.
        y_score = np.round(np.clip(0.3 * y_true + rng.random(n) * 0.7, 0, 1), 1)
        expected = skm.roc_auc_score(y_true, y_score)
        assert roc_auc(y_true, y_score) == pytest.approx(expected, abs=1e-12), trial


def test_roc_curve_matches_sklearn_with_ties():
    rng = np.random.default_rng(3)
    for trial in range(30):
        n = int(rng.integers(2, 200))
        y_true = (rng.random(n) < 0.5).astype(int)
        y_true[:2] = [0, 1]
        y_score = np.round(rng.random(n) + 0.2 * y_true, int(rng.integers(1, 4)))
        for drop in (True, False):
            fpr, tpr, thr = roc_curve(y_true, y_score, drop_intermediate=drop)
            e_fpr, e_tpr, e_thr = skm.roc_curve(y_true, y_score, drop_intermediate=drop)
            np.testing.assert_allclose(fpr, e_fpr, err_msg=f"trial {trial}")
            np.testing.assert_allclose(tpr, e_tpr, err_msg=f"trial {trial}")
            np.testing.assert_allclose(thr, e_thr, err_msg=f"trial {trial}")


def test_roc_curve_starts_at_origin_and_ends_at_one():
    fpr, tpr, thr = roc_curve([0, 0, 1, 1], [0.1, 0.4, 0.4, 0.8])
    assert (fpr[0], tpr[0]) == (0.0, 0.0)
    assert (fpr[-1], tpr[-1]) == (1.0, 1.0)
    assert thr[0] == np.inf
    # Trapezoid area of the curve equals the rank AUC.
    assert np.trapezoid(tpr, fpr) == pytest.approx(0.875)


def test_roc_curve_one_class_gives_nan_axis():
    fpr, tpr, _ = roc_curve([1, 1, 1], [0.1, 0.5, 0.9])
    assert np.isnan(fpr).all()
    assert tpr[-1] == 1.0


# --------------------------------------------------------------------------- bootstrap


def _generic_ci(y_true, values, ids, metric, n_boot=1000, seed=0) -> list[float]:
    """The patient bootstrap spelled out: pool the drawn patients' cells, call ``metric``."""
    _, patient = np.unique(ids, return_inverse=True)
    n = int(patient.max()) + 1
    groups = [np.flatnonzero(patient == j) for j in range(n)]
    stats = []
    for row in np.random.default_rng(seed).integers(0, n, (n_boot, n)):
        idx = np.concatenate([groups[j] for j in row])
        stats.append(metric(y_true[idx], values[idx]))
    stats = np.asarray(stats, dtype=float)
    return np.quantile(stats[~np.isnan(stats)], [0.025, 0.975]).tolist()


def _f1_ci(y_true, y_pred, ids, **kw) -> list[float]:
    """binary_metrics' weighted F1 CI for hard predictions (as probabilities 0 and 1)."""
    return binary_metrics(y_true, y_pred.astype(float), ids, **kw)["weighted_f1_ci95"]


def test_bootstrap_ci_contains_point_estimate():
    y_true, y_pred, ids = _patients_data(30)
    point = weighted_f1(y_true, y_pred)
    lo, hi = _f1_ci(y_true, y_pred, ids, n_boot=500, seed=0)
    assert 0.0 <= lo < point < hi <= 1.0


def test_bootstrap_ci_narrows_with_more_patients():
    # Same ten per-patient behaviours, once (10 patients) vs ten times over (100 patients):
    # the point estimate is identical, the interval should shrink by about sqrt(10).
    few = _patients_data(10)
    many = _patients_data(100)
    assert weighted_f1(*few[:2]) == pytest.approx(weighted_f1(*many[:2]))
    lo10, hi10 = _f1_ci(*few, seed=0)
    lo100, hi100 = _f1_ci(*many, seed=0)
    assert lo10 <= weighted_f1(*few[:2]) <= hi10
    assert lo100 <= weighted_f1(*many[:2]) <= hi100
    assert hi100 - lo100 < 0.6 * (hi10 - lo10)


def test_bootstrap_ci_deterministic_for_seed():
    data = _patients_data(20)
    assert _f1_ci(*data, seed=7) == _f1_ci(*data, seed=7)
    assert _f1_ci(*data, seed=7) != _f1_ci(*data, seed=8)


def test_bootstrap_ci_equals_pooling_the_drawn_cells():
    # The counts path (one matrix product) against the generic loop over replicates.
    data = _patients_data(15)
    fast = _f1_ci(*data, n_boot=200, seed=3)
    assert fast == pytest.approx(_generic_ci(*data, weighted_f1, n_boot=200, seed=3), abs=1e-12)


def test_bootstrap_ci_resamples_patients_not_cells():
    # Two patients, one all right and one all wrong: every replicate is 0, 1/2 or 1, so the
    # interval spans patients' outcomes, which a cell bootstrap (n=200) would never reach.
    y_true = np.array([1] * 100 + [0] * 100)
    ids = np.array(["A"] * 100 + ["B"] * 100)
    m = binary_metrics(y_true, np.ones(200), ids, ci_keys=("accuracy",))
    assert m["accuracy_ci95"] == [0.0, 1.0]


# --------------------------------------------------------------------------- per patient


def test_per_patient_accuracy_rows_sorted_by_id():
    y_true = [1, 1, 1, 0, 0, 1, 1]
    y_pred = [1, 0, 1, 0, 1, 1, 1]
    ids = ["b", "b", "b", "a", "a", "c", "c"]
    rows = per_patient_accuracy(y_true, y_pred, ids)
    # a: 1 of 2 right; b: 2 of 3 right; c: 2 of 2 right
    assert rows == [
        {"patient_id": "a", "label": 0, "n": 2, "accuracy": 0.5},
        {"patient_id": "b", "label": 1, "n": 3, "accuracy": pytest.approx(2 / 3)},
        {"patient_id": "c", "label": 1, "n": 2, "accuracy": 1.0},
    ]
    assert type(rows[0]["patient_id"]) is str
    json.dumps(rows)


def test_per_patient_accuracy_majority_label():
    # Mixed patient: 2 of 3 cells hem -> label 0; tie goes to 1.
    rows = per_patient_accuracy([0, 0, 1, 0, 1], [0, 0, 0, 0, 0], ["x", "x", "x", "y", "y"])
    assert [r["label"] for r in rows] == [0, 1]


# --------------------------------------------------------------------------- binary_metrics


def test_binary_metrics_imbalanced_hand_computed():
    # Probabilities thresholded at 0.5 give IMB_PRED: tp=6 fn=2 fp=1 tn=1.
    y_prob = [0.9, 0.8, 0.7, 0.6, 0.55, 0.5, 0.4, 0.1, 0.7, 0.2]
    m = binary_metrics(IMB_TRUE, y_prob)
    assert m["confusion_matrix"] == [[1, 1], [2, 6]]
    assert m["weighted_f1"] == pytest.approx(0.72)  # see the weighted F1 test
    assert m["accuracy"] == pytest.approx(0.7)  # (6 + 1) / 10
    assert m["sensitivity"] == pytest.approx(0.75)  # 6 / (6 + 2)
    assert m["specificity"] == pytest.approx(0.5)  # 1 / (1 + 1)
    assert m["balanced_accuracy"] == pytest.approx(0.625)  # (0.75 + 0.5) / 2
    assert m["precision"] == pytest.approx(6 / 7)  # 6 / (6 + 1)
    # AUC over the 8*2 (ALL, hem) pairs: vs hem 0.2, seven ALL scores win (0.1 loses); vs hem
    # 0.7, 0.9 and 0.8 win, 0.7 ties (1/2), five lose -> (7 + 2 + 0.5) / 16 = 0.59375
    assert m["roc_auc"] == pytest.approx(0.59375)
    assert m["n"] == 10
    assert m["n_patients"] is None
    assert m["weighted_f1_ci95"] is None


def test_binary_metrics_matches_sklearn():
    rng = np.random.default_rng(4)
    y_true = (rng.random(500) < 0.7).astype(int)
    y_prob = np.clip(0.35 * y_true + 0.65 * rng.random(500), 0, 1)
    y_pred = (y_prob >= 0.4).astype(int)
    m = binary_metrics(y_true, y_prob, threshold=0.4)
    assert m["weighted_f1"] == pytest.approx(skm.f1_score(y_true, y_pred, average="weighted"))
    assert m["accuracy"] == pytest.approx(skm.accuracy_score(y_true, y_pred))
    assert m["balanced_accuracy"] == pytest.approx(skm.balanced_accuracy_score(y_true, y_pred))
    assert m["sensitivity"] == pytest.approx(skm.recall_score(y_true, y_pred))
    assert m["specificity"] == pytest.approx(skm.recall_score(y_true, y_pred, pos_label=0))
    assert m["precision"] == pytest.approx(skm.precision_score(y_true, y_pred))
    assert m["roc_auc"] == pytest.approx(skm.roc_auc_score(y_true, y_prob))


def test_binary_metrics_exact_keys_and_plain_json():
    y_true, y_pred, ids = _patients_data(12)
    y_prob = np.where(y_pred == 1, 0.8, 0.3)
    m = binary_metrics(y_true, y_prob, ids, n_boot=200)
    assert set(m) == KEYS
    for value in m.values():
        _assert_plain_json(value)
    json.dumps(m, allow_nan=False)
    lo, hi = m["weighted_f1_ci95"]
    assert lo <= m["weighted_f1"] <= hi
    assert m["n_patients"] == 12
    assert m["n"] == 240


def test_binary_metrics_undefined_values_are_none():
    # Only ALL cells, none predicted ALL: specificity, balanced accuracy, precision and AUC
    # are undefined; sensitivity is 0/3 = 0.
    m = binary_metrics([1, 1, 1], [0.1, 0.2, 0.3], ["p", "p", "p"])
    assert set(m) == KEYS
    assert m["sensitivity"] == 0.0
    for key in ("specificity", "balanced_accuracy", "precision", "roc_auc"):
        assert m[key] is None, key
    assert m["weighted_f1_ci95"] is None  # a single patient: no bootstrap
    assert m["n_patients"] == 1
    json.dumps(m, allow_nan=False)
    # Only hem cells: sensitivity undefined.
    assert binary_metrics([0, 0], [0.1, 0.9])["sensitivity"] is None


def test_binary_metrics_ci_deterministic_and_skippable():
    data = _patients_data(10)
    y_prob = np.where(data[1] == 1, 0.9, 0.1)
    first = binary_metrics(data[0], y_prob, data[2], n_boot=100, seed=5)
    second = binary_metrics(data[0], y_prob, data[2], n_boot=100, seed=5)
    assert first == second
    assert binary_metrics(data[0], y_prob, data[2], n_boot=0)["weighted_f1_ci95"] is None


def test_binary_metrics_threshold_is_inclusive():
    # 0.5 >= 0.5 -> predicted ALL
    assert binary_metrics([1, 0], [0.5, 0.49])["confusion_matrix"] == [[1, 0], [0, 1]]


def test_binary_metrics_threshold_key_and_effect():
    # At 0.3 the ALL cell at 0.35 and the hem cell at 0.4 turn ALL.
    y_true, y_prob = [0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]
    at_half = binary_metrics(y_true, y_prob)
    at_03 = binary_metrics(y_true, y_prob, threshold=0.3)
    assert at_half["threshold"] == 0.5 and at_03["threshold"] == 0.3
    assert type(at_03["threshold"]) is float
    assert at_half["confusion_matrix"] == [[2, 0], [1, 1]]  # ALL = {.8}
    assert at_03["confusion_matrix"] == [[1, 1], [0, 2]]  # ALL = {.35, .4, .8}
    assert at_03["sensitivity"] == 1.0 and at_03["specificity"] == 0.5
    assert at_03["roc_auc"] == at_half["roc_auc"] == 0.75  # the ranking does not move


def test_binary_metrics_ci_keys_match_generic_bootstrap():
    # Every CI comes from the same replicates as the generic bootstrap with the same seed,
    # which pools the drawn patients' cells and calls the metric on them.
    rng = np.random.default_rng(6)
    y_true = (rng.random(300) < 0.6).astype(int)
    y_prob = np.round(np.clip(0.3 * y_true + 0.7 * rng.random(300), 0, 1), 2)  # with ties
    ids = rng.integers(0, 12, 300).astype(str)
    m = binary_metrics(y_true, y_prob, ids, threshold=0.45, n_boot=200, seed=3, ci_keys=CI_KEYS)
    assert set(m) == KEYS | {f"{k}_ci95" for k in CI_KEYS}
    y_pred = (y_prob >= 0.45).astype(int)
    generic = {
        "weighted_f1": lambda t, p: weighted_f1(t, p),
        "sensitivity": lambda t, p: skm.recall_score(t, p),
        "specificity": lambda t, p: skm.recall_score(t, p, pos_label=0),
        "precision": lambda t, p: skm.precision_score(t, p, zero_division=np.nan),
        "accuracy": lambda t, p: skm.accuracy_score(t, p),
        "balanced_accuracy": lambda t, p: skm.balanced_accuracy_score(t, p),
    }
    for key, metric in generic.items():
        expected = _generic_ci(y_true, y_pred, ids, metric, n_boot=200, seed=3)
        assert m[f"{key}_ci95"] == pytest.approx(expected, abs=1e-12), key
    # AUC needs the probabilities.
    expected = _generic_ci(y_true, y_prob, ids, skm.roc_auc_score, n_boot=200, seed=3)
    assert m["roc_auc_ci95"] == pytest.approx(expected, abs=1e-12)


def test_binary_metrics_ci_keys_default_unchanged_and_empty():
    data = _patients_data(10)
    y_prob = np.where(data[1] == 1, 0.9, 0.1)
    m = binary_metrics(data[0], y_prob, data[2], n_boot=100, ci_keys=())
    assert set(m) == KEYS and m["weighted_f1_ci95"] is None


# --------------------------------------------------------------------------- thresholds

# Four cells; candidates 0, 0.225, 0.375, 0.5, 0.6, 1 (midpoints of 0.1, 0.35, 0.4, 0.8).
TIE_TRUE = [0, 0, 1, 1]
TIE_PROB = [0.1, 0.4, 0.35, 0.8]


def test_threshold_curve_hand_computed():
    thresholds, curve = threshold_curve(TIE_TRUE, TIE_PROB)
    np.testing.assert_allclose(thresholds, [0.0, 0.225, 0.375, 0.5, 0.6, 1.0])
    # 0: all ALL, tp=2 fp=2 -> F1(ALL) = 4/6, F1(hem) = 0 -> wF1 = 1/3
    # 0.225: ALL = {.35, .4, .8}, tp=2 fp=1 tn=1 -> F1(ALL) = 4/5, F1(hem) = 2/3 -> 11/15
    # 0.375: ALL = {.4, .8}, tp=fp=fn=tn=1 -> both F1 1/2 -> 1/2
    # 0.5 and 0.6: ALL = {.8}, tp=1 fn=1 tn=2 -> F1(ALL) = 2/3, F1(hem) = 4/5 -> 11/15
    # 1: none ALL -> F1(ALL) = 0, F1(hem) = 4/6 -> 1/3
    np.testing.assert_allclose(curve, [1 / 3, 11 / 15, 1 / 2, 11 / 15, 11 / 15, 1 / 3])


def test_threshold_curve_given_thresholds_keep_their_order():
    thresholds, curve = threshold_curve(TIE_TRUE, TIE_PROB, [0.6, 0.36, 0.35])
    np.testing.assert_array_equal(thresholds, [0.6, 0.36, 0.35])
    # 0.36 -> ALL = {.4, .8} (1/2); 0.35 is inclusive -> ALL = {.35, .4, .8} (11/15)
    np.testing.assert_allclose(curve, [11 / 15, 1 / 2, 11 / 15])


def test_threshold_curve_matches_sklearn_at_every_candidate():
    rng = np.random.default_rng(7)
    for trial in range(8):
        n = int(rng.integers(2, 150))
        y_true = (rng.random(n) < rng.random()).astype(int)
        y_prob = np.round(np.clip(0.3 * y_true + 0.7 * rng.random(n), 0, 1), 2)
        thresholds, curve = threshold_curve(y_true, y_prob)
        expected = [
            skm.f1_score(y_true, y_prob >= t, average="weighted", zero_division=0)
            for t in thresholds
        ]
        np.testing.assert_allclose(curve, expected, atol=1e-12, err_msg=f"trial {trial}")


def test_best_threshold_tie_keeps_nearest_half():
    # 0.225, 0.5 and 0.6 all give 11/15 (see the curve test): 0.5 is nearest 0.5.
    assert best_threshold(TIE_TRUE, TIE_PROB) == 0.5


def test_best_threshold_tie_away_from_half():
    # Candidates 0, .15, .45, .5, .8, 1. At .15: ALL = {.2, .7, .9}, tp=2 fp=1 tn=1 -> 11/15;
    # at .45 and .5: tp=fp=fn=tn=1 -> 1/2; at .8: ALL = {.9}, tp=1 fn=1 tn=2 -> 11/15.
    # .15 and .8 tie; .8 is nearer 0.5 (0.3 vs 0.35).
    assert best_threshold([0, 1, 0, 1], [0.1, 0.2, 0.7, 0.9]) == pytest.approx(0.8)


def test_best_threshold_imbalanced_moves_below_half():
    # 8 ALL, 2 hem, separable between 0.3 and 0.41 but three ALL cells score below 0.5.
    y_true = [1] * 8 + [0] * 2
    y_prob = [0.9, 0.8, 0.7, 0.6, 0.55, 0.45, 0.42, 0.41, 0.3, 0.2]
    # At 0.5: tp=5 fn=3 fp=0 tn=2 -> F1(ALL) = 10/13, F1(hem) = 4/7
    # wF1 = (8 * 10/13 + 2 * 4/7) / 10
    assert binary_metrics(y_true, y_prob)["weighted_f1"] == pytest.approx(
        (8 * 10 / 13 + 2 * 4 / 7) / 10
    )
    t = best_threshold(y_true, y_prob)
    assert t == pytest.approx(0.355)  # midpoint of 0.3 and 0.41: every cell right
    assert binary_metrics(y_true, y_prob, threshold=t)["weighted_f1"] == 1.0


def test_best_threshold_beats_every_grid_threshold():
    rng = np.random.default_rng(8)
    grid = np.linspace(0.0, 1.0, 101)
    for trial in range(8):
        n = int(rng.integers(4, 200))
        y_true = (rng.random(n) < 0.2 + 0.6 * rng.random()).astype(int)
        y_true[:2] = [0, 1]
        y_prob = np.clip(0.25 * y_true + 0.75 * rng.random(n), 0, 1)
        t = best_threshold(y_true, y_prob)
        best = weighted_f1(y_true, (y_prob >= t).astype(int))
        grid_best = max(
            skm.f1_score(y_true, y_prob >= g, average="weighted", zero_division=0) for g in grid
        )
        assert best >= grid_best - 1e-12, trial
        assert 0.0 <= t <= 1.0


def test_best_threshold_one_class_raises():
    with pytest.raises(ValueError, match=r"no threshold can be chosen from one class.*ALL"):
        best_threshold([1, 1, 1], [0.2, 0.6, 0.9])
    with pytest.raises(ValueError, match=r"one class: y_true holds only normal \(label 0\)"):
        best_threshold([0, 0], [0.2, 0.6])


def test_validation_threshold_curve_thresholds_out_of_range():
    with pytest.raises(ValueError, match=r"thresholds must be probabilities in \[0, 1\]"):
        threshold_curve([0, 1], [0.2, 0.8], [0.5, 1.5])


def test_validation_binary_metrics_unknown_ci_key():
    with pytest.raises(ValueError, match=r"ci_keys: unknown metric\(s\) \['f1'\]; choose from"):
        binary_metrics([0, 1], [0.2, 0.8], ["a", "b"], ci_keys=["f1"])


# --------------------------------------------------------------------------- validation


def test_validation_unequal_lengths():
    with pytest.raises(ValueError, match=r"equal lengths.*y_true=3.*y_pred=2"):
        weighted_f1([0, 1, 1], [0, 1])


def test_validation_patient_ids_length():
    with pytest.raises(ValueError, match=r"equal lengths.*patient_ids=1"):
        binary_metrics([0, 1], [0.2, 0.8], ["a"])


def test_validation_labels_not_binary():
    with pytest.raises(ValueError, match=r"y_true must hold only 0 \(hem\) and 1 \(ALL\), got 2"):
        weighted_f1([0, 1, 2], [0, 1, 1])


def test_validation_predictions_not_binary():
    with pytest.raises(ValueError, match=r"y_pred must hold only 0.*got 0.7 at index 1"):
        confusion([0, 1], [0, 0.7])


def test_validation_labels_not_numeric():
    with pytest.raises(ValueError, match="y_true must hold 0/1 labels, got dtype"):
        confusion(["ALL", "hem"], [0, 1])


def test_validation_labels_not_1d():
    with pytest.raises(ValueError, match=r"y_true must be 1-D, got shape \(2, 2\)"):
        confusion([[0, 1], [1, 0]], [0, 1, 1, 0])


def test_validation_labels_empty():
    with pytest.raises(ValueError, match="y_true is empty"):
        weighted_f1([], [])


def test_validation_scores_not_finite():
    with pytest.raises(ValueError, match="y_prob must be finite, got nan at index 1"):
        binary_metrics([0, 1], [0.2, float("nan")])


def test_validation_scores_infinite():
    with pytest.raises(ValueError, match="y_score must be finite, got inf"):
        roc_auc([0, 1], [0.2, float("inf")])


def test_validation_scores_not_numeric():
    with pytest.raises(ValueError, match="y_score must be numeric"):
        roc_auc([0, 1], ["low", "high"])


def test_validation_scores_not_1d():
    with pytest.raises(ValueError, match="y_score must be 1-D"):
        roc_curve([0, 1], [[0.2, 0.8]])


def test_validation_probabilities_out_of_range():
    with pytest.raises(ValueError, match=r"y_prob must be probabilities in \[0, 1\], got 1.5"):
        binary_metrics([0, 1], [0.2, 1.5])


def test_validation_threshold_out_of_range():
    with pytest.raises(ValueError, match="threshold must be in"):
        binary_metrics([0, 1], [0.2, 0.8], threshold=1.2)


def test_validation_binary_metrics_negative_n_boot():
    with pytest.raises(ValueError, match="n_boot must be >= 0"):
        binary_metrics([0, 1], [0.2, 0.8], ["a", "b"], n_boot=-1)


def test_validation_patient_ids_not_1d():
    with pytest.raises(ValueError, match="patient_ids must be 1-D"):
        per_patient_accuracy([0, 1], [0, 1], [["a", "b"]])


# --------------------------------------------------------------------------- imports


def test_metrics_import_is_light_and_use_needs_only_sklearn():
    # Loaded by file path so that whatever leukemia/__init__.py imports does not count.
    # Importing loads no scikit-learn (about 1 s); computing loads it and nothing heavier.
    code = (
        "import importlib.util, sys\n"
        f"spec = importlib.util.spec_from_file_location('metrics', {str(METRICS_PY)!r})\n"
        "module = importlib.util.module_from_spec(spec)\n"
        "spec.loader.exec_module(module)\n"
        "assert 'sklearn' not in sys.modules\n"
        "module.binary_metrics([0, 1, 1], [0.2, 0.7, 0.9], ['a', 'b', 'b'], n_boot=10)\n"
        "heavy = {'tensorflow', 'keras', 'ray', 'optuna'}\n"
        "loaded = sorted(heavy & set(sys.modules))\n"
        "assert not loaded, loaded\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
