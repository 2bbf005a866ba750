"""Score a saved model on a store selection, and predict image files.

    leukemia evaluate runs/x/model.keras --store STORE [--split validation]
    leukemia predict runs/x/model.keras cell1.bmp cells/
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from leukemia import metrics as M
from leukemia.dataset import IMAGE_SUFFIXES, VALIDATION
from leukemia.store import Selection, Store, decode_image
from leukemia.train import atomic_write, predict_proba


def score(model: Any, sel: Selection, *, seed: int = 0) -> tuple[dict[str, Any], np.ndarray]:
    """C-NMC metrics of ``model`` on ``sel`` and its probabilities."""
    p = predict_proba(model, sel.images)
    return M.binary_metrics(sel.labels, p, sel.patient_ids, seed=seed), p


def evaluate_model(model_path: str | Path, store: Store | str, *, split: str = VALIDATION,
                   folds: Sequence[int] | None = None,
                   out: str | Path | None = None) -> dict[str, Any]:
    """Evaluate a ``.keras`` model; write its metrics as JSON (default: ``metrics-<split>.json``
    beside the model, so training's ``metrics.json`` is kept).

    Returns:
        The metrics (keys of :func:`leukemia.metrics.binary_metrics`).
    """
    from leukemia.models import load_model

    model_path = Path(model_path)
    if not model_path.is_file():
        raise FileNotFoundError(f"{model_path}: no such model file")
    model = load_model(str(model_path))
    store = store if isinstance(store, Store) else Store(store)
    metrics, _ = score(model, store.load(split, folds))
    metrics = {**metrics, "split": split, "store": store.uri}
    out = Path(out) if out else model_path.with_name(f"metrics-{split}.json")
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


def predict_files(model_path: str | Path, inputs: Sequence[str | Path], *,
                  crop: bool = True,
                  batch_size: int = 64) -> Iterator[tuple[Path, float]]:
    """Yield ``(path, P(ALL))`` for image files or folders, decoded as ingest does."""
    from leukemia.models import load_model

    if not Path(model_path).is_file():
        raise FileNotFoundError(f"{model_path}: no such model file")
    model = load_model(str(model_path))
    size = int(model.input_shape[1])
    files = _expand(inputs)
    for start in range(0, len(files), batch_size):
        chunk = files[start:start + batch_size]
        batch = []
        for f in chunk:
            try:
                batch.append(decode_image(str(f), size, crop)[0])
            except ValueError as e:
                raise ValueError(f"{f}: {e}") from e
        probs = predict_proba(model, np.stack(batch))
        yield from zip(chunk, map(float, probs))
