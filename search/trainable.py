"""One search trial: sampled parameters -> ``leukemia.train.fit`` -> ``ray.tune.report``.

Runs inside a Ray worker process. With ``reuse_actors`` one process runs many trials, so the
store's arrays are loaded once per process and kept (keyed by the store's content checksum);
they are memory-mapped from one decoded file per node (``search.cache.decoded_path``), so the
trial workers of a node share one copy of the pixels.
Every epoch reports the held-out fold's metrics, the search's :func:`objective`, ``constant``
(:func:`is_constant`) and a checkpoint (the whole ``.keras`` model, optimizer state included); a
restarted trial resumes from its last checkpoint. A NaN/inf loss fails the trial with a clear
error.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import math
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from search.settings import SearchSettings

log = logging.getLogger(__name__)

STATE_FILE = "state.json"
MODEL_FILE = "model.keras"
_DATA: dict[tuple[str, int | None], Any] = {}  # (store checksum, val_fold) -> (train, val)
_PLUGINS: set[str] = set()
_STORE_READS = 0  # how many times this process read the store (reported with every result)
# The search's objective. A model that calls both classes at 0.5 scores the held-out fold's
# weighted F1 (the C-NMC metric), ties broken by ROC AUC: on small folds many trials tie at the
# same F1, which leaves ASHA nothing to rank; 1e-4 x AUC orders them without ever outweighing a
# one-image difference in F1 on a fold of fewer than ~5,000 images. A model that calls every
# held-out cell the same class scores AUC - 1 (in [-1, 0]; AUC 0.5 when undefined): below every
# model that calls both classes, however poorly, and ordered among its kind by how well it ranks
# the cells. A real search exported such a model: it scored the majority share (wF1 0.52) while
# models still settling their calibration scored 0.2-0.4 at ASHA's first rung.
OBJECTIVE = "objective"
TIEBREAK = 1e-4
# ``constant`` (reported every epoch, 1.0 or 0.0): one class called for every held-out cell at
# 0.5 AND no ranking either (AUC within CONSTANT_AUC of 0.5, or undefined). Such a trial is
# stopped at ASHA's first rung (search.searcher.ConstantStopper) and never exported.
CONSTANT = "constant"
CONSTANT_AUC = 0.02


def _value(metrics: dict[str, Any], key: str) -> float | None:
    v = metrics.get(key)
    return None if v is None or not math.isfinite(float(v)) else float(v)


def calls_one_class(metrics: dict[str, Any]) -> bool:
    """Whether a metrics row (``val_*`` keys) called every held-out cell the same class.

    Every cell called ALL is sensitivity 1 and specificity 0; every cell called normal is
    sensitivity 0 and specificity 1. A rate that is undefined (the fold lacks that class)
    constrains nothing.
    """
    sens, spec = _value(metrics, "val_sensitivity"), _value(metrics, "val_specificity")
    if sens is None and spec is None:
        return False
    return any(sens in (None, s) and spec in (None, 1.0 - s) for s in (0.0, 1.0))


def is_constant(metrics: dict[str, Any]) -> bool:
    """One class for every held-out cell and AUC within ``CONSTANT_AUC`` of 0.5 (or undefined)."""
    auc = _value(metrics, "val_roc_auc")
    return calls_one_class(metrics) and (auc is None or abs(auc - 0.5) <= CONSTANT_AUC)


def is_constant_prediction(labels: Any, probs: Any, threshold: float = 0.5) -> bool:
    """:func:`is_constant` on raw predictions, classes called at ``threshold``."""
    from leukemia import metrics as M

    m = M.binary_metrics(labels, probs, threshold=threshold, n_boot=0)
    return is_constant({f"val_{k}": v for k, v in m.items()})


class ConstantModelError(ValueError):
    """The final models' out-of-fold predictions are constant: nothing worth exporting."""


def constant_message(what: str) -> str:
    """Why a constant predictor is not exported, and what to try instead."""
    return (f"{what} predicted one class for every cell (at the decision threshold, and ROC AUC "
            f"within {CONSTANT_AUC} of 0.5): such a model has learned nothing and is not "
            "exported. Try more epochs (--max-epochs), a higher learning rate, another backbone "
            "(--backbones small_cnn trains from random init at any size), or --weights imagenet")


def objective(metrics: dict[str, Any]) -> float:
    """The search's objective for one epoch's metrics row (``val_*`` keys).

    ``val_roc_auc - 1`` (AUC 0.5 when undefined) when every held-out cell was called the same
    class at 0.5, else ``val_weighted_f1 + 1e-4 * val_roc_auc`` (AUC 0 when undefined).
    """
    auc = _value(metrics, "val_roc_auc")
    if calls_one_class(metrics):
        return (0.5 if auc is None else auc) - 1.0
    return float(metrics["val_weighted_f1"]) + TIEBREAK * (auc or 0.0)


def load_plugins(paths: list[str]) -> None:
    """Import user modules (e.g. ones that register extra backbones) once per process."""
    for path in paths:
        if path in _PLUGINS:
            continue
        spec = importlib.util.spec_from_file_location(f"cnmc_plugin_{len(_PLUGINS)}", path)
        if spec is None or spec.loader is None:
            raise ImportError(f"{path}: cannot import this plugin file")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        _PLUGINS.add(path)


def _data(store_uri: str, val_fold: int | None) -> Any:
    """The ``(train, val)`` selections of a trial: mapped from the node's one decoded copy."""
    from leukemia.config import TrainConfig
    from leukemia.folds import load_split
    from leukemia.store import Store, shared_selections
    from search.cache import decoded_path, local_store

    global _STORE_READS
    store = Store(local_store(store_uri))
    key = (store.checksum, val_fold)
    if key not in _DATA:
        _DATA.clear()  # one selection per process at a time: memory stays bounded

        def build() -> list[Any]:
            train, val = load_split(store, TrainConfig(val_fold=val_fold))
            return [train] if val is None else [train, val]

        # train then val: each one contiguous block of the file, so neither is ever copied
        parts = shared_selections(decoded_path(store.checksum, val_fold),
                                  _split_tag(store, val_fold), build)
        _DATA[key] = (parts[0], parts[1] if len(parts) > 1 else None)
        _STORE_READS += 1
    return _DATA[key]


def _split_tag(store: Any, val_fold: int | None) -> str:
    """What the decoded file must hold: the store, the fold, and the image ids of the split
    ``load_split`` makes today (from the store's metadata alone), so a file written by code
    that split the folds otherwise is rebuilt, not trained on."""
    import hashlib

    import numpy as np

    from leukemia.folds import cv_folds

    index = store.load("training", pixels=False)
    folds = cv_folds(index.patient_ids, index.labels, index.folds)
    held = folds == val_fold if val_fold is not None else np.zeros(len(folds), bool)
    ids = hashlib.sha256()
    for part in (index.image_ids[~held], index.image_ids[held]):
        ids.update(("\n".join(part.tolist()) + "\0").encode())
    return f"{store.checksum} training val_fold={val_fold} ids={ids.hexdigest()[:16]}"


def _numeric(metrics: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in metrics.items():
        if isinstance(v, bool) or v is None:
            continue
        if isinstance(v, (int, float)):
            out[k] = float(v) if isinstance(v, float) else v
        elif k.endswith("ci95") and isinstance(v, list) and len(v) == 2:
            out[f"{k}_lo"], out[f"{k}_hi"] = float(v[0]), float(v[1])
    return out


def train_trial(params: dict[str, Any], settings: SearchSettings) -> None:
    """The Ray Tune function trainable.

    Args:
        params: what the search space sampled for this trial.
        settings: the search's fixed settings (store, image_size, max_epochs, ...).
    """
    import ray
    from ray import tune

    from leukemia.config import TrainConfig
    from leukemia.models import load_model
    from leukemia.train import fit, save_model
    from search.faults import hold_trial
    from search.resources import trial_gpu_cap
    from search.space import to_train_overrides

    load_plugins(list(settings.plugins))
    config = TrainConfig().override({**settings.train_overrides(), **to_train_overrides(params)})
    data = _data(settings.store, config.val_fold)

    model, start = None, 0
    checkpoint = tune.get_checkpoint()
    if checkpoint:
        with checkpoint.as_directory() as d:
            start = int(json.loads((Path(d) / STATE_FILE).read_text())["epoch"])
            model = load_model(str(Path(d) / MODEL_FILE))
        log.info("resuming from the checkpoint of epoch %d", start)
    node = ray.get_runtime_context().get_node_id()
    started = time.time()

    def report(epoch: int, metrics: dict[str, Any], model: Any) -> None:
        with tempfile.TemporaryDirectory(prefix="cnmc-ckpt-") as d:
            save_model(model, Path(d) / MODEL_FILE)
            (Path(d) / STATE_FILE).write_text(json.dumps({"epoch": epoch}))
            tune.report({**_numeric(metrics), OBJECTIVE: objective(metrics),
                         CONSTANT: float(is_constant(metrics)), "node_id": node,
                         "pid": os.getpid(), "store_reads_in_process": _STORE_READS,
                         "trial_started_at": started,
                         "reported_at": time.time(), "resumed_from_epoch": start},
                        checkpoint=tune.Checkpoint.from_directory(d))
        hold_trial(epoch)  # the fault tests' hook (CNMC_HOLD_AT=trial); otherwise nothing

    result = fit(config, data, [report], model=model, initial_epoch=start,
                 gpu_memory_mb=trial_gpu_cap(settings.trials_per_gpu),
                 threads=settings.cpus_per_trial)
    if result.status == "nan":
        last = result.history[-1] if result.history else {}
        raise FloatingPointError(
            f"training loss became {last.get('loss', math.nan)} at epoch {last.get('epoch')}: "
            "the configuration diverged (learning rate too high?)")
