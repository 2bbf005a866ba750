"""What a search produced: one :class:`Trial` per Tune trial and the final step's
:class:`FinalResult`, with the rule that picks the trial the final step trains.

:func:`collect_trials` builds the trials once from Ray Tune's ``ResultGrid``; ``search/run.py``
(summary, study, printing), ``search/final.py`` and the report (``search/report.py``) read them
by attribute. :meth:`Trial.row` is a trial's row of ``trials.csv``. :func:`best_trial` is the
selection rule: the best full-budget run, never a ``constant`` one.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from search.trainable import CONSTANT

__all__ = ["CSV_COLUMNS", "METRIC", "MODE", "SCORE", "FinalResult", "Trial", "best_trial",
           "collect_trials", "selected_epoch", "selected_score"]

# val_weighted_f1, ties broken by AUC; AUC - 1 for a model calling one class (search/trainable.py)
METRIC, MODE = "objective", "max"
SCORE = "val_weighted_f1"
# The fixed columns of trials.csv, in order (param_<name> columns follow)
CSV_COLUMNS = ("trial_id", "number", "status", "best_score", "best_epoch", "epochs_run",
               "last_score", "error", "node_id", "nodes", "resumed_from_epoch", "started_at",
               "ended_at")
# Keys of a trial's per-epoch result that collect_trials reads (None where a row lacks one)
_ROW_KEYS = (METRIC, SCORE, "training_iteration", CONSTANT, "node_id", "pid",
             "resumed_from_epoch", "store_reads_in_process", "trial_started_at", "reported_at",
             "first_step_at", "train_seconds")


@dataclass(frozen=True)
class Trial:
    """One Tune trial as the search recorded it."""

    trial_id: str  # Tune's trial id
    number: int  # order in which the searcher suggested it (from Tune's experiment tag)
    status: str  # completed | pruned (stopped by ASHA) | constant | failed | pending
    params: dict[str, Any] = field(default_factory=dict)  # the sampled configuration
    error: str | None = None  # the exception's type and last line, for a failed trial
    history: list[dict[str, Any]] = field(default_factory=list)  # one result dict per epoch
    best_score: float | None = None  # val_weighted_f1 at the epoch of the best objective
    best_epoch: int | None = None  # that epoch (the earliest on a tie)
    epochs_run: int = 0  # epochs reported
    best_objective: float | None = None  # the highest objective of any epoch
    last_objective: float | None = None  # the objective at the last epoch run
    last_score: float | None = None  # val_weighted_f1 at the last epoch run
    best_constant: bool = False  # the best epoch called one class for every held-out cell
    last_constant: bool = False  # the last epoch did
    node_id: str | None = None  # Ray node of the last epoch
    pid: int | None = None  # worker process of the last epoch
    nodes: list[str] = field(default_factory=list)  # every node it ran on, first first
    resumed_from_epoch: int = 0  # the latest epoch it was restored from a checkpoint at
    store_reads_in_process: int | None = None  # store reads of its worker process so far
    started_at: float | None = None  # Unix time the trial started
    ended_at: float | None = None  # Unix time of its last report
    path: str | None = None  # its Tune trial folder
    first_step_at: float | None = None  # Unix time of its first training step
    train_seconds: float = 0.0  # seconds spent training, all epochs

    def row(self) -> dict[str, Any]:
        """The trial's fixed ``trials.csv`` columns (:data:`CSV_COLUMNS`) and their values."""
        return {c: getattr(self, c) for c in CSV_COLUMNS}

    @property
    def ran_full_budget(self) -> bool:
        """Whether it ran the whole epoch budget and scored its last epoch, not constant."""
        return (self.status == "completed" and self.last_objective is not None
                and not self.last_constant)


@dataclass(frozen=True)
class FinalResult:
    """The final step's result (``search.final.run_final``), as the report and summary read it.

    ``run_final`` fills every field; the report takes any of them as None (a note instead).
    """

    trial_id: str | None = None  # the trial whose configuration was trained
    config: dict[str, Any] | None = None  # the members' TrainConfig (no held-out fold)
    epochs: int | None = None  # epochs each member trained
    seeds: Sequence[int] = ()  # the members' seeds
    metrics: dict[str, Any] | None = None  # validation_data at threshold 0.5 (binary_metrics)
    metrics_at_threshold: dict[str, Any] | None = None  # validation_data at the threshold
    threshold: float | None = None  # the decision threshold stored in the export
    threshold_source: str | None = None  # how the threshold was chosen, in words
    cv: dict[str, Any] | None = None  # out-of-fold estimate at the threshold (cv mode)
    cv_curve: dict[str, Any] | None = None  # out-of-fold weighted F1 by threshold
    seed_summary: dict[str, Any] | None = None  # held-out scores' spread over seeds
    members: list[dict[str, Any]] | None = None  # fold, seed, epochs, started_at, ended_at
    wrong: list[dict[str, Any]] | None = None  # most confidently wrong validation cells
    samples: dict[str, list[Any]] | None = None  # a few training cells per class (pixels)
    roc: dict[str, Any] | None = None  # validation ROC curve: fpr, tpr
    per_patient: list[dict[str, Any]] | None = None  # validation accuracy per patient
    rule: dict[str, Any] | None = None  # the exported decision rule (leukemia.rules.Rule)
    # validation_data under the batch variants (leukemia.evaluate.transductive_scores)
    transductive: dict[str, Any] | None = None


def collect_trials(results: Iterable[Any], max_t: int) -> list[Trial]:
    """One :class:`Trial` per result of a Ray Tune ``ResultGrid``, sorted by number."""
    trials: list[Trial] = []
    for r in results:
        df = r.metrics_dataframe
        history = [] if df is None or df.empty else [
            {k: _clean(v) for k, v in row.items()}
            for row in df.drop_duplicates("training_iteration", keep="last")
            .sort_values("training_iteration").to_dict("records")]
        rows = [{**dict.fromkeys(_ROW_KEYS), **h} for h in history]  # every key read
        scores = [(h[METRIC], -int(h["training_iteration"]), i) for i, h in enumerate(rows)
                  if h[METRIC] is not None]
        top = rows[max(scores)[2]] if scores else None
        last: dict[str, Any] = rows[-1] if rows else dict.fromkeys(_ROW_KEYS)
        epochs = int(last["training_iteration"]) if rows else 0
        meta = {"trial_id": None, "experiment_tag": "0", **(r.metrics or {})}
        tag = str(meta["experiment_tag"]).split("_")[0]
        # constant: ended (stopped, or at the budget) predicting one class, ranking nothing
        status = ("failed" if r.error else "pending" if not rows else "constant"
                  if last[CONSTANT] else "completed" if epochs >= max_t else "pruned")
        trials.append(Trial(
            trial_id=meta["trial_id"] or (Path(r.path).name.split("_")[-1] if r.path else "?"),
            number=int(tag) if tag.isdigit() else len(trials) + 1,
            params=dict(r.config or {}), status=status,
            error=_short_error(r.error) if r.error else None, history=history,
            best_score=top[SCORE] if top else None,
            best_epoch=int(top["training_iteration"]) if top else None, epochs_run=epochs,
            best_objective=top[METRIC] if top else None,
            last_objective=last[METRIC], last_score=last[SCORE],
            best_constant=bool(top and top[CONSTANT]), last_constant=bool(last[CONSTANT]),
            node_id=last["node_id"], pid=last["pid"],
            nodes=list(dict.fromkeys(h["node_id"] for h in rows if h["node_id"])),
            resumed_from_epoch=max((h["resumed_from_epoch"] or 0 for h in rows), default=0),
            store_reads_in_process=last["store_reads_in_process"],
            started_at=last["trial_started_at"], ended_at=last["reported_at"], path=r.path,
            first_step_at=next((h["first_step_at"] for h in rows if h["first_step_at"]), None),
            train_seconds=sum(h["train_seconds"] or 0 for h in rows)))
    return sorted(trials, key=lambda t: t.number)


def best_trial(trials: Sequence[Trial]) -> Trial | None:
    """The trial whose configuration the final step trains: the best full-budget run.

    Among the trials that ran the whole epoch budget (status ``completed``), the highest
    objective at the last epoch (then the earlier trial): every candidate is then scored at the
    same fidelity, at the epoch count the final trains for. Picking the peak epoch of any trial
    instead picks the top of a curve that moves by ±0.03 between epochs, and ASHA-stopped trials
    at low fidelity; on real replayed curves that doubled the epochs needed to get within 0.01
    of the best configuration (``benchmarks/searchers.py``, PERFORMANCE.md). When no trial ran
    the whole budget, the highest objective at any epoch (then fewer epochs, then earlier).
    A trial whose selected epoch was constant (one class for every held-out cell, no ranking:
    ``last_constant`` / ``best_constant``) is never picked; None when no other trial scored.
    """
    full = [t for t in trials if t.ran_full_budget]
    if full:
        return max(full, key=lambda t: (t.last_objective or 0.0, -t.number))
    scored = [t for t in trials if t.best_objective is not None and not t.best_constant]
    if not scored:
        return None
    return max(scored, key=lambda t: (t.best_objective or 0.0, -(t.best_epoch or 0), -t.number))


def selected_epoch(trial: Trial) -> int:
    """The epoch at which :func:`best_trial` judged ``trial``: its last for a full-budget run."""
    return int(trial.epochs_run if trial.ran_full_budget else trial.best_epoch or 0)


def selected_score(trial: Trial) -> float | None:
    """The held-out score :func:`best_trial` judged ``trial`` by (at :func:`selected_epoch`)."""
    return trial.last_score if trial.ran_full_budget else trial.best_score


def _clean(v: Any) -> Any:
    """A plain Python value; NaN becomes None."""
    if hasattr(v, "item"):
        v = v.item()
    if isinstance(v, float) and math.isnan(v):
        return None
    return v


def _short_error(e: BaseException) -> str:
    """The exception's type and its last non-empty line (300 characters at most)."""
    text = str(e).strip().splitlines()
    tail = [ln for ln in text if ln.strip()][-1:] or [type(e).__name__]
    return f"{type(e).__name__}: {tail[0][:300]}"
