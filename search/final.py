"""After the search: retrain the best configuration on all training folds, score it once on
``validation_data``, export it.

The best trial is the one with the highest held-out-fold weighted F1 at any epoch. Its
configuration is retrained from scratch on all three training folds for the epoch count at which
it peaked, once per seed (``--final-seeds``), each retrain running as a Ray task with a trial's
resources (so it lands on a GPU worker of a cluster). The first seed's model is exported; the
metrics of every seed are summarised as mean and standard deviation.
"""

from __future__ import annotations

import json
import logging
import statistics
from pathlib import Path
from typing import Any

import numpy as np

from leukemia import metrics as M
from leukemia.train import atomic_write

log = logging.getLogger(__name__)

SUMMARY_KEYS = ("weighted_f1", "accuracy", "balanced_accuracy", "sensitivity", "specificity",
                "precision", "roc_auc")


def retrain_and_score(config_dict: dict[str, Any], store: str, settings: dict[str, Any]
                      ) -> dict[str, Any]:
    """Train ``config_dict`` on all training folds; score the validation split.

    Returns:
        metrics, probabilities, labels, patient ids and the ``.keras`` file's bytes.
    """
    import tempfile

    from leukemia.config import TrainConfig
    from leukemia.evaluate import score
    from leukemia.store import Store
    from leukemia.train import fit, save_model
    from search.cache import local_store
    from search.resources import trial_gpu_cap
    from search.trainable import load_plugins

    load_plugins(settings.get("plugins") or [])
    config = TrainConfig.from_dict(config_dict)
    st = Store(local_store(store))
    result = fit(config, st, gpu_memory_mb=trial_gpu_cap(settings.get("trials_per_gpu") or 0),
                 threads=settings.get("cpus_per_trial"))
    if result.status != "ok":
        raise FloatingPointError(f"final retrain (seed {config.seed}) diverged: loss not finite")
    val = st.load("validation")
    metrics, probs = score(result.model, val, seed=config.seed)
    with tempfile.TemporaryDirectory() as d:
        save_model(result.model, Path(d) / "model.keras")
        model_bytes = (Path(d) / "model.keras").read_bytes()
    return {"metrics": metrics, "probs": probs.tolist(), "labels": val.labels.tolist(),
            "patient_ids": val.patient_ids.tolist(), "model": model_bytes,
            "history": result.history, "seed": config.seed}


def best_trial(trials: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The trial with the highest objective at any epoch (held-out weighted F1, ties broken by
    AUC; then fewer epochs, then the earlier trial)."""
    scored = [t for t in trials if t.get("best_objective") is not None]
    if not scored:
        return None
    return max(scored, key=lambda t: (t["best_objective"], -(t["best_epoch"] or 0),
                                      -t["number"]))


def run_final(trial: dict[str, Any], settings: dict[str, Any], out: Path, *, seeds: int,
              resources: dict[str, float]) -> dict[str, Any]:
    """Retrain ``trial``'s configuration ``seeds`` times, export the first, write ``best/``.

    Returns:
        The ``final`` section of the report (config, metrics, seed summary, ROC, per patient).
    """
    import ray

    from leukemia.config import TrainConfig
    from search.space import to_train_overrides

    epochs = int(trial["best_epoch"])
    overrides = to_train_overrides(trial["params"])
    if overrides.get("freeze_epochs", 0) >= epochs:
        overrides["freeze_epochs"] = max(0, epochs - 1)
    base = TrainConfig().override({
        "image_size": settings["image_size"], "batch_size": settings["batch_size"],
        "weights": settings["weights"], "mixed_precision": bool(settings.get("mixed_precision")),
        **overrides, "epochs": epochs, "val_fold": None})
    configs = [base.override({"seed": settings["seed"] + i}) for i in range(seeds)]
    task = ray.remote(retrain_and_score).options(
        num_cpus=resources.get("CPU", 1), num_gpus=resources.get("GPU", 0), max_retries=1)
    log.info("final: retraining %s for %d epochs on all training folds, %d seed(s)",
             trial["trial_id"], epochs, seeds)
    runs = ray.get([task.remote(c.to_dict(), settings["store"], settings) for c in configs])

    best_dir = out / "best"
    best_dir.mkdir(parents=True, exist_ok=True)
    first = runs[0]
    atomic_write(best_dir / "model.keras", first["model"])
    atomic_write(best_dir / "config.json", configs[0].to_json())
    summary = {k: _mean_std([r["metrics"][k] for r in runs]) for k in SUMMARY_KEYS}
    metrics = {**first["metrics"], "split": "validation", "trial_id": trial["trial_id"],
               "epochs": epochs, "seeds": [c.seed for c in configs], "seed_summary": summary}
    atomic_write(best_dir / "metrics.json", json.dumps(metrics, indent=2))
    labels, probs = np.asarray(first["labels"]), np.asarray(first["probs"])
    fpr, tpr, _ = M.roc_curve(labels, probs)
    return {
        "trial_id": trial["trial_id"], "config": configs[0].to_dict(), "epochs": epochs,
        "seeds": [c.seed for c in configs], "metrics": first["metrics"],
        "seed_summary": summary, "roc": {"fpr": fpr.tolist(), "tpr": tpr.tolist()},
        "per_patient": M.per_patient_accuracy(labels, (probs >= 0.5).astype(int),
                                              np.asarray(first["patient_ids"])),
    }


def _mean_std(values: list[float | None]) -> dict[str, Any]:
    vals = [float(v) for v in values if v is not None]
    return {"mean": statistics.fmean(vals) if vals else None,
            "std": statistics.stdev(vals) if len(vals) > 1 else 0.0 if vals else None,
            "values": vals}
