"""The search end to end: real local Ray, real Optuna, real Keras on tiny images.

Each test runs ``search/run.py`` as a user would, in a subprocess of its own process group, and
stops only the processes that run started.
"""

from __future__ import annotations

import dataclasses
import json
import re
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from searchrun import REPO, env, run, start, stop_group
from searchrun import trials as read_trials

from leukemia.config import TrainConfig
from leukemia.models import load_model, model_spec
from search.resources import default_trials_per_gpu, gpu_memory_cap_mb
from search.settings import SearchSettings
from search.space import define_space, to_train_overrides

PLUGIN = Path(__file__).parent / "plugins" / "faulty_backbones.py"
SMALL = ["--image-size", "32", "--batch-size", "8", "--backbones", "small_cnn",
         "--reduction-factor", "2", "--grace-period", "1", "--num-cpus", "2"]


def _study(out: Path) -> optuna.Study:
    return optuna.load_study(study_name="cnmc-search", storage=f"sqlite:///{out / 'study.db'}")


# ---------------------------------------------------------------------------------------------
# Pure units


def test_space_samples_in_range_with_conditionals():
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    backbones = ["small_cnn", "mobilenet_v3_small", "resnet50"]
    for weights in ("none", "imagenet"):
        for _ in range(40):
            trial = study.ask()
            define_space(trial, backbones, weights=weights, max_epochs=5)
            p = trial.params
            assert p["backbone"] in backbones
            assert 1e-4 <= p["learning_rate"] <= 3e-3
            assert ("augment_strength" in p) == p["augment"]
            assert 0.0 <= p["dropout"] <= 0.5 and 0.0 <= p["label_smoothing"] <= 0.1
            assert p["class_weight"] in ("none", "balanced")
            freeze = [k for k in p if k.startswith("freeze_epochs_")]
            pretrained = weights == "imagenet" and p["backbone"] != "small_cnn"
            assert freeze == ([f"freeze_epochs_{p['backbone']}"] if pretrained else [])
            for k in freeze:
                assert 0 <= p[k] <= 3
            study.tell(trial, 0.5)


def test_space_overrides_fold_branch_names():
    o = to_train_overrides({"backbone": "resnet50", "freeze_epochs_resnet50": 2,
                            "augment": False, "learning_rate": 1e-3})
    assert o["freeze_epochs"] == 2 and "freeze_epochs_resnet50" not in o
    assert o["optimizer"] == "adamw"


def test_gpu_memory_cap_splits_memory():
    assert gpu_memory_cap_mb(81920, 4) == (81920 - 1024) // 4
    assert gpu_memory_cap_mb(16384, 1) == 16384 - 1024
    with pytest.raises(ValueError, match="cannot hold"):
        gpu_memory_cap_mb(2048, 4)
    with pytest.raises(ValueError, match="at least 1"):
        gpu_memory_cap_mb(16384, 0)


def test_default_trials_per_gpu_follows_memory():
    assert default_trials_per_gpu(None) == 1
    assert default_trials_per_gpu(8000) == 1
    assert default_trials_per_gpu(24576) == 3
    assert default_trials_per_gpu(81920) == 4


def test_search_settings_defaults_and_is_frozen():
    s = SearchSettings(store="runs/store")
    assert (s.crop, s.window, s.tta, s.cpus_per_trial, s.plugins) == ("window", 320, True, 1, ())
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.tta = False  # type: ignore[misc]
    assert SearchSettings(**s.to_dict()) == s


def test_search_settings_rejects_a_zero_epoch_budget():
    with pytest.raises(ValueError, match=re.escape("SearchSettings.max_epochs=0: must be at "
                                                   "least 1")):
        SearchSettings(store="s", max_epochs=0)


def test_search_settings_rejects_negative_trials_per_gpu():
    with pytest.raises(ValueError, match=re.escape("trials_per_gpu=-1 and cpus_per_trial=1")):
        SearchSettings(store="s", trials_per_gpu=-1)


def test_search_settings_rejects_zero_cpus_per_trial():
    with pytest.raises(ValueError, match=re.escape("trials_per_gpu=0 and cpus_per_trial=0")):
        SearchSettings(store="s", cpus_per_trial=0)


def test_search_settings_fix_every_trials_budget_and_schedule():
    s = SearchSettings(store="s", image_size=48, batch_size=16, max_epochs=7, val_fold=2,
                       seed=3)
    config = TrainConfig().override(s.train_overrides())
    assert (config.image_size, config.batch_size, config.val_fold, config.seed) == (48, 16, 2, 3)
    # every trial decays its learning rate over the whole budget, even one ASHA stops early
    assert config.epochs == config.schedule_epochs == 7


def test_run_rejects_bad_flags(tmp_path, real_data):
    out = subprocess.run([sys.executable, str(REPO / "search" / "run.py"), "--data",
                          str(real_data), "--image-size", "32", "--backbones", "inception_v3",
                          "--out", str(tmp_path / "o")], cwd=REPO, env=env(tmp_path),
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 2
    assert "inception_v3 needs at least 75 px" in out.stderr


# ---------------------------------------------------------------------------------------------
# End to end


@pytest.mark.slow
def test_search_end_to_end_on_real_sample(tmp_path, real_data):
    # --final all-folds: one final model (the default, a cross-validated ensemble with TTA, has
    # its own end-to-end test in tests/test_final.py); the cell crop and no TTA travel with it
    out = tmp_path / "run"
    text = run(["--trials", "6", "--data", str(real_data), "--max-epochs", "3",
                "--out", str(out), "--final", "all-folds", "--crop", "cell", "--no-tta",
                *SMALL], tmp_path)
    trials = read_trials(out)
    assert len(trials) == 6
    statuses = [t["status"] for t in trials]
    # whether ASHA stops one of 6 trials depends on the order their scores arrive in (all 5
    # non-constant trials of one CI run arrived each better than the last): the rule, not a
    # count, is what holds. A trial that stopped early is pruned or constant, one that ran the
    # budget completed (or constant); the study says the same, with the curve up to the stop.
    for t in trials:
        early = int(t["epochs_run"]) < 3
        assert t["status"] in (("pruned", "constant") if early else ("completed", "constant")), t
    assert "completed" in statuses, statuses
    study = {t.user_attrs["ray_trial_id"]: t for t in _study(out).trials}
    for t in trials:
        st, early = study[t["trial_id"]], int(t["epochs_run"]) < 3
        assert st.state == (optuna.trial.TrialState.PRUNED if early
                            else optuna.trial.TrialState.COMPLETE), (t, st.state)
        if early:  # the curve up to the stop is kept
            assert max(st.intermediate_values) == int(t["epochs_run"]), st.intermediate_values
    metrics = json.loads((out / "best" / "metrics.json").read_text())
    assert metrics["n"] == 40 and metrics["split"] == "validation"
    for key in ("weighted_f1", "weighted_f1_ci95", "accuracy", "balanced_accuracy",
                "sensitivity", "specificity", "precision", "roc_auc", "confusion_matrix",
                "n_patients"):
        assert key in metrics
    # all-folds: one member trained on every fold, no held-out predictions, threshold 0.5
    assert metrics["final"] == "all-folds" and metrics["threshold"] == 0.5
    assert [(m["name"], m["fold"]) for m in metrics["members"]] == [("foldall-seed0", None)]
    assert metrics["at_0.5"]["weighted_f1"] == metrics["weighted_f1"]
    assert not [k for k in metrics if k.startswith("cv_")]
    assert not (out / "best" / "oof_predictions.csv").exists()
    spec = model_spec(load_model(str(out / "best" / "model.keras")))
    assert (spec["members"], spec["threshold"], spec["tta"]) == (1, 0.5, False)
    assert (spec["crop"], spec["window"]) == ("cell", None)
    assert metrics["tta"] is False
    config = json.loads((out / "best" / "config.json").read_text())
    assert config["val_fold"] is None and config["final"] == "all-folds"
    assert (config["crop"], config["tta"]) == ("cell", False)
    # the final trains the best full-budget trial (by its last epoch) for that whole budget
    summary = json.loads((out / "summary.json").read_text())
    full = {t["trial_id"]: t for t in trials if t["status"] == "completed"}
    assert summary["best_trial"] in full and summary["best_epoch"] == 3 == config["epochs"]
    html = (out / "report.html").read_text()
    assert html.count("<svg") >= 4 and "<script src" not in html
    assert "trials 6:" in text  # the live view


@pytest.mark.slow
def test_search_records_failing_trials_and_completes(tmp_path, real_data):
    out = tmp_path / "run"
    run(["--trials", "3", "--data", str(real_data), "--max-epochs", "2", "--out", str(out),
          "--plugin", str(PLUGIN), "--max-failures", "0", "--no-final",
          *[a if a != "small_cnn" else "broken_net,nan_net" for a in SMALL]], tmp_path)
    trials = read_trials(out)
    assert len(trials) == 3
    assert all(t["status"] == "failed" for t in trials), trials
    errors = " ".join(t["error"] for t in trials)
    for t in trials:
        if t["param_backbone"] == "nan_net":
            assert "FloatingPointError" in t["error"] and "loss became nan" in t["error"]
        else:
            assert "broken_net" in t["error"]
    assert errors
    assert all(t.state == optuna.trial.TrialState.FAIL for t in _study(out).trials)


@pytest.mark.slow
def test_search_resumes_after_driver_is_killed(tmp_path, real_data):
    out = tmp_path / "run"
    args = ["--trials", "5", "--data", str(real_data), "--max-epochs", "4", "--out", str(out),
            "--no-final", *SMALL]
    proc = start(args, tmp_path, tmp_path / "first.log")
    try:
        deadline = time.monotonic() + 600
        done_before: dict[str, int] = {}
        while time.monotonic() < deadline and proc.poll() is None:
            done_before = _finished_trials(out)
            if len(done_before) >= 1 and _running_trials(out) >= 1:
                break
            time.sleep(1)
        assert proc.poll() is None, proc.log.read_text()[-3000:]
    finally:
        stop_group(proc)  # SIGKILL: the driver gets no chance to clean up
    assert done_before, "no trial finished before the kill"
    run([*args, "--resume"], tmp_path)
    trials = read_trials(out)
    assert len(trials) == 5
    for path, n_results in done_before.items():  # finished trials were not trained again
        assert _result_lines(Path(path)) == n_results
    # a trial that was running at the kill continued from its last epoch checkpoint
    assert any(int(t["resumed_from_epoch"] or 0) >= 1 for t in trials), trials
    assert all(t["status"] in ("completed", "pruned", "constant") for t in trials), trials


def _trial_dirs(out: Path) -> list[Path]:
    return sorted((out / "tune").glob("trial_*"))


def _result_lines(trial_dir: Path) -> int:
    f = trial_dir / "result.json"
    return len(f.read_text().splitlines()) if f.exists() else 0


def _finished_trials(out: Path) -> dict[str, int]:
    done = {}
    for d in _trial_dirs(out):
        lines = (d / "result.json").read_text().splitlines() if (d / "result.json").exists() \
            else []
        if lines and json.loads(lines[-1]).get("done"):
            done[str(d)] = len(lines)
    return done


def _running_trials(out: Path) -> int:
    n = 0
    for d in _trial_dirs(out):
        lines = (d / "result.json").read_text().splitlines() if (d / "result.json").exists() \
            else []
        if lines and not json.loads(lines[-1]).get("done"):
            n += 1
    return n


@pytest.mark.slow
def test_single_gpu_mode_packs_trials_on_one_declared_gpu(tmp_path, real_data):
    out = tmp_path / "run"
    run(["--trials", "3", "--data", str(real_data), "--max-epochs", "2", "--out", str(out),
          "--no-final", "--trials-per-gpu", "3", "--num-gpus", "1",
          *[a if a != "2" or i != SMALL.index("--num-cpus") + 1 else "3"
            for i, a in enumerate(SMALL)]], tmp_path)
    trials = read_trials(out)
    assert len(trials) == 3
    spans = sorted((float(t["started_at"]), float(t["ended_at"])) for t in trials)
    # all three ran at the same time: each started before any other ended
    assert max(s for s, _ in spans) < min(e for _, e in spans), spans
