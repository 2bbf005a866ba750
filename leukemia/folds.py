"""Patient-disjoint folds: which cells train and which are held out.

The official C-NMC folds serve as cross-validation folds when there are at least two of
comparable size (:func:`official_folds_usable`); otherwise :func:`cv_folds` makes patient
groups. :func:`load_split` reads a store's training split as ``(train, validation)`` for a
``TrainConfig.val_fold``, and :func:`check_disjoint` refuses a split that puts one patient on
both sides (:class:`PatientLeakError`).

    from leukemia.folds import load_split
    train, val = load_split("STORE", TrainConfig(val_fold=0))
"""

from __future__ import annotations

import logging

import numpy as np

from leukemia.config import TrainConfig
from leukemia.store import Selection, Store

log = logging.getLogger(__name__)

CV_FOLDS = 3  # patient groups made when the official folds cannot serve
MIN_FOLD_SHARE = 0.25  # official folds serve if the smallest holds >= this share of the largest


class PatientLeakError(ValueError):
    """A patient's cells are on both sides of a train/validation split."""


def check_disjoint(train: Selection, val: Selection) -> None:
    """Raise :class:`PatientLeakError` if a patient is in both selections."""
    both = sorted(set(train.patient_ids.tolist()) & set(val.patient_ids.tolist()))
    if both:
        raise PatientLeakError(f"{len(both)} patient(s) in both the training and the validation "
                               f"selection: {both[:10]}; split by patient (fold), not by image")


def official_folds_usable(sizes: list[int]) -> bool:
    """Whether official folds of these sizes can serve as cross-validation folds: at least two,
    none tiny next to the largest (a held-out fold must not leave a model almost no data)."""
    return len(sizes) >= 2 and min(sizes) >= MIN_FOLD_SHARE * max(sizes)


def cv_folds(patient_ids: np.ndarray, labels: np.ndarray, folds: np.ndarray,
             k: int = CV_FOLDS) -> np.ndarray:
    """Cross-validation folds: the official ones, or ``k`` patient groups when there are fewer
    than two (``../shared/data/cnmc-dev`` holds fold_1 only) or they are very unequal (that
    set plus the 240-image sample: 80, 3,576 and 43 cells).

    The groups never split a patient; normal patients are dealt out first, one per group in
    turn (they are few: recognising new people's normal cells is the hard part), then ALL
    patients, largest first, each to the group with the fewest cells. Deterministic.
    """
    official, counts = np.unique(folds, return_counts=True)
    if official_folds_usable(counts.tolist()):
        return folds
    patients = sorted(set(patient_ids.tolist()))
    cells = {p: int((patient_ids == p).sum()) for p in patients}
    normal = {p: bool((labels[patient_ids == p] == 0).mean() > 0.5) for p in patients}
    group: dict[str, int] = {}
    size = [0] * k
    for i, p in enumerate(sorted((p for p in patients if normal[p]),
                                 key=lambda p: (-cells[p], p))):
        group[p] = i % k
        size[i % k] += cells[p]
    for p in sorted((p for p in patients if not normal[p]), key=lambda p: (-cells[p], p)):
        g = min(range(k), key=lambda j: (size[j], j))
        group[p] = g
        size[g] += cells[p]
    log.info("one official training fold: cross-validating over %d patient groups %s", k,
             {g: sorted(p for p in patients if group[p] == g) for g in range(k)})
    return np.asarray([group[p] for p in patient_ids], dtype=np.int8)


def load_split(store: Store | str, config: TrainConfig) -> tuple[Selection, Selection | None]:
    """The training selection (all folds but ``val_fold``) and the validation fold.

    Folds are the official ones, or patient groups (:func:`cv_folds`) when the store has only
    one training fold.
    """
    store = store if isinstance(store, Store) else Store(store)
    data = store.load("training")
    data.folds = cv_folds(data.patient_ids, data.labels, data.folds)
    if config.val_fold is None:
        return data, None
    held = data.folds == config.val_fold
    if not held.any():
        raise ValueError(f"TrainConfig.val_fold={config.val_fold}: the store has no such fold "
                         f"(folds {sorted(set(data.folds.tolist()))})")
    train, val = data.subset(~held), data.subset(held)
    check_disjoint(train, val)
    return train, val
