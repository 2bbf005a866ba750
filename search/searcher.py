"""Optuna as Ray Tune's searcher, told the truth about ASHA stops, and a compact live view.

Ray's stock ``OptunaSearch`` records a trial that ASHA stopped after one epoch as COMPLETE with
that one-epoch score, so TPE ranks a 1-epoch score against 30-epoch scores.
:class:`FidelityAwareOptunaSearch` records such a trial as PRUNED at its last step instead (its
learning curve kept as intermediate values), and a trial that ran the whole budget as COMPLETE
with its best epoch's score (the score the search selects on).
"""

from __future__ import annotations

import logging
import sys
import time
from typing import Any

from optuna.trial import TrialState
from ray.tune import Callback
from ray.tune.search.optuna import OptunaSearch

log = logging.getLogger(__name__)


class FidelityAwareOptunaSearch(OptunaSearch):
    """``OptunaSearch`` that tells Optuna PRUNED for trials stopped before ``max_t``.

    A trial that is not stopped always runs to ``max_t`` epochs, so a trial that ends without
    error before ``max_t`` was stopped by the scheduler.
    """

    def __init__(self, *args: Any, max_t: int, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._max_t = max_t
        self._best: dict[str, float] = {}

    def on_trial_result(self, trial_id: str, result: dict[str, Any]) -> None:
        value = result.get(self.metric)
        if value is not None:
            self._best[trial_id] = max(value, self._best.get(trial_id, -float("inf")))
        super().on_trial_result(trial_id, result)

    def on_trial_complete(self, trial_id: str, result: dict[str, Any] | None = None,
                          error: bool = False) -> None:
        if trial_id in self._completed_trials or trial_id not in self._ot_trials or error:
            return super().on_trial_complete(trial_id, result, error)
        value = (result or {}).get(self.metric)
        step = (result or {}).get("training_iteration")
        if value is None or step is None:
            return super().on_trial_complete(trial_id, result, error)
        ot_trial = self._ot_trials[trial_id]
        best = max(value, self._best.pop(trial_id, value))
        try:
            if step < self._max_t:
                # on_trial_result never sees the last result: record it, then PRUNED
                ot_trial.report(value, step)
                self._ot_study.tell(ot_trial, state=TrialState.PRUNED)
            else:
                self._ot_study.tell(ot_trial, best, state=TrialState.COMPLETE)
        except Exception as e:  # e.g. a NaN value: Optuna refuses it; the search goes on
            log.warning("could not record trial %s in the study: %s", trial_id, e)
        self._completed_trials.add(trial_id)


class LiveView(Callback):
    """One compact status line: trials running/pending/done/pruned/failed and the best so far."""

    def __init__(self, metric: str, max_t: int, total: int, every: float = 5.0,
                 stream: Any = None, score: str | None = None) -> None:
        self.metric, self.max_t, self.total, self.every = metric, max_t, total, every
        self.score = score or metric  # what is shown (the metric may carry a tie-break)
        self.stream = stream or sys.stderr
        self._last = 0.0
        self._best: tuple[float, str, int, dict[str, Any], float] | None = None
        self._ended: dict[str, str] = {}
        self._start = time.monotonic()

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict,
                        **info: Any) -> None:
        value = result.get(self.metric)
        if value is not None and (self._best is None or value > self._best[0]):
            self._best = (value, trial.trial_id, result.get("training_iteration", 0),
                          dict(trial.config), result.get(self.score, value))
        self._show(trials)

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        it = (trial.last_result or {}).get("training_iteration", 0)
        self._ended[trial.trial_id] = "pruned" if it < self.max_t else "done"
        self._show(trials, force=True)

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._ended[trial.trial_id] = "failed"
        self._show(trials, force=True)

    def _show(self, trials: list, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._last < self.every:
            return
        self._last = now
        counts = {"running": 0, "pending": 0, "done": 0, "pruned": 0, "failed": 0}
        for t in trials:
            if t.trial_id in self._ended:
                counts[self._ended[t.trial_id]] += 1
            elif t.status == "RUNNING":
                counts["running"] += 1
            elif t.status in ("PENDING", "PAUSED"):
                counts["pending"] += 1
        counts["pending"] += max(0, self.total - len(trials))
        line = (f"[{_clock(now - self._start)}] trials {self.total}: "
                + ", ".join(f"{k} {v}" for k, v in counts.items()))
        if self._best:
            _, _, epoch, cfg, shown = self._best
            params = " ".join(f"{k}={_short(v)}" for k, v in sorted(cfg.items()))
            line += f" | best {self.score} {shown:.4f} (epoch {epoch}: {params})"
        print(line, file=self.stream, flush=True)


def _clock(seconds: float) -> str:
    m, s = divmod(int(seconds), 60)
    return f"{m // 60:d}:{m % 60:02d}:{s:02d}"


def _short(v: Any) -> str:
    return f"{v:.3g}" if isinstance(v, float) else str(v)
