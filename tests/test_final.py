"""Tests for the search's final step (``search/final.py``): the cross-validated ensemble, its
threshold from out-of-fold predictions, concurrent member trainings, and resuming a killed final.

The end-to-end tests run ``search/run.py`` as a user would (real local Ray, real Keras on the
real sample at 32 px), once: the run is killed (SIGKILL to its process group) as soon as one
final member has finished, then resumed with ``--resume``; every slow test reads that run.
``--final all-folds`` is covered by ``tests/test_search.py``'s end-to-end search.

    .venv/bin/python -m pytest -q tests/test_final.py            # ~3-5 min on 2 cores
"""

from __future__ import annotations

import csv
import json
import time

import numpy as np
import pytest
from searchrun import run, start, stop_group

from leukemia import metrics as M
from search.final import _choose_threshold, _pool_oof, plan_members, training_folds
from search.results import Trial, best_trial, selected_epoch, selected_score
from search.settings import SearchSettings

MEMBERS = ("fold0-seed0", "fold1-seed0", "fold2-seed0")  # the sample store has 3 official folds


def _settings(**kw) -> SearchSettings:
    return SearchSettings(**{"store": "unused", "image_size": 32, "batch_size": 8,
                             "max_epochs": 6, **kw})


TRIAL = Trial(trial_id="t1", number=1, status="pruned", best_epoch=4,
              params={"backbone": "small_cnn", "learning_rate": 3e-4, "augment": False,
                      "augment_strength": 0.3, "dropout": 0.1})


# ---------------------------------------------------------------------------------------------
# planning the members


def test_plan_members_cv_one_member_per_held_out_fold_and_seed():
    configs = plan_members(TRIAL, _settings(seed=7), [0, 1, 2], mode="cv", seeds=2)
    assert [(c.val_fold, c.seed) for c in configs] == [(0, 7), (0, 8), (1, 7), (1, 8), (2, 7),
                                                       (2, 8)]
    for c in configs:
        assert c.epochs == 4  # the epoch at which the trial peaked
        assert c.schedule_epochs == 6  # ... on the search's learning-rate curve (max_epochs)
        assert (c.backbone, c.learning_rate, c.dropout, c.image_size) == \
            ("small_cnn", 3e-4, 0.1, 32)
        assert c.augment is False


def _ran(number: int, status: str, objectives: list[float]) -> Trial:
    """A trial as ``search.results.collect_trials`` builds it (objective = score here)."""
    peak = max(range(len(objectives)), key=lambda e: (objectives[e], -e))
    return Trial(trial_id=f"t{number}", number=number, status=status,
                 epochs_run=len(objectives), best_objective=objectives[peak],
                 best_score=objectives[peak], best_epoch=peak + 1,
                 last_objective=objectives[-1], last_score=objectives[-1], params=TRIAL.params)


def test_best_trial_is_the_best_full_budget_run_not_the_highest_peak():
    spiky = _ran(0, "completed", [0.60, 0.90, 0.70, 0.72])  # peaked at epoch 2, ended at 0.72
    steady = _ran(1, "completed", [0.60, 0.70, 0.75, 0.80])
    stopped = _ran(2, "pruned", [0.95, 0.85])  # stopped by ASHA at its second rung
    best = best_trial([spiky, steady, stopped])
    assert best is steady
    assert (selected_epoch(best), selected_score(best)) == (4, 0.80)
    [member] = plan_members(best, _settings(max_epochs=4), [0], mode="all-folds", seeds=1)
    assert member.epochs == 4 == member.schedule_epochs  # the whole budget it was judged at


def test_best_trial_ties_go_to_the_earlier_trial():
    a, b = _ran(3, "completed", [0.5, 0.8]), _ran(1, "completed", [0.6, 0.8])
    assert best_trial([a, b]) is b


def test_best_trial_without_a_full_budget_run_takes_the_peak_of_any_trial():
    failed = _ran(0, "failed", [0.70, 0.90])
    stopped = _ran(1, "pruned", [0.80, 0.85])
    best = best_trial([failed, stopped])
    assert best is failed and (selected_epoch(best), selected_score(best)) == (2, 0.90)
    assert best_trial([Trial(trial_id="x", number=0, status="failed")]) is None


def test_plan_members_all_folds_trains_on_every_fold():
    configs = plan_members(TRIAL, _settings(), [0, 1, 2], mode="all-folds", seeds=2)
    assert [(c.val_fold, c.seed) for c in configs] == [(None, 0), (None, 1)]


def test_plan_members_rejects_an_unknown_mode():
    with pytest.raises(ValueError, match="--final 'bagging': expected one of cv, all-folds"):
        plan_members(TRIAL, _settings(), [0, 1, 2], mode="bagging", seeds=1)


def _folds(**sizes: int) -> dict:
    return {"folds": {k.lstrip("f"): {"n": n, "all": n // 2, "hem": n - n // 2}
                      for k, n in sizes.items()}}


def test_training_folds_are_the_official_ones_or_three_groups():
    assert training_folds(_folds(f0=80, f1=77, f2=43)) == [0, 1, 2]  # the sample's folds
    assert training_folds(_folds(f1=50, f3=60)) == [1, 3]
    assert training_folds(_folds(f1=3576)) == [0, 1, 2]  # one fold: patient groups
    assert training_folds(_folds(f0=80, f1=3576, f2=43)) == [0, 1, 2]  # very unequal: groups


def _member_oof(fold: int, seed: int, labels: list[int], probs: list[float],
                offset: int = 0) -> dict:
    n = len(labels)
    return {"fold": fold, "seed": seed, "oof": {
        "image_ids": [f"f{fold}-{i + offset}" for i in range(n)],
        "patient_ids": [f"p{fold}-{i % 2}" for i in range(n)],
        "labels": labels, "probs": probs}}


def test_pool_oof_averages_a_cells_seeds():
    pooled = _pool_oof([_member_oof(0, 0, [1, 0], [0.8, 0.2]),
                        _member_oof(0, 1, [1, 0], [0.6, 0.4]),
                        _member_oof(1, 0, [0], [0.3])])
    assert pooled is not None
    assert pooled["image_ids"].tolist() == ["f0-0", "f0-1", "f1-0"]
    assert pooled["probs"] == pytest.approx([0.7, 0.3, 0.3])
    assert pooled["folds"].tolist() == [0, 0, 1]
    assert _pool_oof([{"fold": None, "seed": 0, "oof": None}]) is None  # all-folds: nothing


def test_choose_threshold_leaves_out_a_fold_with_one_class():
    both = [_member_oof(0, 0, [1, 1, 0, 0], [0.9, 0.7, 0.4, 0.1]),
            _member_oof(1, 0, [1, 1, 0, 0], [0.8, 0.65, 0.3, 0.2])]
    # fold 2 holds ALL cells only, scored low: pooled in, they would pull the threshold down
    one = _member_oof(2, 0, [1, 1, 1, 1], [0.15, 0.12, 0.35, 0.25])
    t, source = _choose_threshold(_pool_oof([*both, one]))
    alone = _pool_oof(both)
    assert t == M.best_threshold(alone["labels"], alone["probs"])
    pooled = _pool_oof([*both, one])
    assert t != M.best_threshold(pooled["labels"], pooled["probs"])
    assert "fold(s) [2] hold one class only and were left out" in source


# ---------------------------------------------------------------------------------------------
# end to end: a search whose final is killed, then resumed


@pytest.fixture(scope="module")
def final_run(tmp_path_factory, real_data) -> dict:
    """A tiny search (2 trials, 2 epochs, default ``--final cv``), SIGKILLed once a final
    member has finished, then resumed; what the members folder held at the kill."""
    tmp = tmp_path_factory.mktemp("final")
    out = tmp / "run"
    members = out / "best" / "members"
    args = ["--data", str(real_data), "--image-size", "32", "--batch-size", "8",
            "--backbones", "small_cnn", "--trials", "2", "--max-epochs", "2",
            "--grace-period", "1", "--num-cpus", "2", "--decision-rule", "oof",
            "--out", str(out)]
    proc = start(args, tmp, tmp / "first.log")
    try:
        deadline = time.monotonic() + 900
        while time.monotonic() < deadline and proc.poll() is None:
            if list(members.glob("fold*.json")):
                break
            time.sleep(0.2)
        assert proc.poll() is None, proc.log.read_text()[-3000:]  # type: ignore[attr-defined]
    finally:
        stop_group(proc)  # SIGKILL: the driver and its Ray get no chance to clean up
    killed_at = time.time()
    finished = sorted(p.stem for p in members.glob("fold*.json"))
    kept = {p.name: (p.stat().st_mtime_ns, p.read_bytes())
            for n in finished for p in (members / f"{n}.json", members / f"{n}.keras")}
    assert finished and len(finished) < len(MEMBERS), finished
    assert not (out / "best" / "model.keras").exists()  # killed before the export
    text = run([*args, "--resume"], tmp)
    return {"out": out, "finished": finished, "kept": kept, "killed_at": killed_at,
            "log": text, "metrics": json.loads((out / "best" / "metrics.json").read_text()),
            "store": next((tmp / "cache" / "stores").iterdir())}


@pytest.mark.slow
def test_final_resume_keeps_finished_members_and_trains_the_rest(final_run):
    members = final_run["out"] / "best" / "members"
    for name, (mtime, data) in final_run["kept"].items():  # untouched by the second run
        assert (members / name).stat().st_mtime_ns == mtime, name
        assert (members / name).read_bytes() == data, name
    kept, todo = len(final_run["finished"]), len(MEMBERS) - len(final_run["finished"])
    assert f"{kept} kept from an earlier run, {todo} to train at once" in final_run["log"]
    assert sorted(p.stem for p in members.glob("fold*.json")) == list(MEMBERS)
    spans = {m["name"]: m for m in final_run["metrics"]["members"]}
    for name in MEMBERS:  # the rest were trained by the resumed run
        assert (spans[name]["started_at"] > final_run["killed_at"]) == \
            (name not in final_run["finished"]), (name, spans[name], final_run["killed_at"])


@pytest.mark.slow
def test_final_cv_member_trainings_overlap_in_time(final_run):
    spans = sorted((m["started_at"], m["ended_at"]) for m in final_run["metrics"]["members"])
    assert len(spans) == 3 and all(s < e for s, e in spans), spans
    # 2 CPUs, 1 per member: two trainings ran at once (in the first run or the resumed one)
    overlaps = [(a, b) for i, a in enumerate(spans) for b in spans[i + 1:]
                if max(a[0], b[0]) < min(a[1], b[1])]
    assert overlaps, spans


@pytest.mark.slow
def test_final_cv_exports_the_ensemble_with_tta_and_its_threshold(final_run):
    from leukemia.models import load_model, model_spec
    from leukemia.store import Store
    from leukemia.train import predict_proba

    metrics, out = final_run["metrics"], final_run["out"]
    model = load_model(str(out / "best" / "model.keras"))
    spec = model_spec(model)
    store = Store(str(final_run["store"]))
    assert spec["members"] == 3 and spec["tta"] is True
    assert spec["threshold"] == metrics["threshold"]
    assert (spec["crop"], spec["window"]) == store.crop == ("window", 320)
    assert spec["image_size"] == 32
    assert spec["info"]["members"] == list(MEMBERS)
    # metrics.json's validation scores are this model's, at the stored threshold
    val = store.load("validation")
    p = predict_proba(model, val.images)
    again = M.binary_metrics(val.labels, p, val.patient_ids, threshold=spec["threshold"])
    assert again["confusion_matrix"] == metrics["confusion_matrix"]
    assert again["roc_auc"] == pytest.approx(metrics["roc_auc"], abs=1e-6)
    config = json.loads((out / "best" / "config.json").read_text())
    assert config["threshold"] == metrics["threshold"] and config["members"] == list(MEMBERS)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["threshold"] == metrics["threshold"]


@pytest.mark.slow
def test_final_cv_metrics_hold_the_cv_estimate_and_both_thresholds(final_run):
    from leukemia.store import Store

    m = final_run["metrics"]
    assert m["final"] == "cv" and m["tta"] is True and m["split"] == "validation"
    assert [(x["name"], x["fold"], x["seed"]) for x in m["members"]] == \
        [(n, i, 0) for i, n in enumerate(MEMBERS)]
    assert 0.0 <= m["threshold"] <= 1.0
    assert m["threshold"] == m["cv_threshold"]
    assert "out-of-fold" in m["threshold_source"]
    for key in ("cv_weighted_f1", "cv_roc_auc", "cv_sensitivity", "cv_specificity"):
        assert key in m, key
    assert 0.0 <= m["cv_weighted_f1"] <= 1.0
    assert m["at_0.5"]["threshold"] == 0.5 and m["cv_at_0.5"]["threshold"] == 0.5
    assert m["n"] == m["at_0.5"]["n"] == 40
    # the batch variants beside the per-cell scores: 40 cells are enough for the neighbours,
    # too few for BatchNorm re-estimation
    t = m["transductive"]
    assert t["neighbours"]["k"] == 7 and t["neighbours"]["n"] == 40
    assert "fewer than 100" in t["adapted_bn"]["skipped"]
    val = Store(str(final_run["store"])).load("validation")
    assert t["per_patient"]["patients"] == len(set(val.patient_ids.tolist())) == 22
    # the threshold maximises weighted F1 on the out-of-fold predictions: no worse than 0.5
    assert m["cv_weighted_f1"] >= m["cv_at_0.5"]["weighted_f1"] - 1e-12


@pytest.mark.slow
def test_final_cv_oof_predictions_one_row_per_training_cell(final_run):
    from leukemia.store import Store

    with (final_run["out"] / "best" / "oof_predictions.csv").open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    train = Store(str(final_run["store"])).load("training")
    assert sorted(r["image_id"] for r in rows) == sorted(train.image_ids.tolist())
    fold_of = dict(zip(train.image_ids.tolist(), train.folds.tolist()))
    for r in rows:  # scored by the member that held out the cell's own fold
        assert int(r["fold"]) == fold_of[r["image_id"]], r
        assert 0.0 <= float(r["p_all"]) <= 1.0
    assert final_run["metrics"]["cv_n"] == len(rows)
    y = np.asarray([int(r["label"]) for r in rows])
    p = np.asarray([float(r["p_all"]) for r in rows])
    recomputed = M.binary_metrics(y, p, threshold=final_run["metrics"]["threshold"], n_boot=0)
    # the CSV's 6 decimals could move a cell within 5e-7 of the threshold, no more
    assert recomputed["weighted_f1"] == pytest.approx(final_run["metrics"]["cv_weighted_f1"],
                                                      abs=0.011)

