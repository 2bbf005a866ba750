"""Train one configuration: ``fit(config, store, callbacks)`` and ``train_and_save``.

``fit`` trains on every training fold except ``config.val_fold`` (patient-disjoint by
construction, and checked), scores the held-out fold after every epoch with the C-NMC metrics,
and hands each epoch's metrics to the callbacks: that is how a search trial reports to Ray Tune
and how ASHA stops it. It knows nothing of Ray. A NaN/inf loss ends the run with
``status="nan"``. Same seed, config and data give the same metrics on CPU. Safe to call many
times in one process (the Keras session is cleared between runs).

    leukemia train --store STORE --out DIR --set backbone=small_cnn image_size=64 epochs=3
"""

from __future__ import annotations

import csv
import json
import logging
import math
import os
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from leukemia import metrics as M
from leukemia.config import TrainConfig
from leukemia.pipeline import class_weights, make_dataset
from leukemia.store import Selection, Store

log = logging.getLogger(__name__)

# callback(epoch (1-based), metrics of that epoch, the Keras model) -> None
EpochCallback = Callable[[int, dict[str, Any], Any], None]


class PatientLeakError(ValueError):
    """A patient's cells are on both sides of a train/validation split."""


@dataclass
class FitResult:
    """What ``fit`` returns."""

    status: str  # "ok" | "nan" (loss became NaN/inf; stopped)
    history: list[dict[str, Any]]  # one dict of metrics per epoch
    model: Any  # the trained keras.Model (last epoch)
    class_weight: dict[int, float] | None
    metrics: dict[str, Any] = field(default_factory=dict)  # held-out metrics of the last epoch

    @property
    def best_epoch(self) -> int | None:
        """1-based epoch with the highest validation weighted F1 (None without validation)."""
        scores = [h.get("val_weighted_f1") for h in self.history]
        valid = [(s, i) for i, s in enumerate(scores, 1) if s is not None]
        return max(valid, key=lambda t: (t[0], -t[1]))[1] if valid else None


def check_disjoint(train: Selection, val: Selection) -> None:
    """Raise :class:`PatientLeakError` if a patient is in both selections."""
    both = sorted(set(train.patient_ids.tolist()) & set(val.patient_ids.tolist()))
    if both:
        raise PatientLeakError(f"{len(both)} patient(s) in both the training and the validation "
                               f"selection: {both[:10]}; split by patient (fold), not by image")


_DEVICES_CONFIGURED = False


def configure_devices(gpu_memory_mb: int | None = None, threads: int | None = None) -> list[str]:
    """Let several processes share a machine: a GPU memory cap (or memory growth) and a CPU
    thread count per process.

    Must run before TensorFlow executes anything; later calls in the same process do nothing.
    Returns the names of the visible GPUs.
    """
    global _DEVICES_CONFIGURED
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    if not _DEVICES_CONFIGURED:
        if threads:
            try:
                tf.config.threading.set_intra_op_parallelism_threads(threads)
                tf.config.threading.set_inter_op_parallelism_threads(min(2, threads))
            except RuntimeError as e:
                log.debug("TensorFlow threads already set: %s", e)
        for gpu in gpus:
            try:
                if gpu_memory_mb:
                    tf.config.set_logical_device_configuration(
                        gpu, [tf.config.LogicalDeviceConfiguration(memory_limit=gpu_memory_mb)])
                else:
                    tf.config.experimental.set_memory_growth(gpu, True)
            except RuntimeError as e:  # already initialised by an earlier run in this process
                log.debug("GPU already configured: %s", e)
        _DEVICES_CONFIGURED = True
    return [g.name for g in gpus]


def _optimizer(config: TrainConfig, lr: float) -> Any:
    import keras

    if config.optimizer == "adam":
        return keras.optimizers.Adam(lr)
    if config.optimizer == "adamw":
        return keras.optimizers.AdamW(lr, weight_decay=config.weight_decay)
    return keras.optimizers.SGD(lr, momentum=0.9, nesterov=True,
                                weight_decay=config.weight_decay or None)


def _compile(model: Any, config: TrainConfig, lr: float) -> None:
    import keras

    model.compile(optimizer=_optimizer(config, lr),
                  loss=keras.losses.BinaryCrossentropy(label_smoothing=config.label_smoothing),
                  metrics=[keras.metrics.BinaryAccuracy(name="accuracy")])


def _log_loss(y: np.ndarray, p: np.ndarray) -> float:
    p = np.clip(p, 1e-7, 1 - 1e-7)
    return float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)))


def predict_proba(model: Any, images: np.ndarray, batch_size: int = 64) -> np.ndarray:
    """P(ALL) for a uint8 image array, resized to the model's input size."""
    size = int(model.input_shape[1])
    ds = make_dataset(images, np.zeros(len(images)), image_size=size, batch_size=batch_size,
                      training=False)
    return np.asarray(model.predict(ds.map(lambda x, _: x), verbose=0)).reshape(-1)


def load_split(store: Store | str, config: TrainConfig) -> tuple[Selection, Selection | None]:
    """The training selection (all folds but ``val_fold``) and the validation fold."""
    store = store if isinstance(store, Store) else Store(store)
    data = store.load("training")
    if config.val_fold is None:
        return data, None
    held = data.folds == config.val_fold
    if not held.any():
        raise ValueError(f"TrainConfig.val_fold={config.val_fold}: the store has no such fold "
                         f"(folds {sorted(set(data.folds.tolist()))})")
    train, val = data.subset(~held), data.subset(held)
    check_disjoint(train, val)
    return train, val


def fit(config: TrainConfig, store: Store | str | tuple[Selection, Selection | None],
        callbacks: Sequence[EpochCallback] = (), *, model: Any = None, initial_epoch: int = 0,
        gpu_memory_mb: int | None = None, threads: int | None = None,
        verbose: int = 0) -> FitResult:
    """Train ``config`` and score the validation fold after every epoch.

    Args:
        config: the run's configuration.
        store: a store (or its URI), or an already loaded ``(train, val)`` pair.
        callbacks: called after every epoch with ``(epoch, metrics, model)``.
        model: a compiled model to continue (resuming from a checkpoint); built if ``None``.
        initial_epoch: epochs already done by ``model``.
        gpu_memory_mb: per-process GPU memory cap (several trials on one GPU).
        threads: CPU threads TensorFlow may use in this process (default: all).
        verbose: Keras progress output (0: none).

    Returns:
        A :class:`FitResult`; ``status`` is ``"nan"`` if the loss stopped being finite.
    """
    import keras

    configure_devices(gpu_memory_mb, threads)
    train, val = store if isinstance(store, tuple) else load_split(store, config)
    if val is not None:
        check_disjoint(train, val)
    if model is None:
        keras.backend.clear_session(free_memory=True)
    keras.utils.set_random_seed(config.seed)
    gpu = bool(keras.config.backend() == "tensorflow" and _has_gpu())
    keras.mixed_precision.set_global_policy(
        "mixed_float16" if config.mixed_precision and gpu else "float32")

    cw = class_weights(train.labels, config.class_weight)
    log.info("training on %d images (%d ALL, %d normal), validating on %s; class weights %s",
             len(train), int(train.labels.sum()), int(len(train) - train.labels.sum()),
             len(val) if val is not None else "nothing", cw)
    train_ds = make_dataset(train.images, train.labels, image_size=config.image_size,
                            batch_size=config.batch_size, training=True, augment=config.augment,
                            augment_strength=config.augment_strength, seed=config.seed)
    from leukemia.models import BACKBONE_LAYER, create_backbone

    if model is None:
        model = create_backbone(config.backbone, image_size=config.image_size,
                                weights=config.weights, dropout=config.dropout)
    frozen_phase = initial_epoch < config.freeze_epochs
    if getattr(model, "optimizer", None) is None or frozen_phase:
        _set_backbone_trainable(model, BACKBONE_LAYER, not frozen_phase)
        _compile(model, config, config.learning_rate)

    history: list[dict[str, Any]] = []
    status = "ok"
    first_step = _FirstStep()
    last_p: np.ndarray | None = None  # the last epoch's validation probabilities
    for epoch in range(initial_epoch + 1, config.epochs + 1):
        if config.freeze_epochs and epoch == config.freeze_epochs + 1:
            # unfreeze: fine-tune everything at a tenth of the rate, as transfer learning does
            _set_backbone_trainable(model, BACKBONE_LAYER, True)
            _compile(model, config, config.learning_rate * 0.1)
        t0 = time.monotonic()
        h = model.fit(train_ds, epochs=epoch, initial_epoch=epoch - 1, class_weight=cw,
                      shuffle=False,  # tf.data shuffles (seeded); silences a Keras warning
                      callbacks=[keras.callbacks.TerminateOnNaN(), first_step],
                      verbose=verbose)
        logs = {k: float(v[-1]) for k, v in h.history.items()}
        row: dict[str, Any] = {"epoch": epoch, "loss": logs.get("loss", math.nan),
                               "accuracy": logs.get("accuracy", math.nan),
                               "train_seconds": round(time.monotonic() - t0, 3),
                               "train_images_per_s": round(len(train) / (time.monotonic() - t0),
                                                           1)}
        if first_step.at is not None and not history:
            row["first_step_at"] = first_step.at  # wall clock: trial overhead benchmarks
        if not math.isfinite(row["loss"]) or model.stop_training:
            status = "nan"
            row["status"] = status
            history.append(row)
            log.warning("epoch %d: loss is %s; stopping this run", epoch, row["loss"])
            break
        if val is not None:
            p = last_p = predict_proba(model, val.images)
            vm = M.binary_metrics(val.labels, p, val.patient_ids, n_boot=200, seed=config.seed)
            row["val_loss"] = _log_loss(val.labels, p)
            row.update({f"val_{k}": v for k, v in vm.items() if k != "confusion_matrix"})
        history.append(row)
        for cb in callbacks:
            cb(epoch, row, model)
    final = {}
    if val is not None and status == "ok":
        if last_p is None:  # resumed with no epoch left to run
            last_p = predict_proba(model, val.images)
        final = M.binary_metrics(val.labels, last_p, val.patient_ids, seed=config.seed)
    return FitResult(status=status, history=history, model=model, class_weight=cw,
                     metrics=final)


class _FirstStep:
    """Keras callback noting the wall-clock time the first training step began."""

    def __new__(cls) -> Any:
        import keras

        class FirstStep(keras.callbacks.Callback):
            at: float | None = None

            def on_train_batch_begin(self, batch: int, logs: Any = None) -> None:
                if self.at is None:
                    self.at = time.time()

        return FirstStep()


def _has_gpu() -> bool:
    import tensorflow as tf

    return bool(tf.config.list_physical_devices("GPU"))


def _set_backbone_trainable(model: Any, name: str, trainable: bool) -> None:
    try:
        model.get_layer(name).trainable = trainable
    except ValueError:  # scratch backbones (small_cnn, unet) have no separate sub-model
        pass


def atomic_write(path: str | Path, data: str | bytes) -> None:
    """Write a file via a temporary name in the same folder, so it is whole or absent."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # a unique name opened with "x", not mkstemp: os.replace would keep mkstemp's 0600 mode
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        with tmp.open("xb") as fh:
            fh.write(data.encode() if isinstance(data, str) else data)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_history(path: str | Path, history: list[dict[str, Any]]) -> None:
    """Write per-epoch metrics as CSV (columns: the union of the epochs' keys)."""
    keys: list[str] = []
    for row in history:
        keys += [k for k in row if k not in keys]
    import io

    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=keys)
    w.writeheader()
    w.writerows(history)
    atomic_write(path, buf.getvalue())


def save_model(model: Any, path: str | Path) -> None:
    """Save a ``.keras`` file atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp.keras")
    model.save(tmp)
    os.replace(tmp, path)


def train_and_save(config: TrainConfig, store: Store | str, out: str | Path) -> FitResult:
    """Run :func:`fit` and write ``model.keras``, ``config.json``, ``history.csv``,
    ``metrics.json`` under ``out``.

    ``metrics.json`` holds the held-out fold's metrics (empty with ``val_fold=none``; score a
    model trained on all folds with ``leukemia evaluate``).
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write(out / "config.json", config.to_json())
    result = fit(config, store, verbose=0,
                 callbacks=[lambda e, m, _: log.info("epoch %d/%d: %s", e, config.epochs,
                                                     _brief(m))])
    write_history(out / "history.csv", result.history)
    if result.status == "ok":
        save_model(result.model, out / "model.keras")
    atomic_write(out / "metrics.json", json.dumps(
        {**result.metrics, "status": result.status, "val_fold": config.val_fold,
         "best_epoch": result.best_epoch, "class_weight": result.class_weight}, indent=2))
    return result


def _brief(m: dict[str, Any]) -> str:
    keys = ("loss", "accuracy", "val_loss", "val_weighted_f1", "val_roc_auc",
            "train_images_per_s")
    return ", ".join(f"{k}={m[k]:.4g}" for k in keys if isinstance(m.get(k), (int, float)))
