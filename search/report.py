"""Write a search's results: ``trials.csv`` and one self-contained ``report.html``.

The search driver calls :func:`write_trials_csv` as trials finish and :func:`write_report` at the
end. The report is a single HTML page with inline CSS, inline SVG plots (``search.svg``) and
cell pictures as inline PNG ``data:`` URIs (no JavaScript, no network, no plotting library), so
it opens anywhere, from any copy of the run folder. Hovering a point or line shows its trial in
a native tooltip (SVG ``<title>``). This module draws the search (header, history, importances,
learning curves, trials); ``search.report_final`` the final model's section and
``search.gallery`` the pictures (data overview, misclassified cells).

The objective is ``val_weighted_f1`` (the C-NMC 2019 challenge metric), maximised; a trial's
score in the tables is its best epoch. The best trial is the search's
(``search.final.best_trial``): the highest held-out score at the last epoch among the trials that
ran the whole budget (any epoch of any trial only when none did), as the final retrain uses;
never a trial whose judged epoch was ``constant`` (one class for every held-out cell, no
ranking), a status of its own.

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
from search.gallery import CSS as GALLERY_CSS
from search.gallery import errors_section, overview_section
from search.report_final import final_section
from search.svg import (
    Plot,
    cross,
    dot,
    esc,
    fixed,
    fmt,
    hbars,
    int_range,
    kv_table,
    note,
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
    "last_score",
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
    "constant": "#8e44ad",  # stopped: one class for every held-out cell, no ranking
    "failed": "#c0392b",
    "running": "#7f8c8d",
    "pending": "#b0b7bd",
}
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

    The columns are ``trial_id, number, status, best_score, best_epoch, epochs_run, last_score
    (the score at the last epoch run: what picks the best of the full-budget trials), error,
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


def _when(seconds: Any) -> str:
    """A Unix time as UTC ``YYYY-MM-DD HH:MM:SS``, or a dash."""
    s = num(seconds)
    return "—" if s is None else time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(s))


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
        return best_trial(list(trials))  # None when every scored trial was constant
    scored = [(t, s) for t, s in _scored(trials) if t.get("status") != "constant"]
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
        kv_table(settings.items()) if settings else note("No settings recorded."),
        "</div><div>",
        f"<h3>Trials ({len(trials)})</h3>",
        f"<p>{badges or 'none'}</p>",
        "<h3>Best trial</h3>",
    ]
    best = _best_trial(trials)
    if best is None:
        constant = any(t.get("status") == "constant" for t in trials)
        parts.append(note("Every trial predicted one class for every cell; nothing to export."
                          if constant else "No trial reported a score."))
    else:
        from search.final import selected_epoch, selected_score

        if best.get("status") != "completed":
            status = esc(best.get("status"))
            parts.append(note(f"No trial ran the whole budget; this one ({status}) peaked "
                              "highest, and the final retrain uses its peak epoch count."))
        else:
            parts.append('<p class="muted">The best of the trials that ran the whole budget, '
                         "by its last epoch (the epochs the final retrain runs).</p>")
        parts.append(
            f"<p><b>{esc(best.get('trial_id'))}</b> #{esc(best.get('number'))} "
            f"{_badge(str(best.get('status')))}<br>{METRIC} "
            f"<b>{esc(fixed(selected_score(best)))}</b> at epoch "
            f"{esc(fmt(selected_epoch(best)))} of {esc(fmt(best.get('epochs_run')))}</p>"
        )
        parts.append(kv_table(sorted((best.get("params") or {}).items())))
    parts.append("</div></div>")
    return "".join(parts)


def _status_legend(statuses: Iterable[str], kind: str) -> list[tuple[str, str, str]]:
    """Legend entries for the statuses present, in the standard order."""
    present = set(statuses)
    order = [*STATUS_COLOURS, *sorted(present - set(STATUS_COLOURS))]
    return [(kind, STATUS_COLOURS.get(s, _OTHER_COLOUR), s) for s in order if s in present]


def _history_svg(trials: Sequence[dict]) -> str:
    """Each trial's best score vs trial number, and the best-so-far step line."""
    scored = [(t, s) for t, s in _scored(trials) if num(t.get("number")) is not None]
    if not scored:
        return note("No trial has a score yet.")
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
    extra = note(f"{missing} trial(s) without a score are not shown.") if missing else ""
    return plot.render(body, "optimization history") + extra


def _importance_section(study: optuna.Study | None) -> str:
    """Optuna's parameter importances as bars, or a note saying why there are none."""
    if study is None:
        return note("No Optuna study was given, so parameter importances are not available.")
    caveats: list[str] = []
    try:
        from optuna.importance import get_param_importances
        from optuna.trial import TrialState

        n_complete = len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)))
        if n_complete < 2:
            return note(
                f"Parameter importances need at least 2 complete trials; the study has "
                f"{n_complete}."
            )
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            importances = get_param_importances(study)
        caveats = sorted({str(w.message) for w in caught})
    except Exception as exc:  # any failure of an optional section becomes a note
        return note(f"Parameter importances could not be computed: {type(exc).__name__}: {exc}")
    values = [(name, num(v)) for name, v in importances.items()]
    items = [(n, v, "#1f77b4", f"{v:.3f}") for n, v in values if v is not None]
    if not items:
        return note("Optuna returned no parameter importances (no parameter varied).")
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
    return text + chart + "".join(note(f"Optuna: {c}") for c in caveats)


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
        return note("No trial reported an epoch yet.")
    values = [v for _, pts in lines for _, v in pts]
    last_epoch = max(max_t, *(e for _, pts in lines for e, _ in pts))
    statuses = {str(t.get("status")) for t, _ in lines}
    legend = [
        (k, STATUS_COLOURS[s], s)
        for s, k in (("completed", "dot"), ("pruned", "cross"), ("constant", "cross"),
                     ("failed", "dash"))
        if s in statuses
    ]
    legend += [
        ("line", STATUS_COLOURS.get(s, _OTHER_COLOUR), s)
        for s in sorted(statuses)
        if s not in ("completed", "pruned", "constant", "failed")
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
    body: list[str] = []
    top: list[str] = []
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
        if status in ("pruned", "constant"):
            why = "stopped by ASHA" if status == "pruned" else "one class for every cell"
            marks.append(
                cross(end_x, end_y, colour, title=f"{tip}: {why}", cls=f"marker-{status}")
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
        return note("No trials.")
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
                cells.append(f"<td>{esc(fmt(value))}</td>")
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
    overview: dict | None = None,
) -> None:
    """Write the run's self-contained HTML report atomically.

    The page holds: the reproduce command, settings, trial counts and the best trial; the final
    model (``search.report_final``): its members and decision threshold, metrics on
    validation_data at 0.5 and at the threshold beside the cross-validated estimate with CIs,
    confusion matrices, ROC curve, weighted F1 by threshold with the chosen point, per-patient
    accuracy; the validation cells it got wrong, as pictures with their P(ALL); a data
    overview (cells per split, fold and patient, sample cells of each class;
    ``search.gallery``); the optimization history; Optuna's parameter importances; every
    trial's learning curve; and the trials table. Plots are inline SVG and pictures inline PNG
    ``data:`` URIs; nothing is loaded from the network. Sections whose inputs are missing
    (``study``, ``final``, ``overview`` or any of ``final``'s keys None or absent, no scores
    yet, importances that cannot be computed) show a note instead of failing.

    Args:
        path: Destination file, e.g. ``runs/<name>/report.html``; its folder is created.
        trials: Trial dicts as for :func:`write_trials_csv`, with ``history`` rows holding
            ``epoch`` and ``val_weighted_f1``.
        study: The Optuna study behind the search, for parameter importances, or None.
        final: The final step's result, or None if it did not run: ``trial_id``, ``config``,
            ``epochs``, ``seeds``, ``members``, ``threshold``, ``threshold_source``,
            ``metrics`` (validation at 0.5), ``metrics_at_threshold``, ``cv``, ``cv_curve``,
            ``seed_summary``, ``roc``, ``per_patient`` and ``wrong`` (misclassified cells with
            ``image_id``, ``patient_id``, ``label``, ``p_all``, ``pixels``); see
            ``search.report_final.final_section`` and ``search.gallery.errors_section``.
        command: The command that reproduces the run; shown verbatim.
        settings: The run's fixed settings, shown as a table.
        max_t: ASHA's epoch budget; the learning curves' x axis spans 1..max_t.
        overview: ``{"counts": <the store manifest's splits/folds/patients>, "samples":
            {"ALL": [uint8 RGB arrays], "normal": [...]}}`` for the data overview, or None.
    """
    ordered = sorted(trials, key=lambda t: (t.get("number") is None, t.get("number") or 0))
    sections = [
        ("final", "Final model", final_section(final)),
        ("errors", "Misclassified validation cells", errors_section(final)),
        ("data", "Data", overview_section(overview)),
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
        f"<title>C-NMC search report</title><style>{_CSS}{GALLERY_CSS}</style></head><body><main>"
        f"{_header(ordered, command, settings)}<nav>{nav}</nav>{body}</main></body></html>\n"
    )
    atomic_write(path, page)
