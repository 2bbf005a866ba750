"""The searcher benchmark, the study the searcher leaves for optuna-dashboard, and the live lines.

The replay runs the real Ray Tune and Optuna classes on the stored table of learning curves
(``benchmarks/data/curves.csv.gz``); the study test runs a real local Ray with a trainable that
reports a made-up curve.
"""

from __future__ import annotations

import io
import os
import re
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from leukemia.store import Progress

REPO = Path(__file__).resolve().parents[1]
TABLE = REPO / "benchmarks" / "data" / "curves.csv.gz"


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_redraws_in_place_on_a_terminal():
    out = _Terminal()
    meter = Progress(10, "ingest", stream=out, tty_every=0.0)
    for i in range(1, 11):
        meter.update(i)
    text = out.getvalue()
    assert text.count("\r") == 10 and text.count("\x1b[K") == 10
    assert text.endswith("\n") and text.count("\n") == 1
    assert "ingest: 10/10" in text


def test_progress_writes_whole_lines_in_a_log():
    out = io.StringIO()
    meter = Progress(1000, "ingest", stream=out, log_every=3600)
    for i in range(1, 1001):
        meter.update(i)
    lines = out.getvalue().splitlines()
    assert "\r" not in out.getvalue() and "\x1b" not in out.getvalue()
    assert len(lines) == 1 and lines[0].startswith("ingest: 1000/1000")  # throttled, last kept


def test_progress_is_quiet_when_disabled():
    out = io.StringIO()
    meter = Progress(3, "ingest", enabled=False, stream=out)
    for i in range(1, 4):
        meter.update(i)
    assert out.getvalue() == ""


def _trial(trial_id: str, status: str = "RUNNING", epochs: int = 1) -> SimpleNamespace:
    return SimpleNamespace(trial_id=trial_id, status=status, config={"lr": 0.001},
                           last_result={"training_iteration": epochs})


def test_live_view_redraws_in_place_on_a_terminal():
    from search.searcher import LiveView

    out = _Terminal()
    view = LiveView("objective", max_t=3, total=2, stream=out, tty_every=0.0)
    trials = [_trial("a"), _trial("b", "PENDING")]
    for epoch in (1, 2, 3):
        view.on_trial_result(0, trials, trials[0], {"objective": 0.5 + epoch / 10,
                                                    "training_iteration": epoch})
    view.on_trial_complete(0, trials, _trial("a", "TERMINATED", 3))
    view.on_experiment_end(trials)
    text = out.getvalue()
    assert text.count("\r") >= 4 and "\x1b[K" in text
    assert text.count("\n") == 1 and text.endswith("\n")  # one line, ended once at the end
    assert "done 1" in text.rsplit("\r", 1)[-1] and "best objective 0.8000" in text


def test_live_view_writes_whole_lines_in_a_log():
    from search.searcher import LiveView

    out = io.StringIO()
    view = LiveView("objective", max_t=3, total=2, stream=out, every=3600)
    trials = [_trial("a"), _trial("b", "PENDING")]
    for epoch in (1, 2, 3):
        view.on_trial_result(0, trials, trials[0], {"objective": 0.5, "training_iteration": epoch})
    view.on_trial_complete(0, trials, _trial("a", "TERMINATED", 1))
    view.on_experiment_end(trials)
    lines = out.getvalue().splitlines()
    assert "\r" not in out.getvalue() and "\x1b" not in out.getvalue()
    assert len(lines) == 2  # the first result, then the end (the rest was throttled)
    assert "pruned 1" in lines[-1]


def test_live_view_counts_trials_that_ended_before_a_resume():
    from search.searcher import LiveView

    out = io.StringIO()
    view = LiveView("objective", max_t=3, total=5, stream=out)  # a resumed search: no events
    trials = [_trial("a", "TERMINATED", 3), _trial("b", "TERMINATED", 1), _trial("c", "ERROR"),
              _trial("d"), _trial("e", "PENDING")]
    trials[1].last_result["constant"] = 1.0
    assert ("done 1, pruned 0, constant 1, failed 1" in view.line(trials)
            and "running 1, pending 1" in view.line(trials)), view.line(trials)


def _space(trial) -> None:  # module level: the searcher's state is pickled with its space
    trial.suggest_float("x", 0.0, 1.0)


@pytest.mark.slow
def test_fidelity_aware_search_leaves_a_named_study_with_trial_attributes(tmp_path):
    import optuna
    import ray
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler

    from search.searcher import FidelityAwareOptunaSearch

    def curve(config):  # nested: Ray pickles it by value, so workers need not import tests/
        import ray as _ray
        from ray import tune as _tune

        node = _ray.get_runtime_context().get_node_id()
        for epoch in range(1, 5):
            f1 = config["x"] * epoch / 4
            _tune.report({"objective": f1, "val_weighted_f1": f1, "val_roc_auc": 0.5 + f1 / 2,
                          "val_sensitivity": 0.9, "val_specificity": f1, "node_id": node})

    db = f"sqlite:///{tmp_path / 'study.db'}"
    searcher = FidelityAwareOptunaSearch(
        space=_space, metric="objective", mode="max", max_t=4, metric_name="val_weighted_f1",
        sampler=optuna.samplers.TPESampler(seed=0, n_startup_trials=3),
        storage=optuna.storages.RDBStorage(db), study_name="s")
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    ray.init(address="local", num_cpus=1, include_dashboard=False, log_to_driver=False)
    try:
        tune.Tuner(curve, tune_config=tune.TuneConfig(
            metric="objective", mode="max", search_alg=searcher, num_samples=6,
            max_concurrent_trials=1, reuse_actors=True,
            scheduler=ASHAScheduler(max_t=4, grace_period=1, reduction_factor=2)),
            run_config=tune.RunConfig(storage_path=str(tmp_path / "tune"), verbose=0)).fit()
    finally:
        ray.shutdown()
    study = optuna.load_study(study_name="s", storage=db)
    assert study.metric_names == ["val_weighted_f1"]
    states = {t.state for t in study.trials}
    assert len(study.trials) == 6 and states <= {optuna.trial.TrialState.COMPLETE,
                                                 optuna.trial.TrialState.PRUNED}
    for t in study.trials:
        a = t.user_attrs
        assert set(a) >= {"ray_trial_id", "epochs_run", "best_epoch", "val_roc_auc",
                          "val_sensitivity", "val_specificity", "node_id"}, a
        assert (t.state == optuna.trial.TrialState.COMPLETE) == (a["epochs_run"] == 4)
        assert a["best_epoch"] == a["epochs_run"]  # the made-up curves only rise
        x = t.params["x"]
        assert a["val_specificity"] == pytest.approx(x * a["best_epoch"] / 4)
        if t.state == optuna.trial.TrialState.COMPLETE:
            assert t.value == pytest.approx(x)


@pytest.mark.slow
def test_searchers_replay_runs_in_quick_mode():
    if not TABLE.exists():
        pytest.skip(f"{TABLE} not generated yet (python benchmarks/curves.py)")
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    env.pop("RAY_ADDRESS", None)
    out = subprocess.run([sys.executable, str(REPO / "benchmarks" / "searchers.py"), "--quick"],
                         cwd=REPO, env=env, capture_output=True, text=True, timeout=600,
                         start_new_session=True)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]
    lines = out.stdout.strip().splitlines()
    assert re.match(r"^ratio: (<?\d+(\.\d+)?|nan)\b", lines[-1]), out.stdout
    for method in ("ours", "optuna+asha", "random+asha", "tpe-full", "optuna-sha",
                   "optuna-hb"):
        assert any(line.strip().startswith(method) for line in lines), method


def test_curves_grid_and_order_are_fixed():
    sys.path.insert(0, str(REPO / "benchmarks"))
    import curves

    grid = curves.grid()
    assert len(grid) >= 64 and len({tuple(g.values()) for g in grid}) == len(grid)
    order = curves.run_order(len(grid))
    assert sorted(order) == list(range(len(grid))) and order == curves.run_order(len(grid))
    assert order != list(range(len(grid)))  # shuffled: a cut-short table is a fair sample


@pytest.mark.slow
def test_curves_resume_where_they_stopped(tmp_path, dev_data):
    out = tmp_path / "curves.csv.gz"
    cmd = [sys.executable, str(REPO / "benchmarks" / "curves.py"), "--data", str(dev_data),
           "--store", str(tmp_path / "store"), "--out", str(out), "--epochs", "2",
           "--limit", "1"]
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    sys.path.insert(0, str(REPO / "benchmarks"))
    import curves

    for n in (1, 2):
        done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True,
                              timeout=900)
        assert done.returncode == 0, done.stderr[-3000:]
        rows = curves.read_table(out)
        ids = list(dict.fromkeys(int(r["config_id"]) for r in rows))
        assert sorted(ids) == sorted(curves.run_order(len(curves.grid()))[:n])
        if n == 1:
            first = rows
    first_id = curves.run_order(len(curves.grid()))[0]
    assert [r for r in rows if int(r["config_id"]) == first_id] == first  # kept as it was
    assert all(r["status"] == "ok" and r["epoch"] in ("1", "2") for r in rows)
    assert {r["val_cells"] for r in rows} == {"993"}
    assert all(0 <= float(r["val_weighted_f1"]) <= 1 and float(r["wall_seconds"]) > 0
               for r in rows)


def test_replay_selects_as_the_search_does():
    if not TABLE.exists():
        pytest.skip(f"{TABLE} not generated yet (python benchmarks/curves.py)")
    sys.path.insert(0, str(REPO / "benchmarks"))
    import searchers

    table = searchers.load_table(TABLE)
    whole = [c for c in table.curves if c not in table.failed]
    by_last = sorted(whole, key=lambda c: table.curves[c][-1]["objective"])
    low, high = by_last[len(by_last) // 2], by_last[-1]
    # a stopped trial of the best configuration, two full runs of others: the best full run wins
    trials = [(high, 2, False), (low, table.max_t, False), (by_last[-2], table.max_t, False)]
    assert searchers._pick_search(table, trials) == by_last[-2]
    assert searchers._pick_search(table, trials) == searchers._pick_complete(table, trials)
    stopped = [(low, 2, False), (high, 8, False)]  # no full run: the peak of any trial
    assert searchers._pick_search(table, stopped) == searchers._pick_any_epoch(table, stopped)


def test_ratio_interval_brackets_the_ratio_of_medians():
    sys.path.insert(0, str(REPO / "benchmarks"))
    import searchers

    ours, base = [60.0, 68.0, 70.0, 75.0, 80.0] * 4, [100.0, 110.0, 120.0, 130.0] * 5
    lo, hi = searchers.ratio_interval(ours, base)
    assert lo <= 70 / 115 <= hi and 0 < lo < hi < 1
    assert searchers.ratio_interval([1.0], [float("inf")]) == (0.0, 0.0)


def _lcbench():
    sys.path.insert(0, str(REPO / "benchmarks"))
    import lcbench

    why = lcbench.missing()
    if why:
        pytest.skip(f"LCBench surrogate unavailable: {why}")
    return lcbench


def test_lcbench_surrogate_gives_the_known_curve_and_regret():
    lcbench = _lcbench()
    acc, seconds = lcbench.curve("189906", lcbench.defaults())
    assert len(acc) == len(seconds) == 50  # epochs 2..51
    # the space's defaults on task 189906 (checked against yahpo-gym to 4 decimals, SOURCES.md)
    assert (acc[0], acc[9], acc[-1]) == pytest.approx((20.64, 44.53, 55.37), abs=0.01)
    assert all(s >= 0 for s in seconds)
    table = lcbench.LCTable.for_task("189906")
    cid = table.config_id(lcbench.defaults())
    assert table.config_id(dict(lcbench.defaults())) == cid  # registered once
    lo, hi = 6.412491, 93.0684  # global_statistics: the task's val_accuracy min/max
    assert table.best - table.true[cid] == pytest.approx((hi - 55.37) / (hi - lo), abs=1e-4)
    with pytest.raises(ValueError, match="encoding.json"):
        lcbench.curve("1", lcbench.defaults())


def test_lcbench_one_epoch_baseline_spends_the_budget_exactly():
    _lcbench()
    import lcbench
    import lcbench_searchers

    table = lcbench.LCTable.for_task("167168")
    run = lcbench_searchers.one_epoch_run(0, 260, table)
    assert sum(ran for _, ran, _ in run.trials) == 260
    finished = [(c, r) for c, r, _ in run.trials if r > 1]
    assert [r for _, r in finished] == [50, 50, 10]  # rounds of 50 one-epoch trials + a finish
    first = [c for c, r, _ in run.trials[:50]]
    assert finished[0][0] == max(first, key=lambda c: table.curves[c][0]["objective"])


def _rung_study():
    import optuna

    study = optuna.create_study(direction="maximize")
    dist = {"x": optuna.distributions.FloatDistribution(0.0, 1.0)}
    for i in range(12):  # stopped at step 2, better the smaller x (step 8: better the larger)
        x = i / 12
        study.add_trial(optuna.trial.create_trial(
            params={"x": x}, distributions=dist, state=optuna.trial.TrialState.PRUNED,
            intermediate_values={1: 0.1 - x / 10, 2: 1 - x}))
    for i in range(3):
        x = 0.9 + i / 30
        study.add_trial(optuna.trial.create_trial(
            params={"x": x}, distributions=dist, value=x, user_attrs={"epochs_run": 8},
            intermediate_values={1: 0.1 - x / 10, 2: 1 - x, 7: x}))
    return study, dist


def test_rung_sampler_fits_tpe_on_the_highest_rung_with_enough_trials(monkeypatch):
    import optuna

    from search.searcher import RungTPESampler, _rung_values

    study, dist = _rung_study()
    at = _rung_values(study.trials)
    assert sorted(at) == [1, 2, 7, 8] and len(at[2]) == 15 and len(at[8]) == 3
    seen = {}

    def capture(self, view, trial, space):
        seen["trials"] = view._get_trials(states=(optuna.trial.TrialState.COMPLETE,))
        return {"x": 0.5}

    monkeypatch.setattr(optuna.samplers.TPESampler, "_sample", capture)
    sampler = RungTPESampler(rule="bohb", n_startup_trials=10, seed=0)
    sampler._sample(study, study.trials[0], dist)
    # step 8 has 3 trials (< 10): the model is fitted on step 2, all 15 trials as COMPLETE
    assert len(seen["trials"]) == 15
    assert {t.number: t.value for t in seen["trials"]} == at[2]
    sampler = RungTPESampler(rule="bohb", min_points=3, seed=0)
    sampler._sample(study, study.trials[0], dist)
    assert {t.number for t in seen["trials"]} == {12, 13, 14}  # the full budget has 3
    with pytest.raises(ValueError, match="known rules"):
        RungTPESampler(rule="hyperband")


def test_rung_sampler_samples_where_the_rung_is_good():
    import optuna

    from search.searcher import RungTPESampler

    for rule in RungTPESampler.RULES:
        study, dist = _rung_study()
        study.sampler = RungTPESampler(rule=rule, n_startup_trials=10, seed=1)
        xs = []
        for _ in range(10):
            trial = study.ask(dist)
            xs.append(trial.params["x"])
            study.tell(trial, state=optuna.trial.TrialState.FAIL)
        # step 2 (15 trials) ranks small x best; stock TPE would follow the 3 COMPLETE large x
        assert sorted(xs)[5] < 0.5, (rule, xs)


def test_kendall_tau_of_rankings():
    from search.searcher import _kendall

    assert _kendall({1: 1.0, 2: 2.0, 3: 3.0}, {1: 5.0, 2: 6.0, 3: 7.0}) == 1.0
    assert _kendall({1: 1.0, 2: 2.0, 3: 3.0}, {1: 3.0, 2: 2.0, 3: 1.0}) == -1.0
    assert _kendall({1: 1.0, 2: 2.0}, {1: 1.0, 2: 2.0}) == 0.0  # too few in common


@pytest.mark.slow
def test_searchers_lcbench_runs_in_quick_mode():
    _lcbench()
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    env.pop("RAY_ADDRESS", None)
    out = subprocess.run([sys.executable, str(REPO / "benchmarks" / "searchers.py"), "--bench",
                          "lcbench", "--quick"], cwd=REPO, env=env, capture_output=True,
                         text=True, timeout=900, start_new_session=True)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]
    lines = out.stdout.strip().splitlines()
    assert re.match(r"^ratio: (<?\d+(\.\d+)?|nan)\b", lines[-2]), out.stdout
    assert re.match(r"^90% interval is (\d+\.\d+|inf|nan)-(\d+\.\d+|inf|nan)$", lines[-1]), lines
    pooled = lines[next(i for i, x in enumerate(lines) if x.startswith("pooled")) + 2:]
    rows = {x.split()[0]: x.split() for x in pooled if x.strip() and x.split()[0] in
            ("ours", "optuna+asha", "random+asha", "optuna-hb", "random-full", "one-epoch",
             "ours-bohb")}
    assert len(rows) == 7, out.stdout
    for method, cells in rows.items():
        regret = [float(v) for v in cells[1:6]]  # by budget 12 .. 200 trial-epochs
        assert all(0 <= r <= 1 for r in regret) and regret[-1] < regret[0], (method, regret)
