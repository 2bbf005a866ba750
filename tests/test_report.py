"""Tests for search.report: trials.csv and the self-contained report.html.

The report is checked as a reader sees it: section titles, the text of tables and figures (SVG
labels are text), the number of figures and pictures, escaping, and that nothing is fetched.
"""

from __future__ import annotations

import base64
import csv
import re
from html.parser import HTMLParser
from pathlib import Path

import cv2
import numpy as np
import optuna
import pytest

from leukemia.metrics import best_threshold, binary_metrics, threshold_curve
from search.gallery import png_data_uri
from search.report import write_report, write_trials_csv
from search.results import FinalResult, Trial

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


def _trial(number: int, status: str, scores: list[float | None], **params: object) -> Trial:
    """A trial as the search driver builds it, with history from ``scores``."""
    history = [
        {"epoch": i + 1, "val_weighted_f1": s, "loss": 0.7 - 0.05 * i, "val_loss": 0.6}
        for i, s in enumerate(scores)
    ]
    finite = [(s, i + 1) for i, s in enumerate(scores) if s is not None]
    best_score, best_epoch = max(finite) if finite else (None, None)
    return Trial(
        trial_id=f"a1b2c3_{number:05d}",
        number=number,
        params=params,
        status=status,
        error="ValueError: loss is NaN at step 3" if status == "failed" else None,
        history=history,
        best_score=best_score,
        best_epoch=best_epoch,
        epochs_run=len(scores),
        node_id="f3e2d1c0b9a8" * 4,
        started_at=1700000000.0 + 60 * number,
        ended_at=None if status == "running" else 1700000050.0 + 60 * number,
    )


def _trials() -> list[Trial]:
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
    """Write the report with defaults overridden by ``kw`` and return its text (a ``final``
    dict becomes a ``FinalResult`` of its keys)."""
    args: dict = {
        "trials": _trials(),
        "study": _study(),
        "final": _final(),
        "command": COMMAND,
        "settings": SETTINGS,
        "max_t": 4,
    }
    args.update(kw)
    if isinstance(args["final"], dict):
        args["final"] = FinalResult(**args["final"])
    path = tmp_path / "report.html"
    write_report(path, **args)
    return path.read_text(encoding="utf-8")


def _section(page: str, key: str) -> str:
    """The HTML of one ``<section id=key>``."""
    match = re.search(rf'<section id="{key}">(.*?)</section>', page, re.S)
    assert match, f"section {key!r} missing"
    return match.group(1)


class _Text(HTMLParser):
    """Collects what a reader sees: text and SVG labels, not CSS."""

    def __init__(self) -> None:
        super().__init__()
        self.parts: list[str] = []
        self.in_style = False

    def handle_starttag(self, tag: str, attrs: list) -> None:
        self.in_style = tag == "style"
        if tag not in ("a", "b", "i", "em", "small", "span"):  # these flow within a line
            self.parts.append(" ")

    def handle_endtag(self, tag: str) -> None:
        self.in_style = False

    def handle_data(self, data: str) -> None:
        if not self.in_style:
            self.parts.append(data)


def _text(html: str) -> str:
    """The text of ``html`` as a reader sees it, whitespace collapsed."""
    parser = _Text()
    parser.feed(html)
    return " ".join("".join(parser.parts).split())


def _rows(html: str) -> list[list[str]]:
    """Every table row of ``html`` as the text of its cells."""
    return [[_text(c) for c in re.findall(r"<t[hd][^>]*>(.*?)</t[hd]>", row, re.S)]
            for row in re.findall(r"<tr>(.*?)</tr>", html, re.S)]


def _figures(html: str) -> list[str]:
    """Every inline SVG figure of ``html``."""
    return re.findall(r"<svg\b.*?</svg>", html, re.S)


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


def test_write_report_is_self_contained_and_escapes_text(tmp_path: Path) -> None:
    page = _render(tmp_path, final=_cv_final())
    assert not re.search(r"<(script|link|iframe|object|embed)\b", page, re.I)
    # Pictures are inline PNGs (<img src>, SVG's <image xlink:href>); links jump within the page.
    assert not re.search(r"\bsrc\s*=\s*[\"'](?!data:image/png;base64,)", page, re.I)
    assert not re.search(r"\bhref\s*=\s*[\"'](?!#|data:image/png;base64,)", page, re.I)
    assert "url(" not in page.replace("url(#", "")  # no CSS fetches either
    # The only http:// are SVG's namespace names, which are never fetched.
    assert "http" not in re.sub(r'xmlns(:\w+)?="http://www\.w3\.org/[^"]*"', "", page)
    assert "a&lt;b &amp; c&gt;d" in page and "a<b" not in page
    assert "--note 'a<b & c>d'" in _text(page)


def test_write_report_has_every_section_with_its_figures(tmp_path: Path) -> None:
    page = _render(tmp_path, final=_cv_final())
    titles = re.findall(r'<section id="(\w+)"><h2>([^<]*)</h2>', page)
    assert titles == [("final", "Final model"), ("errors", "Misclassified validation cells"),
                      ("data", "Data"), ("history", "Optimization history"),
                      ("importance", "Parameter importances"), ("curves", "Learning curves"),
                      ("trials", "Trials")]
    assert re.findall(r'<nav>.*?</nav>', page, re.S)[0].count('href="#') == 7
    # 3 confusion matrices, ROC, weighted F1 by threshold, per-patient accuracy
    assert len(_figures(_section(page, "final"))) == 6
    for key in ("history", "importance", "curves"):
        assert len(_figures(_section(page, key))) == 1, key
    header = _text(page.split("<nav>")[0])
    assert "Trials (7) completed: 2 pruned: 1 failed: 2 running: 1 pending: 1" in header
    assert "a1b2c3_00001 #1 completed val_weighted_f1 0.7400 at epoch 3 of 4" in header
    assert "backbone mobilenet_v3" in header and "learning_rate 0.0005" in header
    assert "grace_period 1" in header and "backbones small_cnn, mobilenet_v3" in header


def test_write_report_final_figures_show_counts_auc_and_patients(tmp_path: Path) -> None:
    final = _section(_render(tmp_path), "final")
    confusion, roc, patients = _figures(final)
    # scikit-learn's confusion matrix, each count with its share of the true class
    words = _text(confusion)
    for count, share in ((34, "68.0%"), (16, "32.0%"), (10, "10.0%"), (90, "90.0%")):
        assert f"{count} {share}" in words
    assert "normal" in words and "ALL" in words and "predicted" in words and "true" in words
    assert "ROC (AUC = 0.88)" in _text(roc)
    # worst patient at the top (labels are drawn bottom up); one without an accuracy left out
    assert re.findall(r"H27|H31|P4|P9", _text(patients))[:3] == ["P4", "H31", "H27"]
    assert "P9" not in _text(patients)
    assert "0.67 (n=30)" in _text(patients) and "ALL patient" in _text(patients)
    assert ["Accuracy", "0.8200", "0.8100 ± 0.0100"] in _rows(final)
    assert "No weighted-F1-by-threshold curve recorded" in _text(final)


def test_write_report_learning_curves_mark_asha_stops_and_statuses(tmp_path: Path) -> None:
    curves = _text(_section(_render(tmp_path), "curves"))
    for entry in ("completed", "pruned (stopped by ASHA)", "failed", "running", "best trial"):
        assert entry in curves, entry
    # one label per curve: trials 5 (pending) and 6 (failed at once) reported no epoch
    assert sorted(re.findall(r"#\d", curves)) == ["#0", "#1", "#2", "#3", "#4"]
    assert "constant" not in curves


def test_write_report_history_shows_scored_trials_and_best_so_far(tmp_path: Path) -> None:
    history = _text(_section(_render(tmp_path), "history"))
    assert "best so far (completed)" in history and "best val_weighted_f1" in history
    assert "2 trial(s) without a score are not shown." in history


def test_write_report_importances_from_optuna(tmp_path: Path) -> None:
    section = _text(_section(_render(tmp_path), "importance"))
    assert "over 4 complete trials" in section
    for param in ("backbone", "learning_rate", "augment", "augment_strength"):
        assert param in section
    assert "Hyperparameter Importance" in section


def test_write_report_without_study_or_final_renders_notes(tmp_path: Path) -> None:
    page = _render(tmp_path, study=None, final=None)
    assert "No final result" in _text(_section(page, "final"))
    assert not _figures(_section(page, "final"))
    assert "No Optuna study" in _text(_section(page, "importance"))
    assert len(_figures(_section(page, "curves"))) == 1
    assert "a1b2c3_00005" in _text(_section(page, "trials"))


def test_write_report_notes_importances_that_cannot_be_computed(tmp_path: Path) -> None:
    section = _section(_render(tmp_path, study=_study(n_complete=1, n_pruned=2)), "importance")
    assert "at least 2 complete trials; the study has 1" in _text(section)
    assert not _figures(section)


def test_write_report_notes_importance_errors(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def fail(*args: object, **kw: object) -> dict:
        raise RuntimeError("evaluator <broke>")

    monkeypatch.setattr(optuna.importance, "get_param_importances", fail)
    section = _section(_render(tmp_path), "importance")
    assert "could not be computed: RuntimeError: evaluator &lt;broke&gt;" in section
    assert not _figures(section)


def test_write_report_with_no_trials(tmp_path: Path) -> None:
    page = _text(_render(tmp_path, trials=[], study=None, final=None))
    assert "Trials (0) none" in page and "No trial reported a score." in page
    assert "No trial has a score yet" in page and "No trial reported an epoch yet" in page
    assert "No trials." in page


def test_write_report_trials_table_rows(tmp_path: Path) -> None:
    rows = _rows(_section(_render(tmp_path), "trials"))
    assert rows[0][:3] == ["trial_id", "number", "status"] and rows[0][-1] == "augment_strength"
    assert [r[2] for r in rows[1:]] == ["completed", "completed", "pruned", "failed", "running",
                                        "pending", "failed"]
    assert rows[4][7] == "ValueError: loss is NaN at step 3"  # short enough to show whole
    assert rows[1][11] == "2023-11-14 22:13:20" and rows[5][12] == "—"
    assert rows[3][-1] == "—"  # a conditional parameter the trial does not have


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
    text, rows = _text(section), _rows(section)
    t = f"{final['threshold']:.4g}"
    assert rows[4][:4] == ["metric", "validation, t = 0.5", f"validation, t = {t}",
                           f"cross-validation (out-of-fold), t = {t}"]
    assert f"Confusion matrix: validation, t = {t}" in text
    assert f"Decision threshold: {t} (out-of-fold predictions of 3 folds)" in text
    specificity = next(r for r in rows if r[0] == "Specificity (recall of normal)")
    lo, hi = final["cv"]["specificity_ci95"]
    assert specificity[3] == f"{final['cv']['specificity']:.4f} 95% CI {lo:.4f}–{hi:.4f}"
    curve = _text(_figures(section)[4])
    assert f"chosen t = {final['threshold']:.3g} (weighted F1 {final['cv']['weighted_f1']:.4f})" \
        in curve and "t = 0.5" in curve and "decision threshold t" in curve
    assert "validation: 80 cells of 12 patients; cross-validation (out-of-fold): 240 cells" in text
    # member 2: fold 2 held out, seed 0, 3 epochs, started 1700000002 (UTC), took 60 s
    assert rows[:4] == [["member", "fold held out", "seed", "epochs", "started (UTC)",
                         "took (s)"], *([f"{k}", f"{k}", "0", "3", f"22:13:2{k}", "60"]
                                        for k in range(3))]


def test_write_report_final_names_the_rule_and_the_batch_variants(tmp_path: Path) -> None:
    final = {**_cv_final(), "rule": {"name": "prior", "threshold": 0.5, "prior": 0.62},
             "transductive": {
                 "note": "each variant uses the whole batch scored together (80 cells): "
                         "transductive",
                 "neighbours": {"k": 7, "n": 80, "weighted_f1": 0.81234, "sensitivity": 0.9,
                                "specificity": 0.7, "roc_auc": 0.88},
                 "adapted_bn": {"skipped": "80 cells, fewer than 100"},
                 "per_patient": {"patients": 12, "all_patients": 7, "accuracy": 0.75,
                                 "sensitivity": 1.0, "specificity": 0.4, "call_share": 0.5}}}
    section = _section(_render(tmp_path, final=final), "final")
    text, rows = _text(section), _rows(section)
    assert "Decision rule stored in the model (what leukemia predict applies): prior matching " \
        "(transductive: 62% of the batch called ALL" in text
    assert "Batch variants on validation_data (transductive)" in text
    assert ["neighbour correction (K = 7)", "weighted_f1 0.8123; sensitivity 0.9000; "
            "specificity 0.7000; roc_auc 0.8800", "80 cells"] in rows
    assert ["BatchNorm statistics of the pooled cells", "—",
            "not scored: 80 cells, fewer than 100"] in rows
    assert ["per-patient call (ALL when at least half the cells are)", "accuracy 0.7500; "
            "sensitivity 1.0000; specificity 0.4000", "12 patients, 7 with ALL"] in rows
    # without them (an older result): neither line
    plain = _text(_section(_render(tmp_path, final=_cv_final()), "final"))
    assert "Batch variants" not in plain and "Decision rule stored" not in plain


def test_write_report_errors_gallery_images_decode(tmp_path: Path) -> None:
    final = _cv_final()
    section = _section(_render(tmp_path, final=final), "errors")
    n_fp = sum(w["label"] == 0 for w in final["wrong"])
    n_fn = len(final["wrong"]) - n_fp
    assert n_fp and n_fn
    text = _text(section)
    assert f"{len(final['wrong'])} validation cells the model got wrong at t = " in text
    assert f"Normal cells called ALL (false positives): {n_fp}" in text
    assert f"ALL cells called normal (false negatives): {n_fn}" in text
    images = _images(section)
    assert len(images) == len(final["wrong"])
    assert all(img.shape == (96, 80, 3) for img in images)  # 120x100 shrunk to 96 px high
    assert sum(tuple(img[2, 2]) == RED for img in images) == n_fn  # RGB order kept
    # Most confidently wrong first within each group: P(ALL) descending for normal cells.
    shown = [float(v) for v in re.findall(r"P\(ALL\) ([0-9.]+)", text.split("false neg")[0])]
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
    rows = _rows(section)
    assert ["validation", "40", "20", "20", "50%", "2"] in rows
    assert ["1", "77", "39", "38", "51%"] in rows
    text = _text(section)
    assert "training: 3 patients, 4–190 cells each (median 6)" in text
    assert "ALL cells (3 samples)" in text and "normal cells (2 samples)" in text
    per_patient = _figures(section)
    assert len(per_patient) == 2 and "cells per patient, training" in _text(per_patient[0])
    # most cells at the top (labels are drawn bottom up)
    assert re.findall(r"\b(H3|11|1)\b", _text(per_patient[0]))[-3:] == ["H3", "1", "11"]
    images = _images(section)
    assert [img.shape for img in images] == [(96, 80, 3)] * 3 + [(40, 40, 3)] * 2
    assert tuple(images[-1][0, 0]) == (0, 0, 255)


def test_write_report_without_validation_split(tmp_path: Path) -> None:
    # The demo store has no validation split: only CV numbers, no errors to show.
    final = {**_cv_final(), "metrics": None, "metrics_at_threshold": None, "roc": None,
             "per_patient": None, "wrong": []}
    page = _render(tmp_path, final=final)
    text = _text(_section(page, "final"))
    assert "only the cross-validated estimate" in text
    assert "validation, t" not in text and "cross-validation (out-of-fold)" in text
    assert "No ROC curve recorded" in text and "No per-patient accuracy recorded" in text
    assert "no validation split" in _text(_section(page, "errors"))


def test_write_report_new_keys_missing_or_none(tmp_path: Path) -> None:
    keys = ("threshold", "threshold_source", "metrics_at_threshold", "cv", "cv_curve",
            "members", "wrong")
    none_final = {**_final(), **dict.fromkeys(keys)}
    for final in (_final(), none_final, {}):
        page = _render(tmp_path, final=final)
        text = _text(_section(page, "final"))
        assert "Decision threshold: 0.5 (no threshold stored)" in text
        assert "No weighted-F1-by-threshold curve recorded" in text
        assert "No misclassified cells were recorded" in _text(_section(page, "errors"))
        assert "No data overview was given" in _text(_section(page, "data"))
    empty = _text(_section(_render(tmp_path, final={}), "final"))
    assert "No metrics recorded." in empty and "No confusion matrix recorded." in empty
    assert "No final result" in _text(_section(_render(tmp_path, final=None), "errors"))


def test_write_report_bad_picture_is_a_placeholder(tmp_path: Path) -> None:
    final = {**_cv_final(), "wrong": [{"image_id": "x", "patient_id": "P1", "label": 0,
                                       "p_all": 0.9, "pixels": np.zeros((8, 8), np.float32)}]}
    section = _section(_render(tmp_path, final=final), "errors")
    assert not _images(section)
    assert "uint8 RGB array of shape (h, w, 3)" in _text(section)
    assert "P(ALL) 0.900 patient P1" in _text(section)


def test_write_report_long_threshold_curve_stays_small(tmp_path: Path) -> None:
    x = np.linspace(0, 1, 5001)
    wf1 = 0.8 - (x - 0.3) ** 2
    final = {**_final(), "threshold": 0.3013,
             "cv_curve": {"thresholds": x.tolist(), "weighted_f1": wf1.tolist()}}
    page = _render(tmp_path, final=final)
    curve = _figures(_section(page, "final"))[-2]
    assert "chosen t = 0.301 (weighted F1 0.8000)" in _text(curve)
    assert len(curve) < 60_000  # 5001 points are drawn without 5001 path vertices


def test_png_data_uri_shrinks_and_keeps_rgb() -> None:
    uri = png_data_uri(_cell(RED, 300, 150), max_side=60)
    img = _images(f'src="{uri}"')[0]
    assert img.shape == (60, 30, 3) and tuple(img[0, 0]) == RED
    with pytest.raises(ValueError, match=r"uint8 RGB array of shape \(h, w, 3\), got dtype"):
        png_data_uri(np.zeros((4, 4, 4), np.uint8))
