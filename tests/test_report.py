"""Tests for search.report: trials.csv and the self-contained report.html."""

from __future__ import annotations

import csv
import re
from pathlib import Path

import optuna
import pytest

from search.report import write_report, write_trials_csv

COMMAND = "python search/run.py --trials 6 --note 'a<b & c>d'"
SETTINGS = {
    "trials": 6,
    "max_epochs": 4,
    "grace_period": 1,
    "reduction_factor": 2,
    "image_size": 64,
    "val_fold": 0,
    "backbones": ["small_cnn", "mobilenet_v3"],
}


def _trial(number: int, status: str, scores: list[float | None], **params: object) -> dict:
    """A trial dict as the search driver builds it, with history from ``scores``."""
    history = [
        {"epoch": i + 1, "val_weighted_f1": s, "loss": 0.7 - 0.05 * i, "val_loss": 0.6}
        for i, s in enumerate(scores)
    ]
    finite = [(s, i + 1) for i, s in enumerate(scores) if s is not None]
    best_score, best_epoch = max(finite) if finite else (None, None)
    return {
        "trial_id": f"a1b2c3_{number:05d}",
        "number": number,
        "params": params,
        "status": status,
        "error": "ValueError: loss is NaN at step 3" if status == "failed" else None,
        "history": history,
        "best_score": best_score,
        "best_epoch": best_epoch,
        "epochs_run": len(scores),
        "node_id": "f3e2d1c0b9a8" * 4,
        "started_at": 1700000000.0 + 60 * number,
        "ended_at": None if status == "running" else 1700000050.0 + 60 * number,
    }


def _trials() -> list[dict]:
    """Seven trials covering every status; ``augment_strength`` is conditional on ``augment``."""
    return [
        _trial(2, "pruned", [0.55, 0.58], backbone="small_cnn", learning_rate=0.03, augment=False),
        _trial(
            0,
            "completed",
            [0.61, 0.68, 0.71, 0.70],
            backbone="small_cnn",
            learning_rate=0.0012,
            augment=True,
            augment_strength=0.4,
        ),
        _trial(
            1,
            "completed",
            [0.64, 0.69, 0.74, float("nan")],
            backbone="mobilenet_v3",
            learning_rate=0.0005,
            augment=True,
            augment_strength=0.2,
        ),
        _trial(3, "failed", [0.52], backbone="mobilenet_v3", learning_rate=0.09, augment=False),
        _trial(
            4,
            "running",
            [0.6, 0.66],
            backbone="small_cnn",
            learning_rate=0.002,
            augment=True,
            augment_strength=0.7,
        ),
        _trial(5, "pending", [], backbone="small_cnn", learning_rate=0.004, augment=False),
        _trial(6, "failed", [], backbone="small_cnn", learning_rate=0.5, augment=False),
    ]


def _study(n_complete: int = 4, n_pruned: int = 2) -> optuna.Study:
    """A real in-memory study with COMPLETE and PRUNED trials told through ask/tell."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.RandomSampler(0))
    for i in range(n_complete + n_pruned):
        trial = study.ask()
        backbone = trial.suggest_categorical("backbone", ["small_cnn", "mobilenet_v3"])
        lr = trial.suggest_float("learning_rate", 1e-4, 1e-1, log=True)
        if trial.suggest_categorical("augment", [True, False]):
            trial.suggest_float("augment_strength", 0.0, 1.0)
        score = 0.6 + 0.1 * (backbone == "small_cnn") + 0.01 * lr
        if i < n_complete:
            study.tell(trial, score)
        else:
            trial.report(score - 0.1, 1)
            study.tell(trial, state=optuna.trial.TrialState.PRUNED)
    return study


def _final() -> dict:
    """A final-retrain result with two seeds."""
    return {
        "config": {"backbone": "mobilenet_v3", "learning_rate": 0.0005, "epochs": 4},
        "epochs": 3,
        "seeds": [0, 1],
        "metrics": {
            "weighted_f1": 0.81,
            "weighted_f1_ci95": [0.74, 0.87],
            "accuracy": 0.82,
            "balanced_accuracy": 0.79,
            "sensitivity": 0.9,
            "specificity": 0.68,
            "precision": 0.84,
            "roc_auc": 0.88,
            "confusion_matrix": [[34, 16], [10, 90]],
            "n": 150,
            "n_patients": 4,
        },
        "seed_summary": {
            "weighted_f1": {"mean": 0.8, "std": 0.01, "values": [0.79, 0.81]},
            "accuracy": {"mean": 0.81, "std": 0.01, "values": [0.8, 0.82]},
        },
        "roc": {"fpr": [0.0, 0.1, 0.3, 1.0], "tpr": [0.0, 0.6, 0.9, 1.0]},
        "per_patient": [
            {"patient_id": "H27", "label": 0, "n": 30, "accuracy": 0.67},
            {"patient_id": "H31", "label": 0, "n": 20, "accuracy": 0.7},
            {"patient_id": "P4", "label": 1, "n": 60, "accuracy": 0.95},
            {"patient_id": "P9", "label": 1, "n": 40, "accuracy": None},
        ],
    }


def _render(tmp_path: Path, **kw: object) -> str:
    """Write the report with defaults overridden by ``kw`` and return its text."""
    args: dict = {
        "trials": _trials(),
        "study": _study(),
        "final": _final(),
        "command": COMMAND,
        "settings": SETTINGS,
        "max_t": 4,
    }
    args.update(kw)
    path = tmp_path / "report.html"
    write_report(path, **args)
    return path.read_text(encoding="utf-8")


def _section(page: str, key: str) -> str:
    """The HTML of one ``<section id=key>``."""
    match = re.search(rf'<section id="{key}">(.*?)</section>', page, re.S)
    assert match, f"section {key!r} missing"
    return match.group(1)


def test_write_trials_csv_one_row_per_trial_with_param_columns(tmp_path: Path) -> None:
    path = tmp_path / "runs" / "trials.csv"
    write_trials_csv(path, _trials())
    with path.open(newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["number"] for r in rows] == ["0", "1", "2", "3", "4", "5", "6"]
    assert list(rows[0])[:12] == [
        "trial_id",
        "number",
        "status",
        "best_score",
        "best_epoch",
        "epochs_run",
        "error",
        "node_id",
        "nodes",
        "resumed_from_epoch",
        "started_at",
        "ended_at",
    ]
    params = {c for c in rows[0] if c.startswith("param_")}
    assert params == {
        "param_backbone",
        "param_learning_rate",
        "param_augment",
        "param_augment_strength",
    }
    assert rows[0]["param_augment_strength"] == "0.4"
    assert rows[2]["param_augment_strength"] == ""  # conditional param absent
    assert rows[6]["best_score"] == "" and rows[6]["error"].startswith("ValueError")
    assert rows[4]["ended_at"] == ""
    assert float(rows[1]["best_score"]) == pytest.approx(0.74)
    assert not list(tmp_path.joinpath("runs").glob(".*tmp"))  # the temp file was renamed


def test_write_trials_csv_replaces_existing_file(tmp_path: Path) -> None:
    path = tmp_path / "trials.csv"
    write_trials_csv(path, _trials())
    write_trials_csv(path, _trials()[:1])
    assert len(path.read_text().splitlines()) == 2
    assert [p.name for p in tmp_path.iterdir()] == ["trials.csv"]


def test_write_report_has_every_plot_and_no_external_resources(tmp_path: Path) -> None:
    page = _render(tmp_path)
    for key in ("final", "history", "importance", "curves"):
        assert "<svg" in _section(page, key), key
    assert "http://" not in page and "https://" not in page
    assert not re.search(r"<(script|link|img|iframe)\b", page, re.I)
    assert not re.search(r"\b(src|href)\s*=\s*[\"'](?!#)", page, re.I)
    assert "a&lt;b &amp; c&gt;d" in page and "a<b" not in page
    assert "true normal" in page and "predicted ALL" in page
    assert "AUC = 0.88" in page
    assert "0.8000 ± 0.0100" in page


def test_write_report_marks_pruned_trials(tmp_path: Path) -> None:
    curves = _section(_render(tmp_path), "curves")
    pruned = re.findall(r'<path class="marker-pruned"[^>]*><title>([^<]*)</title>', curves)
    assert pruned == ["#2 a1b2c3_00002 (pruned): stopped by ASHA"]
    assert curves.count('class="marker-completed"') == 2
    failed = re.search(r"<polyline [^>]*><title>#3 [^<]*\(failed\)</title>", curves)
    assert failed and 'stroke-dasharray="5,3"' in failed.group(0)
    assert curves.count('class="marker-failed"') == 1  # the failed trial with no epoch has none


def test_write_report_without_study_or_final_renders_notes(tmp_path: Path) -> None:
    page = _render(tmp_path, study=None, final=None)
    assert "No final result" in _section(page, "final")
    assert "No Optuna study" in _section(page, "importance")
    assert "<svg" in _section(page, "curves")
    assert "a1b2c3_00005" in _section(page, "trials")


def test_write_report_notes_importances_that_cannot_be_computed(tmp_path: Path) -> None:
    section = _section(_render(tmp_path, study=_study(n_complete=1, n_pruned=2)), "importance")
    assert "at least 2 complete trials" in section and "<svg" not in section


def test_write_report_notes_importance_errors(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def fail(study: optuna.Study) -> dict:
        raise RuntimeError("evaluator <broke>")

    monkeypatch.setattr(optuna.importance, "get_param_importances", fail)
    section = _section(_render(tmp_path), "importance")
    assert "could not be computed: RuntimeError: evaluator &lt;broke&gt;" in section
    assert "<svg" not in section


def test_write_report_with_no_trials(tmp_path: Path) -> None:
    page = _render(tmp_path, trials=[], study=None, final=None)
    assert "No trial has a score yet" in page and "No trials." in page
