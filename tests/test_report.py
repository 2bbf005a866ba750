"""Tests for search.report: trials.csv and the self-contained report.html."""

from __future__ import annotations

import base64
import csv
import re
from pathlib import Path

import cv2
import numpy as np
import optuna
import pytest

from leukemia.metrics import best_threshold, binary_metrics, threshold_curve
from search.gallery import png_data_uri
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
    assert list(rows[0])[:13] == [
        "trial_id",
        "number",
        "status",
        "best_score",
        "best_epoch",
        "epochs_run",
        "last_score",
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
    assert not re.search(r"<(script|link|iframe)\b", page, re.I)
    # Pictures are inline PNGs; links only jump within the page.
    assert not re.search(r"\bsrc\s*=\s*[\"'](?!data:image/png;base64,)", page, re.I)
    assert not re.search(r"\bhref\s*=\s*[\"'](?!#)", page, re.I)
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


# --------------------------------------------------------------------------- final step, pictures

RED = (255, 0, 0)  # RGB; a swap to BGR would read back as blue


def _cell(colour: tuple[int, int, int], h: int = 120, w: int = 100) -> np.ndarray:
    """A uint8 RGB image of one colour with a dark centre, ``h`` x ``w``."""
    img = np.empty((h, w, 3), np.uint8)
    img[:] = colour
    img[h // 3 : 2 * h // 3, w // 3 : 2 * w // 3] = 20
    return img


def _cv_final() -> dict:
    """A final result as the CV-ensemble step builds it, from real metrics on made-up scores."""
    rng = np.random.default_rng(0)
    y = (rng.random(240) < 0.6).astype(int)
    p = np.clip(0.35 * y + 0.65 * rng.random(240), 0, 1)
    ids = np.array([f"P{i % 12}" for i in range(240)])
    t = best_threshold(y, p)
    thresholds, wf1 = threshold_curve(y, p)
    val_y, val_p, val_ids = y[:80], p[:80], ids[:80]
    wrong_idx = np.flatnonzero((val_p >= t) != (val_y == 1))
    return {
        **_final(),
        "threshold": t,
        "threshold_source": "out-of-fold predictions of 3 folds",
        "metrics": binary_metrics(val_y, val_p, val_ids, n_boot=100),
        "metrics_at_threshold": binary_metrics(val_y, val_p, val_ids, threshold=t, n_boot=100),
        "cv": binary_metrics(y, p, ids, threshold=t, n_boot=100,
                             ci_keys=("weighted_f1", "sensitivity", "specificity", "roc_auc")),
        "cv_curve": {"thresholds": thresholds.tolist(), "weighted_f1": wf1.tolist()},
        "members": [{"fold": k, "seed": 0, "epochs": 3, "started_at": 1700000000.0 + k,
                     "ended_at": 1700000060.0 + k} for k in range(3)],
        "wrong": [
            {"image_id": f"img{i}", "patient_id": str(val_ids[i]), "label": int(val_y[i]),
             "p_all": float(val_p[i]), "pixels": _cell(RED if val_y[i] else (0, 200, 0))}
            for i in wrong_idx
        ],
    }


def _images(html: str) -> list[np.ndarray]:
    """Every inline PNG of ``html``, decoded back to RGB."""
    out = []
    for b64 in re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', html):
        bgr = cv2.imdecode(np.frombuffer(base64.b64decode(b64), np.uint8), cv2.IMREAD_COLOR)
        assert bgr is not None
        out.append(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
    return out


def test_write_report_final_shows_both_thresholds_cv_and_curve(tmp_path: Path) -> None:
    final = _cv_final()
    section = _section(_render(tmp_path, final=final), "final")
    t = f"{final['threshold']:.4g}"
    for heading in ("validation, t = 0.5", f"validation, t = {t}",
                    f"cross-validation (out-of-fold), t = {t}"):
        assert f"<th>{heading}</th>" in section, heading
    assert f"Confusion matrix: validation, t = {t}" in section
    assert "out-of-fold predictions of 3 folds" in section
    assert f"{final['cv']['weighted_f1']:.4f}" in section
    lo, hi = final["cv"]["specificity_ci95"]
    assert f"95% CI {lo:.4f}–{hi:.4f}" in section
    assert section.count('class="marker-threshold"') == 1
    assert f"chosen t = {final['threshold']:.3g}" in section
    assert "validation: 80 cells of 12 patients; cross-validation (out-of-fold): 240 cells" \
        in section
    assert section.count("<td>none (all training folds)</td>") == 0
    # member 2: fold 2 held out, seed 0, 3 epochs, started 1700000002 (UTC), took 60 s
    assert "<tr><td>2</td><td>2</td><td>0</td><td>3</td><td>22:13:22</td><td>60</td></tr>" \
        in section


def test_write_report_errors_gallery_images_decode(tmp_path: Path) -> None:
    final = _cv_final()
    section = _section(_render(tmp_path, final=final), "errors")
    n_fp = sum(w["label"] == 0 for w in final["wrong"])
    n_fn = len(final["wrong"]) - n_fp
    assert n_fp and n_fn
    assert f"Normal cells called ALL (false positives): {n_fp}" in section
    assert f"ALL cells called normal (false negatives): {n_fn}" in section
    images = _images(section)
    assert len(images) == len(final["wrong"])
    assert all(img.shape == (96, 80, 3) for img in images)  # 120x100 shrunk to 96 px high
    assert sum(tuple(img[2, 2]) == RED for img in images) == n_fn  # RGB order kept
    # Most confidently wrong first within each group: P(ALL) descending for normal cells.
    fp_part = section.split("false negatives")[0]
    shown = [float(v) for v in re.findall(r"P\(ALL\) <b>([0-9.]+)</b>", fp_part)]
    assert shown == sorted(shown, reverse=True) and len(shown) == n_fp


def test_write_report_overview_counts_and_samples(tmp_path: Path) -> None:
    overview = {
        "counts": {
            "splits": {"training": {"n": 200, "all": 99, "hem": 101},
                       "validation": {"n": 40, "all": 20, "hem": 20}},
            "folds": {"0": {"n": 80, "all": 40, "hem": 40}, "1": {"n": 77, "all": 39, "hem": 38},
                      "2": {"n": 43, "all": 20, "hem": 23}},
            "patients": {"training": {"1": 6, "11": 190, "H3": 4},
                         "validation": {"53": 20, "54": 20}},
        },
        "samples": {"ALL": [_cell(RED)] * 3, "normal": [_cell((0, 0, 255), 40, 40)] * 2},
    }
    section = _section(_render(tmp_path, overview=overview), "data")
    assert "<tr><th>validation</th><td>40</td><td>20</td><td>20</td><td>50%</td><td>2</td>" \
        in section
    assert "<tr><th>1</th><td>77</td><td>39</td><td>38</td><td>51%</td></tr>" in section
    assert "3 patients, 4–190 cells each (median 6)" in section
    assert "ALL cells (3 samples)" in section and "normal cells (2 samples)" in section
    images = _images(section)
    assert [img.shape for img in images] == [(96, 80, 3)] * 3 + [(40, 40, 3)] * 2
    assert tuple(images[-1][0, 0]) == (0, 0, 255)


def test_write_report_without_validation_split(tmp_path: Path) -> None:
    # The demo store has no validation split: only CV numbers, no errors to show.
    final = {**_cv_final(), "metrics": None, "metrics_at_threshold": None, "roc": None,
             "per_patient": None, "wrong": []}
    page = _render(tmp_path, final=final)
    section = _section(page, "final")
    assert "only the cross-validated estimate" in section
    assert "<th>validation" not in section and "cross-validation (out-of-fold)" in section
    assert "No ROC curve recorded" in section
    assert "no validation split" in _section(page, "errors")


def test_write_report_new_keys_missing_or_none(tmp_path: Path) -> None:
    keys = ("threshold", "threshold_source", "metrics_at_threshold", "cv", "cv_curve",
            "members", "wrong")
    none_final = {**_final(), **dict.fromkeys(keys)}
    for final in (_final(), none_final, {}):
        page = _render(tmp_path, final=final)
        section = _section(page, "final")
        assert "Decision threshold: <b>0.5</b> (no threshold stored)" in section
        assert "No weighted-F1-by-threshold curve recorded" in section
        assert "No misclassified cells were recorded" in _section(page, "errors")
        assert "No data overview was given" in _section(page, "data")
    assert "No final result" in _section(_render(tmp_path, final=None), "errors")


def test_write_report_bad_picture_is_a_placeholder(tmp_path: Path) -> None:
    final = {**_cv_final(), "wrong": [{"image_id": "x", "patient_id": "P1", "label": 0,
                                       "p_all": 0.9, "pixels": np.zeros((8, 8), np.float32)}]}
    section = _section(_render(tmp_path, final=final), "errors")
    assert 'class="cell-missing"' in section and "uint8 RGB array of shape (h, w, 3)" in section


def test_write_report_thins_long_threshold_curve(tmp_path: Path) -> None:
    x = np.linspace(0, 1, 5001)
    wf1 = 0.8 - (x - 0.3) ** 2
    final = {**_final(), "threshold": 0.3013,
             "cv_curve": {"thresholds": x.tolist(), "weighted_f1": wf1.tolist()}}
    section = _section(_render(tmp_path, final=final), "final")
    curve = re.findall(r'<polyline points="([^"]*)"', section)[-1]
    assert 400 <= len(curve.split()) <= 803
    assert 'class="marker-threshold"' in section


def test_png_data_uri_shrinks_and_keeps_rgb() -> None:
    uri = png_data_uri(_cell(RED, 300, 150), max_side=60)
    img = _images(f'src="{uri}"')[0]
    assert img.shape == (60, 30, 3) and tuple(img[0, 0]) == RED
    with pytest.raises(ValueError, match=r"uint8 RGB array of shape \(h, w, 3\), got dtype"):
        png_data_uri(np.zeros((4, 4, 4), np.uint8))
