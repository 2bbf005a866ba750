"""Classification metrics for ALL (label 1, positive) vs normal (hem, label 0) cells.

The C-NMC 2019 challenge ranks submissions by the support-weighted F1 of the two classes
(scikit-learn's ``f1_score(average="weighted")``); :func:`weighted_f1` computes it.
:func:`binary_metrics` gathers everything a trial or a report needs into a JSON-serialisable
dict, with ``None`` where a value is undefined (JSON has no NaN), and 95% confidence intervals
that resample patients, not cells (cells of one patient are not independent).
:func:`best_threshold` chooses the decision threshold that maximises weighted F1 on held-out
predictions; :func:`threshold_curve` gives weighted F1 at every candidate threshold.

scikit-learn computes the F1, ROC AUC, ROC curve and confusion matrix; this module adds input
checks whose errors say what to fix, and its own vectorised code only where scikit-learn has
nothing: the patient bootstrap, per-patient accuracy and the threshold search. scikit-learn
is imported inside the functions that call it (``import sklearn.metrics`` takes about a second),
so importing this module costs only numpy.

Usage::

    from leukemia.metrics import best_threshold, binary_metrics
    t = best_threshold(y_oof, p_oof)                 # out-of-fold predictions
    m = binary_metrics(y_val, p_val, patients_val, threshold=t)
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from types import ModuleType
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

__all__ = [
    "CI_KEYS",
    "best_threshold",
    "binary_metrics",
    "confusion",
    "per_patient_accuracy",
    "roc_auc",
    "roc_curve",
    "threshold_curve",
    "weighted_f1",
]

# --------------------------------------------------------------------------- validation


def _reject(arr: np.ndarray, bad: np.ndarray, name: str, must: str, hint: str = "") -> None:
    """Raise ValueError naming the first entry of ``arr`` where ``bad`` holds, if any."""
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise ValueError(f"{name} must {must}, got {arr[i].item()!r} at index {i}{hint}")


def _labels(y: ArrayLike, name: str) -> np.ndarray:
    """Return ``y`` as a 1-D int64 array of 0/1, or raise ValueError naming ``name``."""
    arr = np.asarray(y)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {arr.shape}")
    if arr.size == 0:
        raise ValueError(f"{name} is empty; metrics need at least one sample")
    if arr.dtype != bool and not np.issubdtype(arr.dtype, np.number):
        raise ValueError(f"{name} must hold 0/1 labels, got dtype {arr.dtype}: {arr[:5]!r}")
    _reject(arr, (arr != 0) & (arr != 1), name, "hold only 0 (hem) and 1 (ALL)",
            "; threshold probabilities first")
    return arr.astype(np.int64)


def _floats(y: ArrayLike, name: str, probabilities: bool = False) -> np.ndarray:
    """Return ``y`` as a 1-D float64 array of finite values (in [0, 1] if ``probabilities``)."""
    try:
        arr = np.asarray(y, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{name} must be numeric: {exc}") from exc
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {arr.shape}")
    _reject(arr, ~np.isfinite(arr), name, "be finite")
    if probabilities:
        _reject(arr, (arr < 0.0) | (arr > 1.0), name, "be probabilities in [0, 1]",
                "; apply a sigmoid to logits first")
    return arr


def _inputs(y_true: ArrayLike, y: ArrayLike, name: str, patient_ids: ArrayLike | None = None
            ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Checked ``(y_true, y, patient_ids)``: 0/1 labels, then ``y`` as its name says (``y_pred``
    0/1, ``y_score`` finite, ``y_prob`` in [0, 1]), then ids as strings; lengths equal."""
    arrays = {"y_true": _labels(y_true, "y_true")}
    if name == "y_pred":
        arrays[name] = _labels(y, name)
    else:
        arrays[name] = _floats(y, name, probabilities=name == "y_prob")
    if patient_ids is not None:
        ids = np.asarray(patient_ids)
        if ids.ndim != 1:
            raise ValueError(f"patient_ids must be 1-D, got shape {ids.shape}")
        arrays["patient_ids"] = ids.astype(str)
    lengths = {key: len(a) for key, a in arrays.items()}
    if len(set(lengths.values())) > 1:
        shown = ", ".join(f"{key}={n}" for key, n in lengths.items())
        raise ValueError(f"inputs must have equal lengths, got {shown}")
    return arrays["y_true"], arrays[name], arrays.get("patient_ids")


def _sklearn_metrics() -> ModuleType:
    """``sklearn.metrics``, imported on first use (it takes about a second)."""
    from sklearn import metrics

    return metrics


# --------------------------------------------------------------------------- point metrics


def _weighted_f1_counts(tn: Any, fp: Any, fn: Any, tp: Any) -> Any:
    """Support-weighted F1 from confusion counts, elementwise on arrays (sklearn's rule).

    The vectorised bootstrap and threshold search need F1 of thousands of count vectors at
    once, which ``sklearn.metrics.f1_score`` (one label vector per call) cannot do; the tests
    check this against it.
    """
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
    """Binary confusion matrix (``sklearn.metrics.confusion_matrix`` with both labels).

    Args:
        y_true: True labels, 0 (hem) or 1 (ALL).
        y_pred: Predicted labels, 0 or 1.

    Returns:
        A 2x2 int64 array ``[[tn, fp], [fn, tp]]``: rows are true 0/1, columns predicted 0/1,
        even when a class is absent from both inputs.

    Raises:
        ValueError: If the inputs are not 1-D 0/1 arrays of equal, non-zero length.
    """
    t, p, _ = _inputs(y_true, y_pred, "y_pred")
    return _sklearn_metrics().confusion_matrix(t, p, labels=[0, 1]).astype(np.int64)


def weighted_f1(y_true: ArrayLike, y_pred: ArrayLike) -> float:
    """The C-NMC 2019 challenge metric: per-class F1 weighted by class support in ``y_true``.

    ``sklearn.metrics.f1_score(y_true, y_pred, labels=[0, 1], average="weighted",
    zero_division=0)``: a class that is neither true nor predicted has F1 0 and weight 0.

    Args:
        y_true: True labels, 0 (hem) or 1 (ALL).
        y_pred: Predicted labels, 0 or 1.

    Returns:
        The weighted F1 in [0, 1].

    Raises:
        ValueError: If the inputs are not 1-D 0/1 arrays of equal, non-zero length.
    """
    t, p, _ = _inputs(y_true, y_pred, "y_pred")
    return float(
        _sklearn_metrics().f1_score(t, p, labels=[0, 1], average="weighted", zero_division=0)
    )


def roc_auc(y_true: ArrayLike, y_score: ArrayLike) -> float:
    """Area under the ROC curve (``sklearn.metrics.roc_auc_score``).

    Tied scores count 1/2 for a (positive, negative) pair.

    Args:
        y_true: True labels, 0 (hem) or 1 (ALL).
        y_score: Scores where higher means more likely ALL (probabilities or logits).

    Returns:
        The AUC in [0, 1], or NaN if ``y_true`` holds only one class.

    Raises:
        ValueError: On non-0/1 labels, non-finite scores or unequal lengths.
    """
    t, s, _ = _inputs(y_true, y_score, "y_score")
    if t.min() == t.max():  # one class: undefined (sklearn would warn and return NaN)
        return float("nan")
    return float(_sklearn_metrics().roc_auc_score(t, s))


def roc_curve(
    y_true: ArrayLike, y_score: ArrayLike, *, drop_intermediate: bool = True
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """ROC curve points (``sklearn.metrics.roc_curve``), for plotting.

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
    t, s, _ = _inputs(y_true, y_score, "y_score")
    from sklearn.exceptions import UndefinedMetricWarning

    with warnings.catch_warnings():
        # One class: sklearn warns and returns NaN for the undefined axis, as documented above.
        warnings.simplefilter("ignore", UndefinedMetricWarning)
        fpr, tpr, thresholds = _sklearn_metrics().roc_curve(
            t, s, drop_intermediate=drop_intermediate
        )
    return (
        fpr.astype(np.float64),
        tpr.astype(np.float64),
        thresholds.astype(np.float64),
    )


# --------------------------------------------------------------------------- thresholds


def _default_thresholds(prob: np.ndarray) -> np.ndarray:
    """0, 0.5, 1 and the midpoints between consecutive distinct scores, ascending."""
    u = np.unique(prob)
    mids = u[:-1] + (u[1:] - u[:-1]) / 2.0
    return np.unique(np.clip(np.r_[0.0, mids, 0.5, 1.0], 0.0, 1.0))


def threshold_curve(
    y_true: ArrayLike, y_prob: ArrayLike, thresholds: ArrayLike | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Weighted F1 of the predictions ``y_prob >= t`` at each candidate threshold ``t``.

    The default candidates are every threshold that gives a different set of predictions,
    each represented by the midpoint between two consecutive distinct scores (the one farthest
    from both, so the choice does not sit on a training score), plus 0 (all ALL), 1 and 0.5 (the
    usual threshold, so a tie with it can keep it). The curve is therefore exact: no threshold
    in [0, 1] scores better than its best candidate. Counts for all candidates come from one
    sort and a binary search, O((n + m) log n) for n cells and m candidates.

    Args:
        y_true: True labels, 0 (hem) or 1 (ALL).
        y_prob: Predicted probability of ALL for each cell, in [0, 1].
        thresholds: Candidate thresholds in [0, 1] (any order), or None for the default set.

    Returns:
        ``(thresholds, weighted_f1)``: float64 arrays of equal length; the given thresholds in
        their order, or the default candidates ascending.

    Raises:
        ValueError: On invalid labels, probabilities outside [0, 1], unequal lengths, or
            thresholds that are not a 1-D array of finite values in [0, 1].
    """
    t, prob, _ = _inputs(y_true, y_prob, "y_prob")
    if thresholds is None:
        cand = _default_thresholds(prob)
    else:
        cand = _floats(thresholds, "thresholds", probabilities=True)
    pos = np.sort(prob[t == 1])
    neg = np.sort(prob[t == 0])
    tp = pos.size - np.searchsorted(pos, cand, side="left")  # positives with p >= threshold
    fp = neg.size - np.searchsorted(neg, cand, side="left")
    curve = _weighted_f1_counts(neg.size - fp, fp, pos.size - tp, tp)
    return cand.astype(np.float64), np.asarray(curve, dtype=np.float64)


def best_threshold(y_true: ArrayLike, y_prob: ArrayLike) -> float:
    """The decision threshold that maximises weighted F1 of ``y_prob >= threshold``.

    Meant for held-out predictions (out-of-fold, or a validation fold): a threshold chosen on
    the cells a model trained on is optimistic. The search runs over :func:`threshold_curve`'s
    default candidates, so the result is a midpoint between two scores, 0, 1 or 0.5. Scores
    within 1e-12 of the maximum tie; of those the candidate nearest 0.5 wins (the lower one
    if two are equally near), so 0.5 stays whenever it is among the best.

    Args:
        y_true: True labels, 0 (hem) or 1 (ALL); both classes must be present.
        y_prob: Predicted probability of ALL for each cell, in [0, 1].

    Returns:
        The threshold, a float in [0, 1].

    Raises:
        ValueError: If ``y_true`` holds only one class (no threshold can be chosen from it), or
            on invalid labels, probabilities or lengths.
    """
    t = _labels(y_true, "y_true")
    n_pos = int(t.sum())
    if n_pos in (0, t.size):
        only = "ALL (label 1)" if n_pos else "normal (label 0)"
        raise ValueError(
            f"no threshold can be chosen from one class: y_true holds only {only} cells "
            f"(n={t.size}); pass held-out predictions that include both ALL and normal cells, "
            "e.g. pool the folds that have both"
        )
    cand, curve = threshold_curve(t, y_prob)
    tied = np.flatnonzero(curve >= curve.max() - 1e-12)
    return float(cand[tied[np.argmin(np.abs(cand[tied] - 0.5))]])


# --------------------------------------------------------------------------- patients


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
    t, p, ids = _inputs(y_true, y_pred, "y_pred", patient_ids)
    assert ids is not None
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


def _count_ratio(num: Any, den: Any) -> np.ndarray:
    """Elementwise ``num / den`` with NaN where ``den`` is 0."""
    num, den = np.asarray(num, dtype=np.float64), np.asarray(den, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(den > 0, num / den, np.nan)


# Metrics of confusion counts (tn, fp, fn, tp), elementwise: the point values and the replicates.
_COUNT_METRICS: dict[str, Callable[..., np.ndarray]] = {
    "weighted_f1": _weighted_f1_counts,
    "accuracy": lambda tn, fp, fn, tp: _count_ratio(tp + tn, tn + fp + fn + tp),
    "balanced_accuracy": lambda tn, fp, fn, tp: (
        _count_ratio(tp, tp + fn) + _count_ratio(tn, tn + fp)
    ) / 2.0,
    "sensitivity": lambda tn, fp, fn, tp: _count_ratio(tp, tp + fn),
    "specificity": lambda tn, fp, fn, tp: _count_ratio(tn, tn + fp),
    "precision": lambda tn, fp, fn, tp: _count_ratio(tp, tp + fp),
}
CI_KEYS = (*_COUNT_METRICS, "roc_auc")  # metrics binary_metrics can give a bootstrap CI


def _replicate_auc(
    t: np.ndarray, prob: np.ndarray, patient: np.ndarray, times: np.ndarray, chunk: int = 128
) -> np.ndarray:
    """ROC AUC of every replicate: Mann-Whitney U with cells weighted by their patient's draws.

    A replicate's weight of positives (negatives) at each distinct score is ``times @ M`` with
    ``M[j, g]`` the patient-``j`` positives (negatives) scoring ``g``; U sums, over scores, the
    positive weight times the negative weight below plus half the tied one. Replicates go in
    chunks so memory stays at ``chunk x distinct scores`` floats.
    """
    n_boot, n_patients = times.shape
    _, score = np.unique(prob, return_inverse=True)
    n_scores = int(score.max()) + 1
    index = patient * n_scores + score
    size = n_patients * n_scores
    pos = np.bincount(index[t == 1], minlength=size).reshape(n_patients, n_scores)
    neg = np.bincount(index[t == 0], minlength=size).reshape(n_patients, n_scores)
    out = np.empty(n_boot)
    for start in range(0, n_boot, chunk):
        w = times[start : start + chunk].astype(np.float64)
        wp, wn = w @ pos, w @ neg
        below = np.cumsum(wn, axis=1) - wn
        u = (wp * (below + 0.5 * wn)).sum(axis=1)
        den = wp.sum(axis=1) * wn.sum(axis=1)
        with np.errstate(divide="ignore", invalid="ignore"):
            out[start : start + chunk] = np.where(den > 0, u / den, np.nan)
    return out


def _patient_bootstrap(
    t: np.ndarray, pred: np.ndarray, prob: np.ndarray, patient: np.ndarray,
    keys: Sequence[str], n_boot: int, seed: int,
) -> dict[str, list[float] | None]:
    """Patient-bootstrap 95% percentile intervals ``[lo, hi]`` of ``keys`` (None if undefined).

    Each replicate draws as many patients as there are, with replacement, and pools all cells
    of the drawn patients (a patient drawn twice counts twice): cells of one patient are
    correlated, so resampling cells would give intervals that are too narrow. A replicate's
    confusion counts are the per-patient counts weighted by how often it drew each patient,
    all replicates in one matrix product; replicates where a metric is NaN are dropped.
    """
    n_patients = int(patient.max()) + 1
    draws = np.random.default_rng(seed).integers(0, n_patients, (n_boot, n_patients))
    flat = (np.arange(n_boot)[:, None] * n_patients + draws).ravel()
    # times[b, j]: how often replicate b drew patient j
    times = np.bincount(flat, minlength=n_boot * n_patients).reshape(n_boot, n_patients)
    cells = 4 * patient + 2 * t + pred  # per patient: 0=tn, 1=fp, 2=fn, 3=tp
    per_patient = np.bincount(cells, minlength=4 * n_patients).reshape(n_patients, 4)
    counts = (times @ per_patient).T  # rows tn, fp, fn, tp; a column per replicate
    alpha = 0.05
    cis: dict[str, list[float] | None] = {}
    for key in keys:
        if key == "roc_auc":
            stats = _replicate_auc(t, prob, patient, times)
        else:
            stats = np.asarray(_COUNT_METRICS[key](*counts), dtype=np.float64)
        stats = stats[~np.isnan(stats)]
        cis[key] = (np.quantile(stats, [alpha / 2.0, 1.0 - alpha / 2.0]).tolist()
                    if stats.size else None)
    return cis


# --------------------------------------------------------------------------- summary


def _json_float(x: float | np.ndarray) -> float | None:
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
    ci_keys: Sequence[str] = ("weighted_f1",),
) -> dict[str, Any]:
    """All metrics of one evaluation, as a JSON-serialisable dict.

    A cell is predicted ALL when its probability is ``>= threshold``.

    Args:
        y_true: True labels, 0 (hem) or 1 (ALL).
        y_prob: Predicted probability of ALL for each cell, in [0, 1].
        patient_ids: Patient of each cell; enables the bootstrap CI and ``n_patients``.
        threshold: Decision threshold in [0, 1].
        n_boot: Bootstrap replicates for the 95% CIs; 0 skips the bootstrap.
        seed: Seed of the bootstrap.
        ci_keys: Metrics that get a patient-bootstrap 95% CI ``<key>_ci95``, from
            :data:`CI_KEYS`. All come from the same replicates: counts for most, a weighted
            Mann-Whitney U for ``roc_auc`` (about 1 s for 10,000 cells x 1,000 replicates,
            so not the default).

    Returns:
        A dict with the keys ``threshold`` (the one used), ``weighted_f1``,
        ``weighted_f1_ci95`` (``[lo, hi]``, or None without patient ids, with fewer than 2
        patients, with ``n_boot=0`` or when not in ``ci_keys``), ``accuracy``,
        ``balanced_accuracy`` (mean of sensitivity and specificity), ``sensitivity`` (recall of
        ALL), ``specificity`` (recall of hem), ``precision`` (of ALL), ``roc_auc``,
        ``confusion_matrix`` (``[[tn, fp], [fn, tp]]``), ``n`` and ``n_patients`` (None
        without ids), then ``<key>_ci95`` for every other key of ``ci_keys``. Values are plain
        Python floats, ints, lists or None; a value that is undefined for this data (e.g.
        sensitivity without positives) is None.

    Raises:
        ValueError: On invalid labels, non-finite or out-of-range probabilities, unequal
            lengths, a threshold outside [0, 1], a negative ``n_boot`` or an unknown
            ``ci_keys`` entry.
    """
    t, prob, ids = _inputs(y_true, y_prob, "y_prob", patient_ids)
    if not 0.0 <= threshold <= 1.0:
        raise ValueError(f"threshold must be in [0, 1], got {threshold}")
    if n_boot < 0:
        raise ValueError(f"n_boot must be >= 0 (0 skips the bootstrap), got {n_boot}")
    ci_keys = tuple(ci_keys)
    unknown = [k for k in ci_keys if k not in CI_KEYS]
    if unknown:
        raise ValueError(f"ci_keys: unknown metric(s) {unknown}; choose from {list(CI_KEYS)}")

    pred = (prob >= threshold).astype(np.int64)
    tn, fp, fn, tp = (int(c) for c in confusion(t, pred).ravel())
    n_patients = None
    cis: dict[str, list[float] | None] = {k: None for k in ("weighted_f1", *ci_keys)}
    if ids is not None:
        _, patient = np.unique(ids, return_inverse=True)
        n_patients = int(patient.max()) + 1
        if n_patients >= 2 and n_boot > 0 and ci_keys:
            cis.update(_patient_bootstrap(t, pred, prob, patient, ci_keys, n_boot, seed))
    return {
        "threshold": float(threshold),
        "weighted_f1": weighted_f1(t, pred),
        "weighted_f1_ci95": cis.pop("weighted_f1"),
        **{k: _json_float(f(tn, fp, fn, tp)) for k, f in _COUNT_METRICS.items()
           if k != "weighted_f1"},  # accuracy, balanced_accuracy, sensitivity, ...
        "roc_auc": _json_float(roc_auc(t, prob)),
        "confusion_matrix": [[tn, fp], [fn, tp]],
        "n": int(t.size),
        "n_patients": n_patients,
        **{f"{k}_ci95": v for k, v in cis.items()},
    }
