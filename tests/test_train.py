"""Tests for leukemia.train (and the CLI round trip): real Keras training on the real sample."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np
import pytest

from leukemia.cli import main
from leukemia.config import TrainConfig
from leukemia.store import Selection, Store
from leukemia.train import PatientLeakError, check_disjoint, fit, load_split

METRIC_KEYS = {"weighted_f1", "weighted_f1_ci95", "accuracy", "balanced_accuracy", "sensitivity",
               "specificity", "precision", "roc_auc", "confusion_matrix", "n", "n_patients",
               "threshold"}
TIMING_KEYS = {"train_seconds", "train_images_per_s", "first_step_at"}  # wall-clock


def _config(**kw) -> TrainConfig:
    """small_cnn on the 64 px store, 2 epochs: a few seconds on 2 CPU cores."""
    return TrainConfig(**{"backbone": "small_cnn", "image_size": 64, "batch_size": 32,
                          "epochs": 2, **kw})


@pytest.fixture(scope="module")
def fitted(real_store):
    """One 2-epoch run on the real store, with the callback calls it made."""
    calls: list[tuple[int, dict, object]] = []
    result = fit(_config(), real_store,
                 callbacks=[lambda e, m, model: calls.append((e, m, model))])
    return result, calls


def _selection(patients: list[str], labels: list[int], side: int = 16) -> Selection:
    n = len(patients)
    return Selection(images=np.zeros((n, side, side, 3), np.uint8),
                     labels=np.asarray(labels, np.int8),
                     patient_ids=np.asarray(patients, dtype=str),
                     image_ids=np.asarray([f"img{i}" for i in range(n)], dtype=str),
                     folds=np.ones(n, np.int8))


# ---------------------------------------------------------------------------------------------
# fit


@pytest.mark.slow
def test_fit_reports_finite_metrics_every_epoch(fitted):
    result, _ = fitted
    assert result.status == "ok"
    assert [row["epoch"] for row in result.history] == [1, 2]
    for row in result.history:
        for key in ("loss", "val_loss", "val_weighted_f1"):
            assert math.isfinite(row[key]), (key, row)
        assert row["val_n"] == 80  # fold 0 of the real sample is held out
    assert set(result.metrics) == METRIC_KEYS
    assert result.metrics["n"] == 80
    assert result.best_epoch in (1, 2)


@pytest.mark.slow
def test_fit_calls_callbacks_with_epoch_metrics_model(fitted):
    result, calls = fitted
    assert [e for e, _, _ in calls] == [1, 2]
    for (_, metrics, model), row in zip(calls, result.history, strict=True):
        assert metrics == row
        assert model is result.model


@pytest.mark.slow
def test_fit_same_seed_same_metrics(fitted, real_store):
    first, _ = fitted
    second = fit(_config(), real_store)
    assert len(second.history) == len(first.history)
    for a, b in zip(first.history, second.history, strict=True):
        assert a.keys() == b.keys()
        for key in a.keys() - TIMING_KEYS:
            assert b[key] == pytest.approx(a[key], abs=1e-6), key


@pytest.mark.slow
def test_fit_class_weights_are_inverse_training_frequencies(fitted, real_store):
    result, _ = fitted
    train, _ = load_split(real_store, _config())
    assert sorted(set(train.folds.tolist())) == [1, 2]  # val_fold=0 left out
    n, n_all = len(train), int(train.labels.sum())
    assert result.class_weight == pytest.approx({0: n / (2 * (n - n_all)), 1: n / (2 * n_all)})


def test_fit_nan_loss_stops_with_status_nan(real_store):
    import keras
    from keras import layers

    train, val = load_split(real_store, _config())
    # a model whose every output is NaN: the loss is NaN from the first step
    inputs = keras.Input((64, 64, 3))
    x = layers.Rescaling(float("nan"))(inputs)
    x = layers.GlobalAveragePooling2D()(x)
    model = keras.Model(inputs, layers.Dense(1, activation="sigmoid")(x))
    calls: list[int] = []
    result = fit(_config(epochs=3), (train, val), callbacks=[lambda e, m, _: calls.append(e)],
                 model=model)
    assert result.status == "nan"
    assert len(result.history) == 1
    assert result.history[0]["status"] == "nan"
    assert not math.isfinite(result.history[0]["loss"])
    assert result.metrics == {}
    assert calls == []


# ---------------------------------------------------------------------------------------------
# patient-disjoint splits


def test_check_disjoint_accepts_disjoint_patients():
    check_disjoint(_selection(["1", "H1"], [1, 0]), _selection(["2", "H2"], [1, 0]))


def test_check_disjoint_raises_on_shared_patient():
    train = _selection(["7", "7", "H3"], [1, 1, 0])
    val = _selection(["7", "H9"], [1, 0])
    with pytest.raises(PatientLeakError,
                       match=re.escape("1 patient(s) in both the training and the validation "
                                       "selection: ['7']")):
        check_disjoint(train, val)


def test_fit_rejects_leaking_selections():
    train = _selection(["7", "H3"], [1, 0])
    val = _selection(["H3", "H9"], [0, 0])
    with pytest.raises(PatientLeakError, match=re.escape("['H3']")):
        fit(TrainConfig(image_size=16, epochs=1), (train, val))


def test_load_split_holds_out_a_patient_disjoint_fold(real_store):
    train, val = load_split(real_store, _config(val_fold=1))
    assert val is not None
    assert set(val.folds.tolist()) == {1}
    assert 1 not in set(train.folds.tolist())
    assert not set(train.patient_ids.tolist()) & set(val.patient_ids.tolist())
    assert len(train) + len(val) == len(Store(real_store).load("training"))


def test_load_split_without_val_fold_uses_all_folds(real_store):
    train, val = load_split(real_store, _config(val_fold=None))
    assert val is None
    assert sorted(set(train.folds.tolist())) == [0, 1, 2]


def test_load_split_rejects_missing_fold(real_store):
    with pytest.raises(ValueError, match=re.escape("TrainConfig.val_fold=5: the store has no "
                                                   "such fold (folds [0, 1, 2])")):
        load_split(real_store, _config(val_fold=5))


# ---------------------------------------------------------------------------------------------
# leukemia train -> evaluate -> predict


@pytest.mark.slow
def test_cli_train_evaluate_predict_round_trip(real_store, real_data, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "--store", real_store, "--out", str(out),
                 "--set", "image_size=64", "epochs=1", "batch_size=32"]) == 0
    for name in ("model.keras", "config.json", "history.csv", "metrics.json"):
        assert (out / name).is_file(), name
    assert TrainConfig.from_dict(json.loads((out / "config.json").read_text())) == \
        _config(epochs=1)
    assert len((out / "history.csv").read_text().strip().splitlines()) == 2  # header + 1 epoch
    trained = json.loads((out / "metrics.json").read_text())
    assert METRIC_KEYS <= set(trained)
    assert trained["status"] == "ok" and trained["val_fold"] == 0 and trained["n"] == 80
    capsys.readouterr()

    eval_json = tmp_path / "validation-metrics.json"
    assert main(["evaluate", str(out / "model.keras"), "--store", real_store,
                 "--split", "validation", "--out", str(eval_json)]) == 0
    printed = json.loads(capsys.readouterr().out)
    written = json.loads(eval_json.read_text())
    assert printed == written
    assert METRIC_KEYS <= set(written)
    assert written["n"] == 40 and written["split"] == "validation"
    assert 0 <= written["weighted_f1"] <= 1

    images = sorted((real_data / "C-NMC_Leukemia" / "validation_data"
                     / "C-NMC_test_prelim_phase_data").glob("*.bmp"))[:3]
    assert main(["predict", str(out / "model.keras"), *map(str, images)]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 3
    for line, image in zip(lines, images, strict=True):
        path, prob, cls = line.split("\t")
        assert Path(path) == image
        assert 0.0 <= float(prob) <= 1.0
        assert cls == ("ALL" if float(prob) >= 0.5 else "normal")


def test_cli_evaluate_missing_model_is_an_error(real_store, tmp_path, capsys):
    assert main(["evaluate", str(tmp_path / "nope.keras"), "--store", real_store]) == 2
    assert "nope.keras: no such model file" in capsys.readouterr().err
