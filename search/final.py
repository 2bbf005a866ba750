"""After the search: train the best configuration's final models, export them as one ``.keras``
file with its decision rule, score it once on ``validation_data``.

``--final cv`` (the default): the best configuration (``search.results.best_trial``: the best
full-budget run) is trained once per training fold held out (K = 3 on C-NMC; patient groups on a
one-fold dataset) and per seed (``--final-seeds``), for the epochs its trial ran, all at once as
Ray tasks across the cluster's free trial slots. Each member scores the fold it never saw: these
out-of-fold predictions (every cell scored by a model that never trained on its patient) give an
honest cross-validated estimate (``cv_`` keys) and the threshold that maximises weighted F1 on
them, recorded as ``oof_threshold``. The decision rule stored in the export follows
``--decision-rule``: 0.5 (the default: the out-of-fold threshold transferred worse to new
patients, see PERFORMANCE.md), that threshold (``oof``), or transductive prior matching
(``prior``). ``best/model.keras`` is the whole ensemble: raw uint8 pixels in, the members' mean
P(ALL) out, averaged over the 8 flips/rotations of the cell (TTA), with the crop and the rule
stored inside it.

``--final all-folds``: one model per seed trained on all folds (no held-out predictions, so the
threshold stays 0.5).

Every finished member is kept under ``best/members/``: an interrupted final (``--resume``)
reruns only the members that are missing.
"""

from __future__ import annotations

import json
import logging
import shutil
import statistics
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from leukemia import metrics as M
from leukemia.files import atomic_write
from search.results import FinalResult, Trial, selected_epoch
from search.settings import SearchSettings

log = logging.getLogger(__name__)

SUMMARY_KEYS = ("weighted_f1", "accuracy", "balanced_accuracy", "sensitivity", "specificity",
                "precision", "roc_auc")
MODES = ("cv", "all-folds")
GALLERY = 48  # most confident validation errors shown in the report
CI_KEYS = ("weighted_f1", "sensitivity", "specificity", "roc_auc")  # patient-bootstrap CIs


# ---------------------------------------------------------------------------------------------
# Ray task bodies (run on workers)


def _prepare(settings: SearchSettings) -> Any:
    from leukemia.store import Store
    from search.cache import local_store
    from search.trainable import load_plugins

    load_plugins(list(settings.plugins))
    return Store(local_store(settings.store))


def train_member(config_dict: dict[str, Any], settings: SearchSettings) -> dict[str, Any]:
    """Train one member; return its ``.keras`` bytes and its held-out fold's predictions."""
    import os
    import time

    from leukemia.config import TrainConfig
    from leukemia.folds import load_split
    from leukemia.train import fit, predict_proba, save_model
    from search.resources import trial_gpu_cap

    started = time.time()
    config = TrainConfig.from_dict(config_dict)
    train, held = load_split(_prepare(settings), config)
    result = fit(config, (train, held), gpu_memory_mb=trial_gpu_cap(settings.trials_per_gpu),
                 threads=settings.cpus_per_trial)
    if result.status != "ok":
        raise FloatingPointError(f"final member (fold {config.val_fold}, seed {config.seed}) "
                                 "diverged: loss not finite")
    oof = None
    if held is not None:
        p = predict_proba(result.model, held.images, tta=settings.tta)
        oof = {"image_ids": held.image_ids.tolist(), "patient_ids": held.patient_ids.tolist(),
               "labels": held.labels.tolist(), "probs": p.tolist()}
    with tempfile.TemporaryDirectory() as d:
        save_model(result.model, Path(d) / "model.keras")
        model_bytes = (Path(d) / "model.keras").read_bytes()
    return {"fold": config.val_fold, "seed": config.seed, "model": model_bytes, "oof": oof,
            "history": result.history, "started_at": started, "ended_at": time.time(),
            "pid": os.getpid()}


def export_and_score(member_files: list[str], settings: SearchSettings, threshold: float,
                     info: dict[str, Any]) -> dict[str, Any]:
    """Build the exported ensemble; score it on the validation split if the store has one.

    ``info`` is recorded in the export; its ``rule`` (``Rule.to_dict()``) is the decision rule.
    """
    from leukemia.evaluate import transductive_scores
    from leukemia.models import export_model, load_model
    from leukemia.rules import Rule
    from leukemia.train import predict_proba, save_model

    store = _prepare(settings)
    members = [load_model(f) for f in member_files]
    crop, window = store.crop
    model = export_model(members, crop=crop, window=window, threshold=threshold,
                         tta=settings.tta, info=info, rule=info["rule"])
    with tempfile.TemporaryDirectory() as d:
        save_model(model, Path(d) / "model.keras")
        model_bytes = (Path(d) / "model.keras").read_bytes()
    out: dict[str, Any] = {"model": model_bytes, "validation": None,
                           "samples": _samples(store)}
    if "validation" in store.manifest.get("splits", {}):
        val = store.load("validation")
        p = predict_proba(model, val.images)
        rule = Rule.from_dict({"threshold": threshold, **info["rule"]})
        wrong = np.flatnonzero((p >= threshold).astype(int) != val.labels)
        wrong = wrong[np.argsort(-np.abs(p[wrong] - threshold))][:GALLERY]
        out["validation"] = {
            "image_ids": val.image_ids.tolist(), "patient_ids": val.patient_ids.tolist(),
            "labels": val.labels.tolist(), "probs": p.tolist(),
            "wrong": [{"image_id": str(val.image_ids[i]), "patient_id": str(val.patient_ids[i]),
                       "label": int(val.labels[i]), "p_all": float(p[i]),
                       "pixels": _thumb(val.images[i])} for i in wrong],
            "transductive": transductive_scores(model, val, p, rule, seed=settings.seed)}
    return out


def _thumb(img: np.ndarray, side: int = 96) -> np.ndarray:
    import cv2

    if img.shape[0] <= side:
        return np.ascontiguousarray(img)
    return cv2.resize(img, (side, side), interpolation=cv2.INTER_AREA)


def _samples(store: Any, per_class: int = 8) -> dict[str, list[np.ndarray]]:
    """A few training cells of each class, from as many patients as possible (report)."""
    data = store.load("training")
    out: dict[str, list[np.ndarray]] = {}
    for name, label in (("ALL", 1), ("normal", 0)):
        idx = np.flatnonzero(data.labels == label)
        first: dict[str, int] = {}  # the first cell of each patient, then the rest
        for i in idx:
            first.setdefault(str(data.patient_ids[i]), int(i))
        pick = list(first.values())
        pick = (pick + [int(i) for i in idx if i not in first.values()])[:per_class]
        out[name] = [_thumb(data.images[i]) for i in pick]
    return out


# ---------------------------------------------------------------------------------------------
# Driver side


def plan_members(trial: Trial, settings: SearchSettings, folds: list[int], *,
                 mode: str, seeds: int) -> list[Any]:
    """The ``TrainConfig`` of every member: one per (held-out fold, seed), or per seed."""
    from leukemia.config import TrainConfig
    from search.space import to_train_overrides

    if mode not in MODES:
        raise ValueError(f"--final {mode!r}: expected one of {', '.join(MODES)}")
    epochs = selected_epoch(trial)
    overrides = to_train_overrides(trial.params)
    if overrides.get("freeze_epochs", 0) >= epochs:
        overrides["freeze_epochs"] = max(0, epochs - 1)
    base = TrainConfig().override({**settings.train_overrides(), **overrides, "epochs": epochs})
    held: list[int | None] = list(folds) if mode == "cv" else [None]
    return [base.override({"val_fold": f, "seed": settings.seed + s})
            for f in held for s in range(seeds)]


def training_folds(manifest: dict[str, Any]) -> list[int]:
    """The cross-validation folds a store's training split gives (patient groups if one)."""
    from leukemia.folds import CV_FOLDS, official_folds_usable

    folds = manifest.get("folds", {})
    if official_folds_usable([int(c["n"]) for c in folds.values()]):
        return sorted(int(f) for f in folds)
    return list(range(CV_FOLDS))


def run_final(trial: Trial, settings: SearchSettings, out: Path, *, mode: str = "cv",
              seeds: int = 1, resources: dict[str, float], manifest: dict[str, Any]
              ) -> FinalResult:
    """Train the final members (as concurrent Ray tasks), export ``best/``, return what the
    summary and the report show."""
    import ray

    configs = plan_members(trial, settings, training_folds(manifest), mode=mode, seeds=seeds)
    best_dir, members_dir = out / "best", out / "best" / "members"
    plan = {"trial_id": trial.trial_id, "configs": [c.to_dict() for c in configs]}
    if members_dir.is_dir():
        old = members_dir / "plan.json"
        if not old.is_file() or json.loads(old.read_text()) != plan:
            shutil.rmtree(members_dir)  # another trial's or another plan's members
    members_dir.mkdir(parents=True, exist_ok=True)
    atomic_write(members_dir / "plan.json", json.dumps(plan, indent=2))
    names = [f"fold{c.val_fold if c.val_fold is not None else 'all'}-seed{c.seed}"
             for c in configs]
    done = {n: json.loads((members_dir / f"{n}.json").read_text()) for n in names
            if (members_dir / f"{n}.json").is_file() and (members_dir / f"{n}.keras").is_file()}
    todo = [(n, c) for n, c in zip(names, configs) if n not in done]
    log.info("final (%s): %d member(s) of %s for %d epochs; %d kept from an earlier run, %d to "
             "train at once", mode, len(configs), trial.trial_id, configs[0].epochs,
             len(done), len(todo))
    slot = {"num_cpus": resources.get("CPU", 1), "num_gpus": resources.get("GPU", 0)}
    task = ray.remote(train_member).options(**slot, max_retries=1)
    pending = {task.remote(c.to_dict(), settings): n for n, c in todo}
    spans: dict[str, Any] = {}
    while pending:
        ready, _ = ray.wait(list(pending), num_returns=1)
        name = pending.pop(ready[0])
        res = ray.get(ready[0])
        atomic_write(members_dir / f"{name}.keras", res.pop("model"))
        atomic_write(members_dir / f"{name}.json", json.dumps(res))  # last: marks it finished
        done[name] = res
        log.info("final: member %s finished (%d of %d)", name, len(done), len(configs))
    for name in names:  # members written by an older version may lack a key: None then
        spans[name] = {**dict.fromkeys(("started_at", "ended_at", "oof", "history")),
                       **done[name]}

    # out-of-fold predictions: the threshold and the cross-validated estimate
    threshold, source, cv, cv_curve, cv_05 = 0.5, "none: --final all-folds has no held-out " \
        "predictions; 0.5", None, None, None
    oof = _pool_oof([spans[n] for n in names])
    oof_threshold = None
    if oof is not None:
        oof_threshold, oof_source = _choose_threshold(oof)
        threshold, source = 0.5, ("0.5 (--decision-rule 0.5; the out-of-fold threshold "
                                  f"{oof_threshold:.3f} transferred worse to new patients)")
        if settings.decision_rule == "oof":
            threshold, source = oof_threshold, oof_source
        from search.trainable import ConstantModelError, constant_message, is_constant_prediction

        if is_constant_prediction(oof["labels"], oof["probs"], threshold):  # learned nothing
            raise ConstantModelError(constant_message(
                f"trial {trial.trial_id}'s final models (out-of-fold, {len(oof['probs'])} "
                "cells)"))
        y, p, pid = oof["labels"], oof["probs"], oof["patient_ids"]
        cv = M.binary_metrics(y, p, pid, threshold=threshold, seed=settings.seed,
                              ci_keys=CI_KEYS)
        cv_05 = M.binary_metrics(y, p, pid, threshold=0.5, seed=settings.seed)
        t, f1 = M.threshold_curve(y, p)
        cv_curve = {"thresholds": t.tolist(), "weighted_f1": f1.tolist()}
        _write_oof_csv(best_dir / "oof_predictions.csv", oof)

    from leukemia.rules import Rule

    rule = Rule("threshold", threshold=threshold)
    if settings.decision_rule == "prior" and oof is not None:
        rule = Rule("prior", threshold=threshold, prior=float(np.mean(oof["labels"])))
        source = (f"prior matching (transductive): {rule.prior:.0%} of a batch called ALL; "
                  f"threshold {threshold:.3f} below {rule.min_batch} cells")
    info = {"trial_id": trial.trial_id, "final": mode, "threshold_source": source,
            "rule": rule.to_dict(),
            "members": names, "epochs": configs[0].epochs}
    exp = ray.get(ray.remote(export_and_score).options(**slot, max_retries=1).remote(
        [str(members_dir / f"{n}.keras") for n in names], settings, threshold, info))
    atomic_write(best_dir / "model.keras", exp["model"])
    config = configs[0].override({"val_fold": None})
    atomic_write(best_dir / "config.json", json.dumps(
        {**config.to_dict(), "crop": settings.crop, "window": settings.window,
         "tta": settings.tta, "threshold": threshold, "final": mode, "members": names},
        indent=2))

    val = exp["validation"]
    metrics: dict[str, Any] = {
        "split": "validation" if val else None, "threshold": threshold,
        "threshold_source": source, "trial_id": trial.trial_id, "epochs": configs[0].epochs,
        "final": mode, "tta": settings.tta,
        "members": [{"name": n, "fold": spans[n]["fold"], "seed": spans[n]["seed"],
                     "started_at": spans[n]["started_at"],
                     "ended_at": spans[n]["ended_at"]} for n in names]}
    val_t = val_05 = None
    if val:
        vy, vp, vpid = (np.asarray(val[k]) for k in ("labels", "probs", "patient_ids"))
        val_t = M.binary_metrics(vy, vp, vpid, threshold=threshold, seed=settings.seed,
                                 ci_keys=CI_KEYS)
        val_05 = M.binary_metrics(vy, vp, vpid, threshold=0.5, seed=settings.seed)
        metrics.update(val_t)
        metrics["at_0.5"] = val_05
        metrics["transductive"] = val["transductive"]
    metrics["decision_rule"] = rule.to_dict()
    if oof is not None:
        metrics["oof_threshold"] = oof_threshold  # kept whichever rule decides
    if cv:
        metrics.update({f"cv_{k}": v for k, v in cv.items()})
        metrics["cv_at_0.5"] = cv_05
        metrics["cv_note"] = ("out-of-fold predictions of the members (each cell scored by a "
                              "model that never saw its patient); the threshold was chosen on "
                              "the same predictions, so cv_ scores at it lean optimistic")
    summary = _seed_summary(spans, names) if seeds > 1 else None
    if summary:
        metrics["seed_summary"] = summary
    atomic_write(best_dir / "metrics.json", json.dumps(metrics, indent=2))

    roc = per_patient = None
    if val:
        fpr, tpr, _ = M.roc_curve(vy, vp)
        roc = {"fpr": fpr.tolist(), "tpr": tpr.tolist()}
        per_patient = M.per_patient_accuracy(vy, (vp >= threshold).astype(int), vpid)
    return FinalResult(
        trial_id=trial.trial_id, config=config.to_dict(), epochs=configs[0].epochs,
        seeds=sorted({c.seed for c in configs}), metrics=val_05, metrics_at_threshold=val_t,
        threshold=threshold, threshold_source=source, cv=cv, cv_curve=cv_curve,
        seed_summary=summary,
        members=[{"fold": c.val_fold, "seed": c.seed, "epochs": c.epochs,
                  "started_at": spans[n]["started_at"], "ended_at": spans[n]["ended_at"]}
                 for n, c in zip(names, configs)],
        wrong=val["wrong"] if val else [], samples=exp["samples"], roc=roc,
        per_patient=per_patient, rule=rule.to_dict(),
        transductive=val["transductive"] if val else None)


def _pool_oof(runs: list[dict[str, Any]]) -> dict[str, Any] | None:
    """Out-of-fold predictions of all members, averaged over seeds per cell."""
    rows: dict[str, dict[str, Any]] = {}
    for r in runs:
        o = r["oof"]
        if not o:
            continue
        for iid, pid, y, p in zip(o["image_ids"], o["patient_ids"], o["labels"], o["probs"]):
            row = rows.setdefault(iid, {"patient_id": pid, "label": y, "probs": [],
                                        "fold": r["fold"]})
            row["probs"].append(p)
    if not rows:
        return None
    ids = sorted(rows)
    return {"image_ids": np.asarray(ids),
            "patient_ids": np.asarray([rows[i]["patient_id"] for i in ids]),
            "labels": np.asarray([rows[i]["label"] for i in ids], dtype=np.int64),
            "probs": np.asarray([float(np.mean(rows[i]["probs"])) for i in ids]),
            "folds": np.asarray([rows[i]["fold"] for i in ids])}


def _choose_threshold(oof: dict[str, Any]) -> tuple[float, str]:
    """The wF1-maximising threshold on the out-of-fold predictions of folds with both classes."""
    folds = sorted(set(oof["folds"].tolist()))
    both = [f for f in folds if len(set(oof["labels"][oof["folds"] == f].tolist())) == 2]
    one = [f for f in folds if f not in both]
    use = np.isin(oof["folds"], both) if both else np.ones(len(oof["folds"]), bool)
    try:
        t = float(M.best_threshold(oof["labels"][use], oof["probs"][use]))
    except ValueError as e:
        return 0.5, f"none: {e}; 0.5"
    source = (f"maximises weighted F1 on the out-of-fold predictions of {len(use.nonzero()[0])} "
              f"cells of folds {both or folds}")
    if one and both:
        source += f"; fold(s) {one} hold one class only and were left out"
    return t, source


def _write_oof_csv(path: Path, oof: dict[str, Any]) -> None:
    lines = ["image_id,patient_id,fold,label,p_all"]
    lines += [f"{i},{p},{f},{y},{q:.6f}" for i, p, f, y, q in zip(
        oof["image_ids"], oof["patient_ids"], oof["folds"], oof["labels"], oof["probs"])]
    atomic_write(path, "\n".join(lines) + "\n")


def _seed_summary(runs: dict[str, Any], names: list[str]) -> dict[str, Any]:
    """Per seed: the held-out metrics of its members' last epochs, as mean and std."""
    by_seed: dict[int, list[float]] = {}
    for n in names:
        h = {"val_weighted_f1": None, **(runs[n]["history"] or [{}])[-1]}
        if h["val_weighted_f1"] is not None:
            by_seed.setdefault(int(runs[n]["seed"]), []).append(float(h["val_weighted_f1"]))
    vals = [statistics.fmean(v) for v in by_seed.values()]
    return {"held_out_weighted_f1": _mean_std(vals)}


def _mean_std(values: Sequence[float | None]) -> dict[str, Any]:
    vals = [float(v) for v in values if v is not None]
    return {"mean": statistics.fmean(vals) if vals else None,
            "std": statistics.stdev(vals) if len(vals) > 1 else 0.0 if vals else None,
            "values": vals}
