"""Searchers replayed on real learning curves: regret versus training budget, ours against peers.

Every method runs as a real search over the discretised space of ``benchmarks/curves.py`` (the
real Tuner, scheduler and searcher classes, or Optuna's own loop), with a trainable that replays
the stored curve of the sampled configuration: it reports each epoch's held-out metrics and
accounts the epoch's stored wall seconds instead of training. Each run goes on until it has spent
``--budget`` trial-epochs; runs are sequential (one trial at a time), so the run's state after
``B`` trial-epochs is exactly what a search given the budget ``B`` would have done.

Methods (ASHA / pruner settings shared: ``--grace-period``, ``--reduction-factor``, ``max_t`` =
the table's epochs; TPE seeded per run):

- ``ours``: ``search.searcher.FidelityAwareOptunaSearch`` (TPE, ``--startup`` random trials) +
  ASHA; selects with ``search.results.best_trial`` (what the search's final step trains): the best
  last-epoch score among the trials that ran the whole budget, which is also the study's
  ``best_trial`` (row ``ours, any-epoch pick``: the same runs selected as ``search/final.py``
  did before, by the highest score at any epoch of any trial).
- ``optuna+asha``: Ray's stock ``OptunaSearch`` (TPE, Optuna's defaults) + ASHA; selects as
  ``ResultGrid.get_best_result()`` does (highest last reported value of any trial); row
  ``optuna+asha, ours' pick``: the same runs selected as ours selects.
- ``random+asha``: ``BasicVariantGenerator`` + ASHA; selects as ``get_best_result()``.
- ``tpe-full``: stock ``OptunaSearch``, no early stopping (every trial to ``max_t``).
- ``optuna-sha`` / ``optuna-hb``: Optuna alone (``TPESampler`` + ``SuccessiveHalvingPruner`` /
  ``HyperbandPruner``), no Ray; selects ``study.best_trial`` (COMPLETE trials only).
- ``--sweep``: ours again at other grace periods, reduction factors and start-up counts.

A selection's regret is the table's best full-budget score minus the selected configuration's
full-budget score (held-out weighted F1 at the last epoch; a run that diverged scores 0).
Prints, per method, the mean regret over seeds at several budgets (trial-epochs, and replayed
seconds), the median budget from which a seed's selection stays within ``--target`` of the best,
Ray's cost per replayed trial and the share of epochs spent re-running a configuration already
run (the space is a 72-point grid; a fixed-seed CPU run would repeat itself just the same), and
last the headline ratio: the budget ``ours`` needs over what ``optuna+asha`` needs. What it
measured, and how long each run takes: PERFORMANCE.md, "Searchers on real learning curves".

    python benchmarks/searchers.py                   # 20 seeds, 576 trial-epochs
    python benchmarks/searchers.py --quick           # CI: 3 seeds, 96 trial-epochs
    python benchmarks/searchers.py --sweep --plot benchmarks/data/searchers.svg
    python benchmarks/searchers.py --bench lcbench   # the same searches on YAHPO Gym's LCBench
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from _common import REPO  # noqa: F401  (puts the repository on sys.path)
from curves import GRID, TABLE, read_table

os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")  # no per-trial result files
os.environ.setdefault("TUNE_WARN_THRESHOLD_S", "60")
os.environ.setdefault("TUNE_MAX_PENDING_TRIALS_PG", "1")  # one trial at a time: no idle PGs
os.environ.setdefault("RAY_AUTH_MODE", "disabled")

from search.trainable import OBJECTIVE, objective  # noqa: E402

KEYS = tuple(GRID)
REPORTED = ("val_weighted_f1", "val_roc_auc", "val_sensitivity", "val_specificity", "val_loss")
METHODS = ("ours", "optuna+asha", "random+asha", "tpe-full", "optuna-sha", "optuna-hb",
           "ours-bohb", "ours-weighted")
RUNG_RULES = {"ours-bohb": "bohb", "ours-weighted": "weighted"}  # ours + search.searcher's
# RungTPESampler (TPE fitted on one of ASHA's rungs)
BASELINE = "optuna+asha"
ANY_EPOCH = "ours, any-epoch pick"
STOCK_COMPLETE = "optuna+asha, ours' pick"
COLOURS = {"ours": "#d62728", "optuna+asha": "#1f77b4", "random+asha": "#7f7f7f",
           "tpe-full": "#2ca02c", "optuna-sha": "#9467bd", "optuna-hb": "#ff7f0e",
           "ours-bohb": "#e377c2", "ours-weighted": "#17becf", "bohb": "#bcbd22",
           "random-full": "#8c564b", "one-epoch": "#393b79"}


# ---------------------------------------------------------------------------------------------
# The table


@dataclass
class Table:
    """The learning curves, by configuration."""

    values: dict[str, list[Any]]  # the space: each knob's values
    index: dict[tuple, int]  # knob values -> config id
    curves: dict[int, list[dict[str, float]]]  # per-epoch metrics (objective, seconds, ...)
    failed: set[int]  # configs whose loss diverged (their curve ends early)
    max_t: int
    true: dict[int, float] = field(default_factory=dict)  # full-budget score

    @property
    def best(self) -> float:
        return max(self.true.values())

    def config_id(self, params: dict[str, Any]) -> int:
        return self.index[tuple(params[k] for k in KEYS)]

    def define(self, trial: Any) -> None:
        """The space, define-by-run (Optuna and OptunaSearch)."""
        define_space(trial, self.values)

    def random_space(self) -> dict[str, Any]:
        """The space as Ray Tune distributions (random search, TuneBOHB)."""
        from ray import tune

        return {k: tune.choice(v) for k, v in self.values.items()}

    def trainable(self) -> Any:
        """The Ray trainable that replays a configuration's curve."""
        from ray import tune

        return tune.with_parameters(replay, table=self)


def _typed(key: str, text: str) -> Any:
    kind = type(GRID[key][0])
    return text == "True" if kind is bool else kind(text)


def load_table(path: str | Path) -> Table:
    """Read ``curves.csv.gz``; only configurations with a whole curve (or a divergence) count."""
    rows = read_table(path)
    if not rows:
        raise FileNotFoundError(f"{path}: no learning curves; generate them with "
                                "`nice -n 19 python benchmarks/curves.py`")
    by: dict[int, list[dict[str, str]]] = {}
    for r in rows:
        by.setdefault(int(r["config_id"]), []).append(r)
    max_t = max(int(r["epoch"]) for r in rows)
    index, curves, failed = {}, {}, set()
    for cid, rs in sorted(by.items()):
        rs.sort(key=lambda r: int(r["epoch"]))
        bad = rs[-1]["status"] != "ok"
        if len(rs) < max_t and not bad:
            continue  # a partial run (should not happen: configs are written whole)
        curve = []
        for r in rs:
            if r["status"] != "ok":
                break
            m = {k: float(r[k]) for k in (*REPORTED, "wall_seconds")}
            curve.append({**m, OBJECTIVE: objective(m)})
        index[tuple(_typed(k, rs[0][k]) for k in KEYS)] = cid
        curves[cid] = curve
        if bad:
            failed.add(cid)
    values = {k: sorted({key[i] for key in index}, key=lambda v: (str(type(v)), v))
              for i, k in enumerate(KEYS)}
    size = math.prod(len(v) for v in values.values())
    if size != len(index):
        raise ValueError(f"{path}: {len(index)} whole configurations, but the grid of their "
                         f"values has {size}; finish the table (`python benchmarks/curves.py` "
                         "resumes where it stopped)")
    table = Table(values, index, curves, failed, max_t)
    table.true = {c: (0.0 if c in failed else curves[c][-1]["val_weighted_f1"]) for c in curves}
    return table


def define_space(trial: Any, values: dict[str, list[Any]]) -> None:
    """The discretised space, define-by-run (one categorical per knob)."""
    for k in KEYS:
        trial.suggest_categorical(k, values[k])


# ---------------------------------------------------------------------------------------------
# One search


@dataclass
class Run:
    """What one search did, in order: (config id, epochs run, diverged) per trial."""

    trials: list[tuple[int, int, bool]] = field(default_factory=list)
    seconds: float = 0.0  # wall time of the search itself


def replay(config: dict[str, Any], table: Table) -> None:
    """Ray trainable: report the stored curve of ``config``, one epoch per result."""
    import ray
    from ray import tune

    cid = table.config_id(config)
    node = ray.get_runtime_context().get_node_id()
    spent = 0.0
    for m in table.curves[cid]:
        spent += m["wall_seconds"]
        tune.report({**m, "replayed_seconds": spent, "config_id": cid, "node_id": node})
    if cid in table.failed:
        raise RuntimeError(f"config {cid}: training loss became NaN (replayed)")


class _Budget:
    """Counts trial-epochs; says when the budget is spent. Shared by the Ray and Optuna runs."""

    def __init__(self, budget: int) -> None:
        self.budget, self.spent = budget, 0

    def spend(self) -> bool:
        self.spent += 1
        return self.spent >= self.budget


def ray_run(method: str, seed: int, budget: int, table: Table, grace: int, rf: int,
            startup: int, storage: str) -> Run:
    """One Ray Tune search that stops when ``budget`` trial-epochs are spent."""
    import optuna
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler
    from ray.tune.search.basic_variant import BasicVariantGenerator
    from ray.tune.search.optuna import OptunaSearch

    from search.searcher import FidelityAwareOptunaSearch, RungTPESampler

    run = Run()
    spent = _Budget(budget)
    started: list[tuple[str, int]] = []  # (trial id, config id), in start order
    epochs: dict[str, int] = {}
    errored: set[str] = set()

    class Record(tune.Callback):
        def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
            started.append((trial.trial_id, table.config_id(trial.config)))

        def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict,
                            **info: Any) -> None:
            epochs[trial.trial_id] = result["training_iteration"]

        def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
            errored.add(trial.trial_id)

    class Stop(tune.Stopper):
        def __call__(self, trial_id: str, result: dict) -> bool:
            self.done = spent.spend()
            return False

        def stop_all(self) -> bool:
            return getattr(self, "done", False)

    space = table.define
    param_space: dict[str, Any] = {}
    if method in ("random+asha", "random-full"):
        searcher: Any = BasicVariantGenerator(random_state=seed, max_concurrent=1)
        param_space = table.random_space()
    elif method == "bohb":
        from ray.tune.search.bohb import TuneBOHB

        searcher = TuneBOHB(seed=seed)
        param_space = table.random_space()
    elif method.startswith("ours"):
        rule = RUNG_RULES.get(method)
        sampler = (RungTPESampler(rule=rule, seed=seed, n_startup_trials=startup) if rule else
                   optuna.samplers.TPESampler(seed=seed, n_startup_trials=startup))
        searcher = FidelityAwareOptunaSearch(space=space, metric=OBJECTIVE, mode="max",
                                             max_t=table.max_t, sampler=sampler)
    else:
        searcher = OptunaSearch(space=space, metric=OBJECTIVE, mode="max",
                                sampler=optuna.samplers.TPESampler(seed=seed))
    if method in ("tpe-full", "random-full"):
        scheduler: Any = FIFOScheduler()
    elif method == "bohb":
        from ray.tune.schedulers import HyperBandForBOHB

        scheduler = HyperBandForBOHB(time_attr="training_iteration", max_t=table.max_t,
                                     reduction_factor=rf)
    else:
        scheduler = ASHAScheduler(time_attr="training_iteration", max_t=table.max_t,
                                  grace_period=grace, reduction_factor=rf)
    tuner = tune.Tuner(
        table.trainable(), param_space=param_space,
        tune_config=tune.TuneConfig(metric=OBJECTIVE, mode="max", search_alg=searcher,
                                    scheduler=scheduler, num_samples=budget,
                                    max_concurrent_trials=1, reuse_actors=True),
        run_config=tune.RunConfig(name=f"{method}-{seed}", storage_path=storage, verbose=0,
                                  stop=Stop(), callbacks=[Record()]))
    t0 = time.monotonic()
    tuner.fit()
    run.seconds = time.monotonic() - t0
    run.trials = [(cid, epochs[tid], tid in errored) for tid, cid in started if tid in epochs]
    return run


def optuna_run(method: str, seed: int, budget: int, table: Table, grace: int, rf: int) -> Run:
    """Optuna alone: TPE + a pruner, stopping when ``budget`` trial-epochs are spent."""
    import optuna

    pruner: Any = (optuna.pruners.SuccessiveHalvingPruner(min_resource=grace, reduction_factor=rf)
                   if method == "optuna-sha" else
                   optuna.pruners.HyperbandPruner(min_resource=grace, max_resource=table.max_t,
                                                  reduction_factor=rf))
    # a fixed name: HyperbandPruner deals trials to brackets by a hash of it (a random one
    # otherwise, and the run would not repeat)
    study = optuna.create_study(direction="maximize", pruner=pruner, study_name=f"{method}-{seed}",
                                sampler=optuna.samplers.TPESampler(seed=seed))
    run, spent = Run(), _Budget(budget)

    def trial_fn(trial: optuna.Trial) -> float:
        table.define(trial)
        cid = table.config_id(trial.params)
        curve = table.curves[cid]
        for epoch, m in enumerate(curve, 1):
            trial.report(m[OBJECTIVE], epoch)
            if spent.spend():
                study.stop()
            if trial.should_prune() or (spent.spent >= budget and epoch < len(curve)):
                run.trials.append((cid, epoch, False))
                raise optuna.TrialPruned()
        if cid in table.failed:
            run.trials.append((cid, len(curve), True))
            raise RuntimeError("NaN loss (replayed)")
        run.trials.append((cid, len(curve), False))
        return curve[-1][OBJECTIVE]

    t0 = time.monotonic()
    study.optimize(trial_fn, n_trials=10 * budget, catch=(RuntimeError,))
    run.seconds = time.monotonic() - t0
    return run


# ---------------------------------------------------------------------------------------------
# Scoring a run

Trials = list[tuple[int, int, bool]]


def _pick_any_epoch(table: Table, trials: Trials) -> int | None:
    """search/final.py before this benchmark: highest objective at any epoch of any trial (then
    fewer epochs, then earlier)."""
    best = None
    for n, (cid, ran, _) in enumerate(trials):
        for e, m in enumerate(table.curves[cid][:ran], 1):
            key = (m[OBJECTIVE], -e, -n)
            if best is None or key > best[0]:
                best = (key, cid)
    return best[1] if best else None


def _pick_last(table: Table, trials: Trials) -> int | None:
    """ResultGrid.get_best_result(): highest last reported value of any trial."""
    scored = [(table.curves[c][r - 1][OBJECTIVE], -n, c) for n, (c, r, _) in enumerate(trials)
              if 1 <= r <= len(table.curves[c])]
    return max(scored)[2] if scored else None


def _pick_complete(table: Table, trials: Trials) -> int | None:
    """study.best_trial of a study whose COMPLETE value is the last epoch's: highest final
    value among the trials that ran the whole budget."""
    return _pick_last(table, [(c, r, e) for c, r, e in trials if r == table.max_t and not e])


def _pick_search(table: Table, trials: Trials) -> int | None:
    """``search.results.best_trial`` itself, on ``Trial``s as ``search/run.py`` builds them
    (the trial id is the configuration's)."""
    from search.results import Trial, best_trial

    records = []
    for n, (cid, ran, err) in enumerate(trials):
        curve = table.curves[cid][:ran]
        if not curve:
            continue
        peak = max(range(len(curve)), key=lambda e: (curve[e][OBJECTIVE], -e))
        status = "failed" if err else "completed" if ran == table.max_t else "pruned"
        records.append(Trial(trial_id=str(cid), number=n, status=status, epochs_run=ran,
                             best_objective=curve[peak][OBJECTIVE], best_epoch=peak + 1,
                             last_objective=curve[-1][OBJECTIVE]))
    chosen = best_trial(records)
    return int(chosen.trial_id) if chosen else None


PICKS: dict[str, Callable[[Table, Trials], int | None]] = {
    "any-epoch": _pick_any_epoch, "last": _pick_last, "complete": _pick_complete,
    "search": _pick_search}
PICK = {"ours": "search", "optuna+asha": "last", "random+asha": "last", "tpe-full": "last",
        "optuna-sha": "complete", "optuna-hb": "complete", "ours-bohb": "search",
        "ours-weighted": "search", "bohb": "last", "random-full": "last", "one-epoch": "complete"}


def trajectory(table: Table, run: Run, pick: str) -> list[tuple[int, float, float]]:
    """(trial-epochs spent, replayed seconds spent, regret) after each trial."""
    out, epochs, seconds = [], 0, 0.0
    for n, (cid, ran, _) in enumerate(run.trials, 1):
        epochs += ran
        seconds += sum(m["wall_seconds"] for m in table.curves[cid][:ran])
        chosen = PICKS[pick](table, run.trials[:n])
        out.append((epochs, seconds, table.best - (table.true[chosen] if chosen is not None
                                                   else 0.0)))
    return out


def repeats(runs: list[Run]) -> float:
    """Share of the trial-epochs spent re-running epochs an earlier trial of the same
    configuration had already run (the replay, like a fixed-seed CPU run, repeats them)."""
    spent = wasted = 0
    for run in runs:
        reached: dict[int, int] = {}
        for cid, ran, _ in run.trials:
            spent += ran
            wasted += min(ran, reached.get(cid, 0))
            reached[cid] = max(ran, reached.get(cid, 0))
    return wasted / max(spent, 1)


def regret_at(traj: list[tuple[int, float, float]], budget: float, none: float,
              axis: int = 0) -> float:
    """The regret of the selection made with at most ``budget`` spent (``none``: no selection
    yet)."""
    done = [t for t in traj if t[axis] <= budget]
    return done[-1][2] if done else none


def time_to_target(traj: list[tuple[int, float, float]], target: float,
                   axis: int = 0) -> float:
    """Budget from which the selection stays within ``target`` of the best (inf: never)."""
    at = math.inf
    for t in reversed(traj):
        if t[2] > target:
            break
        at = t[axis]
    return at


# ---------------------------------------------------------------------------------------------
# Main


@dataclass(frozen=True)
class Setting:
    """One method at one set of knobs (the key of a batch of seeded runs)."""

    method: str
    grace: int
    rf: int
    startup: int


@dataclass(frozen=True)
class Row:
    """One line of the report: a batch of runs scored with one selection rule."""

    label: str
    setting: Setting
    pick: str


def plan(args: argparse.Namespace) -> list[Row]:
    """The report's rows: every method, an ablation of ours' selection, the optional sweep."""
    methods = args.methods.split(",")
    unknown = sorted(set(methods) - set(METHODS))
    if unknown:
        raise SystemExit(f"--methods: unknown {unknown}; known: {', '.join(METHODS)}")
    g, rf, st = args.grace_period, args.reduction_factor, args.startup
    rows = [Row(m, Setting(m, g, rf, st if m == "ours" else 10), PICK[m]) for m in methods]
    if "ours" in methods and not args.quick:
        rows.insert(1, Row(ANY_EPOCH, Setting("ours", g, rf, st), "any-epoch"))
    if BASELINE in methods and not args.quick:  # the same runs, selected as ours selects
        rows.insert(rows.index(next(r for r in rows if r.label == BASELINE)) + 1,
                    Row(STOCK_COMPLETE, Setting(BASELINE, g, rf, 10), "complete"))
    if args.sweep:
        knobs = ([(x, rf, st) for x in (1, 2, 3, 4) if x != g]
                 + [(g, x, st) for x in (2, 3, 4, 5) if x != rf]
                 + [(g, rf, x) for x in (3, 5, 10, 20) if x != st])
        rows += [Row(f"ours g{a} rf{b} s{c}", Setting("ours", a, b, c), PICK["ours"])
                 for a, b, c in knobs]
    return rows


def start_ray() -> None:
    """A quiet local Ray whose workers can import this module (trainable, table)."""
    import logging

    import ray

    here = Path(__file__).resolve().parent
    path = os.pathsep.join([str(here), str(here.parent), os.environ.get("PYTHONPATH", "")])
    # "local": always a new Ray of our own, never one that another `ray start` left running
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False,
             configure_logging=True, logging_level=logging.ERROR,
             runtime_env={"env_vars": {"PYTHONPATH": path}})


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--bench", choices=("table", "lcbench"), default="table",
                   help="the stored table of real curves, or YAHPO Gym's LCBench surrogate "
                   "(benchmarks/lcbench_searchers.py)")
    p.add_argument("--table", default=str(TABLE))
    p.add_argument("--methods", default=None, help="comma-separated (default: all)")
    p.add_argument("--seeds", type=int, default=None, help="table 20, lcbench 8")
    p.add_argument("--budget", type=int, default=None,
                   help="trial-epochs per search (table 576, lcbench 1000)")
    p.add_argument("--tasks", default=None, help="lcbench: OpenML task ids (the paper's three)")
    p.add_argument("--paper", action="store_true",
                   help="lcbench: the YAHPO Gym paper's 6,544 epochs and 30 seeds")
    p.add_argument("--save", default=None, help="lcbench: pickle the runs here")
    p.add_argument("--load", default=None,
                   help="lcbench: report the runs pickled by --save (comma-separated files)")
    p.add_argument("--target-quantile", type=float, default=0.01,
                   help="lcbench: the target is the regret of this best share of random "
                   "configurations, per task")
    p.add_argument("--grace-period", type=int, default=2, help="ASHA / pruners (all methods)")
    p.add_argument("--reduction-factor", type=int, default=4, help="ASHA / pruners")
    p.add_argument("--startup", type=int, default=10, help="ours: TPE's random start-up trials")
    p.add_argument("--target", type=float, default=0.01, help="regret counted as found")
    p.add_argument("--sweep", action="store_true",
                   help="also run ours at other grace periods, factors and start-up counts")
    p.add_argument("--plot", default=None, help="write the regret curves as SVG here")
    p.add_argument("--quick", action="store_true", help="CI: 3 seeds, 96 trial-epochs")
    args = p.parse_args(argv)
    if args.bench == "lcbench":
        from lcbench_searchers import run_lcbench

        return run_lcbench(args)
    if args.quick:
        args.seeds, args.budget = 3, 96
    args.seeds, args.budget = args.seeds or 20, args.budget or 576
    args.methods = args.methods or ",".join(METHODS)
    rows = plan(args)

    import optuna
    import ray

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    table = load_table(args.table)
    top = max(table.true, key=table.true.__getitem__)
    near = sum(v >= table.best - args.target for v in table.true.values())
    print(f"table: {len(table.curves)} configurations x {table.max_t} epochs "
          f"({sum(m['wall_seconds'] for c in table.curves.values() for m in c) / 3600:.2f} h "
          f"of training replayed from it); best full-budget held-out wF1 {table.best:.4f} "
          f"(config {top}); {near} configuration(s) within {args.target} of it", flush=True)
    start_ray()
    runs: dict[Setting, list[Run]] = {}
    with tempfile.TemporaryDirectory(prefix="cnmc-bench-searchers-") as tmp:
        for setting in dict.fromkeys(r.setting for r in rows):
            t0 = time.monotonic()
            runs[setting] = [
                optuna_run(setting.method, seed, args.budget, table, setting.grace, setting.rf)
                if setting.method.startswith("optuna-") else
                ray_run(setting.method, seed, args.budget, table, setting.grace, setting.rf,
                        setting.startup, tmp)
                for seed in range(args.seeds)]
            n = sum(len(r.trials) for r in runs[setting])
            took = time.monotonic() - t0
            print(f"{setting}: {args.seeds} searches, {n} trials in {took:.1f} s "
                  f"({took / max(n, 1) * 1e3:.0f} ms per replayed trial, "
                  f"{took / args.seeds:.1f} s per search); {repeats(runs[setting]):.0%} of "
                  "trial-epochs re-ran epochs a configuration had already run",
                  file=sys.stderr, flush=True)
    ray.shutdown()
    report(table, rows, runs, args)
    return 0


def report(table: Table, rows: list[Row], runs: dict[Setting, list[Run]],
           args: argparse.Namespace) -> None:
    """Print the regret tables and the ratio (last); write the plot."""
    full = table.max_t
    budgets = [b * full for b in (2, 4, 8, 16, 32, 48, 64) if b * full <= args.budget]
    per_epoch = statistics.mean(m["wall_seconds"] for c in table.curves.values() for m in c)
    trajs = {r.label: [trajectory(table, run, r.pick) for run in runs[r.setting]] for r in rows}
    need: dict[str, float] = {}
    times: dict[str, list[float]] = {}
    for axis, unit, scale in ((0, "trial-epochs", 1.0), (1, "replayed seconds", per_epoch)):
        cols = [b * scale for b in budgets]
        print(f"\nmean regret (best - selected configuration's full-budget held-out wF1) over "
              f"{args.seeds} seeds, by budget in {unit}"
              + (f" ({full} = one full trial)" if axis == 0 else
                 f" (~{per_epoch:.1f} s per replayed epoch)"))
        print(f"{'method':>22}{''.join(f'{c:>9.0f}' for c in cols)}   "
              f"to within {args.target} (median; seeds that get there)")
        for label, ts in trajs.items():
            mean = [statistics.mean(regret_at(t, c, table.best, axis) for t in ts) for c in cols]
            cells = "".join(f"{v:9.4f}" for v in mean)
            at = statistics.median(time_to_target(t, args.target, axis) for t in ts)
            hit = sum(time_to_target(t, args.target, axis) < math.inf for t in ts)
            if axis == 0:
                need[label] = at
                times[label] = [time_to_target(t, args.target) for t in ts]
            print(f"{label:>22}{cells}   {at:>8.0f} ({hit}/{len(ts)})")
    if args.plot:
        write_plot(args.plot, trajs, table, args)
    if "ours" in need and BASELINE in need:
        ours, base = need["ours"], need[BASELINE]
        what = (f"(trial-epochs ours needs to stay within {args.target} of the best / what "
                f"{BASELINE} needs; medians over {args.seeds} seeds)")
        lo, hi = ratio_interval(times["ours"], times[BASELINE])
        print(f"\nseeds resampled (2,000 bootstrap draws of {args.seeds} seeds per method): the "
              f"ratio's 90% interval is {lo:.2f}-{hi:.2f}")
        if base < math.inf:
            print(f"\nratio: {ours / base:.3f}  {what}")
        elif ours < math.inf:  # the baseline's median is beyond the budget: a bound
            print(f"\nratio: <{ours / args.budget:.3f}  {what}; {BASELINE}'s median is beyond "
                  f"the {args.budget} trial-epoch budget")
        else:
            print(f"\nratio: nan  {what}; neither gets there within {args.budget}")


def ratio_interval(ours: list[float], base: list[float], draws: int = 2000
                   ) -> tuple[float, float]:
    """5th and 95th percentiles of median(ours) / median(base) over seeds resampled with
    replacement (a median beyond the budget is inf; the ratio is then 0 or inf)."""
    import random

    rng = random.Random(0)
    ratios = []
    for _ in range(draws):
        a = statistics.median(rng.choices(ours, k=len(ours)))
        b = statistics.median(rng.choices(base, k=len(base)))
        ratios.append(a / b if b < math.inf else 0.0 if a < math.inf else math.nan)
    ratios = sorted(r for r in ratios if not math.isnan(r))
    if not ratios:
        return math.nan, math.nan
    return ratios[int(0.05 * (len(ratios) - 1))], ratios[int(0.95 * (len(ratios) - 1))]


def write_plot(path: str, trajs: dict[str, list[list[tuple[int, float, float]]]], table: Table,
               args: argparse.Namespace) -> None:
    """Mean regret versus trial-epochs, one line per method, as a standalone SVG."""
    w, h, left, bottom, top, right = 680, 360, 56, 40, 16, 170
    xs = list(range(table.max_t, args.budget + 1, max(1, table.max_t // 4)))
    shown = {k: v for k, v in trajs.items() if " g" not in k}  # the sweep stays in the table
    curves = {k: [statistics.mean(regret_at(t, x, table.best) for t in ts) for x in xs]
              for k, ts in shown.items()}
    ymax = max(min(max(max(c) for c in curves.values()), 4 * args.target), 2 * args.target)

    def px(x: float, y: float) -> tuple[float, float]:
        lx = math.log(x / xs[0]) / math.log(xs[-1] / xs[0]) if xs[-1] > xs[0] else 0
        y = min(y, ymax)  # the first trials' regret is off the chart
        return left + lx * (w - left - right), top + (1 - y / ymax) * (h - top - bottom)

    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" '
             'font-family="sans-serif" font-size="11">',
             f'<rect width="{w}" height="{h}" fill="white"/>']
    for frac in (0, 0.25, 0.5, 0.75, 1):
        _, y = px(xs[0], ymax * frac)
        parts.append(f'<line x1="{left}" x2="{w - right}" y1="{y:.1f}" y2="{y:.1f}" '
                     f'stroke="#ddd"/><text x="{left - 4}" y="{y + 4:.1f}" '
                     f'text-anchor="end">{ymax * frac:.3f}</text>')
    for b in sorted({xs[0], *[v for v in (24, 48, 96, 192, 384, 576, 768) if v <= xs[-1]]}):
        x, _ = px(b, 0)
        parts.append(f'<text x="{x:.1f}" y="{h - bottom + 14}" text-anchor="middle">{b}</text>')
    _, ty = px(xs[0], args.target)
    parts.append(f'<line x1="{left}" x2="{w - right}" y1="{ty:.1f}" y2="{ty:.1f}" '
                 f'stroke="black" stroke-dasharray="4 3"/><text x="{w - right - 4}" '
                 f'y="{ty - 4:.1f}" text-anchor="end">regret {args.target}</text>')
    for i, (label, ys) in enumerate(curves.items()):
        pts = " ".join("{:.1f},{:.1f}".format(*px(x, y)) for x, y in zip(xs, ys))
        c = {ANY_EPOCH: "#ff9896", STOCK_COMPLETE: "#aec7e8"}.get(
            label, COLOURS.get(label, "#8c564b"))
        parts.append(f'<polyline fill="none" stroke="{c}" stroke-width="2" points="{pts}"/>'
                     f'<text x="{w - right + 8}" y="{top + 14 * i + 8}" fill="{c}">{label}</text>')
    mid = (top + h - bottom) / 2
    parts.append(f'<text x="{(left + w - right) / 2}" y="{h - 8}" text-anchor="middle">'
                 f'trial-epochs spent (log scale; {table.max_t} = one full trial)</text>'
                 f'<text x="12" y="{mid}" text-anchor="middle" transform="rotate(-90 12 {mid})">'
                 f'mean regret (held-out wF1), {args.seeds} seeds</text></svg>')
    from leukemia.files import atomic_write

    atomic_write(path, "\n".join(parts) + "\n")


if __name__ == "__main__":
    sys.exit(main())
