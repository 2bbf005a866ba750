"""Real-data quality with whole patients held out: crop modes, LR schedule, EMA, TTA, ensembles.

Data: the dev set (official fold_1 as PNG, ``../shared/data/cnmc-dev``) plus the real sample
(``../shared/data/cnmc-real``), each ingested into its own cached store per crop mode. Official
fold_1 (14 patients, 3 of them normal) is split into 3 patient groups, each with one normal
patient and about a third of the ALL patients; each group is scored by a model trained on the
other two (out-of-fold, OOF, predictions for every fold_1 cell). The sample's cells of every
other patient (fold_0, fold_2, preliminary-test: many patients, many normal) are the "external"
set, scored by the mean of the 3 fold models; cells whose pixels equal a fold_1 cell are dropped.
What it measured: PERFORMANCE.md, "Quality on new patients".

Per variant and seed: OOF weighted F1 at 0.5, ROC AUC, sensitivity and specificity with
patient-bootstrap 95% CIs; the epoch-to-epoch swing of the held-out AUC (mean |delta| between
consecutive epochs); the threshold that maximises OOF weighted F1 and the external set's
scores at it. Evaluation-only comparisons: test-time augmentation (mean over the 8
flips/rotations) against none, and the 3-model ensemble against single fold models on the
external set. Each finished (variant, seed) is appended to a JSON-lines file, so a cut-off run
resumes where it stopped. The tables are Markdown; the last line names the variant with the
best mean OOF ROC AUC.

Recipe (fixed): small_cnn, batch 32, AdamW (lr 1e-3, weight decay 1e-4), balanced class
weights, augmentation at strength 0.5. Variants: ``window`` (320 px native-scale window, cosine
schedule, no EMA), ``cell``, ``none`` (other crops, same recipe), ``window-constant`` (constant
learning rate), ``window-ema`` (EMA of the weights used for scoring).

    python benchmarks/quality.py                  # 5 variants x 2 seeds, 64 px, 12 epochs
    python benchmarks/quality.py --variants window,cell --seeds 0,1,2 --epochs 8
    python benchmarks/quality.py --quick          # CI: the sample only, 32 px, 1 seed, 2 epochs
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from _common import DEFAULT_DATA, REPO

DEFAULT_DEV = Path(os.environ.get("CNMC_DEV_DATA", REPO.parent / "shared" / "data" / "cnmc-dev"))
HELD_OUT_FOLD = 1  # the official fold the dev set holds whole
N_GROUPS = 3
CI_KEYS = ("weighted_f1", "roc_auc", "sensitivity", "specificity")


@dataclass(frozen=True)
class Variant:
    crop: str  # window | cell | none
    lr_schedule: str  # cosine | constant
    ema: bool
    overrides: tuple[tuple[str, Any], ...] = ()  # more TrainConfig fields (patient shift)


VARIANTS = {
    "window": Variant("window", "cosine", False),
    "cell": Variant("cell", "cosine", False),
    "none": Variant("none", "cosine", False),
    "window-constant": Variant("window", "constant", False),
    "window-ema": Variant("window", "cosine", True),
    # against patient shift (issue: a classifier that holds on patients it never saw)
    "stain": Variant("window", "cosine", False, (("stain_jitter", 0.1), ("grayscale", 0.2))),
    "foreground": Variant("window", "cosine", False, (("normalize", "foreground"),)),
    "patients": Variant("window", "cosine", False, (("patient_balance", True),)),
    "groupnorm": Variant("window", "cosine", False, (("backbone", "small_cnn_gn"),)),
    "mixup": Variant("window", "cosine", False, (("mixup", 0.4),)),
    "no-augment": Variant("window", "cosine", False, (("augment", False),)),
}


# ---------------------------------------------------------------------------------------------
# Data


def cache_dir() -> Path:
    root = Path(os.environ.get("CNMC_CACHE", Path.home() / ".cache" / "cnmc-search"))
    return root / "quality"


def load_store(data: Path, size: int, crop: str, window: int) -> Any:
    """The cached store of ``data`` at ``size`` px with this crop, ingested on first use."""
    from leukemia.store import MANIFEST, Store, ingest

    tag = hashlib.sha1(str(data.resolve()).encode()).hexdigest()[:8]
    mode = f"window{window}" if crop == "window" else crop
    path = cache_dir() / "stores" / f"{data.name}-{tag}-{size}px-{mode}"
    if not (path / MANIFEST).is_file():
        print(f"ingesting {data} ({size} px, crop {mode}) into {path}", flush=True)
        path.parent.mkdir(parents=True, exist_ok=True)
        ingest(data, str(path), size=size, crop=crop, window=window, progress=False)
    return Store(path)


def concat(parts: list[Any]) -> Any:
    from leukemia.store import Selection

    return Selection(**{k: np.concatenate([getattr(p, k) for p in parts])
                        for k in ("images", "labels", "patient_ids", "image_ids", "folds")})


def load_cells(folders: list[Path], size: int, crop: str, window: int
               ) -> tuple[Any, Any, dict[str, Any]]:
    """``(fold_1 cells, external cells, facts)`` from the stores of ``folders``."""
    stores = [load_store(f, size, crop, window) for f in folders]
    cells = concat([s.load(None) for s in stores])
    in_fold = cells.folds == HELD_OUT_FOLD
    if not in_fold.any():
        where = ", ".join(map(str, folders))
        raise SystemExit(f"no official fold_{HELD_OUT_FOLD} cells in {where}; point --dev and "
                         f"--sample at C-NMC folders, one holding training_data/fold_1")
    fold = cells.subset(in_fold)
    seen = {hashlib.sha1(img.tobytes()).digest() for img in fold.images}
    same_pixels = np.array([hashlib.sha1(img.tobytes()).digest() in seen for img in cells.images])
    external = ~in_fold & ~np.isin(cells.patient_ids, fold.patient_ids) & ~same_pixels
    facts = {"stores": {str(s.uri): s.checksum for s in stores},
             "dropped_same_pixels": int((~in_fold & same_pixels).sum())}
    return fold, cells.subset(external), facts


def patient_groups(labels: np.ndarray, patient_ids: np.ndarray, k: int = N_GROUPS
                   ) -> list[list[str]]:
    """Split patients into ``k`` groups, deterministically: the normal patients and the ALL
    patients are each spread as evenly as possible (patients first, then cells), largest first.
    """
    names, inverse = np.unique(patient_ids, return_inverse=True)
    cells, label = np.bincount(inverse), np.bincount(inverse, weights=labels) > 0
    normal = int((~label).sum())
    if normal < k:
        raise SystemExit(f"{normal} normal patient(s) in fold_{HELD_OUT_FOLD} ({names[~label]}): "
                         f"need at least {k}, one per held-out group")
    groups: list[list[str]] = [[] for _ in range(k)]
    for cls in (False, True):
        members = [i for i in np.lexsort((names, -cells)) if label[i] == cls]
        cap = math.ceil(len(members) / k)
        load = [0] * k
        count = [0] * k
        for i in members:
            g = min((g for g in range(k) if count[g] < cap), key=lambda g: (load[g], g))
            groups[g].append(str(names[i]))
            load[g] += int(cells[i])
            count[g] += 1
    return groups


# ---------------------------------------------------------------------------------------------
# Training and scoring


def train_config(variant: Variant, seed: int, epochs: int, size: int) -> Any:
    from leukemia.config import TrainConfig

    return TrainConfig(backbone="small_cnn", image_size=size, batch_size=32, epochs=epochs,
                       learning_rate=1e-3, optimizer="adamw", weight_decay=1e-4,
                       lr_schedule=variant.lr_schedule, ema=variant.ema, class_weight="balanced",
                       augment=True, augment_strength=0.5, seed=seed
                       ).override(dict(variant.overrides))


def run_fold(config: Any, train: Any, held: Any, external: Any) -> dict[str, Any]:
    """Train on ``train``; the held-out group's curve and the last epoch's predictions."""
    from leukemia.adapt import adapted_batchnorm
    from leukemia.evaluate import model_features
    from leukemia.train import fit, predict_proba

    out: dict[str, Any] = {}

    def score(model: Any) -> None:  # the model as scored: EMA weights swapped in when on
        both = np.concatenate([held.images, external.images])  # one predict call per view
        for key, tta in (("", False), ("_tta", True)):
            p = predict_proba(model, both, tta=tta)
            out[f"held{key}"], out[f"external{key}"] = p[:len(held)], p[len(held):]
        # BatchNorm statistics re-estimated on each pooled set being predicted (AdaBN): the
        # held-out group's cells for the OOF view, the external cells for the external one
        for key, cells in (("held", held), ("external", external)):
            with adapted_batchnorm(model, cells.images) as n:
                if n:
                    out[f"{key}_adabn_tta"] = predict_proba(model, cells.images, tta=True)

    out["epochs_held"], out["epochs_external"] = [], []

    def every_epoch(epoch: int, row: dict[str, Any], model: Any) -> None:
        # per-epoch scores of both sets (no TTA): how long to train, judged on new patients
        p = predict_proba(model, np.concatenate([held.images, external.images]))
        out["epochs_held"].append(np.round(p[:len(held)], 4).tolist())
        out["epochs_external"].append(np.round(p[len(held):], 4).tolist())
        if epoch == config.epochs:
            score(model)
            out["features"] = model_features(model, external.images).round(4).tolist()

    result = fit(config, (train, held), callbacks=[every_epoch])
    if "held" not in out:  # stopped early (non-finite loss): score what there is
        score(result.model)
        out["features"] = model_features(result.model, external.images).round(4).tolist()
    out["status"] = result.status
    out["curve"] = [(h.get("val_roc_auc"), h.get("val_weighted_f1")) for h in result.history]
    out["train_seconds"] = sum(h.get("train_seconds", 0.0) for h in result.history)
    return out


def swing(values: list[float | None]) -> float | None:
    """Mean |difference| between consecutive epochs (None with fewer than 2 scores)."""
    v = np.array([x for x in values if x is not None], dtype=float)
    return float(np.mean(np.abs(np.diff(v)))) if v.size > 1 else None


def summarise(fold: Any, external: Any, runs: list[dict[str, Any]], order: np.ndarray,
              seed: int) -> dict[str, Any]:
    """Metrics of one (variant, seed) from its fold runs (``order``: group of each cell)."""
    from leukemia import metrics as M

    def at(cells: Any, p: np.ndarray, threshold: float = 0.5) -> dict[str, Any]:
        m = M.binary_metrics(cells.labels, p, cells.patient_ids, threshold=threshold,
                             seed=seed, ci_keys=CI_KEYS)
        m.pop("confusion_matrix")
        return m

    out: dict[str, Any] = {}
    for tta in (False, True):
        key = "_tta" if tta else ""
        oof = np.empty(len(fold))
        for g, r in enumerate(runs):
            oof[order == g] = r[f"held{key}"]
        threshold = M.best_threshold(fold.labels, oof)
        members = np.array([r[f"external{key}"] for r in runs])
        ensemble = members.mean(axis=0)
        out["tta" if tta else "plain"] = {
            "oof": at(fold, oof), "threshold": threshold,
            "oof_at_threshold": at(fold, oof, threshold),
            "external": at(external, ensemble), "external_at_threshold":
                at(external, ensemble, threshold),
            "single": [{"roc_auc": M.roc_auc(external.labels, p),
                        "weighted_f1_at_threshold": M.weighted_f1(
                            external.labels, (p >= threshold).astype(int))} for p in members],
        }
    for i, name in enumerate(("auc", "wf1")):
        swings = [s for r in runs if (s := swing([c[i] for c in r["curve"]])) is not None]
        out[f"swing_{name}"] = float(np.mean(swings)) if swings else None
    out["curves"] = [r["curve"] for r in runs]
    # the predictions themselves (cell order of the stores), to re-analyse without retraining
    out["predictions"] = {k: [np.round(r[k], 4).tolist() for r in runs]
                          for k in ("held", "held_tta", "external", "external_tta",
                                    "held_adabn_tta", "external_adabn_tta")
                          if all(k in r for r in runs)}
    out["epoch_predictions"] = {"held": [r["epochs_held"] for r in runs],
                                "external": [r["epochs_external"] for r in runs]}
    out["features"] = [r.get("features") for r in runs]
    out["status"] = [r["status"] for r in runs]
    out["train_seconds"] = round(sum(r["train_seconds"] for r in runs), 1)
    return out


def run_variant(name: str, seed: int, args: argparse.Namespace, folders: list[Path],
                done: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """One (variant, seed): reuse its line in the results file or train the 3 fold models."""
    variant = VARIANTS[name]
    fold, external, facts = load_cells(folders, args.image_size, variant.crop, args.window)
    config = train_config(variant, seed, args.epochs, args.image_size)
    key = json.dumps({"variant": name, "config": config.to_dict(), "window": args.window,
                      "stores": sorted(facts["stores"].values())}, sort_keys=True)
    if key in done:
        print(f"{name} seed {seed}: already in {args.results}", flush=True)
        return done[key]
    groups = patient_groups(fold.labels, fold.patient_ids)
    order = np.full(len(fold), -1)
    for g, members in enumerate(groups):
        order[np.isin(fold.patient_ids, members)] = g
    t0 = time.monotonic()
    runs = []
    for g, members in enumerate(groups):
        held = order == g
        r = run_fold(config, fold.subset(~held), fold.subset(held), external)
        runs.append(r)
        auc = r["curve"][-1][0] if r["curve"] else None
        print(f"{name} seed {seed} group {g + 1}/{len(groups)} ({', '.join(members)}): "
              f"held-out AUC {auc if auc is None else round(auc, 3)}, "
              f"{time.monotonic() - t0:.0f} s", flush=True)
    row = {"key": key, "variant": name, "seed": seed, "groups": groups,
           "n_fold_cells": len(fold), "n_external": len(external),
           "n_external_patients": len(set(external.patient_ids.tolist())), **facts,
           **summarise(fold, external, runs, order, seed),
           "wall_seconds": round(time.monotonic() - t0, 1),
           "finished_at": time.strftime("%Y-%m-%d %H:%M:%S")}
    with open(args.results, "a") as fh:
        fh.write(json.dumps(row) + "\n")
    return row


# ---------------------------------------------------------------------------------------------
# Tables


def _ci(m: dict[str, Any], key: str) -> str:
    v, ci = m.get(key), m.get(f"{key}_ci95")
    if v is None:
        return "–"
    return f"{v:.3f} [{ci[0]:.2f}–{ci[1]:.2f}]" if ci else f"{v:.3f}"


def _f(v: float | None) -> str:
    return "–" if v is None else f"{v:.3f}"


def _spread(values: list[float | None]) -> str:
    """``mean (min–max)`` over seeds, or the value alone for one seed."""
    v = [x for x in values if x is not None]
    if not v:
        return "–"
    if len(v) == 1:
        return f"{v[0]:.3f}"
    return f"{np.mean(v):.3f} ({min(v):.3f}–{max(v):.3f})"


def _mean(values: list[float | None]) -> float:
    v = [x for x in values if x is not None]
    return float(np.mean(v)) if v else float("nan")


def table(rows: list[str], head: list[str]) -> str:
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    return "\n".join(lines + rows)


def report(results: dict[str, list[dict[str, Any]]]) -> str:
    """The Markdown tables, then the best variant's line last."""
    out = []
    per_seed = []
    for name, rows in results.items():
        for r in rows:
            p = r["plain"]
            per_seed.append(f"| {name} | {r['seed']} | {_ci(p['oof'], 'roc_auc')} | "
                            f"{_ci(p['oof'], 'weighted_f1')} | {_ci(p['oof'], 'sensitivity')} | "
                            f"{_ci(p['oof'], 'specificity')} | {_f(r['swing_auc'])} | "
                            f"{p['threshold']:.3f} | {_ci(p['external'], 'roc_auc')} | "
                            f"{_ci(p['external_at_threshold'], 'weighted_f1')} | "
                            f"{_ci(p['external_at_threshold'], 'sensitivity')} | "
                            f"{_ci(p['external_at_threshold'], 'specificity')} |")
    out.append("Per variant and seed (OOF: fold_1 cells scored by the model that never saw their "
               "patient; external: the other patients, 3-model ensemble, at the OOF threshold; "
               "[patient-bootstrap 95% CI]):\n")
    out.append(table(per_seed, ["variant", "seed", "OOF AUC", "OOF wF1@0.5", "OOF sens@0.5",
                                "OOF spec@0.5", "swing \\|ΔAUC\\|", "OOF thr", "ext AUC",
                                "ext wF1@thr", "ext sens@thr", "ext spec@thr"]))

    def col(rows: list[dict[str, Any]], *path: str) -> list[float | None]:
        vals = []
        for r in rows:
            v: Any = r
            for p in path:
                v = v[p]
            vals.append(v)
        return vals

    summary, tta, ens = [], [], []
    for name, rows in results.items():
        summary.append(
            f"| {name} | {len(rows)} | {_spread(col(rows, 'plain', 'oof', 'roc_auc'))} | "
            f"{_spread(col(rows, 'plain', 'oof', 'weighted_f1'))} | "
            f"{_spread(col(rows, 'plain', 'oof', 'sensitivity'))} | "
            f"{_spread(col(rows, 'plain', 'oof', 'specificity'))} | "
            f"{_spread(col(rows, 'swing_auc'))} | {_spread(col(rows, 'swing_wf1'))} | "
            f"{_spread(col(rows, 'plain', 'threshold'))} | "
            f"{_spread(col(rows, 'plain', 'external', 'roc_auc'))} | "
            f"{_spread(col(rows, 'plain', 'external_at_threshold', 'weighted_f1'))} | "
            f"{_spread(col(rows, 'plain', 'external', 'weighted_f1'))} |")
        tta.append(
            f"| {name} | {_mean(col(rows, 'plain', 'oof', 'roc_auc')):.3f} → "
            f"{_mean(col(rows, 'tta', 'oof', 'roc_auc')):.3f} | "
            f"{_mean(col(rows, 'plain', 'oof', 'weighted_f1')):.3f} → "
            f"{_mean(col(rows, 'tta', 'oof', 'weighted_f1')):.3f} | "
            f"{_mean(col(rows, 'plain', 'external', 'roc_auc')):.3f} → "
            f"{_mean(col(rows, 'tta', 'external', 'roc_auc')):.3f} | "
            f"{_mean(col(rows, 'plain', 'external_at_threshold', 'weighted_f1')):.3f} → "
            f"{_mean(col(rows, 'tta', 'external_at_threshold', 'weighted_f1')):.3f} |")
        for mode in ("plain", "tta"):
            singles = [s for r in rows for s in r[mode]["single"]]
            ens.append(
                f"| {name} | {'on' if mode == 'tta' else 'off'} | "
                f"{_spread([s['roc_auc'] for s in singles])} | "
                f"{_mean(col(rows, mode, 'external', 'roc_auc')):.3f} | "
                f"{_spread([s['weighted_f1_at_threshold'] for s in singles])} | "
                f"{_mean(col(rows, mode, 'external_at_threshold', 'weighted_f1')):.3f} |")
    out.append("\nMean over seeds (min–max over seeds):\n")
    out.append(table(summary, ["variant", "seeds", "OOF AUC", "OOF wF1@0.5", "OOF sens@0.5",
                               "OOF spec@0.5", "swing \\|ΔAUC\\|", "swing \\|ΔwF1\\|", "OOF thr",
                               "ext AUC", "ext wF1@thr", "ext wF1@0.5"]))
    out.append("\nTest-time augmentation (8 flips/rotations), off → on, mean over seeds:\n")
    out.append(table(tta, ["variant", "OOF AUC", "OOF wF1@0.5", "ext AUC", "ext wF1@thr"]))
    out.append("\nExternal set: one fold model (mean, min–max over folds and seeds) vs the mean "
               "of the 3 fold models:\n")
    out.append(table(ens, ["variant", "TTA", "single AUC", "ensemble AUC", "single wF1@thr",
                           "ensemble wF1@thr"]))
    ranked = sorted(results, key=lambda n: -_mean(col(results[n], "plain", "oof", "roc_auc")))
    best = ranked[0]
    aucs = col(results[best], "plain", "oof", "roc_auc")
    line = (f"best: {best} (held-out ROC AUC {_mean(aucs):.3f}, seeds "
            f"{', '.join(f'{a:.3f}' for a in aucs)}")
    if len(ranked) > 1:
        second = ranked[1]
        other = col(results[second], "plain", "oof", "roc_auc")
        gap = _mean(aucs) - _mean(other)
        # the larger seed-to-seed range of the two: a gap inside it is not a ranking
        noise = max((max(v) - min(v) for v in ([a for a in c if a is not None]
                                                for c in (aucs, other)) if v), default=0.0)
        verdict = "within" if gap <= noise else "beyond"
        line += (f"; runner-up {second} by {gap:.3f}, {verdict} the seed-to-seed range "
                 f"{noise:.3f})")
    else:
        line += ")"
    out.append("\n" + line)
    return "\n".join(out)


# ---------------------------------------------------------------------------------------------
# Transfer to new patients: decision rules, training length, transductive and per-patient calls

RULE_NAMES = ("0.5", "oof", "oof-patients", "prior", "em")
MIN_CELLS_PER_PATIENT_CALL = 1  # the external patients hold ~3 cells each in the sample


def patient_weighted_threshold(y: np.ndarray, p: np.ndarray, pid: np.ndarray) -> float:
    """The wF1-maximising threshold when every patient weighs the same (cells weigh 1/n)."""
    from sklearn.metrics import f1_score

    _, inv, counts = np.unique(pid, return_inverse=True, return_counts=True)
    w = 1.0 / counts[inv]
    cands = np.unique(np.concatenate([[0.5], (np.unique(p)[1:] + np.unique(p)[:-1]) / 2]))
    scores = [f1_score(y, (p >= t).astype(int), average="weighted", sample_weight=w,
                       zero_division=0) for t in cands]
    best = max(scores)
    ties = cands[np.isclose(scores, best, atol=1e-12)]
    return float(ties[np.argmin(np.abs(ties - 0.5))])


def rule_for(name: str, y: np.ndarray, p: np.ndarray, pid: np.ndarray, prior: float) -> Any:
    """A ``leukemia.rules.Rule`` fitted on labelled held-out predictions ``(y, p)``."""
    from leukemia import metrics as M
    from leukemia.rules import Rule

    if name == "0.5":
        return Rule("threshold", threshold=0.5)
    if name == "oof":
        return Rule("threshold", threshold=float(M.best_threshold(y, p)))
    if name == "oof-patients":
        return Rule("threshold", threshold=patient_weighted_threshold(y, p, pid))
    if name == "prior":
        return Rule("prior", prior=prior, min_batch=1)
    return Rule("em", train_prior=0.5, min_batch=1)  # balanced class weights: posteriors at 0.5


def _scores(y: np.ndarray, p: np.ndarray, calls: np.ndarray) -> dict[str, float]:
    from leukemia import metrics as M

    return {"wf1": M.weighted_f1(y, calls), "sens": float(calls[y == 1].mean()),
            "spec": float(1 - calls[y == 0].mean()), "auc": M.roc_auc(y, p)}


def transfer(row: dict[str, Any], fold: Any, external: Any) -> dict[str, Any]:
    """Everything about one (variant, seed) on new patients, from its stored predictions."""
    from leukemia import metrics as M
    from leukemia.evaluate import neighbour_correction
    from leukemia.rules import decide

    order = np.full(len(fold), -1)
    for g, members in enumerate(row["groups"]):
        order[np.isin(fold.patient_ids, members)] = g
    pred = row["predictions"]
    oof = np.empty(len(fold))
    for g in range(len(row["groups"])):
        oof[order == g] = pred["held_tta"][g]
    ext = np.mean(np.array(pred["external_tta"]), axis=0)  # the exported ensemble, TTA on
    y, pid, ye = fold.labels, fold.patient_ids, external.labels
    prior = float(y.mean())
    out: dict[str, Any] = {"oof_auc": M.roc_auc(y, oof), "ext_auc": M.roc_auc(ye, ext),
                           "rules": {}, "loo_rules": {}}
    for name in RULE_NAMES:
        rule = rule_for(name, y, oof, pid, prior)
        d = decide(ext, rule)
        out["rules"][name] = {**_scores(ye, ext, d.classes), "cut": d.cut}
        # leave one normal patient out on the dev set: the rule fitted on two groups' OOF
        # predictions decides the third group's cells
        calls = np.empty(len(fold), dtype=int)
        for g in range(len(row["groups"])):
            inner = order != g
            r = rule_for(name, y[inner], oof[inner], pid[inner], float(y[inner].mean()))
            calls[order == g] = decide(oof[order == g], r).classes
        out["loo_rules"][name] = _scores(y, oof, calls)
    # training length: the ensemble's external AUC after each epoch (no TTA), and with each
    # fold model stopped at its held-out group's best-AUC epoch
    ep_ext = np.array(row["epoch_predictions"]["external"])  # (fold, epoch, cell)
    ep_held = row["epoch_predictions"]["held"]
    out["ext_auc_by_epoch"] = [M.roc_auc(ye, ep_ext[:, e].mean(axis=0))
                               for e in range(ep_ext.shape[1])]
    out["oof_auc_by_epoch"] = []
    for e in range(ep_ext.shape[1]):
        o = np.empty(len(fold))
        for g in range(len(row["groups"])):
            o[order == g] = ep_held[g][e]
        out["oof_auc_by_epoch"].append(M.roc_auc(y, o))
    stop = [int(np.argmax([M.roc_auc(y[order == g], np.array(ep_held[g][e]))
                           for e in range(ep_ext.shape[1])])) for g in range(len(ep_held))]
    early = np.mean([ep_ext[g, e] for g, e in enumerate(stop)], axis=0)
    out["early_stop_epochs"] = [e + 1 for e in stop]
    out["early_stop_ext_auc"] = M.roc_auc(ye, early)
    # transductive: Pan et al.'s neighbour correction over the external batch (7 neighbours)
    feats = row.get("features")
    if feats and all(f is not None for f in feats):
        f = np.concatenate([np.asarray(x, dtype=float) for x in feats], axis=1)
        corrected = neighbour_correction(ext, f, 7)
        out["neighbours"] = _scores(ye, corrected, (corrected >= 0.5).astype(int))
    # transductive: BatchNorm statistics re-estimated on the pooled cells predicted (AdaBN)
    if "external_adabn_tta" in pred:
        ea = np.mean(np.array(pred["external_adabn_tta"]), axis=0)
        oa = np.empty(len(fold))
        for g in range(len(row["groups"])):
            oa[order == g] = pred["held_adabn_tta"][g]
        out["adabn"] = {**_scores(ye, ea, (ea >= 0.5).astype(int)),
                        "oof": _scores(y, oa, (oa >= 0.5).astype(int))}
    # per-patient call: a patient is ALL when most of its cells are called ALL at 0.5
    pe = external.patient_ids
    names = sorted(set(pe.tolist()))
    truth = np.array([ye[pe == n][0] for n in names])
    call = np.array([(ext[pe == n] >= 0.5).mean() >= 0.5 for n in names]).astype(int)
    out["patients"] = {"n": len(names), "accuracy": float((truth == call).mean()),
                       "sens": float(call[truth == 1].mean()),
                       "spec": float(1 - call[truth == 0].mean())}
    return out


def transfer_report(results: dict[str, list[dict[str, Any]]], fold: Any, external: Any) -> str:
    """Markdown tables: rules on the external patients, leave-one-normal-patient-out, training
    length, transductive and per-patient calls; mean (min-max) over seeds."""
    t = {name: [transfer(r, fold, external) for r in rows] for name, rows in results.items()}
    out = [f"\nExternal patients ({len(external)} cells, "
           f"{len(set(external.patient_ids.tolist()))} patients, "
           f"{external.labels.mean():.0%} ALL), the exported ensemble (TTA), per decision rule "
           "(wF1 / sensitivity / specificity; mean (min–max) over seeds):\n"]
    rows = []
    for name, ts in t.items():
        cells = [f"{name} ({len(ts)})", _spread([x["oof_auc"] for x in ts]),
                 _spread([x["ext_auc"] for x in ts])]
        for rn in RULE_NAMES:
            cells.append(f"{_spread([x['rules'][rn]['wf1'] for x in ts])} / "
                         f"{_mean([x['rules'][rn]['sens'] for x in ts]):.2f} / "
                         f"{_mean([x['rules'][rn]['spec'] for x in ts]):.2f}")
        rows.append("| " + " | ".join(cells) + " |")
    out.append(table(rows, ["variant (seeds)", "OOF AUC", "ext AUC"]
                     + [f"ext @{n}" for n in RULE_NAMES]))
    out.append("\nThe same rules fitted on two dev groups' OOF predictions, deciding the third "
               "group (leave one normal patient out; wF1 / sens / spec):\n")
    rows = []
    for name, ts in t.items():
        cells = [name] + [f"{_spread([x['loo_rules'][rn]['wf1'] for x in ts])} / "
                          f"{_mean([x['loo_rules'][rn]['sens'] for x in ts]):.2f} / "
                          f"{_mean([x['loo_rules'][rn]['spec'] for x in ts]):.2f}"
                          for rn in RULE_NAMES]
        rows.append("| " + " | ".join(cells) + " |")
    out.append(table(rows, ["variant"] + [f"dev LOO @{n}" for n in RULE_NAMES]))
    out.append("\nTraining length: ensemble AUC after each epoch (no TTA), external / OOF, and "
               "each fold model stopped at its held-out group's best epoch:\n")
    rows = []
    n_ep = max(len(x["ext_auc_by_epoch"]) for ts in t.values() for x in ts)
    for name, ts in t.items():
        cells = [name]
        for e in range(n_ep):
            cells.append(f"{_mean([x['ext_auc_by_epoch'][e] for x in ts]):.3f} / "
                         f"{_mean([x['oof_auc_by_epoch'][e] for x in ts]):.3f}")
        cells.append(f"{_spread([x['early_stop_ext_auc'] for x in ts])} "
                     f"(epochs {', '.join(str(x['early_stop_epochs']) for x in ts)})")
        rows.append("| " + " | ".join(cells) + " |")
    out.append(table(rows, ["variant"] + [f"epoch {e + 1}" for e in range(n_ep)]
                     + ["early-stopped ext AUC"]))
    out.append("\nTransductive and per-patient (reported beside the per-cell numbers, never "
               "instead): neighbour correction (K=7, 3 rounds, over the external batch) at 0.5, "
               "and the per-patient call (ALL when >= half the cells are ALL at 0.5):\n")
    rows = []
    for name, ts in t.items():
        nb = [x["neighbours"] for x in ts if "neighbours" in x]
        rows.append(f"| {name} | {_spread([x['auc'] for x in nb])} | "
                    f"{_spread([x['wf1'] for x in nb])} | "
                    f"{_mean([x['spec'] for x in nb]):.2f} | "
                    f"{_spread([x['patients']['accuracy'] for x in ts])} | "
                    f"{_mean([x['patients']['sens'] for x in ts]):.2f} / "
                    f"{_mean([x['patients']['spec'] for x in ts]):.2f} |")
    out.append(table(rows, ["variant", "neighbours AUC", "neighbours wF1@0.5",
                            "neighbours spec", "patient-call accuracy", "patient sens / spec"]))
    rows = []
    for name, ts in t.items():
        ab = [(x, x["adabn"]) for x in ts if "adabn" in x]
        if not ab:
            continue
        rows.append(f"| {name} ({len(ab)}) | {_spread([x['ext_auc'] for x, _ in ab])} | "
                    f"{_spread([a['auc'] for _, a in ab])} | "
                    f"{_spread([x['rules']['0.5']['wf1'] for x, _ in ab])} | "
                    f"{_spread([a['wf1'] for _, a in ab])} / "
                    f"{_mean([a['sens'] for _, a in ab]):.2f} / "
                    f"{_mean([a['spec'] for _, a in ab]):.2f} | "
                    f"{_spread([x['oof_auc'] for x, _ in ab])} | "
                    f"{_spread([a['oof']['auc'] for _, a in ab])} | "
                    f"{_spread([a['oof']['wf1'] for _, a in ab])} |")
    if rows:
        out.append("\nBatchNorm statistics re-estimated on the pooled cells predicted (AdaBN, "
                   "transductive; the same fold models, TTA on; OOF: each held-out group "
                   "pooled):\n")
        out.append(table(rows, ["variant (seeds)", "ext AUC", "ext AUC AdaBN", "ext wF1@0.5",
                                "AdaBN wF1@0.5 / sens / spec", "OOF AUC", "OOF AUC AdaBN",
                                "OOF wF1@0.5 AdaBN"]))
    return "\n".join(out)


# ---------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--dev", type=Path, default=DEFAULT_DEV,
                   help="the dev set (official fold_1; env CNMC_DEV_DATA)")
    p.add_argument("--sample", type=Path, default=Path(DEFAULT_DATA),
                   help="the 240-image real sample (env CNMC_REAL_DATA)")
    p.add_argument("--variants", default=",".join(VARIANTS),
                   help=f"comma-separated, from {', '.join(VARIANTS)}")
    p.add_argument("--seeds", default="0,1", help="comma-separated training seeds")
    p.add_argument("--epochs", type=int, default=12)
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--window", type=int, default=320, help="window crop side in px")
    p.add_argument("--results", type=Path, default=None,
                   help="JSON-lines results file, resumed if it exists "
                        "(default: $CNMC_CACHE/quality/results.jsonl)")
    p.add_argument("--quick", action="store_true",
                   help="CI: the sample only, 32 px, 1 seed, 2 epochs, variants window,cell")
    args = p.parse_args(argv)
    tmp = None
    if args.quick:
        args.image_size, args.epochs, args.seeds = 32, 2, "0"
        args.variants = "window,cell"
        folders = [args.sample]
        if args.results is None:
            tmp = tempfile.TemporaryDirectory(prefix="cnmc-quality-")
            args.results = Path(tmp.name) / "results.jsonl"
    else:
        folders = [args.dev, args.sample]
    args.results = args.results or cache_dir() / "results.jsonl"
    names = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = [n for n in names if n not in VARIANTS]
    if unknown or not names:
        raise SystemExit(f"--variants {args.variants!r}: unknown {unknown}; choose from "
                         f"{', '.join(VARIANTS)}")
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    for f in folders:
        if not (f / "C-NMC_Leukemia").is_dir() and not f.name == "C-NMC_Leukemia":
            raise SystemExit(f"{f}: no C-NMC_Leukemia/ folder; pass --dev/--sample (or set "
                             "CNMC_DEV_DATA/CNMC_REAL_DATA) to the folders holding it")
    args.results.parent.mkdir(parents=True, exist_ok=True)
    done = {}
    if args.results.exists():
        for line in args.results.read_text().splitlines():
            if line.strip():
                row = json.loads(line)
                done[row["key"]] = row
    print(f"quality benchmark: {', '.join(map(str, folders))}; {args.image_size} px, "
          f"{args.epochs} epochs, seeds {seeds}, variants {names}; results {args.results}",
          flush=True)
    results: dict[str, list[dict[str, Any]]] = {}
    for name in names:
        for seed in seeds:
            results.setdefault(name, []).append(run_variant(name, seed, args, folders, done))
    first = results[names[0]][0]
    print(f"\nfold_{HELD_OUT_FOLD}: {first['n_fold_cells']} cells in groups {first['groups']}; "
          f"external: {first['n_external']} cells of {first['n_external_patients']} patients "
          f"({first['dropped_same_pixels']} dropped: same pixels as a fold_{HELD_OUT_FOLD} cell)"
          f"\n")
    if all("epoch_predictions" in r for rows in results.values() for r in rows):
        fold, external, _ = load_cells(folders, args.image_size, VARIANTS[names[0]].crop,
                                       args.window)
        print(transfer_report(results, fold, external) + "\n")
    print(report(results))  # its last line names the best variant
    if tmp is not None:
        tmp.cleanup()


if __name__ == "__main__":
    main()
