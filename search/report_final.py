"""The final model's section of ``report.html``: what was exported and how well it does.

:func:`final_section` renders the ``final`` dict that ``search.final`` builds: the members of
the exported model, the decision threshold and where it came from, the metrics on
validation_data at 0.5 and at the stored threshold beside the cross-validated (out-of-fold)
estimate with patient-bootstrap CIs, the confusion matrices, the ROC curve, weighted F1 as a
function of the threshold with the chosen point, and per-patient accuracy. Every key is
optional: a missing or None value shows a note or drops its column, so older results and runs
without a validation split still render. Called by ``search.report.write_report``.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from search.svg import (
    CLASS_COLOURS,
    CLASS_NAMES,
    Plot,
    dot,
    esc,
    fixed,
    fmt,
    hbars,
    kv_table,
    note,
    num,
    score_range,
)

__all__ = ["final_section"]

LINE_COLOUR = "#1f77b4"
MARK_COLOUR = "#c0392b"
_OTHER_COLOUR = "#555555"
_CURVE_POINTS = 400  # a threshold curve with more points is thinned to about twice this

METRIC_ROWS = (
    ("weighted_f1", "Weighted F1 (challenge metric)"),
    ("accuracy", "Accuracy"),
    ("balanced_accuracy", "Balanced accuracy"),
    ("sensitivity", "Sensitivity (recall of ALL)"),
    ("specificity", "Specificity (recall of normal)"),
    ("precision", "Precision (of ALL)"),
    ("roc_auc", "ROC AUC"),
)


def _seq(value: Any) -> list:
    """``list(value)``, or ``[]`` for None (numpy arrays have no truth value)."""
    return [] if value is None else list(value)


def _t(value: Any) -> str:
    """A threshold as text: up to 4 significant digits."""
    v = num(value)
    return "—" if v is None else f"{v:.4g}"


def _threshold_of(metrics: dict, default: float | None) -> float | None:
    """The threshold a metrics dict was computed at: its own ``threshold`` key, else default."""
    own = num(metrics.get("threshold"))
    return default if own is None else own


def _columns(final: dict) -> list[tuple[str, dict]]:
    """The metric dicts to show side by side, each with its column heading.

    Validation at 0.5, validation at the stored threshold (dropped when that is 0.5 too), and
    the cross-validated estimate; a dict that is missing or None has no column.
    """
    threshold = num(final.get("threshold"))
    cols: list[tuple[str, dict]] = []
    at_half = final.get("metrics")
    half = _threshold_of(at_half, 0.5) if at_half else None
    if at_half:
        cols.append((f"validation, t = {_t(half)}", at_half))
    at_t = final.get("metrics_at_threshold")
    if at_t:
        t = _threshold_of(at_t, threshold)
        if half is None or t is None or abs(t - half) > 1e-12:
            cols.append((f"validation, t = {_t(t)}", at_t))
    cv = final.get("cv")
    if cv:
        t = _threshold_of(cv, threshold)
        cols.append((f"cross-validation (out-of-fold), t = {_t(t)}", cv))
    return cols


def _value_cell(metrics: dict, key: str) -> str:
    """A metric value with its 95% CI, if it has one."""
    text = esc(fixed(metrics.get(key)))
    ci = metrics.get(f"{key}_ci95")
    if ci and len(ci) == 2 and all(num(c) is not None for c in ci):
        text += f'<br><span class="muted">95% CI {fixed(ci[0])}–{fixed(ci[1])}</span>'
    return f"<td>{text}</td>"


def _metrics_table(final: dict) -> str:
    """Validation metrics at 0.5 and at the stored threshold, the CV estimate, seed spread."""
    cols = _columns(final)
    summary = final.get("seed_summary") or {}
    seeds = final.get("seeds") or []
    n_seeds = max([len(seeds), *(len(s.get("values") or []) for s in summary.values())])
    several = n_seeds > 1
    if not cols and not several:
        return note("No metrics recorded.")
    head = "<tr><th>metric</th>" + "".join(f"<th>{esc(name)}</th>" for name, _ in cols)
    head += f"<th>mean ± std over {n_seeds} seeds</th></tr>" if several else "</tr>"
    rows = []
    for key, name in METRIC_ROWS:
        row = f"<tr><th>{esc(name)}</th>" + "".join(_value_cell(m, key) for _, m in cols)
        if several:
            s = summary.get(key) or {}
            mean, std = num(s.get("mean")), num(s.get("std"))
            text = "—" if mean is None else f"{mean:.4f} ± {std or 0.0:.4f}"
            row += f'<td title="{esc(fmt(s.get("values") or []))}">{esc(text)}</td>'
        rows.append(row + "</tr>")
    sizes = {  # one line per data set, not per threshold
        name.split(",")[0]: f"{fmt(m.get('n'))} cells of {fmt(m.get('n_patients'))} patients"
        for name, m in cols
    }
    foot = "; ".join(f"{name}: {size}" for name, size in sizes.items())
    foot = f'<p class="muted">{esc(foot)}. CIs resample patients.</p>' if foot else ""
    return f'<table class="grid">{head}{"".join(rows)}</table>{foot}'


def _confusion_table(matrix: Any) -> str:
    """The 2x2 confusion matrix, rows = truth, shaded by row fraction."""
    try:
        (tn, fp), (fn, tp) = matrix
        cells = [[int(tn), int(fp)], [int(fn), int(tp)]]
    except (TypeError, ValueError):
        return note("No confusion matrix recorded.")
    rows = []
    for truth, counts in enumerate(cells):
        total = sum(counts) or 1
        tds = "".join(
            f'<td style="background:rgba(31,119,180,{0.08 + 0.6 * c / total:.2f})">'
            f"<b>{c}</b><br><small>{100 * c / total:.1f}%</small></td>"
            for c in counts
        )
        rows.append(f"<tr><th>true {CLASS_NAMES[truth]}</th>{tds}</tr>")
    head = "<tr><th></th><th>predicted normal</th><th>predicted ALL</th></tr>"
    return f'<table class="cm">{head}{"".join(rows)}</table>'


def _confusions(final: dict) -> str:
    """One confusion matrix per metrics column."""
    cols = [(name, m) for name, m in _columns(final) if m.get("confusion_matrix") is not None]
    if not cols:
        return note("No confusion matrix recorded.")
    return "".join(
        f"<div><h3>Confusion matrix: {esc(name)}</h3>"
        f"{_confusion_table(m.get('confusion_matrix'))}</div>"
        for name, m in cols
    )


def _roc_svg(roc: dict, auc: Any) -> str:
    """The ROC curve with the chance diagonal; AUC in the legend."""
    pts = [
        (x, y)
        for x, y in zip(map(num, _seq(roc.get("fpr"))), map(num, _seq(roc.get("tpr"))))
        if x is not None and y is not None
    ]
    if not pts:
        return note("No ROC curve recorded.")
    auc_text = fixed(auc) if num(auc) is not None else "n/a"
    plot = Plot(
        x_range=(0.0, 1.0),
        y_range=(0.0, 1.0),
        width=300,
        height=300,
        x_label="false positive rate (1 − specificity)",
        y_label="true positive rate",
        legend=[("line", LINE_COLOUR, f"ROC (AUC = {auc_text})"), ("dash", "#999999", "chance")],
    )
    line = " ".join(f"{plot.x(x):.1f},{plot.y(y):.1f}" for x, y in pts)
    body = [
        f'<line x1="{plot.x(0)}" y1="{plot.y(0)}" x2="{plot.x(1)}" y2="{plot.y(1)}" '
        'stroke="#999999" stroke-dasharray="5,3"/>',
        f'<polyline points="{line}" fill="none" stroke="{LINE_COLOUR}" stroke-width="2"/>',
    ]
    return plot.render(body, "ROC curve")


def _thin(pts: list[tuple[float, float]], keep: float | None) -> list[tuple[float, float]]:
    """At most ~2 x _CURVE_POINTS points: each x bin's lowest and highest, and ``keep``'s."""
    if len(pts) <= 2 * _CURVE_POINTS:
        return pts
    chosen: dict[int, tuple[int, int]] = {}
    for i, (x, y) in enumerate(pts):
        b = min(int(x * _CURVE_POINTS), _CURVE_POINTS - 1)
        lo, hi = chosen.get(b, (i, i))
        chosen[b] = (lo if pts[lo][1] <= y else i, hi if pts[hi][1] >= y else i)
    idx = {i for pair in chosen.values() for i in pair} | {0, len(pts) - 1}
    if keep is not None:
        idx.add(min(range(len(pts)), key=lambda i: abs(pts[i][0] - keep)))
    return [pts[i] for i in sorted(idx)]


def _threshold_svg(final: dict) -> str:
    """Out-of-fold weighted F1 against the decision threshold, the chosen point and 0.5."""
    curve = final.get("cv_curve") or {}
    pts = sorted(
        (x, y)
        for x, y in zip(map(num, _seq(curve.get("thresholds"))),
                        map(num, _seq(curve.get("weighted_f1"))))
        if x is not None and y is not None
    )
    if not pts:
        return note("No weighted-F1-by-threshold curve recorded (no cross-validated "
                    "predictions: the final step did not run cross-validation).")
    chosen = num(final.get("threshold"))
    pts = _thin(pts, chosen)
    y_lo, y_hi = score_range([y for _, y in pts])
    legend = [("line", LINE_COLOUR, "weighted F1, out-of-fold"), ("dash", "#999999", "t = 0.5")]
    chosen_y = None
    if chosen is not None:
        cv_f1 = num((final.get("cv") or {}).get("weighted_f1"))
        nearest = min(pts, key=lambda p: abs(p[0] - chosen))[1]
        chosen_y = cv_f1 if cv_f1 is not None else nearest
        legend.append(("dot", MARK_COLOUR, f"chosen t = {chosen:.3g}"))
    plot = Plot(x_range=(0.0, 1.0), y_range=(y_lo, y_hi), width=440, height=240,
                x_label="decision threshold t (ALL when P(ALL) ≥ t)", y_label="weighted F1",
                legend=legend)
    x5 = plot.x(0.5)
    line = " ".join(f"{plot.x(x):.1f},{plot.y(y):.1f}" for x, y in pts)
    body = [
        f'<line x1="{x5:.1f}" y1="{plot.y(y_hi):.1f}" x2="{x5:.1f}" y2="{plot.y(y_lo):.1f}" '
        'stroke="#999999" stroke-dasharray="5,3"/>',
        f'<polyline points="{line}" fill="none" stroke="{LINE_COLOUR}" stroke-width="2"/>',
    ]
    if chosen is not None and chosen_y is not None:
        tip = f"chosen threshold {chosen:.4g}: weighted F1 {chosen_y:.4f}"
        y = plot.y(min(max(chosen_y, y_lo), y_hi))
        body.append(dot(plot.x(chosen), y, MARK_COLOUR, r=5.5, title=tip,
                        cls="marker-threshold"))
    return plot.render(body, "weighted F1 by decision threshold")


def _patients_svg(per_patient: Sequence[dict]) -> str:
    """Per-patient accuracy bars, worst first, coloured by the patient's class."""
    rows = [p for p in per_patient if num(p.get("accuracy")) is not None]
    if not rows:
        return note("No per-patient accuracy recorded.")
    rows.sort(key=lambda p: (num(p["accuracy"]), str(p.get("patient_id"))))
    items = [
        (
            str(p.get("patient_id")),
            float(p["accuracy"]),
            CLASS_COLOURS.get(int(p.get("label", -1)), _OTHER_COLOUR),
            f"{float(p['accuracy']):.2f} (n={fmt(p.get('n'))})",
        )
        for p in rows
    ]
    legend = [("bar", CLASS_COLOURS[k], f"{CLASS_NAMES[k]} patient") for k in (0, 1)]
    return hbars(items, x_label="accuracy", x_max=1.0, label="per-patient accuracy",
                 legend=legend)


def _members_table(members: Sequence[dict]) -> str:
    """One row per model averaged in the exported ensemble, with its training time if known."""
    timed = any(num(m.get("started_at")) is not None for m in members)
    head = "<tr><th>member</th><th>fold held out</th><th>seed</th><th>epochs</th>"
    head += "<th>started (UTC)</th><th>took (s)</th></tr>" if timed else "</tr>"
    rows = []
    for i, m in enumerate(members):
        fold = "none (all training folds)" if m.get("fold") is None else fmt(m["fold"])
        row = (f"<tr><td>{i}</td><td>{esc(fold)}</td><td>{esc(fmt(m.get('seed')))}</td>"
               f"<td>{esc(fmt(m.get('epochs')))}</td>")
        if timed:
            start, end = num(m.get("started_at")), num(m.get("ended_at"))
            when = "—" if start is None else time.strftime("%H:%M:%S", time.gmtime(start))
            took = "—" if start is None or end is None else f"{end - start:.0f}"
            row += f"<td>{when}</td><td>{took}</td>"
        rows.append(row + "</tr>")
    return f'<table class="grid">{head}{"".join(rows)}</table>'


def _intro(final: dict) -> str:
    """What was exported, and the decision threshold it carries."""
    members = final.get("members") or []
    trial = final.get("trial_id")
    of_trial = f" of trial {trial}" if trial else ""
    if members:
        text = (f"<p>The exported model averages P(ALL) over {len(members)} model(s) of the "
                f"best configuration{esc(of_trial)}:</p>{_members_table(members)}")
    else:
        text = (f"<p>The best configuration{esc(of_trial)} retrained for "
                f"{esc(fmt(final.get('epochs')))} epochs with seeds "
                f"{esc(fmt(list(final.get('seeds') or [])))}.</p>")
    threshold = num(final.get("threshold"))
    if threshold is None:
        text += ('<p>Decision threshold: <b>0.5</b> (no threshold stored): a cell is called '
                 "ALL when P(ALL) ≥ 0.5.</p>")
    else:
        source = final.get("threshold_source")
        text += (f"<p>Decision threshold: <b>{threshold:.4g}</b>"
                 f"{' (' + esc(source) + ')' if source else ''}. A cell is called ALL when "
                 f"P(ALL) ≥ {threshold:.4g}; the threshold is stored with the model.</p>")
    if not final.get("metrics") and not final.get("metrics_at_threshold"):
        text += note("No validation split in this store: only the cross-validated estimate "
                     "is shown.")
    return text


def final_section(final: dict | None) -> str:
    """The HTML of the report's final-model section (a note when ``final`` is None).

    Args:
        final: The final step's result. Read keys, all optional: ``trial_id``, ``config``,
            ``epochs``, ``seeds``, ``members`` (``fold``, ``seed``, ``epochs`` each),
            ``threshold``, ``threshold_source``, ``metrics`` (validation at 0.5),
            ``metrics_at_threshold``, ``cv`` (out-of-fold at the threshold), ``seed_summary``,
            ``roc`` (``fpr``, ``tpr``), ``cv_curve`` (``thresholds``, ``weighted_f1``),
            ``per_patient``. Metric dicts have :func:`leukemia.metrics.binary_metrics`' keys.

    Returns:
        HTML without the section's heading.
    """
    if final is None:
        return note(
            "No final result: the final training of the best configuration did not run "
            "(the search was interrupted, no trial completed, or it was skipped)."
        )
    config = final.get("config") or {}
    details = (
        f"<details><summary>training config</summary>{kv_table(sorted(config.items()))}"
        "</details>" if config else ""
    )
    val = final.get("metrics") or final.get("metrics_at_threshold") or {}
    auc = val.get("roc_auc") if val else (final.get("cv") or {}).get("roc_auc")
    return (
        f"{_intro(final)}{_metrics_table(final)}{details}"
        f'<div class="row">{_confusions(final)}</div>'
        f'<div class="row"><div><h3>ROC curve (validation)</h3>'
        f"{_roc_svg(final.get('roc') or {}, auc)}</div>"
        f"<div><h3>Weighted F1 by decision threshold</h3>{_threshold_svg(final)}</div></div>"
        f"<h3>Per-patient accuracy</h3>{_patients_svg(final.get('per_patient') or [])}"
    )
