"""Tests for leukemia.evaluate.transductive_scores: the validation scores of the variants that
use the whole batch (neighbour correction, BatchNorm re-estimated on the pooled cells, the
per-patient call), which metrics.json gives beside the per-cell scores.

    .venv/bin/python -m pytest -q tests/test_transductive.py
"""

from __future__ import annotations

import numpy as np
import pytest

from leukemia import metrics as M
from leukemia.adapt import MIN_CELLS
from leukemia.evaluate import neighbour_correction, patient_scores, transductive_scores
from leukemia.models import create_backbone
from leukemia.rules import Rule
from leukemia.store import Store
from leukemia.train import predict_proba


@pytest.fixture(scope="module")
def model_and_cells(real_store):
    import keras

    keras.backend.clear_session()
    keras.utils.set_random_seed(0)
    sel = Store(real_store).load("training")  # 200 real cells of many patients
    model = create_backbone("small_cnn", image_size=int(sel.images.shape[1]))
    p = predict_proba(model, sel.images)
    return model, sel, p, transductive_scores(model, sel, p, Rule("threshold", threshold=0.5))


def test_every_variant_is_scored_on_a_large_batch_and_the_model_is_left_as_it_was(
        model_and_cells):
    model, sel, p, got = model_and_cells
    assert "transductive" in got["note"] and f"{len(sel)} cells" in got["note"]
    assert got["neighbours"]["k"] == 7 and 0 <= got["neighbours"]["roc_auc"] <= 1
    assert got["adapted_bn"]["layers"] == 4  # small_cnn's BatchNorm layers
    assert got["adapted_bn"]["n"] == got["neighbours"]["n"] == len(sel)
    # the untrained net's scores move with the batch's statistics; restored afterwards
    assert got["adapted_bn"]["roc_auc"] != M.binary_metrics(sel.labels, p, sel.patient_ids)[
        "roc_auc"]
    np.testing.assert_allclose(predict_proba(model, sel.images), p, atol=1e-6)


def test_neighbour_scores_are_those_of_the_corrected_probabilities(model_and_cells):
    from leukemia.evaluate import model_features

    model, sel, p, scores = model_and_cells
    q = neighbour_correction(p, model_features(model, sel.images), 7)
    want = M.binary_metrics(sel.labels, q, sel.patient_ids, threshold=0.5)
    got = scores["neighbours"]
    for key in ("roc_auc", "weighted_f1", "sensitivity", "specificity"):
        assert got[key] == pytest.approx(want[key]), key


def test_per_patient_call_is_scored_against_each_patients_label():
    ids = np.array(["a"] * 4 + ["b"] * 2 + ["c"] * 3 + ["d"])
    labels = np.array([1] * 4 + [1] * 2 + [0] * 3 + [0])
    # a: 3 of 4 called ALL (ALL); b: 1 of 2 (ALL: a half is enough); c: 2 of 3 (ALL, wrong);
    # d: none (normal)
    called = np.array([1, 1, 1, 0, 1, 0, 1, 1, 0, 0])
    got = patient_scores(ids, labels, called)
    assert got == {"patients": 4, "all_patients": 2, "accuracy": 0.75, "sensitivity": 1.0,
                   "specificity": 0.5, "call_share": 0.5}


def test_the_per_patient_entry_follows_the_rule(model_and_cells):
    _, sel, p, got = model_and_cells
    want = patient_scores(sel.patient_ids, sel.labels, (p >= 0.5).astype(int))
    assert got["per_patient"] == want and want["patients"] == len(set(sel.patient_ids))


def test_small_batches_skip_what_they_cannot_support_and_say_why(model_and_cells):
    model, sel, p, _ = model_and_cells
    few = sel.subset(np.arange(len(sel)) < 40)
    got = transductive_scores(model, few, p[:40], Rule("threshold", threshold=0.5))
    assert got["adapted_bn"] == {"skipped": f"40 cells, fewer than {MIN_CELLS}"}
    assert got["neighbours"]["k"] == 7 and got["neighbours"]["n"] == 40
    tiny = sel.subset(np.arange(len(sel)) < 5)
    got = transductive_scores(model, tiny, p[:5], Rule("threshold", threshold=0.5))
    assert got["neighbours"] == {"skipped": "5 cells, fewer than K + 1 = 8"}
