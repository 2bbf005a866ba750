"""Never a constant predictor, never dead weight.

A model that calls every held-out cell the same class scores below every model that calls both
(``search.trainable.objective``), is stopped at ASHA's first rung (``ConstantStopper``), shows
as ``constant`` in trials.csv and the report, and is never exported (``search.final.best_trial``
and the out-of-fold check in ``run_final``). Backbones measured to stay constant from random
init are left out of the default space at that size (``search.space.SCRATCH_CONSTANT``).

    .venv/bin/python -m pytest -q tests/test_constant.py          # the search: ~2-4 min
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import optuna
import pytest
from searchrun import run
from searchrun import trials as read_trials

from search.results import Trial, best_trial, selected_epoch
from search.searcher import ConstantStopper
from search.space import DEFAULT_BACKBONES, SCRATCH_CONSTANT, default_backbones
from search.trainable import (
    calls_one_class,
    constant_message,
    is_constant,
    is_constant_prediction,
    objective,
)

PLUGIN = Path(__file__).parent / "plugins" / "constant_backbone.py"


def _row(wf1: float, sens: float | None, spec: float | None, auc: float | None) -> dict:
    return {"val_weighted_f1": wf1, "val_sensitivity": sens, "val_specificity": spec,
            "val_roc_auc": auc}


# ---------------------------------------------------------------------------------------------
# The objective and the constant flag


def test_objective_scores_a_constant_model_below_any_model_calling_both_classes():
    constant = _row(0.523, 1.0, 0.0, 0.5)  # the exported constant of the issue: majority share
    unsettled = _row(0.17, 0.05, 1.0 - 0.02, 0.71)  # both classes called, calibration moving
    assert objective(constant) == -0.5
    assert objective(unsettled) == pytest.approx(0.17 + 1e-4 * 0.71)
    assert objective(unsettled) > objective(constant)


def test_objective_orders_one_class_models_by_their_ranking():
    ranks = _row(0.31, 0.0, 1.0, 0.80)  # every cell normal, but P(ALL) orders them well
    flat = _row(0.31, 0.0, 1.0, 0.50)
    assert objective(ranks) == pytest.approx(-0.2) and objective(flat) == -0.5
    assert objective(_row(0.1, 0.5, 0.5, 0.0)) > objective(ranks)  # any two-class model wins


def test_objective_counts_an_undefined_auc_as_half_for_one_class_and_zero_otherwise():
    # a held-out fold of ALL cells only: specificity and AUC undefined
    assert objective(_row(1.0, 1.0, None, None)) == -0.5  # every cell called ALL
    assert objective(_row(0.0, 0.0, None, None)) == -0.5  # every cell called normal
    assert objective(_row(0.66, 0.5, None, None)) == pytest.approx(0.66)  # both called
    assert objective(_row(0.66, 0.5, None, float("nan"))) == pytest.approx(0.66)


def test_is_constant_needs_one_class_and_no_ranking():
    assert calls_one_class(_row(0.5, 1.0, 0.0, 0.9)) and not is_constant(_row(0.5, 1.0, 0.0, 0.9))
    assert is_constant(_row(0.5, 1.0, 0.0, 0.515)) and is_constant(_row(0.5, 0.0, 1.0, 0.485))
    assert not is_constant(_row(0.5, 0.0, 1.0, 0.53))
    assert is_constant(_row(0.5, 1.0, None, None))  # undefined AUC: no ranking to speak of
    assert not is_constant(_row(0.5, 0.9, 0.1, 0.5))  # both classes called
    assert not calls_one_class(_row(0.5, None, None, None))


def test_is_constant_prediction_on_raw_predictions():
    y = np.array([0, 0, 1, 1, 1])
    assert is_constant_prediction(y, np.full(5, 0.7))  # all ALL, AUC 0.5
    assert is_constant_prediction(y, np.full(5, 0.3))
    assert not is_constant_prediction(y, [0.1, 0.2, 0.3, 0.35, 0.4])  # one class, AUC 1
    assert not is_constant_prediction(y, [0.4, 0.6, 0.4, 0.6, 0.6])  # both classes called
    # the decision threshold counts, not 0.5
    assert not is_constant_prediction(y, [0.30, 0.30, 0.30, 0.31, 0.30], threshold=0.305)
    assert is_constant_prediction(np.ones(5, int), np.full(5, 0.9))  # one class, AUC undefined
    assert "more epochs" in constant_message("x") and "learning rate" in constant_message("x")


def test_constant_stopper_stops_from_the_first_rung_on():
    stop = ConstantStopper(grace_period=2)
    assert not stop("t", {"training_iteration": 1, "constant": 1.0})  # before the rung
    assert stop("t", {"training_iteration": 2, "constant": 1.0})
    assert stop("t", {"training_iteration": 5, "constant": 1.0})
    assert not stop("t", {"training_iteration": 2, "constant": 0.0})
    assert not stop("t", {"training_iteration": 2}) and not stop.stop_all()


# ---------------------------------------------------------------------------------------------
# Selection


def _trial(number: int, rows: list[dict], status: str, history: list[dict] | None = None
           ) -> Trial:
    """A trial as ``search.results.collect_trials`` builds it, from metrics rows."""
    objs = [objective(r) for r in rows]
    peak = max(range(len(objs)), key=lambda e: (objs[e], -e))
    return Trial(trial_id=f"t{number}", number=number, status=status,
                 epochs_run=len(rows), best_objective=objs[peak], best_epoch=peak + 1,
                 best_score=rows[peak]["val_weighted_f1"], last_objective=objs[-1],
                 last_score=rows[-1]["val_weighted_f1"],
                 best_constant=is_constant(rows[peak]), last_constant=is_constant(rows[-1]),
                 history=history or [])


def test_best_trial_never_picks_a_constant_trial():
    # the search: two constant trials ran the whole budget before ASHA could compare;
    # small_cnn trials called both classes at epoch 1, were unsettled at the first rung
    constant = [_trial(n, [_row(0.523, 1.0, 0.0, 0.5)] * 3, "constant") for n in (0, 1)]
    small = _trial(2, [_row(0.70, 0.6, 0.8, 0.78), _row(0.25, 0.1, 0.97, 0.74)], "pruned")
    best = best_trial([*constant, small])
    assert best is small and selected_epoch(best) == 1
    # a record that says completed but ended constant is not a full-budget candidate either
    ended_constant = dataclasses.replace(constant[0], status="completed")
    assert best_trial([ended_constant, small]) is small


def test_best_trial_is_none_when_every_trial_was_constant():
    constant = [_trial(n, [_row(0.523, 1.0, 0.0, 0.5)], "constant") for n in range(3)]
    assert best_trial(constant) is None


def test_report_shows_constant_trials_and_no_best_when_all_are(tmp_path):
    from search.report import write_report

    rows = [_row(0.523, 1.0, 0.0, 0.5)]
    trials = [_trial(n, rows, "constant",
                     [{"epoch": 1, "val_weighted_f1": 0.523, "constant": 1.0}])
              for n in range(2)]
    write_report(tmp_path / "r.html", trials=trials, study=None, final=None, command="x",
                 settings={}, max_t=3)
    html = (tmp_path / "r.html").read_text()
    assert "constant: 2" in html and ">constant</span>" in html
    assert "Every trial predicted one class for every cell; nothing to export." in html
    assert "constant (one class for every cell)" in html  # the learning curves' legend


# ---------------------------------------------------------------------------------------------
# The default space


def test_default_space_leaves_out_backbones_measured_constant_from_scratch():
    dead = {b for b, size in SCRATCH_CONSTANT.items() if b in DEFAULT_BACKBONES}
    assert dead, "SCRATCH_CONSTANT names no default backbone"
    for backbone in dead:
        size = SCRATCH_CONSTANT[backbone]
        assert backbone not in default_backbones(size, "none")
        assert backbone in default_backbones(size, "imagenet")  # pretrained: nothing dropped
        assert backbone in default_backbones(size + 1, "none")  # not measured above it
    assert "small_cnn" in default_backbones(32, "none")


def test_run_warns_about_an_explicit_dead_backbone_and_keeps_it(capsys):
    from search.run import apply_defaults, build_parser

    backbone, size = next(iter(SCRATCH_CONSTANT.items()))
    args = apply_defaults(build_parser().parse_args(
        ["--store", "s", "--image-size", str(size), "--backbones", f"small_cnn,{backbone}"]))
    assert args.backbone_list == ["small_cnn", backbone]
    err = capsys.readouterr().err
    assert f"warning: --backbones: {backbone} (up to {size} px)" in err
    assert "benchmarks/scratch.py" in err
    args = apply_defaults(build_parser().parse_args(["--store", "s", "--image-size", str(size)]))
    assert backbone not in args.backbone_list and "small_cnn" in args.backbone_list
    [line] = [ln for ln in capsys.readouterr().err.splitlines() if "with --weights none" in ln]
    assert f"{backbone} (up to {size} px)" in line


# ---------------------------------------------------------------------------------------------
# End to end


@pytest.mark.slow
def test_search_stops_constant_trials_at_the_first_rung_and_never_exports_one(tmp_path,
                                                                             real_data):
    out = tmp_path / "run"
    # seed 0 and 6 random start-up trials: constant_cnn, constant_cnn, small_cnn, small_cnn,
    # constant_cnn, constant_cnn; one at a time, so the first trial reaches the first rung with
    # nothing for ASHA to compare it with (how the constant trials ran the whole budget)
    text = run(["--trials", "6", "--data", str(real_data), "--max-epochs", "3",
                "--grace-period", "1", "--reduction-factor", "2", "--startup-trials", "6",
                "--seed", "0", "--image-size", "32", "--batch-size", "8",
                "--backbones", "small_cnn,constant_cnn", "--plugin", str(PLUGIN),
                "--max-concurrent", "1", "--num-cpus", "2", "--final", "all-folds", "--no-tta",
                "--out", str(out)], tmp_path)
    trials = read_trials(out)
    by_backbone = {b: [t for t in trials if t["param_backbone"] == b]
                   for b in ("constant_cnn", "small_cnn")}
    assert all(by_backbone.values()), trials
    assert trials[0]["param_backbone"] == "constant_cnn", "the sampler's order changed"
    for t in by_backbone["constant_cnn"]:  # stopped at the first rung, shown as constant
        assert (t["status"], t["epochs_run"]) == ("constant", "1"), t
    assert all(t["status"] != "constant" for t in by_backbone["small_cnn"]), trials

    # ranked last: every constant trial's objective is below every small_cnn trial's
    study = optuna.load_study(study_name="cnmc-search",
                              storage=f"sqlite:///{out / 'study.db'}")
    values: dict[str, list[float]] = {"constant_cnn": [], "small_cnn": []}
    for ot in study.trials:
        curve = [ot.value] if ot.value is not None else list(ot.intermediate_values.values())
        values[ot.params["backbone"]].append(max(curve))
        if ot.params["backbone"] == "constant_cnn":  # stopped before max_t: PRUNED at step 1
            assert ot.state == optuna.trial.TrialState.PRUNED, ot
            assert ot.intermediate_values == {1: -0.5}, ot.intermediate_values
    assert max(values["constant_cnn"]) < min(values["small_cnn"]), values

    # never exported
    config = json.loads((out / "best" / "config.json").read_text())
    assert config["backbone"] == "small_cnn"
    summary = json.loads((out / "summary.json").read_text())
    assert summary["trial_counts"]["constant"] == len(by_backbone["constant_cnn"])
    assert summary["best_trial"] in {t["trial_id"] for t in by_backbone["small_cnn"]}
    html = (out / "report.html").read_text()
    assert ">constant</span>" in html and "one class for every cell" in html
    assert f"{len(by_backbone['constant_cnn'])} constant" in text
