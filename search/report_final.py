"""The final model's section of ``report.html``: what was exported and how well it does.

:func:`final_section` turns the ``FinalResult`` that ``search.final`` builds into what the
template shows: the exported model's members and decision threshold, the metrics on
validation_data at 0.5 and at the threshold beside the cross-validated (out-of-fold) estimate
with patient-bootstrap CIs, scikit-learn's ``ConfusionMatrixDisplay`` per column and
``RocCurveDisplay``, weighted F1 by threshold with the chosen point, per-patient accuracy. Every
field is optional: a None value shows a note or drops its column.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
from markupsafe import Markup
from matplotlib.patches import Patch
from sklearn.metrics import ConfusionMatrixDisplay, RocCurveDisplay

from leukemia.rules import Rule
from search.gallery import CLASS_COLOURS, CLASS_NAMES, figure, num, svg
from search.results import FinalResult

__all__ = ["final_section"]
METRIC_ROWS = {"weighted_f1": "Weighted F1 (challenge metric)", "accuracy": "Accuracy",
               "balanced_accuracy": "Balanced accuracy",
               "sensitivity": "Sensitivity (recall of ALL)",
               "specificity": "Specificity (recall of normal)", "precision": "Precision (of ALL)",
               "roc_auc": "ROC AUC"}
# Every key of a metrics dict (leukemia.metrics.binary_metrics) that the section reads
_METRIC_KEYS = dict.fromkeys((*METRIC_ROWS, *(f"{k}_ci95" for k in METRIC_ROWS), "n",
                              "n_patients", "threshold", "confusion_matrix"))


def _columns(final: FinalResult) -> list[tuple[str, dict]]:
    """Validation at 0.5, at the stored threshold (unless 0.5 too) and the CV estimate."""
    threshold = num(final.threshold)
    cols: list[tuple[str, dict]] = []
    half = None
    for name, key, given in (("validation", "metrics", final.metrics),
                             ("validation", "metrics_at_threshold", final.metrics_at_threshold),
                             ("cross-validation (out-of-fold)", "cv", final.cv)):
        if not given:
            continue
        metrics = {**_METRIC_KEYS, **given}
        own = num(metrics["threshold"])  # older results do not carry their threshold
        t = own if own is not None else 0.5 if key == "metrics" else threshold
        if key == "metrics":
            half = t
        elif key == "metrics_at_threshold" and half is not None and t is not None \
                and abs(t - half) <= 1e-12:
            continue
        cols.append((f"{name}, t = {'—' if t is None else f'{t:.4g}'}", metrics))
    return cols


def _ci(metrics: dict, key: str) -> tuple[float, float] | None:
    """A metric's 95% CI, if it has a finite one."""
    ci = [num(c) for c in metrics[f"{key}_ci95"] or ()]
    return (ci[0], ci[1]) if len(ci) == 2 and None not in ci else None  # type: ignore[return-value]


def _metrics(final: FinalResult, cols: list[tuple[str, dict]]) -> dict[str, Any]:
    """The metrics table: one row per metric, one column per data set, the seeds' spread."""
    none: dict[str, Any] = {"mean": None, "std": None, "values": []}
    summary = {k: {**none, **(s or {})} for k, s in (final.seed_summary or {}).items()}
    n_seeds = max([len(final.seeds or []), *(len(s["values"]) for s in summary.values())])
    rows = []
    for key, name in METRIC_ROWS.items():
        spread = summary.get(key, none)
        mean, std = num(spread["mean"]), num(spread["std"])
        rows.append((name, [(m[key], _ci(m, key)) for _, m in cols],
                     "—" if mean is None else f"{mean:.4f} ± {std or 0.0:.4f}", spread["values"]))
    sizes = {name.split(",")[0]: m for name, m in cols}  # one line per data set
    return {"columns": [name for name, _ in cols], "rows": rows,
            "seeds": n_seeds if n_seeds > 1 else None,
            "sizes": [(name, m["n"], m["n_patients"]) for name, m in sizes.items()]}


def _confusion(matrix: Any) -> Markup | None:
    """scikit-learn's confusion matrix display with the share of each true class."""
    try:
        cm = np.asarray(matrix, dtype=int).reshape(2, 2)
    except (TypeError, ValueError):
        return None
    fig, ax = figure(3.0, 2.6)
    display = ConfusionMatrixDisplay(cm, display_labels=[CLASS_NAMES[0], CLASS_NAMES[1]])
    display.plot(ax=ax, cmap="Blues", colorbar=False)
    for (i, j), text in np.ndenumerate(display.text_):
        text.set_text(f"{cm[i, j]}\n{100 * cm[i, j] / max(cm[i].sum(), 1):.1f}%")
    ax.set(xlabel="predicted", ylabel="true")
    return svg(fig)


def _roc(roc: dict | None, auc: Any) -> Markup | None:
    """scikit-learn's ROC curve display with the chance diagonal; AUC in the legend."""
    roc = {"fpr": None, "tpr": None, **(roc or {})}
    fpr, tpr = (np.asarray(roc[k] or [], dtype=float) for k in ("fpr", "tpr"))
    if not len(fpr) or len(fpr) != len(tpr):
        return None
    fig, ax = figure(4.2, 3.6)
    RocCurveDisplay(fpr=fpr, tpr=tpr, roc_auc=num(auc)).plot(  # 1.5 takes name= only here
        ax=ax, name="ROC", plot_chance_level=True)
    ax.set(xlabel="false positive rate (1 − specificity)", ylabel="true positive rate")
    return svg(fig)


def _threshold_curve(final: FinalResult) -> Markup | None:
    """Out-of-fold weighted F1 against the decision threshold, the chosen point and 0.5."""
    curve = {"thresholds": None, "weighted_f1": None, **(final.cv_curve or {})}
    x, y = (np.asarray(curve[k] or [], dtype=float) for k in ("thresholds", "weighted_f1"))
    if not len(x) or len(x) != len(y):
        return None
    order = np.argsort(x)
    fig, ax = figure(5.4, 3.2)
    ax.plot(x[order], y[order], color="#1f77b4", label="weighted F1, out-of-fold")
    ax.axvline(0.5, color="#999999", linestyle="--", label="t = 0.5")
    chosen = num(final.threshold)
    if chosen is not None:
        at = num({**_METRIC_KEYS, **(final.cv or {})}["weighted_f1"])
        at = float(np.interp(chosen, x[order], y[order])) if at is None else at
        ax.plot([chosen], [at], "o", color="#c0392b", markersize=8,
                label=f"chosen t = {chosen:.3g} (weighted F1 {at:.4f})")
    ax.set(xlim=(0, 1), xlabel="decision threshold t (ALL when P(ALL) ≥ t)",
           ylabel="weighted F1")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower center", fontsize=8)
    return svg(fig)


def _patients(per_patient: list[dict] | None) -> Markup | None:
    """Per-patient accuracy bars, worst at the top, coloured by the patient's class."""
    keys = dict.fromkeys(("patient_id", "label", "n", "accuracy"))
    rows = [{**keys, **p} for p in per_patient or []]
    rows = sorted((p for p in rows if num(p["accuracy"]) is not None),
                  key=lambda p: (-p["accuracy"], str(p["patient_id"])))
    if not rows:
        return None
    fig, ax = figure(6.5, 0.8 + 0.28 * len(rows))
    bars = ax.barh([str(p["patient_id"]) for p in rows], [p["accuracy"] for p in rows],
                   color=[CLASS_COLOURS.get(p["label"], "#555555") for p in rows])
    ax.bar_label(bars, [f"{p['accuracy']:.2f} (n={p['n']})" for p in rows], padding=3)
    ax.set(xlim=(0, 1.25), xlabel="accuracy")
    ax.legend(handles=[Patch(color=CLASS_COLOURS[k], label=f"{CLASS_NAMES[k]} patient")
                       for k in (0, 1)], loc="upper left", bbox_to_anchor=(1.01, 1), fontsize=8)
    return svg(fig)


def _members(members: list[dict]) -> dict[str, Any]:
    """One row per model averaged in the exported ensemble, with its training time if known."""
    keys = dict.fromkeys(("fold", "seed", "epochs", "started_at", "ended_at"))
    members = [{**keys, **m} for m in members]
    timed = any(num(m["started_at"]) is not None for m in members)
    rows = []
    for i, m in enumerate(members):
        row = [i, "none (all training folds)" if m["fold"] is None else m["fold"], m["seed"],
               m["epochs"]]
        start, end = num(m["started_at"]), num(m["ended_at"])
        if timed:
            row += ["—" if start is None else time.strftime("%H:%M:%S", time.gmtime(start)),
                    "—" if start is None or end is None else f"{end - start:.0f}"]
        rows.append(row)
    return {"timed": timed, "rows": rows}


def _transductive(scores: dict[str, Any] | None) -> dict[str, Any] | None:
    """The batch variants' rows (each a metrics dict, or ``skipped`` with why)."""
    if not scores:
        return None
    names = {"neighbours": "neighbour correction (K = {k})",
             "adapted_bn": "BatchNorm statistics of the pooled cells",
             "per_patient": "per-patient call (ALL when at least half the cells are)"}
    scores = {"note": "", **dict.fromkeys(names), **scores}
    rows: list[tuple[str, list[tuple[str, Any]] | None, str]] = []
    for key, label in names.items():
        s = scores[key]
        if s is None:
            continue
        label = label.format(k=s["k"] if "k" in s else "?")
        if "skipped" in s:
            rows.append((label, None, f"not scored: {s['skipped']}"))
        elif key == "per_patient":
            rows.append((label, [("accuracy", s["accuracy"]), ("sensitivity", s["sensitivity"]),
                                 ("specificity", s["specificity"])],
                         f"{s['patients']} patients, {s['all_patients']} with ALL"))
        else:
            rows.append((label, [(k, s[k]) for k in ("weighted_f1", "sensitivity",
                                                     "specificity", "roc_auc")],
                         f"{s['n']} cells"))
    return {"note": scores["note"], "rows": rows}


def final_section(final: FinalResult | None) -> dict[str, Any] | None:
    """The report's final-model section as template content, or None when there is no final.

    Args:
        final: The final step's result; every field may be None. ``members`` holds ``fold``,
            ``seed``, ``epochs`` each; ``roc`` ``fpr`` and ``tpr``; ``cv_curve``
            ``thresholds`` and ``weighted_f1``. Metric dicts (``metrics``, validation at 0.5;
            ``metrics_at_threshold``; ``cv``, out-of-fold at the threshold) have
            :func:`leukemia.metrics.binary_metrics`' keys.
    """
    if final is None:
        return None
    cols = _columns(final)  # validation first: the ROC curve's AUC is the first column's
    return {"trial_id": final.trial_id, "epochs": final.epochs,
            "threshold_source": final.threshold_source, "threshold": num(final.threshold),
            "rule": Rule.from_dict(final.rule).describe() if final.rule else None,
            "transductive": _transductive(final.transductive),
            "seeds": list(final.seeds or []), "members": _members(final.members or []),
            "has_validation": bool(final.metrics or final.metrics_at_threshold),
            "table": _metrics(final, cols), "config": sorted((final.config or {}).items()),
            "confusions": [(name, _confusion(m["confusion_matrix"])) for name, m in cols
                           if m["confusion_matrix"] is not None],
            "roc": _roc(final.roc, cols[0][1]["roc_auc"] if cols else None),
            "threshold_curve": _threshold_curve(final),
            "per_patient": _patients(final.per_patient)}
