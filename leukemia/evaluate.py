"""Score a saved model on a store selection, and predict image files.

    leukemia evaluate runs/x/model.keras --store STORE [--split validation]
    leukemia predict runs/x/model.keras cell1.bmp cells/
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from leukemia import metrics as M
from leukemia.dataset import IMAGE_SUFFIXES, VALIDATION, parse_name
from leukemia.store import Selection, Store, decode_image
from leukemia.train import atomic_write, predict_proba

log = logging.getLogger(__name__)


def score(model: Any, sel: Selection, *, seed: int = 0,
          threshold: float | None = None) -> tuple[dict[str, Any], np.ndarray]:
    """C-NMC metrics of ``model`` on ``sel`` (at its stored threshold unless given) and its
    probabilities."""
    from leukemia.models import model_spec

    t = model_spec(model)["threshold"] if threshold is None else threshold
    p = predict_proba(model, sel.images)
    return M.binary_metrics(sel.labels, p, sel.patient_ids, seed=seed, threshold=t), p


def evaluate_model(model_path: str | Path, store: Store | str, *, split: str = VALIDATION,
                   folds: Sequence[int] | None = None, out: str | Path | None = None,
                   threshold: float | None = None) -> dict[str, Any]:
    """Evaluate a ``.keras`` model at its stored threshold (and at 0.5); write the metrics as
    JSON (default: ``metrics-<split>.json`` beside the model, so training's ``metrics.json`` is
    kept).

    Returns:
        The metrics (keys of :func:`leukemia.metrics.binary_metrics`, plus ``at_0.5``).

    Raises:
        FileNotFoundError, ValueError: the model file is missing or unreadable (named).
    """
    from leukemia.models import load_model, model_spec

    model = load_model(str(model_path))
    store = store if isinstance(store, Store) else Store(store)
    spec = model_spec(model)
    crop = store.crop
    sel = store.load(split, folds)
    metrics, p = score(model, sel, threshold=threshold)
    at_half = M.binary_metrics(sel.labels, p, sel.patient_ids, threshold=0.5)
    metrics = {**metrics, "at_0.5": at_half, "split": split, "store": store.uri,
               "store_crop": list(crop), "model_crop": [spec["crop"], spec["window"]]}
    if list(crop) != [spec["crop"], spec["window"]] and spec["info"]:
        log.warning("%s was trained on %s crops but %s holds %s crops: the scores are not those "
                    "of the model's own preprocessing", model_path, spec["crop"], store.uri,
                    crop[0])
    out = Path(out) if out else Path(model_path).with_name(f"metrics-{split}.json")
    atomic_write(out, json.dumps(metrics, indent=2))
    return metrics


def _expand(inputs: Sequence[str | Path]) -> list[Path]:
    files: list[Path] = []
    for item in map(Path, inputs):
        if item.is_dir():
            files += sorted(p for p in item.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
        elif item.is_file():
            files.append(item)
        else:
            raise FileNotFoundError(f"{item}: no such file or folder")
    if not files:
        raise FileNotFoundError(f"no image files in {', '.join(map(str, inputs))}")
    return files


def predict_files(model: str | Path | Any, inputs: Sequence[str | Path], *,
                  crop: str | None = None, batch_size: int = 64,
                  ) -> Iterator[tuple[Path, float]]:
    """Yield ``(path, P(ALL))`` for image files or folders, prepared as the model's training
    images were (the crop stored in the model, unless ``crop`` overrides it).

    Args:
        model: a ``.keras`` path or a loaded model.

    Raises:
        FileNotFoundError: the model or an input is missing.
        ValueError: the model or an image cannot be read (the file is named).
    """
    from leukemia.models import load_model, model_spec

    if isinstance(model, (str, Path)):
        model = load_model(str(model))
    spec = model_spec(model)
    mode, window = spec["crop"], spec["window"]
    if crop is not None and crop != mode:
        mode, window = crop, None  # None: the default window
    size = int(model.input_shape[1])
    files = _expand(inputs)
    for start in range(0, len(files), batch_size):
        chunk = files[start:start + batch_size]
        batch = []
        for f in chunk:
            try:
                batch.append(decode_image(str(f), size, mode, window=window)[0])
            except ValueError as e:
                raise ValueError(f"{f}: {e}") from e
        probs = predict_proba(model, np.stack(batch))
        yield from zip(chunk, map(float, probs))


def patient_summary(rows: Sequence[tuple[Path, float]], threshold: float
                    ) -> list[dict[str, Any]]:
    """Per patient (from ``UID_<patient>_...`` file names): cells, mean P(ALL), share called
    ALL. Files without a patient id in their name are left out."""
    by: dict[str, list[float]] = {}
    for path, p in rows:
        try:
            patient, _ = parse_name(path.name)
        except ValueError:
            continue
        by.setdefault(patient, []).append(p)
    return [{"patient_id": k, "cells": len(v), "mean_p_all": float(np.mean(v)),
             "share_all": float(np.mean(np.asarray(v) >= threshold))}
            for k, v in sorted(by.items())]
