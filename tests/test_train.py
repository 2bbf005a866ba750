"""Tests for leukemia.train (and the CLI round trip): real Keras training on the real sample."""

from __future__ import annotations

import json
import math
import re
import shutil
from pathlib import Path

import numpy as np
import pytest

from leukemia import metrics as M
from leukemia.cli import main
from leukemia.config import TrainConfig
from leukemia.folds import PatientLeakError, check_disjoint, load_split
from leukemia.models import load_model
from leukemia.store import Selection, Store, ingest
from leukemia.train import fit, learning_rate, predict_proba, save_model

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
# learning-rate schedule and weight averaging (32 px, no augmentation: ~2 s an epoch)


def _fast(**kw) -> TrainConfig:
    return _config(**{"image_size": 32, "augment": False, "learning_rate": 1e-3, **kw})


@pytest.fixture(scope="module")
def split(real_store):
    """The real sample with fold 0 held out (120 training cells: 4 steps of 32 an epoch)."""
    return load_split(real_store, _config())


def _fit_lrs(config: TrainConfig, split, extra=(), **kw) -> tuple:
    """``fit`` and the optimizer's learning rate at the end of every epoch."""
    lrs: list[float] = []

    def record(epoch: int, metrics: dict, model) -> None:
        lrs.append(float(np.asarray(model.optimizer.learning_rate)))

    return fit(config, split, [record, *extra], **kw), lrs


def _steps(config: TrainConfig, split) -> int:
    return math.ceil(len(split[0]) / config.batch_size)


def test_learning_rate_cosine_warms_up_then_decays_to_zero(split):
    config = _fast(epochs=3, lr_schedule="cosine", warmup_epochs=1)
    steps, peak = _steps(config, split), config.learning_rate
    schedule = learning_rate(config, peak, steps)
    lr = [float(schedule(s)) for s in range(3 * steps + 1)]
    warm, decay = lr[:steps + 1], lr[steps:]
    assert all(b > a for a, b in zip(warm, warm[1:])), warm  # rises during the warm-up epoch
    assert warm[0] < 0.05 * peak and warm[-1] == pytest.approx(peak)
    assert all(b < a for a, b in zip(decay, decay[1:])), decay  # then only falls
    assert lr[2 * steps] == pytest.approx(peak / 2)  # halfway through the cosine
    assert lr[-1] == pytest.approx(0.0, abs=1e-9)  # ~0 at schedule_epochs (= epochs)


@pytest.mark.slow
def test_fit_follows_the_cosine_schedule(split):
    config = _fast(epochs=3)
    steps, peak = _steps(config, split), config.learning_rate
    schedule = learning_rate(config, peak, steps)
    _, lrs = _fit_lrs(config, split)
    assert lrs == pytest.approx([float(schedule(e * steps)) for e in (1, 2, 3)], abs=1e-9)
    assert lrs == pytest.approx([peak, peak / 2, 0.0], abs=1e-9)


@pytest.mark.slow
def test_fit_schedule_epochs_sets_the_decay_horizon(split):
    # a trial that ASHA may stop after 2 of 4 epochs follows the 4-epoch curve
    config = _fast(epochs=2, schedule_epochs=4)
    peak = config.learning_rate
    _, lrs = _fit_lrs(config, split)
    assert lrs == pytest.approx([peak, peak * 0.5 * (1 + math.cos(math.pi / 3))])  # 0.75 peak


@pytest.mark.slow
def test_fit_constant_schedule_stays_constant(split):
    config = _fast(epochs=2, lr_schedule="constant")
    assert learning_rate(config, config.learning_rate, 4) == config.learning_rate
    _, lrs = _fit_lrs(config, split)
    assert lrs == pytest.approx([config.learning_rate] * 2)


@pytest.mark.slow
def test_fit_resumed_from_a_checkpoint_continues_the_schedule(split, tmp_path):
    config = _fast(epochs=3)
    saved = tmp_path / "epoch1.keras"
    checkpoint = [lambda e, m, model: save_model(model, saved) if e == 1 else None]
    _, through = _fit_lrs(config, split, extra=checkpoint)
    resumed, lrs = _fit_lrs(config, split, model=load_model(str(saved)), initial_epoch=1)
    assert [row["epoch"] for row in resumed.history] == [2, 3]
    # the same rates as the uninterrupted run at those steps, not a restarted warm-up
    assert lrs == pytest.approx(through[1:], abs=1e-9)


@pytest.mark.slow
def test_fit_resumed_in_the_frozen_phase_continues_the_schedule(split, tmp_path):
    from leukemia.models import create_backbone

    # a pretrained backbone frozen for 2 of 3 epochs (no ImageNet download here: the config
    # says imagenet, the network handed to fit is a scratch one; fit's optimizer handling
    # is the same)
    config = _fast(epochs=3, backbone="mobilenet_v3_small", weights="imagenet",
                   freeze_epochs=2)
    saved = tmp_path / "epoch1.keras"
    checkpoint = [lambda e, m, model: save_model(model, saved) if e == 1 else None]
    _, through = _fit_lrs(config, split, extra=checkpoint,
                          model=create_backbone("small_cnn", image_size=32))
    peak = config.learning_rate
    assert through == pytest.approx([peak, peak / 2, 0.0], abs=1e-9)
    _, lrs = _fit_lrs(config, split, model=load_model(str(saved)), initial_epoch=1)
    assert lrs == pytest.approx(through[1:], abs=1e-9)  # got [peak, 0.0]: warm-up restarted


@pytest.mark.slow
def test_fit_ema_exports_the_averaged_weights_it_scored(split):
    config = _fast(epochs=2)
    plain = fit(config, split)
    raw = plain.model.get_weights()
    averaged = fit(config.override({"ema": True}), split)
    assert averaged.status == "ok"
    # the average does not change training: the same losses, so the same raw weights
    assert [h["loss"] for h in averaged.history] == \
        pytest.approx([h["loss"] for h in plain.history], rel=1e-5)
    diff = max(float(np.abs(a - b).max()) for a, b in zip(averaged.model.get_weights(), raw))
    assert diff > 1e-4  # the returned (exported) model holds the average, not the raw weights
    # and it is the model that was scored
    _, val = split
    p = predict_proba(averaged.model, val.images)
    again = M.binary_metrics(val.labels, p, val.patient_ids, seed=config.seed)
    assert again["confusion_matrix"] == averaged.metrics["confusion_matrix"]
    assert again["roc_auc"] == pytest.approx(averaged.metrics["roc_auc"], abs=1e-9)


# ---------------------------------------------------------------------------------------------
# cross-validation folds


def test_load_split_cross_validates_a_one_fold_store_over_patient_groups(make_tree, tmp_path):
    root = make_tree(folds=(0, 1, 2), per_class=2, validation=0)
    for f in root.glob("training_data/fold_[12]/*/*.bmp"):  # one official fold, 6 patients
        f.rename(root / "training_data" / "fold_0" / f.parent.name / f.name)
    for d in ("fold_1", "fold_2"):
        shutil.rmtree(root / "training_data" / d)
    ingest(root, str(tmp_path / "store"), size=16, progress=False)
    store = Store(str(tmp_path / "store"))
    assert list(store.manifest["folds"]) == ["0"]
    held_out: list[str] = []
    for g in range(3):
        train, val = load_split(store, TrainConfig(image_size=16, val_fold=g))
        assert val is not None and len(train) + len(val) == 12
        assert not set(train.patient_ids.tolist()) & set(val.patient_ids.tolist())
        assert sum(p.startswith("H") for p in set(val.patient_ids.tolist())) == 1
        held_out += sorted(set(val.patient_ids.tolist()))
    assert sorted(held_out) == ["10", "11", "12", "H10", "H11", "H12"]  # each exactly once


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
