"""Optuna as Ray Tune's searcher, told the truth about ASHA stops, and a compact live view.

Ray's stock ``OptunaSearch`` records a trial that ASHA stopped after one epoch as COMPLETE with
that one-epoch score, so TPE ranks a 1-epoch score against 30-epoch scores.
:class:`FidelityAwareOptunaSearch` records such a trial as PRUNED at its last step instead (its
learning curve kept as intermediate values), and a trial that ran the whole budget as COMPLETE
with its last epoch's score: every COMPLETE value is then measured at the same fidelity, and
``study.best_trial`` is the best full-budget run, the trial ``search.results.best_trial`` picks.
Picking it rather than the peak epoch of any trial is all of this search's lead over the stock
one in ``benchmarks/searchers.py`` (real replayed curves, 20 seeds: mean regret 0.0016 held-out
wF1 after 576 trial-epochs against 0.0090 for peaks; ratio 0.62, but its 90% interval over seeds
includes 1; see PERFORMANCE.md). TPE ranks trials by the rung they reached first and by their
score there second. It also names the objective
(``set_metric_names``) and leaves on each Optuna trial what optuna-dashboard should show: the Ray
trial id, the epochs run, the held-out AUC / sensitivity / specificity at the best epoch and the
node. ``benchmarks/searchers.py`` measures it against Ray's stock searchers on real curves and
(``--bench lcbench``) on YAHPO Gym's LCBench surrogate.

:class:`RungTPESampler` is a TPE that fits its model on one of ASHA's rungs, every trial's value
there counting whether ASHA stopped it or not (BOHB's rule, or rungs weighted by how well they
rank as the top one does). It is measured beside the default (plain ``TPESampler``) as
``ours-bohb`` / ``ours-weighted``; it is not the search's default (see PERFORMANCE.md).
"""

from __future__ import annotations

import copy
import logging
import math
import pickle
import random
import shutil
import sys
import time
import warnings
from typing import Any

from optuna.samplers import TPESampler
from optuna.trial import FrozenTrial, TrialState
from ray.tune import Callback, Stopper
from ray.tune.search.optuna import OptunaSearch

log = logging.getLogger(__name__)

# result keys copied onto the Optuna trial (as user attributes) from the trial's best epoch
ATTR_KEYS = ("val_roc_auc", "val_sensitivity", "val_specificity")


class FidelityAwareOptunaSearch(OptunaSearch):
    """``OptunaSearch`` that tells Optuna PRUNED for trials stopped before ``max_t``.

    A trial that is not stopped always runs to ``max_t`` epochs, so a trial that ends without
    error before ``max_t`` was stopped by the scheduler. A trial that ran to ``max_t`` is COMPLETE
    with its last value. A trial that failed is FAIL (the stock searcher records COMPLETE with its
    last value when one was reported).

    Args:
        *args: as ``OptunaSearch``.
        max_t: the epoch budget (ASHA's ``max_t``).
        metric_name: the objective's name in the study (optuna-dashboard shows it); default
            the metric's result key.
        **kwargs: as ``OptunaSearch``.
    """

    def __init__(self, *args: Any, max_t: int, metric_name: str | None = None,
                 **kwargs: Any) -> None:
        self._max_t = max_t
        self._metric_name = metric_name
        self._best: dict[str, dict[str, Any]] = {}  # trial id -> its best result so far (subset)
        super().__init__(*args, **kwargs)

    # rebuilt from the command on every run and never saved: the space is a function of this
    # project (search.space), and a function pickled into Tune's searcher state would tie a
    # resume to the code that wrote it (renamed or changed by an upgrade: a broken or stale
    # restore). What is saved is Ray's and Optuna's objects and plain values.
    _REBUILT = ("_space",)
    _ot_study: Any  # OptunaSearch's study (None until its space is set)

    def save(self, checkpoint_path: str) -> None:
        state = {k: v for k, v in self.__dict__.items() if k not in self._REBUILT}
        with open(checkpoint_path, "wb") as fh:
            pickle.dump(state, fh)

    def restore(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "rb") as fh:
            state = pickle.load(fh)
        if not isinstance(state, dict):
            raise ValueError(f"{checkpoint_path}: not a searcher state of this project "
                             f"({type(state).__name__}); rerun without --resume")
        # a state saved by an older release may still hold its space: this run's one stays
        self.__dict__.update({k: v for k, v in state.items() if k not in self._REBUILT})

    def _setup_study(self, mode: str | list) -> None:
        super()._setup_study(mode)
        if isinstance(self._metric, str):
            with warnings.catch_warnings():  # set_metric_names is marked experimental
                warnings.simplefilter("ignore")
                self._ot_study.set_metric_names([self._metric_name or self._metric])

    def suggest(self, trial_id: str) -> dict | None:
        params = super().suggest(trial_id)
        ot_trial = self._ot_trials.get(trial_id)
        if params is not None and ot_trial is not None:
            ot_trial.set_user_attr("ray_trial_id", trial_id)
        return params

    def _note(self, trial_id: str, result: dict[str, Any]) -> None:
        """Keep the trial's best epoch (by the metric) and what the study shows of it."""
        value = result.get(self.metric)
        if value is None:
            return
        best = self._best.get(trial_id)
        better = (best is None or (value > best["value"] if self.mode == "max"
                                   else value < best["value"]))
        keep = {k: result[k] for k in ATTR_KEYS if isinstance(result.get(k), (int, float))}
        node = result.get("node_id") or result.get("node_ip") or result.get("hostname")
        if better:
            self._best[trial_id] = {"value": value, "best_epoch": result.get("training_iteration"),
                                    **keep, **({"node_id": node} if node else {})}

    def on_trial_result(self, trial_id: str, result: dict[str, Any]) -> None:
        self._note(trial_id, result)
        if result.get(self.metric) is not None:
            super().on_trial_result(trial_id, result)

    def on_trial_complete(self, trial_id: str, result: dict[str, Any] | None = None,
                          error: bool = False) -> None:
        if trial_id in self._completed_trials or trial_id not in self._ot_trials:
            return super().on_trial_complete(trial_id, result, error)
        result = result or {}
        self._note(trial_id, result)
        value = result.get(self.metric)
        step = result.get("training_iteration")
        best = self._best.pop(trial_id, {})
        ot_trial = self._ot_trials[trial_id]
        try:
            if step is not None:
                ot_trial.set_user_attr("epochs_run", int(step))
            for key in ("best_epoch", *ATTR_KEYS, "node_id"):
                if best.get(key) is not None:
                    ot_trial.set_user_attr(key, best[key])
            if error:
                if value is not None and step is not None:
                    ot_trial.report(value, step)
                self._ot_study.tell(ot_trial, state=TrialState.FAIL)
            elif value is None or step is None:
                self._ot_study.tell(ot_trial, state=TrialState.PRUNED)
            elif step < self._max_t:
                # on_trial_result never sees the last result: record it, then PRUNED
                ot_trial.report(value, step)
                self._ot_study.tell(ot_trial, state=TrialState.PRUNED)
            else:  # the full-budget value: what ASHA compares, and what selection should use
                self._ot_study.tell(ot_trial, value, state=TrialState.COMPLETE)
        except Exception as e:  # e.g. a NaN value: Optuna refuses it; the search goes on
            log.warning("could not record trial %s in the study: %s", trial_id, e)
        self._completed_trials.add(trial_id)


class RungTPESampler(TPESampler):
    """TPE fitted on one of ASHA's rungs, with every trial's value at that rung, stopped or not.

    Stock TPE ranks COMPLETE trials first: once a few trials ran the whole budget, every trial
    ASHA stopped lands in the "bad" set and the low-fidelity ranking ASHA paid for is lost. This
    sampler builds the good/bad split on a single fidelity instead: each trial that reached a
    step (its intermediate value there, or its COMPLETE value at its last step) counts as
    COMPLETE with that value, whatever happened to it later.

    Rules (``rule``):

    - ``"bohb"`` (Falkner et al. 2018): the highest step that at least ``min_points`` trials
      reached. Trials stop at ASHA's rungs, so that is the highest rung with enough data.
    - ``"weighted"`` (after Hyper-Tune, Li et al. 2022): every step with ``min_points`` trials
      is a candidate; each suggestion draws one, the highest with weight 1 and each lower one
      with the Kendall tau (clipped at 0) between its ranking and the highest one's over the
      trials seen at both (0 when fewer than 3 are). A lower rung that orders trials as the top
      one does lends its larger sample; one that does not is ignored.

    Until no step has ``min_points`` trials this is plain TPE (random start-up first).

    Args:
        rule: ``"bohb"`` or ``"weighted"``.
        min_points: observations a rung needs (default: ``n_startup_trials``, at least the
            number of parameters + 1, as BOHB's ``min_points_in_model``).
        **kwargs: as ``TPESampler``.
    """

    RULES = ("bohb", "weighted")

    def __init__(self, rule: str = "bohb", min_points: int | None = None,
                 **kwargs: Any) -> None:
        if rule not in self.RULES:
            raise ValueError(f"RungTPESampler(rule={rule!r}): known rules are {self.RULES}")
        super().__init__(**kwargs)
        self.rule, self.min_points = rule, min_points
        self._pick = random.Random(kwargs.get("seed"))

    def _sample(self, study: Any, trial: FrozenTrial, search_space: dict[str, Any]
                ) -> dict[str, Any]:
        done = study._get_trials(deepcopy=False, states=(TrialState.COMPLETE,
                                                         TrialState.PRUNED), use_cache=False)
        need = self.min_points or max(self._n_startup_trials, len(search_space) + 1)
        at = _rung_values(done)
        rungs = sorted((s for s, v in at.items() if len(v) >= need), reverse=True)
        if not rungs:
            return super()._sample(study, trial, search_space)
        step = rungs[0]
        if self.rule == "weighted" and len(rungs) > 1:
            weights = [1.0] + [max(_kendall(at[s], at[step]), 0.0) for s in rungs[1:]]
            step = self._pick.choices(rungs, weights=weights)[0]
        view = []
        for t in done:
            if t.number in at[step]:
                c = copy.copy(t)
                c.state, c.value = TrialState.COMPLETE, at[step][t.number]
                view.append(c)
        rung_study: Any = _RungView(study, view)  # what TPE reads of a study, one rung's trials
        return super()._sample(rung_study, trial, search_space)


def _rung_values(trials: list[FrozenTrial]) -> dict[int, dict[int, float]]:
    """step -> {trial number: value at that step} (a COMPLETE value counts at the last step)."""
    at: dict[int, dict[int, float]] = {}
    for t in trials:
        values = {s: v for s, v in t.intermediate_values.items() if not math.isnan(v)}
        if t.state == TrialState.COMPLETE and t.value is not None:
            # FidelityAwareOptunaSearch leaves the epochs run (its last step is never reported);
            # Optuna's own loop reports the last step, whose value is the COMPLETE one
            last = t.user_attrs.get("epochs_run", t.last_step)
            values[int(last if last is not None else 0)] = t.value
        for s, v in values.items():
            at.setdefault(int(s), {})[t.number] = v
    return at


def _kendall(a: dict[int, float], b: dict[int, float]) -> float:
    """Kendall's tau between two rankings over their common keys (0 with fewer than 3)."""
    keys = [k for k in a if k in b]
    if len(keys) < 3:
        return 0.0
    s = 0
    for i, x in enumerate(keys):
        for y in keys[i + 1:]:
            s += (1 if (a[x] - a[y]) * (b[x] - b[y]) > 0 else
                  -1 if (a[x] - a[y]) * (b[x] - b[y]) < 0 else 0)
    return s / (len(keys) * (len(keys) - 1) / 2)


class _RungView:
    """A study whose finished trials are the rung view; all else is the real study's."""

    def __init__(self, study: Any, trials: list[FrozenTrial]) -> None:
        self._study, self._trials = study, trials

    def _get_trials(self, deepcopy: bool = False, states: Any = None,
                    use_cache: bool = False) -> list[FrozenTrial]:
        keep = [t for t in self._trials if states is None or t.state in states]
        if states is not None and TrialState.RUNNING in states:  # constant liar's pending trials
            keep += self._study._get_trials(deepcopy=False, states=(TrialState.RUNNING,),
                                            use_cache=False)
        return keep

    def __getattr__(self, name: str) -> Any:
        return getattr(self._study, name)


class ConstantStopper(Stopper):
    """Stop a trial whose held-out predictions are constant at ASHA's first rung or later.

    ASHA compares a trial with the others that reached its rung; the first trials to get there
    have nothing to be compared with and go on, and a constant predictor (one class for every
    held-out cell, no ranking: ``result[flag] == 1``, ``search.trainable.is_constant``) then
    spends the whole budget. This stops it at the first epoch ``>= grace_period`` it is constant,
    whatever the others did. Stopped before ``max_t``, :class:`FidelityAwareOptunaSearch`
    records it as PRUNED; ``search.results.collect_trials`` gives it the status ``constant``.

    Args:
        grace_period: ASHA's first rung (epochs).
        flag: the result key that is 1 for a constant epoch.
        time_attr: the result key counting epochs.
    """

    def __init__(self, grace_period: int, flag: str = "constant",
                 time_attr: str = "training_iteration") -> None:
        self.grace_period, self.flag, self.time_attr = grace_period, flag, time_attr

    def __call__(self, trial_id: str, result: dict[str, Any]) -> bool:
        return (int(result.get(self.time_attr) or 0) >= self.grace_period
                and bool(result.get(self.flag)))

    def stop_all(self) -> bool:
        return False


class LiveView(Callback):
    """One compact status line: trials running/pending/done/pruned/constant/failed and the best.

    On a terminal the line is redrawn in place (``\\r``, clear to end of line, cut to the
    terminal's width) at most every ``tty_every`` seconds and whenever a trial ends; in a log
    (the stream is not a terminal) a whole line is written at most every ``every`` seconds. The
    last line, at the end of the experiment, is always written.
    """

    def __init__(self, metric: str, max_t: int, total: int, every: float = 10.0,
                 stream: Any = None, score: str | None = None, tty_every: float = 1.0) -> None:
        self.metric, self.max_t, self.total = metric, max_t, total
        self.score = score or metric  # what is shown (the metric may carry a tie-break)
        self.stream = stream or sys.stderr
        isatty = getattr(self.stream, "isatty", None)
        self.tty = bool(isatty and isatty())
        self.every = tty_every if self.tty else every
        self._last = -float("inf")
        self._best: tuple[float, str, int, dict[str, Any], float] | None = None
        self._ended: dict[str, str] = {}
        self._start = time.monotonic()
        self._drawn = False  # a TTY line is on screen without its newline

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict,
                        **info: Any) -> None:
        value = result.get(self.metric)
        if value is not None and (self._best is None or value > self._best[0]):
            self._best = (value, trial.trial_id, result.get("training_iteration", 0),
                          dict(trial.config), result.get(self.score, value))
        self._show(trials)

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._ended[trial.trial_id] = self._ended_as(trial)
        self._show(trials, force=self.tty)

    def _ended_as(self, trial: Any) -> str:
        last = {"constant": None, "training_iteration": 0, **(trial.last_result or {})}
        if last["constant"]:
            return "constant"
        return "pruned" if last["training_iteration"] < self.max_t else "done"

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._ended[trial.trial_id] = "failed"
        self._show(trials, force=self.tty)

    def on_experiment_end(self, trials: list, **info: Any) -> None:
        self._show(trials, force=True)
        if self._drawn:
            self.stream.write("\n")
            self.stream.flush()
            self._drawn = False

    def line(self, trials: list) -> str:
        """The status text for ``trials``."""
        counts = {"running": 0, "pending": 0, "done": 0, "pruned": 0, "constant": 0,
                  "failed": 0}
        for t in trials:
            if t.trial_id in self._ended:
                counts[self._ended[t.trial_id]] += 1
            elif t.status in ("TERMINATED", "ERROR"):  # ended before a --resume restored it
                counts["failed" if t.status == "ERROR" else self._ended_as(t)] += 1
            elif t.status == "RUNNING":
                counts["running"] += 1
            elif t.status in ("PENDING", "PAUSED"):
                counts["pending"] += 1
        counts["pending"] += max(0, self.total - len(trials))
        text = (f"[{_clock(time.monotonic() - self._start)}] trials {self.total}: "
                + ", ".join(f"{k} {v}" for k, v in counts.items()))
        if self._best:
            _, _, epoch, cfg, shown = self._best
            params = " ".join(f"{k}={_short(v)}" for k, v in sorted(cfg.items()))
            text += f" | best {self.score} {shown:.4f} (epoch {epoch}: {params})"
        return text

    def _show(self, trials: list, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._last < self.every:
            return
        self._last = now
        text = self.line(trials)
        if self.tty:
            width = shutil.get_terminal_size((120, 24)).columns
            self.stream.write(f"\r{text[:max(width - 1, 20)]}\x1b[K")
            self._drawn = True
        else:
            self.stream.write(text + "\n")
        self.stream.flush()


def _clock(seconds: float) -> str:
    m, s = divmod(int(seconds), 60)
    return f"{m // 60:d}:{m % 60:02d}:{s:02d}"


def _short(v: Any) -> str:
    return f"{v:.3g}" if isinstance(v, float) else str(v)
