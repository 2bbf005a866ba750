"""Write a search's results: ``trials.csv`` and one self-contained ``report.html``.

The search driver calls :func:`write_trials_csv` as trials finish and :func:`write_report` at the
end. The report is ``templates/report.html.j2`` rendered by Jinja2 with autoescape: inline CSS,
matplotlib figures as inline SVG, cell pictures as PNG ``data:`` URIs; no JavaScript and no
network, so it opens anywhere. This module draws the search (optimization history, Optuna's
parameter importances, learning curves with ASHA's stops, the trials); ``search.report_final``
the final model and ``search.gallery`` the pictures. The objective is ``val_weighted_f1`` (the
C-NMC 2019 challenge metric), maximised; the best trial is ``search.results.best_trial``'s, never a
``constant`` one (one class for every held-out cell). Both files are replaced atomically.
"""

from __future__ import annotations

import csv
import io
import json
import time
import warnings
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import jinja2
from markupsafe import Markup
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from leukemia.files import atomic_write
from search import gallery
from search.gallery import figure, num, svg
from search.report_final import final_section
from search.results import (
    CSV_COLUMNS,
    FinalResult,
    Trial,
    best_trial,
    selected_epoch,
    selected_score,
)

if TYPE_CHECKING:
    import optuna

__all__ = ["write_report", "write_trials_csv"]

METRIC = "val_weighted_f1"  # history key plotted as learning curves; the trials' objective
STATUS_COLOURS = {
    "completed": "#1f77b4",
    "pruned": "#e67e22",
    "constant": "#8e44ad",  # stopped: one class for every held-out cell, no ranking
    "failed": "#c0392b",
    "running": "#7f8c8d",
    "pending": "#b0b7bd",
}
# How a learning curve ends: marker, its legend text
_ENDS = {"completed": ("o", "completed"), "pruned": ("x", "pruned (stopped by ASHA)"),
         "constant": ("X", "constant (one class for every cell)"), "failed": ("o", "failed")}


def _colour(status: str) -> str:
    """A status's colour; grey for one the report does not know."""
    return STATUS_COLOURS.get(status, "#555555")


def _table(trials: Sequence[Trial]) -> tuple[list[str], list[list[Any]]]:
    """Columns and raw row values of the trials table (parameters in first-seen order)."""
    params: dict[str, None] = {}
    for trial in trials:
        params.update(dict.fromkeys(trial.params))
    rows = [[*t.row().values(), *({**params, **t.params}[p] for p in params)]  # absent: None
            for t in trials]
    return [*CSV_COLUMNS, *(f"param_{p}" for p in params)], rows


def _csv_cell(value: Any) -> str:
    """A CSV cell: blank for None/NaN, JSON for lists and dicts, else ``str``."""
    if value is None or (isinstance(value, float) and value != value):
        return ""
    return json.dumps(value) if isinstance(value, (list, tuple, dict)) else str(value)


def write_trials_csv(path: Path, trials: Sequence[Trial]) -> None:
    """Write one CSV row per trial, sorted by trial number, atomically.

    The columns are ``trial_id, number, status, best_score, best_epoch, epochs_run, last_score
    (the score at the last epoch run: what picks the best of the full-budget trials), error,
    node_id, nodes, resumed_from_epoch, started_at, ended_at`` and then ``param_<name>`` for
    every parameter of any trial (in first-seen order); a parameter a trial does not have (a
    conditional one) is blank, as are None and NaN values.

    Args:
        path: Destination file, e.g. ``runs/<name>/trials.csv``; its folder is created.
        trials: The search's trials (``search.results.collect_trials``).
    """
    columns, rows = _table(sorted(trials, key=lambda t: t.number))
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(columns)
    writer.writerows([_csv_cell(v) for v in row] for row in rows)
    atomic_write(path, buffer.getvalue())


def _when(seconds: Any) -> str:
    """A Unix time as UTC ``YYYY-MM-DD HH:MM:SS``, or a dash."""
    s = num(seconds)
    return "—" if s is None else time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(s))


def _best(trials: Sequence[Trial]) -> dict[str, Any] | None:
    """The search's best trial (``search.results.best_trial``) with the score it was judged by."""
    best: Trial | None
    if all(t.best_objective is not None for t in trials if t.best_score is not None):
        best = best_trial(trials)  # None when every scored trial was constant
    else:  # trials recorded before the objective was: the highest best score
        scored = [t for t in trials if num(t.best_score) is not None and t.status != "constant"]
        best = max(scored, key=lambda t: t.best_score or 0.0, default=None)
    if best is None:
        return None
    return {"trial_id": best.trial_id, "number": best.number, "status": best.status,
            "epochs_run": best.epochs_run, "score": selected_score(best),
            "epoch": selected_epoch(best), "params": sorted(best.params.items())}


def _history(trials: Sequence[Trial]) -> Markup | None:
    """Each trial's best score vs trial number by status, and the best-so-far step line."""
    scored = [t for t in trials if num(t.best_score) is not None]
    if not scored:
        return None
    fig, ax = figure(8, 3.4)
    for status in dict.fromkeys(t.status for t in scored):
        mine = [t for t in scored if t.status == status]
        ax.scatter([t.number for t in mine], [num(t.best_score) or 0.0 for t in mine],
                   color=_colour(status), label=status, zorder=3)
    done = [t for t in scored if t.status == "completed"]
    if done:
        best = [max(t.best_score or 0.0 for t in done[: i + 1]) for i in range(len(done))]
        ax.step([t.number for t in done] + [scored[-1].number], best + best[-1:],
                where="post", color="#222222", label="best so far (completed)")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set(xlabel="trial number", ylabel=f"best {METRIC}")
    ax.grid(alpha=0.3)
    ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize=9)
    return svg(fig)


def _importances(study: optuna.Study | None) -> dict[str, Any]:
    """Optuna's parameter importances plot, or a note saying why there is none."""
    if study is None:
        return {"note": "No Optuna study was given, so parameter importances are not available."}
    try:
        import matplotlib
        import optuna
        from optuna.trial import TrialState

        n = len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)))
        if n < 2:
            return {"note": f"Parameter importances need at least 2 complete trials; the study "
                            f"has {n}."}
        matplotlib.use("Agg")  # Optuna draws with pyplot; the driver has no display
        import matplotlib.pyplot as plt

        with warnings.catch_warnings(record=True) as caught, matplotlib.rc_context():
            warnings.simplefilter("always")
            ax = optuna.visualization.matplotlib.plot_param_importances(study)
            fig = cast(Figure, ax.figure)
            fig.set_size_inches(8, 1.2 + 0.4 * len(ax.get_yticks()))
            fig.set_layout_engine("constrained")
            ax.legend().remove()  # one objective: its legend says nothing
            picture = svg(fig)
            plt.close(fig)
    except Exception as exc:  # any failure of an optional section becomes a note
        return {"note": f"Parameter importances could not be computed: "
                        f"{type(exc).__name__}: {exc}"}
    caveats = sorted({str(w.message) for w in caught
                      if not issubclass(w.category, optuna.exceptions.ExperimentalWarning)})
    return {"figure": picture, "complete": n, "caveats": caveats}


def _curves(trials: Sequence[Trial], max_t: int, best: dict | None) -> Markup | None:
    """Validation weighted F1 per epoch, one line per trial, its end marked by its status."""
    lines = []
    for trial in trials:
        rows = [{"epoch": i + 1, METRIC: None, **row} for i, row in enumerate(trial.history)]
        raw = [(num(row["epoch"]), num(row[METRIC])) for row in rows]
        pts = [(e, v) for e, v in raw if e is not None and v is not None]
        if pts:
            lines.append((trial, pts))
    if not lines:
        return None
    fig, ax = figure(8, 4)
    labelled: set[str] = set()
    for trial, pts in lines:
        status, is_best = trial.status, best is not None and trial.number == best["number"]
        colour = "#222222" if is_best else _colour(status)
        marker, text = _ENDS.get(status, ("o" if len(pts) == 1 else "", status))
        label = "best trial" if is_best else text if text not in labelled else None
        labelled.add(label or "")
        ax.plot(*zip(*pts), color=colour, lw=2.5 if is_best else 1.3, label=label,
                alpha=1 if is_best else 0.75, linestyle="--" if status == "failed" else "-",
                zorder=3 if is_best else 2, marker=marker, markevery=[len(pts) - 1],
                markersize=9 if marker in ("x", "X") else 6,
                markerfacecolor="none" if status == "failed" else colour)
        ax.annotate(f"#{trial.number}", pts[-1], xytext=(5, 0), textcoords="offset points",
                    fontsize=7, color=colour, va="center")
    ax.set(xlim=(0.8, max(max_t, *(e for _, pts in lines for e, _ in pts)) + 0.4),
           xlabel="epoch", ylabel=METRIC)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(alpha=0.3)
    ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize=9)
    return svg(fig)


def _fmt(value: Any) -> str:
    """Short text for a value: a dash for None, 4 significant digits for floats."""
    if value is None:
        return "—"
    if isinstance(value, float):
        return "NaN" if value != value else f"{value:.4g}"
    if isinstance(value, (list, tuple)):
        return ", ".join(_fmt(v) for v in value)
    return str(value)


def _fixed(value: Any) -> str:
    """A metric with 4 decimals, or a dash when missing or not finite."""
    v = num(value)
    return "—" if v is None else f"{v:.4f}"


_ENV = jinja2.Environment(
    loader=jinja2.FileSystemLoader(Path(__file__).parent / "templates"),
    autoescape=True, undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)
_ENV.filters.update(fmt=_fmt, fixed=_fixed, when=_when)
_ENV.globals.update(colour=_colour)


def write_report(path: Path, *, trials: Sequence[Trial], study: optuna.Study | None,
                 final: FinalResult | None, command: str, settings: dict, max_t: int,
                 overview: dict | None = None) -> None:
    """Write the run's self-contained HTML report atomically.

    The page holds the reproduce command, settings, trial counts and the best trial; the final
    model (``search.report_final``); the validation cells it got wrong and a data overview
    (``search.gallery``); the optimization history; Optuna's parameter importances; every
    trial's learning curve with ASHA's stops marked; and the trials table. A section whose
    input is missing (``study``, ``final``, ``overview``, any of ``final``'s fields, no scores
    yet, importances that cannot be computed) shows a note instead.

    Args:
        path: Destination file, e.g. ``runs/<name>/report.html``; its folder is created.
        trials: The search's trials, as for :func:`write_trials_csv`, with ``history`` rows
            holding ``epoch`` and ``val_weighted_f1``.
        study: The Optuna study behind the search, for parameter importances, or None.
        final: The final step's result (``search.final.run_final``), or None.
        command: The command that reproduces the run; shown verbatim.
        settings: The run's fixed settings, shown as a table.
        max_t: ASHA's epoch budget; the learning curves' x axis spans 1..max_t.
        overview: ``{"counts": <the store manifest's splits/folds/patients>, "samples":
            {"ALL": [uint8 RGB arrays], "normal": [...]}}`` for the data overview, or None.
    """
    ordered = sorted(trials, key=lambda t: t.number)
    counts = Counter(t.status for t in ordered)
    order = [*STATUS_COLOURS, *sorted(set(counts) - set(STATUS_COLOURS))]
    best = _best(ordered)
    fin = final_section(final)
    columns, rows = _table(ordered)
    page = _ENV.get_template("report.html.j2").render(
        metric=METRIC, generated=_when(time.time()), command=command, settings=settings,
        counts=[(s, counts[s]) for s in order if counts[s]], n_trials=len(ordered), best=best,
        any_constant=any(t.status == "constant" for t in ordered), final=fin,
        errors=gallery.errors(final),
        overview=gallery.overview(overview), history=_history(ordered),
        unscored=sum(num(t.best_score) is None for t in ordered),
        importances=_importances(study), curves=_curves(ordered, max_t, best),
        columns=[c.removeprefix("param_") for c in columns], rows=rows)
    atomic_write(path, page)
