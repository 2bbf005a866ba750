"""Write a search's results: ``trials.csv`` and one self-contained ``report.html``.

The search driver calls :func:`write_trials_csv` as trials finish and :func:`write_report` at the
end. The report is a single HTML page with inline CSS and inline SVG plots drawn here (no
JavaScript, no network, no plotting library), so it opens anywhere, from any copy of the run
folder. Hovering a point or line shows its trial in a native tooltip (SVG ``<title>``).

The objective is ``val_weighted_f1`` (the C-NMC 2019 challenge metric), maximised; a trial's
score is its best epoch. The best trial is the search's (``search.final.best_trial``): the
highest held-out score at any epoch, stopped trials included, as the final retrain uses.

Both writers replace their file atomically, so a reader never sees a half-written file.
"""

from __future__ import annotations

import csv
import io
import json
import math
import time
import warnings
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import optuna

from leukemia.train import atomic_write
from search.svg import (
    Plot,
    cross,
    dot,
    esc,
    hbars,
    int_range,
    num,
    score_range,
    svg_title,
)

__all__ = ["write_report", "write_trials_csv"]

METRIC = "val_weighted_f1"  # history key plotted as learning curves; the trials' objective
TRIAL_COLUMNS = (
    "trial_id",
    "number",
    "status",
    "best_score",
    "best_epoch",
    "epochs_run",
    "error",
    "node_id",
    "nodes",
    "resumed_from_epoch",
    "started_at",
    "ended_at",
)
STATUS_COLOURS = {
    "completed": "#1f77b4",
    "pruned": "#e67e22",
    "failed": "#c0392b",
    "running": "#7f8c8d",
    "pending": "#b0b7bd",
}
CLASS_NAMES = {0: "normal", 1: "ALL"}
CLASS_COLOURS = {0: "#2e9d5b", 1: "#8e44ad"}
_OTHER_COLOUR = "#555555"


# --------------------------------------------------------------------------- files


def _table(trials: Sequence[dict]) -> tuple[list[str], list[list[Any]]]:
    """Columns and raw row values of the trials table, sorted by trial number."""
    ordered = sorted(trials, key=lambda t: (t.get("number") is None, t.get("number") or 0))
    params: dict[str, None] = {}  # first-seen order, which follows the search space
    for trial in ordered:
        params.update(dict.fromkeys(trial.get("params") or {}))
    columns = [*TRIAL_COLUMNS, *(f"param_{name}" for name in params)]
    rows = [
        [trial.get(c) for c in TRIAL_COLUMNS]
        + [(trial.get("params") or {}).get(name) for name in params]
        for trial in ordered
    ]
    return columns, rows


def _csv_cell(value: Any) -> str:
    """A CSV cell: blank for None/NaN, JSON for lists and dicts, else ``str``."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if isinstance(value, (list, tuple, dict)):
        return json.dumps(value)
    return str(value)


def write_trials_csv(path: Path, trials: list[dict]) -> None:
    """Write one CSV row per trial, sorted by trial number, atomically.

    The columns are ``trial_id, number, status, best_score, best_epoch, epochs_run, error,
    node_id, nodes, resumed_from_epoch, started_at, ended_at`` and then ``param_<name>`` for
    every parameter of any trial (in first-seen order); a parameter a trial does not have (a
    conditional one) is blank, as are None and NaN values.

    Args:
        path: Destination file, e.g. ``runs/<name>/trials.csv``; its folder is created.
        trials: Trial dicts as the search driver builds them (``trial_id``, ``number``,
            ``status``, ``params``, ``best_score``...).
    """
    columns, rows = _table(trials)
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(columns)
    writer.writerows([_csv_cell(v) for v in row] for row in rows)
    atomic_write(path, buffer.getvalue())


# --------------------------------------------------------------------------- formatting






def _fmt(value: Any, digits: int = 4) -> str:
    """Short human text for a value (not escaped)."""
    if value is None:
        return "—"
    if isinstance(value, float):
        return "NaN" if math.isnan(value) else f"{value:.{digits}g}"
    if isinstance(value, (list, tuple)):
        return ", ".join(_fmt(v, digits) for v in value)
    return str(value)


def _fixed(value: Any) -> str:
    """A metric with 4 decimals, or a dash when missing or not finite."""
    v = num(value)
    return "—" if v is None else f"{v:.4f}"


def _seq(value: Any) -> list:
    """``list(value)``, or ``[]`` for None (numpy arrays have no truth value)."""
    return [] if value is None else list(value)


def _when(seconds: Any) -> str:
    """A Unix time as UTC ``YYYY-MM-DD HH:MM:SS``, or a dash."""
    s = num(seconds)
    return "—" if s is None else time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(s))


def _note(text: str) -> str:
    """A highlighted explanatory paragraph (text is escaped)."""
    return f'<p class="note">{esc(text)}</p>'


def _kv_table(items: Iterable[tuple[Any, Any]]) -> str:
    """A two-column key/value table."""
    rows = "".join(f"<tr><th>{esc(k)}</th><td>{esc(_fmt(v))}</td></tr>" for k, v in items)
    return f'<table class="kv">{rows}</table>'


def _badge(status: str, text: str | None = None) -> str:
    """A status label in its colour."""
    colour = STATUS_COLOURS.get(status, _OTHER_COLOUR)
    return f'<span class="badge" style="background:{colour}">{esc(text or status)}</span>'


# --------------------------------------------------------------------------- sections


def _scored(trials: Sequence[dict]) -> list[tuple[dict, float]]:
    """Trials that have a finite best score, with it."""
    out = [(t, num(t.get("best_score"))) for t in trials]
    return [(t, s) for t, s in out if s is not None]


def _best_trial(trials: Sequence[dict]) -> dict | None:
    """The search's best trial (see ``search.final.best_trial``), else the highest-scoring."""
    from search.final import best_trial

    if all(t.get("best_objective") is not None for t in trials if t.get("best_score") is not None):
        found = best_trial(list(trials))
        if found is not None:
            return found
    scored = _scored(trials)
    return max(scored, key=lambda ts: ts[1])[0] if scored else None


def _header(trials: Sequence[dict], command: str, settings: dict) -> str:
    """Title, reproduce command, settings, status counts and the best trial."""
    counts = Counter(str(t.get("status")) for t in trials)
    order = [*STATUS_COLOURS, *sorted(set(counts) - set(STATUS_COLOURS))]
    badges = " ".join(_badge(s, f"{s}: {counts[s]}") for s in order if counts[s])
    parts = [
        "<h1>C-NMC 2019 hyperparameter search</h1>",
        f'<p class="muted">ALL (leukemic blast, class 1) vs normal cells. Objective: maximise '
        f"{METRIC} (best epoch of each trial). Generated {esc(_when(time.time()))} UTC.</p>",
        "<h3>Reproduce</h3>",
        f"<pre>{esc(command)}</pre>",
        '<div class="row"><div>',
        "<h3>Settings</h3>",
        _kv_table(settings.items()) if settings else _note("No settings recorded."),
        "</div><div>",
        f"<h3>Trials ({len(trials)})</h3>",
        f"<p>{badges or 'none'}</p>",
        "<h3>Best trial</h3>",
    ]
    best = _best_trial(trials)
    if best is None:
        parts.append(_note("No trial reported a score."))
    else:
        if best.get("status") != "completed":
            parts.append(_note(f"This trial was {esc(best.get('status'))}; its peak epoch "
                               "still scored best, and the final retrain uses that epoch count."))
        parts.append(
            f"<p><b>{esc(best.get('trial_id'))}</b> #{esc(best.get('number'))} "
            f"{_badge(str(best.get('status')))}<br>{METRIC} "
            f"<b>{esc(_fixed(best.get('best_score')))}</b> at epoch "
            f"{esc(_fmt(best.get('best_epoch')))} of {esc(_fmt(best.get('epochs_run')))}</p>"
        )
        parts.append(_kv_table(sorted((best.get("params") or {}).items())))
    parts.append("</div></div>")
    return "".join(parts)


_METRIC_ROWS = (
    ("weighted_f1", "Weighted F1 (challenge metric)"),
    ("accuracy", "Accuracy"),
    ("balanced_accuracy", "Balanced accuracy"),
    ("sensitivity", "Sensitivity (recall of ALL)"),
    ("specificity", "Specificity (recall of normal)"),
    ("precision", "Precision (of ALL)"),
    ("roc_auc", "ROC AUC"),
)


def _metrics_table(final: dict) -> str:
    """Metrics of the exported model, its CI, and mean ± std over the retrain seeds."""
    metrics = final.get("metrics") or {}
    summary = final.get("seed_summary") or {}
    seeds = final.get("seeds") or []
    n_seeds = max([len(seeds), *(len(s.get("values") or []) for s in summary.values())])
    several = n_seeds > 1
    head = "<tr><th>metric</th><th>exported model</th>"
    head += f"<th>mean ± std over {n_seeds} seeds</th></tr>" if several else "</tr>"
    rows = []
    for key, name in _METRIC_ROWS:
        value = esc(_fixed(metrics.get(key)))
        ci = metrics.get(f"{key}_ci95")
        if ci and len(ci) == 2 and all(num(c) is not None for c in ci):
            value += f' <span class="muted">(95% CI {_fixed(ci[0])}–{_fixed(ci[1])})</span>'
        row = f"<tr><th>{esc(name)}</th><td>{value}</td>"
        if several:
            s = summary.get(key) or {}
            mean, std = num(s.get("mean")), num(s.get("std"))
            text = "—" if mean is None else f"{mean:.4f} ± {std or 0.0:.4f}"
            tip = _fmt(s.get("values") or [])
            row += f'<td title="{esc(tip)}">{esc(text)}</td>'
        rows.append(row + "</tr>")
    foot = (
        f'<p class="muted">{esc(_fmt(metrics.get("n")))} cells of '
        f"{esc(_fmt(metrics.get('n_patients')))} patients; the CI resamples patients.</p>"
    )
    return f'<table class="grid">{head}{"".join(rows)}</table>{foot}'


def _confusion_table(matrix: Any) -> str:
    """The 2x2 confusion matrix, rows = truth, shaded by row fraction."""
    try:
        (tn, fp), (fn, tp) = matrix
        cells = [[int(tn), int(fp)], [int(fn), int(tp)]]
    except (TypeError, ValueError):
        return _note("No confusion matrix recorded.")
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


def _roc_svg(roc: dict, auc: Any) -> str:
    """The ROC curve with the chance diagonal; AUC in the legend."""
    pts = [
        (x, y)
        for x, y in zip(
            map(num, _seq(roc.get("fpr"))), map(num, _seq(roc.get("tpr"))), strict=False
        )
        if x is not None and y is not None
    ]
    if not pts:
        return _note("No ROC curve recorded.")
    auc_text = _fixed(auc) if num(auc) is not None else "n/a"
    plot = Plot(
        x_range=(0.0, 1.0),
        y_range=(0.0, 1.0),
        width=300,
        height=300,
        x_label="false positive rate (1 − specificity)",
        y_label="true positive rate",
        legend=[
            ("line", STATUS_COLOURS["completed"], f"ROC (AUC = {auc_text})"),
            ("dash", "#999999", "chance"),
        ],
    )
    line = " ".join(f"{plot.x(x):.1f},{plot.y(y):.1f}" for x, y in pts)
    body = [
        f'<line x1="{plot.x(0)}" y1="{plot.y(0)}" x2="{plot.x(1)}" y2="{plot.y(1)}" '
        'stroke="#999999" stroke-dasharray="5,3"/>',
        f'<polyline points="{line}" fill="none" stroke="{STATUS_COLOURS["completed"]}" '
        'stroke-width="2"/>',
    ]
    return plot.render(body, "ROC curve")


def _patients_svg(per_patient: Sequence[dict]) -> str:
    """Per-patient accuracy bars, worst first, coloured by the patient's class."""
    rows = [p for p in per_patient if num(p.get("accuracy")) is not None]
    if not rows:
        return _note("No per-patient accuracy recorded.")
    rows.sort(key=lambda p: (num(p["accuracy"]), str(p.get("patient_id"))))
    items = [
        (
            str(p.get("patient_id")),
            float(p["accuracy"]),
            CLASS_COLOURS.get(p.get("label"), _OTHER_COLOUR),
            f"{float(p['accuracy']):.2f} (n={_fmt(p.get('n'))})",
        )
        for p in rows
    ]
    legend = [("bar", CLASS_COLOURS[k], f"{CLASS_NAMES[k]} patient") for k in (0, 1)]
    return hbars(
        items, x_label="accuracy", x_max=1.0, label="per-patient accuracy", legend=legend
    )


def _final_section(final: dict | None) -> str:
    """Metrics, confusion matrix, ROC and per-patient accuracy of the final model."""
    if final is None:
        return _note(
            "No final result: the final retrain of the best configuration did not run "
            "(the search was interrupted, no trial completed, or it was skipped)."
        )
    seeds = final.get("seeds") or []
    intro = (
        f"<p>The best configuration retrained for {esc(_fmt(final.get('epochs')))} epochs with "
        f"seeds {esc(_fmt(list(seeds)))}; metrics of the exported model on validation_data.</p>"
    )
    config = final.get("config") or {}
    details = (
        f"<details><summary>training config</summary>{_kv_table(sorted(config.items()))}</details>"
    )
    metrics = final.get("metrics") or {}
    return (
        f"{intro}{_metrics_table(final)}{details}"
        f'<div class="row"><div><h3>ROC curve</h3>'
        f"{_roc_svg(final.get('roc') or {}, metrics.get('roc_auc'))}</div>"
        f"<div><h3>Confusion matrix</h3>{_confusion_table(metrics.get('confusion_matrix'))}"
        "</div></div>"
        f"<h3>Per-patient accuracy</h3>{_patients_svg(final.get('per_patient') or [])}"
    )


def _status_legend(statuses: Iterable[str], kind: str) -> list[tuple[str, str, str]]:
    """Legend entries for the statuses present, in the standard order."""
    present = set(statuses)
    order = [*STATUS_COLOURS, *sorted(present - set(STATUS_COLOURS))]
    return [(kind, STATUS_COLOURS.get(s, _OTHER_COLOUR), s) for s in order if s in present]


def _history_svg(trials: Sequence[dict]) -> str:
    """Each trial's best score vs trial number, and the best-so-far step line."""
    scored = [(t, s) for t, s in _scored(trials) if num(t.get("number")) is not None]
    if not scored:
        return _note("No trial has a score yet.")
    numbers = [float(t["number"]) for t, _ in scored]
    plot = Plot(
        x_range=int_range(min(numbers), max(numbers)),
        y_range=score_range([s for _, s in scored]),
        x_integer=True,
        x_label="trial number",
        y_label=f"best {METRIC}",
        legend=[
            *_status_legend((str(t.get("status")) for t, _ in scored), "dot"),
            ("line", "#222222", "best so far (completed)"),
        ],
    )
    body, path, best = [], "", -math.inf
    for trial, score in scored:
        status = str(trial.get("status"))
        x, y = plot.x(float(trial["number"])), plot.y(score)
        if status == "completed" and score > best:
            best = score
            path += f"M{x:.1f},{y:.1f}" if not path else f" H{x:.1f} V{y:.1f}"
        tip = f"#{trial.get('number')} {trial.get('trial_id')} ({status}): {score:.4f}"
        body.append(dot(x, y, STATUS_COLOURS.get(status, _OTHER_COLOUR), title=tip))
    if path:
        path += f" H{plot.x(max(numbers)):.1f}"
        body.insert(0, f'<path d="{path}" fill="none" stroke="#222222" stroke-width="1.5"/>')
    missing = len(trials) - len(scored)
    note = _note(f"{missing} trial(s) without a score are not shown.") if missing else ""
    return plot.render(body, "optimization history") + note


def _importance_section(study: optuna.Study | None) -> str:
    """Optuna's parameter importances as bars, or a note saying why there are none."""
    if study is None:
        return _note("No Optuna study was given, so parameter importances are not available.")
    caveats: list[str] = []
    try:
        from optuna.importance import get_param_importances
        from optuna.trial import TrialState

        n_complete = len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)))
        if n_complete < 2:
            return _note(
                f"Parameter importances need at least 2 complete trials; the study has "
                f"{n_complete}."
            )
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            importances = get_param_importances(study)
        caveats = sorted({str(w.message) for w in caught})
    except Exception as exc:  # any failure of an optional section becomes a note
        return _note(f"Parameter importances could not be computed: {type(exc).__name__}: {exc}")
    values = [(name, num(v)) for name, v in importances.items()]
    items = [(n, v, "#1f77b4", f"{v:.3f}") for n, v in values if v is not None]
    if not items:
        return _note("Optuna returned no parameter importances (no parameter varied).")
    chart = hbars(
        items,
        x_label="importance (normalised)",
        label="parameter importances",
        x_max=max(max(v for _, v, *_ in items), 1e-12),
    )
    text = (
        f'<p class="muted">optuna.importance.get_param_importances (default evaluator) over '
        f"{n_complete} complete trials; pruned trials are not used.</p>"
    )
    return text + chart + "".join(_note(f"Optuna: {c}") for c in caveats)


def _curves_svg(trials: Sequence[dict], max_t: int) -> str:
    """Validation weighted F1 per epoch, one line per trial, end marker by status."""
    lines = []
    for trial in trials:
        pts = []
        for i, row in enumerate(trial.get("history") or []):
            epoch, value = num(row.get("epoch", i + 1)), num(row.get(METRIC))
            if epoch is not None and value is not None:
                pts.append((epoch, value))
        if pts:
            lines.append((trial, pts))
    if not lines:
        return _note("No trial reported an epoch yet.")
    values = [v for _, pts in lines for _, v in pts]
    last_epoch = max(max_t, *(e for _, pts in lines for e, _ in pts))
    statuses = {str(t.get("status")) for t, _ in lines}
    legend = [
        (k, STATUS_COLOURS[s], s)
        for s, k in (("completed", "dot"), ("pruned", "cross"), ("failed", "dash"))
        if s in statuses
    ]
    legend += [
        ("line", STATUS_COLOURS.get(s, _OTHER_COLOUR), s)
        for s in sorted(statuses)
        if s not in ("completed", "pruned", "failed")
    ]
    legend.append(("line", "#222222", "best trial"))
    plot = Plot(
        x_range=int_range(1.0, float(last_epoch)),
        y_range=score_range(values),
        x_integer=True,
        x_label="epoch",
        y_label=METRIC,
        legend=legend,
    )
    best = _best_trial(trials)
    body, top = [], []
    for trial, pts in lines:
        status = str(trial.get("status"))
        is_best = trial is best
        colour = "#222222" if is_best else STATUS_COLOURS.get(status, _OTHER_COLOUR)
        tip = f"#{trial.get('number')} {trial.get('trial_id')} ({status})"
        xy = [(plot.x(e), plot.y(v)) for e, v in pts]
        dash = ' stroke-dasharray="5,3"' if status == "failed" else ""
        marks = [
            f'<polyline points="{" ".join(f"{x:.1f},{y:.1f}" for x, y in xy)}" fill="none" '
            f'stroke="{colour}" stroke-width="{2.5 if is_best else 1.3}" '
            f'stroke-opacity="{1 if is_best else 0.7}"{dash}>{svg_title(tip)}</polyline>'
        ]
        end_x, end_y = xy[-1]
        if status == "pruned":
            marks.append(
                cross(end_x, end_y, colour, title=f"{tip}: stopped by ASHA", cls="marker-pruned")
            )
        elif status == "completed":
            marks.append(dot(end_x, end_y, colour, r=3.5, title=tip, cls="marker-completed"))
        elif status == "failed":
            marks.append(
                dot(
                    end_x,
                    end_y,
                    colour,
                    r=3.0,
                    title=f"{tip}: {trial.get('error')}",
                    cls="marker-failed",
                    hollow=True,
                )
            )
        elif len(xy) == 1:  # a lone point draws no line
            marks.append(dot(end_x, end_y, colour, r=2.5, title=tip))
        (top if is_best else body).extend(marks)
    return plot.render(body + top, "learning curves")


def _trials_table(trials: Sequence[dict]) -> str:
    """The trials.csv content as an HTML table with coloured status."""
    columns, rows = _table(trials)
    if not rows:
        return _note("No trials.")
    head = "".join(f"<th>{esc(c.removeprefix('param_'))}</th>" for c in columns)
    body = []
    for row in rows:
        cells = []
        for column, value in zip(columns, row, strict=True):
            if column == "status":
                cells.append(f"<td>{_badge(str(value))}</td>")
            elif column in ("started_at", "ended_at"):
                cells.append(f"<td>{esc(_when(value))}</td>")
            elif column in ("error", "node_id") and value and len(str(value)) > 12:
                short = str(value)[: 60 if column == "error" else 10] + "…"
                cells.append(f'<td title="{esc(value)}">{esc(short)}</td>')
            else:
                cells.append(f"<td>{esc(_fmt(value))}</td>")
        body.append(f"<tr>{''.join(cells)}</tr>")
    return (
        '<p class="muted">Columns after ended_at are parameters; times are UTC; hover a '
        'shortened cell for its full text.</p><div class="scroll"><table class="grid trials">'
        f"<tr>{head}</tr>{''.join(body)}</table></div>"
    )


_CSS = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:#222;
 background:#f6f7f9;margin:0}
main{max-width:1180px;margin:0 auto;padding:16px 28px 48px;background:#fff}
h1{margin:8px 0 4px}h2{border-bottom:2px solid #e3e6ea;padding-bottom:4px;margin-top:36px}
h3{margin:14px 0 6px;font-size:15px}
pre{background:#f1f3f5;padding:10px;border-radius:4px;white-space:pre-wrap;word-break:break-all}
table{border-collapse:collapse;margin:4px 0 10px}
th,td{padding:3px 9px;border:1px solid #dde1e5;text-align:left;vertical-align:top}
table.kv th{background:#f6f7f9;font-weight:600}
table.grid tr:nth-child(even) td{background:#fafbfc}
table.grid tr:first-child th{background:#eef1f4}
table.cm td{text-align:center;min-width:110px}
table.trials{font-size:12px;white-space:nowrap}
.scroll{overflow-x:auto}
.row{display:flex;flex-wrap:wrap;gap:8px 40px;align-items:flex-start}
.badge{color:#fff;border-radius:3px;padding:1px 7px;font-size:12px;white-space:nowrap}
.muted{color:#666}
.note{background:#fff8e1;border-left:4px solid #f0b400;padding:6px 10px}
nav a{margin-right:14px}
svg.plot{max-width:100%;height:auto;font-size:12px;fill:#333}
svg .grid{stroke:#eceef1}svg .axis{stroke:#555;fill:none}svg .label{font-size:13px;fill:#222}
"""


def write_report(
    path: Path,
    *,
    trials: list[dict],
    study: optuna.Study | None,
    final: dict | None,
    command: str,
    settings: dict,
    max_t: int,
) -> None:
    """Write the run's self-contained HTML report atomically.

    The page holds: the reproduce command, settings, trial counts and the best trial; the final
    model's metrics, confusion matrix, ROC curve and per-patient accuracy on validation_data;
    the optimization history; Optuna's parameter importances; every trial's learning curve;
    and the trials table. Plots are inline SVG; nothing is loaded from the network. Sections
    whose inputs are missing (``study`` or ``final`` None, no scores yet, importances that
    cannot be computed) show a note instead of failing.

    Args:
        path: Destination file, e.g. ``runs/<name>/report.html``; its folder is created.
        trials: Trial dicts as for :func:`write_trials_csv`, with ``history`` rows holding
            ``epoch`` and ``val_weighted_f1``.
        study: The Optuna study behind the search, for parameter importances, or None.
        final: The final retrain's result (``config``, ``epochs``, ``seeds``, ``metrics``,
            ``seed_summary``, ``roc``, ``per_patient``), or None if it did not run.
        command: The command that reproduces the run; shown verbatim.
        settings: The run's fixed settings, shown as a table.
        max_t: ASHA's epoch budget; the learning curves' x axis spans 1..max_t.
    """
    ordered = sorted(trials, key=lambda t: (t.get("number") is None, t.get("number") or 0))
    sections = [
        ("final", "Final result on validation_data", _final_section(final)),
        ("history", "Optimization history", _history_svg(ordered)),
        ("importance", "Parameter importances", _importance_section(study)),
        ("curves", "Learning curves", _curves_svg(ordered, max_t)),
        ("trials", "Trials", _trials_table(ordered)),
    ]
    nav = "".join(f'<a href="#{key}">{esc(title)}</a>' for key, title, _ in sections)
    body = "".join(
        f'<section id="{key}"><h2>{esc(title)}</h2>{content}</section>'
        for key, title, content in sections
    )
    page = (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>C-NMC search report</title><style>{_CSS}</style></head><body><main>"
        f"{_header(ordered, command, settings)}<nav>{nav}</nav>{body}</main></body></html>\n"
    )
    atomic_write(path, page)
