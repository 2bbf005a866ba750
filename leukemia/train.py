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

import json
import logging
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from leukemia import metrics as M
from leukemia.config import TrainConfig
from leukemia.files import atomic_write, write_history
from leukemia.folds import check_disjoint, load_split
from leukemia.pipeline import class_weights, make_dataset, patient_weights
from leukemia.store import Selection, Store

log = logging.getLogger(__name__)

# callback(epoch (1-based), metrics of that epoch, the Keras model) -> None
EpochCallback = Callable[[int, dict[str, Any], Any], None]


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


def learning_rate(config: TrainConfig, peak: float, steps_per_epoch: int,
                  first_epoch: int = 0) -> Any:
    """The learning rate (a float or a Keras schedule) for training from ``first_epoch`` on.

    ``cosine``: a linear warm-up over ``warmup_epochs`` to ``peak``, then a cosine decay to 0
    at ``schedule_epochs`` (default: ``epochs``). A phase starting later (after a frozen-backbone
    phase) decays over the remaining epochs without a new warm-up.
    """
    if config.lr_schedule == "constant":
        return peak
    import keras

    total = max(1, (config.schedule_epochs or config.epochs) - first_epoch) * steps_per_epoch
    warmup = 0 if first_epoch else min(config.warmup_epochs * steps_per_epoch, total // 2)
    return keras.optimizers.schedules.CosineDecay(
        initial_learning_rate=peak * (0.01 if warmup else 1.0), decay_steps=total - warmup,
        alpha=0.0, warmup_target=peak if warmup else None, warmup_steps=warmup)


def _optimizer(config: TrainConfig, lr: Any, steps_per_epoch: int) -> Any:
    import keras

    # EMA horizon of about one epoch: long enough to smooth step noise, short enough to follow
    ema = {"use_ema": True, "ema_momentum": 1.0 - 1.0 / max(4, steps_per_epoch)} \
        if config.ema else {}
    if config.optimizer == "adam":
        return keras.optimizers.Adam(lr, **ema)
    if config.optimizer == "adamw":
        return keras.optimizers.AdamW(lr, weight_decay=config.weight_decay, **ema)
    return keras.optimizers.SGD(lr, momentum=0.9, nesterov=True,
                                weight_decay=config.weight_decay or None, **ema)


def _compile(model: Any, config: TrainConfig, peak: float, steps_per_epoch: int,
             first_epoch: int = 0) -> None:
    import keras

    lr = learning_rate(config, peak, steps_per_epoch, first_epoch)
    model.compile(optimizer=_optimizer(config, lr, steps_per_epoch),
                  loss=keras.losses.BinaryCrossentropy(label_smoothing=config.label_smoothing),
                  metrics=[keras.metrics.BinaryAccuracy(name="accuracy")])


def _swap_ema(model: Any) -> bool:
    """Swap the model's weights with the optimizer's moving averages; False without EMA."""
    opt: Any = getattr(model, "optimizer", None)
    opt = getattr(opt, "inner_optimizer", opt)  # mixed precision's LossScaleOptimizer
    averages = getattr(opt, "_model_variables_moving_average", None)
    if not getattr(opt, "use_ema", False) or not averages:
        return False
    for var, avg in zip(opt._trainable_variables, averages):
        tmp = np.array(var.numpy())
        var.assign(avg)
        avg.assign(tmp)
    return True


def _log_loss(y: np.ndarray, p: np.ndarray) -> float:
    p = np.clip(p, 1e-7, 1 - 1e-7)
    return float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)))


def predict_proba(model: Any, images: np.ndarray, batch_size: int = 64,
                  tta: bool = False) -> np.ndarray:
    """P(ALL) for a uint8 image array, resized to the model's input size.

    ``tta``: the mean over the 8 flips/90-degree rotations of each image (an exported model
    does this inside itself; this is for plain trained models).
    """
    if tta:
        views = [np.rot90(v, k, axes=(1, 2)) for v in (images, images.transpose(0, 2, 1, 3))
                 for k in range(4)]
        return np.mean([predict_proba(model, np.ascontiguousarray(v), batch_size)
                        for v in views], axis=0)
    size = int(model.input_shape[1])
    ds = make_dataset(images, np.zeros(len(images)), image_size=size, batch_size=batch_size,
                      training=False)
    return np.asarray(model.predict(ds.map(lambda x, _: x), verbose=0)).reshape(-1)


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
    # per-cell weights (patient balance, or MixUp's soft labels, which Keras' class_weight
    # cannot look up) carry the class weights too
    sample_w = None
    if config.patient_balance:
        sample_w = patient_weights(train.patient_ids, train.labels, cw)
    elif config.mixup > 0 and cw:
        sample_w = np.where(train.labels == 1, cw[1], cw[0]).astype(np.float32)
    fit_cw = None if (config.patient_balance or config.mixup > 0) else cw
    train_ds = make_dataset(train.images, train.labels, image_size=config.image_size,
                            batch_size=config.batch_size, training=True, augment=config.augment,
                            augment_strength=config.augment_strength, seed=config.seed,
                            weights=sample_w, stain_jitter=config.stain_jitter,
                            grayscale=config.grayscale, mixup_alpha=config.mixup)
    from leukemia.models import BACKBONE_LAYER, create_backbone

    if model is None:
        model = create_backbone(config.backbone, image_size=config.image_size,
                                weights=config.weights, dropout=config.dropout,
                                normalize=config.normalize)
    frozen_phase = initial_epoch < config.freeze_epochs
    steps = max(1, math.ceil(len(train) / config.batch_size))
    if getattr(model, "optimizer", None) is None:  # a checkpoint keeps its optimizer's state
        _set_backbone_trainable(model, BACKBONE_LAYER, not frozen_phase)
        _compile(model, config, config.learning_rate, steps)

    history: list[dict[str, Any]] = []
    state: dict[str, Any] = {"status": "ok", "last_p": None}  # last_p: last validation P(ALL)
    first_step = _FirstStep()

    def on_epoch_end(epoch: int, logs: dict[str, Any], started: float) -> None:
        seconds = time.monotonic() - started
        row: dict[str, Any] = {"epoch": epoch, "loss": float(logs.get("loss", math.nan)),
                               "accuracy": float(logs.get("accuracy", math.nan)),
                               "train_seconds": round(seconds, 3),
                               "train_images_per_s": round(len(train) / max(seconds, 1e-9), 1)}
        if first_step.at is not None and not history:
            row["first_step_at"] = first_step.at  # wall clock: trial overhead benchmarks
        if not math.isfinite(row["loss"]) or model.stop_training:
            state["status"] = row["status"] = "nan"
            model.stop_training = True
            history.append(row)
            log.warning("epoch %d: loss is %s; stopping this run", epoch, row["loss"])
            return
        swapped = _swap_ema(model)  # score (and checkpoint) the averaged weights
        try:
            if val is not None:
                p = state["last_p"] = predict_proba(model, val.images)
                vm = M.binary_metrics(val.labels, p, val.patient_ids, n_boot=200,
                                      seed=config.seed)
                row["val_loss"] = _log_loss(val.labels, p)
                row.update({f"val_{k}": v for k, v in vm.items() if k != "confusion_matrix"})
                row.update(_best_threshold_scores(val.labels, p))
            history.append(row)
            for cb in callbacks:
                cb(epoch, row, model)
        finally:
            if swapped:
                _swap_ema(model)  # back to the raw weights to go on training

    # phases: [start, end) epochs; a frozen backbone first, then fine-tuning at a tenth
    phases = [(initial_epoch, config.epochs, not frozen_phase)]
    if frozen_phase:
        phases = [(initial_epoch, config.freeze_epochs, False),
                  (config.freeze_epochs, config.epochs, True)]
    for begin, end, unfrozen in phases:
        if end <= begin or state["status"] != "ok":
            continue
        if frozen_phase and unfrozen:  # the fine-tuning phase after a frozen one
            _set_backbone_trainable(model, BACKBONE_LAYER, True)
            _compile(model, config, config.learning_rate * 0.1, steps, first_epoch=begin)
        model.fit(train_ds, epochs=end, initial_epoch=begin, class_weight=fit_cw,
                  shuffle=False,  # tf.data shuffles (seeded); silences a Keras warning
                  callbacks=[keras.callbacks.TerminateOnNaN(), first_step,
                             _EpochEnd(on_epoch_end)],
                  verbose=verbose)
    status = state["status"]
    final = {}
    if val is not None and status == "ok":
        last_p = state["last_p"]
        if last_p is None:  # resumed with no epoch left to run
            last_p = predict_proba(model, val.images)
        final = M.binary_metrics(val.labels, last_p, val.patient_ids, seed=config.seed)
    return FitResult(status=status, history=history, model=model, class_weight=cw,
                     metrics=final)


def _best_threshold_scores(y: np.ndarray, p: np.ndarray) -> dict[str, float | None]:
    """The held-out weighted F1 at the fold's own best threshold, and that threshold (None
    with one class): calibration aside, how well the ranking separates the classes."""
    if len(np.unique(y)) < 2:
        return {"val_best_threshold": None, "val_weighted_f1_best_threshold": None}
    t = float(M.best_threshold(y, p))
    return {"val_best_threshold": t,
            "val_weighted_f1_best_threshold": M.weighted_f1(y, (p >= t).astype(int))}


class _EpochEnd:
    """Keras callback calling ``fn(epoch (1-based), logs, epoch start time)`` after each epoch."""

    def __new__(cls, fn: Callable[[int, dict[str, Any], float], None]) -> Any:
        import keras

        class EpochEnd(keras.callbacks.Callback):
            started = time.monotonic()

            def on_epoch_begin(self, epoch: int, logs: Any = None) -> None:
                self.started = time.monotonic()

            def on_epoch_end(self, epoch: int, logs: Any = None) -> None:
                fn(epoch + 1, dict(logs or {}), self.started)

        return EpochEnd()


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
        from leukemia.models import export_model

        st = store if isinstance(store, Store) else Store(store)
        crop, window = st.crop
        # the crop travels with the model, so `leukemia predict` prepares raw images the same
        save_model(export_model([result.model], crop=crop, window=window, threshold=0.5,
                                tta=False, info={"source": "leukemia train"}),
                   out / "model.keras")
    atomic_write(out / "metrics.json", json.dumps(
        {**result.metrics, "status": result.status, "val_fold": config.val_fold,
         "best_epoch": result.best_epoch, "class_weight": result.class_weight}, indent=2))
    return result


def _brief(m: dict[str, Any]) -> str:
    keys = ("loss", "accuracy", "val_loss", "val_weighted_f1", "val_roc_auc",
            "train_images_per_s")
    return ", ".join(f"{k}={m[k]:.4g}" for k in keys if isinstance(m.get(k), (int, float)))
