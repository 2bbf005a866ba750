"""Classification metrics for ALL (label 1, positive) vs normal (hem, label 0) cells, in numpy.

The C-NMC 2019 challenge ranks submissions by the support-weighted F1 of the two classes
(scikit-learn's ``f1_score(average="weighted")``); :func:`weighted_f1` computes it. Cells of one
patient are not independent, so confidence intervals resample patients, not cells
(:func:`patient_bootstrap_ci`). :func:`binary_metrics` gathers everything a trial or a report
needs into a JSON-serialisable dict, with ``None`` where a value is undefined (JSON has no NaN).

Only numpy is imported: trials and reports use these without pulling in scikit-learn or
TensorFlow; the tests cross-check the results against scikit-learn.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

__all__ = [
    "binary_metrics",
    "confusion",
    "patient_bootstrap_ci",
    "per_patient_accuracy",
    "roc_auc",
    "roc_curve",
    "weighted_f1",
]

Metric = Callable[[np.ndarray, np.ndarray], float]


# --------------------------------------------------------------------------- validation


def _labels(y: ArrayLike, name: str) -> np.ndarray:
    """Return ``y`` as a 1-D int64 array of 0/1, or raise ValueError naming ``name``."""
    arr = np.asarray(y)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {arr.shape}")
    if arr.size == 0:
        raise ValueError(f"{name} is empty; metrics need at least one sample")
    if arr.dtype == bool:
        return arr.astype(np.int64)
    if not np.issubdtype(arr.dtype, np.number):
        raise ValueError(f"{name} must hold 0/1 labels, got dtype {arr.dtype}: {arr[:5]!r}")
    bad = (arr != 0) & (arr != 1)
    if bad.any():
        raise ValueError(
            f"{name} must hold only 0 (hem) and 1 (ALL), got {arr[bad][0].item()!r} "
            f"at index {int(np.flatnonzero(bad)[0])}; threshold probabilities first"
        )
    return arr.astype(np.int64)


def _scores(y: ArrayLike, name: str) -> np.ndarray:
    """Return ``y`` as a 1-D float64 array of finite values, or raise ValueError."""
    try:
        arr = np.asarray(y, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{name} must be numeric: {exc}") from exc
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {arr.shape}")
    bad = ~np.isfinite(arr)
    if bad.any():
        raise ValueError(
            f"{name} must be finite, got {arr[bad][0].item()!r} "
            f"at index {int(np.flatnonzero(bad)[0])}"
        )
    return arr


def _patients(ids: ArrayLike, name: str = "patient_ids") -> np.ndarray:
    """Return ``ids`` as a 1-D array of strings."""
    arr = np.asarray(ids)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {arr.shape}")
    return arr.astype(str)


def _same_length(**arrays: np.ndarray) -> None:
    """Raise ValueError unless all arrays have the same length, naming each length."""
    lengths = {name: len(a) for name, a in arrays.items()}
    if len(set(lengths.values())) > 1:
        shown = ", ".join(f"{name}={n}" for name, n in lengths.items())
        raise ValueError(f"inputs must have equal lengths, got {shown}")


# --------------------------------------------------------------------------- point metrics


def _ratio(num: float, den: float) -> float:
    """``num / den``, or NaN when ``den`` is 0."""
    return num / den if den else float("nan")


def _weighted_f1_counts(tn: Any, fp: Any, fn: Any, tp: Any) -> Any:
    """Support-weighted F1 from confusion counts; works elementwise on arrays."""
    tn, fp, fn, tp = (np.asarray(c, dtype=np.float64) for c in (tn, fp, fn, tp))
    with np.errstate(divide="ignore", invalid="ignore"):
        # F1 = 2TP / (2TP + FP + FN); a class never true nor predicted scores 0 (sklearn).
        den1 = 2 * tp + fp + fn
        den0 = 2 * tn + fn + fp
        f1_pos = np.where(den1 > 0, 2 * tp / den1, 0.0)
        f1_neg = np.where(den0 > 0, 2 * tn / den0, 0.0)
    support_neg, support_pos = tn + fp, fn + tp
    return (support_neg * f1_neg + support_pos * f1_pos) / (support_neg + support_pos)


def confusion(y_true: ArrayLike, y_pred: ArrayLike) -> np.ndarray:
    """Binary confusion matrix in scikit-learn's layout.

    Args:
        y_true: True labels, 0 (hem) or 1 (ALL).
        y_pred: Predicted labels, 0 or 1.

    Returns:
        A 2x2 int64 array ``[[tn, fp], [fn, tp]]``: rows are true 0/1, columns predicted 0/1.

    Raises:
        ValueError: If the inputs are not 1-D 0/1 arrays of equal, non-zero length.
    """
    t = _labels(y_true, "y_true")
    p = _labels(y_pred, "y_pred")
    _same_length(y_true=t, y_pred=p)
    return np.bincount(2 * t + p, minlength=4).reshape(2, 2).astype(np.int64)


def weighted_f1(y_true: ArrayLike, y_pred: ArrayLike) -> float:
    """The C-NMC 2019 challenge metric: per-class F1 weighted by class support in ``y_true``.

    Equals ``sklearn.metrics.f1_score(y_true, y_pred, average="weighted")``, including its
    zero-division rule (a class that is neither true nor predicted has F1 0; its weight is 0).

    Args:
        y_true: True labels, 0 (hem) or 1 (ALL).
        y_pred: Predicted labels, 0 or 1.

    Returns:
        The weighted F1 in [0, 1].

    Raises:
        ValueError: If the inputs are not 1-D 0/1 arrays of equal, non-zero length.
    """
    (tn, fp), (fn, tp) = confusion(y_true, y_pred)
    return float(_weighted_f1_counts(tn, fp, fn, tp))


def _average_ranks(x: np.ndarray) -> np.ndarray:
    """1-based ranks of ``x`` with tied values sharing their average rank."""
    _, inverse, counts = np.unique(x, return_inverse=True, return_counts=True)
    ends = np.cumsum(counts)  # rank of the last member of each tie group
    return (ends - (counts - 1) / 2.0)[inverse]


def roc_auc(y_true: ArrayLike, y_score: ArrayLike) -> float:
    """Area under the ROC curve via the Mann-Whitney U statistic.

    Tied scores get their average rank, so a positive tied with a negative counts 1/2, as in
    ``sklearn.metrics.roc_auc_score``.

    Args:
        y_true: True labels, 0 (hem) or 1 (ALL).
        y_score: Scores where higher means more likely ALL (probabilities or logits).

    Returns:
        The AUC in [0, 1], or NaN if ``y_true`` holds only one class.

    Raises:
        ValueError: On non-0/1 labels, non-finite scores or unequal lengths.
    """
    t = _labels(y_true, "y_true")
    s = _scores(y_score, "y_score")
    _same_length(y_true=t, y_score=s)
    n_pos = int(t.sum())
    n_neg = t.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    rank_sum = float(_average_ranks(s)[t == 1].sum())
    u = rank_sum - n_pos * (n_pos + 1) / 2.0
    return u / (n_pos * n_neg)


def roc_curve(
    y_true: ArrayLike, y_score: ArrayLike, *, drop_intermediate: bool = True
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """ROC curve points, matching ``sklearn.metrics.roc_curve``, for plotting.

    Args:
        y_true: True labels, 0 (hem) or 1 (ALL).
        y_score: Scores where higher means more likely ALL.
        drop_intermediate: Drop collinear points that do not change the plotted curve.

    Returns:
        ``(fpr, tpr, thresholds)``: float arrays starting at ``(0, 0)`` with threshold ``inf``;
        a cell is predicted ALL when its score is ``>= threshold``. ``fpr`` (``tpr``) is all NaN
        when ``y_true`` has no negatives (positives).

    Raises:
        ValueError: On non-0/1 labels, non-finite scores or unequal lengths.
    """
    t = _labels(y_true, "y_true")
    s = _scores(y_score, "y_score")
    _same_length(y_true=t, y_score=s)
    order = np.argsort(s, kind="mergesort")[::-1]
    s, t = s[order], t[order]
    # Last index of each run of equal scores: one curve point per distinct threshold.
    last = np.r_[np.flatnonzero(np.diff(s)), s.size - 1]
    tps = np.cumsum(t)[last].astype(np.float64)
    fps = (last + 1) - tps
    thresholds = s[last]
    if drop_intermediate and fps.size > 2:
        corner = np.r_[True, np.logical_or(np.diff(fps, 2), np.diff(tps, 2)), True]
        tps, fps, thresholds = tps[corner], fps[corner], thresholds[corner]
    tps = np.r_[0.0, tps]
    fps = np.r_[0.0, fps]
    thresholds = np.r_[np.inf, thresholds]
    fpr = fps / fps[-1] if fps[-1] > 0 else np.full(fps.shape, np.nan)
    tpr = tps / tps[-1] if tps[-1] > 0 else np.full(tps.shape, np.nan)
    return fpr, tpr, thresholds


# --------------------------------------------------------------------------- patients


def patient_bootstrap_ci(
    y_true: ArrayLike,
    y_pred: ArrayLike,
    patient_ids: ArrayLike,
    metric: Metric = weighted_f1,
    *,
    n_boot: int = 1000,
    alpha: float = 0.05,
    seed: int = 0,
) -> tuple[float, float]:
    """Percentile confidence interval of ``metric`` by resampling patients with replacement.

    Each replicate draws as many patients as there are, with replacement, and pools all cells
    of the drawn patients (a patient drawn twice contributes its cells twice). Cells of one
    patient are correlated, so resampling cells would give intervals that are too narrow. For
    the default metric the replicates are computed from per-patient confusion counts in one
    matrix product; any other metric is called once per replicate on the pooled cells.

    Args:
        y_true: True labels, 0 (hem) or 1 (ALL).
        y_pred: Predicted labels, 0 or 1.
        patient_ids: Patient of each cell.
        metric: ``metric(y_true, y_pred) -> float``; replicates where it is NaN are dropped.
        n_boot: Number of bootstrap replicates.
        alpha: ``1 - alpha`` is the coverage; 0.05 gives a 95% interval.
        seed: Seed of the random generator; equal seeds give equal intervals.

    Returns:
        ``(lo, hi)``, the ``alpha/2`` and ``1 - alpha/2`` quantiles of the replicates
        (NaN, NaN if every replicate is NaN).

    Raises:
        ValueError: On invalid labels or lengths, fewer than 2 patients, ``n_boot < 1`` or
            ``alpha`` outside (0, 1).
    """
    t = _labels(y_true, "y_true")
    p = _labels(y_pred, "y_pred")
    ids = _patients(patient_ids)
    _same_length(y_true=t, y_pred=p, patient_ids=ids)
    if n_boot < 1:
        raise ValueError(f"n_boot must be >= 1, got {n_boot}")
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}; 0.05 gives a 95% interval")
    _, patient = np.unique(ids, return_inverse=True)
    n_patients = int(patient.max()) + 1
    if n_patients < 2:
        raise ValueError(
            f"patient bootstrap needs at least 2 patients, got {n_patients} ({str(ids[0])!r})"
        )

    rng = np.random.default_rng(seed)
    draws = rng.integers(0, n_patients, size=(n_boot, n_patients))
    if metric is weighted_f1:
        # times[b, j] = how often replicate b drew patient j; counts are additive over cells.
        flat = (np.arange(n_boot)[:, None] * n_patients + draws).ravel()
        times = np.bincount(flat, minlength=n_boot * n_patients).reshape(n_boot, n_patients)
        cells = 2 * t + p  # 0=tn, 1=fp, 2=fn, 3=tp
        per_patient = np.bincount(4 * patient + cells, minlength=4 * n_patients)
        per_patient = per_patient.reshape(n_patients, 4)
        tn, fp, fn, tp = (times @ per_patient).T
        stats = _weighted_f1_counts(tn, fp, fn, tp)
    else:
        members = np.argsort(patient, kind="stable")
        starts = np.r_[0, np.cumsum(np.bincount(patient, minlength=n_patients))]
        groups = [members[starts[j] : starts[j + 1]] for j in range(n_patients)]
        stats = np.empty(n_boot)
        for b in range(n_boot):
            idx = np.concatenate([groups[j] for j in draws[b]])
            stats[b] = metric(t[idx], p[idx])
    stats = stats[~np.isnan(stats)]
    if stats.size == 0:
        return float("nan"), float("nan")
    lo, hi = np.quantile(stats, [alpha / 2.0, 1.0 - alpha / 2.0])
    return float(lo), float(hi)


def per_patient_accuracy(
    y_true: ArrayLike, y_pred: ArrayLike, patient_ids: ArrayLike
) -> list[dict[str, Any]]:
    """Accuracy of each patient's cells, for reports.

    Args:
        y_true: True labels, 0 (hem) or 1 (ALL).
        y_pred: Predicted labels, 0 or 1.
        patient_ids: Patient of each cell.

    Returns:
        One row per patient, sorted by patient id (as strings): ``{"patient_id": str,
        "label": int, "n": int, "accuracy": float}``, where ``label`` is the patient's majority
        true label (a tie goes to 1; C-NMC patients are all-ALL or all-hem anyway).

    Raises:
        ValueError: On invalid labels or unequal lengths.
    """
    t = _labels(y_true, "y_true")
    p = _labels(y_pred, "y_pred")
    ids = _patients(patient_ids)
    _same_length(y_true=t, y_pred=p, patient_ids=ids)
    names, patient = np.unique(ids, return_inverse=True)
    n = np.bincount(patient)
    positives = np.bincount(patient, weights=t)
    correct = np.bincount(patient, weights=(t == p))
    return [
        {
            "patient_id": str(name),
            "label": int(2 * positives[j] >= n[j]),
            "n": int(n[j]),
            "accuracy": float(correct[j] / n[j]),
        }
        for j, name in enumerate(names)
    ]


# --------------------------------------------------------------------------- summary


def _json_float(x: float) -> float | None:
    """``float(x)``, or None when it is NaN or infinite."""
    x = float(x)
    return x if np.isfinite(x) else None


def binary_metrics(
    y_true: ArrayLike,
    y_prob: ArrayLike,
    patient_ids: ArrayLike | Sequence[str] | None = None,
    *,
    threshold: float = 0.5,
    n_boot: int = 1000,
    seed: int = 0,
) -> dict[str, Any]:
    """All metrics of one evaluation, as a JSON-serialisable dict.

    A cell is predicted ALL when its probability is ``>= threshold``.

    Args:
        y_true: True labels, 0 (hem) or 1 (ALL).
        y_prob: Predicted probability of ALL for each cell, in [0, 1].
        patient_ids: Patient of each cell; enables the bootstrap CI and ``n_patients``.
        threshold: Decision threshold in [0, 1].
        n_boot: Bootstrap replicates for ``weighted_f1_ci95``; 0 skips the bootstrap.
        seed: Seed of the bootstrap.

    Returns:
        A dict with exactly the keys ``weighted_f1``, ``weighted_f1_ci95`` (``[lo, hi]``, or
        None without patient ids, with fewer than 2 patients or with ``n_boot=0``),
        ``accuracy``, ``balanced_accuracy`` (mean of sensitivity and specificity),
        ``sensitivity`` (recall of ALL), ``specificity`` (recall of hem), ``precision`` (of ALL),
        ``roc_auc``, ``confusion_matrix`` (``[[tn, fp], [fn, tp]]``), ``n`` and ``n_patients``
        (None without ids). Values are plain Python floats, ints, lists or None; a value that is
        undefined for this data (e.g. sensitivity without positives) is None.

    Raises:
        ValueError: On invalid labels, non-finite or out-of-range probabilities, unequal
            lengths, a threshold outside [0, 1] or a negative ``n_boot``.
    """
    t = _labels(y_true, "y_true")
    prob = _scores(y_prob, "y_prob")
    _same_length(y_true=t, y_prob=prob)
    out_of_range = (prob < 0.0) | (prob > 1.0)
    if out_of_range.any():
        raise ValueError(
            f"y_prob must be probabilities in [0, 1], got {prob[out_of_range][0].item()!r} "
            f"at index {int(np.flatnonzero(out_of_range)[0])}; apply a sigmoid to logits first"
        )
    if not 0.0 <= threshold <= 1.0:
        raise ValueError(f"threshold must be in [0, 1], got {threshold}")
    if n_boot < 0:
        raise ValueError(f"n_boot must be >= 0 (0 skips the bootstrap), got {n_boot}")
    ids = None
    if patient_ids is not None:
        ids = _patients(patient_ids)
        _same_length(y_true=t, y_prob=prob, patient_ids=ids)

    pred = (prob >= threshold).astype(np.int64)
    cm = confusion(t, pred)
    tn, fp, fn, tp = (int(c) for c in cm.ravel())
    n = int(t.size)
    sensitivity = _ratio(tp, tp + fn)
    specificity = _ratio(tn, tn + fp)

    n_patients = None if ids is None else int(np.unique(ids).size)
    ci = None
    if ids is not None and n_patients is not None and n_patients >= 2 and n_boot > 0:
        lo, hi = patient_bootstrap_ci(t, pred, ids, n_boot=n_boot, seed=seed)
        if np.isfinite(lo) and np.isfinite(hi):
            ci = [lo, hi]

    return {
        "weighted_f1": float(_weighted_f1_counts(tn, fp, fn, tp)),
        "weighted_f1_ci95": ci,
        "accuracy": (tp + tn) / n,
        "balanced_accuracy": _json_float((sensitivity + specificity) / 2.0),
        "sensitivity": _json_float(sensitivity),
        "specificity": _json_float(specificity),
        "precision": _json_float(_ratio(tp, tp + fp)),
        "roc_auc": _json_float(roc_auc(t, prob)),
        "confusion_matrix": [[tn, fp], [fn, tp]],
        "n": n,
        "n_patients": n_patients,
    }
