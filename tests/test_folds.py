"""Cross-validation folds: official folds when they can serve, patient groups otherwise."""

from __future__ import annotations

import numpy as np

from leukemia.folds import cv_folds, official_folds_usable
from search.final import training_folds


def _cells(spec: dict[str, tuple[int, int]]) -> tuple[np.ndarray, np.ndarray]:
    """patient -> (label, cells) as per-cell patient ids and labels."""
    pids = np.asarray([p for p, (_, n) in spec.items() for _ in range(n)])
    labels = np.asarray([y for _, (y, n) in spec.items() for _ in range(n)], np.int8)
    return pids, labels


def test_official_folds_usable_needs_two_folds_of_comparable_size():
    assert official_folds_usable([3527, 3576, 3558])
    assert official_folds_usable([80, 77, 43])  # the 240-image sample: smallest 54% of largest
    assert not official_folds_usable([3576])
    assert not official_folds_usable([80, 3576, 43])  # dev set + sample


def test_cv_folds_keeps_comparable_official_folds():
    pids, labels = _cells({"1": (1, 5), "H1": (0, 5), "2": (1, 5), "H2": (0, 5)})
    folds = np.asarray([0] * 10 + [1] * 10, np.int8)

    assert cv_folds(pids, labels, folds).tolist() == folds.tolist()


def test_cv_folds_groups_patients_of_one_fold_one_normal_patient_each():
    spec = {"H10": (0, 300), "H14": (0, 250), "H22": (0, 200)}
    spec.update({str(i): (1, 100 + 10 * i) for i in range(11)})
    pids, labels = _cells(spec)

    groups = cv_folds(pids, labels, np.ones(len(pids), np.int8))

    assert sorted(set(groups.tolist())) == [0, 1, 2]
    for p in spec:  # a patient is never split
        assert len(set(groups[pids == p].tolist())) == 1
    normal_groups = [int(groups[pids == p][0]) for p in ("H10", "H14", "H22")]
    assert sorted(normal_groups) == [0, 1, 2]
    sizes = np.bincount(groups)
    assert sizes.max() - sizes.min() <= 300  # balanced to within about one patient


def test_cv_folds_regroups_very_unequal_official_folds():
    spec = {"H1": (0, 40), "1": (1, 40), "H2": (0, 400), "2": (1, 3000), "H3": (0, 20),
            "3": (1, 23)}
    pids, labels = _cells(spec)
    folds = np.asarray([0] * 80 + [1] * 3400 + [2] * 43, np.int8)

    groups = cv_folds(pids, labels, folds)

    assert groups.tolist() != folds.tolist()
    assert len(set(groups.tolist())) == 3
    assert cv_folds(pids, labels, folds).tolist() == groups.tolist()  # deterministic


def test_cv_folds_is_deterministic_whatever_the_cell_order():
    spec = {"H1": (0, 20), "H2": (0, 15), "H3": (0, 6), "1": (1, 30), "2": (1, 25), "3": (1, 12)}
    pids, labels = _cells(spec)
    first = cv_folds(pids, labels, np.zeros(len(pids), np.int8))
    order = np.random.default_rng(0).permutation(len(pids))
    again = cv_folds(pids[order], labels[order], np.zeros(len(pids), np.int8))

    assert dict(zip(pids, first)) == dict(zip(pids[order], again))


def test_training_folds_follow_the_same_rule():
    usable = {"0": {"n": 80}, "1": {"n": 77}, "2": {"n": 43}}
    unequal = {"0": {"n": 80}, "1": {"n": 3576}, "2": {"n": 43}}

    assert training_folds({"folds": usable}) == [0, 1, 2]
    assert training_folds({"folds": unequal}) == [0, 1, 2]  # 3 patient groups, numbered 0-2
    assert training_folds({"folds": {"1": {"n": 3499}}}) == [0, 1, 2]
