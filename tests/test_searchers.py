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
