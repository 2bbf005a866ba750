"""Score a saved model on a store selection, and predict image files.

    leukemia evaluate runs/x/model.keras --store STORE [--split validation] [--rule prior]
    leukemia predict runs/x/model.keras cell1.bmp cells/ [--neighbours 5] [--patients-csv F]

Classes come from the decision rule stored in the model (``leukemia.rules``), decided over
everything scored together: the selection for ``evaluate``, all inputs of one ``predict``.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from leukemia import metrics as M
from leukemia.adapt import MIN_CELLS, adapted_batchnorm
from leukemia.dataset import IMAGE_SUFFIXES, VALIDATION, parse_name
from leukemia.files import atomic_write
from leukemia.imaging import no_cell_reason, preprocess_frame, read_frame
from leukemia.rules import Decision, Rule, decide
from leukemia.store import Selection, Store
from leukemia.train import predict_proba

log = logging.getLogger(__name__)

NEIGHBOUR_ROUNDS = 3  # blends of each cell with its neighbours' mean (Pan et al., C-NMC 2019)
# A patient is called ALL when at least this share of its cells is called ALL: a plain majority
# of the cells, not tuned on any data.
PATIENT_CALL_SHARE = 0.5
NEIGHBOURS = 7  # K of the neighbour correction in metrics.json (as benchmarks/quality.py)


def model_rule(model: Any, name: str | None = None, threshold: float | None = None) -> Rule:
    """The decision rule stored in ``model``, with overrides.

    Args:
        name: another rule (``leukemia.rules.RULES``), keeping the stored parameters.
        threshold: the rule's threshold (its cut, or a transductive rule's fallback); given
            without ``name``, the rule becomes ``threshold`` at this value.

    Raises:
        ValueError: an unknown rule name or a threshold outside [0, 1].
    """
    from leukemia.models import model_spec

    spec = model_spec(model)
    rule = Rule.from_dict({"threshold": spec["threshold"], **spec["rule"]})
    if threshold is not None:
        return dataclasses.replace(rule, name="threshold" if name is None else name,
                                   threshold=float(threshold))
    return rule if name is None else dataclasses.replace(rule, name=name)


def score(model: Any, sel: Selection, *, seed: int = 0, threshold: float | None = None,
          rule: str | None = None) -> tuple[dict[str, Any], np.ndarray]:
    """C-NMC metrics of ``model`` on ``sel`` and its probabilities, at the cut of the model's
    rule (:func:`model_rule`) decided over the whole selection; with ``rule`` (the Rule as a
    dict) and ``decided_by`` (what decided, in words) added."""
    r = model_rule(model, rule, threshold)
    p = predict_proba(model, sel.images)
    decision = decide(p, r)
    metrics = M.binary_metrics(sel.labels, p, sel.patient_ids, seed=seed, threshold=decision.cut)
    return {**metrics, "rule": r.to_dict(), "decided_by": decision.note}, p


def evaluate_model(model_path: str | Path, store: Store | str, *, split: str = VALIDATION,
                   folds: Sequence[int] | None = None, out: str | Path | None = None,
                   threshold: float | None = None, rule: str | None = None) -> dict[str, Any]:
    """Evaluate a ``.keras`` model under its stored decision rule (``threshold`` and ``rule``
    override it, see :func:`model_rule`) and at 0.5; write the metrics as JSON (default:
    ``metrics-<split>.json`` beside the model, so training's ``metrics.json`` is kept).

    Returns:
        The metrics: :func:`score`'s, plus ``at_0.5``, ``transductive``
        (:func:`transductive_scores`), the split, the store and both crops.

    Raises:
        FileNotFoundError, ValueError: the model file is missing or unreadable (named), or an
            override is invalid.
    """
    from leukemia.models import load_model, model_spec

    model = load_model(str(model_path))
    store = store if isinstance(store, Store) else Store(store)
    spec = model_spec(model)
    crop, model_crop = list(store.crop), [spec["crop"], spec["window"]]
    sel = store.load(split, folds)
    metrics, p = score(model, sel, threshold=threshold, rule=rule)
    metrics.update({"at_0.5": M.binary_metrics(sel.labels, p, sel.patient_ids, threshold=0.5),
                    "transductive": transductive_scores(model, sel, p,
                                                        model_rule(model, rule, threshold)),
                    "split": split, "store": store.uri, "store_crop": crop,
                    "model_crop": model_crop})
    if crop != model_crop and spec["info"]:
        log.warning("%s was trained on %s crops but %s holds %s crops: the scores are not those "
                    "of the model's own preprocessing", model_path, spec["crop"], store.uri,
                    crop[0])
    out = Path(out) if out else Path(model_path).with_name(f"metrics-{split}.json")
    atomic_write(out, json.dumps(metrics, indent=2))
    return metrics


# ---------------------------------------------------------------------------------------------
# predict: image files


def image_files(inputs: Sequence[str | Path]) -> list[Path]:
    """The image files of ``inputs`` (files, or folders searched recursively), in order.

    A folder's files without an image suffix are left out (logged, as ingest does); a file
    named on its own is kept whatever its suffix.

    Raises:
        FileNotFoundError: an input is missing, or there are no image files at all.
    """
    files: list[Path] = []
    for item in map(Path, inputs):
        if item.is_dir():
            found = sorted(p for p in item.rglob("*") if p.is_file())
            other = [p for p in found if p.suffix.lower() not in IMAGE_SUFFIXES]
            if other:
                log.info("%s: ignoring %d non-image file(s), e.g. %s", item, len(other), other[0])
            files += [p for p in found if p.suffix.lower() in IMAGE_SUFFIXES]
        elif item.is_file():
            files.append(item)
        else:
            raise FileNotFoundError(f"{item}: no such file or folder")
    if not files:
        raise FileNotFoundError(f"no image files in {', '.join(map(str, inputs))}")
    return files


@dataclass(frozen=True)
class Unscored:
    """An input that got no P(ALL): a file that cannot be read, or a frame with no cell."""

    path: Path
    reason: str  # why, in words: ingest's reason for an unreadable file, or "no cell found: ..."


@dataclass
class _Chunk:
    """What reading a chunk of files gave: the cells' pixels and what was not scored."""

    files: list[Path]  # every file of the chunk, in input order
    paths: list[Path] = field(default_factory=list)  # the cells, in input order
    pixels: list[np.ndarray] = field(default_factory=list)  # (size, size, 3) uint8 per cell
    unreadable: list[Unscored] = field(default_factory=list)
    no_cell: list[Unscored] = field(default_factory=list)
    notes: dict[Path, tuple[str, ...]] = field(default_factory=dict)  # conversions, per cell


def _prepared(model: Any, files: list[Path], crop: str | None, batch_size: int
              ) -> Iterator[_Chunk]:
    """Chunks of ``files`` read and prepared as the model's training images were; files that
    cannot be read and frames with no cell on them are set aside, with the reason."""
    from leukemia.models import model_spec

    spec = model_spec(model)
    mode, window = spec["crop"], spec["window"]
    if crop is not None and crop != mode:
        mode, window = crop, None  # None: the default window
    size = int(model.input_shape[1])
    for start in range(0, len(files), batch_size):
        chunk = _Chunk(files[start:start + batch_size])
        for f in chunk.files:
            try:
                frame = read_frame(str(f))
            except (OSError, ValueError) as e:  # what ingest counts as a bad file
                chunk.unreadable.append(Unscored(f, str(e)))
                continue
            reason = no_cell_reason(frame.rgb)
            if reason is not None:
                chunk.no_cell.append(Unscored(f, reason))
                continue
            chunk.paths.append(f)
            chunk.pixels.append(preprocess_frame(frame.rgb, size, mode, window))
            if frame.notes:
                chunk.notes[f] = frame.notes
        yield chunk


def predict_files(model: str | Path | Any, inputs: Sequence[str | Path], *,
                  crop: str | None = None, batch_size: int = 64,
                  ) -> Iterator[tuple[Path, float]]:
    """Yield ``(path, P(ALL))`` for image files or folders, prepared as the model's training
    images were (the crop stored in the model, unless ``crop`` overrides it) by ``model``, a
    ``.keras`` path or a loaded model. A frame with no cell on it
    (:func:`leukemia.imaging.no_cell_reason`) gets NaN.

    Raises:
        FileNotFoundError: the model or an input is missing.
        ValueError: the model or an image cannot be read (the file is named).
    """
    from leukemia.models import load_model

    if isinstance(model, (str, Path)):
        model = load_model(str(model))
    for chunk in _prepared(model, image_files(inputs), crop, batch_size):
        if chunk.unreadable:
            bad = chunk.unreadable[0]
            raise ValueError(f"{bad.path}: {bad.reason}")
        p: dict[Path, float] = {}
        if chunk.paths:
            p = dict(zip(chunk.paths, map(float, predict_proba(model, np.stack(chunk.pixels)))))
        for f in chunk.files:  # each one scored or with no cell: the unreadable raised
            yield f, p.get(f, float("nan"))


@dataclass(frozen=True)
class BatchPrediction:
    """One ``predict`` command's cells, scored and decided together, and its inputs not scored."""

    files: list[Path]  # every input image, in order
    paths: list[Path]  # the cells scored, in input order
    p_all: np.ndarray  # each cell's P(ALL), from the model alone
    p_neighbours: np.ndarray | None  # neighbour-corrected P(ALL); None without the correction
    decision: Decision  # decided on p_neighbours where given, else on p_all
    neighbours: int  # K of the neighbour correction (0: off)
    unreadable: list[Unscored] = field(default_factory=list)  # files that cannot be read
    no_cell: list[Unscored] = field(default_factory=list)  # frames with no cell: no class
    notes: dict[Path, tuple[str, ...]] = field(default_factory=dict)  # conversions, per cell
    adapted_bn: int = 0  # BatchNorm layers re-estimated on these cells (0: the model's own)
    adapt_note: str = ""  # why --adapt-bn was asked for and not applied


def predict_batch(model: Any, inputs: Sequence[str | Path], rule: Rule, *,
                  crop: str | None = None, neighbours: int = 0, batch_size: int = 64,
                  adapt_bn: bool = False) -> BatchPrediction:
    """Score every readable cell of ``inputs`` and decide their classes together under
    ``rule``; unreadable files and frames with no cell on them are set aside with the reason,
    and take no part in the decision, the neighbour correction or the patients' calls.

    Args:
        model: a loaded model.
        neighbours: K of :func:`neighbour_correction` (0: off): the classes are then decided
            on the corrected scores.
        adapt_bn: score with the model's BatchNorm statistics re-estimated on the pooled cells
            of this command (:mod:`leukemia.adapt`, transductive); below
            :data:`leukemia.adapt.MIN_CELLS` cells the model's own statistics serve, with a note.

    Raises:
        FileNotFoundError: an input is missing.
        ValueError: fewer than K + 1 inputs (or cells scored) with ``neighbours``, or a model
            without a ``pool`` layer.
    """
    files = image_files(inputs)
    nets = []
    if neighbours:
        _check_neighbours(len(files), neighbours)
        nets = _feature_nets(model)
    probs: list[np.ndarray] = []
    feats: list[np.ndarray] = []

    def run(cells: np.ndarray) -> None:
        probs.append(predict_proba(model, cells))
        if nets:
            feats.append(_features(nets, cells, batch_size))

    got = _Chunk(files)  # all the chunks together; pixels kept only for --adapt-bn
    for chunk in _prepared(model, files, crop, batch_size):
        got.paths += chunk.paths
        got.unreadable += chunk.unreadable
        got.no_cell += chunk.no_cell
        got.notes.update(chunk.notes)
        if chunk.pixels and adapt_bn:  # statistics of all the cells first, then the scores
            got.pixels += chunk.pixels
        elif chunk.pixels:
            run(np.stack(chunk.pixels))
    adapted, adapt_note = 0, ""
    if got.pixels:
        cells = np.stack(got.pixels)
        if len(cells) < MIN_CELLS:
            adapt_note = (f"--adapt-bn: {len(cells)} cells, fewer than {MIN_CELLS}: scored with "
                          f"the model's own BatchNorm statistics")
            run(cells)
        else:
            with adapted_batchnorm(model, cells, batch_size) as adapted:
                run(cells)
            if not adapted:
                adapt_note = "--adapt-bn: the model has no BatchNorm layer to adapt"
    p = np.concatenate(probs).astype(float) if probs else np.zeros(0)
    corrected = None
    if neighbours:
        if len(got.paths) < neighbours + 1:
            raise ValueError(f"--neighbours {neighbours}: the neighbour correction needs at "
                             f"least K + 1 = {neighbours + 1} cells, and {len(got.paths)} of the "
                             f"{len(files)} images could be scored ({len(got.unreadable)} "
                             f"unreadable, {len(got.no_cell)} with no cell); use a smaller K")
        corrected = neighbour_correction(p, np.concatenate(feats), neighbours)
    decision = decide(p if corrected is None else corrected, rule)
    return BatchPrediction(files, got.paths, p, corrected, decision, neighbours, got.unreadable,
                           got.no_cell, got.notes, adapted, adapt_note)


def transductive_scores(model: Any, sel: Selection, p: np.ndarray, rule: Rule, *,
                        k: int = NEIGHBOURS, seed: int = 0) -> dict[str, Any]:
    """The selection's scores under the variants that use the whole batch being predicted,
    beside (never instead of) the per-cell scores ``p`` of ``model`` on ``sel``; each entry is
    :func:`leukemia.metrics.binary_metrics` (patient counts for ``per_patient``), or
    ``{"skipped": why}``:

    - ``neighbours``: :func:`neighbour_correction` with ``k`` neighbours, decided by ``rule``;
    - ``adapted_bn``: BatchNorm statistics re-estimated on the pooled cells
      (:mod:`leukemia.adapt`), decided by ``rule``; skipped below ``MIN_CELLS`` cells or
      without BatchNorm;
    - ``per_patient``: :func:`patient_scores` of the per-cell decision by ``rule``.
    """

    def scored(q: np.ndarray) -> dict[str, Any]:
        return M.binary_metrics(sel.labels, q, sel.patient_ids, seed=seed,
                                threshold=decide(q, rule).cut)

    n = len(sel)
    out: dict[str, Any] = {"note": "each variant uses the whole batch scored together "
                           f"({n} cells): transductive; the per-cell scores stand apart"}
    if n >= k + 1:
        q = neighbour_correction(p, model_features(model, sel.images), k)
        out["neighbours"] = {"k": k, **scored(q)}
    else:
        out["neighbours"] = {"skipped": f"{n} cells, fewer than K + 1 = {k + 1}"}
    if n < MIN_CELLS:
        out["adapted_bn"] = {"skipped": f"{n} cells, fewer than {MIN_CELLS}"}
    else:
        with adapted_batchnorm(model, sel.images) as adapted:
            bn = predict_proba(model, sel.images) if adapted else None
        out["adapted_bn"] = ({"skipped": "the model has no BatchNorm layer"} if bn is None
                             else {"layers": adapted, **scored(bn)})
    out["per_patient"] = patient_scores(sel.patient_ids, sel.labels, decide(p, rule).classes)
    return out


def patient_scores(patient_ids: np.ndarray, labels: np.ndarray, called: np.ndarray
                   ) -> dict[str, Any]:
    """The per-patient call scored against the patients' labels: a patient is called ALL when
    at least :data:`PATIENT_CALL_SHARE` of its cells are ``called`` ALL (0/1 per cell)."""
    cells = _per_patient(np.asarray(patient_ids).tolist(), called, labels).values()
    call = np.array([c[:, 0].mean() >= PATIENT_CALL_SHARE for c in cells], dtype=int)
    label = np.array([c[0, 1] for c in cells], dtype=int)  # one label per patient
    return {"patients": len(call), "all_patients": int(label.sum()),
            "accuracy": float(np.mean(call == label)) if len(call) else None,
            "sensitivity": float(call[label == 1].mean()) if (label == 1).any() else None,
            "specificity": float(1 - call[label == 0].mean()) if (label == 0).any() else None,
            "call_share": PATIENT_CALL_SHARE}


def model_features(model: Any, images: np.ndarray, batch_size: int = 64) -> np.ndarray:
    """Penultimate features of each image: the ``pool`` layer's output of a model from
    ``create_backbone``, or for an exported ensemble the concatenation over its members
    (``member_0``, ``member_1``, ...) of theirs, on the image as given (no TTA views).

    Raises:
        ValueError: the model has neither a ``pool`` layer nor members holding one.
    """
    return _features(_feature_nets(model), images, batch_size)


def _feature_nets(model: Any) -> list[Any]:
    """Models from raw pixels to ``pool``'s output: the model's own, or one per member."""
    import keras

    if "pool" in {layer.name for layer in model.layers}:
        nets = [model]
    else:
        members = [layer for layer in model.layers if layer.name.startswith("member_")
                   and isinstance(layer, keras.Model)
                   and "pool" in {sub.name for sub in layer.layers}]
        nets = sorted(members, key=lambda m: int(m.name.split("_")[1]))
    if not nets:
        raise ValueError(f"model {model.name!r} has no 'pool' layer and no member_<i> models "
                         "holding one: neighbour features need a model built by "
                         "leukemia.models.create_backbone or exported by export_model")
    return [keras.Model(net.inputs, net.get_layer("pool").output) for net in nets]


def _features(nets: list[Any], images: np.ndarray, batch_size: int) -> np.ndarray:
    """The outputs of ``nets`` (of one input size) for ``images``, side by side."""
    from leukemia.pipeline import make_dataset

    ds = make_dataset(images, np.zeros(len(images)), image_size=int(nets[0].input_shape[1]),
                      batch_size=batch_size, training=False).map(lambda x, _: x)
    return np.concatenate([np.asarray(net.predict(ds, verbose=0), dtype=np.float64)
                           for net in nets], axis=1)


def _check_neighbours(n: int, k: int) -> None:
    if k < 1:
        raise ValueError(f"--neighbours {k}: K must be >= 1")
    if n < k + 1:
        raise ValueError(f"--neighbours {k}: the neighbour correction needs at least K + 1 = "
                         f"{k + 1} cells, and {n} were given; use a smaller K or more cells")


def neighbour_correction(p: np.ndarray, features: np.ndarray, k: int,
                         rounds: int = NEIGHBOUR_ROUNDS) -> np.ndarray:
    """Pan et al.'s neighbourhood correction (transductive): each cell's P(ALL) in ``p`` (n,)
    is blended with the mean P(ALL) of its ``k`` nearest other cells, ``p <- (p + mean) / 2``,
    ``rounds`` times; neighbours by cosine distance between the L2-normalised ``features``
    (n, d; :func:`model_features`). Returns the corrected (n,) P(ALL); ``p`` is left as it is.

    Raises:
        ValueError: ``k < 1``, fewer than ``k + 1`` cells, or ``features`` not one row per cell.
    """
    from sklearn.neighbors import NearestNeighbors

    p = np.asarray(p, dtype=float).reshape(-1)
    f = np.asarray(features, dtype=float)
    if f.ndim != 2 or len(f) != len(p):
        raise ValueError(f"neighbour correction: features of shape {f.shape} for {len(p)} "
                         "cells; expected one row per cell")
    _check_neighbours(len(p), k)
    f = f / np.maximum(np.linalg.norm(f, axis=1, keepdims=True), 1e-12)
    # kneighbors() without X leaves each cell out of its own neighbours, even among duplicates
    idx = NearestNeighbors(n_neighbors=k, metric="cosine").fit(f).kneighbors(
        return_distance=False)
    for _ in range(rounds):
        p = 0.5 * p + 0.5 * p[idx].mean(axis=1)
    return p


def patient_of(path: Path, *, per_folder: bool = False) -> str | None:
    """The patient of an image: its parent folder's name if ``per_folder``, else the one in a
    ``UID_<patient>_...`` file name (None when the name carries none)."""
    if per_folder:
        return path.parent.name
    try:
        return parse_name(path.name)[0]
    except ValueError:
        return None


def patient_summary(paths: Sequence[Path], p_all: np.ndarray | Sequence[float],
                    called: np.ndarray | Sequence[int], *, per_folder: bool = False,
                    ) -> list[dict[str, Any]]:
    """Per patient (see :func:`patient_of`): cells, mean P(ALL), share of its cells called ALL
    (``called``: 0/1 per cell) and the per-patient call, ALL where that share is
    >= :data:`PATIENT_CALL_SHARE`. Images without a patient are left out."""
    ids = [patient_of(path, per_folder=per_folder) for path in paths]
    rows = []
    for patient, cells in _per_patient(ids, p_all, called).items():
        share = float(cells[:, 1].mean())
        rows.append({"patient_id": patient, "cells": len(cells),
                     "mean_p_all": float(cells[:, 0].mean()), "share_all": share,
                     "call": "ALL" if share >= PATIENT_CALL_SHARE else "normal"})
    return rows


def _per_patient(patient_ids: Sequence[Any], *columns: Any) -> dict[str, np.ndarray]:
    """Each patient's cells as rows of ``columns`` (cells x columns, float), patients sorted by
    id; cells whose id is None are left out. The one grouping behind every per-patient call."""
    by: dict[str, list[list[float]]] = {}
    for pid, *values in zip(patient_ids, *columns):
        if pid is not None:
            by.setdefault(str(pid), []).append([float(v) for v in values])
    return {pid: np.asarray(rows, dtype=np.float64) for pid, rows in sorted(by.items())}
